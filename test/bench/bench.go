package main

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

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

type throughputResult struct {
	runs          []xferRun
	direct, proxy float64 // median MB/s
	machDirect    float64 // median machine CPU seconds per GiB, direct
	machProxy     float64 // same, through the proxy
	cpuPerGiB     float64 // proxy CPU seconds per GiB relayed
}

func runThroughput(o *options, serverAddr, proxyAddr string, proxyPID int) (*throughputResult, error) {
	res := &throughputResult{}
	fmt.Printf("\n== 1. Throughput: RETR of %s (EPSV, TYPE I), %d runs each, alternating ==\n", benchkit.FormatSize(o.Size), o.Runs)
	var cpuTotal float64
	var proxBytes int64
	for i := range o.Runs {
		for _, via := range []string{"direct", "proxy"} {
			addr := serverAddr
			if via == "proxy" {
				addr = proxyAddr
			}
			cpu0, _ := benchkit.CPUSeconds(proxyPID)
			m0, _ := benchkit.MachineCPU()
			n, secs, err := benchkit.Download(addr, o.Size, make([]byte, o.BufSize), o.XferTimeout, nil)
			m1, _ := benchkit.MachineCPU()
			cpu1, _ := benchkit.CPUSeconds(proxyPID)
			if err != nil {
				return nil, fmt.Errorf("run %d %s: %w", i+1, via, err)
			}
			r := xferRun{via: via, bytes: n, secs: secs}
			r.mach, r.busy = busy(m1.Sub(m0))
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
	res.direct, res.proxy = benchkit.Median(d), benchkit.Median(p)
	res.machDirect, res.machProxy = benchkit.Median(md), benchkit.Median(mp)
	res.cpuPerGiB = cpuTotal / (float64(proxBytes) / (1 << 30))
	fmt.Printf("  median: direct %.1f MB/s, proxy %.1f MB/s, ratio proxy/direct %s\n", res.direct, res.proxy, benchkit.Ratio(res.proxy, res.direct, 3))
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

// runRate runs the session loop against addr; proxyPID, when not zero, is
// the proxy whose CPU time is counted.
func runRate(o *options, label, addr string, proxyPID int) *rateResult {
	return runRateWith(o, benchftp.Dialer{}, label, addr, proxyPID)
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
	res := &idleResult{nofileProxy: benchkit.NofileLimit(proxyPID), nofileBench: benchkit.NofileLimit(os.Getpid())}
	fmt.Printf("\n== 3. Memory per idle session: %d logged-in control sessions through the proxy to internal/ftpd ==\n", o.idle)
	fmt.Printf("  open-file limit: bench %s, proxy %s\n", res.nofileBench, res.nofileProxy)
	time.Sleep(o.settle)
	st, err := benchkit.ProcStatus(proxyPID)
	if err != nil {
		return nil, err
	}
	res.rssBefore, res.anonBefore = st["VmRSS"], st["RssAnon"]
	res.fdBefore, _ = benchkit.FDCount(proxyPID)
	fmt.Printf("  before: VmRSS %d KiB (RssAnon %d KiB), %d fds\n", res.rssBefore, res.anonBefore, res.fdBefore)

	idle := benchkit.OpenIdle(benchftp.Dialer{}, proxyAddr, o.idle, 32, o.SessionTimeout)
	res.openSecs, res.failed, res.sessions = idle.Secs, idle.Failed, idle.Opened
	fmt.Printf("  opened %d sessions in %.1f s (%d failed)\n", res.sessions, res.openSecs, res.failed)
	for _, k := range benchkit.TopKinds(idle.ErrKinds, 5) {
		fmt.Printf("         %6d × %s\n", idle.ErrKinds[k], k)
	}
	time.Sleep(o.settle)
	st, err = benchkit.ProcStatus(proxyPID)
	if err != nil {
		return nil, err
	}
	res.rssAfter, res.anonAfter, res.hwm = st["VmRSS"], st["RssAnon"], st["VmHWM"]
	res.fdAfter, _ = benchkit.FDCount(proxyPID)
	if res.sessions > 0 {
		res.perSession = float64(res.rssAfter-res.rssBefore) / float64(res.sessions)
		res.anonPerSess = float64(res.anonAfter-res.anonBefore) / float64(res.sessions)
	}
	fmt.Printf("  after %s settle: VmRSS %d KiB (RssAnon %d KiB, VmHWM %d KiB), %d fds\n",
		o.settle, res.rssAfter, res.anonAfter, res.hwm, res.fdAfter)
	fmt.Printf("  per idle session: %.1f KiB VmRSS (%.1f KiB RssAnon), %.2f fds\n",
		res.perSession, res.anonPerSess, float64(res.fdAfter-res.fdBefore)/float64(max(res.sessions, 1)))

	// Close everything and see the proxy come back down.
	t0 := time.Now()
	idle.Close()
	benchkit.WaitFDs(proxyPID, res.fdBefore, 30*time.Second)
	res.closeSecs = time.Since(t0).Seconds()
	res.fdClosed, _ = benchkit.FDCount(proxyPID)
	time.Sleep(o.settle)
	rss, _ := benchkit.RSSKiB(proxyPID)
	fmt.Printf("  closed all: %d fds after %.1f s (baseline %d); VmRSS %d KiB %s later (baseline %d KiB, %+d KiB)\n",
		res.fdClosed, res.closeSecs, res.fdBefore, rss, o.settle, res.rssBefore, rss-res.rssBefore)
	// Wait, forcing nothing (see WaitRSS), until at least three quarters
	// of what the sessions added is gone. (The runtime keeps some heap
	// above the live data, so the last quarter comes back slowly or not
	// at all: that is reuse, not a leak.)
	near := res.rssBefore + max((res.rssAfter-res.rssBefore)/4, 2048)
	if rss, err = benchkit.WaitRSS(proxyPID, near, o.releaseWait); err != nil {
		return nil, err
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
