//go:build linux

package main

// The client side of the benchmark. It runs as a separate process in the
// client namespace (`ip netns exec CLIENT /proc/self/exe --worker JOB`), so
// that its sockets live there; it prints one JSON result on stdout.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
)

const (
	bigFile   = "big.bin"
	smallFile = "small.bin"
	smallSize = 4 << 10
)

// job is what the orchestrator asks a worker to do.
type job struct {
	Mode           string        // verify, download, rate, ctdump
	Addr           string        // the FTP server, HOST:PORT
	Size           int64         // download: expected size of bigFile
	BufSize        int           // download: read buffer
	Timeout        time.Duration // verify, download: whole session; rate: one session
	ConnectTimeout time.Duration // verify: data connection connect/accept
	Active         bool          // verify: also try PORT
	LocalIP        string        // verify: the client's own address, for PORT
	Clients        int           // rate
	Duration       time.Duration // rate
	WatchPID       int           // CPU time of this process is measured (0: none)
	// download, rate: the benchmark's namespaces (inode numbers) and
	// process, to tell other processes' CPU use apart from ours.
	OurNetns []uint64
	OurPID   int
}

// result is what a worker reports.
type result struct {
	Err string `json:",omitempty"`

	// verify
	EPSVPort   int    `json:",omitempty"`
	PassiveErr string `json:",omitempty"`
	ActiveErr  string `json:",omitempty"`
	ActiveFrom string `json:",omitempty"` // where the server's data connection came from

	// download
	Bytes int64   `json:",omitempty"`
	Secs  float64 `json:",omitempty"`

	// rate
	Sessions int            `json:",omitempty"`
	P50, P99 time.Duration  `json:",omitempty"`
	Errors   int            `json:",omitempty"`
	ErrKinds map[string]int `json:",omitempty"`

	// ctdump
	CT *ctDump `json:",omitempty"`

	// download and rate: CPU over the measured interval
	CPU      cpuDelta `json:",omitzero"`
	WatchCPU float64  `json:",omitempty"` // seconds of WatchPID
	// OtherCPU is the CPU time (s) of processes outside the benchmark
	// during the interval: interference (a lower bound: processes that
	// ended during it are missed; kernel threads are not counted).
	OtherCPU float64 `json:",omitempty"`
}

func workerMain(arg string) {
	var j job
	var r result
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		r.Err = "bad job: " + err.Error()
	} else {
		switch j.Mode {
		case "verify":
			r = verifyJob(j)
		case "download":
			r = downloadJob(j)
		case "rate":
			r = rateJob(j)
		case "ctdump":
			p, _ := strconv.Atoi(proxyPort)
			d, err := dumpConntrack(uint16(p))
			if err != nil {
				r.Err = err.Error()
			}
			r.CT = &d
		default:
			r.Err = "unknown mode " + strconv.Quote(j.Mode)
		}
	}
	b, _ := json.Marshal(r)
	os.Stdout.Write(append(b, '\n'))
}

// verifyJob: login, TYPE I, EPSV + RETR of the small file; with Active
// also PORT + RETR of the small file. Failures of the transfers are
// reported in PassiveErr/ActiveErr, not as the job's error.
func verifyJob(j job) result {
	var r result
	deadline := time.Now().Add(j.Timeout)
	c, err := benchftp.Dial(j.Addr, deadline)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.Close()
	if err := c.Login(); err != nil {
		r.Err = err.Error()
		return r
	}
	if _, _, err := c.Cmd(2, "TYPE I"); err != nil {
		r.Err = benchftp.StepErr("TYPE", err).Error()
		return r
	}
	buf := make([]byte, 64<<10)
	n, port, err := c.Transfer("RETR "+smallFile, deadline, j.ConnectTimeout, buf)
	r.EPSVPort = port
	if err == nil && n != smallSize {
		err = fmt.Errorf("RETR: got %d bytes, want %d", n, smallSize)
	}
	if err != nil {
		r.PassiveErr = benchftp.ErrKind(err)
		return r // the session may be out of step now
	}
	if j.Active {
		n, from, err := c.ActiveTransfer("RETR "+smallFile, j.LocalIP, deadline, j.ConnectTimeout, buf)
		r.ActiveFrom = from
		if err == nil && n != smallSize {
			err = fmt.Errorf("RETR: got %d bytes, want %d", n, smallSize)
		}
		if err != nil {
			r.ActiveErr = benchftp.ErrKind(err)
			return r
		}
	}
	c.Quit()
	return r
}

// downloadJob fetches bigFile once and times it from RETR to 226.
func downloadJob(j job) result {
	var r result
	deadline := time.Now().Add(j.Timeout)
	c, err := benchftp.Dial(j.Addr, deadline)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.Close()
	if err := c.Login(); err != nil {
		r.Err = err.Error()
		return r
	}
	if _, _, err := c.Cmd(2, "TYPE I"); err != nil {
		r.Err = benchftp.StepErr("TYPE", err).Error()
		return r
	}
	buf := make([]byte, j.BufSize)
	o0 := othersCPU(j)
	w0, _ := cpuSeconds(j.WatchPID)
	m0, _ := machineCPU()
	start := time.Now()
	n, _, err := c.Transfer("RETR "+bigFile, deadline, 0, buf)
	r.Secs = time.Since(start).Seconds()
	m1, _ := machineCPU()
	w1, _ := cpuSeconds(j.WatchPID)
	r.OtherCPU = othersCPU(j).since(o0)
	r.Bytes, r.CPU, r.WatchCPU = n, m1.sub(m0), w1-w0
	if err == nil && n != j.Size {
		err = fmt.Errorf("RETR: got %d bytes, want %d", n, j.Size)
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	c.Quit()
	return r
}

// oneSession is connect, login, EPSV, LIST, EPSV, RETR of the 4 KiB file,
// QUIT (as in test/bench).
func oneSession(addr string, timeout time.Duration, buf []byte) error {
	deadline := time.Now().Add(timeout)
	c, err := benchftp.Dial(addr, deadline)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(); err != nil {
		return err
	}
	n, _, err := c.Transfer("LIST", deadline, 0, buf)
	if err != nil {
		return err
	}
	if n == 0 {
		return benchftp.StepErr("LIST", errors.New("empty listing"))
	}
	n, _, err = c.Transfer("RETR "+smallFile, deadline, 0, buf)
	if err != nil {
		return err
	}
	if n < smallSize || n > 2*smallSize {
		return benchftp.StepErr("RETR", fmt.Errorf("got %d bytes, want %d", n, smallSize))
	}
	return c.Quit()
}

// rateJob runs Clients session loops for Duration.
func rateJob(j job) result {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		kinds = map[string]int{}
		nerr  atomic.Int64
		wg    sync.WaitGroup
	)
	o0 := othersCPU(j)
	w0, _ := cpuSeconds(j.WatchPID)
	m0, _ := machineCPU()
	stopAt := time.Now().Add(j.Duration)
	for range j.Clients {
		wg.Go(func() {
			buf := make([]byte, 32<<10)
			var mine []time.Duration
			for time.Now().Before(stopAt) {
				t0 := time.Now()
				if err := oneSession(j.Addr, j.Timeout, buf); err != nil {
					nerr.Add(1)
					mu.Lock()
					kinds[benchftp.ErrKind(err)]++
					mu.Unlock()
					// Back off a little so that a failing path does not spin.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	m1, _ := machineCPU()
	w1, _ := cpuSeconds(j.WatchPID)
	other := othersCPU(j).since(o0)
	slices.Sort(lats)
	return result{Sessions: len(lats), P50: percentile(lats, 50), P99: percentile(lats, 99),
		Errors: int(nerr.Load()), ErrKinds: kinds, CPU: m1.sub(m0), WatchCPU: w1 - w0, OtherCPU: other}
}

// ---- CPU accounting from /proc (not namespaced) ----

// clockTicks is USER_HZ, the unit of /proc/stat and /proc/PID/stat.
const clockTicks = 100

// cpuSample is the "cpu" line of /proc/stat, in clock ticks.
type cpuSample struct {
	busy, softirq, sys, user, steal, total int64
	at                                     time.Time
}

// cpuDelta is the machine's CPU use over an interval, in seconds.
type cpuDelta struct {
	Wall    float64 // elapsed
	Busy    float64 // CPU seconds busy, all CPUs
	User    float64 // user+nice
	Sys     float64 // system
	Softirq float64 // irq+softirq
	Steal   float64 // taken by the hypervisor for other guests (not in Busy)
}

// CPUs is the average number of busy CPUs.
func (d cpuDelta) CPUs() float64 {
	if d.Wall <= 0 {
		return 0
	}
	return d.Busy / d.Wall
}

func machineCPU() (cpuSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuSample{}, errors.New("malformed /proc/stat")
	}
	s := cpuSample{at: time.Now()}
	for i, v := range f[1:] {
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		s.total += n
		switch i {
		case 0, 1:
			s.user += n
		case 2:
			s.sys += n
		case 5, 6:
			s.softirq += n
		case 7:
			s.steal += n
		}
		if i != 3 && i != 4 && i != 7 { // idle, iowait, steal
			s.busy += n
		}
	}
	return s, nil
}

func (s cpuSample) sub(p cpuSample) cpuDelta {
	t := func(n int64) float64 { return float64(n) / clockTicks }
	return cpuDelta{Wall: s.at.Sub(p.at).Seconds(), Busy: t(s.busy - p.busy), User: t(s.user - p.user),
		Sys: t(s.sys - p.sys), Softirq: t(s.softirq - p.softirq), Steal: t(s.steal - p.steal)}
}

// procCPU is the CPU time (s) of processes by PID.
type procCPU map[int]float64

// othersCPU reads utime+stime of every process that is not in one of the
// benchmark's namespaces, not the benchmark itself and not a kernel
// thread.
func othersCPU(j job) procCPU {
	m := procCPU{}
	if len(j.OurNetns) == 0 {
		return m
	}
	ours := map[string]bool{}
	for _, n := range j.OurNetns {
		ours[fmt.Sprintf("net:[%d]", n)] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return m
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == j.OurPID {
			continue
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil || ours[ns] {
			continue
		}
		f, err := statFields(pid)
		if err != nil {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64) // field 9
		if flags&0x00200000 != 0 {                  // PF_KTHREAD
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		m[pid] = float64(ut+st) / clockTicks
	}
	return m
}

// since is the CPU time used after p (processes new since p count fully).
func (m procCPU) since(p procCPU) float64 {
	var s float64
	for pid, c := range m {
		s += c - p[pid]
	}
	return s
}

// statFields returns the fields of /proc/PID/stat after the command name,
// starting with the state (field 3).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f, nil
}

// cpuSeconds returns utime+stime of pid (0 for pid 0).
func cpuSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// ---- statistics ----

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the nearest-rank percentile of sorted d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := (len(d)*p + 99) / 100
	return d[max(i-1, 0)]
}

func topKinds(m map[string]int, n int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	if len(keys) > n {
		keys = keys[:n]
	}
	return keys
}
