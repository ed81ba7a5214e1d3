package intercept

import (
	"context"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// reload does to the fakes what a firewall reload and a network manager
// rewriting the policy routing do: iptables-restore of the host's nat and
// mangle tables (hostRuleset's, none of ours) in both families, each at
// once, and our ip rules and routes deleted (`ip rule del`, `ip route
// flush table 100`); the host's own rule and route stay.
func (k *fakes) reload(t *testing.T) {
	t.Helper()
	for _, a := range fams {
		if err := k.x.Restore(a.f.x(), "nat",
			[]string{"-A", "PREROUTING", "-i", "wan0", "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", a.dnatTo},
			[]string{"-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"}); err != nil {
			t.Fatal(err)
		}
		if err := k.x.Restore(a.f.x(), "mangle",
			[]string{"-A", "PREROUTING", "-i", "wan0", "-j", "MARK", "--set-xmark", "0x100/0x100"},
			[]string{"-A", "FORWARD", "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS", "--clamp-mss-to-pmtu"}); err != nil {
			t.Fatal(err)
		}
		k.rt.mu.Lock()
		var keep []netlink.Rule
		for _, r := range k.rt.rules[a.f.nl()] {
			if r.Protocol != RouteProtocol {
				keep = append(keep, r)
			}
		}
		k.rt.rules[a.f.nl()] = keep
		var routes []netlink.Route
		for _, rt := range k.rt.routes[a.f.nl()] {
			if rt.Table != DefaultTable {
				routes = append(routes, rt)
			}
		}
		k.rt.routes[a.f.nl()] = routes
		k.rt.mu.Unlock()
	}
}

func (k *fakes) sync(t *testing.T, r *Rules) rules.Restored {
	t.Helper()
	res, err := r.Sync(context.Background())
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// TestFakeSync: for each scenario on a router's own ruleset, a Sync of
// intact rules restores nothing and, on iptables-nft, runs no binary once
// it has seen the ruleset's generation (legacy: one listing per table
// with hooks, per family); after a reload that removed our chains, hooks,
// ip rules and routes, one Sync gives back exactly the state Install made,
// naming what it restored, and the next finds nothing; after Remove, Sync
// does nothing and Remove's result stands.
func TestFakeSync(t *testing.T) {
	for _, mode := range []string{"nf_tables", "legacy"} {
		for _, sc := range scenarios {
			t.Run(mode+"/"+sc.name, func(t *testing.T) {
				k := newFakes()
				k.x.Mode = mode
				k.hostRuleset(t)
				before := k.snapshot()
				c := withSelectors(sc.c, "")
				c.Logger = zaptest.NewLogger(t)
				r := k.install(t, c)

				hookTables := 0
				for _, tw := range r.c.want(ipv4) {
					if len(tw.hooks) > 0 {
						hookTables++
					}
				}
				want := map[string][]int{"nf_tables": {2 * hookTables, 0}, "legacy": {2 * hookTables, 2 * hookTables}}[mode]
				for i, n := range want {
					runs := k.x.Runs()
					if res := k.sync(t, r); !res.Empty() {
						t.Errorf("Sync #%d of intact rules restored %s", i+1, res)
					}
					if got := k.x.Runs() - runs; got != n {
						t.Errorf("Sync #%d of intact rules ran %d commands, want %d", i+1, got, n)
					}
				}

				k.reload(t)
				res := k.sync(t, r)
				k.check(t, sc.want)
				s := res.String()
				for _, w := range []string{"chain FTPALG-", "hook PREROUTING → FTPALG-"} {
					if !strings.Contains(s, w) {
						t.Errorf("Sync restored %q; want %q named", s, w)
					}
				}
				if r.c.routing() && (!strings.Contains(s, "ipv4 ip rule fwmark") || !strings.Contains(s, "ipv6 ip route local ::/0 dev lo table 100")) {
					t.Errorf("Sync restored %q; want the ip rules and routes named", s)
				}
				if res := k.sync(t, r); !res.Empty() {
					t.Errorf("Sync after the restore restored %s", res)
				}

				if err := r.Remove(context.Background()); err != nil {
					t.Fatal(err)
				}
				runs := k.x.Runs()
				if res := k.sync(t, r); !res.Empty() || k.x.Runs() != runs {
					t.Errorf("Sync after Remove: %s, %d commands", res, k.x.Runs()-runs)
				}
				if after := k.snapshot(); after != before {
					t.Errorf("after Remove and Sync:\n%s\nbefore:\n%s", after, before)
				}
			})
		}
	}
}

// TestFakeSyncRoutingOnly: `ip rule flush`-style damage alone (iptables
// untouched) is found by the route lookup and repaired, without touching
// the chains.
func TestFakeSyncRoutingOnly(t *testing.T) {
	k := newFakes()
	r := k.install(t, Config{Divert: true, Logger: zaptest.NewLogger(t)})
	nat4 := k.x.Rules(xtables.IPv4, "mangle")
	k.rt.mu.Lock()
	k.rt.rules[ipv6.nl()] = k.rt.rules[ipv6.nl()][:1] // only "lookup local" is left
	k.rt.mu.Unlock()
	res := k.sync(t, r)
	if got, want := res.String(), "ipv6 ip rule fwmark 0x1/0x1 lookup 100 proto 70"; got != want {
		t.Errorf("Sync restored %q, want %q", got, want)
	}
	if got := k.x.Rules(xtables.IPv4, "mangle"); strings.Join(got, "\n") != strings.Join(nat4, "\n") {
		t.Errorf("Sync changed mangle:\n%s", strings.Join(got, "\n"))
	}
}
