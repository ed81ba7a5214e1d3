package nat

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// TestOriginalDstRedirect intercepts a client's connection to
// 203.0.113.5:21 (2001:db8:3::5 for IPv6) with a REDIRECT rule in the
// router and checks the listener reads that destination back.
func TestOriginalDstRedirect(t *testing.T) {
	nstest.Require(t, "iptables", "ip6tables", "sysctl")
	g := newGateway(t)
	const port = 2121
	for _, f := range families {
		g.Router.Run(t, f.IPTables, "-w", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21",
			"-j", "REDIRECT", "--to-ports", strconv.Itoa(port))
	}
	v4, v6 := families[0], families[1]
	for _, c := range []struct {
		name, network string
		f             family
		listenOn      netip.Addr
	}{
		{"ipv4", "tcp4", v4, netip.IPv4Unspecified()},
		// An IPv4 client on a dual-stack AF_INET6 listener: the socket is
		// IPv6, its conntrack entry IPv4, and SOL_IP is the level that works.
		{"ipv4-on-dual-stack-listener", "tcp", v4, netip.IPv6Unspecified()},
		{"ipv6", "tcp6", v6, netip.IPv6Unspecified()},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln := g.Router.ListenTCP(t, c.network, netip.AddrPortFrom(c.listenOn, port))
			want := netip.AddrPortFrom(c.f.intercepted, 21)
			cc, err := g.Client.Dial(netip.Addr{}, want, 5*time.Second)
			if err != nil {
				t.Fatalf("client dial %s: %v", want, err)
			}
			defer cc.Close()
			sc := nstest.Accept(t, ln)

			if local, wantLocal := AddrPortOf(sc.LocalAddr()), netip.AddrPortFrom(c.f.RouterClient, port); local != wantLocal {
				t.Errorf("LocalAddr = %s, want %s (REDIRECT rewrites to the incoming interface's address)", local, wantLocal)
			}
			orig, err := OriginalDst(sc)
			if err != nil || orig != want {
				t.Fatalf("OriginalDst = %s, %v; want %s", orig, err, want)
			}
			orig, redirected, err := Intercepted(sc)
			if err != nil || orig != want || !redirected {
				t.Errorf("Intercepted = %s, %v, %v; want %s, true", orig, redirected, err, want)
			}
			if d, err := Destination(sc, ModeRedirect); err != nil || d != want {
				t.Errorf("Destination(redirect) = %s, %v; want %s", d, err, want)
			}
			nstest.Exchange(t, cc, sc)

			if c.f.Name == "ipv6" {
				// The 20-byte buffer seen in some proxies is refused:
				// the kernel wants a whole sockaddr_in6.
				var sa unix.RawSockaddrInet6
				var serr error
				rc, _ := sc.SyscallConn()
				rc.Control(func(fd uintptr) {
					serr = getsockopt(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), 20)
				})
				if !errors.Is(serr, syscall.EINVAL) {
					t.Errorf("IP6T_SO_ORIGINAL_DST with a 20-byte buffer: %v, want EINVAL", serr)
				}
			}

			// A client that connects to the proxy's own address is tracked
			// but not NATed: the kernel answers with the local address.
			self := netip.AddrPortFrom(c.f.RouterClient, port)
			dc, err := g.Client.Dial(netip.Addr{}, self, 5*time.Second)
			if err != nil {
				t.Fatalf("client dial %s: %v", self, err)
			}
			defer dc.Close()
			ds := nstest.Accept(t, ln)
			orig, redirected, err = Intercepted(ds)
			if err != nil || orig != self || redirected {
				t.Errorf("Intercepted(direct) = %s, %v, %v; want %s, false", orig, redirected, err, self)
			}
			if d, err := Destination(ds, ModeRedirect); !errors.Is(err, ErrNotIntercepted) || d != self {
				t.Errorf("Destination(direct, redirect) = %s, %v; want %s, ErrNotIntercepted", d, err, self)
			}
		})
	}
}

// TestOriginalDstUntracked: in a namespace with no NAT rule conntrack is
// off, and the kernel has no entry to answer from.
func TestOriginalDstUntracked(t *testing.T) {
	nstest.Require(t)
	n := nstest.New(t)
	for _, lo := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		ln := n.ListenTCP(t, tcpNetwork(lo), netip.AddrPortFrom(lo, 0))
		c, err := n.Dial(netip.Addr{}, AddrPortOf(ln.Addr()), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc := nstest.Accept(t, ln)
		if orig, err := OriginalDst(sc); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("OriginalDst(untracked %s) = %s, %v; want ENOENT", sc.LocalAddr(), orig, err)
		} else {
			t.Logf("untracked: %v", err)
		}
		// TPROXY mode reads the local address and needs no conntrack.
		if d, err := Destination(sc, ModeTProxy); err != nil || d != AddrPortOf(sc.LocalAddr()) {
			t.Errorf("Destination(tproxy) = %s, %v; want %s", d, err, sc.LocalAddr())
		}
	}
}

func TestSockaddrSizes(t *testing.T) {
	// What the kernel's getorigdst and ipv6_getorigdst compare optlen to.
	if s := unsafe.Sizeof(unix.RawSockaddrInet4{}); s != 16 {
		t.Errorf("sizeof(sockaddr_in) = %d, want 16", s)
	}
	if s := unsafe.Sizeof(unix.RawSockaddrInet6{}); s != 28 {
		t.Errorf("sizeof(sockaddr_in6) = %d, want 28", s)
	}
}

func TestDestinationBadInput(t *testing.T) {
	if _, err := OriginalDst(nil); err == nil {
		t.Error("OriginalDst(nil): no error")
	}
	if _, err := Destination(&net.TCPConn{}, Mode(0)); err == nil {
		t.Error("Destination(mode 0): no error")
	}
	for _, s := range []string{"redirect", "tproxy"} {
		if m, err := ParseMode(s); err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("dnat"); err == nil {
		t.Error(`ParseMode("dnat"): no error`)
	}
}
