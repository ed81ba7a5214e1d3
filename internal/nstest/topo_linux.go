package nstest

import (
	"net/netip"
	"strconv"
	"testing"
)

// Topology is two namespaces joined by a veth pair on documentation
// addresses: Server has ServerAddr, Peer has PeerAddr and OtherAddr (a
// third host in the same subnet), for IPv4 and IPv6.
type Topology struct {
	Server, Peer *NS
}

// Documentation addresses (RFC 5737, RFC 3849) of the Topology.
var (
	ServerAddr4 = netip.MustParseAddr("192.0.2.1")
	PeerAddr4   = netip.MustParseAddr("192.0.2.2")
	OtherAddr4  = netip.MustParseAddr("192.0.2.3")
	ServerAddr6 = netip.MustParseAddr("2001:db8::1")
	PeerAddr6   = netip.MustParseAddr("2001:db8::2")
	OtherAddr6  = netip.MustParseAddr("2001:db8::3")
)

// NewTopology creates the two namespaces and the veth pair between them
// (s0 in Server, p0 in Peer).
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	s, p := New(t), New(t)
	Veth(t, s, "s0", p, "p0")
	s.Addr(t, "s0", ServerAddr4.String()+"/24", ServerAddr6.String()+"/64")
	for _, a := range []netip.Addr{PeerAddr4, OtherAddr4} {
		p.Addr(t, "p0", a.String()+"/24")
	}
	for _, a := range []netip.Addr{PeerAddr6, OtherAddr6} {
		p.Addr(t, "p0", a.String()+"/64")
	}
	return &Topology{Server: s, Peer: p}
}

// Chain is three namespaces in a row, the router in the middle, both
// address families (documentation addresses only):
//
//	client                router                              server
//	eth0 198.51.100.10/24 ── cli0 198.51.100.1/24 | srv0 192.0.2.1/24 ── eth0 192.0.2.10/24
//	eth0 2001:db8:1::10/64 ── cli0 2001:db8:1::1/64 | srv0 2001:db8:2::1/64 ── eth0 2001:db8:2::10/64
//
// Only the routes of ChainOptions exist besides the connected ones.
type Chain struct {
	Client, Router, Server *NS
}

// Family is one address family of the Chain: its addresses, networks and
// tools.
type Family struct {
	Name                 string     // "ipv4", "ipv6"
	Client, RouterClient netip.Addr // the client, and the router on the client's link
	RouterServer, Server netip.Addr // the router on the server's link, and the server
	ClientNet, ServerNet netip.Prefix
	Default              netip.Prefix // 0.0.0.0/0, ::/0
	IPTables             string       // iptables, ip6tables
	IPFlag               string       // -4, -6
}

// The Chain's families.
var (
	V4 = Family{
		Name:   "ipv4",
		Client: netip.MustParseAddr("198.51.100.10"), RouterClient: netip.MustParseAddr("198.51.100.1"),
		RouterServer: netip.MustParseAddr("192.0.2.1"), Server: netip.MustParseAddr("192.0.2.10"),
		ClientNet: netip.MustParsePrefix("198.51.100.0/24"), ServerNet: netip.MustParsePrefix("192.0.2.0/24"),
		Default: netip.MustParsePrefix("0.0.0.0/0"), IPTables: "iptables", IPFlag: "-4",
	}
	V6 = Family{
		Name:   "ipv6",
		Client: netip.MustParseAddr("2001:db8:1::10"), RouterClient: netip.MustParseAddr("2001:db8:1::1"),
		RouterServer: netip.MustParseAddr("2001:db8:2::1"), Server: netip.MustParseAddr("2001:db8:2::10"),
		ClientNet: netip.MustParsePrefix("2001:db8:1::/64"), ServerNet: netip.MustParsePrefix("2001:db8:2::/64"),
		Default: netip.MustParsePrefix("::/0"), IPTables: "ip6tables", IPFlag: "-6",
	}
	Families = []Family{V4, V6}
)

// ChainOptions are the deviations from a Chain whose router does not
// forward and whose client and server have only their connected routes.
type ChainOptions struct {
	// Forwarding turns IPv4 and IPv6 forwarding on in the router.
	Forwarding bool
	// ClientRoutes and ServerRoutes are routed via the router, from the
	// client and from the server (Family.Default: a default route).
	ClientRoutes, ServerRoutes []netip.Prefix
	// Prefix starts the namespaces' names, PREFIX-client and so on
	// (default: a RandomName("ftpalg")).
	Prefix string
}

// NewChain builds the namespaces, veth pairs, addresses and routes.
func NewChain(t testing.TB, o ChainOptions) *Chain {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = RandomName("ftpalg")
	}
	c := &Chain{
		Client: NewNamed(t, o.Prefix+"-client"),
		Router: NewNamed(t, o.Prefix+"-router"),
		Server: NewNamed(t, o.Prefix+"-server"),
	}
	for _, n := range []*NS{c.Client, c.Router, c.Server} {
		n.StaticIPv6(t)
		fwd := "0"
		if n == c.Router && o.Forwarding {
			fwd = "1"
		}
		n.Sysctl(t, "net.ipv4.ip_forward", fwd)
		n.Sysctl(t, "net.ipv6.conf.all.forwarding", fwd)
	}
	Veth(t, c.Client, "eth0", c.Router, "cli0")
	Veth(t, c.Server, "eth0", c.Router, "srv0")
	for _, f := range Families {
		bits := "/" + strconv.Itoa(f.ClientNet.Bits())
		c.Client.Addr(t, "eth0", f.Client.String()+bits)
		c.Router.Addr(t, "cli0", f.RouterClient.String()+bits)
		c.Router.Addr(t, "srv0", f.RouterServer.String()+bits)
		c.Server.Addr(t, "eth0", f.Server.String()+bits)
	}
	route := func(n *NS, dst netip.Prefix, side func(Family) netip.Addr) {
		f := V4
		if dst.Addr().Is6() {
			f = V6
		}
		n.IP(t, f.IPFlag, "route", "add", dst.String(), "via", side(f).String())
	}
	for _, dst := range o.ClientRoutes {
		route(c.Client, dst, func(f Family) netip.Addr { return f.RouterClient })
	}
	for _, dst := range o.ServerRoutes {
		route(c.Server, dst, func(f Family) netip.Addr { return f.RouterServer })
	}
	return c
}
