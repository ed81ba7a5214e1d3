package nstest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Veth links a and b with a veth pair, aDev in a and bDev in b, both up.
// The pair is created inside a and its peer end moved straight into b:
// no interface ever appears in the caller's namespace.
func Veth(t testing.TB, a *NS, aDev string, b *NS, bDev string) {
	t.Helper()
	a.IP(t, "link", "add", aDev, "type", "veth", "peer", "name", bDev, "netns", b.Name)
	a.IP(t, "link", "set", aDev, "up")
	b.IP(t, "link", "set", bDev, "up")
}

// Addr adds each prefix ("192.0.2.1/24") to dev in n. IPv6 addresses skip
// duplicate address detection (nodad), so they are usable at once.
func (n *NS) Addr(t testing.TB, dev string, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		args := []string{"addr", "add", p, "dev", dev}
		if strings.Contains(p, ":") {
			args = append(args, "nodad")
		}
		n.IP(t, args...)
	}
}

// StaticIPv6 turns IPv6 on in n for interfaces created afterwards, with
// neither duplicate address detection nor router advertisements and
// solicitations: addresses are usable at once and nothing configures
// itself behind the test's back.
func (n *NS) StaticIPv6(t testing.TB) {
	t.Helper()
	for _, dev := range []string{"all", "default"} {
		n.Sysctl(t, "net.ipv6.conf."+dev+".accept_dad", "0")
		n.Sysctl(t, "net.ipv6.conf."+dev+".accept_ra", "0")
		n.Sysctl(t, "net.ipv6.conf."+dev+".router_solicitations", "0")
		n.Sysctl(t, "net.ipv6.conf."+dev+".disable_ipv6", "0")
	}
}

// Dial connects from inside n, from the address from (any port; the zero
// Addr: any address), to to, within timeout.
func (n *NS) Dial(from netip.Addr, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	var local netip.AddrPort
	if from.IsValid() {
		local = netip.AddrPortFrom(from, 0)
	}
	return n.DialFrom(local, to, timeout)
}

// DialFrom connects from inside n, from local (the zero AddrPort: any), to
// to, within timeout.
func (n *NS) DialFrom(local, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	exit, err := n.Enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	d := net.Dialer{Timeout: timeout}
	return d.DialTCP(context.Background(), "tcp", local, to)
}

// Listen opens a TCP listener on addr inside n; it is closed when t ends.
func (n *NS) Listen(t testing.TB, addr netip.AddrPort) *net.TCPListener {
	t.Helper()
	return n.ListenTCP(t, "tcp", addr)
}

// ListenTCP is Listen with a network: "tcp4" or "tcp6" for a single-stack
// wildcard listener, "tcp" with [::] for a dual-stack one.
func (n *NS) ListenTCP(t testing.TB, network string, addr netip.AddrPort) *net.TCPListener {
	t.Helper()
	var (
		ln  *net.TCPListener
		err error
	)
	n.Do(t, func() { ln, err = net.ListenTCP(network, net.TCPAddrFromAddrPort(addr)) })
	if err != nil {
		t.Fatalf("[%s] listen %s %s: %v", n.Name, network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Accept waits up to 5 s for one connection on ln; the connection is
// closed when t ends.
func Accept(t testing.TB, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Exchange checks that bytes flow both ways between the two ends a and b
// of a connection, within 5 s each way.
func Exchange(t testing.TB, a, b net.Conn) {
	t.Helper()
	for _, dir := range []struct {
		from, to net.Conn
		msg      string
	}{{a, b, "220 hello from a\r\n"}, {b, a, "USER hello-from-b\r\n"}} {
		dir.to.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := dir.from.Write([]byte(dir.msg)); err != nil {
			t.Fatalf("write %s→%s: %v", dir.from.LocalAddr(), dir.from.RemoteAddr(), err)
		}
		buf := make([]byte, len(dir.msg))
		if _, err := io.ReadFull(dir.to, buf); err != nil || string(buf) != dir.msg {
			t.Fatalf("read at %s: %q, %v; want %q", dir.to.LocalAddr(), buf, err, dir.msg)
		}
	}
}

// IsTimeout reports whether a dial failed by timing out: its SYN was
// dropped, not refused.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
