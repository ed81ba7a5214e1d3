package nat

import (
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// family is one address family of the gateway topology (nstest.Chain:
// client ─ router ─ server) with what the interception tests add: a
// destination that exists nowhere (203.0.113.5, 2001:db8:3::5), which the
// client routes to the router, where it is intercepted; and the router's
// loopback address.
type family struct {
	nstest.Family
	intercepted, loopback netip.Addr
}

var families = []family{
	{nstest.V4, netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("127.0.0.1")},
	{nstest.V6, netip.MustParseAddr("2001:db8:3::5"), netip.IPv6Loopback()},
}

// newGateway is the chain with forwarding on in the router and default
// routes via the router on the client and the server, both families.
func newGateway(t *testing.T) *nstest.Chain {
	t.Helper()
	defaults := []netip.Prefix{nstest.V4.Default, nstest.V6.Default}
	return nstest.NewChain(t, nstest.ChainOptions{Forwarding: true, ClientRoutes: defaults, ServerRoutes: defaults,
		Prefix: nstest.RandomName("ftpalg-nat")})
}
