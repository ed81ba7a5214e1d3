package nat

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// TestRouteSource builds a namespace with two interfaces (veth pairs whose
// both ends stay in it) and checks RouteSource, its UDP fallback and
// `ip route get` agree on the source address toward each destination:
//
//	a0: 192.0.2.1/24      2001:db8:a::1/64     default via 192.0.2.254 / 2001:db8:a::fe
//	b0: 198.51.100.1/24   2001:db8:b::1/64     (and 198.51.100.3, secondary)
//	lo:                   2001:db8:5::3/128    (IPv6 has no secondary addresses:
//	                                            a second one on b0 would compete)
//	203.0.113.0/26  via 198.51.100.2  src 198.51.100.3   2001:db8:d::/48 src 2001:db8:5::3
//	203.0.113.64/26 via 198.51.100.2                     2001:db8:c::/48 the same
//	unreachable 203.0.113.128/26                         unreachable 2001:db8:e::/48
//
// 203.0.113.192/26 and 2001:db8:f::/48 take the default route.
func TestRouteSource(t *testing.T) {
	nstest.Require(t)
	n := nstest.New(t)
	n.Run(t, "ip", "link", "add", "a0", "type", "veth", "peer", "name", "a1")
	n.Run(t, "ip", "link", "add", "b0", "type", "veth", "peer", "name", "b1")
	for _, l := range []string{"a0", "a1", "b0", "b1"} {
		// No automatic link-local address (it would be tentative for a
		// while, then compete with fe80::1).
		n.Run(t, "ip", "link", "set", l, "addrgenmode", "none")
		n.Run(t, "ip", "link", "set", l, "up")
	}
	n.Addr(t, "a0", "fe80::1/64")
	n.Addr(t, "a0", "192.0.2.1/24")
	n.Addr(t, "a0", "2001:db8:a::1/64")
	n.Addr(t, "b0", "198.51.100.1/24")
	n.Addr(t, "b0", "198.51.100.3/24")
	n.Addr(t, "b0", "2001:db8:b::1/64")
	n.Addr(t, "lo", "2001:db8:5::3/128")
	for _, r := range [][]string{
		{"-4", "default", "via", "192.0.2.254"},
		{"-4", "203.0.113.0/26", "via", "198.51.100.2", "src", "198.51.100.3"},
		{"-4", "203.0.113.64/26", "via", "198.51.100.2"},
		{"-4", "unreachable", "203.0.113.128/26"},
		{"-6", "default", "via", "2001:db8:a::fe"},
		{"-6", "2001:db8:d::/48", "via", "2001:db8:b::2", "src", "2001:db8:5::3"},
		{"-6", "2001:db8:c::/48", "via", "2001:db8:b::2"},
		{"-6", "unreachable", "2001:db8:e::/48"},
	} {
		n.Run(t, append([]string{"ip", r[0], "route", "add"}, r[1:]...)...)
	}

	for _, c := range []struct{ dst, want string }{
		{"192.0.2.77", "192.0.2.1"},       // connected, a0
		{"198.51.100.77", "198.51.100.1"}, // connected, b0: the primary address
		{"203.0.113.7", "198.51.100.3"},   // route with src
		{"203.0.113.70", "198.51.100.1"},  // via b0
		{"203.0.113.200", "192.0.2.1"},    // default route
		{"192.0.2.1", "192.0.2.1"},        // a local address
		{"::ffff:192.0.2.77", "192.0.2.1"},
		{"203.0.113.130", ""}, // unreachable
		{"2001:db8:a::77", "2001:db8:a::1"},
		{"2001:db8:b::77", "2001:db8:b::1"},
		{"2001:db8:d::7", "2001:db8:5::3"},
		{"2001:db8:c::7", "2001:db8:b::1"},
		{"2001:db8:f::7", "2001:db8:a::1"},
		{"2001:db8:e::7", ""},
		{"fe80::2%a0", "fe80::1%a0"}, // a zoned link-local address: looked up on a0
	} {
		dst := netip.MustParseAddr(c.dst)
		var (
			got, udp       netip.Addr
			gotErr, udpErr error
			nlSrc          netip.Addr
			nlErr          error
			want           netip.Addr
		)
		if c.want != "" {
			want = netip.MustParseAddr(c.want)
		}
		n.Do(t, func() {
			got, gotErr = RouteSource(dst)
			nlSrc, nlErr = routeSourceNetlink(dst.Unmap())
			udp, udpErr = routeSourceUDP(dst.Unmap())
			if dst.Zone() != "" {
				// Also by interface index, as the kernel reports zones.
				ifi, err := net.InterfaceByName(dst.Zone())
				if err != nil {
					gotErr = err
					return
				}
				byIndex, err := RouteSource(dst.WithZone(strconv.Itoa(ifi.Index)))
				if err != nil || byIndex.WithZone("") != want.WithZone("") {
					gotErr = fmt.Errorf("by interface index: %s, %v", byIndex, err)
				}
			}
		})
		if !want.IsValid() {
			if gotErr == nil {
				t.Errorf("RouteSource(%s) = %s, want an error (unreachable)", dst, got)
			} else {
				t.Logf("RouteSource(%s): %v", dst, gotErr)
			}
			continue
		}
		if gotErr != nil || got != want {
			t.Errorf("RouteSource(%s) = %s, %v; want %s", dst, got, gotErr, want)
		}
		if nlErr != nil || nlSrc != want {
			t.Errorf("netlink route get %s: src %s, %v; want %s", dst, nlSrc, nlErr, want)
		}
		if udpErr != nil || udp != want {
			t.Errorf("UDP connect toward %s: source %s, %v; want %s", dst, udp, udpErr, want)
		}
		if dst.Zone() != "" {
			continue // ip route get takes the interface as "oif", not as a zone
		}
		if ip := ipRouteGetSrc(t, n, dst.Unmap()); ip != want {
			t.Errorf("ip route get %s: src %s; want %s", dst, ip, want)
		}
	}
}

// ipRouteGetSrc returns the "src" of `ip route get dst` in n.
func ipRouteGetSrc(t *testing.T, n *nstest.NS, dst netip.Addr) netip.Addr {
	t.Helper()
	f := strings.Fields(n.Run(t, "ip", "route", "get", dst.String()))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "src" {
			a, err := netip.ParseAddr(f[i+1])
			if err != nil {
				t.Fatalf("ip route get %s: %v", dst, err)
			}
			return a
		}
	}
	t.Fatalf("ip route get %s: no src in %q", dst, f)
	return netip.Addr{}
}
