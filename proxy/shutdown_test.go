package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
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
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the unfinished download's data connection is still open")
	} else if got := int64(len(head)) + n; got >= bigSize {
		t.Errorf("the unfinished download got all %d bytes", got)
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
}
