package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/internal/ftpd"
)

// expectRefused reads one reply from c, which must be a 421 containing
// text, and then the end of the connection.
func expectRefused(t *testing.T, c *ctl, text string) {
	t.Helper()
	msg := c.expect(t, 421)
	if !strings.Contains(msg, text) {
		t.Errorf("421 %s: want it to say %q", msg, text)
	}
	c.expectEOF(t)
}

// TestMaxSessions: with MaxSessions=2 a third connection gets a 421 and is
// closed while two sessions run; once one of them ends, a new one is let in.
func TestMaxSessions(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSessions = 2 })
	a := dialCtl(t, e.addr, "")
	a.login(t, "a")
	b := dialCtl(t, e.addr, "")
	b.login(t, "b")

	expectRefused(t, dialCtl(t, e.addr, ""), "Too many sessions")
	a.cmd(t, 200, "NOOP")
	b.cmd(t, 200, "NOOP")

	a.cmd(t, 221, "QUIT")
	a.expectEOF(t)
	eventually(t, 10*time.Second, "the ended session is still counted", func() bool { return e.srv.Sessions() == 1 })
	d := dialCtl(t, e.addr, "")
	d.login(t, "d")
	d.cmd(t, 200, "NOOP")
}

// TestMaxSessionsPerIP: with MaxSessionsPerIP=1 a second connection from
// 127.0.0.1 gets a 421 and is closed, while one from 127.0.0.2 is served.
func TestMaxSessionsPerIP(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSessionsPerIP = 1 })
	a := dialCtl(t, e.addr, "127.0.0.1")
	a.login(t, "a")

	expectRefused(t, dialCtl(t, e.addr, "127.0.0.1"), "from 127.0.0.1")

	b := dialCtl(t, e.addr, "127.0.0.2")
	b.login(t, "b")
	b.cmd(t, 200, "NOOP")
	a.cmd(t, 200, "NOOP")
	if n := e.srv.Sessions(); n != 2 {
		t.Errorf("Sessions() = %d, want 2", n)
	}
}

// TestUpstreamUnreachable: when the server refuses the proxy's connection
// the client gets a 421 and the connection is closed.
func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	e := startProxy(t, closed, 5*time.Second)
	for range 2 { // and again: a failed session leaves nothing behind
		expectRefused(t, dialCtl(t, e.addr, ""), "cannot be reached")
	}
	eventually(t, 10*time.Second, "failed sessions still counted", func() bool { return e.srv.Sessions() == 0 })
}

// emfileListener fails its first Accept calls the way a TCP listener does
// when the process has run out of file descriptors.
type emfileListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails > 0
	if fail {
		l.fails--
	}
	l.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestServeSurvivesEMFILE: running out of file descriptors for a moment
// (accept fails with EMFILE) must not end Serve; it goes on accepting once
// descriptors are free again, and returns nil when its context ends.
func TestServeSurvivesEMFILE(t *testing.T) {
	up := startScripted(t)
	srv, err := NewServer(Config{Upstream: up.addr(), ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &emfileListener{Listener: tcp, fails: 3}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, time.Second) }()
	defer func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve after its context ended: %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("Serve did not return")
		}
	}()

	c := dialCtl(t, tcp.Addr().String(), "")
	if code, msg, err := c.read(); err != nil || code != 220 {
		t.Fatalf("want the greeting after transient accept errors, got %d %s, %v", code, msg, err)
	}
	c.cmd(t, 221, "QUIT")
	c.expectEOF(t)
}

// TestUpstreamSilent: a server that accepts but never greets gets the
// client a 421 after the connect timeout, not a hang until the idle timeout.
func TestUpstreamSilent(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := up.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	srv, err := NewServer(Config{Upstream: up.Addr().String(), ConnectTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, time.Second) }()
	defer func() { cancel(); <-done }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(got), "421 ") {
		t.Fatalf("got %q, %v; want a 421 and EOF", got, err)
	}
	(<-accepted).Close()
}

// TestNoPerIPLimitByDefault: by default one address may hold as many
// sessions as the total limit allows (clients of a sidecar may all sit
// behind one NAT address); a refusal names the limit it hit.
func TestNoPerIPLimitByDefault(t *testing.T) {
	const n = 70 // beyond the old default of 64
	e := newEnv(t, func(c *Config) { c.MaxSessions = n })
	for i := range n {
		c := dialCtl(t, e.addr, "127.0.0.1")
		if code, msg, err := c.read(); err != nil || code != 220 {
			t.Fatalf("session %d: %d %s, %v", i+1, code, msg, err)
		}
	}
	expectRefused(t, dialCtl(t, e.addr, "127.0.0.1"), "Too many sessions")
	refused := e.logs.FilterMessage(MsgSessionRefused).All()
	if len(refused) != 1 || refused[0].ContextMap()["limit"] != "max-sessions" {
		t.Errorf("refusals logged: %v; want one naming max-sessions", refused)
	}
}

// TestLoginTimeout: a connection that does not log in is closed after the
// login timeout with a 421; a logged-in one is not.
func TestLoginTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.LoginTimeout = 300 * time.Millisecond; c.IdleTimeout = time.Hour })
	in := dialCtl(t, e.addr, "")
	in.login(t, "tester")
	quiet := dialCtl(t, e.addr, "")
	quiet.expect(t, 220)
	half := dialCtl(t, e.addr, "")
	half.expect(t, 220)
	half.cmd(t, 331, "USER tester") // and no PASS
	for _, c := range []*ctl{quiet, half} {
		expectRefused(t, c, "Login timeout")
	}
	in.cmd(t, 200, "NOOP") // well past the login timeout
}

// TestRefusalLogBounded: a client sending nothing but refused lines gets a
// 500 for each, but only the first warnLimit are logged; the rest are
// counted in one line at the session's end.
func TestRefusalLogBounded(t *testing.T) {
	const lines = 100
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	c.sendRaw(t, []byte(strings.Repeat("NO\x00OP\r\n", lines)))
	for range lines {
		c.expect(t, 500)
	}
	c.cmd(t, 221, "QUIT")
	c.expectEOF(t)
	eventually(t, ioTimeout, "the session never ended", func() bool { return e.srv.Sessions() == 0 })
	if n := e.logs.FilterMessage("command refused: bare CR, LF or NUL").Len(); n != warnLimit {
		t.Errorf("%d refused lines logged, want %d", n, warnLimit)
	}
	sum := e.logs.FilterMessage(MsgRefusedOmitted).All()
	if len(sum) != 1 || sum[0].ContextMap()["count"] != int64(lines-warnLimit) {
		t.Errorf("summary lines: %v; want one counting %d", sum, lines-warnLimit)
	}
}

// withFreeDescriptors runs f with exactly free descriptors left to the
// process: RLIMIT_NOFILE lowered to a few above the highest descriptor in
// use, every number below it taken by /dev/null until open fails, then the
// last free ones given back. It first waits until e serves, so that its
// Serve holds its spare descriptor already.
func withFreeDescriptors(t *testing.T, e *env, free int, f func()) {
	t.Helper()
	eventually(t, ioTimeout, "the proxy never served", func() bool { return e.srv.Ready() == nil })
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	highest := 0
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(highest + 1 + free + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}()
	var fillers []*os.File
	defer func() {
		for _, f := range fillers {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break // every number below the limit is taken
		}
		fillers = append(fillers, f)
	}
	if len(fillers) < free {
		t.Fatalf("only %d descriptors could be taken", len(fillers))
	}
	for _, f := range fillers[len(fillers)-free:] {
		f.Close()
	}
	fillers = fillers[:len(fillers)-free]
	f()
}

// TestUpstreamOutOfDescriptors: a proxy out of file descriptors when it
// connects to the server tells the client so, and logs it as a local
// problem, not as an unreachable server. The director, which runs right
// before that connect, takes every free descriptor.
func TestUpstreamOutOfDescriptors(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var fillers []*os.File
	defer func() {
		for _, f := range fillers {
			f.Close()
		}
	}()
	e := startProxy(t, "", time.Second, func(c *Config) {
		c.Director = func(net.Conn) (netip.AddrPort, error) {
			for {
				f, err := os.Open(os.DevNull)
				if err != nil {
					break
				}
				fillers = append(fillers, f)
			}
			return up.Addr().(*net.TCPAddr).AddrPort(), nil
		}
	})
	c := dialCtl(t, e.addr, "")
	code, msg, err := c.read()
	if err != nil || code != 421 || !strings.Contains(msg, "out of resources") {
		t.Fatalf("got %d %s, %v; want 421 saying the proxy is out of resources", code, msg, err)
	}
	if n := e.logs.FilterMessage(MsgUpstreamDown).Len(); n != 0 {
		t.Errorf("logged as an unreachable server")
	}
	if n := e.logs.FilterMessage(MsgOutOfFDs).Len(); n != 1 {
		t.Errorf("%d out-of-descriptor lines logged, want 1", n)
	}
}

// TestAcceptOutOfDescriptors: with no descriptor left even to accept, a
// client still gets an answer: the spare descriptor is given up to accept
// it and tell it 421, instead of leaving it in the listen queue.
func TestAcceptOutOfDescriptors(t *testing.T) {
	e := newEnv(t)
	var code int
	var msg string
	var err error
	withFreeDescriptors(t, e, 1, func() { // this test's connection only
		c := dialCtl(t, e.addr, "")
		code, msg, err = c.read()
	})
	if err != nil || code != 421 || !strings.Contains(msg, "out of file descriptors") {
		t.Fatalf("got %d %s, %v; want 421 saying the proxy is out of file descriptors", code, msg, err)
	}
	if n := e.logs.FilterMessage(MsgOutOfFDsSpare).Len(); n != 1 {
		t.Errorf("%d spare refusals logged, want 1", n)
	}
	// Descriptors back: sessions work again.
	dialCtl(t, e.addr, "").login(t, "tester")
}

// TestFitSessions: the session limit against the descriptor limit.
func TestFitSessions(t *testing.T) {
	for _, tc := range []struct {
		set    int
		nofile uint64
		want   int
		warned bool
	}{
		{0, 0, DefaultMaxSessions, false},       // limit unknown
		{0, 1 << 20, DefaultMaxSessions, false}, // plenty
		{0, 1024, (1024 - 64) / 8, true},        // lowered to fit
		{0, 10, 1, true},                        // absurdly low: one
		{5000, 1 << 20, 5000, false},            // fits
		{5000, 1024, 5000, true},                // kept, but warned
		{-1, 1024, -1, true},                    // no limit: warned
		{-1, 0, -1, false},
	} {
		core, logs := observer.New(zap.WarnLevel)
		cfg := Config{MaxSessions: tc.set}
		fitSessions(&cfg, tc.nofile, zap.New(core))
		if cfg.MaxSessions != tc.want || (logs.Len() > 0) != tc.warned {
			t.Errorf("set %d, nofile %d: MaxSessions %d, warned %v; want %d, %v", tc.set, tc.nofile, cfg.MaxSessions, logs.Len() > 0, tc.want, tc.warned)
		}
	}
}

// TestKeepAliveConfig: the period with its jitter, and off.
func TestKeepAliveConfig(t *testing.T) {
	if k := keepAliveConfig(-1); k.Enable {
		t.Errorf("negative period: %+v, want disabled", k)
	}
	const p = 2 * time.Minute
	seen := map[time.Duration]bool{}
	for range 1000 {
		k := keepAliveConfig(p)
		if !k.Enable || k.Idle < p-p/8 || k.Idle > p+p/8 || k.Interval != keepAliveInterval || k.Count != keepAliveProbes {
			t.Fatalf("period %s: %+v", p, k)
		}
		seen[k.Idle] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d different idle times in 1000: no jitter", len(seen))
	}
}

// TestReconfigure: a new configuration applies to sessions admitted after
// it, running sessions keep theirs, and an invalid one is refused.
func TestReconfigure(t *testing.T) {
	a := startMiniServer(t, "\r\n", nil)
	b, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0", Banner: "second server"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	e := startProxy(t, a.ln.Addr().String(), time.Second)
	old := dialCtl(t, e.addr, "")
	if msg := old.expect(t, 220); !strings.Contains(msg, "lf-only server") {
		t.Fatalf("first greeting %q, want the first upstream's", msg)
	}
	cfg := e.cfg
	cfg.Upstream = b.Addr()
	cfg.MaxSessions = 3
	if err := e.srv.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	bad := cfg
	bad.Upstream = ""
	if err := e.srv.Reconfigure(bad); err == nil {
		t.Fatal("a configuration without upstream was accepted")
	}
	nw := dialCtl(t, e.addr, "")
	if msg := nw.expect(t, 220); !strings.Contains(msg, "second server") {
		t.Errorf("a session after the reload greeted with %q, want the new upstream's", msg)
	}
	// The old session still talks to the old server.
	old.cmd(t, 331, "USER a")
	old.cmd(t, 230, "PASS b")
	old.cmd(t, 200, "NOOP")
	if got := e.srv.settings().cfg.MaxSessions; got != 3 {
		t.Errorf("MaxSessions %d after the reload, want 3", got)
	}
}
