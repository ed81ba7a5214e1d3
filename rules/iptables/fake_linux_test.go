package iptables

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// The tests in this file run without root: the backend runs against an
// xtables.Fake (held to the real binaries by xtables'
// TestFakeMatchesIptables), and the assertions are on the fake's tables as
// `iptables -S` would print them.

// onFake returns a backend whose iptables binaries are x's.
func onFake(t *testing.T, x *xtables.Fake, opts rules.Options) *Backend {
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	b := New(opts)
	b.newTables = x.Open
	return b
}

// fakeConfig runs the conformance suite's state tests on the fake.
func fakeConfig() backendtest.Config {
	return backendtest.Config{
		Fake: func(testing.TB) func(rules.Options) rules.Backend {
			x := xtables.NewFake()
			return func(o rules.Options) rules.Backend {
				b := New(o)
				b.newTables = x.Open
				return b
			}
		},
	}
}

func TestFakeErrors(t *testing.T)     { backendtest.Errors(t, fakeConfig()) }
func TestFakeListFlush(t *testing.T)  { backendtest.ListFlush(t, fakeConfig()) }
func TestFakeReopen(t *testing.T)     { backendtest.Reopen(t, fakeConfig()) }
func TestFakeLifecycle(t *testing.T)  { backendtest.Lifecycle(t, fakeConfig()) }
func TestFakeConcurrent(t *testing.T) { backendtest.Concurrent(t, fakeConfig(), 200) }

// hostRules is a default-DROP host's filter table, in both families,
// before ftpalg: what Teardown must give back exactly.
var hostRules = [][]string{
	{"-P", "INPUT", "DROP"},
	{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
	{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
	{"-A", "FORWARD", "-j", "DROP"},
}

func withHost(t *testing.T) *xtables.Fake {
	x := xtables.NewFake()
	for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
		for _, r := range hostRules {
			if _, err := x.Run(f, r...); err != nil {
				t.Fatal(err)
			}
		}
	}
	return x
}

// filterWith is the host's filter table with ours (chains sorted, hooks at
// the top) and then the given rules of FTPALG-INPUT.
func filterWith(sfx string, pinholes ...string) []string {
	in, fwd := "FTPALG-INPUT"+sfx, "FTPALG-FORWARD"+sfx
	hook := "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j "
	out := []string{"-P INPUT DROP", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-N " + fwd, "-N " + in,
		"-A INPUT " + hook + in,
		"-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
		"-A FORWARD " + hook + fwd,
		"-A FORWARD -j DROP"}
	for _, p := range pinholes {
		out = append(out, "-A "+in+" "+p)
	}
	return out
}

var hostOnly = []string{"-P INPUT DROP", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT",
	"-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A FORWARD -j DROP"}

func checkFake(t *testing.T, x *xtables.Fake, f xtables.Family, want []string) {
	t.Helper()
	if got := x.Rules(f, "filter"); !slices.Equal(got, want) {
		t.Errorf("%s filter:\n%s\nwant:\n%s", f, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func do(t *testing.T, what string, f func(context.Context) error) {
	t.Helper()
	if err := f(context.Background()); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

const (
	rule4 = `-s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment "ftpalg session 5" -j ACCEPT`
	rule6 = `-s 2001:db8::2/128 -d 2001:db8::1/128 -p tcp -m tcp --dport 50001 -m comment --comment "ftpalg session 6" -j ACCEPT`
)

var (
	p4 = backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 5, 30*time.Second)
	p6 = backendtest.Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50001, 6, 30*time.Second)
)

// TestFakeSetupOpenCloseTeardown: on a default-DROP host, Setup hooks our
// chains at the top of INPUT and FORWARD, Open appends exactly one rule
// per pinhole (a second Open of p4 adds none and keeps its rule), Close
// deletes it, and Teardown gives back the host's table exactly; a second
// Teardown finds nothing to do.
func TestFakeSetupOpenCloseTeardown(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	checkFake(t, x, xtables.IPv4, filterWith(""))
	checkFake(t, x, xtables.IPv6, filterWith(""))

	again := p4
	again.Session = 8
	for _, p := range []rules.Pinhole{p4, p6, again} {
		do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
	}
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
	checkFake(t, x, xtables.IPv6, filterWith("", rule6))
	got, err := b.List(context.Background())
	if err != nil || len(got) != 2 || got[0] != withoutLifetime(p4) || got[1] != withoutLifetime(p6) {
		t.Errorf("List = %v, %v; want p4 (its first session) and p6 without lifetimes", got, err)
	}

	for _, p := range []rules.Pinhole{p4, p6} {
		do(t, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
		do(t, "Close again", func(ctx context.Context) error { return b.Close(ctx, p) })
	}
	checkFake(t, x, xtables.IPv4, filterWith(""))

	do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p4) })
	do(t, "Teardown", b.Teardown)
	checkFake(t, x, xtables.IPv4, hostOnly)
	checkFake(t, x, xtables.IPv6, hostOnly)
	do(t, "Teardown again", b.Teardown)
	do(t, "Teardown without Setup", onFake(t, x, rules.Options{}).Teardown)
	checkFake(t, x, xtables.IPv4, hostOnly)
}

func withoutLifetime(p rules.Pinhole) rules.Pinhole { p.Lifetime = 0; return p }

// withForward adds rules of FTPALG-FORWARD to a filterWith listing, where
// `iptables -S` prints them: after the built-in chains' rules, before
// FTPALG-INPUT's (chains in name order).
func withForward(filter []string, rules ...string) []string {
	i := slices.IndexFunc(filter, func(l string) bool { return strings.HasPrefix(l, "-A FTPALG-INPUT") })
	if i < 0 {
		i = len(filter)
	}
	var fwd []string
	for _, r := range rules {
		fwd = append(fwd, "-A FTPALG-FORWARD "+r)
	}
	return slices.Concat(filter[:i], fwd, filter[i:])
}

// TestFakeForwardPinhole: a Forward pinhole (the kernel data path's, for
// the connection after its DNAT) is a rule in FTPALG-FORWARD, not in
// FTPALG-INPUT; an input pinhole of the same tuple is another rule, List
// tells them apart, Close removes each from its own chain, and Flush
// empties both chains.
func TestFakeForwardPinhole(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	fwd := p4
	fwd.Forward = true
	for _, p := range []rules.Pinhole{fwd, p4, fwd} {
		do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
	}
	checkFake(t, x, xtables.IPv4, withForward(filterWith("", rule4), rule4))
	got, err := b.List(context.Background())
	if err != nil || len(got) != 2 || got[0].Forward == got[1].Forward || got[0].Key().Local != p4.Local {
		t.Errorf("List = %v, %v; want the input and the Forward pinhole of one tuple", got, err)
	}
	// Opened twice: the first Close releases one hold, the second removes it.
	do(t, "Close Forward", func(ctx context.Context) error { return b.Close(ctx, fwd) })
	checkFake(t, x, xtables.IPv4, withForward(filterWith("", rule4), rule4))
	do(t, "Close Forward again", func(ctx context.Context) error { return b.Close(ctx, fwd) })
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
	do(t, "Open Forward", func(ctx context.Context) error { return b.Open(ctx, fwd) })
	do(t, "Close input", func(ctx context.Context) error { return b.Close(ctx, p4) })
	checkFake(t, x, xtables.IPv4, withForward(filterWith(""), rule4))
	do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p4) })
	do(t, "Flush", b.Flush)
	checkFake(t, x, xtables.IPv4, filterWith(""))
}

// TestFakeLeftovers: what a crashed run (and an older version) left — a
// pinhole rule, old-style hooks twice, a stale FORWARD chain with a rule,
// a duplicated hook around the host's rules — is reconciled by Setup to
// exactly our state, in both families; a second Setup changes nothing.
func TestFakeLeftovers(t *testing.T) {
	x := withHost(t)
	for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
		src := "198.51.100.7"
		if f == xtables.IPv6 {
			src = "2001:db8:ff::7"
		}
		for _, r := range [][]string{
			{"-N", "FTPALG-INPUT"},
			{"-A", "FTPALG-INPUT", "-s", src, "-p", "tcp", "--dport", "50000", "-m", "comment", "--comment", "ftpalg session 1", "-j", "ACCEPT"},
			{"-A", "INPUT", "-j", "FTPALG-INPUT"},
			{"-A", "INPUT", "-j", "FTPALG-INPUT"},
			{"-N", "FTPALG-FORWARD"},
			{"-A", "FTPALG-FORWARD", "-j", "DROP"},
			{"-I", "FORWARD", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-FORWARD"},
			{"-A", "FORWARD", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-FORWARD"},
		} {
			if _, err := x.Run(f, r...); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	checkFake(t, x, xtables.IPv4, filterWith(""))
	checkFake(t, x, xtables.IPv6, filterWith(""))
	if got, err := b.List(context.Background()); err != nil || len(got) != 0 {
		t.Errorf("List after Setup = %v, %v; want the crashed run's pinhole gone", got, err)
	}
	do(t, "Setup again", b.Setup)
	checkFake(t, x, xtables.IPv4, filterWith(""))
	checkFake(t, x, xtables.IPv6, filterWith(""))
}

// TestFakeKeepHooksAndInstances: with KeepHooks, Teardown removes only the
// pinholes, and the next run reuses the hooks without adding any; another
// instance keeps its chains, hooks and pinholes through both.
func TestFakeKeepHooksAndInstances(t *testing.T) {
	x := withHost(t)
	web := onFake(t, x, rules.Options{Instance: "web"})
	do(t, "Setup web", web.Setup)
	pw := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50009, 9, time.Minute)
	do(t, "Open web", func(ctx context.Context) error { return web.Open(ctx, pw) })
	ruleWeb := `-s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50009 -m comment --comment "ftpalg session 9" -j ACCEPT`
	webOnly := filterWith("-web", ruleWeb)

	opts := rules.Options{KeepHooks: true}
	for run := range 2 {
		b := onFake(t, x, opts)
		do(t, "Setup", b.Setup)
		do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p4) })
		do(t, "Teardown", b.Teardown)
		// ours stay, empty, above web's (Setup inserted them at the top
		// after web's)
		got := x.Rules(xtables.IPv4, "filter")
		want := []string{"-P INPUT DROP", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT",
			"-N FTPALG-FORWARD", "-N FTPALG-FORWARD-web", "-N FTPALG-INPUT", "-N FTPALG-INPUT-web",
			"-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-INPUT",
			"-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-INPUT-web",
			"-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A FORWARD -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-FORWARD",
			"-A FORWARD -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-FORWARD-web",
			"-A FORWARD -j DROP",
			"-A FTPALG-INPUT-web " + ruleWeb}
		if !slices.Equal(got, want) {
			t.Errorf("run %d, after a KeepHooks Teardown:\n%s\nwant:\n%s", run, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	do(t, "Teardown", onFake(t, x, rules.Options{}).Teardown)
	checkFake(t, x, xtables.IPv4, webOnly)
	if got, err := web.List(context.Background()); err != nil || len(got) != 1 || got[0].Session != 9 {
		t.Errorf("web's List = %v, %v", got, err)
	}
}

// TestFakeFlushBehindOurBack: after `ftpalg rules flush` (another process
// flushing the chain), Open of a pinhole this process still counts as open
// adds its rule again, and Close of a flushed one is fine.
func TestFakeFlushBehindOurBack(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p4) })
	do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p6) })
	do(t, "Flush from another process", onFake(t, x, rules.Options{}).Flush)
	checkFake(t, x, xtables.IPv4, filterWith(""))
	do(t, "Open again", func(ctx context.Context) error { return b.Open(ctx, p4) })
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
	do(t, "Close a flushed one", func(ctx context.Context) error { return b.Close(ctx, p6) })
	checkFake(t, x, xtables.IPv6, filterWith(""))
}

// TestFakeIPv6Unavailable: without ip6tables, or with an IPv6 table the
// kernel refuses, Setup sets up IPv4 alone (removing what it made of IPv6),
// IPv6 pinholes are ErrUnsupported with a hint, and Teardown succeeds.
func TestFakeIPv6Unavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(f xtables.Family, args []string) error
	}{
		{"no ip6tables", func(f xtables.Family, args []string) error {
			if f == xtables.IPv6 {
				return &exec.Error{Name: "ip6tables", Err: exec.ErrNotFound}
			}
			return nil
		}},
		{"hook refused", func(f xtables.Family, args []string) error {
			if f == xtables.IPv6 && slices.Contains(args, "FORWARD") && slices.Contains(args, "-I") {
				return &xtables.Exit{Status: 4, Msg: "ip6tables v1.8.9 (nf_tables):  RULE_INSERT failed (Operation not supported): rule in chain FORWARD\n"}
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := withHost(t)
			x.Fail = tc.fail
			b := onFake(t, x, rules.Options{})
			do(t, "Setup", b.Setup)
			checkFake(t, x, xtables.IPv4, filterWith(""))
			checkFake(t, x, xtables.IPv6, hostOnly)
			err := b.Open(context.Background(), p6)
			if !errors.Is(err, rules.ErrUnsupported) || !strings.Contains(err.Error(), "IPv6 pinholes are unavailable") {
				t.Errorf("Open(p6) = %v, want ErrUnsupported", err)
			}
			do(t, "Open p4", func(ctx context.Context) error { return b.Open(ctx, p4) })
			do(t, "Teardown", b.Teardown)
			checkFake(t, x, xtables.IPv4, hostOnly)
		})
	}
}

// TestFakeNotPermitted: the binary's "Permission denied" makes Setup fail
// with ErrNotPermitted and the hint, naming the backend and the step.
func TestFakeNotPermitted(t *testing.T) {
	x := xtables.NewFake()
	x.Fail = func(f xtables.Family, args []string) error {
		if args[0] == "--version" {
			return nil
		}
		return &xtables.Exit{Status: 4, Msg: "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"}
	}
	err := onFake(t, x, rules.Options{}).Setup(context.Background())
	if !errors.Is(err, rules.ErrNotPermitted) || !strings.Contains(err.Error(), rules.HintNotPermitted) ||
		!strings.HasPrefix(err.Error(), "rules/iptables: setup: chain FTPALG-INPUT: ") {
		t.Errorf("Setup = %v; want ErrNotPermitted naming the step", err)
	}
}
