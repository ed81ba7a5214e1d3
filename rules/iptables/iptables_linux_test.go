package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

func config(variant string) backendtest.Config {
	return backendtest.Config{
		New:       func(o rules.Options) rules.Backend { return New(o) },
		Variant:   variant,
		PerThread: true,
	}
}

// each runs f once per installed iptables variant.
func each(t *testing.T, f func(t *testing.T, c backendtest.Config)) {
	for _, v := range nstest.Variants(t) {
		t.Run(v, func(t *testing.T) { f(t, config(v)) })
	}
}

// hookRules are the rules Setup adds to a fresh namespace, as `iptables -S`
// prints them, sorted, plus extra.
func hookRules(extra ...string) []string {
	r := append([]string{
		"-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT",
		"-N FTPALG-INPUT", "-N FTPALG-FORWARD",
		"-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-INPUT",
		"-A FORWARD -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-FORWARD",
	}, extra...)
	slices.Sort(r)
	return r
}

func checkRules(t *testing.T, ns *nstest.NS, fam, variant string, extra ...string) {
	t.Helper()
	got := ns.Rules(t, fam, variant)
	slices.Sort(got)
	if want := hookRules(extra...); !slices.Equal(got, want) {
		t.Errorf("%s -S:\n%s\nwant:\n%s", nstest.Cmd(fam, variant), strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSetupCreatesExactlyOurs(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		c.SetUp(t, ns, c.Options(t))
		checkRules(t, ns, "4", c.Variant)
		checkRules(t, ns, "6", c.Variant)
	})
}

func TestOpenCloseRule(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		b := c.SetUp(t, ns, c.Options(t))
		p4 := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 5, 30*time.Second)
		p6 := backendtest.Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50001, 6, 30*time.Second)
		for _, p := range []rules.Pinhole{p4, p6, p4} { // the second Open of p4 adds nothing
			backendtest.Do(t, ns, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
		}
		checkRules(t, ns, "4", c.Variant,
			`-A FTPALG-INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment "ftpalg session 5" -j ACCEPT`)
		checkRules(t, ns, "6", c.Variant,
			`-A FTPALG-INPUT -s 2001:db8::2/128 -d 2001:db8::1/128 -p tcp -m tcp --dport 50001 -m comment --comment "ftpalg session 6" -j ACCEPT`)
		for _, p := range []rules.Pinhole{p4, p6} {
			backendtest.Do(t, ns, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
			backendtest.Do(t, ns, "Close again", func(ctx context.Context) error { return b.Close(ctx, p) })
		}
		checkRules(t, ns, "4", c.Variant)
		checkRules(t, ns, "6", c.Variant)
	})
}

func TestSetupReconcilesLeftovers(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		for _, fam := range []string{"4", "6"} {
			ipt := nstest.Cmd(fam, c.Variant)
			src := "198.51.100.7"
			if fam == "6" {
				src = "2001:db8:ff::7"
			}
			// a crashed run's pinhole, an old-style hook twice, a stale FORWARD chain
			ns.Run(t, ipt, "-w", "-N", "FTPALG-INPUT")
			ns.Run(t, ipt, "-w", "-A", "FTPALG-INPUT", "-s", src, "-p", "tcp", "--dport", "50000",
				"-m", "comment", "--comment", "ftpalg session 1", "-j", "ACCEPT")
			ns.Run(t, ipt, "-w", "-A", "INPUT", "-j", "FTPALG-INPUT")
			ns.Run(t, ipt, "-w", "-A", "INPUT", "-j", "FTPALG-INPUT")
			ns.Run(t, ipt, "-w", "-N", "FTPALG-FORWARD")
			ns.Run(t, ipt, "-w", "-A", "FTPALG-FORWARD", "-j", "DROP")
		}
		b := c.SetUp(t, ns, c.Options(t))
		checkRules(t, ns, "4", c.Variant)
		checkRules(t, ns, "6", c.Variant)
		backendtest.Do(t, ns, "Setup again", b.Setup)
		checkRules(t, ns, "4", c.Variant)
		checkRules(t, ns, "6", c.Variant)
	})
}

func TestPacket(t *testing.T)        { each(t, backendtest.Packet) }
func TestForwardPacket(t *testing.T) { each(t, backendtest.ForwardPacket) }
func TestRestore(t *testing.T)       { each(t, backendtest.Restore) }
func TestListFlush(t *testing.T)     { each(t, backendtest.ListFlush) }
func TestErrors(t *testing.T)        { each(t, backendtest.Errors) }
func TestNotPermitted(t *testing.T)  { each(t, backendtest.NotPermitted) }
func TestInstances(t *testing.T)     { each(t, backendtest.Instances) }
func TestReopen(t *testing.T)        { each(t, backendtest.Reopen) }
func TestLifecycle(t *testing.T)     { each(t, backendtest.Lifecycle) }
func TestReload(t *testing.T)        { each(t, backendtest.Reload) }
func TestWatcher(t *testing.T)       { each(t, backendtest.Watcher) }
func TestReloadRace(t *testing.T)    { each(t, backendtest.ReloadRace) }
func TestConcurrent(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) { backendtest.Concurrent(t, c, 200) })
}

func TestProbe(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		nstest.DefaultDrop(t, ns, c.Variant)
		before := ns.Save(t, "4", c.Variant)
		var err error
		ns.Do(t, func() { err = Probe(context.Background(), c.Options(t)) })
		if err != nil {
			t.Fatalf("Probe: %v", err)
		}
		if after := ns.Save(t, "4", c.Variant); after != before {
			t.Errorf("Probe left rules behind:\n%s", after)
		}
	})
}

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // Pinhole.String without lifetime, or "" for not a pinhole
	}{
		{`-A FTPALG-INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment "ftpalg session 5" -j ACCEPT`,
			"tcp 192.0.2.2→192.0.2.1:50000 (session 5, 0s)"},
		{`-A FTPALG-INPUT -s 2001:db8::2/128 -d 2001:db8::1/128 -p tcp -m tcp --dport 50001 -m comment --comment "ftpalg session 6" -j ACCEPT`,
			"tcp 2001:db8::2→[2001:db8::1]:50001 (session 6, 0s)"},
		{`-A FTPALG-INPUT -s 192.0.2.0/24 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment "ftpalg session 5" -j ACCEPT`, ""},
		{`-A FTPALG-INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment "someone else" -j ACCEPT`, ""},
		{`-A FTPALG-INPUT -s 192.0.2.2/32 -j ACCEPT`, ""},
	} {
		f, err := xtables.Split(tc.line)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := parseRule(f[2:])
		got := ""
		if ok {
			got = p.String()
		}
		if got != tc.want {
			t.Errorf("parseRule(%s) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	b := New(rules.Options{})
	for _, tc := range []struct {
		err  error
		kind error
		hint string
	}{
		{errors.New("running [/usr/sbin/iptables -t filter -N FTPALG-INPUT --wait]: exit status 4: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"),
			rules.ErrNotPermitted, "no CAP_NET_ADMIN: run as root or grant CAP_NET_ADMIN"},
		{errors.New("exit status 3: iptables v1.8.9 (legacy): can't initialize iptables table `filter': Permission denied (you must be root)"),
			rules.ErrNotPermitted, "no CAP_NET_ADMIN"},
		{&exec.Error{Name: "iptables", Err: exec.ErrNotFound}, rules.ErrUnsupported, "iptables is not installed"},
		{errors.New("exit status 2: iptables v1.8.9 (legacy): Couldn't load match `conntrack':No such file or directory"),
			rules.ErrUnsupported, "conntrack match"},
	} {
		err := b.wrap("setup: chain FTPALG-INPUT", tc.err)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("wrap(%v) = %q, want kind %v with %q", tc.err, err, tc.kind, tc.hint)
		}
		if !strings.HasPrefix(err.Error(), "rules/iptables: setup: chain FTPALG-INPUT: ") {
			t.Errorf("wrap(%v) = %q: want the backend and the operation first", tc.err, err)
		}
	}
}

// latencyN is how many pinholes BenchmarkLatency opens per round: each
// costs a process or two, so fewer than for ipset unless FTPALG_BENCH_N
// says.
func latencyN() int {
	n := 500
	if testing.Short() {
		n = 50
	}
	if v := os.Getenv("FTPALG_BENCH_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	return n
}

// BenchmarkLatency measures Open and Close per iptables variant (see
// backendtest.Latency): go test -run '^$' -bench Latency ./rules/iptables
func BenchmarkLatency(b *testing.B) {
	for _, v := range nstest.Variants(b) {
		b.Run(v, func(b *testing.B) { backendtest.Latency(b, config(v), latencyN(), 64) })
	}
}

func BenchmarkOpenClose(b *testing.B) {
	c := config("")
	c.Require(b)
	ns := nstest.New(b)
	be := c.SetUp(b, ns, c.Options(b))
	ns.Do(b, func() {
		ctx := context.Background()
		i := 0
		for b.Loop() {
			p := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, uint16(10000+i%50000), uint64(i), time.Minute)
			if err := be.Open(ctx, p); err != nil {
				b.Fatal(err)
			}
			if err := be.Close(ctx, p); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkSync measures Sync (see backendtest.SyncCost) per iptables
// variant: intact with 100 pinholes open, after a change to the ruleset
// (busy), and restoring everything after a reload with 10 and 100
// pinholes: go test -run '^$' -bench Sync ./rules/...
func BenchmarkSync(b *testing.B) {
	for _, v := range nstest.Variants(b) {
		c := config(v)
		for _, tc := range []struct {
			kind string
			n    int
		}{{"intact", 100}, {"busy", 100}, {"restore", 10}, {"restore", 100}} {
			b.Run(fmt.Sprintf("%s/%s-%d", v, tc.kind, tc.n), func(b *testing.B) { backendtest.SyncCost(b, c, tc.n, tc.kind) })
		}
	}
}
