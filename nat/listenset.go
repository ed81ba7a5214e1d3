package nat

import (
	"net"
	"net/netip"
	"sync/atomic"
)

// ListenSet tells whether a connection was accepted on one of a set of
// listeners, from the connection's local address: a listener on a
// wildcard address matches any local address with its port (two
// listeners cannot share an address and port, so the match is
// unambiguous). The proxy uses it to pick the connections of implicit
// FTPS listeners out of a Switch. Safe for concurrent use.
type ListenSet struct {
	addrs atomic.Pointer[[]netip.AddrPort]
}

// Set makes lns's addresses the set.
func (l *ListenSet) Set(lns ...net.Listener) {
	var addrs []netip.AddrPort
	for _, ln := range lns {
		for _, a := range Addrs(ln) {
			addrs = append(addrs, AddrPortOf(a))
		}
	}
	l.addrs.Store(&addrs)
}

// Has reports whether c was accepted on one of the set's listeners.
func (l *ListenSet) Has(c net.Conn) bool {
	p := l.addrs.Load()
	if p == nil {
		return false
	}
	local := AddrPortOf(c.LocalAddr())
	for _, a := range *p {
		if a.Port() == local.Port() && (a.Addr().IsUnspecified() || a.Addr().Unmap() == local.Addr().Unmap()) {
			return true
		}
	}
	return false
}
