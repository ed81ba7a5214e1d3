//go:build linux

package e2e

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The kernel data path in transparent gateway mode, on the NAT router of
// gateway_topo_test.go: INPUT and FORWARD policy DROP, MASQUERADE on the
// WAN side, no FTP helper; ftpalg with --firewall ipset, whose
// FTPALG-FORWARD hook admits each mapped connection's first packet (the
// router's FORWARD chain would drop it otherwise: TestKernelForwardDrop).

// kernelGatewayCheck is the per-session proof in gateway mode. ftpalg
// connects to the server from the router's WAN address (--upstream-source
// router, the default), so passive data connections (client → the
// server's address, where ftpalg announced them) are SNATed to it;
// active ones (server → the router's WAN address) go on to the client
// from the address the client's control connection was intercepted on:
// the router's LAN address with REDIRECT (SNAT), the server's own with
// TPROXY (which is the peer's address already: no SNAT, activeSource
// invalid).
func kernelGatewayCheck(g *Gateway, r *GwRouter, client, wan, activeSource netip.Addr, server netip.Addr) caseCheck {
	return func(t *testing.T, p *Proxy, off int64) func([]int64, int) {
		rw := watchRetrans(t, r.Client, g.Server)
		return func(sizes []int64, listings int) {
			log := waitTransfers(t, p, off, len(sizes)+listings)
			requireKernelTransfers(t, log, sizes, listings, rw.bytes(t))
			requireKernelFlows(t, r.Router, kernelAnnounced(t, log), client, wan, server, activeSource)
		}
	}
}

// TestKernelGateway: TestGatewayTransparent with --data-path kernel.
// IPv4, with the test's interception rules (nat/README.md): vsftpd with
// every client in every mode in REDIRECT (gwFullCases), one client per
// mode in TPROXY; proftpd one client per mode in REDIRECT and pure-ftpd
// in TPROXY. IPv6 with ftpalg's own interception (TestGatewayIPv6's
// setup): curl and python in EPSV and EPRT, REDIRECT and TPROXY. Each
// session is checked as in TestKernelReverseMatrix (transfer lines on
// path=kernel with the file sizes, conntrack's NAT tuples), no FTP helper
// is used, and after SIGTERM the router is exactly as before (the nft
// table went with the other objects).
func TestKernelGateway(t *testing.T) {
	requireGatewayPrereqs(t)
	t.Run("v4", func(t *testing.T) {
		for _, tc := range []struct {
			kind  ServerKind
			mode  Interception
			cases []gwCase
			full  bool
		}{
			{Vsftpd, Redirect, gwFullCases, true},
			{Vsftpd, TProxy, gwSmokeCases, false},
			{Proftpd, Redirect, gwSmokeCases, false},
			{PureFTPd, TProxy, gwSmokeCases, false},
		} {
			t.Run(string(tc.kind)+"-"+string(tc.mode), func(t *testing.T) {
				requirePrereqs(t, tc.kind.requirement())
				g := NewGateway(t, 1)
				r := g.Routers[0]
				kernelHost(t, r.Router)
				srv := StartServer(t, g.Topology(r), tc.kind, ServerOptions{Addr4: GwServerIP4})
				remove := r.InstallInterception(t, InterceptOpts{Mode: tc.mode})
				p := r.StartGatewayProxy(t, GwProxyOpts{Mode: tc.mode, Extra: kernelFlags})
				kernelRequireTable(t, r.Router, true)
				activeSource := netip.MustParseAddr(GwLANIP4)
				if tc.mode == TProxy {
					activeSource = netip.Addr{} // the server's own: not SNATed
				}
				runGwCasesCheck(t, r, srv, p, tc.cases, tc.full, kernelGatewayCheck(g, r,
					netip.MustParseAddr(GwClientIP4), netip.MustParseAddr(r.WANIP), activeSource, netip.MustParseAddr(GwServerIP4)))
				r.RequireNoHelperUsed(t)
				t.Run("sigterm-restores-router", func(t *testing.T) {
					p.StopClean(t)
					kernelRequireTable(t, r.Router, false)
				})
				remove()
			})
		}
	})
	t.Run("v6", func(t *testing.T) {
		requirePrereqs(t, reqVsftpd)
		g := NewGateway(t, 1)
		r := g.Routers[0]
		gw6Enable(t, g, r)
		gw6Firewall(t, r)
		kernelHost(t, r.Router)
		srv := StartServer(t, g.Topology(r), Vsftpd, ServerOptions{IPv6Only: true, Addr6: GwServerIP6})
		for _, mode := range []Interception{Redirect, TProxy} {
			t.Run(string(mode), func(t *testing.T) {
				remove := r.InstallRules(t, "operator's ip6tables INPUT accepts", gw6OperatorInput(mode))
				p := r.LaunchGatewayProxy(t, GwProxyOpts{Mode: mode, FtpalgDivert: true, Intercept: gwLANNet6,
					Listen: gw6ProxyListen, Extra: kernelFlags})
				addr := net.JoinHostPort(GwServerIP6, "21")
				if err := waitBanner(r.Client, addr, 15*time.Second, p.Alive); err != nil {
					t.Fatalf("no greeting from %s through ftpalg: %v", addr, err)
				}
				// The server sees the router: IPv6 has no MASQUERADE here,
				// ftpalg connects from its WAN address and SNATs the
				// passive data connections to it.
				activeSource := netip.MustParseAddr(GwLANIP6)
				if mode == TProxy {
					activeSource = netip.Addr{}
				}
				check := kernelGatewayCheck(g, r, netip.MustParseAddr(GwClientIP6), netip.MustParseAddr(GwWANIP6), activeSource,
					netip.MustParseAddr(GwServerIP6))
				hung := 0
				for _, c := range gw6Cases {
					t.Run(c.name, func(t *testing.T) {
						if hung >= maxHardTimeouts {
							t.Fatalf("not run: %d earlier clients hung until killed", hung)
						}
						if errors.Is(gw6TransferCheck(t, r, srv, p, c, check), errHardTimeout) {
							hung++
						}
					})
				}
				r.RequireNoHelperUsed(t)
				t.Run("sigterm-restores-router", func(t *testing.T) {
					p.StopClean(t)
					kernelRequireTable(t, r.Router, false)
				})
				remove()
			})
		}
	})
}

// kernelRequireTable checks that ftpalg's nftables table (table inet
// ftpalg, rules/nftpath) exists in ns, or, after a clean exit, does not.
func kernelRequireTable(t testing.TB, ns *nstest.NS, want bool) {
	t.Helper()
	out, err := ns.Try("nft", "list", "tables")
	if err != nil {
		t.Fatalf("nft list tables: %v\n%s", err, out)
	}
	if has := strings.Contains(out, "table inet ftpalg\n") || strings.HasSuffix(out, "table inet ftpalg"); has != want {
		t.Errorf("table inet ftpalg present: %v, want %v; nft list tables:\n%s", has, want, out)
	}
}
