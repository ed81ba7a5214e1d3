//go:build linux

package e2e

import (
	"errors"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// The gateway topology of gateway_topo_test.go with IPv6 added (one router):
//
//	client ns 2001:db8:1::10/64 ── lan0 2001:db8:1::1/64 [router] wan0 2001:db8:2::1/64 ── br0 2001:db8:2::10/64 [server ns]
//
// The router forwards IPv6; its ip6tables firewall is the IPv6 twin of
// setupFirewall (no NAT: the addresses are global), plus ICMPv6 neighbour
// discovery on INPUT.
const (
	GwClientIP6 = "2001:db8:1::10"
	GwLANIP6    = "2001:db8:1::1"
	GwWANIP6    = "2001:db8:2::1"
	GwServerIP6 = "2001:db8:2::10"
	gwLANNet6   = "2001:db8:1::/64"

	// --listen for both families: ftpalg's listeners per rules/intercept
	// (Config.Listen) are [::]:2121 (redirect) or its TPROXY --on-ip.
	gw6ProxyListen = ":" + gwProxyPort
)

var gw6Target = Target{Host: GwServerIP6, Port: 21, IPv6: true, ClientIP: GwClientIP6}

// gw6Enable turns IPv6 on in the gateway's namespaces (gwSysctls turned it
// off), with neither DAD, router advertisements nor link-local addresses,
// adds the addresses (nodad) and routes, and IPv6 forwarding on the router.
func gw6Enable(t *testing.T, g *Gateway, r *GwRouter) {
	t.Helper()
	// No link-local addresses: the kernel adds them (and their local
	// routes) asynchronously, after the state comparisons' "before".
	// Neighbour discovery works with the global addresses alone.
	for ns, devs := range map[*nstest.NS][]string{
		g.Server: {"br0", "wan-" + r.Name},
		r.Router: {gwLANDev, gwWANDev},
		r.Client: {"eth0"},
	} {
		for _, dev := range devs {
			ns.IP(t, "link", "set", "dev", dev, "addrgenmode", "none")
		}
	}
	for _, ns := range []*nstest.NS{g.Server, r.Router, r.Client} {
		ns.StaticIPv6(t)
	}
	r.Router.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	r.Client.Addr(t, "eth0", GwClientIP6+"/64")
	r.Client.IP(t, "-6", "route", "add", "default", "via", GwLANIP6)
	r.Router.Addr(t, gwLANDev, GwLANIP6+"/64")
	r.Router.Addr(t, gwWANDev, GwWANIP6+"/64")
	g.Server.Addr(t, "br0", GwServerIP6+"/64")
	g.Server.IP(t, "-6", "route", "add", "default", "via", GwWANIP6)
}

// ip6tRule is iptRule for ip6tables.
func ip6tRule(table, chain string, spec ...string) gwRule {
	r := iptRule(table, chain, false, spec...)
	r.add[0], r.del[0] = "ip6tables", "ip6tables"
	return r
}

// gw6Firewall installs the router's own IPv6 rules:
//
//	ip6tables -P FORWARD DROP
//	ip6tables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
//	ip6tables -A FORWARD -i lan0 -o wan0 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT
//	ip6tables -P INPUT DROP
//	ip6tables -A INPUT -i lo -j ACCEPT
//	ip6tables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
//	ip6tables -A INPUT -p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT
//	ip6tables -A INPUT -p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT
func gw6Firewall(t *testing.T, r *GwRouter) {
	t.Helper()
	ipt := func(args ...string) { r.Router.Run(t, append([]string{"ip6tables", "-w"}, args...)...) }
	ipt("-P", "FORWARD", "DROP")
	ipt("-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	ipt("-A", "FORWARD", "-i", gwLANDev, "-o", gwWANDev, "-p", "tcp", "--dport", "21",
		"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
	ipt("-P", "INPUT", "DROP")
	ipt("-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
	ipt("-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	for _, typ := range []string{"neighbour-solicitation", "neighbour-advertisement"} {
		ipt("-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", typ, "-j", "ACCEPT")
	}
	requireNoFTPHelper(t, r.Router)
}

// gw6OperatorInput: the ip6tables lines of "Your INPUT chain" in
// rules/intercept/README.md: the listen port for REDIRECT, the mark for
// TPROXY and the divert (ftpalg's default, so both with REDIRECT).
func gw6OperatorInput(mode Interception) []gwRule {
	mark := ip6tRule("filter", "INPUT", "-p", "tcp", "-m", "mark", "--mark", "0x"+gwMark+"/0x"+gwMark, "-j", "ACCEPT")
	if mode == Redirect {
		return []gwRule{ip6tRule("filter", "INPUT", "-p", "tcp", "--dport", gwProxyPort, "-j", "ACCEPT"), mark}
	}
	return []gwRule{mark}
}

var gw6Cases = []gwCase{
	{name: "curl-epsv", client: curlClient{}, mode: EPSV},
	{name: "curl-eprt", client: curlClient{}, mode: EPRT}, // --ftp-port 2001:db8:1::10
	{name: "python-epsv", client: pythonClient{}, mode: EPSV},
	{name: "python-eprt", client: pythonClient{}, mode: EPRT},
}

// TestGatewayIPv6: TestGatewayOwnInterception over IPv6. On the router
// (IPv6 forwarding, ip6tables FORWARD and INPUT default DROP, no NAT, no
// FTP conntrack helper) with the ip6tables INPUT accepts of
// rules/intercept/README.md, for --interception redirect and tproxy,
//
//	ftpalg run --mode transparent --interception MODE --intercept 2001:db8:1::/64
//	    --listen :2121 --data-ports 50000-50999 --firewall ipset
//
// installs its IPv6 interception (and nothing of it in IPv4); curl and
// python ftplib download over IPv6 in EPSV and EPRT from vsftpd
// (listen_ipv6=YES) with matching SHA-256; after SIGTERM every rule, set,
// ip rule and route is exactly as before it started.
func TestGatewayIPv6(t *testing.T) {
	requireGatewayPrereqs(t)
	requirePrereqs(t, reqVsftpd)
	g := NewGateway(t, 1)
	r := g.Routers[0]
	gw6Enable(t, g, r)
	gw6Firewall(t, r)
	srv := StartServer(t, g.Topology(r), Vsftpd, ServerOptions{IPv6Only: true, Addr6: GwServerIP6})
	for _, mode := range []Interception{Redirect, TProxy} {
		t.Run(string(mode), func(t *testing.T) {
			remove := r.InstallRules(t, "operator's ip6tables INPUT accepts", gw6OperatorInput(mode))
			if st := r.State(t).Rules; strings.Contains(st, "REDIRECT") || strings.Contains(st, "TPROXY") || strings.Contains(st, "--transparent") || strings.Contains(st, "lookup "+gwTable) {
				t.Fatalf("router %s has interception rules before ftpalg starts:\n%s", r.Name, st)
			}
			p := r.LaunchGatewayProxy(t, GwProxyOpts{Mode: mode, FtpalgDivert: true, Intercept: gwLANNet6, Listen: gw6ProxyListen})
			addr := net.JoinHostPort(GwServerIP6, "21")
			if err := waitBanner(r.Client, addr, 15*time.Second, p.Alive); err != nil {
				t.Fatalf("no greeting from %s through ftpalg: %v", addr, err)
			}
			if !strings.Contains(p.Log(), `"session started"`) {
				t.Fatalf("the client got a greeting from %s but ftpalg logged no session: interception does not work\n%s", addr, nstest.Tail(p.Log(), 30))
			}
			t.Run("rules-while-running", func(t *testing.T) { gw6RequireOwnInterception(t, r, mode) })
			hung := 0
			for _, c := range gw6Cases {
				t.Run(c.name, func(t *testing.T) {
					if hung >= maxHardTimeouts {
						t.Fatalf("not run: %d earlier clients hung until killed", hung)
					}
					if errors.Is(gw6Transfer(t, r, srv, p, c), errHardTimeout) {
						hung++
					}
				})
			}
			r.RequireNoHelperUsed(t)
			t.Run("sigterm-restores-router", func(t *testing.T) {
				p.StopClean(t)
				if !strings.Contains(p.Log(), `"interception removed"`) {
					t.Errorf(`ftpalg did not log "interception removed" at exit`)
				}
				gwRequireNoFtpalgObjects(t, r)
			})
			remove()
		})
	}
}

// gw6RequireOwnInterception checks ftpalg's IPv6 interception objects while
// it runs (rules/intercept/README.md), and that it touched no IPv4 one.
func gw6RequireOwnInterception(t *testing.T, r *GwRouter, mode Interception) {
	nat := r.Router.Run(t, "ip6tables", "-w", "-t", "nat", "-S")
	mangle := r.Router.Run(t, "ip6tables", "-w", "-t", "mangle", "-S")
	rule := r.Router.Run(t, "ip", "-6", "rule", "show")
	route := r.Router.Run(t, "ip", "-6", "route", "show", "table", gwTable)
	t.Logf("ip6tables -t nat -S:\n%s\nip6tables -t mangle -S:\n%s\nip -6 rule:\n%s\nip -6 route show table %s:\n%s", nat, mangle, rule, gwTable, route)

	divertHook := "-A PREROUTING -p tcp -j FTPALG-DIVERT"
	requireLines(t, "ip6tables -t mangle -S", mangle, []string{
		"-N FTPALG-DIVERT",
		divertHook,
		"-A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1",
	})
	var chain, table, absent string
	switch mode {
	case Redirect:
		chain, table, absent = "FTPALG-REDIRECT", nat, "FTPALG-TPROXY"
		requireLines(t, "ip6tables -t nat -S", nat, []string{"-N " + chain,
			"-A FTPALG-REDIRECT -s " + gwLANNet6 + " -p tcp -j REDIRECT --to-ports " + gwProxyPort})
		if pre := gwChainRules(nat, "PREROUTING"); len(pre) == 0 || pre[0] != "-A PREROUTING -p tcp -m tcp --dport 21 -j "+chain {
			t.Errorf("ip6tables nat PREROUTING: the REDIRECT hook is not first: %q", pre)
		}
	case TProxy:
		chain, table, absent = "FTPALG-TPROXY", mangle, "FTPALG-REDIRECT"
		requireLines(t, "ip6tables -t mangle -S", mangle, []string{"-N " + chain})
		if pre := gwChainRules(mangle, "PREROUTING"); len(pre) < 2 || pre[0] != divertHook || pre[1] != "-A PREROUTING -p tcp -m tcp --dport 21 -j "+chain {
			t.Errorf("ip6tables mangle PREROUTING: want the divert hook, then the TPROXY hook, first: %q", pre)
		}
	}
	// The chain's rule: the IPv6 source, the listen port.
	want := regexp.MustCompile(`^-A ` + chain + ` -s ` + regexp.QuoteMeta(gwLANNet6) + ` -p tcp -j (REDIRECT|TPROXY) --(to-ports|on-port) ` + gwProxyPort + `\b`)
	if rs := gwChainRules(table, chain); len(rs) != 1 || !want.MatchString(rs[0]) {
		t.Errorf("%s: rules %q, want one matching %s", chain, rs, want)
	}
	if strings.Contains(nat+mangle, absent) {
		t.Errorf("--interception %s, yet %s exists", mode, absent)
	}
	if !regexp.MustCompile(`(?m)^\d+:\s+from all fwmark 0x1/0x1 lookup ` + gwTable + ` proto 70\s*$`).MatchString(rule) {
		t.Errorf("ip -6 rule: no `from all fwmark 0x1/0x1 lookup %s proto 70`", gwTable)
	}
	if !regexp.MustCompile(`^local default dev lo proto 70 metric 1024 pref medium$`).MatchString(strings.TrimSpace(route)) {
		t.Errorf("ip -6 route show table %s: %q, want only `local default dev lo proto 70 metric 1024 pref medium`", gwTable, strings.TrimSpace(route))
	}
	// Sources are IPv6 only: nothing of ftpalg's interception in IPv4.
	v4 := r.Router.Run(t, "iptables", "-w", "-t", "nat", "-S") + r.Router.Run(t, "iptables", "-w", "-t", "mangle", "-S")
	if strings.Contains(v4, "FTPALG") {
		t.Errorf("IPv6-only --intercept, yet iptables nat/mangle has ftpalg's chains:\n%s", v4)
	}
	if rule4 := r.Router.Run(t, "ip", "-4", "rule", "show"); strings.Contains(rule4, "proto 70") {
		t.Errorf("IPv6-only --intercept, yet ip -4 rule has ftpalg's rule:\n%s", rule4)
	}
}

// gw6Transfer: one client session over IPv6 from the client to the
// server's address: list, download small.bin and big.bin; checks the data
// command used, every SHA-256, and that ftpalg relayed the transfers.
func gw6Transfer(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, c gwCase) error {
	t.Helper()
	return gw6TransferCheck(t, r, srv, p, c, nil)
}

// gw6TransferCheck is gw6Transfer with check (if not nil) run on ftpalg's
// log of the session, as runTransferCaseCheck does.
func gw6TransferCheck(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, c gwCase, check caseCheck) error {
	t.Helper()
	requirePrereqs(t, clientRequirement(c.client))
	if ok, why := c.client.Supports(c.mode, true); !ok {
		t.Fatalf("%s cannot do %s over IPv6: %s", c.client.Name(), c.mode, why)
	}
	work := t.TempDir()
	downloads := []string{"small.bin", "big.bin"}
	ops := []Op{{Kind: OpList}}
	for _, name := range downloads {
		ops = append(ops, Op{Kind: OpGet, Remote: name, Local: filepath.Join(work, "dl-"+name)})
	}
	logOff := p.LogSize()
	var after func([]int64, int)
	if check != nil {
		after = check(t, p.Proxy, logOff)
	}
	start := time.Now()
	res := r.runClient(c.client, Session{
		Target: gw6Target, User: srv.User, Pass: srv.Pass, Mode: c.mode, Ops: ops,
		WorkDir: work, Timeout: caseTimeout, ExtraArgs: c.extra,
	})
	elapsed := time.Since(start)
	if after != nil && res.Err == nil {
		// Before the counts below: a kernel transfer is reported once
		// conntrack saw its end, which may be after the client exited.
		var sizes []int64
		for _, name := range downloads {
			sizes = append(sizes, srv.Files[name].Size)
		}
		after(sizes, 1)
	}
	plog := p.LogOfSessions(t, logOff, 1, 10*time.Second)
	if res.Err != nil {
		t.Errorf("%s (%s) over IPv6 through router %s failed after %v: %v", c.client.Name(), c.mode.Command(), r.Name, elapsed.Round(time.Millisecond), res.Err)
	}
	if err := checkModeUsed(res.Log, c.mode); err != nil {
		t.Error(err)
	}
	for _, f := range standardFiles {
		if !strings.Contains(res.Listing, f.name) {
			t.Errorf("listing lacks %s", f.name)
		}
	}
	for _, name := range downloads {
		if err := checkFile(filepath.Join(work, "dl-"+name), srv.Files[name]); err != nil {
			t.Errorf("download %s: %v", name, err)
		}
	}
	rewritten := `"` + proxy.MsgPassiveRewrite + `"`
	if c.mode == EPRT {
		rewritten = `"` + proxy.MsgActiveRewrite + `"`
	}
	if n, want := strings.Count(plog, `"`+proxy.MsgTransferFinished+`"`), 1+len(downloads); n < want {
		t.Errorf("ftpalg logged %d finished transfers for this session, want %d", n, want)
	}
	if !strings.Contains(plog, rewritten) {
		t.Errorf("ftpalg did not log %s", rewritten)
	}
	if !strings.Contains(plog, GwServerIP6) && !strings.Contains(plog, GwClientIP6) {
		t.Errorf("ftpalg's log of this session names neither %s nor %s", GwServerIP6, GwClientIP6)
	}
	if err := srv.Alive(); err != nil {
		t.Error(err)
	}
	if err := p.Alive(); err != nil {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("--- %s transcript ---\n%s", c.client.Name(), nstest.Tail(res.Log, 150))
		t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(plog, 150))
		t.Logf("--- server logs ---\n%s", srv.Logs())
	} else {
		t.Logf("ok in %v, data commands %v", elapsed.Round(time.Millisecond), dataCommands(res.Log))
	}
	return res.Err
}
