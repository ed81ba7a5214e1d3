package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// The tests in this file run without root. Install, Remove and Cleanup
// run against an xtables.Fake (held to the real binaries by xtables'
// TestFakeMatchesIptables) and fakeRouting, a stand-in for the kernel's
// policy rules and routes, and they check the same expectations as the
// namespace tests (scenarios, expect) wherever those apply: what the
// kernel tests show of the real kernel, these show of the fakes.

// fakeRouting keeps policy rules and routes per family as the kernel's
// FIB does, for the netlink calls the policy routing makes: a rule added
// without a priority gets the one before the second rule, as
// fib_default_rule_pref gives; a rule or route that exists exactly is
// EEXIST, a route whose destination and metric are taken in its table too;
// a delete finds by the fields it names, ENOENT (rules) or ESRCH (routes)
// when nothing matches. IPv6 routes get metric 1024 and reject routes the
// loopback device, as the kernel gives them.
type fakeRouting struct {
	mu     sync.Mutex
	rules  map[int][]netlink.Rule
	routes map[int][]netlink.Route
	// no6 makes every IPv6 call fail as on a kernel without IPv6.
	no6 bool
	// fail, when set, is asked before each call ("RuleAdd", …).
	fail func(op string, family int) error
}

const loIndex = 1

func newFakeRouting() *fakeRouting {
	rt := &fakeRouting{rules: map[int][]netlink.Rule{}, routes: map[int][]netlink.Route{}}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		defaults := []struct{ pref, table int }{{0, unix.RT_TABLE_LOCAL}, {32766, unix.RT_TABLE_MAIN}}
		if fam == netlink.FAMILY_V4 {
			defaults = append(defaults, struct{ pref, table int }{32767, unix.RT_TABLE_DEFAULT})
		}
		for _, d := range defaults {
			r := netlink.NewRule()
			r.Family, r.Priority, r.Table, r.Protocol = fam, d.pref, d.table, unix.RTPROT_KERNEL
			rt.rules[fam] = append(rt.rules[fam], *r)
		}
	}
	return rt
}

func (rt *fakeRouting) check(op string, family int) error {
	if rt.no6 && family == netlink.FAMILY_V6 {
		return unix.EAFNOSUPPORT
	}
	if rt.fail != nil {
		return rt.fail(op, family)
	}
	return nil
}

func (rt *fakeRouting) LinkByName(name string) (netlink.Link, error) {
	if name != "lo" {
		return nil, netlink.LinkNotFoundError{}
	}
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: loIndex}}, nil
}

func (rt *fakeRouting) RuleListFiltered(family int, filter *netlink.Rule, mask uint64) ([]netlink.Rule, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if err := rt.check("RuleList", family); err != nil {
		return nil, err
	}
	var out []netlink.Rule
	for _, r := range rt.rules[family] {
		if mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != 0 && r.Table != filter.Table {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// mask is a rule's fwmark mask as the kernel keeps it: all ones when a
// mark was given without one.
func ruleMask(r netlink.Rule) uint32 {
	switch {
	case r.Mask != nil:
		return *r.Mask
	case r.Mark != 0:
		return 0xffffffff
	}
	return 0
}

func (rt *fakeRouting) RuleAdd(rule *netlink.Rule) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if err := rt.check("RuleAdd", rule.Family); err != nil {
		return err
	}
	r := *rule
	list := rt.rules[r.Family]
	if r.Priority < 0 {
		r.Priority = 0
		if len(list) > 1 && list[1].Priority > 0 {
			r.Priority = list[1].Priority - 1
		}
	}
	if m := ruleMask(r); m != 0 {
		r.Mask = &m
	} else {
		r.Mask = nil
	}
	r.Type = 0 // a dump does not say
	for _, have := range list {
		if have.Priority == r.Priority && have.Table == r.Table && have.Mark == r.Mark &&
			ruleMask(have) == ruleMask(r) && have.Protocol == r.Protocol {
			return unix.EEXIST
		}
	}
	i := 0
	for i < len(list) && list[i].Priority <= r.Priority {
		i++
	}
	rt.rules[r.Family] = slices.Insert(list, i, r)
	return nil
}

func (rt *fakeRouting) RuleDel(rule *netlink.Rule) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if err := rt.check("RuleDel", rule.Family); err != nil {
		return err
	}
	list := rt.rules[rule.Family]
	i := slices.IndexFunc(list, func(have netlink.Rule) bool {
		return (rule.Priority < 0 || have.Priority == rule.Priority) &&
			(rule.Table == 0 || have.Table == rule.Table) &&
			(rule.Mark == 0 || have.Mark == rule.Mark) &&
			(ruleMask(*rule) == 0 || ruleMask(have) == ruleMask(*rule)) &&
			(rule.Protocol == 0 || have.Protocol == rule.Protocol)
	})
	if i < 0 {
		return unix.ENOENT
	}
	rt.rules[rule.Family] = slices.Delete(list, i, i+1)
	return nil
}

func (rt *fakeRouting) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if err := rt.check("RouteList", family); err != nil {
		return nil, err
	}
	var out []netlink.Route
	for _, r := range rt.routes[family] {
		if mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != 0 && r.Table != filter.Table {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func sameDst(a, b *net.IPNet) bool {
	norm := func(n *net.IPNet) string {
		if n == nil {
			return "default"
		}
		if ones, _ := n.Mask.Size(); ones == 0 {
			return "default"
		}
		return n.String()
	}
	return norm(a) == norm(b)
}

func (rt *fakeRouting) RouteAdd(route *netlink.Route) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	r := *route
	if r.Family == 0 {
		r.Family = netlink.FAMILY_V4
		if r.Dst != nil && r.Dst.IP.To4() == nil {
			r.Family = netlink.FAMILY_V6
		}
	}
	if err := rt.check("RouteAdd", r.Family); err != nil {
		return err
	}
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	if r.Family == netlink.FAMILY_V6 {
		if r.Priority == 0 {
			r.Priority = 1024
		}
		if r.Type != unix.RTN_UNICAST && r.Type != unix.RTN_LOCAL && r.LinkIndex == 0 {
			r.LinkIndex = loIndex
		}
	}
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			r.Dst = nil // a dump has no RTA_DST for a default route
		}
	}
	for _, have := range rt.routes[r.Family] {
		if have.Table == r.Table && sameDst(have.Dst, r.Dst) && have.Priority == r.Priority && have.Tos == r.Tos {
			return unix.EEXIST
		}
	}
	rt.routes[r.Family] = append(rt.routes[r.Family], r)
	return nil
}

func (rt *fakeRouting) RouteDel(route *netlink.Route) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	fam := route.Family
	if fam == 0 {
		fam = netlink.FAMILY_V4
		if route.Dst != nil && route.Dst.IP.To4() == nil {
			fam = netlink.FAMILY_V6
		}
	}
	if err := rt.check("RouteDel", fam); err != nil {
		return err
	}
	table := route.Table
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	list := rt.routes[fam]
	i := slices.IndexFunc(list, func(have netlink.Route) bool {
		return have.Table == table && sameDst(have.Dst, route.Dst) &&
			(route.Type == 0 || have.Type == route.Type) &&
			(route.Protocol == 0 || have.Protocol == route.Protocol) &&
			(route.Priority == 0 || have.Priority == route.Priority) &&
			(route.LinkIndex == 0 || have.LinkIndex == route.LinkIndex)
	})
	if i < 0 {
		return unix.ESRCH
	}
	rt.routes[fam] = slices.Delete(list, i, i+1)
	return nil
}

// RouteGetWithOptions looks dst up as the kernel's FIB does for what the
// tests have: the rules in order of priority, each matching the options'
// mark under its mask (a rule without one matches everything), and in
// each rule's table the route with the longest prefix holding dst. The
// local table is empty here (the fake knows no local addresses).
func (rt *fakeRouting) RouteGetWithOptions(dst net.IP, o *netlink.RouteGetOptions) ([]netlink.Route, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	fam := netlink.FAMILY_V4
	if dst.To4() == nil {
		fam = netlink.FAMILY_V6
	}
	if err := rt.check("RouteGet", fam); err != nil {
		return nil, err
	}
	for _, rule := range rt.rules[fam] {
		if m := ruleMask(rule); m != 0 && o.Mark&m != rule.Mark {
			continue
		}
		best, bits := -1, -1
		for i, r := range rt.routes[fam] {
			n := 0
			if r.Dst != nil {
				if !r.Dst.Contains(dst) {
					continue
				}
				n, _ = r.Dst.Mask.Size()
			}
			if r.Table == rule.Table && n > bits {
				best, bits = i, n
			}
		}
		if best >= 0 {
			found := rt.routes[fam][best]
			found.Dst = &net.IPNet{IP: dst, Mask: net.CIDRMask(len(dst)*8, len(dst)*8)}
			return []netlink.Route{found}, nil
		}
	}
	return nil, unix.ENETUNREACH
}

func (rt *fakeRouting) Close() {}

// ipRule prints family f's rules as `ip rule` does, for the cases the
// tests have.
func (rt *fakeRouting) ipRule(f family) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var b strings.Builder
	for _, r := range rt.rules[f.nl()] {
		fmt.Fprintf(&b, "%d:\tfrom all", r.Priority)
		if m := ruleMask(r); r.Mark != 0 || m != 0 {
			fmt.Fprintf(&b, " fwmark 0x%x", r.Mark)
			if m != 0xffffffff {
				fmt.Fprintf(&b, "/0x%x", m)
			}
		}
		table := map[int]string{unix.RT_TABLE_LOCAL: "local", unix.RT_TABLE_MAIN: "main", unix.RT_TABLE_DEFAULT: "default"}[r.Table]
		if table == "" {
			table = fmt.Sprint(r.Table)
		}
		b.WriteString(" lookup " + table)
		if r.Protocol != 0 && r.Protocol != unix.RTPROT_KERNEL {
			fmt.Fprintf(&b, " proto %d", r.Protocol)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ipRoute prints family f's routes in table as `ip route show table`
// does, for the route types the tests have, in its order (IPv4 by
// destination; IPv6 with the default route last).
func (rt *fakeRouting) ipRoute(f family, table int) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var rs []netlink.Route
	for _, r := range rt.routes[f.nl()] {
		if r.Table == table {
			rs = append(rs, r)
		}
	}
	key := func(r netlink.Route) string {
		if r.Dst == nil {
			if f == ipv6 {
				return "~"
			}
			return ""
		}
		return r.Dst.String()
	}
	slices.SortStableFunc(rs, func(a, b netlink.Route) int { return strings.Compare(key(a), key(b)) })
	var b strings.Builder
	for _, r := range rs {
		kind := map[int]string{unix.RTN_LOCAL: "local ", unix.RTN_BLACKHOLE: "blackhole ", unix.RTN_UNREACHABLE: "unreachable "}[r.Type]
		dst := "default"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		b.WriteString(kind + dst)
		if r.LinkIndex == loIndex {
			b.WriteString(" dev lo")
		}
		if r.Protocol != 0 && r.Protocol != unix.RTPROT_BOOT {
			fmt.Fprintf(&b, " proto %d", r.Protocol)
		}
		if f == ipv4 && r.Scope == netlink.SCOPE_HOST {
			b.WriteString(" scope host")
		}
		if f == ipv6 {
			fmt.Fprintf(&b, " metric %d pref medium", r.Priority)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// fakes is one fake host: its iptables binaries and its routing.
type fakes struct {
	x  *xtables.Fake
	rt *fakeRouting
}

func newFakes() *fakes { return &fakes{x: xtables.NewFake(), rt: newFakeRouting()} }

func (k *fakes) kernel() kernel {
	return kernel{tables: k.x.Open, routing: func() (router, error) { return k.rt, nil }}
}

func (k *fakes) install(t *testing.T, c Config) *Rules {
	t.Helper()
	if c.Logger == nil {
		c.Logger = zaptest.NewLogger(t)
	}
	r, err := installOn(context.Background(), c, k.kernel())
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	return r
}

func (k *fakes) run(t *testing.T, f family, args ...string) {
	t.Helper()
	if _, err := k.x.Run(f.x(), args...); err != nil {
		t.Fatalf("%s %q: %v", f, args, err)
	}
}

func (k *fakes) addRule(t *testing.T, f family, pref int, mark, mask uint32, table int, proto uint8) {
	t.Helper()
	r := netlink.NewRule()
	r.Family, r.Priority, r.Mark, r.Mask, r.Table, r.Protocol = f.nl(), pref, mark, &mask, table, proto
	if err := k.rt.RuleAdd(r); err != nil {
		t.Fatal(err)
	}
}

func (k *fakes) addRoute(t *testing.T, f family, typ int, dst string, table int, proto netlink.RouteProtocol) {
	t.Helper()
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.rt.RouteAdd(&netlink.Route{Family: f.nl(), Type: typ, Dst: n, Table: table, Protocol: proto}); err != nil {
		t.Fatal(err)
	}
}

// hostRuleset is intercept_linux_test.go's hostRuleset on the fakes.
func (k *fakes) hostRuleset(t *testing.T) {
	t.Helper()
	for _, a := range fams {
		k.run(t, a.f, "-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", a.dnatTo)
		k.run(t, a.f, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
		k.run(t, a.f, "-t", "mangle", "-A", "PREROUTING", "-i", "wan0", "-j", "MARK", "--set-xmark", "0x100/0x100")
		k.run(t, a.f, "-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS", "--clamp-mss-to-pmtu")
		k.addRule(t, a.f, -1, 0x100, 0x100, 200, 0)
		k.addRoute(t, a.f, unix.RTN_BLACKHOLE, a.blackhole, 200, unix.RTPROT_BOOT)
	}
}

// state is intercept_linux_test.go's state of one family, of the fakes.
func (k *fakes) state(a fam, table int) string {
	s := "# nat\n" + strings.Join(k.x.Rules(a.f.x(), "nat"), "\n") + "\n" +
		"# mangle\n" + strings.Join(k.x.Rules(a.f.x(), "mangle"), "\n") + "\n" +
		"# ip rule\n" + k.rt.ipRule(a.f) +
		fmt.Sprintf("# ip route show table %d\n", table) + k.rt.ipRoute(a.f, table)
	return s
}

// snapshot is everything of the fakes: every table of both families, and
// every rule and route.
func (k *fakes) snapshot() string {
	var b strings.Builder
	for _, a := range fams {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			b.WriteString(strings.Join(k.x.Rules(a.f.x(), table), "\n") + "\n")
		}
		b.WriteString(k.rt.ipRule(a.f))
		k.rt.mu.Lock()
		for _, r := range k.rt.routes[a.f.nl()] {
			fmt.Fprintf(&b, "%+v\n", r)
		}
		k.rt.mu.Unlock()
	}
	return b.String()
}

func (k *fakes) check(t *testing.T, want func(fam) expect) {
	t.Helper()
	for _, a := range fams {
		if got, want := k.state(a, 100), want(a).String(a); got != want {
			t.Errorf("%s state:\n%s\nwant:\n%s", a.f, got, want)
		}
	}
}

// TestFakeInstallExact is TestInstallExact on the fakes: each scenario on
// a router's own ruleset gives exactly the expected chains, hooks, policy
// rules and routes per family; a second Install changes nothing (and
// runs no iptables command that changes anything); Remove restores
// everything, and a second Remove is fine.
func TestFakeInstallExact(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			k := newFakes()
			k.hostRuleset(t)
			before := k.snapshot()
			c := withSelectors(sc.c, "")

			r := k.install(t, c)
			k.check(t, sc.want)
			if r.changes == 0 {
				t.Error("first Install reports no changes")
			}
			again := k.install(t, c)
			if again.changes != 0 {
				t.Errorf("second Install made %d changes, want none", again.changes)
			}
			k.check(t, sc.want)

			if err := r.Remove(context.Background()); err != nil {
				t.Fatal(err)
			}
			if after := k.snapshot(); after != before {
				t.Errorf("Remove left:\n%s\nbefore:\n%s", after, before)
			}
			if err := r.Remove(context.Background()); err != nil {
				t.Errorf("Remove again: %v", err)
			}
		})
	}
}

// TestFakeLeftovers is TestLeftovers on the fakes: a crashed run with
// another configuration left its chain with other rules, duplicate and
// old-style hooks, the other method's chain and hook, stale policy rules,
// duplicates of ours and a stale route of ours, next to the host's own
// rule and route in table 100. Install reconciles to exactly its own state
// and leaves the host's; Cleanup without an Install removes all of ours.
func TestFakeLeftovers(t *testing.T) {
	k := newFakes()
	k.hostRuleset(t)
	for _, a := range fams {
		k.addRule(t, a.f, 1000, 0x8, 0x8, 100, 0)
		k.addRoute(t, a.f, unix.RTN_BLACKHOLE, a.stale, 100, unix.RTPROT_BOOT)
	}
	clean := k.snapshot()
	for _, a := range fams {
		for _, args := range [][]string{
			{"-t", "nat", "-N", "FTPALG-REDIRECT"},
			{"-t", "nat", "-A", "FTPALG-REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "9999"},
			{"-t", "nat", "-A", "PREROUTING", "-s", lanOf(a).String(), "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT"},
			{"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT"},
			{"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT"},
			{"-t", "mangle", "-N", "FTPALG-TPROXY"},
			{"-t", "mangle", "-A", "FTPALG-TPROXY", "-p", "tcp", "-j", "TPROXY", "--on-port", "9999", "--tproxy-mark", "0x1/0x1"},
			{"-t", "mangle", "-I", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-TPROXY"},
			{"-t", "mangle", "-N", "FTPALG-DIVERT"},
			{"-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-j", "FTPALG-DIVERT"},
		} {
			k.run(t, a.f, args...)
		}
		k.addRule(t, a.f, -1, 0x2, 0x2, 100, RouteProtocol)
		k.addRule(t, a.f, -1, 0x1, 0x1, 100, RouteProtocol)
		k.addRule(t, a.f, 900, 0x1, 0x1, 100, RouteProtocol)
		k.addRoute(t, a.f, unix.RTN_UNREACHABLE, a.blackhole, 100, RouteProtocol)
	}
	c := withSelectors(Config{Mode: nat.ModeRedirect, ListenPort: 2121, Divert: true}, "")
	k.install(t, c)
	k.check(t, func(a fam) expect {
		want := scenarios[1].want(a)
		want.rules = []string{"900:\tfrom all fwmark 0x1/0x1 lookup 100 proto 70",
			"1000:\tfrom all fwmark 0x8/0x8 lookup 100", hostRule}
		blackhole := "blackhole " + a.stale
		if a.f == ipv6 {
			blackhole += " dev lo metric 1024 pref medium"
		}
		want.routes = sortRoutes(a, blackhole, localRoute(a))
		return want
	})
	if again := k.install(t, c); again.changes != 0 {
		t.Errorf("Install after reconciling made %d changes, want none", again.changes)
	}
	if err := cleanupOn(context.Background(), Config{Logger: zaptest.NewLogger(t)}, k.kernel()); err != nil {
		t.Fatal(err)
	}
	if after := k.snapshot(); after != clean {
		t.Errorf("Cleanup left:\n%s\nwant:\n%s", after, clean)
	}
}

// TestFakeHookMovedDown: an operator who moved our hook below their own
// rule keeps it there; an extra copy of it makes Install put one at the
// top again.
func TestFakeHookMovedDown(t *testing.T) {
	k := newFakes()
	c := Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4}, ListenPort: 2121}
	k.install(t, c)
	hook := []string{"-p", "tcp", "-m", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT"}
	k.run(t, ipv4, append([]string{"-t", "nat", "-D", "PREROUTING"}, hook...)...)
	k.run(t, ipv4, "-t", "nat", "-A", "PREROUTING", "-s", "198.51.100.99", "-j", "RETURN")
	k.run(t, ipv4, append([]string{"-t", "nat", "-A", "PREROUTING"}, hook...)...)
	moved := k.x.Rules(xtables.IPv4, "nat")
	if again := k.install(t, c); again.changes != 0 || !slices.Equal(k.x.Rules(xtables.IPv4, "nat"), moved) {
		t.Errorf("Install with the hook moved down made %d changes:\n%s", again.changes, strings.Join(k.x.Rules(xtables.IPv4, "nat"), "\n"))
	}
	k.run(t, ipv4, append([]string{"-t", "nat", "-A", "PREROUTING"}, hook...)...)
	k.install(t, c)
	pre := slices.DeleteFunc(k.x.Rules(xtables.IPv4, "nat"), func(l string) bool { return !strings.HasPrefix(l, "-A PREROUTING") })
	want := []string{"-A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT", "-A PREROUTING -s 198.51.100.99/32 -j RETURN"}
	if !slices.Equal(pre, want) {
		t.Errorf("PREROUTING after Install on a duplicated hook:\n%s\nwant:\n%s", strings.Join(pre, "\n"), strings.Join(want, "\n"))
	}
}

// TestFakeFamiliesFollowSources is TestFamiliesFollowSources on the fakes:
// IPv6 sources only touch IPv6; an IPv4 Install later removes the IPv6
// leftovers.
func TestFakeFamiliesFollowSources(t *testing.T) {
	k := newFakes()
	k.hostRuleset(t)
	v4 := func() string {
		return strings.Join(k.x.Rules(xtables.IPv4, "nat"), "\n") + strings.Join(k.x.Rules(xtables.IPv4, "mangle"), "\n") + k.rt.ipRule(ipv4)
	}
	before4 := v4()
	k.install(t, Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan6}, ListenPort: 2121})
	if after := v4(); after != before4 {
		t.Errorf("IPv6-only Install changed IPv4:\n%s", after)
	}
	if s := strings.Join(k.x.Rules(xtables.IPv6, "mangle"), "\n"); !strings.Contains(s, "-N FTPALG-TPROXY") {
		t.Fatalf("IPv6-only Install: no FTPALG-TPROXY:\n%s", s)
	}
	k.install(t, Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4}, ListenPort: 2121})
	if s := strings.Join(k.x.Rules(xtables.IPv6, "mangle"), "\n") + k.rt.ipRule(ipv6); strings.Contains(s, "FTPALG") || strings.Contains(s, "proto 70") {
		t.Errorf("IPv4-only Install left the IPv6 leftovers:\n%s", s)
	}
}

// TestFakeInstances is TestInstances on the fakes: two instances with
// their own names, marks and tables; removing one leaves the other
// exactly as it was.
func TestFakeInstances(t *testing.T) {
	k := newFakes()
	k.hostRuleset(t)
	before := k.snapshot()
	ca := Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121, Divert: true, Instance: "a"}
	a := k.install(t, ca)
	withA := k.snapshot()
	b := k.install(t, Config{Mode: nat.ModeTProxy, Interfaces: []string{"lan1"}, ListenPort: 2122, Divert: true,
		Mark: 0x2, Table: 101, Instance: "b"})
	if again := k.install(t, ca); again.changes != 0 {
		t.Errorf("instance a's second Install with b present made %d changes", again.changes)
	}
	if err := b.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := k.snapshot(); got != withA {
		t.Errorf("removing b changed a's state:\n%s\nwant:\n%s", got, withA)
	}
	if err := a.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := k.snapshot(); got != before {
		t.Errorf("after both Removes:\n%s\nwant:\n%s", got, before)
	}
}

// TestFakeFailureRollsBack is TestFailureRollsBack on the fakes: with
// routing table 100 taken for IPv6 (a default route that is not a local
// one), an Install with an IPv6 source fails naming the table and leaves
// nothing; with only interfaces it installs IPv4 alone.
func TestFakeFailureRollsBack(t *testing.T) {
	k := newFakes()
	k.hostRuleset(t)
	k.addRoute(t, ipv6, unix.RTN_UNREACHABLE, "::/0", 100, unix.RTPROT_BOOT)
	before := k.snapshot()
	c := Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121, Logger: zaptest.NewLogger(t)}
	_, err := installOn(context.Background(), c, k.kernel())
	if err == nil || !strings.Contains(err.Error(), "routing table 100") || !strings.Contains(err.Error(), "install ipv6") {
		t.Fatalf("Install with table 100 taken for IPv6: %v", err)
	}
	if after := k.snapshot(); after != before {
		t.Errorf("a failed Install left:\n%s\nbefore:\n%s", after, before)
	}
	c.Sources, c.Interfaces = nil, []string{"lan0"}
	r := k.install(t, c)
	if !slices.Equal(r.fams, []family{ipv4}) {
		t.Errorf("interfaces-only Install with IPv6 unusable set up %v, want IPv4 only", r.fams)
	}
	if s := strings.Join(k.x.Rules(xtables.IPv6, "mangle"), "\n") + k.rt.ipRule(ipv6); strings.Contains(s, "FTPALG") || strings.Contains(s, "proto 70") {
		t.Errorf("IPv6 remains after its failure:\n%s", s)
	}
}

// TestFakeUnsupported: a kernel without the TPROXY target (iptables says
// "Couldn't load target") fails Install with ErrUnsupported and the
// modules to load, and rolls back; without ip6tables at all, an Install
// without IPv6 sources goes on with IPv4, and one with them fails.
func TestFakeUnsupported(t *testing.T) {
	k := newFakes()
	k.hostRuleset(t)
	before := k.snapshot()
	k.x.Fail = func(f xtables.Family, args []string) error {
		if slices.Contains(args, "TPROXY") && slices.Contains(args, "-A") {
			return &xtables.Exit{Status: 2, Msg: "iptables v1.8.9 (nf_tables): Couldn't load target `TPROXY':No such file or directory\n\nTry `iptables -h' or 'iptables --help' for more information.\n"}
		}
		return nil
	}
	_, err := installOn(context.Background(), Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan4}, ListenPort: 2121,
		Divert: true, Logger: zaptest.NewLogger(t)}, k.kernel())
	if !errors.Is(err, rules.ErrUnsupported) || !strings.Contains(err.Error(), "TPROXY target") {
		t.Errorf("Install without TPROXY: %v, want ErrUnsupported naming the TPROXY modules", err)
	}
	if after := k.snapshot(); after != before {
		t.Errorf("a failed Install left:\n%s\nbefore:\n%s", after, before)
	}

	k.x.Fail = func(f xtables.Family, args []string) error {
		if f == xtables.IPv6 {
			return &exec.Error{Name: "ip6tables", Err: exec.ErrNotFound}
		}
		return nil
	}
	r := k.install(t, Config{Mode: nat.ModeRedirect, Interfaces: []string{"lan0"}, ListenPort: 2121})
	if !slices.Equal(r.fams, []family{ipv4}) {
		t.Errorf("without ip6tables Install set up %v, want IPv4 only", r.fams)
	}
	_, err = installOn(context.Background(), Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan6}, ListenPort: 2121,
		Logger: zaptest.NewLogger(t)}, k.kernel())
	if !errors.Is(err, rules.ErrUnsupported) {
		t.Errorf("Install with an IPv6 source and no ip6tables: %v, want ErrUnsupported", err)
	}
	if err := r.Remove(context.Background()); err != nil {
		t.Errorf("Remove: %v", err)
	}
	if err := cleanupOn(context.Background(), Config{}, k.kernel()); err != nil {
		t.Errorf("Cleanup without ip6tables: %v", err)
	}
}

// TestFakeNoIPv6: a kernel without IPv6 (netlink says EAFNOSUPPORT) makes
// a divert-only Install IPv4 only, and Cleanup succeeds.
func TestFakeNoIPv6(t *testing.T) {
	k := newFakes()
	k.rt.no6 = true
	r := k.install(t, Config{Divert: true})
	if !slices.Equal(r.fams, []family{ipv4}) {
		t.Errorf("Install on a kernel without IPv6 set up %v, want IPv4 only", r.fams)
	}
	if err := cleanupOn(context.Background(), Config{}, k.kernel()); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
}

// TestFakeNotPermitted: without CAP_NET_ADMIN, iptables (Redirect) or
// netlink (the divert's policy routing) fails first; either way Install
// is ErrNotPermitted with the hint, and nothing is left.
func TestFakeNotPermitted(t *testing.T) {
	for _, c := range []Config{
		{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4}, ListenPort: 2121},
		{Divert: true},
	} {
		k := newFakes()
		before := k.snapshot()
		k.x.Fail = func(f xtables.Family, args []string) error {
			if args[0] == "--version" {
				return nil
			}
			return &xtables.Exit{Status: 4, Msg: "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"}
		}
		k.rt.fail = func(op string, _ int) error {
			if strings.HasSuffix(op, "List") {
				return nil
			}
			return unix.EPERM
		}
		_, err := installOn(context.Background(), c, k.kernel())
		if !errors.Is(err, rules.ErrNotPermitted) || !strings.Contains(err.Error(), rules.HintNotPermitted) {
			t.Errorf("Install(%+v) without CAP_NET_ADMIN: %v", c, err)
		}
		if after := k.snapshot(); after != before {
			t.Errorf("a failed Install left:\n%s", after)
		}
	}
}
