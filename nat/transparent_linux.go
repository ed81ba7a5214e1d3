package nat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockopt is one boolean socket option set before bind.
type sockopt struct {
	name       string
	level, opt int
	// capability says what the kernel checks when the option is turned on
	// (empty: nothing).
	capability string
}

var (
	// IP_TRANSPARENT lets a socket bind an address that is not local
	// (the kernel skips the check) and use it as a source (its route
	// lookups carry FLOWI_FLAG_ANYSRC); only transparent listeners are
	// eligible for TPROXY delivery, and only transparent sockets match
	// `-m socket --transparent`. ip_sockglue.c checks CAP_NET_RAW or
	// CAP_NET_ADMIN in the user namespace owning the network namespace.
	ipTransparent = sockopt{"IP_TRANSPARENT", unix.SOL_IP, unix.IP_TRANSPARENT, "CAP_NET_ADMIN (or CAP_NET_RAW)"}
	// IPV6_TRANSPARENT sets the same socket flag for AF_INET6 sockets,
	// with the same capability check (ipv6_sockglue.c).
	ipv6Transparent = sockopt{"IPV6_TRANSPARENT", unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "CAP_NET_ADMIN (or CAP_NET_RAW)"}
	// IP_FREEBIND only lifts the bind check: the socket can bind an
	// address not (yet) configured, and receives traffic once it is. No
	// capability; no TPROXY delivery, no non-local source on a dial.
	ipFreebind = sockopt{"IP_FREEBIND", unix.SOL_IP, unix.IP_FREEBIND, ""}
	// IPV6_FREEBIND (Linux 4.15) is the same for AF_INET6 sockets.
	ipv6Freebind = sockopt{"IPV6_FREEBIND", unix.SOL_IPV6, unix.IPV6_FREEBIND, ""}
)

// set turns the option on for the socket behind c. An EPERM says which
// capability the option needs; the error still matches syscall.EPERM and
// os.ErrPermission.
func (o sockopt) set(c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), o.level, o.opt, 1)
	}); err != nil {
		return err
	}
	switch {
	case errors.Is(serr, syscall.EPERM) && o.capability != "":
		return fmt.Errorf("setsockopt %s: %w: %s needs %s", o.name, serr, o.name, o.capability)
	case serr != nil:
		return fmt.Errorf("setsockopt %s: %w", o.name, serr)
	}
	return nil
}

// control returns a ListenConfig/Dialer Control function setting the
// option of the socket's family: v4 for "tcp4", v6 for "tcp6". Go calls
// Control after socket(2) and before bind(2).
func control(v4, v6 sockopt) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		switch network {
		case "tcp4":
			return v4.set(c)
		case "tcp6":
			return v6.set(c)
		}
		return fmt.Errorf("nat: unexpected network %q", network)
	}
}

// tcpNetwork returns "tcp4" or "tcp6" for a, never plain "tcp": Go would
// make a dual-stack AF_INET6 socket for 0.0.0.0, and IPv4 TPROXY and
// IP_TRANSPARENT are meant for an AF_INET one.
func tcpNetwork(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "tcp4"
	}
	return "tcp6"
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ListenTransparent opens a TCP listener on ap with IP_TRANSPARENT
// (IPV6_TRANSPARENT for an IPv6 ap), set before bind. Such a listener
//
//   - may bind an address that is not local, such as a server's address
//     for catching the data connections clients open to it, and
//   - is the only kind TPROXY delivers to: a `-j TPROXY --on-port P` rule
//     hands matching SYNs to a transparent listener on port P of the
//     --on-ip address or, without --on-ip, of the incoming interface's
//     primary address (which a wildcard listener covers; a listener bound
//     to the packet's destination is not found, and the SYN is dropped).
//     A listener bound to a specific non-local address also receives,
//     without any TPROXY rule, what `-m socket --transparent` marks.
//
// Accepted connections keep the client's original destination as their
// LocalAddr, and are themselves transparent. TPROXY also needs a policy
// route delivering marked packets locally; see README.md.
//
// It needs CAP_NET_ADMIN (or CAP_NET_RAW); without it the error matches
// os.ErrPermission and names the option and the capability. Use one
// listener per address family (ap decides which; 0.0.0.0 is IPv4 only).
func ListenTransparent(ctx context.Context, ap netip.AddrPort) (*net.TCPListener, error) {
	return listenWith(ctx, "transparent", ap, ipTransparent, ipv6Transparent)
}

// ListenFreebind opens a TCP listener on ap with IP_FREEBIND
// (IPV6_FREEBIND), which lets it bind an address the host does not have
// yet, such as a floating (VRRP) address, and receive connections once the
// address is configured. No capability is needed. A freebind listener is
// not transparent: TPROXY does not deliver to it (use ListenTransparent).
func ListenFreebind(ctx context.Context, ap netip.AddrPort) (*net.TCPListener, error) {
	return listenWith(ctx, "freebind", ap, ipFreebind, ipv6Freebind)
}

func listenWith(ctx context.Context, what string, ap netip.AddrPort, v4, v6 sockopt) (*net.TCPListener, error) {
	ap = unmapAddrPort(ap)
	if !ap.Addr().IsValid() {
		return nil, fmt.Errorf("nat: listen %s: no address", what)
	}
	lc := net.ListenConfig{Control: control(v4, v6)}
	ln, err := lc.Listen(ctx, tcpNetwork(ap.Addr()), ap.String())
	if err != nil {
		return nil, fmt.Errorf("nat: listen %s: %w", what, err)
	}
	return ln.(*net.TCPListener), nil
}

// DialTransparent connects to `to` from the source address and port
// `from` (port 0: the kernel picks one), which need not be local: with
// IP_TRANSPARENT (IPV6_TRANSPARENT) set before bind, the kernel binds it
// and sends from it. This is how the proxy dials a server as the client
// (the server sees the client's address) or a client as the server.
//
// Sending is the easy half. The peer's replies are addressed to `from`,
// which this host does not own: unless a policy route delivers them
// locally, a router forwards them to the real owner of `from` (or drops
// them), and the dial times out. Per the kernel's tproxy.rst, the host
// needs (IPv4; the IPv6 rules are the same with ip6tables and ip -6):
//
//	iptables -t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1
//	ip rule add fwmark 1 lookup 100
//	ip route add local 0.0.0.0/0 dev lo table 100
//
// and the peer must route `from` back through this host.
//
// timeout bounds the connect (0: only ctx does). It needs CAP_NET_ADMIN
// (or CAP_NET_RAW), like ListenTransparent. from and to must be of the
// same family.
func DialTransparent(ctx context.Context, from, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	from, to = unmapAddrPort(from), unmapAddrPort(to)
	if !from.Addr().IsValid() || !to.Addr().IsValid() {
		return nil, fmt.Errorf("nat: dial transparent %s→%s: missing address", from, to)
	}
	if from.Addr().Is4() != to.Addr().Is4() {
		return nil, fmt.Errorf("nat: dial transparent %s→%s: address families differ", from, to)
	}
	d := net.Dialer{Timeout: timeout, Control: control(ipTransparent, ipv6Transparent)}
	c, err := d.DialTCP(ctx, tcpNetwork(to.Addr()), from, to)
	if err != nil {
		return nil, fmt.Errorf("nat: dial transparent: %w", err)
	}
	return c, nil
}

// The source ports DialTransparentAvoiding picks from: Linux's default
// ephemeral range (net.ipv4.ip_local_port_range 32768 60999), where the
// kernel itself would pick.
const (
	avoidPortLo = 32768
	avoidPortHi = 61000 // exclusive
	// avoidRetries is how many more random ports are tried after one is
	// in use (EADDRINUSE) before giving up.
	avoidRetries = 8
)

// DialTransparentAvoiding is DialTransparent from `from` with a source
// port other than avoid: a random one in 32768–60999, and another one, up
// to 8 more times, when the chosen one is in use (EADDRINUSE). avoid 0
// lets the kernel pick any port.
//
// It is how the proxy dials a server with an intercepted client's address
// as source: the client's own port must be avoided, or the dial would
// repeat the intercepted connection's 4-tuple, and conntrack would take
// the SYN for that connection and hand it to the proxy again.
func DialTransparentAvoiding(ctx context.Context, from netip.Addr, avoid uint16, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	return dialAvoiding(ctx, from, avoid, to, timeout, randomSourcePort)
}

func randomSourcePort() uint16 {
	return uint16(avoidPortLo + rand.IntN(avoidPortHi-avoidPortLo))
}

// dialAvoiding is DialTransparentAvoiding with the port picker given.
func dialAvoiding(ctx context.Context, from netip.Addr, avoid uint16, to netip.AddrPort, timeout time.Duration, pick func() uint16) (*net.TCPConn, error) {
	if avoid == 0 {
		return DialTransparent(ctx, netip.AddrPortFrom(from, 0), to, timeout)
	}
	for try := 0; ; try++ {
		port := pick()
		for port == avoid {
			port = pick()
		}
		c, err := DialTransparent(ctx, netip.AddrPortFrom(from, port), to, timeout)
		if err == nil || try == avoidRetries || !errors.Is(err, syscall.EADDRINUSE) {
			return c, err
		}
	}
}

// ipBindAddressNoPort defers the choice of a source port from bind(2) to
// connect(2) (IP_BIND_ADDRESS_NO_PORT, Linux 4.2), for a dial bound to a
// source address with port 0: bind alone must pick a port no socket on
// that address uses, whatever the destination, and with many connections
// in TIME_WAIT it fails with EADDRINUSE; connect picks one unused for the
// whole 4-tuple. It applies to IPv4 and IPv6 sockets alike (the flag is
// the inet socket's).
var ipBindAddressNoPort = sockopt{"IP_BIND_ADDRESS_NO_PORT", unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, ""}

// BindNoPort is a net.Dialer Control function setting
// IP_BIND_ADDRESS_NO_PORT, for dials with a LocalAddr of port 0.
func BindNoPort(network, address string, c syscall.RawConn) error {
	return ipBindAddressNoPort.set(c)
}
