package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ListenIntercepted opens the listener intercepted control connections
// arrive on, for mode m, on listen ("IP:PORT" or ":PORT"):
//
//   - ModeRedirect: an ordinary listener (REDIRECT rewrites the
//     destination to a local address); ":PORT" is one dual-stack socket,
//     and any address net.Listen takes is accepted.
//   - ModeTProxy: transparent listeners (ListenTransparent), one per
//     family since a transparent socket is of one: "IP:PORT" opens one,
//     ":PORT" an IPv4 and an IPv6 one merged into a single net.Listener,
//     whose Addr is the IPv4 listener's. With ":0" the IPv6 listener takes
//     the port the IPv4 one got, so one rule port covers both.
//
// The merged listener passes each listener's Accept errors on and backs
// off (5 ms doubling up to 1 s) before that listener's next Accept; Close
// closes both listeners and returns when nothing is left running.
func ListenIntercepted(ctx context.Context, m Mode, listen string) (net.Listener, error) {
	switch m {
	case ModeRedirect:
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", listen)
		if err != nil {
			return nil, fmt.Errorf("nat: listen %s: %w", m, err)
		}
		return ln, nil
	case ModeTProxy:
	default:
		return nil, fmt.Errorf("nat: listen: unknown interception mode %s", m)
	}
	aps, err := transparentAddrs(listen)
	if err != nil {
		return nil, err
	}
	var lns []net.Listener
	for i, ap := range aps {
		if i > 0 && ap.Port() == 0 {
			ap = netip.AddrPortFrom(ap.Addr(), AddrPortOf(lns[0].Addr()).Port())
		}
		ln, err := ListenTransparent(ctx, ap)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return mergeListeners(lns...), nil
}

// Listen opens an ordinary TCP listener on each address ("IP:PORT", or
// ":PORT" for one dual-stack socket) and merges them into one (see
// ListenIntercepted for how the merged listener behaves). An address the
// host does not have (yet) is bound with IP_FREEBIND (ListenFreebind): a
// floating VRRP address on a keepalived backup, which starts receiving
// once the address moves here. A failure closes what was opened.
func Listen(ctx context.Context, addrs []string) (net.Listener, error) {
	if len(addrs) == 0 {
		return nil, errors.New("nat: listen: no address")
	}
	var lns []net.Listener
	var lc net.ListenConfig
	for _, a := range addrs {
		ln, err := lc.Listen(ctx, "tcp", a)
		if ap, perr := netip.ParseAddrPort(a); errors.Is(err, syscall.EADDRNOTAVAIL) && perr == nil {
			ln, err = ListenFreebind(ctx, ap)
		}
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("nat: listen %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return mergeListeners(lns...), nil
}

// transparentAddrs reads a TPROXY listen address: "IP:PORT" is itself,
// ":PORT" the IPv4 and the IPv6 wildcard address with that port.
func transparentAddrs(listen string) ([]netip.AddrPort, error) {
	bad := fmt.Errorf("nat: listen %q: want IP:PORT or :PORT for %s", listen, ModeTProxy)
	if p, ok := strings.CutPrefix(listen, ":"); ok {
		port, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil, bad
		}
		return []netip.AddrPort{
			netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port)),
			netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(port)),
		}, nil
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return nil, bad
	}
	return []netip.AddrPort{ap}, nil
}

// Director returns a function that gives, for a connection accepted on an
// intercepting listener of mode m, the destination its client meant to
// reach (Destination, unmapped), for proxy.Config.Director. It refuses a
// connection whose destination is one of the host's own addresses, which
// would have the proxy connect to itself (a client that connected to the
// listener directly); the host's addresses are those of the calling
// thread's network namespace, read again every few seconds (LocalAddrs).
func Director(m Mode) (func(net.Conn) (netip.AddrPort, error), error) {
	if m != ModeRedirect && m != ModeTProxy {
		return nil, fmt.Errorf("nat: director: unknown interception mode %s", m)
	}
	set, err := localAddrs()
	if err != nil {
		return nil, fmt.Errorf("nat: director: the host's addresses: %w", err)
	}
	local := &LocalAddrs{set: set, read: time.Now()}
	return director(m, local.Has), nil
}

func director(m Mode, local func(netip.Addr) bool) func(net.Conn) (netip.AddrPort, error) {
	return func(c net.Conn) (netip.AddrPort, error) {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return netip.AddrPort{}, errors.New("nat: director: not a TCP connection")
		}
		dst, err := Destination(tc, m)
		if err != nil {
			return netip.AddrPort{}, err
		}
		dst = unmapAddrPort(dst)
		if local(dst.Addr()) {
			return netip.AddrPort{}, fmt.Errorf("nat: connection to the proxy's own address %s, not intercepted", dst)
		}
		return dst, nil
	}
}
