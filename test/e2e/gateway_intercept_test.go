//go:build linux

package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// ftpalg's own interception (ftpalg run --intercept, rules/intercept) on
// the gateway router of gateway_topo_test.go.

// gwOperatorInput are the INPUT accepts rules/intercept/README.md ("Your
// INPUT chain") tells the operator of a default-DROP router to add when
// ftpalg installs the interception: the listen port for REDIRECT, the mark
// for TPROXY and for the divert (ftpalg's default, so both with REDIRECT).
//
//	iptables -A INPUT -p tcp --dport 2121 -j ACCEPT                  # redirect
//	iptables -A INPUT -p tcp -m mark --mark 0x1/0x1 -j ACCEPT        # tproxy, divert
func gwOperatorInput(mode Interception) []gwRule {
	mark := iptRule("filter", "INPUT", false, "-p", "tcp", "-m", "mark", "--mark", "0x"+gwMark+"/0x"+gwMark, "-j", "ACCEPT")
	if mode == Redirect {
		return []gwRule{iptRule("filter", "INPUT", false, "-p", "tcp", "--dport", gwProxyPort, "-j", "ACCEPT"), mark}
	}
	return []gwRule{mark}
}

// gwOwnCases: curl and python ftplib in every IPv4 mode.
var gwOwnCases = []gwCase{
	{name: "curl-pasv", client: curlClient{}, mode: PASV, check: curlUsed227Addr}, // harness: --no-ftp-skip-pasv-ip
	{name: "curl-epsv", client: curlClient{}, mode: EPSV},
	{name: "curl-port", client: curlClient{}, mode: PORT},
	{name: "curl-eprt", client: curlClient{}, mode: EPRT},
	{name: "python-pasv", client: pythonClient{}, mode: PASV, extra: []string{"--ignore-pasv-address"}}, // stock ftplib
	{name: "python-epsv", client: pythonClient{}, mode: EPSV},
	{name: "python-port", client: pythonClient{}, mode: PORT},
	{name: "python-eprt", client: pythonClient{}, mode: EPRT},
}

// TestGatewayOwnInterception: ftpalg installs the interception itself. On
// the router of gateway_topo_test.go, with only its own firewall and the
// INPUT accepts of rules/intercept/README.md (no REDIRECT, TPROXY, divert or
// policy routing of the test's), for --interception redirect and tproxy,
//
//	ftpalg run --mode transparent --interception MODE --intercept 198.51.100.0/24
//	    --listen 0.0.0.0:2121 --data-ports 50000-50999 --firewall ipset
//
// (with its default --divert): while it runs, iptables -t nat/-t mangle -S,
// ip rule and ip route show table 100 hold exactly its FTPALG-REDIRECT or
// FTPALG-TPROXY chain and hook, FTPALG-DIVERT above it, and the proto 70
// policy rule and local route, and nothing in IPv6 (the source is IPv4
// only); curl and python ftplib transfer in PASV, EPSV, PORT and EPRT with
// matching SHA-256 through it; after SIGTERM every rule, set, ip rule and
// route is exactly as before it started. Without --intercept it says it
// expects the operator's interception rules and installs only the divert.
func TestGatewayOwnInterception(t *testing.T) {
	requireGatewayPrereqs(t)
	requirePrereqs(t, reqVsftpd)
	g := NewGateway(t, 1)
	r := g.Routers[0]
	srv := StartServer(t, g.Topology(r), Vsftpd, ServerOptions{Addr4: GwServerIP4})
	for _, mode := range []Interception{Redirect, TProxy} {
		t.Run(string(mode), func(t *testing.T) {
			remove := r.InstallRules(t, "operator's INPUT accepts", gwOperatorInput(mode))
			if st := r.State(t).Rules; strings.Contains(st, "REDIRECT") || strings.Contains(st, "TPROXY") || strings.Contains(st, "--transparent") || strings.Contains(st, "lookup "+gwTable) {
				t.Fatalf("router %s has interception rules before ftpalg starts:\n%s", r.Name, st)
			}
			p := r.StartGatewayProxy(t, GwProxyOpts{Mode: mode, FtpalgDivert: true, Intercept: gwLANNet4})
			t.Run("rules-while-running", func(t *testing.T) { gwRequireOwnInterception(t, r, mode) })
			runGwCases(t, r, srv, p, gwOwnCases, false)
			if mode == Redirect {
				t.Run("direct-connection-refused", func(t *testing.T) { gwDirectRefused(t, r, p) })
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
	t.Run("no-intercept", func(t *testing.T) { gwNoIntercept(t, r) })
}

// gwRequireOwnInterception checks ftpalg's interception objects in the
// router while it runs, against rules/intercept/README.md.
func gwRequireOwnInterception(t *testing.T, r *GwRouter, mode Interception) {
	nat := r.Router.Run(t, "iptables", "-w", "-t", "nat", "-S")
	mangle := r.Router.Run(t, "iptables", "-w", "-t", "mangle", "-S")
	rule := r.Router.Run(t, "ip", "rule", "show")
	route := r.Router.Run(t, "ip", "route", "show", "table", gwTable)
	t.Logf("iptables -t nat -S:\n%s\niptables -t mangle -S:\n%s\nip rule:\n%s\nip route show table %s:\n%s", nat, mangle, rule, gwTable, route)

	divertHook := "-A PREROUTING -p tcp -j FTPALG-DIVERT"
	wantMangle := []string{
		"-N FTPALG-DIVERT",
		divertHook,
		"-A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1",
	}
	var wantNat []string
	var hook, absent string
	switch mode {
	case Redirect:
		hook, absent = "-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT", "FTPALG-TPROXY"
		wantNat = []string{"-N FTPALG-REDIRECT", hook,
			"-A FTPALG-REDIRECT -s " + gwLANNet4 + " -p tcp -j REDIRECT --to-ports " + gwProxyPort}
	case TProxy:
		// --listen 0.0.0.0:2121: TPROXY --on-ip 0.0.0.0, the incoming
		// interface's address, which the wildcard listener covers.
		hook, absent = "-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY", "FTPALG-REDIRECT"
		wantMangle = append(wantMangle, "-N FTPALG-TPROXY", hook,
			"-A FTPALG-TPROXY -s "+gwLANNet4+" -p tcp -j TPROXY --on-port "+gwProxyPort+" --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1")
	}
	requireLines(t, "iptables -t nat -S", nat, wantNat)
	requireLines(t, "iptables -t mangle -S", mangle, wantMangle)
	if strings.Contains(nat+mangle, absent) {
		t.Errorf("--interception %s, yet %s exists", mode, absent)
	}
	// Hooks: at the top of PREROUTING, the divert above TPROXY.
	if pre := gwChainRules(mangle, "PREROUTING"); len(pre) == 0 || pre[0] != divertHook {
		t.Errorf("mangle PREROUTING: the divert hook is not first: %q", pre)
	} else if mode == TProxy && (len(pre) < 2 || pre[1] != hook) {
		t.Errorf("mangle PREROUTING: the TPROXY hook does not follow the divert hook: %q", pre)
	}
	if pre := gwChainRules(nat, "PREROUTING"); mode == Redirect && (len(pre) == 0 || pre[0] != hook) {
		t.Errorf("nat PREROUTING: the REDIRECT hook is not first: %q", pre)
	}
	if !regexp.MustCompile(`(?m)^\d+:\s+from all fwmark 0x1/0x1 lookup ` + gwTable + ` proto 70\s*$`).MatchString(rule) {
		t.Errorf("ip rule: no `from all fwmark 0x1/0x1 lookup %s proto 70`", gwTable)
	}
	if strings.TrimSpace(route) != "local default dev lo proto 70 scope host" {
		t.Errorf("ip route show table %s: %q, want only `local default dev lo proto 70 scope host`", gwTable, strings.TrimSpace(route))
	}
	// Sources are IPv4 only: nothing of ftpalg's in IPv6.
	v6 := r.Router.Run(t, "ip6tables", "-w", "-t", "nat", "-S") + r.Router.Run(t, "ip6tables", "-w", "-t", "mangle", "-S")
	if strings.Contains(v6, "FTPALG") {
		t.Errorf("IPv4-only --intercept, yet ip6tables has ftpalg's chains:\n%s", v6)
	}
	if rule6 := r.Router.Run(t, "ip", "-6", "rule", "show"); strings.Contains(rule6, "proto 70") {
		t.Errorf("IPv4-only --intercept, yet ip -6 rule has ftpalg's rule:\n%s", rule6)
	}
}

// requireLines fails unless every line of want is a line of out.
func requireLines(t *testing.T, what, out string, want []string) {
	t.Helper()
	have := strings.Split(out, "\n")
	for _, w := range want {
		if !slices.Contains(have, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

// gwChainRules returns the -A lines of chain in `iptables -S` output, in
// order.
func gwChainRules(s, chain string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

// gwRequireNoFtpalgObjects: after ftpalg exited, no chain, set, ip rule or
// route of its own is left (compareState already compared everything; this
// names what would be left).
func gwRequireNoFtpalgObjects(t *testing.T, r *GwRouter) {
	t.Helper()
	st := r.State(t).Rules
	for _, s := range []string{"FTPALG", "ftpalg-", "proto 70", "table " + gwTable} {
		if strings.Contains(st, s) {
			t.Errorf("router %s: %q still present after ftpalg exited:\n%s", r.Name, s, st)
		}
	}
}

// gwNoIntercept: transparent mode without --intercept. ftpalg logs that
// it expects the operator's own interception rules and installs none; with
// its default --divert it installs only the divert (both families, as no
// source names one) and removes it at exit.
func gwNoIntercept(t *testing.T, r *GwRouter) {
	p := r.LaunchGatewayProxy(t, GwProxyOpts{Mode: Redirect, FtpalgDivert: true})
	const want = "no --intercept: expecting your own interception rules (see rules/intercept/README.md)"
	if !strings.Contains(p.Log(), want) {
		t.Errorf("ftpalg did not log %q:\n%s", want, nstest.Tail(p.Log(), 20))
	} else {
		t.Logf("ftpalg: %s", gwLogLine(p.Log(), "expecting your own interception rules"))
	}
	nat := r.Router.Run(t, "iptables", "-w", "-t", "nat", "-S")
	mangle := r.Router.Run(t, "iptables", "-w", "-t", "mangle", "-S")
	if strings.Contains(nat+mangle, "FTPALG-REDIRECT") || strings.Contains(nat+mangle, "FTPALG-TPROXY") {
		t.Errorf("without --intercept ftpalg installed interception rules:\n%s%s", nat, mangle)
	}
	requireLines(t, "iptables -t mangle -S", mangle, []string{
		"-A PREROUTING -p tcp -j FTPALG-DIVERT",
		"-A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1",
	})
	if rule := r.Router.Run(t, "ip", "rule", "show"); !strings.Contains(rule, "fwmark 0x1/0x1 lookup "+gwTable+" proto 70") {
		t.Errorf("no divert policy rule:\n%s", rule)
	}
	t.Logf("ftpalg: %s", gwLogLine(p.Log(), gwReadyLine))
	p.StopClean(t)
	gwRequireNoFtpalgObjects(t, r)
}

// gwLogLine returns the first log line containing s, with the time field
// dropped.
func gwLogLine(log, s string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			return regexp.MustCompile(`"ts":"[^"]*",`).ReplaceAllString(l, "")
		}
	}
	return fmt.Sprintf("(no line with %q)", s)
}
