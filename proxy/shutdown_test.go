package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestGracefulShutdown cancels Serve's context with one session
// mid-upload, one idle and one in a download that will not end in time:
// new connections are refused at once, the upload finishes within the
// grace period, the other two are sent "421 Service shutting down" and
// closed when the grace period ends (the download's data connection too),
// and Serve returns only then.
func TestGracefulShutdown(t *testing.T) {
	bigFile(t)
	const grace = 500 * time.Millisecond
	e := newEnvGrace(t, grace)
	a := dialCtl(t, e.addr, "")
	a.login(t, "alice")
	b := dialCtl(t, e.addr, "")
	b.login(t, "bob")
	c := dialCtl(t, e.addr, "")
	c.login(t, "carol")
	// carol reads 64 KiB of the 100 MiB file, then nothing.
	cdata := c.open(t, "PASV", "RETR "+f100, 0)
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(cdata, head); err != nil {
		t.Fatal(err)
	}

	name := "shutdown-upload.bin"
	removeServed(t, name)
	dc := a.open(t, "EPSV", "STOR "+name, 0)
	part := fixtureData[f4k]
	if _, err := dc.Write(part); err != nil {
		t.Fatal(err)
	}

	e.cancel()
	eventually(t, 10*time.Second, "the proxy still accepts connections after its context ended", func() bool {
		c, err := net.DialTimeout("tcp", e.addr, ioTimeout)
		if err != nil {
			return errors.Is(err, syscall.ECONNREFUSED)
		}
		c.Close()
		return false
	})

	// The upload goes on and ends normally.
	if _, err := dc.Write(part); err != nil {
		t.Fatalf("upload cut by the shutdown: %v", err)
	}
	dc.Close()
	a.expect(t, 226)
	a.cmd(t, 221, "QUIT")
	a.expectEOF(t)
	select {
	case <-e.serveDone:
		t.Fatal("Serve returned while a session was still open")
	default:
	}
	if got, want := fileSum(t, name), sha256Of(append(append([]byte(nil), part...), part...)); got != want {
		t.Errorf("upload during shutdown: on disk sha256 %x, want %x", got, want)
	}

	// The idle session and the unfinished download are closed when the
	// grace period is over.
	for _, cl := range []*ctl{b, c} {
		msg := cl.expect(t, 421)
		if !strings.Contains(msg, "shutting down") {
			t.Errorf("421 %s: want a shutdown message", msg)
		}
		cl.expectEOF(t)
	}
	cdata.SetDeadline(time.Now().Add(ioTimeout))
	n, err := io.Copy(io.Discard, cdata)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("the unfinished download's data connection is still open")
	case !errors.Is(err, syscall.ECONNRESET):
		// A FIN would look like the end of the file to the client.
		t.Errorf("the cut download ended with %v after %d bytes, want a reset", err, int64(len(head))+n)
	}
	if err := e.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	// Serve returned after the proxy had written the 421 to bob and
	// carol, and to them only.
	alice, bob, carol := e.tr.sessionOf(t, "USER alice"), e.tr.sessionOf(t, "USER bob"), e.tr.sessionOf(t, "USER carol")
	told := map[uint64]int{}
	for _, ev := range e.tr.since(0) {
		if ev.Dir == ProxyToClient && strings.HasPrefix(ev.Line, "421 Service shutting down") {
			told[ev.Session]++
		}
	}
	// (Connections the polling above made before the listener closed are
	// sessions too; they end at once and are not counted.)
	if told[bob] != 1 || told[carol] != 1 || told[alice] != 0 {
		t.Errorf("421 shutdown replies per session: %v, want one each for bob (%d) and carol (%d), none for alice (%d)",
			told, bob, carol, alice)
	}
	if n := e.srv.Sessions(); n != 0 {
		t.Errorf("Sessions() = %d after Serve returned", n)
	}
	// The cut download is logged as aborted, with what it moved, and no
	// transfer is called finished but alice's upload.
	aborted := e.logs.FilterMessage(MsgTransferAborted).All()
	if len(aborted) != 1 || aborted[0].ContextMap()["reason"] != abortShutdown ||
		aborted[0].ContextMap()["bytes_to_client"].(int64) < int64(len(head)) {
		t.Errorf("aborted transfers logged: %v; want carol's, with its bytes", aborted)
	}
	if n := e.logs.FilterMessage(MsgTransferFinished).Len(); n != 1 {
		t.Errorf("%d transfers logged as finished, want 1 (the upload)", n)
	}
}

// TestShutdownClientNotReading: a client that stops reading while its
// server keeps talking must not hold up the shutdown. The proxy's write to
// that client blocks; the shutdown after the grace period must still end
// the session promptly, not after the idle timeout (an hour here).
func TestShutdownClientNotReading(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stalled := make(chan struct{})
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "220 chatty server\r\n")
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
		// A reply without end: its lines keep coming until the proxy
		// stops reading them.
		line := []byte("211-" + strings.Repeat("x", 1000) + "\r\n")
		for {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(line); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					close(stalled)
					c.SetWriteDeadline(time.Time{})
					io.Copy(io.Discard, c) // until the proxy closes
				}
				return
			}
		}
	}()
	e := startProxy(t, ln.Addr().String(), 200*time.Millisecond, func(c *Config) { c.IdleTimeout = time.Hour })
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	if _, err := c.Write([]byte("STAT\r\n")); err != nil {
		t.Fatal(err)
	}
	select { // the client reads nothing: everything between fills up
	case <-stalled:
	case <-time.After(ioTimeout):
		t.Fatal("the server's replies never stalled: is the proxy buffering without bound?")
	}
	e.cancel()
	select {
	case <-e.serveDone:
	case <-time.After(ioTimeout):
		t.Fatalf("Serve did not return within %s of the shutdown (grace 200ms, goodbye bound %s)", ioTimeout, goodbyeTimeout)
	}
	<-serverDone
}

// TestShutdownWhileDialing shuts the server down while a session is still
// connecting to its upstream, then lets the connect finish. The session
// must end cleanly, and (under -race) nothing the dialing goroutine sets
// may be read by the shutdown.
func TestShutdownWhileDialing(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "220 ready\r\n")
			defer c.Close()
		}
	}()
	entered, release := make(chan struct{}), make(chan struct{})
	core, logs := observer.New(zap.InfoLevel)
	e := startProxy(t, "", 0, func(c *Config) {
		c.Logger = zap.New(core)
		c.Director = func(net.Conn) (netip.AddrPort, error) {
			close(entered)
			<-release
			return up.Addr().(*net.TCPAddr).AddrPort(), nil
		}
	})
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-entered
	e.cancel()
	eventually(t, ioTimeout, "the grace period never ended", func() bool {
		return logs.FilterMessage("grace period over, closing sessions").Len() > 0
	})
	close(release)
	select {
	case <-e.serveDone:
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return after the dial finished")
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b, _ := io.ReadAll(c)
	if len(b) > 0 && !strings.HasPrefix(string(b), "421 ") {
		t.Errorf("client got %q, want nothing or a 421", b)
	}
}

// TestShutdownAfterDial shuts the server down right after a session has
// connected to a server that has not greeted yet, so the session's
// goroutines have synchronised with nothing since they set up the
// server's side. Under -race this catches a shutdown that reads what the
// dialing goroutine wrote (the session's logger, its addresses).
func TestShutdownAfterDial(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := up.Accept()
		if err == nil {
			accepted <- c // silent: no greeting
		}
	}()
	e := startProxy(t, up.Addr().String(), 0, func(c *Config) { c.ConnectTimeout = time.Minute })
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sc net.Conn
	select {
	case sc = <-accepted:
		defer sc.Close()
	case <-time.After(ioTimeout):
		t.Fatal("the proxy never connected to the server")
	}
	e.cancel()
	select {
	case <-e.serveDone:
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return")
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), "421 Service shutting down") {
		t.Errorf("client got %q, want the shutdown's 421", b)
	}
}
