//go:build linux

package e2e

import (
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// Addresses of the test topology, nstest.Chain's (documentation ranges
// only):
//
//	client ns                 front ns                          server ns
//	198.51.100.10/24  ---  198.51.100.1/24 | 192.0.2.1/24  ---  192.0.2.10/24
//	2001:db8:1::10/64 ---  2001:db8:1::1/64 | 2001:db8:2::1/64 --- 2001:db8:2::10/64
//
// The server "sits on a private network behind the front host and announces
// its private address 192.0.2.10"; clients only ever see 198.51.100.1.
var (
	ClientIP4      = nstest.V4.Client.String()
	FrontClientIP4 = nstest.V4.RouterClient.String()
	FrontServerIP4 = nstest.V4.RouterServer.String()
	ServerIP4      = nstest.V4.Server.String()

	ClientIP6      = nstest.V6.Client.String()
	FrontClientIP6 = nstest.V6.RouterClient.String()
	FrontServerIP6 = nstest.V6.RouterServer.String()
	ServerIP6      = nstest.V6.Server.String()
)

// TopoOptions select the deviations from the default topology, in which
// the front host does not forward and client and server have only their
// connected routes.
type TopoOptions struct {
	// Forwarding enables IPv4/IPv6 forwarding on the front host.
	Forwarding bool
	// ServerRouteToClient gives the server a route to the client network
	// via the front host (needed for the naive DNAT setup).
	ServerRouteToClient bool
	// ClientRouteToServer gives the client a route to the server network
	// via the front host (plain routing, used by the direct baseline).
	ClientRouteToServer bool
}

// Topology is the three-namespace test network.
type Topology struct {
	ID                    string
	Client, Front, Server *nstest.NS
}

// NewTopology builds the namespaces, veth pairs, addresses and routes. All
// of it disappears in t.Cleanup.
func NewTopology(t testing.TB, opt TopoOptions) *Topology {
	t.Helper()
	id := nstest.RandomName("fa")
	o := nstest.ChainOptions{Forwarding: opt.Forwarding, Prefix: id}
	if opt.ServerRouteToClient {
		o.ServerRoutes = []netip.Prefix{nstest.V4.ClientNet, nstest.V6.ClientNet}
	}
	if opt.ClientRouteToServer {
		o.ClientRoutes = []netip.Prefix{nstest.V4.ServerNet, nstest.V6.ServerNet}
	}
	c := nstest.NewChain(t, o)
	return &Topology{ID: id, Client: c.Client, Front: c.Router, Server: c.Server}
}
