package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
)

// RouteSource returns the local address the kernel would use as source
// toward dst, as `ip route get DST` reports it in "src": the route's
// preferred source (ip route … src A) if it has one, else the address the
// kernel selects on the outgoing interface. It asks netlink (RTM_GETROUTE,
// no capability needed) and, if netlink fails or reports no source, falls
// back to connecting a UDP socket to dst and reading its local address (a
// UDP connect sends nothing). A zoned IPv6 dst (fe80::1%eth0) is looked up
// on that interface.
//
// The lookup runs in the calling thread's network namespace, without a
// firewall mark or uid, so policy routes keyed on those are not seen.
//
// For a peer the proxy already has a connection with, that connection's
// LocalAddr() is the cheaper and exact answer (it is what the peer
// reached); RouteSource is for addresses the proxy has not talked to yet.
func RouteSource(dst netip.Addr) (netip.Addr, error) {
	dst = dst.Unmap()
	if !dst.IsValid() {
		return netip.Addr{}, errors.New("nat: route source: no destination")
	}
	src, nlErr := routeSourceNetlink(dst)
	if nlErr == nil {
		return src, nil
	}
	src, udpErr := routeSourceUDP(dst)
	if udpErr == nil {
		return src, nil
	}
	return netip.Addr{}, fmt.Errorf("nat: route source toward %s: %w; %w", dst, nlErr, udpErr)
}

// routeSourceNetlink is `ip route get dst`: the first route's Src.
func routeSourceNetlink(dst netip.Addr) (netip.Addr, error) {
	var opts *netlink.RouteGetOptions
	if z := dst.Zone(); z != "" {
		opts = &netlink.RouteGetOptions{Oif: z}
		if i, err := strconv.Atoi(z); err == nil {
			opts = &netlink.RouteGetOptions{OifIndex: i}
		}
	}
	routes, err := netlink.RouteGetWithOptions(net.IP(dst.WithZone("").AsSlice()), opts)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("netlink route get: %w", err)
	}
	for _, r := range routes {
		if src, ok := netip.AddrFromSlice(r.Src); ok && src.IsValid() && !src.IsUnspecified() {
			src = src.Unmap()
			if src.Is6() && src.IsLinkLocalUnicast() {
				src = src.WithZone(zoneOf(dst, r.LinkIndex))
			}
			return src, nil
		}
	}
	return netip.Addr{}, errors.New("netlink route get: no source address in the answer")
}

// zoneOf names the link of a link-local source the way Go's net package
// does: dst's own zone if it has one, else the interface name.
func zoneOf(dst netip.Addr, linkIndex int) string {
	if z := dst.Zone(); z != "" {
		return z
	}
	if ifi, err := net.InterfaceByIndex(linkIndex); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(linkIndex)
}

// routeSourceUDP connects a UDP socket to dst and reads the source address
// the kernel bound it to. connect(2) on UDP only does the route lookup and
// source selection; no packet leaves. The port is arbitrary (9, discard).
func routeSourceUDP(dst netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("udp connect: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
