package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

type churnResult struct {
	sessions, clients int
	server            string
	rate              benchkit.Rate
	before, peak      benchkit.ProcSnap
	after             benchkit.ProcSnap
	kindsBefore       map[string]int // fds by kind
	kindsAfter        map[string]int
	socketsBackSecs   float64
	cpuMs             float64 // proxy CPU per session
	warnings          int     // lines the proxy logged at warn and above
	warned            string  // their messages
	nofile            string
}

// runChurn runs o.sessions short sessions against vsftpd through a fresh
// proxy from o.Clients concurrent clients, half of them with a LIST and
// half with a RETR of SmallFile.
func (e *env) runChurn() (*churnResult, error) {
	o := e.o
	upstream, server := e.vsftpd, e.res.vsftpd
	if o.churnServer == "ftpd" {
		// Passive ports out of ip_local_port_range, like vsftpd's: at
		// hundreds of sessions a second the TIME_WAITs of loopback fill
		// that range, and a listen on port 0 fails.
		lo, hi, _ := benchkit.ParseRange(o.ServerPasv)
		srv, err := ftpd.Start(ftpd.Options{Dir: e.root, Listen: "127.0.0.1:0", PassiveLo: lo, PassiveHi: hi})
		if err != nil {
			return nil, err
		}
		defer srv.Close()
		upstream, server = srv.Addr(), "internal/ftpd (in the benchmark process)"
	}
	// warn: at info each session would log six lines.
	px, addr, err := e.proxy("proxy-churn", upstream, nil, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	defer px.Stop(stopGrace)
	pid := px.PID()
	res := &churnResult{sessions: o.sessions, clients: o.Clients, server: server, nofile: benchkit.NofileLimit(pid)}
	fmt.Printf("\n== churn: %d short sessions (login, EPSV+LIST or EPSV+RETR %s, QUIT) from %d clients, proxy pid %d, server %s ==\n",
		o.sessions, benchkit.FormatSize(benchkit.SmallSize), o.Clients, pid, server)
	time.Sleep(o.settle)
	if res.before, err = benchkit.Snapshot(pid); err != nil {
		return nil, err
	}
	res.kindsBefore = benchkit.FDKinds(pid)
	fmt.Printf("  before: %s (%s)\n", snap(res.before), kinds(res.kindsBefore))
	cpu0, _ := benchkit.CPUSeconds(pid)

	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { res.peak = watchPeak(pid, &done, o.sessions, stop) })
	res.rate = benchkit.RunLoad(o.Clients, 24*time.Hour, o.sessions, func(i int, buf []byte) error {
		defer done.Add(1)
		return benchkit.ShortSession(addr, o.SessionTimeout, buf, i%2 == 0)
	})
	close(stop)
	wg.Wait()
	cpu1, _ := benchkit.CPUSeconds(pid)
	ok := len(res.rate.Latencies)
	res.cpuMs = (cpu1 - cpu0) * 1000 / float64(max(ok, 1))
	fmt.Printf("  %d sessions in %.1f s = %.1f sessions/s, p50 %.2f ms, p99 %.2f ms, %d errors, proxy CPU %.2f ms per session\n",
		ok, res.rate.Secs, float64(ok)/res.rate.Secs, benchkit.Ms(benchkit.Percentile(res.rate.Latencies, 50)),
		benchkit.Ms(benchkit.Percentile(res.rate.Latencies, 99)), res.rate.Errors, res.cpuMs)
	printKinds(res.rate.ErrKinds)
	// Sessions end a moment after their QUIT: wait for their sockets.
	t0 := time.Now()
	for benchkit.FDKinds(pid)["socket"] > res.kindsBefore["socket"] && time.Since(t0) < 30*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	res.socketsBackSecs = time.Since(t0).Seconds()
	time.Sleep(o.settle)
	if res.after, err = benchkit.Snapshot(pid); err != nil {
		return nil, err
	}
	res.kindsAfter = benchkit.FDKinds(pid)
	fmt.Printf("  peak:   %s\n  after:  %s (%s; sockets back in %.1f s)\n", snap(res.peak), snap(res.after), kinds(res.kindsAfter), res.socketsBackSecs)
	fmt.Println("  goroutines: not observable from outside yet (the proxy has no metrics endpoint); threads and fds stand in")
	if extra := res.extraFDs(); extra != "" {
		fmt.Printf("  UNEXPECTED: more descriptors than before the churn: %s\n", extra)
	}
	if n := res.kindsAfter["pipe"] - res.kindsBefore["pipe"]; n > 0 {
		fmt.Printf("  the %d pipe fds more than before are Go's splice pipe cache (internal/poll keeps pipes for the next splice and closes them at a garbage collection), not sessions\n", n)
	}
	lines := logSince(px, 0)
	res.warnings, res.warned = len(lines), tally(lines, func(logLine) bool { return true }, "msg")
	if res.warnings > 0 {
		fmt.Printf("  the proxy logged %d lines at warn level or above; last ones:\n%s\n", res.warnings, benchkit.Indent(nstest.Tail(px.Log(), 5)))
	}
	return res, nil
}

// extraFDs lists the kinds of descriptors the proxy holds more of after the
// churn than before it, except pipes (Go's splice pipe cache); "" if none.
func (r *churnResult) extraFDs() string {
	var out []string
	for k, n := range r.kindsAfter {
		if k != "pipe" && n > r.kindsBefore[k] {
			out = append(out, fmt.Sprintf("%d × %s", n-r.kindsBefore[k], k))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// kinds formats FDKinds, most frequent first.
func kinds(m map[string]int) string {
	var out []string
	for _, k := range benchkit.TopKinds(m, len(m)) {
		out = append(out, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(out, ", ")
}

// watchPeak samples pid four times a second until stop is closed and
// returns the largest of each figure; every 15 s it prints the progress.
func watchPeak(pid int, done *atomic.Int64, total int, stop <-chan struct{}) benchkit.ProcSnap {
	var peak benchkit.ProcSnap
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	start, last := time.Now(), time.Now()
	for {
		select {
		case <-stop:
			return peak
		case <-t.C:
		}
		s, err := benchkit.Snapshot(pid)
		if err != nil {
			continue
		}
		peak.RSS, peak.Anon, peak.HWM = max(peak.RSS, s.RSS), max(peak.Anon, s.Anon), max(peak.HWM, s.HWM)
		peak.FDs, peak.Threads = max(peak.FDs, s.FDs), max(peak.Threads, s.Threads)
		if time.Since(last) >= 15*time.Second {
			last = time.Now()
			n := done.Load()
			fmt.Printf("  %4.0f s: %d of %d sessions, %.0f/s; proxy %d fds, %d threads\n",
				time.Since(start).Seconds(), n, total, float64(n)/time.Since(start).Seconds(), s.FDs, s.Threads)
		}
	}
}
