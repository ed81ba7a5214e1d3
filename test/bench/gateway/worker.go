//go:build linux

package main

// The client side of the benchmark. It runs as a separate process in the
// client namespace (`ip netns exec CLIENT /proc/self/exe --worker JOB`), so
// that its sockets live there; it prints one JSON result on stdout.

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
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
	DataPorts      string        // ctdump: ftpalg's data ports, LO-HI
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
	CPU      benchkit.CPUDelta `json:",omitzero"`
	WatchCPU float64           `json:",omitempty"` // seconds of WatchPID
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
			lo, hi, _ := benchkit.ParseRange(j.DataPorts)
			d, err := dumpConntrack(uint16(p), uint16(lo), uint16(hi))
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
	c, err := benchftp.Open(j.Addr, deadline)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.Close()
	if err := c.Binary(); err != nil {
		r.Err = err.Error()
		return r
	}
	buf := make([]byte, 64<<10)
	n, port, err := c.Transfer("RETR "+benchkit.SmallFile, deadline, j.ConnectTimeout, buf)
	r.EPSVPort = port
	if err == nil && n != benchkit.SmallSize {
		err = fmt.Errorf("RETR: got %d bytes, want %d", n, benchkit.SmallSize)
	}
	if err != nil {
		r.PassiveErr = benchftp.ErrKind(err)
		return r // the session may be out of step now
	}
	if j.Active {
		n, from, err := c.ActiveTransfer("RETR "+benchkit.SmallFile, j.LocalIP, deadline, j.ConnectTimeout, buf)
		r.ActiveFrom = from
		if err == nil && n != benchkit.SmallSize {
			err = fmt.Errorf("RETR: got %d bytes, want %d", n, benchkit.SmallSize)
		}
		if err != nil {
			r.ActiveErr = benchftp.ErrKind(err)
			return r
		}
	}
	c.Quit()
	return r
}

// downloadJob fetches the big file once and times it from RETR to 226,
// measuring the CPU use over the transfer alone.
func downloadJob(j job) result {
	var r result
	n, secs, err := benchkit.Download(j.Addr, j.Size, make([]byte, j.BufSize), j.Timeout, func() func() {
		o0 := benchkit.OthersCPU(j.OurNetns, j.OurPID)
		w0, _ := benchkit.CPUSeconds(j.WatchPID)
		m0, _ := benchkit.MachineCPU()
		return func() {
			m1, _ := benchkit.MachineCPU()
			w1, _ := benchkit.CPUSeconds(j.WatchPID)
			r.OtherCPU = benchkit.OthersCPU(j.OurNetns, j.OurPID).Since(o0)
			r.CPU, r.WatchCPU = m1.Sub(m0), w1-w0
		}
	})
	r.Bytes, r.Secs = n, secs
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// rateJob runs Clients session loops (benchkit.Session) for Duration.
func rateJob(j job) result {
	o0 := benchkit.OthersCPU(j.OurNetns, j.OurPID)
	w0, _ := benchkit.CPUSeconds(j.WatchPID)
	m0, _ := benchkit.MachineCPU()
	rr := benchkit.RunRate(j.Addr, j.Clients, j.Duration, j.Timeout)
	m1, _ := benchkit.MachineCPU()
	w1, _ := benchkit.CPUSeconds(j.WatchPID)
	other := benchkit.OthersCPU(j.OurNetns, j.OurPID).Since(o0)
	return result{Sessions: len(rr.Latencies), P50: benchkit.Percentile(rr.Latencies, 50), P99: benchkit.Percentile(rr.Latencies, 99),
		Errors: rr.Errors, ErrKinds: rr.ErrKinds, CPU: m1.Sub(m0), WatchCPU: w1 - w0, OtherCPU: other}
}
