package nat

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// TestDialTransparentAvoiding dials on loopback (a local source, so no
// routing is needed; IP_TRANSPARENT still needs root): the source port is
// never the avoided one, a port in use (EADDRINUSE at bind) is replaced by
// another, and after 9 ports in use it gives up with EADDRINUSE.
func TestDialTransparentAvoiding(t *testing.T) {
	nstest.Require(t)
	ctx := context.Background()
	loop := netip.MustParseAddr("127.0.0.1")
	srv, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	to := AddrPortOf(srv.Addr())
	// busy is a port in use on 127.0.0.1: binding a dialer to it fails.
	busyLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busyLn.Close()
	busy := AddrPortOf(busyLn.Addr()).Port()
	free := func() uint16 {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return AddrPortOf(ln.Addr()).Port()
	}()

	sourcePort := func(c *net.TCPConn) uint16 {
		t.Helper()
		defer c.Close()
		sc, err := srv.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		sc.Close()
		if got, want := AddrPortOf(sc.RemoteAddr()), AddrPortOf(c.LocalAddr()); got != want {
			t.Errorf("server sees %s, dialer is %s", got, want)
		}
		return AddrPortOf(c.LocalAddr()).Port()
	}

	// The avoided port is skipped, the busy one retried, the free one used.
	const avoid = 40000
	var picked []uint16
	seq := []uint16{avoid, avoid, busy, free}
	pick := func() uint16 {
		p := seq[min(len(picked), len(seq)-1)]
		picked = append(picked, p)
		return p
	}
	c, err := dialAvoiding(ctx, loop, avoid, to, 5*time.Second, pick)
	if err != nil {
		t.Fatalf("dialAvoiding: %v (picked %v)", err, picked)
	}
	if p := sourcePort(c); p != free || len(picked) != 4 {
		t.Errorf("source port %d after picking %v, want %d after avoid, avoid, busy, free", p, picked, free)
	}

	// Only busy ports: 1 + avoidRetries dials, then EADDRINUSE.
	n := 0
	_, err = dialAvoiding(ctx, loop, avoid, to, 5*time.Second, func() uint16 { n++; return busy })
	if !errors.Is(err, syscall.EADDRINUSE) || n != 1+avoidRetries {
		t.Errorf("all ports busy: %v after %d picks, want EADDRINUSE after %d", err, n, 1+avoidRetries)
	}

	// Another error is returned at once.
	n = 0
	if c, err := dialAvoiding(ctx, netip.MustParseAddr("::1"), avoid, to, time.Second, func() uint16 { n++; return free }); err == nil || n != 1 {
		if c != nil {
			c.Close()
		}
		t.Errorf("families differ: %v after %d picks, want an error after 1", err, n)
	}

	// avoid 0: the kernel picks.
	c, err = DialTransparentAvoiding(ctx, loop, 0, to, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sourcePort(c)

	// The real picker: 32768–60999, never avoid.
	for range 20 {
		c, err := DialTransparentAvoiding(ctx, loop, avoid, to, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if p := sourcePort(c); p < avoidPortLo || p >= avoidPortHi || p == avoid {
			t.Errorf("source port %d, want 32768–60999 and not %d", p, avoid)
		}
	}
}

func TestRandomSourcePort(t *testing.T) {
	for range 10000 {
		if p := randomSourcePort(); p < avoidPortLo || p >= avoidPortHi {
			t.Fatalf("randomSourcePort() = %d, want 32768–60999", p)
		}
	}
}
