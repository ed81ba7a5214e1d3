//go:build linux

package e2e

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The gateway topology (issue #4): FTP clients on a private LAN behind a
// Linux router that masquerades them onto the public side, where the FTP
// server is. Every router has its own LAN and client namespace; all LANs
// use the same addresses (two households behind two NAT routers), and all
// routers' WAN ends meet the server on one bridge in the server namespace.
//
//	client ns a    198.51.100.10/24 ── lan0 198.51.100.1/24 [router a] wan0 203.0.113.1/24 ──┐
//	                                                                                          br0 203.0.113.10/24 [server ns]
//	client ns b    198.51.100.10/24 ── lan0 198.51.100.1/24 [router b] wan0 203.0.113.2/24 ──┘
//
// The server's default route points at router a (its gateway); the client's
// default route at its router. The router's own firewall (installed by
// NewGateway, see setupFirewall) is a typical default-DROP NAT
// router without any FTP conntrack helper; the interception rules ftpalg
// needs are added and removed separately (InstallInterception), or
// installed by ftpalg itself (GwProxyOpts.Intercept, --intercept).
const (
	GwClientIP4 = "198.51.100.10"
	GwLANIP4    = "198.51.100.1"
	GwServerIP4 = "203.0.113.10"
	gwLANNet4   = "198.51.100.0/24"

	gwLANDev = "lan0"
	gwWANDev = "wan0"

	// ftpalg's control listener and data ports on the router.
	gwProxyListen = "0.0.0.0:2121"
	gwProxyPort   = "2121"
	gwDataPorts   = "50000-50999"

	// The divert mark and routing table of nat/README.md.
	gwMark  = "1"
	gwTable = "100"
)

// gwWANIP4 is router i's WAN address: 203.0.113.1, 203.0.113.2, ...
func gwWANIP4(i int) string { return fmt.Sprintf("203.0.113.%d", i+1) }

// Interception is how the router hands FTP control connections to ftpalg.
type Interception string

const (
	Redirect Interception = "redirect"
	TProxy   Interception = "tproxy"
)

// GwRouter is one router with its client.
type GwRouter struct {
	Name   string // "a", "b"
	WANIP  string
	Router *nstest.NS
	Client *nstest.NS
}

// Gateway is the server and its routers.
type Gateway struct {
	ID      string
	Server  *nstest.NS
	Routers []*GwRouter
}

// NewGateway builds the server namespace and n routers with one client
// each, and the routers' own firewalls. Everything lives in namespaces and
// disappears in t.Cleanup.
func NewGateway(t testing.TB, n int) *Gateway {
	t.Helper()
	id := nstest.RandomName("fa")
	g := &Gateway{ID: id, Server: nstest.NewNamed(t, id+"-gs")}
	gwSysctls(t, g.Server, false)
	g.Server.IP(t, "link", "add", "br0", "type", "bridge")
	for i := range n {
		name := string(rune('a' + i))
		r := &GwRouter{
			Name:   name,
			WANIP:  gwWANIP4(i),
			Router: nstest.NewNamed(t, id+"-gr"+name),
			Client: nstest.NewNamed(t, id+"-gc"+name),
		}
		gwSysctls(t, r.Router, true)
		gwSysctls(t, r.Client, false)
		nstest.Veth(t, r.Client, "eth0", r.Router, gwLANDev)
		port := "wan-" + name
		nstest.Veth(t, r.Router, gwWANDev, g.Server, port)
		g.Server.IP(t, "link", "set", port, "master", "br0")

		r.Client.Addr(t, "eth0", GwClientIP4+"/24")
		r.Client.IP(t, "route", "add", "default", "via", GwLANIP4)
		r.Router.Addr(t, gwLANDev, GwLANIP4+"/24")
		r.Router.Addr(t, gwWANDev, r.WANIP+"/24")
		r.setupFirewall(t)
		g.Routers = append(g.Routers, r)
	}
	g.Server.Addr(t, "br0", GwServerIP4+"/24")
	g.Server.IP(t, "link", "set", "br0", "up")
	// The server's gateway is router a: with --upstream-source client the
	// server must send its replies to the client's (LAN) address there.
	g.Server.IP(t, "route", "add", "default", "via", gwWANIP4(0))
	return g
}

// gwSysctls: IPv4 only (no IPv6 addresses, so no neighbour discovery or
// router solicitations), forwarding only on routers. Routers use strict
// reverse-path filtering (rp_filter=1), the most demanding setting a
// distribution ships (systemd's default is 2, loose): the interception
// and divert must work with it.
func gwSysctls(t testing.TB, ns *nstest.NS, router bool) {
	t.Helper()
	ns.Sysctl(t, "net.ipv6.conf.all.disable_ipv6", "1")
	ns.Sysctl(t, "net.ipv6.conf.default.disable_ipv6", "1")
	fwd, rp := "0", "0"
	if router {
		fwd, rp = "1", "1"
	}
	ns.Sysctl(t, "net.ipv4.conf.all.rp_filter", rp)
	ns.Sysctl(t, "net.ipv4.conf.default.rp_filter", rp)
	ns.Sysctl(t, "net.ipv4.ip_forward", fwd)
}

// Topology is the view StartServer takes (it only uses Server).
func (g *Gateway) Topology(r *GwRouter) *Topology {
	return &Topology{ID: g.ID, Client: r.Client, Front: r.Router, Server: g.Server}
}

// iptables runs iptables -w in the router.
func (r *GwRouter) iptables(t testing.TB, args ...string) {
	t.Helper()
	r.Router.Run(t, append([]string{"iptables", "-w"}, args...)...)
}

// setupFirewall installs the router's own rules: a NAT router that lets
// its LAN open FTP control connections (tcp/21) to the outside and nothing
// else, with no FTP conntrack helper anywhere (the kernel has
// nf_conntrack_ftp built in; nothing assigns it):
//
//	iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
//	iptables -P FORWARD DROP
//	iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
//	iptables -A FORWARD -i lan0 -o wan0 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT
//	iptables -P INPUT DROP
//	iptables -A INPUT -i lo -j ACCEPT
//	iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
func (r *GwRouter) setupFirewall(t testing.TB) {
	t.Helper()
	r.iptables(t, "-t", "nat", "-A", "POSTROUTING", "-o", gwWANDev, "-j", "MASQUERADE")
	r.iptables(t, "-P", "FORWARD", "DROP")
	r.iptables(t, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	r.iptables(t, "-A", "FORWARD", "-i", gwLANDev, "-o", gwWANDev, "-p", "tcp", "--dport", "21",
		"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
	r.iptables(t, "-P", "INPUT", "DROP")
	r.iptables(t, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
	r.iptables(t, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	requireNoFTPHelper(t, r.Router)
}

// InterceptOpts select the interception rules.
type InterceptOpts struct {
	Mode Interception
	// ExemptTransparentFromMasq inserts, before the MASQUERADE rule, a rule
	// that leaves the proxy's own transparent dials (locally generated
	// packets with a LAN source address, --upstream-source client) alone,
	// so the server sees the client's address.
	ExemptTransparentFromMasq bool
	// NoDivert leaves out the divert rule (-m socket --transparent) and,
	// with REDIRECT, the policy route, to show they are needed. (TPROXY
	// cannot work without the policy route: it delivers marked packets.)
	NoDivert bool
}

// gwRule is one command that installs a rule and the one that removes it.
type gwRule struct{ add, del []string }

func iptRule(table, chain string, pos bool, spec ...string) gwRule {
	op := "-A"
	if pos {
		op = "-I"
	}
	base := []string{"iptables", "-w", "-t", table}
	add := append(append(slices.Clone(base), op, chain), spec...)
	del := append(append(slices.Clone(base), "-D", chain), spec...)
	return gwRule{add, del}
}

// interceptionRules are the rules and routes of nat/README.md for mode,
// always with the divert rule and policy route (ftpalg's data listeners
// on the server's address, and --upstream-source client, need them):
//
//	# divert: packets of ftpalg's transparent sockets are delivered locally
//	iptables -t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1
//	ip rule add fwmark 1 lookup 100
//	ip route add local 0.0.0.0/0 dev lo table 100
//	# redirect
//	iptables -t nat -A PREROUTING -i lan0 -s 198.51.100.0/24 -p tcp --dport 21 -j REDIRECT --to-ports 2121
//	iptables -A INPUT -i lan0 -p tcp --dport 2121 -j ACCEPT
//	# or tproxy
//	iptables -t mangle -A PREROUTING -i lan0 -s 198.51.100.0/24 -p tcp --dport 21 -j TPROXY --on-port 2121 --tproxy-mark 0x1/0x1
//	iptables -A INPUT -i lan0 -p tcp --dport 21 -m mark --mark 0x1/0x1 -j ACCEPT
//	# --upstream-source client, optional
//	iptables -t nat -I POSTROUTING -o wan0 -s 198.51.100.0/24 -m owner --socket-exists -j RETURN
//
// With TPROXY the intercepted SYN reaches INPUT unchanged (to the server's
// address, port 21), so the INPUT rule for the proxy's port matches the
// TPROXY mark, not port 2121.
func interceptionRules(o InterceptOpts) []gwRule {
	var rs []gwRule
	if !o.NoDivert {
		rs = append(rs, iptRule("mangle", "PREROUTING", false, "-p", "tcp", "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", gwMark))
	}
	if !o.NoDivert || o.Mode == TProxy {
		rs = append(rs,
			gwRule{[]string{"ip", "rule", "add", "fwmark", gwMark, "lookup", gwTable}, []string{"ip", "rule", "del", "fwmark", gwMark, "lookup", gwTable}},
			gwRule{[]string{"ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", gwTable}, []string{"ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", gwTable}})
	}
	switch o.Mode {
	case Redirect:
		rs = append(rs,
			iptRule("nat", "PREROUTING", false, "-i", gwLANDev, "-s", gwLANNet4, "-p", "tcp", "--dport", "21", "-j", "REDIRECT", "--to-ports", gwProxyPort),
			iptRule("filter", "INPUT", false, "-i", gwLANDev, "-p", "tcp", "--dport", gwProxyPort, "-j", "ACCEPT"))
	case TProxy:
		rs = append(rs,
			iptRule("mangle", "PREROUTING", false, "-i", gwLANDev, "-s", gwLANNet4, "-p", "tcp", "--dport", "21",
				"-j", "TPROXY", "--on-port", gwProxyPort, "--tproxy-mark", "0x"+gwMark+"/0x"+gwMark),
			iptRule("filter", "INPUT", false, "-i", gwLANDev, "-p", "tcp", "--dport", "21", "-m", "mark", "--mark", "0x"+gwMark+"/0x"+gwMark, "-j", "ACCEPT"))
	default:
		panic("unknown interception " + string(o.Mode))
	}
	if o.ExemptTransparentFromMasq {
		rs = append(rs, iptRule("nat", "POSTROUTING", true, "-o", gwWANDev, "-s", gwLANNet4, "-m", "owner", "--socket-exists", "-j", "RETURN"))
	}
	return rs
}

// InstallInterception adds the interception rules; they are removed again
// by the returned function (also in t.Cleanup, if not called before),
// after which the router's state must be exactly what it was.
func (r *GwRouter) InstallInterception(t testing.TB, o InterceptOpts) (remove func()) {
	t.Helper()
	return r.InstallRules(t, "interception rules ("+string(o.Mode)+")", interceptionRules(o))
}

// InstallRules runs the add command of each of rs in the router, in order;
// the returned function (also run in t.Cleanup, if not called before) runs
// their del commands in reverse order and requires the router's rules to
// be exactly what they were before. what names them in messages.
func (r *GwRouter) InstallRules(t testing.TB, what string, rs []gwRule) (remove func()) {
	t.Helper()
	before := r.State(t)
	var lines []string
	done := false
	remove = func() {
		t.Helper()
		if done {
			return
		}
		done = true
		for i := len(rs) - 1; i >= 0; i-- {
			r.Router.Run(t, rs[i].del...)
		}
		// Only the rules: iptables-nft keeps the (empty) tables and base
		// chains our rules created; they are harmless and stay.
		if after := r.State(t); after.Rules != before.Rules {
			t.Errorf("router %s: rules after removing the %s differ from before:\n%s", r.Name, what, gwDiff(before.Rules, after.Rules))
		}
	}
	for _, rule := range rs {
		r.Router.Run(t, rule.add...)
		lines = append(lines, strings.Join(rule.add, " "))
	}
	t.Cleanup(remove)
	requireNoFTPHelper(t, r.Router)
	t.Logf("router %s: %s:\n  %s", r.Name, what, strings.Join(lines, "\n  "))
	return remove
}

// RouterState is a router's netfilter and routing state, normalized (no
// counters, no comments), in two views:
//
//   - Rules: what decides the fate of packets: `iptables -S` and
//     `ip6tables -S` of every table (iptables-nft shows the built-in
//     chains of a table whether or not it exists in the kernel), the
//     ipsets with their members, ip rule, ip route show table all;
//   - Full: Rules plus iptables-save, ip6tables-save and nft list ruleset,
//     which also show which (possibly empty) tables and base chains exist.
type RouterState struct{ Rules, Full string }

// State returns the router's state. Compared around ftpalg's lifetime.
func (r *GwRouter) State(t testing.TB) RouterState {
	t.Helper()
	var rules, full strings.Builder
	add := func(b *strings.Builder, argv ...string) {
		fmt.Fprintf(b, "### %s\n", strings.Join(argv, " "))
		out, err := r.Router.Try(argv...)
		if err != nil {
			if _, lerr := exec.LookPath(argv[0]); lerr != nil {
				b.WriteString("(not installed)\n")
				return
			}
			t.Fatalf("router %s: %v", r.Name, err)
		}
		if out = nstest.Normalize(out); out != "" {
			b.WriteString(out + "\n")
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"raw", "mangle", "nat", "filter"} {
			add(&rules, ipt, "-w", "-t", table, "-S")
		}
	}
	add(&rules, "ipset", "list")
	add(&rules, "ip", "-4", "rule", "show")
	add(&rules, "ip", "-6", "rule", "show")
	add(&rules, "ip", "-4", "route", "show", "table", "all")
	add(&rules, "ip", "-6", "route", "show", "table", "all")
	full.WriteString(rules.String())
	add(&full, "iptables-save")
	add(&full, "ip6tables-save")
	add(&full, "nft", "list", "ruleset")
	return RouterState{Rules: rules.String(), Full: full.String()}
}

// gwDiff is a line diff of a and b ("-" only in a, "+" only in b), with
// the "### command" header of each changed section.
func gwDiff(a, b string) string {
	al := strings.Split(strings.TrimRight(a, "\n"), "\n")
	bl := strings.Split(strings.TrimRight(b, "\n"), "\n")
	// Longest common subsequence, small inputs.
	lcs := make([][]int, len(al)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(bl)+1)
	}
	for i := len(al) - 1; i >= 0; i-- {
		for j := len(bl) - 1; j >= 0; j-- {
			if al[i] == bl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	section, shown := "", ""
	emit := func(prefix, l string) {
		if section != shown {
			out.WriteString("  " + section + "\n")
			shown = section
		}
		out.WriteString(prefix + l + "\n")
	}
	i, j := 0, 0
	for i < len(al) || j < len(bl) {
		switch {
		case i < len(al) && j < len(bl) && al[i] == bl[j]:
			if strings.HasPrefix(al[i], "### ") {
				section = al[i]
			}
			i++
			j++
		case j < len(bl) && (i == len(al) || lcs[i][j+1] >= lcs[i+1][j]):
			emit("+ ", bl[j])
			j++
		default:
			emit("- ", al[i])
			i++
		}
	}
	return out.String()
}

// compareState reports how after differs from before: an error for a
// difference in the rules; a log line for empty tables or base chains left
// behind although every rule is the same.
func compareState(t testing.TB, what string, before, after RouterState) {
	t.Helper()
	switch {
	case after.Rules != before.Rules:
		t.Errorf("%s: rules, sets, ip rules or routes differ:\n%s", what, gwDiff(before.Rules, after.Rules))
	case after.Full != before.Full:
		// iptables-nft creates a table and its base chains when a rule is
		// first added to it and has no command to drop an empty one; they
		// hold no rule and accept everything. Known, documented, logged.
		t.Logf("%s: every rule is the same; empty tables or base chains left behind (iptables-nft):\n%s",
			what, gwDiff(before.Full, after.Full))
	}
}

// RequireNoHelperUsed fails if any connection the router tracks has a
// conntrack helper or any expectation exists: the proof that ftpalg, not
// the kernel's nf_conntrack_ftp, made the data connections work.
func (r *GwRouter) RequireNoHelperUsed(t testing.TB) {
	t.Helper()
	requireNoFTPHelper(t, r.Router)
	ct, err := r.Router.Try("cat", "/proc/net/nf_conntrack")
	if err != nil {
		t.Logf("router %s: /proc/net/nf_conntrack not readable (%v): helper use not checked", r.Name, err)
		return
	}
	ftp := 0
	for _, l := range strings.Split(ct, "\n") {
		if strings.Contains(l, "helper=") {
			t.Errorf("router %s: a tracked connection has a conntrack helper: %s", r.Name, l)
		}
		if strings.Contains(l, " dport=21 ") {
			ftp++
		}
	}
	t.Logf("router %s: %d tracked FTP control connections (dport=21), none with a conntrack helper", r.Name, ftp)
	if exp, err := r.Router.Try("cat", "/proc/net/nf_conntrack_expect"); err == nil && strings.TrimSpace(exp) != "" {
		t.Errorf("router %s: conntrack expectations exist (an FTP helper at work?):\n%s", r.Name, exp)
	}
}

// GwProxyOpts are the variations of StartGatewayProxy.
type GwProxyOpts struct {
	Mode                 Interception
	UpstreamSourceClient bool
	// FtpalgDivert lets ftpalg install its own divert rule and policy
	// route (its default, --divert). Without it ftpalg runs with
	// --divert=false: the router's rules are the test's alone, as an
	// operator following nat/README.md writes them.
	FtpalgDivert bool
	// Intercept, when set, is passed as --intercept: ftpalg installs its
	// own interception rules for these client networks or interfaces
	// (rules/intercept), and the test installs none.
	Intercept string
	// Listen is passed as --listen; default 0.0.0.0:2121.
	Listen string
	Extra  []string
}

// GwProxy is ftpalg running in a router.
type GwProxy struct {
	*Proxy
	r       *GwRouter
	before  RouterState // router state before ftpalg started
	stopped bool
}

// StartGatewayProxy runs, in the router,
//
//	ftpalg run --mode transparent --interception MODE --upstream-source router|client
//	    --listen 0.0.0.0:2121|LISTEN --data-ports 50000-50999 --firewall ipset
//	    --log-format json --log-level debug [--divert=false] [--intercept LIST]
//
// after saving the router's state, and waits until the client gets a 220
// greeting from GwServerIP4:21 through it. The interception rules must be
// installed, by the test or by ftpalg (o.Intercept). StopClean (or
// Cleanup) stops it and compares the state.
func (r *GwRouter) StartGatewayProxy(t testing.TB, o GwProxyOpts) *GwProxy {
	t.Helper()
	p := r.LaunchGatewayProxy(t, o)
	if err := waitBanner(r.Client, GwServerIP4+":21", 15*time.Second, p.Alive); err != nil {
		t.Fatalf("router %s: no greeting through ftpalg: %v", r.Name, err)
	}
	if !strings.Contains(p.Log(), `"session started"`) {
		t.Fatalf("router %s: the client got a greeting but ftpalg logged no session: interception does not work\n%s", r.Name, nstest.Tail(p.Log(), 30))
	}
	// ftpalg's own objects exist while it runs (so the comparison after
	// it exits means something).
	st := r.State(t).Full
	for _, want := range []string{"FTPALG-INPUT", "FTPALG-FORWARD", "ftpalg-pinholes4"} {
		if !strings.Contains(st, want) {
			t.Errorf("router %s: %s missing while ftpalg runs:\n%s", r.Name, want, st)
		}
	}
	return p
}

// gwReadyLine is what ftpalg logs in transparent mode once its firewall
// and interception rules are in place (also when it installed none).
const gwReadyLine = `"interception rules installed"`

// LaunchGatewayProxy is the first half of StartGatewayProxy: it saves the
// router's state, starts ftpalg and waits until ftpalg has installed its
// rules (gwReadyLine), without connecting through it. (A client connecting
// before ftpalg's own interception rules exist would reach the server
// directly.)
func (r *GwRouter) LaunchGatewayProxy(t testing.TB, o GwProxyOpts) *GwProxy {
	t.Helper()
	requireProxy(t)
	before := r.State(t)
	src := "router"
	if o.UpstreamSourceClient {
		src = "client"
	}
	args := []string{proxyBinary, "run",
		"--mode", "transparent",
		"--interception", string(o.Mode),
		"--upstream-source", src,
		"--listen", cmp.Or(o.Listen, gwProxyListen),
		"--data-ports", gwDataPorts,
		"--firewall", "ipset",
		"--log-format", "json",
		"--log-level", "debug",
	}
	if !o.FtpalgDivert {
		args = append(args, "--divert=false")
	}
	if o.Intercept != "" {
		args = append(args, "--intercept", o.Intercept)
	}
	if !slices.Contains(o.Extra, "--data-path") {
		// The gateway tests are the splice path's (the default, auto,
		// picks the kernel on these routers); TestKernelGateway and the
		// kernel cases pass --data-path kernel.
		args = append(args, "--data-path", "splice")
	}
	args = append(args, o.Extra...)
	logPath := filepath.Join(t.TempDir(), "ftpalg-"+r.Name+".log")
	p := &GwProxy{Proxy: &Proxy{Proc: nstest.Start(t, r.Router, "ftpalg-"+r.Name, logPath, clientEnv(os.TempDir()), args...)}, r: r, before: before}
	t.Logf("router %s: started ftpalg (pid %d): %s", r.Name, p.PID(), strings.Join(args, " "))
	t.Cleanup(func() {
		if !p.stopped {
			p.StopClean(t)
		}
		if t.Failed() {
			t.Logf("--- ftpalg log (router %s, %s) ---\n%s", r.Name, logPath, nstest.Tail(p.Log(), 120))
		}
	})
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(p.Log(), gwReadyLine); time.Sleep(20 * time.Millisecond) {
		if err := p.Alive(); err != nil {
			t.Fatalf("router %s: ftpalg did not start: %v", r.Name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("router %s: ftpalg did not log %s within 15s:\n%s", r.Name, gwReadyLine, nstest.Tail(p.Log(), 30))
		}
	}
	return p
}

// StopClean sends SIGTERM, requires exit status 0, and requires the
// router's state (iptables, ipsets, ip rules, routes) to be exactly what
// it was before ftpalg started: its hooks, chains and sets are gone, and
// the router's own and the interception rules are untouched.
func (p *GwProxy) StopClean(t testing.TB) {
	t.Helper()
	if p.stopped {
		return
	}
	p.stopped = true
	if err := p.Stop(15 * time.Second); err != nil {
		t.Errorf("router %s: ftpalg did not exit on SIGTERM: %v", p.r.Name, err)
	} else if err := p.ExitErr(); err != nil {
		t.Errorf("router %s: ftpalg exited with %v after SIGTERM:\n%s", p.r.Name, err, nstest.Tail(p.Log(), 20))
	}
	compareState(t, "router "+p.r.Name+" after ftpalg exited, compared with before it started", p.before, p.r.State(t))
}

// gwTarget is what every client connects to: the server's public address.
// A 227 reply must carry that address, too (ftpalg listens on it).
var gwTarget = Target{Host: GwServerIP4, Port: 21, ClientIP: GwClientIP4, WantPASVIP: GwServerIP4}

// runClient runs a client in the router's client namespace.
func (r *GwRouter) runClient(c Client, s Session) Result {
	return c.Run(context.Background(), r.Client, s)
}
