//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// Addresses of the test topology (documentation ranges only).
//
//	client ns                 front ns                          server ns
//	198.51.100.10/24  ---  198.51.100.1/24 | 192.0.2.1/24  ---  192.0.2.10/24
//	2001:db8:1::10/64 ---  2001:db8:1::1/64 | 2001:db8:2::1/64 --- 2001:db8:2::10/64
//
// The server "sits on a private network behind the front host and announces
// its private address 192.0.2.10"; clients only ever see 198.51.100.1.
const (
	ClientIP4      = "198.51.100.10"
	FrontClientIP4 = "198.51.100.1"
	FrontServerIP4 = "192.0.2.1"
	ServerIP4      = "192.0.2.10"

	ClientIP6      = "2001:db8:1::10"
	FrontClientIP6 = "2001:db8:1::1"
	FrontServerIP6 = "2001:db8:2::1"
	ServerIP6      = "2001:db8:2::10"

	clientNet4 = "198.51.100.0/24"
	serverNet4 = "192.0.2.0/24"
	clientNet6 = "2001:db8:1::/64"
	serverNet6 = "2001:db8:2::/64"
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
	Client, Front, Server *Netns
}

// NewTopology builds the namespaces, veth pairs, addresses and routes. All
// of it disappears in t.Cleanup.
func NewTopology(t testing.TB, opt TopoOptions) *Topology {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	topo := &Topology{
		ID:     id,
		Client: newNetns(t, "fa-"+id+"-c"),
		Front:  newNetns(t, "fa-"+id+"-f"),
		Server: newNetns(t, "fa-"+id+"-s"),
	}
	fwd := "0"
	if opt.Forwarding {
		fwd = "1"
	}
	for _, ns := range []*Netns{topo.Client, topo.Front, topo.Server} {
		// Addresses must be usable at once: no duplicate address detection,
		// no router solicitations / autoconfiguration.
		ns.Sysctl(t, "net.ipv6.conf.all.accept_dad", "0")
		ns.Sysctl(t, "net.ipv6.conf.default.accept_dad", "0")
		ns.Sysctl(t, "net.ipv6.conf.all.accept_ra", "0")
		ns.Sysctl(t, "net.ipv6.conf.default.accept_ra", "0")
		ns.Sysctl(t, "net.ipv6.conf.all.disable_ipv6", "0")
		ns.Sysctl(t, "net.ipv6.conf.default.disable_ipv6", "0")
		if ns == topo.Front {
			ns.Sysctl(t, "net.ipv4.ip_forward", fwd)
			ns.Sysctl(t, "net.ipv6.conf.all.forwarding", fwd)
		} else {
			ns.Sysctl(t, "net.ipv4.ip_forward", "0")
			ns.Sysctl(t, "net.ipv6.conf.all.forwarding", "0")
		}
	}

	// veth pairs are created directly inside the namespaces, so no
	// interface name ever appears in the root namespace.
	topo.Client.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "cli0", "netns", topo.Front.Name)
	topo.Server.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "srv0", "netns", topo.Front.Name)

	addr := func(ns *Netns, dev, a4, a6 string) {
		ns.IP(t, "addr", "add", a4, "dev", dev)
		ns.IP(t, "-6", "addr", "add", a6, "dev", dev, "nodad")
		ns.IP(t, "link", "set", dev, "up")
	}
	addr(topo.Client, "eth0", ClientIP4+"/24", ClientIP6+"/64")
	addr(topo.Front, "cli0", FrontClientIP4+"/24", FrontClientIP6+"/64")
	addr(topo.Front, "srv0", FrontServerIP4+"/24", FrontServerIP6+"/64")
	addr(topo.Server, "eth0", ServerIP4+"/24", ServerIP6+"/64")

	if opt.ServerRouteToClient {
		topo.Server.IP(t, "route", "add", clientNet4, "via", FrontServerIP4)
		topo.Server.IP(t, "-6", "route", "add", clientNet6, "via", FrontServerIP6)
	}
	if opt.ClientRouteToServer {
		topo.Client.IP(t, "route", "add", serverNet4, "via", FrontClientIP4)
		topo.Client.IP(t, "-6", "route", "add", serverNet6, "via", FrontClientIP6)
	}
	return topo
}
