package probe

import "net/netip"

// AddrClass is what kind of address a server announced or answered on.
type AddrClass string

// The address classes, from the most to the least specific test.
const (
	ClassUnspecified   AddrClass = "unspecified"   // 0.0.0.0, ::: no address at all
	ClassLoopback      AddrClass = "loopback"      // 127.0.0.0/8, ::1: the machine itself
	ClassPrivate       AddrClass = "private"       // RFC 1918 10/8, 172.16/12, 192.168/16; ULA fc00::/7
	ClassCGNAT         AddrClass = "cgnat"         // RFC 6598 shared address space 100.64.0.0/10
	ClassLinkLocal     AddrClass = "link-local"    // 169.254.0.0/16, fe80::/10
	ClassDocumentation AddrClass = "documentation" // RFC 5737 192.0.2/24, 198.51.100/24, 203.0.113/24; RFC 3849 2001:db8::/32; RFC 9637 3fff::/20
	ClassMulticast     AddrClass = "multicast"     // 224.0.0.0/4, ff00::/8
	ClassReserved      AddrClass = "reserved"      // 0/8, 240/4 and broadcast, 192.0.0.0/24, 198.18.0.0/15, IPv6 outside 2000::/3
	ClassPublic        AddrClass = "public"        // everything else: globally routable
)

var (
	pfxCGNAT = netip.MustParsePrefix("100.64.0.0/10")
	pfxDoc   = []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("3fff::/20"),
	}
	pfxReserved = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),      // "this network" (RFC 791)
		netip.MustParsePrefix("240.0.0.0/4"),    // future use and 255.255.255.255
		netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments (RFC 6890)
		netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking (RFC 2544)
		netip.MustParsePrefix("100::/64"),       // discard-only (RFC 6666)
		netip.MustParsePrefix("fec0::/10"),      // deprecated site-local
		netip.MustParsePrefix("::ffff:0:0/96"),  // only reached when not unmapped
		netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64 (RFC 8215)
	}
	pfxGlobal6 = netip.MustParsePrefix("2000::/3")
	pfxNAT64   = netip.MustParsePrefix("64:ff9b::/96") // well-known NAT64 prefix: public IPv4 inside
)

// Classify returns the class of a; an IPv4-mapped IPv6 address is
// classified as the IPv4 address it holds, a zone is ignored. The zero
// Addr is ClassUnspecified.
func Classify(a netip.Addr) AddrClass {
	a = a.Unmap().WithZone("")
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return ClassUnspecified
	case a.IsLoopback():
		return ClassLoopback
	case a.IsPrivate():
		return ClassPrivate
	case pfxCGNAT.Contains(a):
		return ClassCGNAT
	case a.IsLinkLocalUnicast():
		return ClassLinkLocal
	case a.IsMulticast():
		return ClassMulticast
	}
	for _, p := range pfxDoc {
		if p.Contains(a) {
			return ClassDocumentation
		}
	}
	for _, p := range pfxReserved {
		if p.Contains(a) {
			return ClassReserved
		}
	}
	if a.Is6() && !pfxGlobal6.Contains(a) {
		if pfxNAT64.Contains(a) {
			return ClassPublic
		}
		return ClassReserved
	}
	return ClassPublic
}

// Routable reports whether addresses of class c are reached the same way
// from anywhere on the Internet. Only public addresses are: a private,
// CGNAT, link-local or loopback address means a different host, or
// none, depending on where the client sits.
func (c AddrClass) Routable() bool { return c == ClassPublic }

// describe returns the class in plain words, for findings.
func (c AddrClass) describe(a netip.Addr) string {
	switch c {
	case ClassUnspecified:
		return "the unspecified address (no address at all)"
	case ClassLoopback:
		return "a loopback address (every machine's own)"
	case ClassPrivate:
		if a.Unmap().Is6() {
			return "a private IPv6 address (ULA, fc00::/7)"
		}
		return "a private address (RFC 1918)"
	case ClassCGNAT:
		return "a carrier-grade NAT address (100.64.0.0/10)"
	case ClassLinkLocal:
		return "a link-local address"
	case ClassDocumentation:
		return "a documentation address (not routed on the Internet)"
	case ClassMulticast:
		return "a multicast address"
	case ClassReserved:
		return "a reserved address (not routed on the Internet)"
	}
	return "a public address"
}

// dialable reports whether a connection to a, announced by a server
// reached on control, can tell anything about the server: the unspecified
// address and a loopback address (unless the server itself is on
// loopback) would reach the probe's own machine, and multicast, reserved
// and link-local addresses (no interface zone) reach no server at all.
func dialable(a, control netip.Addr) (ok bool, why string) {
	switch c := Classify(a); c {
	case ClassUnspecified:
		return false, "not dialed: " + a.Unmap().String() + " is no address (it would reach this machine)"
	case ClassLoopback:
		if Classify(control) != ClassLoopback {
			return false, "not dialed: " + a.Unmap().String() + " is a loopback address (it would reach this machine)"
		}
	case ClassMulticast, ClassReserved, ClassLinkLocal:
		return false, "not dialed: " + a.Unmap().String() + " is " + c.describe(a)
	}
	return true, ""
}
