package intercept

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ftpalg/ftpalg/rules"
)

// ParseSelectors reads a comma-separated list of what to intercept (the
// --intercept flag), for Config.Sources and Config.Interfaces:
//
//   - a prefix, "198.51.100.0/24" or "2001:db8:1::/64" (host bits are
//     allowed; Install masks them),
//   - an address, "198.51.100.7", meaning that one host (/32, /128),
//   - an interface name, "lan0", or a prefix of names, "lan+": 1 to 15
//     bytes, no whitespace, '/', ':', quotes or backslash, no leading '-'
//     or '!', '+' only at the end.
//
// Spaces around items and empty items are ignored; "" is nothing. It
// refuses, with an error matching rules.ErrInvalid that names the item, an
// IPv4-mapped IPv6 address or one with a zone, and anything made only of
// digits, dots and slashes that is not an address or prefix ("10.0.0.300",
// "198.51.100.0/33"), which Linux would take for an interface name.
func ParseSelectors(s string) (sources []netip.Prefix, ifaces []string, err error) {
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			if err := checkSourceAddr(item, p.Addr()); err != nil {
				return nil, nil, err
			}
			sources = append(sources, p)
			continue
		}
		if a, err := netip.ParseAddr(item); err == nil {
			if err := checkSourceAddr(item, a); err != nil {
				return nil, nil, err
			}
			sources = append(sources, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		if strings.Trim(item, "0123456789./") == "" {
			return nil, nil, fmt.Errorf("%w: selector %q: not an IP address or prefix", rules.ErrInvalid, item)
		}
		if err := checkInterface(item); err != nil {
			return nil, nil, fmt.Errorf("%w: selector %q: not an IP address, prefix or interface name (up to 15 characters, no whitespace or '/', '+' only at the end)", rules.ErrInvalid, item)
		}
		ifaces = append(ifaces, item)
	}
	return sources, ifaces, nil
}

// checkSourceAddr refuses what no -s can say.
func checkSourceAddr(item string, a netip.Addr) error {
	switch {
	case a.Zone() != "":
		return fmt.Errorf("%w: selector %q: an address with a zone cannot select sources", rules.ErrInvalid, item)
	case a.Is4In6():
		return fmt.Errorf("%w: selector %q: write IPv4 networks as IPv4", rules.ErrInvalid, item)
	}
	return nil
}
