package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// ---- connections that never log in ----

// faultSlowloris: connections that never complete a login, in three
// kinds: silent after the greeting; sending "USER anonymous" one byte
// every 500 ms (a line never completed); a refused USER (530) and then
// nothing.
func (e *env) faultSlowloris() (faultResult, error) {
	o := e.o
	kinds := []string{"silent", "byte by byte", "USER refused"}
	r := faultResult{did: fmt.Sprintf("%d connections that never log in (%s, round robin); --login-timeout %s",
		o.slowloris, strings.Join(kinds, " / "), o.loginTimeout)}
	px, addr, err := e.proxy("proxy-slowloris", e.vsftpd, nil, "--login-timeout", o.loginTimeout.String())
	if err != nil {
		return r, err
	}
	defer px.Stop(stopGrace)
	off := px.LogSize()
	type seen struct {
		kind, what, end string
		after           time.Duration
	}
	results := make([]seen, o.slowloris)
	var wg sync.WaitGroup
	for i := range o.slowloris {
		wg.Go(func() {
			s := &results[i]
			s.kind = kinds[i%len(kinds)]
			t0 := time.Now()
			c, err := noKeepAlive.Dial(addr, t0.Add(o.loginTimeout+20*time.Second))
			if err != nil {
				s.what = benchftp.ErrKind(err)
				return
			}
			defer c.Close()
			switch i % len(kinds) {
			case 1:
				go func() {
					for j := 0; ; j++ {
						if _, err := c.Conn().Write([]byte{"USER anonymous"[j%14]}); err != nil {
							return
						}
						time.Sleep(500 * time.Millisecond)
					}
				}()
			case 2:
				// vsftpd here is anonymous only: 530.
				if _, _, err := c.Cmd(0, "USER root"); err != nil {
					s.what = benchftp.ErrKind(err)
					return
				}
			}
			code, msg, err := c.Reply(0)
			s.after = time.Since(t0)
			if err != nil {
				s.what = endOf(err)
				return
			}
			s.what = fmt.Sprintf("%d %s", code, msg)
			_, _, err = c.Reply(0)
			s.end = endOf(err)
		})
	}
	wg.Wait()
	var got, closed int
	var times []time.Duration
	other := map[string]int{}
	for _, s := range results {
		if strings.HasPrefix(s.what, "421 Login timeout") {
			got++
			times = append(times, s.after)
			if s.end == "EOF" {
				closed++
			}
		} else {
			other[s.kind+": "+s.what]++
		}
	}
	slices.Sort(times)
	example := ""
	if got > 0 {
		example = results[slices.IndexFunc(results, func(s seen) bool { return strings.HasPrefix(s.what, "421") })].what
	}
	r.client = fmt.Sprintf("%d of %d got %q and then EOF (%d)", got, o.slowloris, example, closed)
	for _, k := range benchkit.TopKinds(other, 3) {
		r.client += fmt.Sprintf("; %d × %s", other[k], k)
	}
	if len(times) > 0 {
		r.after = fmt.Sprintf("%.2f-%.2f s after connecting (median %.2f)", times[0].Seconds(), times[len(times)-1].Seconds(), benchkit.Median(secs(times)))
	}
	byLogin := func(l logLine) bool { return l.msg() == proxy.MsgSessionEnded && l.str("reason") == reasonLogin }
	waitLog(px, off, 5*time.Second, func(logLine) bool { return count(logSince(px, off), byLogin) >= o.slowloris })
	lines := logSince(px, off)
	r.logged = fmt.Sprintf("%q reasons: %s", proxy.MsgSessionEnded, tally(lines, isMsg(proxy.MsgSessionEnded), "reason"))
	r.expect(got == o.slowloris, "%d connections did not get 421 Login timeout", o.slowloris-got)
	r.expect(closed == got, "%d connections stayed open after the 421", got-closed)
	r.expect(len(times) == 0 || times[len(times)-1] < o.loginTimeout+2*time.Second, "a 421 came more than 2 s after the login timeout")
	r.expect(count(lines, byLogin) == o.slowloris, "the proxy did not end every session with reason %q", reasonLogin)
	return r, nil
}

func secs(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, x := range d {
		out[i] = x.Seconds()
	}
	return out
}

// garbageBatch is how many garbage lines one write sends.
const garbageBatch = 32

// garbageLines are refused by the proxy itself (bare LF, NUL) and never
// reach the server.
var garbageLines = func() []byte {
	var b []byte
	for i := range garbageBatch {
		if i%2 == 0 {
			b = fmt.Appendf(b, "\x00GARBAGE %d\r\n", i)
		} else {
			b = fmt.Appendf(b, "bare\nLF %d\r\n", i)
		}
	}
	return b
}()

// faultGarbage: logged-in connections send lines the proxy refuses, as
// fast as it answers them, for o.garbageFor; then QUIT.
func (e *env) faultGarbage() (faultResult, error) {
	o := e.o
	r := faultResult{did: fmt.Sprintf("%d logged-in connections send lines with NUL or a bare LF for %s, reading the replies, then QUIT "+
		"(before the warnings were bounded: 106 MB of log from 200 connections × 30 s, 530 KiB each)", o.garbageConns, o.garbageFor)}
	px, addr, err := e.proxy("proxy-garbage", e.vsftpd, nil, "--max-sessions", fmt.Sprint(o.garbageConns+100))
	if err != nil {
		return r, err
	}
	defer px.Stop(stopGrace)
	off := px.LogSize()
	var sent, refused, quit atomic.Int64
	errs := map[string]int{}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		errs[benchftp.ErrKind(err)]++
		mu.Unlock()
	}
	idle := benchkit.OpenIdle(noKeepAlive, addr, o.garbageConns, openers, o.SessionTimeout)
	defer idle.Close()
	for k, n := range idle.ErrKinds {
		errs[k] += n
	}
	cpu0, _ := benchkit.CPUSeconds(px.PID())
	start := time.Now()
	stopAt := start.Add(o.garbageFor)
	var wg sync.WaitGroup
	for _, c := range idle.Clients {
		if c == nil {
			continue
		}
		wg.Go(func() {
			c.Conn().SetDeadline(stopAt.Add(20 * time.Second))
			// At most two batches unanswered: as fast as the proxy
			// answers, without a backlog in the socket buffers that
			// would outlast the flood.
			credit := make(chan struct{}, 2)
			credit <- struct{}{}
			credit <- struct{}{}
			done := make(chan struct{})
			defer close(done)
			go func() {
				for time.Now().Before(stopAt) {
					select {
					case <-credit:
					case <-done:
						return
					}
					if _, err := c.Conn().Write(garbageLines); err != nil {
						return
					}
					sent.Add(garbageBatch)
				}
				c.Send("QUIT")
			}()
			for n := 1; ; n++ {
				code, _, err := c.Reply(0)
				if err != nil {
					fail(err)
					return
				}
				switch code {
				case 500:
					refused.Add(1)
				case 221:
					quit.Add(1)
					return
				}
				if n%garbageBatch == 0 {
					select {
					case credit <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	cpu1, _ := benchkit.CPUSeconds(px.PID())
	// Every session's last lines (the refusal summary, session ended).
	waitLog(px, off, 10*time.Second, func(logLine) bool {
		return count(logSince(px, off), isMsg(proxy.MsgSessionEnded)) >= o.garbageConns
	})
	logBytes := px.LogSize() - off
	lines := logSince(px, off)
	perSession := map[string]int{}
	var omitted int64
	for _, l := range lines {
		if l.str("level") == "warn" {
			perSession[l.str("session")]++
		}
		if l.msg() == proxy.MsgRefusedOmitted {
			omitted += l.num("count")
		}
	}
	most := 0
	for _, n := range perSession {
		most = max(most, n)
	}
	r.client = fmt.Sprintf("%d lines sent in %.1f s (%.0f/s), %d × 500 back; %d of %d sessions ended with 221 at their QUIT", sent.Load(),
		took.Seconds(), float64(sent.Load())/took.Seconds(), refused.Load(), quit.Load(), o.garbageConns)
	for _, k := range benchkit.TopKinds(errs, 3) {
		r.client += fmt.Sprintf("; %d × %s", errs[k], k)
	}
	r.logged = fmt.Sprintf("%d bytes of log from the logins on = %.1f KiB per connection (%d lines); at most %d warnings per session (%q ×%d, %q ×%d, %d refusals counted only); proxy CPU %.1f s during the flood",
		logBytes, float64(logBytes)/1024/float64(o.garbageConns), len(lines), most,
		txtRefusedLine, count(lines, hasMsg(txtRefusedLine)), proxy.MsgRefusedOmitted, count(lines, isMsg(proxy.MsgRefusedOmitted)), omitted, cpu1-cpu0)
	r.after = fmt.Sprintf("warnings for a session's first refused lines, the summary at its end; flood and QUITs %.1f s", took.Seconds())
	r.expect(int(quit.Load()) == o.garbageConns, "%d sessions did not end with 221", o.garbageConns-int(quit.Load()))
	r.expect(most <= 6, "a session logged %d warnings (5 refusals and one summary expected at most)", most)
	return r, nil
}

// ---- out of descriptors ----

// faultNofile: the proxy runs with RLIMIT_NOFILE limit and
// --max-sessions 1000; idle sessions are opened one by one until one
// fails, then three more are tried.
func (e *env) faultNofile(limit int) (faultResult, error) {
	r := faultResult{name: fmt.Sprintf("nofile %d", limit),
		did: fmt.Sprintf("proxy under prlimit --nofile=%d:%d with --max-sessions 1000; idle sessions one by one until one fails, then 3 more", limit, limit)}
	px, addr, err := e.proxy(fmt.Sprintf("proxy-nofile-%d", limit), e.vsftpd,
		[]string{"prlimit", fmt.Sprintf("--nofile=%d:%d", limit, limit), "--"}, "--max-sessions", "1000")
	if err != nil {
		return r, err
	}
	defer px.Stop(stopGrace)
	pid := px.PID()
	startup := logSince(px, 0)
	fds0, _ := benchkit.FDCount(pid)
	off := px.LogSize()
	var open []*benchftp.Client
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	var firstErr error
	var firstAfter time.Duration
	for len(open) < limit {
		t0 := time.Now()
		c, err := noKeepAlive.Open(addr, t0.Add(5*time.Second))
		if err != nil {
			firstErr, firstAfter = err, time.Since(t0)
			break
		}
		c.NoDeadline()
		open = append(open, c)
	}
	fdsFull, _ := benchkit.FDCount(pid)
	more := map[string]int{}
	var moreAfter []time.Duration
	for range 3 {
		t0 := time.Now()
		c, err := noKeepAlive.Dial(addr, t0.Add(5*time.Second))
		moreAfter = append(moreAfter, time.Since(t0))
		if err != nil {
			more[benchftp.ErrKind(err)]++
			continue
		}
		more["greeting 2xx: got in"]++
		c.Close()
	}
	lines := logSince(px, off)
	for _, c := range open {
		c.Close()
	}
	opened := len(open)
	open = nil
	benchkit.WaitFDs(pid, fds0, 10*time.Second)
	recovered := "a new session afterwards works"
	if err := benchkit.Session(addr, 10*time.Second, make([]byte, 32<<10)); err != nil {
		recovered = "a new session afterwards fails: " + benchftp.ErrKind(err)
	}
	firstKind := "none failed"
	if firstErr != nil {
		firstKind = benchftp.ErrKind(firstErr)
	}
	r.client = fmt.Sprintf("%d sessions opened (proxy fds %d → %d); the next: %s in %.2f s; 3 more:", opened, fds0, fdsFull, firstKind, firstAfter.Seconds())
	for _, k := range benchkit.TopKinds(more, 3) {
		r.client += fmt.Sprintf(" %d × %s;", more[k], k)
	}
	r.client += " " + recovered
	r.after = fmt.Sprintf("%.2f s for the first refusal; %s for the 3 more", firstAfter.Seconds(), durs(moreAfter))
	r.logged = fmt.Sprintf("at start: %d × %q; then %d × %q, %d × %q, %d × %q",
		count(startup, hasMsg(txtNofileShort)), txtNofileShort, count(lines, hasMsg(txtOutOfFDs)), txtOutOfFDs,
		count(lines, hasMsg(txtAcceptFailed)), txtAcceptFailed, count(lines, isMsg(proxy.MsgUpstreamDown)), proxy.MsgUpstreamDown)
	r.expect(count(startup, hasMsg(txtNofileShort)) == 1, "no start-up warning that --max-sessions needs more descriptors")
	r.expect(firstErr != nil, "no session was refused below %d sessions", limit)
	r.expect(firstErr == nil || strings.Contains(firstKind, "421 Too many connections"), "the first refused session did not get 421 Too many connections")
	r.expect(more["greeting: reply 421 Too many connections: the proxy is out of resources, try again later."] == 3,
		"not every later session got 421 Too many connections")
	r.expect(count(lines, isMsg(proxy.MsgUpstreamDown)) == 0, "the proxy called its own lack of descriptors %q", proxy.MsgUpstreamDown)
	r.expect(strings.HasPrefix(recovered, "a new session afterwards works"), "the proxy did not recover")
	return r, nil
}

func durs(d []time.Duration) string {
	var s []string
	for _, x := range d {
		s = append(s, fmt.Sprintf("%.2f", x.Seconds()))
	}
	return strings.Join(s, "/") + " s"
}
