package nat

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

// loopbackListeners opens an IPv4 and an IPv6 loopback listener, as
// ListenIntercepted opens an IPv4 and an IPv6 transparent one.
func loopbackListeners(t *testing.T) []net.Listener {
	t.Helper()
	var lns []net.Listener
	for _, a := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("listen %s: %v", a, err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
	}
	return lns
}

// TestMergedAccept: connections to either listener come out of Accept;
// Addr is the first listener's.
func TestMergedAccept(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	lns := loopbackListeners(t)
	m := mergeListeners(lns...)
	defer m.Close()
	if m.Addr() != lns[0].Addr() {
		t.Errorf("Addr = %s, want the first listener's %s", m.Addr(), lns[0].Addr())
	}
	want := map[string]bool{}
	for _, ln := range lns {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		want[c.LocalAddr().String()] = true
	}
	for range lns {
		c, err := m.Accept()
		if err != nil {
			t.Fatalf("Accept: %v", err)
		}
		if !want[c.RemoteAddr().String()] {
			t.Errorf("Accept gave a connection from %s, want one of %v", c.RemoteAddr(), want)
		}
		delete(want, c.RemoteAddr().String())
		c.Close()
	}
	if mergeListeners(lns[0]) != lns[0] {
		t.Error("mergeListeners of one listener is not that listener")
	}
}

// TestMergedClose: Close wakes a blocked Accept with net.ErrClosed,
// closes the listeners and the connection accepted but not handed over,
// and leaves no goroutine behind.
func TestMergedClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	lns := loopbackListeners(t)
	m := mergeListeners(lns...)

	// A connection nobody Accepts: its loop holds it until Close.
	c, err := net.DialTimeout("tcp", lns[1].Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(20 * time.Millisecond) // let the loop accept it

	errc := make(chan error, 1)
	go func() {
		// Take the pending connection, then block.
		c, err := m.Accept()
		if err != nil {
			errc <- err
			return
		}
		c.Close()
		_, err = m.Accept()
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5 s after Close")
	}
	if _, err := m.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, ln := range lns {
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("listener %s after Close: Accept = %v, want it closed", ln.Addr(), err)
		}
	}

	// An accepted connection waiting for Accept when Close comes is closed.
	lns = loopbackListeners(t)
	m = mergeListeners(lns...)
	c, err = net.DialTimeout("tcp", lns[0].Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(20 * time.Millisecond)
	m.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ne net.Error
	if n, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("client of a connection accepted but never handed over: read %d, %v; want EOF or reset", n, err)
	}
}

// failingListener fails every Accept with err until closed, counting the
// calls.
type failingListener struct {
	err    error
	calls  atomic.Int64
	closed chan struct{}
}

func (f *failingListener) Accept() (net.Conn, error) {
	f.calls.Add(1)
	select {
	case <-f.closed:
		return nil, net.ErrClosed
	default:
		return nil, f.err
	}
}

func (f *failingListener) Close() error   { close(f.closed); return nil }
func (f *failingListener) Addr() net.Addr { return &net.TCPAddr{} }

// blockingListener blocks in Accept until closed.
type blockingListener struct{ closed chan struct{} }

func (b *blockingListener) Accept() (net.Conn, error) { <-b.closed; return nil, net.ErrClosed }
func (b *blockingListener) Close() error              { close(b.closed); return nil }
func (b *blockingListener) Addr() net.Addr            { return &net.TCPAddr{} }

// TestMergedErrorBackoff: a listener that keeps failing (out of
// descriptors) has its errors passed on, but is asked again only after a
// growing pause, even by a caller that retries at once, and Close ends the
// pause at once. On synctest's fake clock: the pauses are 5, 10, 20, …
// 640 ms, so a second holds 8 Accepts of the failing listener.
func TestMergedErrorBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		emfile := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
		bad := &failingListener{err: emfile, closed: make(chan struct{})}
		m := mergeListeners(bad, &blockingListener{closed: make(chan struct{})})

		errs := 0
		stop := time.Now().Add(time.Second)
		for time.Now().Before(stop) {
			_, err := m.Accept()
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("Accept: %v, want the failing listener's EMFILE", err)
			}
			errs++
		}
		synctest.Wait()
		if n := bad.calls.Load(); n < 8 || n > 10 {
			t.Errorf("failing listener asked %d times in 1 s, want 8 to 10 (backoff 5 ms doubling)", n)
		}
		if errs < 8 || errs > 10 {
			t.Errorf("%d errors passed on in 1 s, want 8 to 10", errs)
		}

		// Close during the 1 s pause ends it without waiting.
		time.Sleep(5 * time.Second) // backoff at its 1 s ceiling
		synctest.Wait()
		m.Accept()
		synctest.Wait() // the loop is in its 1 s pause
		start := time.Now()
		m.Close()
		if d := time.Since(start); d > acceptBackoffMax {
			t.Errorf("Close took %v on the fake clock", d)
		}
	})
}

// TestListenSeveral: Listen opens every address and accepts on all of
// them through one listener; a bad address closes what was opened.
func TestListenSeveral(t *testing.T) {
	ln, err := Listen(context.Background(), []string{"127.0.0.1:0", "[::1]:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addrs := Addrs(ln)
	if len(addrs) != 2 {
		t.Fatalf("Addrs = %v, want two", addrs)
	}
	for _, a := range addrs {
		c, err := net.Dial("tcp", a.String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got := AddrPortOf(s.LocalAddr()); got != AddrPortOf(a) {
			t.Errorf("accepted on %s, dialed %s", got, a)
		}
		s.Close()
		c.Close()
	}
	taken := AddrPortOf(addrs[0]).String()
	if l, err := Listen(context.Background(), []string{"127.0.0.1:0", taken}); err == nil {
		l.Close()
		t.Fatalf("Listen on %s, which is in use, succeeded", taken)
	}
	if _, err := Listen(context.Background(), nil); err == nil {
		t.Error("Listen with no address succeeded")
	}
	// An address the host does not have (a VRRP address elsewhere for
	// now) is bound all the same, with IP_FREEBIND.
	fb, err := Listen(context.Background(), []string{"192.0.2.77:0"})
	if err != nil {
		t.Fatalf("Listen on an address not configured here: %v", err)
	}
	fb.Close()
}

// TestSwitchSet: a Switch's listeners can be replaced while it is
// accepted from; the removed ones are closed, the new ones accepted from.
func TestSwitchSet(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	open := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	a, b := open(), open()
	sw := NewSwitch(a)
	defer sw.Close()
	accepted := func(ln net.Listener) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %s: %v", ln.Addr(), err)
		}
		defer c.Close()
		s, err := sw.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if s.LocalAddr().String() != ln.Addr().String() {
			t.Errorf("accepted on %s, dialed %s", s.LocalAddr(), ln.Addr())
		}
		s.Close()
	}
	accepted(a)
	sw.Set(b)
	if c, err := net.Dial("tcp", a.Addr().String()); err == nil {
		c.Close()
		t.Errorf("the removed listener %s still accepts", a.Addr())
	}
	accepted(b)
	c := open()
	sw.Set(b, c)
	accepted(c)
	accepted(b)
	if n := len(sw.Addrs()); n != 2 {
		t.Errorf("%d addresses, want 2", n)
	}
	sw.Close()
	d := open()
	sw.Set(d) // after Close: closed at once
	if c, err := net.Dial("tcp", d.Addr().String()); err == nil {
		c.Close()
		t.Error("a listener set after Close accepts")
	}
}
