package proxy

import (
	"crypto/sha256"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestIdleTimeoutSparesTransfers runs a slow upload and a slow download,
// each keeping the control connection silent for about five idle timeouts:
// neither may be cut, and the control connection must still answer after
// them. Once nothing happens any more, the client gets "421 Timeout" and
// the connection closes.
func TestIdleTimeoutSparesTransfers(t *testing.T) {
	want := bigFile(t)
	const idle = 300 * time.Millisecond
	const slow = 5 * idle // how long each transfer is kept going
	e := newEnv(t, func(c *Config) { c.IdleTimeout = idle })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()

	// Upload 4 KiB every 100 ms: the server waits for data all along.
	name := "slow-upload.bin"
	removeServed(t, name)
	dc := c.open(t, "EPSV", "STOR "+name, 0)
	var sent []byte
	for start := time.Now(); time.Since(start) < slow; {
		<-tick.C
		if _, err := dc.Write(fixtureData[f4k]); err != nil {
			t.Fatalf("slow upload cut after %d bytes: %v", len(sent), err)
		}
		sent = append(sent, fixtureData[f4k]...)
	}
	dc.Close()
	c.expect(t, 226)
	c.cmd(t, 200, "NOOP")
	if got := fileSum(t, name); got != sha256Of(sent) {
		t.Errorf("slow upload: on disk sha256 %x, want %x (%d bytes)", got, sha256Of(sent), len(sent))
	}

	// Download 4 KiB every 100 ms of the 100 MiB file, far more than the
	// socket buffers hold, so the server is still sending; then the rest.
	dc = c.open(t, "PASV", "RETR "+f100, 0)
	h := sha256.New()
	buf := make([]byte, 4096)
	for start := time.Now(); time.Since(start) < slow; {
		<-tick.C
		if _, err := io.ReadFull(dc, buf); err != nil {
			t.Fatalf("slow download cut: %v", err)
		}
		h.Write(buf)
	}
	dc.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.Copy(h, dc); err != nil {
		t.Fatalf("slow download: %v", err)
	}
	dc.Close()
	c.expect(t, 226)
	if got := [32]byte(h.Sum(nil)); got != want {
		t.Errorf("slow download: sha256 %x, want %x", got, want)
	}
	c.cmd(t, 200, "NOOP")

	// Now silence: the proxy ends the session.
	msg := c.expect(t, 421)
	if !strings.HasPrefix(msg, "Timeout") {
		t.Errorf("421 %s: want a timeout message", msg)
	}
	c.expectEOF(t)
}

// TestIdleWatch checks idleWatch on synctest's fake clock.
func TestIdleWatch(t *testing.T) {
	const timeout = time.Second
	// run gives f a watch and a count of its firings, on a fake clock.
	run := func(t *testing.T, timeout time.Duration, f func(w *idleWatch, fired *atomic.Int32)) {
		synctest.Test(t, func(t *testing.T) {
			var fired atomic.Int32
			w := newIdleWatch(timeout, func() { fired.Add(1) })
			defer w.stop()
			f(w, &fired)
		})
	}
	// after sleeps d and reports how often the watch has fired by then.
	after := func(d time.Duration, fired *atomic.Int32) int32 {
		time.Sleep(d)
		synctest.Wait()
		return fired.Load()
	}

	t.Run("fires once after the timeout", func(t *testing.T) {
		run(t, timeout, func(w *idleWatch, fired *atomic.Int32) {
			if n := after(timeout-time.Nanosecond, fired); n != 0 {
				t.Fatalf("fired %d times before the timeout", n)
			}
			if n := after(time.Nanosecond, fired); n != 1 {
				t.Fatalf("fired %d times at the timeout, want 1", n)
			}
			if n := after(100*timeout, fired); n != 1 {
				t.Fatalf("fired %d times in all, want 1", n)
			}
		})
	})

	t.Run("never while a transfer runs", func(t *testing.T) {
		run(t, timeout, func(w *idleWatch, fired *atomic.Int32) {
			w.transferStarted()
			w.transferStarted()
			if n := after(10*timeout+timeout/2, fired); n != 0 {
				t.Fatalf("fired %d times during two transfers", n)
			}
			w.transferEnded()
			if n := after(10*timeout, fired); n != 0 {
				t.Fatalf("fired %d times while one transfer still ran", n)
			}
			w.transferEnded() // the idle time counts from here
			if n := after(timeout-time.Nanosecond, fired); n != 0 {
				t.Fatalf("fired %d times less than a timeout after the transfers", n)
			}
			if n := after(time.Nanosecond, fired); n != 1 {
				t.Fatalf("fired %d times a timeout after the transfers, want 1", n)
			}
		})
	})

	t.Run("touch postpones it", func(t *testing.T) {
		run(t, timeout, func(w *idleWatch, fired *atomic.Int32) {
			time.Sleep(timeout / 2)
			w.touch()
			time.Sleep(timeout / 4)
			w.touch() // last activity at 3/4 timeout
			if n := after(timeout-time.Nanosecond, fired); n != 0 {
				t.Fatalf("fired %d times less than a timeout after the last touch", n)
			}
			if n := after(time.Nanosecond, fired); n != 1 {
				t.Fatalf("fired %d times a timeout after the last touch, want 1", n)
			}
		})
	})

	t.Run("stop prevents it", func(t *testing.T) {
		run(t, timeout, func(w *idleWatch, fired *atomic.Int32) {
			time.Sleep(timeout / 2)
			w.stop()
			if n := after(100*timeout, fired); n != 0 {
				t.Fatalf("fired %d times after stop", n)
			}
		})
	})

	t.Run("stop during a transfer prevents it", func(t *testing.T) {
		run(t, timeout, func(w *idleWatch, fired *atomic.Int32) {
			w.transferStarted()
			time.Sleep(3 * timeout / 2)
			w.stop()
			w.transferEnded()
			if n := after(100*timeout, fired); n != 0 {
				t.Fatalf("fired %d times after stop", n)
			}
		})
	})

	t.Run("zero timeout disables it", func(t *testing.T) {
		run(t, 0, func(w *idleWatch, fired *atomic.Int32) {
			w.touch()
			if n := after(1000*timeout, fired); n != 0 {
				t.Fatalf("fired %d times with a zero timeout", n)
			}
		})
	})
}
