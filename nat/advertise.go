package nat

import (
	"net"
	"net/netip"
)

// AddrPortOf returns a connection's address as a netip value, unmapped
// (an IPv4 client on a dual-stack socket is reported as IPv4).
func AddrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Advertised returns the address to announce to a peer: the configured one
// (a public address the proxy is reached by through NAT) or else the local
// address of the control connection the peer used, which the peer can reach
// by definition.
func Advertised(configured netip.Addr, controlLocal netip.Addr) netip.Addr {
	if configured.IsValid() {
		return configured.Unmap()
	}
	return controlLocal.Unmap()
}
