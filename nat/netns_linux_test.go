package nat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// requireRoot skips t unless it runs as root with ip and the given tools
// on PATH; with FTPALG_E2E=1 it fails instead, so CI never skips silently.
func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, firewall rules, IP_TRANSPARENT)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ")
	if os.Getenv("FTPALG_E2E") == "1" {
		t.Fatal(msg + " (FTPALG_E2E=1: not skipping)")
	}
	t.Skip(msg + " (set FTPALG_E2E=1 to make this a failure)")
}

// testNS is a network namespace created for one test and deleted, with its
// links, addresses, routes and firewall rules, when the test ends.
type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates the namespace ftpalg-nat-ROLE-XXXXXXXX with lo up.
func newNS(t *testing.T, role string) *testNS {
	t.Helper()
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "ftpalg-nat-" + role + "-" + hex.EncodeToString(rnd[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &testNS{name: name, h: -1}
	t.Cleanup(func() {
		if n.h >= 0 {
			n.h.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	n.h = h
	n.run(t, "ip", "link", "set", "lo", "up")
	return n
}

// run runs a command inside n and fails t if it fails.
func (n *testNS) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("[%s] %s: %v: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out)
}

// do runs fn on a fresh goroutine locked to an OS thread that has joined
// n, and waits for it. Sockets fn creates live in n. The thread is never
// unlocked, so the runtime discards it when the goroutine ends and no
// other goroutine ever runs in n (or with whatever else fn changed, such
// as the thread's capabilities). fn must not call t.Fatal.
func (n *testNS) do(t *testing.T, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n.name, err)
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// dial connects from inside n.
func (n *testNS) dial(t *testing.T, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	t.Helper()
	var (
		c   *net.TCPConn
		err error
	)
	n.do(t, func() {
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialTCP(context.Background(), "tcp", netip.AddrPort{}, to)
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// listen opens a plain TCP listener inside n, closed when t ends.
func (n *testNS) listen(t *testing.T, network string, ap netip.AddrPort) *net.TCPListener {
	t.Helper()
	var (
		ln  *net.TCPListener
		err error
	)
	n.do(t, func() { ln, err = net.ListenTCP(network, net.TCPAddrFromAddrPort(ap)) })
	if err != nil {
		t.Fatalf("[%s] listen %s %s: %v", n.name, network, ap, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// accept waits up to 5 s for one connection on ln; it is closed when t
// ends.
func accept(t *testing.T, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// veth links a and b with a veth pair created inside a, its peer end
// moved straight into b: the test's own namespace is never touched.
func veth(t *testing.T, a *testNS, aIf string, b *testNS, bIf string) {
	t.Helper()
	a.run(t, "ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.name)
	a.run(t, "ip", "link", "set", aIf, "up")
	b.run(t, "ip", "link", "set", bIf, "up")
}

// addr adds prefix to dev in n; IPv6 addresses skip duplicate address
// detection (nodad) so they are usable at once.
func (n *testNS) addr(t *testing.T, dev, prefix string) {
	t.Helper()
	args := []string{"ip", "addr", "add", prefix, "dev", dev}
	if strings.Contains(prefix, ":") {
		args = append(args, "nodad")
	}
	n.run(t, args...)
}

// family holds the documentation addresses and tool names of one address
// family in the gateway topology:
//
//	client (c0) ──── (rc) router (rs) ──── (s0) server
//	198.51.100.10     .1        192.0.2.1      192.0.2.10
//	2001:db8:1::10  2001:db8:1::1  2001:db8:2::1  2001:db8:2::10
//
// Intercepted is a destination that exists nowhere (203.0.113.5,
// 2001:db8:3::5): the client routes it to the router, which intercepts.
type family struct {
	name                           string
	client, routerC, routerS, srv  netip.Addr
	intercepted                    netip.Addr
	bits                           string // prefix length on the links
	iptables, ip, allLocal, loopbk string
}

var families = []family{
	{
		name:   "ipv4",
		client: netip.MustParseAddr("198.51.100.10"), routerC: netip.MustParseAddr("198.51.100.1"),
		routerS: netip.MustParseAddr("192.0.2.1"), srv: netip.MustParseAddr("192.0.2.10"),
		intercepted: netip.MustParseAddr("203.0.113.5"),
		bits:        "/24", iptables: "iptables", ip: "-4", allLocal: "0.0.0.0/0", loopbk: "127.0.0.1",
	},
	{
		name:   "ipv6",
		client: netip.MustParseAddr("2001:db8:1::10"), routerC: netip.MustParseAddr("2001:db8:1::1"),
		routerS: netip.MustParseAddr("2001:db8:2::1"), srv: netip.MustParseAddr("2001:db8:2::10"),
		intercepted: netip.MustParseAddr("2001:db8:3::5"),
		bits:        "/64", iptables: "ip6tables", ip: "-6", allLocal: "::/0", loopbk: "::1",
	},
}

// gateway is the three-namespace topology of the family table above, with
// forwarding on in the router and both families configured.
type gateway struct {
	client, router, server *testNS
}

func newGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{client: newNS(t, "client"), router: newNS(t, "router"), server: newNS(t, "server")}
	veth(t, g.router, "rc", g.client, "c0")
	veth(t, g.router, "rs", g.server, "s0")
	for _, f := range families {
		g.client.addr(t, "c0", f.client.String()+f.bits)
		g.router.addr(t, "rc", f.routerC.String()+f.bits)
		g.router.addr(t, "rs", f.routerS.String()+f.bits)
		g.server.addr(t, "s0", f.srv.String()+f.bits)
		g.client.run(t, "ip", f.ip, "route", "add", "default", "via", f.routerC.String())
		g.server.run(t, "ip", f.ip, "route", "add", "default", "via", f.routerS.String())
	}
	g.router.run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	g.router.run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
	return g
}

// exchange checks that bytes flow both ways between two ends of a
// connection.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, dir := range []struct {
		from, to net.Conn
		msg      string
	}{{a, b, "hello from a\n"}, {b, a, "hello from b\n"}} {
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
