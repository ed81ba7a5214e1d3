package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
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

// makeFiles writes the files the server serves: bigFile of size bytes (a
// 1 MiB random block repeated, so every page is real data, not a hole) and
// smallFile of 4 KiB.
func makeFiles(dir string, size int64) error {
	block := make([]byte, 1<<20)
	if _, err := rand.Read(block); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, smallFile), block[:smallSize], 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, bigFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(block)))
		if _, err := f.Write(block[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	return f.Close()
}

// ---- 1. throughput ----

type xferRun struct {
	via   string // "direct" or "proxy"
	bytes int64
	secs  float64
	cpu   float64 // proxy CPU seconds during the run (proxy runs only)
	busy  float64 // CPUs of the whole machine busy during the run, on average
	mach  float64 // CPU seconds the whole machine used during the run
}

func (r xferRun) mbps() float64 { return float64(r.bytes) / r.secs / 1e6 }

// download fetches bigFile from addr once and times it from RETR to 226.
func download(addr string, size int64, bufSize int, timeout time.Duration) (int64, float64, error) {
	deadline := time.Now().Add(timeout)
	c, err := benchftp.Dial(addr, deadline)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Login(); err != nil {
		return 0, 0, err
	}
	if _, _, err := c.Cmd(2, "TYPE I"); err != nil {
		return 0, 0, benchftp.StepErr("TYPE", err)
	}
	buf := make([]byte, bufSize)
	start := time.Now()
	n, _, err := c.Transfer("RETR "+bigFile, deadline, 0, buf)
	secs := time.Since(start).Seconds()
	if err != nil {
		return n, secs, err
	}
	if n != size {
		return n, secs, fmt.Errorf("RETR: got %d bytes, want %d", n, size)
	}
	c.Quit()
	return n, secs, nil
}

type throughputResult struct {
	runs          []xferRun
	direct, proxy float64 // median MB/s
	machDirect    float64 // median machine CPU seconds per GiB, direct
	machProxy     float64 // same, through the proxy
	cpuPerGiB     float64 // proxy CPU seconds per GiB relayed
}

func runThroughput(o *options, serverAddr, proxyAddr string, proxyPID int) (*throughputResult, error) {
	res := &throughputResult{}
	fmt.Printf("\n== 1. Throughput: RETR of %s (EPSV, TYPE I), %d runs each, alternating ==\n", fmtBytes(o.size), o.runs)
	var cpuTotal float64
	var proxBytes int64
	for i := range o.runs {
		for _, via := range []string{"direct", "proxy"} {
			addr := serverAddr
			if via == "proxy" {
				addr = proxyAddr
			}
			cpu0, _ := cpuSeconds(proxyPID)
			m0, _ := machineCPU()
			n, secs, err := download(addr, o.size, o.bufSize, o.xferTimeout)
			m1, _ := machineCPU()
			cpu1, _ := cpuSeconds(proxyPID)
			if err != nil {
				return nil, fmt.Errorf("run %d %s: %w", i+1, via, err)
			}
			r := xferRun{via: via, bytes: n, secs: secs, busy: m1.busyCPUs(m0), mach: m1.busySecs(m0)}
			if via == "proxy" {
				r.cpu = cpu1 - cpu0
				cpuTotal += r.cpu
				proxBytes += n
			}
			res.runs = append(res.runs, r)
			extra := ""
			if via == "proxy" {
				extra = fmt.Sprintf("  proxy CPU %.2f s", r.cpu)
			}
			fmt.Printf("  run %d %-6s %9.1f MB/s  (%.2f s, machine %.2f of %d CPUs busy)%s\n",
				i+1, via, r.mbps(), secs, r.busy, runtime.NumCPU(), extra)
		}
	}
	var d, p, md, mp []float64
	for _, r := range res.runs {
		perGiB := r.mach / (float64(r.bytes) / (1 << 30))
		if r.via == "direct" {
			d, md = append(d, r.mbps()), append(md, perGiB)
		} else {
			p, mp = append(p, r.mbps()), append(mp, perGiB)
		}
	}
	res.direct, res.proxy = median(d), median(p)
	res.machDirect, res.machProxy = median(md), median(mp)
	res.cpuPerGiB = cpuTotal / (float64(proxBytes) / (1 << 30))
	fmt.Printf("  median: direct %.1f MB/s, proxy %.1f MB/s, ratio proxy/direct %s\n", res.direct, res.proxy, ratio(res.proxy, res.direct, 3))
	fmt.Printf("  proxy CPU time (utime+stime) during proxied runs: %.2f s per GiB\n", res.cpuPerGiB)
	fmt.Printf("  whole machine CPU time per GiB (median): direct %.2f s, proxy %.2f s\n", res.machDirect, res.machProxy)
	return res, nil
}

// ---- 2. session rate ----

type rateResult struct {
	busy     float64 // CPUs of the whole machine busy, on average
	proxyCPU float64 // proxy CPU ms per session (proxied run only)
	sessions int
	secs     float64
	rate     float64
	p50, p99 time.Duration
	errors   int
	errKinds map[string]int
}

// oneSession is connect, login, EPSV, LIST, EPSV, RETR of the 4 KiB file,
// QUIT.
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
	// ASCII mode (no TYPE I in this session) lets a server turn LF into
	// CRLF: ftpserverlib does, vsftpd does not.
	if n < smallSize || n > 2*smallSize {
		return benchftp.StepErr("RETR", fmt.Errorf("got %d bytes, want %d", n, smallSize))
	}
	return c.Quit()
}

// runRate runs the session loop against addr; proxyPID, when not zero, is
// the proxy whose CPU time is counted.
func runRate(o *options, label, addr string, proxyPID int) *rateResult {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		kinds = map[string]int{}
		nerr  atomic.Int64
		wg    sync.WaitGroup
	)
	m0, _ := machineCPU()
	var cpu0 float64
	if proxyPID != 0 {
		cpu0, _ = cpuSeconds(proxyPID)
	}
	start := time.Now()
	stopAt := start.Add(o.duration)
	for range o.clients {
		wg.Go(func() {
			buf := make([]byte, 32<<10)
			var mine []time.Duration
			for time.Now().Before(stopAt) {
				t0 := time.Now()
				err := oneSession(addr, o.sessionTimeout, buf)
				if err != nil {
					nerr.Add(1)
					mu.Lock()
					kinds[benchftp.ErrKind(err)]++
					mu.Unlock()
					// Back off a little so that a failing path does not
					// spin.
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
	secs := time.Since(start).Seconds()
	m1, _ := machineCPU()
	slices.Sort(lats)
	r := &rateResult{sessions: len(lats), secs: secs, rate: float64(len(lats)) / secs,
		p50: percentile(lats, 50), p99: percentile(lats, 99), errors: int(nerr.Load()), errKinds: kinds, busy: m1.busyCPUs(m0)}
	extra := ""
	if proxyPID != 0 && r.sessions > 0 {
		cpu1, _ := cpuSeconds(proxyPID)
		r.proxyCPU = (cpu1 - cpu0) * 1000 / float64(r.sessions)
		extra = fmt.Sprintf(", proxy CPU %.2f ms/session", r.proxyCPU)
	}
	fmt.Printf("  %-6s %7d sessions in %.1f s = %8.1f sessions/s  p50 %7.2f ms  p99 %7.2f ms  errors %d\n",
		label, r.sessions, secs, r.rate, ms(r.p50), ms(r.p99), r.errors)
	fmt.Printf("         machine %.2f of %d CPUs busy%s\n", r.busy, runtime.NumCPU(), extra)
	for _, k := range topKinds(kinds, 5) {
		fmt.Printf("         %6d × %s\n", kinds[k], k)
	}
	return r
}

func topKinds(m map[string]int, n int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	if len(keys) > n {
		keys = keys[:n]
	}
	return keys
}

// ---- 3. memory per idle session ----

type idleResult struct {
	sessions                 int
	failed                   int
	rssBefore, rssAfter      int64 // KiB
	fdBefore, fdAfter        int
	rssClosed                int64
	fdClosed                 int
	anonBefore, anonAfter    int64
	hwm                      int64
	perSession, anonPerSess  float64 // KiB
	openSecs, closeSecs      float64
	releaseSecs              float64
	nofileProxy, nofileBench string
}

func runIdle(o *options, proxyAddr string, proxyPID int) (*idleResult, error) {
	res := &idleResult{nofileProxy: nofileLimit(proxyPID), nofileBench: nofileLimit(os.Getpid())}
	fmt.Printf("\n== 3. Memory per idle session: %d logged-in control sessions through the proxy to internal/ftpd ==\n", o.idle)
	fmt.Printf("  open-file limit: bench %s, proxy %s\n", res.nofileBench, res.nofileProxy)
	time.Sleep(o.settle)
	st, err := procStatus(proxyPID)
	if err != nil {
		return nil, err
	}
	res.rssBefore, res.anonBefore = st["VmRSS"], st["RssAnon"]
	res.fdBefore, _ = fdCount(proxyPID)
	fmt.Printf("  before: VmRSS %d KiB (RssAnon %d KiB), %d fds\n", res.rssBefore, res.anonBefore, res.fdBefore)

	conns := make([]*benchftp.Client, o.idle)
	var failed atomic.Int64
	kinds := map[string]int{}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= o.idle {
					return
				}
				deadline := time.Now().Add(o.sessionTimeout)
				c, err := benchftp.Dial(proxyAddr, deadline)
				if err == nil {
					err = c.Login()
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					kinds[benchftp.ErrKind(err)]++
					mu.Unlock()
					continue
				}
				c.NoDeadline() // idle from now on, no timeout
				conns[i] = c
			}
		})
	}
	wg.Wait()
	res.openSecs = time.Since(t0).Seconds()
	res.failed = int(failed.Load())
	res.sessions = o.idle - res.failed
	fmt.Printf("  opened %d sessions in %.1f s (%d failed)\n", res.sessions, res.openSecs, res.failed)
	for _, k := range topKinds(kinds, 5) {
		fmt.Printf("         %6d × %s\n", kinds[k], k)
	}
	time.Sleep(o.settle)
	st, err = procStatus(proxyPID)
	if err != nil {
		return nil, err
	}
	res.rssAfter, res.anonAfter, res.hwm = st["VmRSS"], st["RssAnon"], st["VmHWM"]
	res.fdAfter, _ = fdCount(proxyPID)
	if res.sessions > 0 {
		res.perSession = float64(res.rssAfter-res.rssBefore) / float64(res.sessions)
		res.anonPerSess = float64(res.anonAfter-res.anonBefore) / float64(res.sessions)
	}
	fmt.Printf("  after %s settle: VmRSS %d KiB (RssAnon %d KiB, VmHWM %d KiB), %d fds\n",
		o.settle, res.rssAfter, res.anonAfter, res.hwm, res.fdAfter)
	fmt.Printf("  per idle session: %.1f KiB VmRSS (%.1f KiB RssAnon), %.2f fds\n",
		res.perSession, res.anonPerSess, float64(res.fdAfter-res.fdBefore)/float64(max(res.sessions, 1)))

	// Close everything and see the proxy come back down.
	t0 = time.Now()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		if n, _ := fdCount(proxyPID); n <= res.fdBefore {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.closeSecs = time.Since(t0).Seconds()
	res.fdClosed, _ = fdCount(proxyPID)
	time.Sleep(o.settle)
	rss, _ := rssKiB(proxyPID)
	fmt.Printf("  closed all: %d fds after %.1f s (baseline %d); VmRSS %d KiB %s later (baseline %d KiB, %+d KiB)\n",
		res.fdClosed, res.closeSecs, res.fdBefore, rss, o.settle, res.rssBefore, rss-res.rssBefore)
	// The Go runtime gives freed memory back to the kernel only after a
	// garbage collection, and an idle proxy allocates nothing that would
	// start one before the periodic forced GC (2 minutes after the last
	// one). Wait for that, forcing nothing, until at least three quarters
	// of what the sessions added is gone. (The runtime keeps some heap
	// above the live data, so the last quarter comes back slowly or not
	// at all: that is reuse, not a leak.)
	near := res.rssBefore + max((res.rssAfter-res.rssBefore)/4, 2048)
	t1 := time.Now()
	for rss > near && time.Since(t1) < o.releaseWait {
		time.Sleep(time.Second)
		if rss, err = rssKiB(proxyPID); err != nil {
			return nil, err
		}
	}
	res.rssClosed = rss
	res.releaseSecs = time.Since(t0).Seconds()
	kept := 100 * float64(rss-res.rssBefore) / float64(max(res.rssAfter-res.rssBefore, 1))
	if rss <= near {
		fmt.Printf("  VmRSS back near baseline %.0f s after closing: %d KiB (%+d KiB, %.0f %% of the sessions' growth kept)\n",
			res.releaseSecs, rss, rss-res.rssBefore, kept)
	} else {
		fmt.Printf("  VmRSS still %d KiB %.0f s after closing (%+d KiB, %.0f %% of the sessions' growth kept)\n",
			rss, res.releaseSecs, rss-res.rssBefore, kept)
	}
	return res, nil
}

// ---- helpers ----

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

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// ratio formats a/b, or "-" when b is zero.
func ratio(a, b float64, prec int) string {
	if b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', prec, 64)
}
