package nat

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// tproxyRoute installs, in n, the policy route that delivers packets
// marked 1 locally (kernel Documentation/networking/tproxy.rst), and the
// socket match that marks packets for an existing transparent socket.
func tproxyRoute(t *testing.T, n *nstest.NS, f family) {
	t.Helper()
	n.Run(t, f.IPTables, "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "--transparent",
		"-j", "MARK", "--set-mark", "1")
	n.Run(t, "ip", f.IPFlag, "rule", "add", "fwmark", "1", "lookup", "100")
	n.Run(t, "ip", f.IPFlag, "route", "add", "local", f.Default.String(), "dev", "lo", "table", "100")
}

// tproxyRule adds, in n, a TPROXY rule for TCP to port dport (and to dst,
// if valid), delivered to a transparent listener on onPort (and onIP).
func tproxyRule(t *testing.T, n *nstest.NS, f family, dst netip.Addr, dport int, onIP netip.Addr, onPort int) {
	t.Helper()
	args := []string{f.IPTables, "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp"}
	if dst.IsValid() {
		args = append(args, "-d", dst.String())
	}
	args = append(args, "--dport", strconv.Itoa(dport), "-j", "TPROXY", "--on-port", strconv.Itoa(onPort),
		"--tproxy-mark", "0x1/0x1")
	if onIP.IsValid() {
		args = append(args, "--on-ip", onIP.String())
	}
	n.Run(t, args...)
}

// TestListenTransparentTProxy intercepts a client's connections in the
// router with TPROXY and checks the transparent listener gets them with
// the original destination as LocalAddr, on four kinds of listener: the
// wildcard address, the exact non-local destination (how data connections
// to a server's address will be caught) with a TPROXY rule naming it in
// --on-ip or with only the socket match, and loopback named by --on-ip.
func TestListenTransparentTProxy(t *testing.T) {
	nstest.Require(t, "iptables", "ip6tables", "sysctl")
	g := newGateway(t)
	for _, f := range families {
		tproxyRoute(t, g.Router, f)
		// Control connections: any destination, port 21, to a listener on
		// port 2121 of the wildcard address. (Without --on-ip TPROXY looks
		// on the incoming interface's primary address, which the wildcard
		// covers.)
		tproxyRule(t, g.Router, f, netip.Addr{}, 21, netip.Addr{}, 2121)
		// The exact-address listener: connections to the intercepted
		// address, port 50000, to a listener on that address and port.
		tproxyRule(t, g.Router, f, f.intercepted, 50000, f.intercepted, 50000)
		// The same without --on-ip: the lookup uses the interface's
		// address, finds nothing, and TPROXY drops the SYN.
		tproxyRule(t, g.Router, f, f.intercepted, 50001, netip.Addr{}, 50001)
		// Port 50002 has no TPROXY rule: the socket match alone finds the
		// listener bound to the exact address, marks, and the policy route
		// delivers locally.
		// Loopback listener: port 23 to 127.0.0.1:2323 (::1).
		tproxyRule(t, g.Router, f, netip.Addr{}, 23, f.loopback, 2323)
	}
	for _, f := range families {
		wildcard := netip.IPv4Unspecified()
		if f.Name == "ipv6" {
			wildcard = netip.IPv6Unspecified()
		}
		for _, c := range []struct {
			name     string
			listenOn netip.AddrPort
			dialPort uint16
			wantDrop bool
		}{
			{"wildcard", netip.AddrPortFrom(wildcard, 2121), 21, false},
			{"non-local-address", netip.AddrPortFrom(f.intercepted, 50000), 50000, false},
			{"non-local-address-tproxy-without-on-ip", netip.AddrPortFrom(f.intercepted, 50001), 50001, true},
			{"non-local-address-socket-match-only", netip.AddrPortFrom(f.intercepted, 50002), 50002, false},
			{"loopback-on-ip", netip.AddrPortFrom(f.loopback, 2323), 23, false},
		} {
			t.Run(f.Name+"/"+c.name, func(t *testing.T) {
				var (
					ln  *net.TCPListener
					err error
				)
				g.Router.Do(t, func() { ln, err = ListenTransparent(context.Background(), c.listenOn) })
				if err != nil {
					t.Fatalf("ListenTransparent(%s): %v", c.listenOn, err)
				}
				t.Cleanup(func() { ln.Close() })

				want := netip.AddrPortFrom(f.intercepted, c.dialPort)
				if c.wantDrop {
					if c, err := g.Client.Dial(netip.Addr{}, want, time.Second); !nstest.IsTimeout(err) {
						if c != nil {
							c.Close()
						}
						t.Fatalf("client dial %s: %v; want a timeout (SYN dropped by TPROXY)", want, err)
					}
					return
				}
				cc, err := g.Client.Dial(netip.Addr{}, want, 5*time.Second)
				if err != nil {
					t.Fatalf("client dial %s: %v", want, err)
				}
				defer cc.Close()
				sc := nstest.Accept(t, ln)
				if got := AddrPortOf(sc.LocalAddr()); got != want {
					t.Errorf("LocalAddr = %s, want %s", got, want)
				}
				if got := AddrPortOf(sc.RemoteAddr()); got != AddrPortOf(cc.LocalAddr()) || got.Addr() != f.Client {
					t.Errorf("RemoteAddr = %s, want the client's %s", got, cc.LocalAddr())
				}
				if d, err := Destination(sc, ModeTProxy); err != nil || d != want {
					t.Errorf("Destination(tproxy) = %s, %v; want %s", d, err, want)
				}
				nstest.Exchange(t, cc, sc)
			})
		}
		t.Run(f.Name+"/plain-listener-cannot-bind-non-local", func(t *testing.T) {
			var err error
			g.Router.Do(t, func() {
				var ln *net.TCPListener
				ln, err = net.ListenTCP(tcpNetwork(f.intercepted), net.TCPAddrFromAddrPort(netip.AddrPortFrom(f.intercepted, 50009)))
				if err == nil {
					ln.Close()
				}
			})
			if !errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Errorf("plain listen on non-local %s: %v, want EADDRNOTAVAIL", f.intercepted, err)
			}
		})
	}
}

// TestDialTransparent dials, from the router, the server with the
// client's address as source; the server must see the client's address.
// Without the return-path rules the server's SYN-ACK is forwarded to the
// real client instead, and the dial times out.
func TestDialTransparent(t *testing.T) {
	nstest.Require(t, "iptables", "ip6tables", "sysctl")
	g := newGateway(t)
	for _, f := range families {
		t.Run(f.Name, func(t *testing.T) {
			to := netip.AddrPortFrom(f.Server, 2100)
			ln := g.Server.ListenTCP(t, tcpNetwork(f.Server), to)
			from := netip.AddrPortFrom(f.Client, 0)

			var err error
			g.Router.Do(t, func() {
				var c *net.TCPConn
				c, err = (&net.Dialer{Timeout: time.Second}).DialTCP(context.Background(), tcpNetwork(f.Server), from, to)
				if err == nil {
					c.Close()
				}
			})
			if !errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Errorf("plain dial from non-local %s: %v, want EADDRNOTAVAIL", from, err)
			}

			// No return path yet: the SYN leaves, the SYN-ACK goes astray.
			g.Router.Do(t, func() {
				var c *net.TCPConn
				c, err = DialTransparent(context.Background(), from, to, time.Second)
				if err == nil {
					c.Close()
				}
			})
			if !nstest.IsTimeout(err) {
				t.Fatalf("DialTransparent without the return-path rules: %v, want a timeout", err)
			}
			// Drain what the server's backlog may hold from that attempt.
			ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}

			tproxyRoute(t, g.Router, f)
			for _, from := range []netip.AddrPort{from, netip.AddrPortFrom(f.Client, 40000)} {
				var rc *net.TCPConn
				g.Router.Do(t, func() { rc, err = DialTransparent(context.Background(), from, to, 5*time.Second) })
				if err != nil {
					t.Fatalf("DialTransparent(%s → %s): %v", from, to, err)
				}
				t.Cleanup(func() { rc.Close() })
				sc := nstest.Accept(t, ln)
				got := AddrPortOf(sc.RemoteAddr())
				if got.Addr() != f.Client || (from.Port() != 0 && got.Port() != from.Port()) {
					t.Errorf("server sees RemoteAddr %s, want %s", got, from)
				}
				if l := AddrPortOf(rc.LocalAddr()); l != got {
					t.Errorf("dialer's LocalAddr %s, server's RemoteAddr %s", l, got)
				}
				nstest.Exchange(t, rc, sc)
			}
		})
	}
}

func TestDialTransparentBadInput(t *testing.T) {
	ctx := context.Background()
	v4 := netip.MustParseAddrPort("198.51.100.10:0")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:21")
	for _, c := range []struct{ from, to netip.AddrPort }{
		{v4, v6},
		{netip.AddrPort{}, v6},
		{v4, netip.AddrPort{}},
	} {
		if conn, err := DialTransparent(ctx, c.from, c.to, time.Second); err == nil {
			conn.Close()
			t.Errorf("DialTransparent(%s, %s): no error", c.from, c.to)
		}
	}
	if _, err := ListenTransparent(ctx, netip.AddrPort{}); err == nil {
		t.Error("ListenTransparent(zero): no error")
	}
}

// dropCaps removes caps from the effective set of the calling thread only
// (capabilities are per thread on Linux). Call it on a thread that is
// discarded afterwards, as NS.DoIsolated's are.
func dropCaps(caps ...int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	for _, c := range caps {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	return unix.Capset(&hdr, &data[0])
}

// TestTransparentCapabilities checks which capability IP_TRANSPARENT and
// IPV6_TRANSPARENT need, what the error says without it, and that
// IP_FREEBIND needs none.
func TestTransparentCapabilities(t *testing.T) {
	nstest.Require(t)
	n := nstest.New(t)
	ctx := context.Background()
	nonLocal := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:50000"), netip.MustParseAddrPort("[2001:db8:3::5]:50000")}
	for _, c := range []struct {
		name    string
		drop    []int
		wantErr bool
	}{
		{"all", nil, false},
		{"without-CAP_NET_ADMIN", []int{unix.CAP_NET_ADMIN}, false},
		{"without-CAP_NET_RAW", []int{unix.CAP_NET_RAW}, false},
		{"without-both", []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, ap := range nonLocal {
				var lerr, derr, ferr, capErr error
				if err := n.DoIsolated(func() {
					if capErr = dropCaps(c.drop...); capErr != nil {
						return
					}
					if ln, err := ListenTransparent(ctx, ap); err == nil {
						ln.Close()
					} else {
						lerr = err
					}
					// Nothing answers at the destination; only the
					// setsockopt before bind matters here.
					dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
					defer cancel()
					to := netip.AddrPortFrom(ap.Addr(), 9)
					conn, err := DialTransparent(dctx, ap, to, 0)
					switch {
					case err == nil:
						conn.Close()
					case strings.Contains(err.Error(), "setsockopt"):
						derr = err
					} // other errors (unreachable, timeout) came after the option
					if ln, err := ListenFreebind(ctx, ap); err == nil {
						ln.Close()
					} else {
						ferr = err
					}
				}); err != nil {
					t.Fatal(err)
				}
				if capErr != nil {
					t.Fatalf("drop capabilities: %v", capErr)
				}
				if ferr != nil {
					t.Errorf("ListenFreebind(%s): %v, want success without capabilities", ap, ferr)
				}
				for _, e := range []struct {
					what string
					err  error
				}{{"ListenTransparent", lerr}, {"DialTransparent", derr}} {
					if !c.wantErr {
						if e.err != nil {
							t.Errorf("%s(%s): %v", e.what, ap, e.err)
						}
						continue
					}
					opt := "IP_TRANSPARENT"
					if ap.Addr().Is6() {
						opt = "IPV6_TRANSPARENT"
					}
					if !errors.Is(e.err, os.ErrPermission) || !strings.Contains(e.err.Error(), opt+" needs CAP_NET_ADMIN") {
						t.Errorf("%s(%s) without capabilities: %v; want EPERM naming %s and CAP_NET_ADMIN", e.what, ap, e.err, opt)
					} else {
						t.Logf("%s: %v", e.what, e.err)
					}
				}
			}
		})
	}
}
