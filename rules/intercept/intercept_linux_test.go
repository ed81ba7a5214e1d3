package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// each runs f once per installed iptables variant, after checking for
// root and the tools.
func each(t *testing.T, f func(t *testing.T, variant string)) {
	for _, v := range nstest.Variants(t) {
		t.Run(v, func(t *testing.T) {
			nstest.Require(t, nstest.Cmd("4", v), nstest.Cmd("6", v),
				nstest.Cmd("4", v)+"-save", nstest.Cmd("6", v)+"-save", "sysctl")
			f(t, v)
		})
	}
}

// fam holds one family's documentation addresses and commands for the
// tests: the client (in the intercepted network), a second client address
// outside it, the router's address on the client link, and the
// destination the client connects to, which exists nowhere.
type fam struct {
	f                        family
	client, outside, router  netip.Addr
	bits                     string
	dest                     netip.Addr
	ip                       string // "-4" or "-6"
	fwd                      string // the forwarding sysctl
	dnatTo, blackhole, stale string // addresses in the host's own rules
}

var fams = []fam{
	{
		f: ipv4, client: netip.MustParseAddr("198.51.100.10"), outside: netip.MustParseAddr("198.51.100.200"),
		router: netip.MustParseAddr("198.51.100.1"), bits: "/24", dest: netip.MustParseAddr("203.0.113.5"),
		ip: "-4", fwd: "net.ipv4.ip_forward=1",
		dnatTo: "198.51.100.20:80", blackhole: "192.0.2.0/24", stale: "192.0.2.128/25",
	},
	{
		f: ipv6, client: netip.MustParseAddr("2001:db8:1::10"), outside: netip.MustParseAddr("2001:db8:1::200"),
		router: netip.MustParseAddr("2001:db8:1::1"), bits: "/64", dest: netip.MustParseAddr("2001:db8:3::5"),
		ip: "-6", fwd: "net.ipv6.conf.all.forwarding=1",
		dnatTo: "[2001:db8:1::20]:80", blackhole: "2001:db8:ff::/48", stale: "2001:db8:fe::/48",
	},
}

func (a fam) cmd(variant string) string { return nstest.Cmd(famArg(a.f), variant) }

func famArg(f family) string {
	if f == ipv6 {
		return "6"
	}
	return "4"
}

// do runs fn inside n and fails t on error.
func do(t *testing.T, n *nstest.NS, what string, fn func(ctx context.Context) error) {
	t.Helper()
	var err error
	n.Do(t, func() { err = fn(context.Background()) })
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// install runs Install inside n; Remove runs when t ends (it is harmless
// after the test's own Remove).
func install(t *testing.T, n *nstest.NS, c Config) *Rules {
	t.Helper()
	if c.Logger == nil {
		c.Logger = zaptest.NewLogger(t)
	}
	var r *Rules
	do(t, n, "Install", func(ctx context.Context) (err error) { r, err = Install(ctx, c); return err })
	t.Cleanup(func() {
		n.Do(t, func() {
			if err := r.Remove(context.Background()); err != nil {
				t.Errorf("Remove at cleanup: %v", err)
			}
		})
	})
	return r
}

// hostRuleset gives n what a router has of its own, in both families: a
// DNAT port forward and masquerading in nat, a mark in mangle, a policy
// rule and a table of its own. Install must keep clear of all of it, and
// Remove leave it exactly so.
func hostRuleset(t testing.TB, n *nstest.NS, variant string) {
	t.Helper()
	for _, a := range fams {
		ipt := a.cmd(variant)
		n.Run(t, ipt, "-w", "-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "tcp", "--dport", "8080",
			"-j", "DNAT", "--to-destination", a.dnatTo)
		n.Run(t, ipt, "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
		n.Run(t, ipt, "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "wan0", "-j", "MARK", "--set-xmark", "0x100/0x100")
		n.Run(t, ipt, "-w", "-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
			"-j", "TCPMSS", "--clamp-mss-to-pmtu")
		n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x100/0x100", "lookup", "200")
		n.Run(t, "ip", a.ip, "route", "add", "blackhole", a.blackhole, "table", "200")
	}
}

// snapshot is everything Remove must restore: both families' complete
// rulesets (counters zeroed), policy rules and routes of every table.
func snapshot(t *testing.T, n *nstest.NS, variant string) string {
	t.Helper()
	var b strings.Builder
	for _, a := range fams {
		b.WriteString(n.Save(t, famArg(a.f), variant) + "\n")
		b.WriteString(n.Run(t, "ip", a.ip, "rule") + n.Run(t, "ip", a.ip, "route", "show", "table", "all"))
	}
	return b.String()
}

// state is what the tests compare after Install: `iptables -t nat -S`,
// `-t mangle -S`, `ip rule` and `ip route show table 100` of one family.
func state(t *testing.T, n *nstest.NS, variant string, a fam, table int) string {
	t.Helper()
	s := "# nat\n" + n.Run(t, a.cmd(variant), "-w", "-t", "nat", "-S") +
		"# mangle\n" + n.Run(t, a.cmd(variant), "-w", "-t", "mangle", "-S") +
		"# ip rule\n" + n.Run(t, "ip", a.ip, "rule") +
		fmt.Sprintf("# ip route show table %d\n", table) + routes(t, n, a, table)
	var b strings.Builder
	for l := range strings.Lines(s) {
		if l = strings.TrimRight(l, " \n"); l != "" {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// routes is `ip route show table N`, empty when the table does not exist.
func routes(t *testing.T, n *nstest.NS, a fam, table int) string {
	t.Helper()
	out, err := n.Try("ip", a.ip, "route", "show", "table", fmt.Sprint(table))
	if err != nil {
		if strings.Contains(out, "table does not exist") {
			return ""
		}
		t.Fatal(err)
	}
	return out
}

// expect builds the state of one family after Install on hostRuleset: the
// host's rules with ours added where Install puts them.
type expect struct {
	natHooks, natChains       []string // our nat PREROUTING hooks, our -N and -A lines
	mangleHooks, mangleChains []string
	rules                     []string // ip rule lines, ours and the host's, in order
	routes                    []string // ip route show table 100
}

func (e expect) String(a fam) string {
	var b strings.Builder
	w := func(lines ...string) {
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	w("# nat", "-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT")
	w(filter(e.natChains, "-N ")...)
	w(e.natHooks...)
	w("-A PREROUTING -i wan0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination "+a.dnatTo,
		"-A POSTROUTING -o wan0 -j MASQUERADE")
	w(filter(e.natChains, "-A ")...)
	w("# mangle", "-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT")
	w(filter(e.mangleChains, "-N ")...)
	w(e.mangleHooks...)
	w("-A PREROUTING -i wan0 -j MARK --set-xmark 0x100/0x100",
		"-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu")
	w(filter(e.mangleChains, "-A ")...)
	w("# ip rule", "0:\tfrom all lookup local")
	w(e.rules...)
	w("32766:\tfrom all lookup main")
	if a.f == ipv4 {
		w("32767:\tfrom all lookup default")
	}
	w("# ip route show table 100")
	w(e.routes...)
	return b.String()
}

func filter(lines []string, prefix string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

const hostRule = "32765:\tfrom all fwmark 0x100/0x100 lookup 200"

func localRoute(a fam) string {
	if a.f == ipv6 {
		return "local default dev lo proto 70 metric 1024 pref medium"
	}
	return "local default dev lo proto 70 scope host"
}

// The scenarios the exact tests run: each Config on hostRuleset, and what
// one family looks like afterwards. Sources are the client network's
// lower half (lan4, lan6) plus the interface wildcard "lan+".
var scenarios = []struct {
	name string
	c    Config
	want func(a fam) expect
}{
	{"redirect", Config{Mode: nat.ModeRedirect, ListenPort: 2121}, func(a fam) expect {
		return expect{
			natHooks: []string{"-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT"},
			natChains: []string{"-N FTPALG-REDIRECT",
				"-A FTPALG-REDIRECT -s " + lanOf(a).String() + " -p tcp -j REDIRECT --to-ports 2121",
				"-A FTPALG-REDIRECT -i lan+ -p tcp -j REDIRECT --to-ports 2121"},
			rules: []string{hostRule},
		}
	}},
	{"redirect-divert", Config{Mode: nat.ModeRedirect, ListenPort: 2121, Divert: true}, func(a fam) expect {
		return expect{
			natHooks: []string{"-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT"},
			natChains: []string{"-N FTPALG-REDIRECT",
				"-A FTPALG-REDIRECT -s " + lanOf(a).String() + " -p tcp -j REDIRECT --to-ports 2121",
				"-A FTPALG-REDIRECT -i lan+ -p tcp -j REDIRECT --to-ports 2121"},
			mangleHooks:  []string{"-A PREROUTING -p tcp -j FTPALG-DIVERT"},
			mangleChains: []string{"-N FTPALG-DIVERT", "-A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1"},
			rules:        []string{"32764:\tfrom all fwmark 0x1/0x1 lookup 100 proto 70", hostRule},
			routes:       []string{localRoute(a)},
		}
	}},
	{"tproxy", Config{Mode: nat.ModeTProxy, ListenPort: 2121, Port: 2100}, func(a fam) expect {
		lo := "127.0.0.1"
		if a.f == ipv6 {
			lo = "::1"
		}
		return expect{
			mangleHooks: []string{"-A PREROUTING -p tcp -m tcp --dport 2100 -j FTPALG-TPROXY"},
			mangleChains: []string{"-N FTPALG-TPROXY",
				"-A FTPALG-TPROXY -s " + lanOf(a).String() + " -p tcp -j TPROXY --on-port 2121 --on-ip " + lo + " --tproxy-mark 0x1/0x1",
				"-A FTPALG-TPROXY -i lan+ -p tcp -j TPROXY --on-port 2121 --on-ip " + lo + " --tproxy-mark 0x1/0x1"},
			rules:  []string{"32764:\tfrom all fwmark 0x1/0x1 lookup 100 proto 70", hostRule},
			routes: []string{localRoute(a)},
		}
	}},
	{"tproxy-divert-mark", Config{Mode: nat.ModeTProxy, ListenPort: 2121, Divert: true, Mark: 0x40000, Instance: "gw"}, func(a fam) expect {
		lo := "127.0.0.1"
		if a.f == ipv6 {
			lo = "::1"
		}
		return expect{
			mangleHooks: []string{"-A PREROUTING -p tcp -j FTPALG-DIVERT-gw", "-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY-gw"},
			mangleChains: []string{"-N FTPALG-DIVERT-gw", "-N FTPALG-TPROXY-gw",
				"-A FTPALG-DIVERT-gw -p tcp -m socket --transparent -j MARK --set-xmark 0x40000/0x40000",
				"-A FTPALG-TPROXY-gw -s " + lanOf(a).String() + " -p tcp -j TPROXY --on-port 2121 --on-ip " + lo + " --tproxy-mark 0x40000/0x40000",
				"-A FTPALG-TPROXY-gw -i lan+ -p tcp -j TPROXY --on-port 2121 --on-ip " + lo + " --tproxy-mark 0x40000/0x40000"},
			rules:  []string{"32764:\tfrom all fwmark 0x40000/0x40000 lookup 100 proto 70", hostRule},
			routes: []string{localRoute(a)},
		}
	}},
	{"divert-only", Config{Divert: true}, func(a fam) expect {
		return expect{
			mangleHooks:  []string{"-A PREROUTING -p tcp -j FTPALG-DIVERT"},
			mangleChains: []string{"-N FTPALG-DIVERT", "-A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1"},
			rules:        []string{"32764:\tfrom all fwmark 0x1/0x1 lookup 100 proto 70", hostRule},
			routes:       []string{localRoute(a)},
		}
	}},
}

func lanOf(a fam) netip.Prefix {
	if a.f == ipv6 {
		return lan6
	}
	return lan4
}

// withSelectors adds the scenarios' sources and interface to c when it
// has a method.
func withSelectors(c Config, variant string) Config {
	if c.Mode != 0 {
		c.Sources = []netip.Prefix{lan4, lan6}
		c.Interfaces = []string{"lan+"}
	}
	c.Iptables = variant
	return c
}

// TestInstallExact installs each scenario on a router's own ruleset and
// checks, per family, exactly which rules, policy rules and routes exist;
// a second Install changes nothing; Remove restores iptables-save, ip rule
// and every routing table exactly, and a second Remove is fine.
func TestInstallExact(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				n := nstest.New(t)
				hostRuleset(t, n, variant)
				before := snapshot(t, n, variant)
				c := withSelectors(sc.c, variant)

				r := install(t, n, c)
				checkState(t, n, variant, sc.want)
				if r.changes == 0 {
					t.Error("first Install reports no changes")
				}

				again := install(t, n, c)
				if again.changes != 0 {
					t.Errorf("second Install made %d changes, want none", again.changes)
				}
				checkState(t, n, variant, sc.want)

				do(t, n, "Remove", r.Remove)
				if after := snapshot(t, n, variant); after != before {
					t.Errorf("Remove left the namespace changed:\n%s\nbefore:\n%s", after, before)
				}
				do(t, n, "Remove again", r.Remove)
			})
		}
	})
}

func checkState(t *testing.T, n *nstest.NS, variant string, want func(fam) expect) {
	t.Helper()
	for _, a := range fams {
		if got, want := state(t, n, variant, a, 100), want(a).String(a); got != want {
			t.Errorf("%s state:\n%s\nwant:\n%s", a.f, got, want)
		}
	}
}

// TestLeftovers fakes what a crashed run with another configuration left
// (its chain with other rules, duplicate and old-style hooks, the other
// method's chain and hook, a stale policy rule, duplicates of ours, a stale
// route of ours) next to the host's own rule and route in table 100, and
// checks that Install reconciles to exactly its own state, leaving the
// host's alone, and that Cleanup without an Install removes all of ours.
func TestLeftovers(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		n := nstest.New(t)
		hostRuleset(t, n, variant)
		for _, a := range fams {
			// the host's own, in our table: not ours, so they stay
			n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x8/0x8", "lookup", "100", "priority", "1000")
			n.Run(t, "ip", a.ip, "route", "add", "blackhole", a.stale, "table", "100")
		}
		clean := snapshot(t, n, variant)
		for _, a := range fams {
			ipt := []string{a.cmd(variant), "-w"}
			run := func(args ...string) { n.Run(t, append(slicesClone(ipt), args...)...) }
			run("-t", "nat", "-N", "FTPALG-REDIRECT")
			run("-t", "nat", "-A", "FTPALG-REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "9999")
			run("-t", "nat", "-A", "PREROUTING", "-s", lanOf(a).String(), "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT")
			run("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT")
			run("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT")
			run("-t", "mangle", "-N", "FTPALG-TPROXY")
			run("-t", "mangle", "-A", "FTPALG-TPROXY", "-p", "tcp", "-j", "TPROXY", "--on-port", "9999", "--tproxy-mark", "0x1/0x1")
			run("-t", "mangle", "-I", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-TPROXY")
			run("-t", "mangle", "-N", "FTPALG-DIVERT")
			run("-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-j", "FTPALG-DIVERT")
			n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x2/0x2", "lookup", "100", "proto", "70")
			n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100", "proto", "70")
			n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100", "proto", "70", "priority", "900")
			n.Run(t, "ip", a.ip, "route", "add", "unreachable", a.blackhole, "table", "100", "proto", "70")
		}
		c := withSelectors(Config{Mode: nat.ModeRedirect, ListenPort: 2121, Divert: true}, variant)
		install(t, n, c)
		for _, a := range fams {
			got := state(t, n, variant, a, 100)
			want := scenarios[1].want(a)
			// one of our duplicates survives (the first found, priority
			// 900); the host's rule and route in table 100 stay
			want.rules = []string{"900:\tfrom all fwmark 0x1/0x1 lookup 100 proto 70",
				"1000:\tfrom all fwmark 0x8/0x8 lookup 100", hostRule}
			blackhole := "blackhole " + a.stale
			if a.f == ipv6 {
				blackhole += " dev lo metric 1024 pref medium"
			}
			want.routes = sortRoutes(a, blackhole, localRoute(a))
			if w := want.String(a); got != w {
				t.Errorf("%s after Install on leftovers:\n%s\nwant:\n%s", a.f, got, w)
			}
		}
		again := install(t, n, c)
		if again.changes != 0 {
			t.Errorf("Install after reconciling made %d changes, want none", again.changes)
		}
		do(t, n, "Cleanup", func(ctx context.Context) error {
			return Cleanup(ctx, Config{Iptables: variant, Logger: zaptest.NewLogger(t)})
		})
		if after := snapshot(t, n, variant); after != clean {
			t.Errorf("Cleanup left:\n%s\nwant:\n%s", after, clean)
		}
	})
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// sortRoutes puts routes in the order `ip route show table` prints them
// for family a (IPv4 by prefix, default first; IPv6 default last).
func sortRoutes(a fam, blackhole, local string) []string {
	if a.f == ipv6 {
		return []string{blackhole, local}
	}
	return []string{local, blackhole}
}

// TestHostRouting: the host already has the policy rule and local route
// TPROXY needs (as nat/README.md tells operators to add). Install uses
// them without adding its own, and Remove leaves them.
func TestHostRouting(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		n := nstest.New(t)
		for _, a := range fams {
			all := "0.0.0.0/0"
			if a.f == ipv6 {
				all = "::/0"
			}
			n.Run(t, "ip", a.ip, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100")
			n.Run(t, "ip", a.ip, "route", "add", "local", all, "dev", "lo", "table", "100")
		}
		before := withoutEmptyTables(snapshot(t, n, variant))
		r := install(t, n, withSelectors(Config{Mode: nat.ModeTProxy, ListenPort: 2121, Divert: true}, variant))
		if got := n.Run(t, "ip", "rule") + n.Run(t, "ip", "-6", "rule") + n.Run(t, "ip", "route", "show", "table", "100") +
			n.Run(t, "ip", "-6", "route", "show", "table", "100"); strings.Contains(got, "proto 70") {
			t.Errorf("Install added policy routing next to the host's:\n%s", got)
		}
		do(t, n, "Remove", r.Remove)
		if after := withoutEmptyTables(snapshot(t, n, variant)); after != before {
			t.Errorf("Remove changed the host's routing:\n%s\nbefore:\n%s", after, before)
		}
	})
}

var emptyTable = regexp.MustCompile(`(?m)^\*[a-z]+\n(:[A-Z]+ ACCEPT \[0:0\]\n)+COMMIT\n`)

// withoutEmptyTables drops from a snapshot the tables that hold nothing but
// built-in chains with policy ACCEPT: iptables creates a table on first
// use and never deletes it (nft keeps the table and its base chains,
// legacy the kernel table), so a namespace that had no mangle table
// before Install has an empty one after Remove.
func withoutEmptyTables(s string) string {
	var b strings.Builder
	for l := range strings.Lines(emptyTable.ReplaceAllString(s, "")) {
		if strings.TrimSpace(l) != "" {
			b.WriteString(l)
		}
	}
	return b.String()
}

// TestFamiliesFollowSources: IPv6 sources only touch only IPv6; an IPv4
// Install later removes the IPv6 leftovers.
func TestFamiliesFollowSources(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		n := nstest.New(t)
		hostRuleset(t, n, variant)
		before4 := n.Save(t, "4", variant) + n.Run(t, "ip", "-4", "rule")
		install(t, n, Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan6}, ListenPort: 2121, Iptables: variant})
		if after := n.Save(t, "4", variant) + n.Run(t, "ip", "-4", "rule"); after != before4 {
			t.Errorf("IPv6-only Install changed IPv4:\n%s", after)
		}
		if s := n.Run(t, nstest.Cmd("6", variant), "-w", "-t", "mangle", "-S"); !strings.Contains(s, "-N FTPALG-TPROXY") {
			t.Fatalf("IPv6-only Install: no FTPALG-TPROXY in ip6tables:\n%s", s)
		}
		install(t, n, Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4}, ListenPort: 2121, Iptables: variant})
		if s := n.Run(t, nstest.Cmd("6", variant), "-w", "-t", "mangle", "-S") + n.Run(t, "ip", "-6", "rule"); strings.Contains(s, "FTPALG") || strings.Contains(s, "proto 70") {
			t.Errorf("IPv4-only Install left the IPv6 leftovers:\n%s", s)
		}
	})
}

// TestInstances: two instances with their own names, marks and tables
// share a router; removing one leaves the other exactly as it was.
func TestInstances(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		n := nstest.New(t)
		hostRuleset(t, n, variant)
		before := snapshot(t, n, variant)
		a := install(t, n, Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121,
			Divert: true, Instance: "a", Iptables: variant})
		withA := snapshot(t, n, variant)
		b := install(t, n, Config{Mode: nat.ModeTProxy, Interfaces: []string{"lan1"}, ListenPort: 2122, Divert: true,
			Mark: 0x2, Table: 101, Instance: "b", Iptables: variant})
		again := install(t, n, Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121,
			Divert: true, Instance: "a", Iptables: variant})
		if again.changes != 0 {
			t.Errorf("instance a's second Install with b present made %d changes", again.changes)
		}
		do(t, n, "Remove b", b.Remove)
		if got := snapshot(t, n, variant); got != withA {
			t.Errorf("removing instance b changed instance a's state:\n%s\nwant:\n%s", got, withA)
		}
		do(t, n, "Remove a", a.Remove)
		if got := snapshot(t, n, variant); got != before {
			t.Errorf("after both Removes:\n%s\nwant:\n%s", got, before)
		}
	})
}

// gateway is a client namespace behind a router namespace on one veth
// link, both families: the client's default route is the router, which
// has no route to the destinations the client connects to, so only
// interception answers them.
func gateway(t *testing.T) (client, router *nstest.NS) {
	t.Helper()
	client, router = nstest.New(t), nstest.New(t)
	router.Run(t, "ip", "link", "add", "rc", "type", "veth", "peer", "name", "c0", "netns", client.Name)
	router.Run(t, "ip", "link", "set", "rc", "up")
	client.Run(t, "ip", "link", "set", "c0", "up")
	for _, a := range fams {
		nodad := func(args []string) []string {
			if a.f == ipv6 {
				return append(args, "nodad")
			}
			return args
		}
		router.Run(t, nodad([]string{"ip", "addr", "add", a.router.String() + a.bits, "dev", "rc"})...)
		for _, c := range []netip.Addr{a.client, a.outside} {
			client.Run(t, nodad([]string{"ip", "addr", "add", c.String() + a.bits, "dev", "c0"})...)
		}
		client.Run(t, "ip", a.ip, "route", "add", "default", "via", a.router.String())
		router.Run(t, "sysctl", "-q", "-w", a.fwd)
	}
	return client, router
}

// TestPacket sends real connections from a client through a router with
// the rules: a connection to DEST:21 from the intercepted network reaches
// the listener Config.Listen names (plain for redirect, transparent for
// tproxy), which recovers DEST:21 with nat.Destination; one from outside
// the network is not intercepted; with Divert, a transparent listener
// bound to DEST:50000 accepts the client's connection to it (how data
// connections to a server are caught); after Remove nothing is.
func TestPacket(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		for _, tc := range []struct {
			m      nat.Mode
			divert bool
		}{{nat.ModeRedirect, false}, {nat.ModeRedirect, true}, {nat.ModeTProxy, false}, {nat.ModeTProxy, true}} {
			t.Run(fmt.Sprintf("%s-divert=%v", tc.m, tc.divert), func(t *testing.T) {
				packet(t, variant, Config{Mode: tc.m, Divert: tc.divert, Sources: []netip.Prefix{lan4, lan6},
					ListenPort: 2121, Iptables: variant})
			})
		}
		t.Run("tproxy-interface", func(t *testing.T) {
			packet(t, variant, Config{Mode: nat.ModeTProxy, Interfaces: []string{"rc"}, ListenPort: 2121, Iptables: variant})
		})
	})
}

func packet(t *testing.T, variant string, c Config) {
	client, router := gateway(t)
	// a default-DROP router, with the INPUT rules README.md asks for
	nstest.DefaultDrop(t, router, variant)
	for _, a := range fams {
		if c.Mode == nat.ModeRedirect {
			router.Run(t, a.cmd(variant), "-w", "-A", "INPUT", "-p", "tcp", "--dport", "2121", "-j", "ACCEPT")
		}
		if c.Mode == nat.ModeTProxy || c.Divert {
			router.Run(t, a.cmd(variant), "-w", "-A", "INPUT", "-p", "tcp", "-m", "mark", "--mark", "0x1/0x1", "-j", "ACCEPT")
		}
	}
	r := install(t, router, c)
	mode := c.Mode
	aps, err := c.Listen()
	if err != nil || len(aps) != 2 {
		t.Fatalf("Listen() = %v, %v; want one address per family", aps, err)
	}
	lns := map[family]*net.TCPListener{}
	for _, ap := range aps {
		ln := listen(t, router, ap, c.Mode == nat.ModeTProxy)
		if ap.Addr().Is4() {
			lns[ipv4] = ln
		} else {
			lns[ipv6] = ln
		}
	}
	inNetwork := len(c.Interfaces) == 0 // with -i rc, every client address is intercepted
	for _, a := range fams {
		t.Run(a.f.String(), func(t *testing.T) {
			want := netip.AddrPortFrom(a.dest, 21)
			cc, sc := connect(t, client, a.client, want, lns[a.f])
			if got, err := nat.Destination(sc, mode); err != nil || got != want {
				t.Errorf("nat.Destination(%s) = %s, %v; want %s", mode, got, err, want)
			}
			if got := nat.AddrPortOf(sc.RemoteAddr()); got != nat.AddrPortOf(cc.LocalAddr()) {
				t.Errorf("accepted RemoteAddr %s, client's LocalAddr %s", got, cc.LocalAddr())
			}
			nstest.Exchange(t, cc, sc)

			if inNetwork {
				notIntercepted(t, client, a.outside, want, lns[a.f], "from outside the intercepted network")
			}
			if c.Divert {
				data := netip.AddrPortFrom(a.dest, 50000)
				ln := listen(t, router, data, true)
				cc, sc := connect(t, client, a.client, data, ln)
				if got := nat.AddrPortOf(sc.LocalAddr()); got != data {
					t.Errorf("diverted connection's LocalAddr %s, want %s", got, data)
				}
				nstest.Exchange(t, cc, sc)
			}
		})
	}
	do(t, router, "Remove", r.Remove)
	for _, a := range fams {
		notIntercepted(t, client, a.client, netip.AddrPortFrom(a.dest, 21), lns[a.f], "after Remove")
	}
}

// listen opens a listener on ap inside n, transparent or plain.
func listen(t *testing.T, n *nstest.NS, ap netip.AddrPort, transparent bool) *net.TCPListener {
	t.Helper()
	var (
		ln  *net.TCPListener
		err error
	)
	n.Do(t, func() {
		if transparent {
			ln, err = nat.ListenTransparent(context.Background(), ap)
			return
		}
		network := "tcp4"
		if ap.Addr().Is6() {
			network = "tcp6"
		}
		ln, err = net.ListenTCP(network, net.TCPAddrFromAddrPort(ap))
	})
	if err != nil {
		t.Fatalf("listen %s (transparent %v): %v", ap, transparent, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connect dials to from the client address from and accepts on ln.
func connect(t *testing.T, client *nstest.NS, from netip.Addr, to netip.AddrPort, ln *net.TCPListener) (cc, sc *net.TCPConn) {
	t.Helper()
	cc, err := client.Dial(from, to, 5*time.Second)
	if err != nil {
		t.Fatalf("client %s dial %s: %v", from, to, err)
	}
	t.Cleanup(func() { cc.Close() })
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err = ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept on %s of %s→%s: %v", ln.Addr(), from, to, err)
	}
	t.Cleanup(func() { sc.Close() })
	return cc, sc
}

// notIntercepted checks that a connection from `from` to `to` does not
// succeed (the router has no route: unreachable, or the SYN is dropped)
// and that ln receives nothing.
func notIntercepted(t *testing.T, client *nstest.NS, from netip.Addr, to netip.AddrPort, ln *net.TCPListener, when string) {
	t.Helper()
	if c, err := client.Dial(from, to, time.Second); err == nil {
		c.Close()
		t.Errorf("%s: %s→%s connected; want no interception", when, from, to)
	}
	ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Errorf("%s: listener %s accepted %s→%s", when, ln.Addr(), from, to)
	}
}

// noCapEnv marks the child process TestNotPermitted starts.
const noCapEnv = "FTPALG_INTERCEPT_NOCAP"

// TestNotPermitted runs Install without capabilities (a child process
// under setpriv, in a fresh namespace): it fails with ErrNotPermitted and
// the CAP_NET_ADMIN hint, whether iptables (redirect) or netlink (the
// divert's policy routing) comes first, and leaves nothing behind.
func TestNotPermitted(t *testing.T) {
	if os.Getenv(noCapEnv) == "1" {
		v := os.Getenv(noCapEnv + "_VARIANT")
		for _, c := range []Config{
			{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4}, ListenPort: 2121, Iptables: v},
			{Divert: true, Iptables: v},
		} {
			_, err := Install(context.Background(), c)
			if !errors.Is(err, rules.ErrNotPermitted) || !strings.Contains(err.Error(), rules.HintNotPermitted) {
				t.Fatalf("Install(%+v) without CAP_NET_ADMIN: %v; want ErrNotPermitted with %q", c, err, rules.HintNotPermitted)
			}
			t.Logf("Install: %v", err)
		}
		return
	}
	each(t, func(t *testing.T, variant string) {
		nstest.Require(t, "setpriv")
		n := nstest.New(t)
		before := withoutEmptyTables(snapshot(t, n, variant))
		cmd := exec.Command("ip", "netns", "exec", n.Name,
			"setpriv", "--bounding-set=-all", "--inh-caps=-all",
			os.Args[0], "-test.run=^TestNotPermitted$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), noCapEnv+"=1", noCapEnv+"_VARIANT="+variant)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("child without capabilities: %v\n%s", err, out)
		}
		for l := range strings.SplitSeq(string(out), "\n") {
			if strings.Contains(l, "Install: rules/") {
				t.Log("child:", strings.TrimSpace(l))
			}
		}
		if after := withoutEmptyTables(snapshot(t, n, variant)); after != before {
			t.Errorf("a failed Install left:\n%s", after)
		}
	})
}

// TestFailureRollsBack: routing table 100 is taken for IPv6 (a default
// route that is not a local one). With an IPv6 source Install fails with a
// hint naming the table and removes what it had installed for IPv4; with
// only interfaces it logs IPv6 as unavailable and installs IPv4 alone.
func TestFailureRollsBack(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		n := nstest.New(t)
		hostRuleset(t, n, variant)
		n.Run(t, "ip", "-6", "route", "add", "unreachable", "default", "table", "100")
		before := snapshot(t, n, variant)

		c := Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121, Iptables: variant,
			Logger: zaptest.NewLogger(t)}
		var err error
		n.Do(t, func() { _, err = Install(context.Background(), c) })
		if err == nil || !strings.Contains(err.Error(), "routing table 100") || !strings.Contains(err.Error(), "install ipv6") {
			t.Fatalf("Install with table 100 taken for IPv6: %v; want an IPv6 error naming the table", err)
		}
		t.Logf("Install: %v", err)
		if after := snapshot(t, n, variant); after != before {
			t.Errorf("a failed Install left:\n%s\nbefore:\n%s", after, before)
		}

		c.Sources = nil
		c.Interfaces = []string{"lan0"}
		r := install(t, n, c)
		if len(r.fams) != 1 || r.fams[0] != ipv4 {
			t.Errorf("interfaces-only Install with IPv6 unusable set up %v, want IPv4 only", r.fams)
		}
		if s := n.Run(t, nstest.Cmd("6", variant), "-w", "-t", "mangle", "-S") + n.Run(t, "ip", "-6", "rule"); strings.Contains(s, "FTPALG") || strings.Contains(s, "proto 70") {
			t.Errorf("IPv6 remains after its failure:\n%s", s)
		}
		if s := n.Run(t, nstest.Cmd("4", variant), "-w", "-t", "mangle", "-S"); !strings.Contains(s, "-A FTPALG-TPROXY -i lan0") {
			t.Errorf("no IPv4 rules:\n%s", s)
		}
	})
}
