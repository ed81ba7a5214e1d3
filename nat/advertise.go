package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
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

// AdvertiseRule announces Addr to clients whose address is in Clients:
// an instance behind a load balancer, or a gateway reached by internal
// clients on one address and by external ones through NAT on another.
type AdvertiseRule struct {
	Clients netip.Prefix
	Addr    netip.Addr
}

// AdvertisedFor returns the address to announce to client: the Addr of
// the rule with the longest prefix holding it, else Advertised(configured,
// controlLocal). An IPv4 rule never answers an IPv6 client or the other
// way round.
func AdvertisedFor(rules []AdvertiseRule, client, configured, controlLocal netip.Addr) netip.Addr {
	client = client.Unmap()
	best := -1
	var addr netip.Addr
	for _, r := range rules {
		if r.Clients.Contains(client) && r.Clients.Bits() > best {
			best, addr = r.Clients.Bits(), r.Addr
		}
	}
	if best >= 0 {
		return addr.Unmap()
	}
	return Advertised(configured, controlLocal)
}

// ParseAdvertise parses --advertise: comma-separated entries, each an
// address (the default, at most one) or PREFIX=ADDRESS (for the clients
// in PREFIX), e.g. "203.0.113.7,10.0.0.0/8=10.0.0.1". A rule's address
// must be of the family of its prefix: clients are told an address they
// can dial.
func ParseAdvertise(s string) (def netip.Addr, rules []AdvertiseRule, err error) {
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		prefix, addr, isRule := strings.Cut(e, "=")
		if !isRule {
			a, err := netip.ParseAddr(e)
			if err != nil || a.Zone() != "" {
				return def, nil, fmt.Errorf("%q: want an IP address or PREFIX=ADDRESS", e)
			}
			if def.IsValid() {
				return def, nil, fmt.Errorf("%q: a second default address (%s already); rules are PREFIX=ADDRESS", e, def)
			}
			def = a.Unmap()
			continue
		}
		p, err := netip.ParsePrefix(strings.TrimSpace(prefix))
		if err != nil {
			return def, nil, fmt.Errorf("%q: %q is not a prefix (want e.g. 10.0.0.0/8)", e, prefix)
		}
		a, err := netip.ParseAddr(strings.TrimSpace(addr))
		if err != nil || a.Zone() != "" {
			return def, nil, fmt.Errorf("%q: %q is not an IP address", e, addr)
		}
		a = a.Unmap()
		if p.Addr().Is4() != a.Is4() {
			return def, nil, fmt.Errorf("%q: clients in %s cannot be told an address of the other family", e, p)
		}
		for _, r := range rules {
			if r.Clients == p.Masked() {
				return def, nil, fmt.Errorf("%q: %s has a rule already", e, p)
			}
		}
		rules = append(rules, AdvertiseRule{Clients: p.Masked(), Addr: a})
	}
	if !def.IsValid() && rules == nil {
		return def, nil, errors.New("no address")
	}
	return def, rules, nil
}
