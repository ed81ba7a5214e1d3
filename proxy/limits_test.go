package proxy

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
