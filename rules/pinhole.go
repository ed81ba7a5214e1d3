package rules

import (
	"fmt"
	"math"
	"net/netip"
	"time"
)

// Key identifies a pinhole's kernel object: two pinholes with the same key
// are one set element or one rule, whatever their session or lifetime. A
// Forward pinhole and an input one of the same tuple are two keys: the
// iptables backend keeps them in different chains. (In the ipset backend
// they are the same element, which both hooks match; the two never share
// a tuple in practice, since a forwarded connection's destination is not
// one of the host's addresses.)
type Key struct {
	Proto   Proto
	Peer    netip.Addr
	Local   netip.AddrPort
	Forward bool
}

// Key returns p's key.
func (p Pinhole) Key() Key { return Key{p.Proto, p.Peer, p.Local, p.Forward} }

// Is6 reports whether p is an IPv6 pinhole. Meaningful after Check.
func (p Pinhole) Is6() bool { return p.Peer.Is6() }

// Check returns p in the form the kernel stores it (IPv4-mapped addresses
// unmapped, IPv6 zones dropped: neither a set element nor a rule carries
// one) or an error wrapping ErrInvalid when no backend can express it.
func (p Pinhole) Check() (Pinhole, error) {
	p.Peer = p.Peer.Unmap().WithZone("")
	p.Local = netip.AddrPortFrom(p.Local.Addr().Unmap().WithZone(""), p.Local.Port())
	local := p.Local.Addr()
	switch {
	case p.Proto != ProtoTCP:
		return p, fmt.Errorf("%w: protocol %s: only tcp", ErrInvalid, p.Proto)
	case !p.Peer.IsValid() || !local.IsValid():
		return p, fmt.Errorf("%w: peer %s, local %s: both addresses are needed", ErrInvalid, p.Peer, p.Local)
	case p.Peer.Is4() != local.Is4():
		return p, fmt.Errorf("%w: peer %s and local %s are of different address families", ErrInvalid, p.Peer, p.Local)
	case local.IsUnspecified() || p.Peer.IsUnspecified():
		return p, fmt.Errorf("%w: %s→%s: a pinhole names one local address and one peer, not any", ErrInvalid, p.Peer, p.Local)
	case p.Local.Port() == 0:
		return p, fmt.Errorf("%w: %s→%s: local port 0", ErrInvalid, p.Peer, p.Local)
	}
	return p, nil
}

// maxTimeout is the largest ipset/nftables element timeout in seconds the
// kernel accepts (ipset's IPSET_MAX_TIMEOUT: UINT_MAX/2 milliseconds).
const maxTimeout = (math.MaxUint32 >> 1) / 1000

// TimeoutSeconds is the kernel-side lifetime of p in whole seconds: rounded
// up, so the pinhole never closes before the proxy stops waiting for the
// connection; at least 1, because 0 means "forever" to ipset; zero or
// negative means DefaultLifetime.
func (p Pinhole) TimeoutSeconds() uint32 {
	d := p.Lifetime
	switch {
	case d <= 0:
		d = DefaultLifetime
	case d >= maxTimeout*time.Second:
		return maxTimeout
	}
	return uint32(max(1, (d+time.Second-1)/time.Second))
}

// Comment is the text a backend stores beside a pinhole in the kernel, so a
// later List (possibly in another process) can tell whose it is.
func (p Pinhole) Comment() string { return fmt.Sprintf("ftpalg session %d", p.Session) }

// ParseComment reads the session number back from Comment's text; ok is
// false for any other text.
func ParseComment(s string) (session uint64, ok bool) {
	_, err := fmt.Sscanf(s, "ftpalg session %d", &session)
	if err != nil || s != fmt.Sprintf("ftpalg session %d", session) {
		return 0, false
	}
	return session, true
}
