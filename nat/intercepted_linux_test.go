package nat

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

func TestListenInterceptedBadInput(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		m      Mode
		listen string
		want   string
	}{
		{0, ":2121", "unknown interception mode"},
		{7, ":2121", "unknown interception mode"},
		{ModeTProxy, "localhost:2121", "want IP:PORT or :PORT"},
		{ModeTProxy, ":ftp", "want IP:PORT or :PORT"},
		{ModeTProxy, ":70000", "want IP:PORT or :PORT"},
		{ModeTProxy, "", "want IP:PORT or :PORT"},
		{ModeRedirect, "127.0.0.1:x", "nat: listen redirect"},
	} {
		ln, err := ListenIntercepted(ctx, c.m, c.listen)
		if err == nil {
			ln.Close()
			t.Errorf("ListenIntercepted(%s, %q): no error", c.m, c.listen)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("ListenIntercepted(%s, %q) = %v, want %q in it", c.m, c.listen, err, c.want)
		}
	}
	if _, err := Director(0); err == nil {
		t.Error("Director(0): no error")
	}
}

// TestListenInterceptedRedirect: in redirect mode ":0" is an ordinary
// dual-stack listener; no capability is needed.
func TestListenInterceptedRedirect(t *testing.T) {
	ln, err := ListenIntercepted(context.Background(), ModeRedirect, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, ok := ln.(*net.TCPListener); !ok {
		t.Errorf("redirect listener is a %T, want *net.TCPListener", ln)
	}
	port := strconv.Itoa(int(AddrPortOf(ln.Addr()).Port()))
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", host, err)
		}
		c.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		sc.Close()
	}
}

// loopbackPair returns both ends of a TCP connection to addr (network
// "tcp4", "tcp6" or dual-stack "tcp"), client first.
func loopbackPair(t *testing.T, network, listen, dial string) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen(network, listen)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(int(AddrPortOf(ln.Addr()).Port()))
	c, err := net.DialTimeout("tcp", net.JoinHostPort(dial, port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestDirectorTProxy checks the director's own work on loopback, where a
// TPROXY connection is simply one whose local address is the destination:
// unmapping, and refusing the host's own addresses.
func TestDirectorTProxy(t *testing.T) {
	_, v4 := loopbackPair(t, "tcp4", "127.0.0.1:0", "127.0.0.1")
	// An IPv4 client on a dual-stack socket: LocalAddr is ::ffff:127.0.0.1.
	_, mapped := loopbackPair(t, "tcp", "[::]:0", "127.0.0.1")
	if a := mapped.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); !a.Is4In6() {
		t.Fatalf("dual-stack LocalAddr %s is not IPv4-mapped: this case tests nothing", a)
	}
	loop := netip.MustParseAddr("127.0.0.1")

	notLocal := director(ModeTProxy, func(netip.Addr) bool { return false })
	for _, c := range []*net.TCPConn{v4, mapped} {
		got, err := notLocal(c)
		if want := AddrPortOf(c.LocalAddr()); err != nil || got != want || !got.Addr().Is4() {
			t.Errorf("director(%s) = %s, %v; want %s, unmapped", c.LocalAddr(), got, err, want)
		}
	}
	local := director(ModeTProxy, func(a netip.Addr) bool { return a == loop })
	for _, c := range []*net.TCPConn{v4, mapped} {
		if got, err := local(c); err == nil || !strings.Contains(err.Error(), "proxy's own address") {
			t.Errorf("director(%s) with 127.0.0.1 local = %s, %v; want refused", c.LocalAddr(), got, err)
		}
	}
	// The host's real addresses include loopback.
	d, err := Director(ModeTProxy)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := d(v4); err == nil {
		t.Errorf("Director(tproxy)(%s) = %s, want refused: loopback is the host's own", v4.LocalAddr(), got)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, err := d(p1); err == nil {
		t.Error("Director on a net.Pipe: no error")
	}
}

// TestListenInterceptedGateway intercepts a client's connections to
// 203.0.113.5:21 and [2001:db8:3::5]:21 in the router, once with REDIRECT
// and once with TPROXY, on the listener ListenIntercepted opens on ":0"
// (for TPROXY an IPv4 and an IPv6 transparent one, merged), and checks the
// director reads each original destination back and refuses a client
// that connected to the router's own address.
func TestListenInterceptedGateway(t *testing.T) {
	nstest.Require(t, "iptables", "ip6tables", "sysctl")
	for _, m := range []Mode{ModeRedirect, ModeTProxy} {
		t.Run(m.String(), func(t *testing.T) {
			g := newGateway(t)
			var (
				ln  net.Listener
				dir func(net.Conn) (netip.AddrPort, error)
				err error
			)
			g.Router.Do(t, func() {
				if ln, err = ListenIntercepted(context.Background(), m, ":0"); err != nil {
					return
				}
				dir, err = Director(m)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := AddrPortOf(ln.Addr()).Port()
			for _, f := range families {
				if m == ModeTProxy {
					tproxyRoute(t, g.Router, f)
					tproxyRule(t, g.Router, f, netip.Addr{}, 21, netip.Addr{}, int(port))
				} else {
					g.Router.Run(t, f.IPTables, "-w", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21",
						"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(port)))
				}
			}
			for _, f := range families {
				want := netip.AddrPortFrom(f.intercepted, 21)
				cc, err := g.Client.Dial(netip.Addr{}, want, 5*time.Second)
				if err != nil {
					t.Fatalf("%s: client dial %s: %v", f.Name, want, err)
				}
				sc := acceptWithin(t, ln, 5*time.Second)
				if got, err := dir(sc); err != nil || got != want {
					t.Errorf("%s: director = %s, %v; want %s", f.Name, got, err, want)
				}
				nstest.Exchange(t, cc, sc)

				self := netip.AddrPortFrom(f.RouterClient, port)
				if _, err := g.Client.Dial(netip.Addr{}, self, 5*time.Second); err != nil {
					t.Fatalf("%s: client dial %s: %v", f.Name, self, err)
				}
				ds := acceptWithin(t, ln, 5*time.Second)
				if got, err := dir(ds); err == nil {
					t.Errorf("%s: director for a direct connection to %s = %s, want refused", f.Name, self, got)
				}
			}
		})
	}
}

// acceptWithin accepts one connection from ln (any net.Listener), failing
// t after d; the connection is closed when t ends.
func acceptWithin(t *testing.T, ln net.Listener, d time.Duration) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept on %s: %v", ln.Addr(), r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(d):
		ln.Close()
		<-ch
		t.Fatalf("nothing accepted on %s in %v", ln.Addr(), d)
	}
	return nil
}
