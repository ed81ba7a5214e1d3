package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// openers log idle sessions in concurrently.
const openers = 32

// noKeepAlive is the benchmark's client: no TCP keepalive of its own, so
// that the probes on an idle session are the proxy's.
var noKeepAlive = benchftp.Dialer{KeepAlive: -1}

type idleResult struct {
	sessions, failed     int
	errKinds             map[string]int
	openSecs, closeSecs  float64
	before, with, closed benchkit.ProcSnap
	released             int64 // VmRSS after --release-wait, KiB (0: not waited)
	releaseSecs          float64
	nofile               string
	warnings             int // lines the proxy logged at warn and above
}

func (r *idleResult) kibPerSession() float64 {
	return float64(r.with.RSS-r.before.RSS) / float64(max(r.sessions, 1))
}

func (r *idleResult) fdsPerSession() float64 {
	return float64(r.with.FDs-r.before.FDs) / float64(max(r.sessions, 1))
}

// idleProxy starts the scripted server and the proxy name in front of it,
// for sessions idle sessions, with args; stop stops both.
func (e *env) idleProxy(name string, sessions int, args ...string) (px *nstest.Proc, addr string, stop func(), err error) {
	srv, err := newScripted(nil)
	if err != nil {
		return nil, "", nil, err
	}
	px, addr, err = e.proxy(name, srv.addr(), nil, append([]string{"--max-sessions", strconv.Itoa(sessions + 1000)}, args...)...)
	if err != nil {
		srv.close()
		return nil, "", nil, err
	}
	return px, addr, func() { px.Stop(stopGrace); srv.close() }, nil
}

// runIdle holds o.idle logged-in sessions open through a fresh proxy in
// front of the scripted server and reads the proxy's /proc figures
// before, with and after them.
func (e *env) runIdle() (*idleResult, error) {
	o := e.o
	px, addr, stop, err := e.idleProxy("proxy-idle", o.idle, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	defer stop()
	pid := px.PID()
	res := &idleResult{nofile: benchkit.NofileLimit(pid)}
	fmt.Printf("\n== idle: %d logged-in idle sessions through the proxy (pid %d, open-file limit %s; bench %s) ==\n",
		o.idle, pid, res.nofile, benchkit.NofileLimit(os.Getpid()))
	time.Sleep(o.settle)
	if res.before, err = benchkit.Snapshot(pid); err != nil {
		return nil, err
	}
	fmt.Printf("  before: %s\n", snap(res.before))
	idle := benchkit.OpenIdle(noKeepAlive, addr, o.idle, openers, o.SessionTimeout)
	res.sessions, res.failed, res.errKinds, res.openSecs = idle.Opened, idle.Failed, idle.ErrKinds, idle.Secs
	fmt.Printf("  opened %d sessions in %.1f s with %d openers (%d failed)\n", res.sessions, res.openSecs, openers, res.failed)
	printKinds(res.errKinds)
	time.Sleep(o.settle)
	if res.with, err = benchkit.Snapshot(pid); err != nil {
		return nil, err
	}
	fmt.Printf("  with them, after %s: %s\n", o.settle, snap(res.with))
	fmt.Printf("  per session: %.1f KiB VmRSS (%.1f KiB RssAnon), %.2f fds\n", res.kibPerSession(),
		float64(res.with.Anon-res.before.Anon)/float64(max(res.sessions, 1)), res.fdsPerSession())

	t0 := time.Now()
	idle.Close()
	_, res.closeSecs = benchkit.WaitFDs(pid, res.before.FDs, 30*time.Second)
	time.Sleep(o.settle)
	if res.closed, err = benchkit.Snapshot(pid); err != nil {
		return nil, err
	}
	fmt.Printf("  closed all: fds back to %d in %.1f s; %s later: %s\n", res.closed.FDs, res.closeSecs, o.settle, snap(res.closed))
	if o.releaseWait > 0 {
		near := res.before.RSS + max((res.with.RSS-res.before.RSS)/4, 2048)
		if res.released, err = benchkit.WaitRSS(pid, near, o.releaseWait); err != nil {
			return nil, err
		}
		res.releaseSecs = time.Since(t0).Seconds()
		fmt.Printf("  VmRSS %d KiB %.0f s after closing (%+d KiB over the baseline)\n", res.released, res.releaseSecs, res.released-res.before.RSS)
	}
	// --max-sessions is above what the proxy's descriptor check allows
	// (it counts 8 descriptors a session, for transfers): that start-up
	// warning is expected here.
	lines := logSince(px, 0)
	res.warnings = len(lines) - count(lines, hasMsg(txtNofileShort))
	if res.warnings > 0 {
		fmt.Printf("  UNEXPECTED: the proxy logged %d lines at warn level or above besides the descriptor check at start; last ones:\n%s\n",
			res.warnings, benchkit.Indent(nstest.Tail(px.Log(), 5)))
	}
	return res, nil
}

type keepaliveResult struct {
	sessions, failed int
	period           string // the proxy's --tcp-keepalive
	hold             time.Duration
	died             map[string]int // how sessions ended during the hold
	firstDeath       time.Duration  // after the last one opened
	lastDeath        time.Duration
	alive            int    // answered the NOOP at the end
	ended            string // the proxy's session-ended reasons during the hold
}

// runKeepalive opens o.kaSessions idle sessions together, holds them for
// o.kaHold and asks each a NOOP. Every session has a reader that notes
// when its control connection dies.
func (e *env) runKeepalive() (*keepaliveResult, error) {
	o := e.o
	res := &keepaliveResult{period: o.kaPeriod, hold: o.kaHold, died: map[string]int{}}
	args := []string{"--idle-timeout", (o.kaHold + 10*time.Minute).String()}
	if o.kaPeriod != "" {
		args = append(args, "--tcp-keepalive", o.kaPeriod)
	} else {
		res.period = proxy.DefaultKeepAlive.String() + " (default)"
	}
	px, addr, stop, err := e.idleProxy("proxy-keepalive", o.kaSessions, args...)
	if err != nil {
		return nil, err
	}
	defer stop()
	fmt.Printf("\n== keepalive: %d idle sessions opened together, held %s (proxy --tcp-keepalive %s; no keepalive at the client or the server) ==\n",
		o.kaSessions, o.kaHold, res.period)
	off := px.LogSize()
	idle := benchkit.OpenIdle(noKeepAlive, addr, o.kaSessions, openers, o.SessionTimeout)
	defer idle.Close()
	res.sessions, res.failed = idle.Opened, idle.Failed
	fmt.Printf("  opened %d in %.1f s (%d failed)\n", res.sessions, idle.Secs, res.failed)
	printKinds(idle.ErrKinds)

	// One reader per session: the first reply it reads ends it, so
	// before the NOOP only the connection's end does.
	type outcome struct {
		at   time.Time
		code int
		err  error
	}
	var (
		mu    sync.Mutex
		out   = map[*benchftp.Client]outcome{}
		wg    sync.WaitGroup
		start = time.Now()
	)
	for _, c := range idle.Clients {
		if c == nil {
			continue
		}
		wg.Go(func() {
			code, _, err := c.Reply(0)
			mu.Lock()
			out[c] = outcome{time.Now(), code, err}
			mu.Unlock()
		})
	}
	for left := o.kaHold; left > 0; {
		step := min(left, 30*time.Second)
		time.Sleep(step)
		left -= step
		mu.Lock()
		dead := len(out)
		mu.Unlock()
		fmt.Printf("  %4.0f s: %d of %d sessions still open\n", time.Since(start).Seconds(), res.sessions-dead, res.sessions)
	}
	mu.Lock()
	for _, x := range out {
		kind := fmt.Sprintf("reply %d", x.code)
		if x.err != nil {
			kind = benchftp.ErrKind(x.err)
		}
		res.died[kind]++
		d := x.at.Sub(start)
		if res.firstDeath == 0 || d < res.firstDeath {
			res.firstDeath = d
		}
		res.lastDeath = max(res.lastDeath, d)
	}
	mu.Unlock()
	for _, c := range idle.Clients {
		if c != nil {
			c.Conn().SetDeadline(time.Now().Add(15 * time.Second))
			c.Send("NOOP")
		}
	}
	wg.Wait()
	for _, x := range out {
		if x.err == nil && x.code == 200 {
			res.alive++
		}
	}
	lines := logSince(px, off)
	res.ended = tally(lines, isMsg(proxy.MsgSessionEnded), "reason")
	fmt.Printf("  after %s: %d of %d answered a NOOP", o.kaHold, res.alive, res.sessions)
	if n := len(res.died); n > 0 {
		fmt.Printf("; died during the hold, %.0f-%.0f s after opening:", res.firstDeath.Seconds(), res.lastDeath.Seconds())
		for _, k := range benchkit.TopKinds(res.died, 5) {
			fmt.Printf(" %d × %s;", res.died[k], k)
		}
	}
	fmt.Printf("\n  proxy %q during the hold: %s\n", proxy.MsgSessionEnded, res.ended)
	if res.alive < res.sessions {
		fmt.Printf("  UNEXPECTED: %d sessions did not survive %s idle\n", res.sessions-res.alive, o.kaHold)
	}
	return res, nil
}

// snap is a ProcSnap in a line.
func snap(s benchkit.ProcSnap) string {
	return fmt.Sprintf("VmRSS %d KiB (RssAnon %d KiB, VmHWM %d KiB), %d fds, %d threads", s.RSS, s.Anon, s.HWM, s.FDs, s.Threads)
}

// printKinds prints the most frequent error kinds.
func printKinds(kinds map[string]int) {
	for _, k := range benchkit.TopKinds(kinds, 5) {
		fmt.Printf("         %6d × %s\n", kinds[k], k)
	}
}
