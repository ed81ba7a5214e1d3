package proxy

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerDiesBeforeConfirming: the server sends a listing, closes the
// data connection and dies without the 226. The client gets a 421 on the
// control channel instead of silence, and the log does not call the
// transfer finished.
func TestServerDiesBeforeConfirming(t *testing.T) {
	up := startMiniServer(t, "\r\n", nil, func(s *miniServer) { s.dieAfterData = true })
	e := startProxy(t, up.ln.Addr().String(), time.Second)
	c := dialCtl(t, e.addr, "")
	c.expect(t, 220)
	c.cmd(t, 331, "USER a")
	c.cmd(t, 230, "PASS b")
	dc := c.open(t, "EPSV", "LIST", 0)
	b, err := io.ReadAll(dc)
	if err != nil || string(b) != miniListing {
		t.Fatalf("listing %q, %v", b, err)
	}
	dc.Close()
	msg := c.expect(t, 421)
	if !strings.Contains(msg, "closed the control connection") {
		t.Errorf("421 %s: want it to say the server closed the connection", msg)
	}
	c.expectEOF(t)
	e.stop()
	if n := e.logs.FilterMessage(MsgTransferFinished).Len(); n != 0 {
		t.Errorf("a transfer the server never confirmed was logged as finished")
	}
	if got := e.logs.FilterMessage(MsgTransferNoConfirm).All(); len(got) != 1 ||
		!strings.Contains(got[0].ContextMap()["reason"].(string), "server closed the control connection") {
		t.Errorf("unconfirmed transfers logged: %v; want one, naming the server's close", got)
	}
}

// TestDataIdleTimeout: a client that stops reading in the middle of a
// download holds its session only for the data idle timeout: then the
// transfer is aborted with a reset, logged as aborted, and the control
// connection goes on.
func TestDataIdleTimeout(t *testing.T) {
	bigFile(t)
	const idle = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.DataIdleTimeout = idle; c.IdleTimeout = time.Hour })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	dc := c.open(t, "EPSV", "RETR "+f100, 0)
	dc.SetReadBuffer(4096)
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(dc, head); err != nil {
		t.Fatal(err)
	}
	// Now the client reads nothing; the proxy must give up on its own.
	eventually(t, ioTimeout, "the stalled transfer was never aborted", func() bool {
		return e.logs.FilterMessage(MsgTransferAborted).Len() > 0
	})
	got := e.logs.FilterMessage(MsgTransferAborted).All()[0].ContextMap()
	if got["reason"] != abortDataIdle {
		t.Errorf("aborted for %q, want %q", got["reason"], abortDataIdle)
	}
	dc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.Copy(io.Discard, dc); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the aborted download ended with %v, want a reset", err)
	}
	// The server learns of it from its own reset and answers on the
	// control channel; the session goes on.
	if code, msg, err := c.read(); err != nil || code < 400 {
		t.Errorf("transfer reply %d %s, %v; want a 4xx/5xx", code, msg, err)
	}
	c.cmd(t, 200, "NOOP")
}
