package ipset

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
)

func config(variant string) backendtest.Config {
	return backendtest.Config{
		New:     func(o rules.Options) rules.Backend { return New(o) },
		Variant: variant,
		Tools:   []string{"ipset"},
	}
}

// each runs f once per installed iptables variant.
func each(t *testing.T, f func(t *testing.T, c backendtest.Config)) {
	for _, v := range nstest.Variants(t) {
		t.Run(v, func(t *testing.T) { f(t, config(v)) })
	}
}

// hookRules are the rules Setup adds to a fresh namespace's filter table,
// as `iptables -S` prints them, sorted.
func hookRules(set string) []string {
	r := []string{
		"-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT",
		"-N FTPALG-INPUT", "-N FTPALG-FORWARD",
		"-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m set --match-set " + set + " dst,dst,src -j FTPALG-INPUT",
		"-A FORWARD -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m set --match-set " + set + " dst,dst,src -j FTPALG-FORWARD",
		"-A FTPALG-INPUT -p tcp -m set --match-set " + set + " dst,dst,src -j ACCEPT",
		"-A FTPALG-FORWARD -p tcp -m set --match-set " + set + " dst,dst,src -j ACCEPT",
	}
	slices.Sort(r)
	return r
}

func sorted(s []string) []string { slices.Sort(s); return s }

// checkState asserts the namespace holds exactly our chains, hooks and sets.
func checkState(t *testing.T, ns *nstest.NS, variant string) {
	t.Helper()
	for fam, set := range map[string]string{"4": Set4, "6": Set6} {
		if got, want := sorted(ns.Rules(t, fam, variant)), hookRules(set); !slices.Equal(got, want) {
			t.Errorf("%s -S:\n%s\nwant:\n%s", nstest.Cmd(fam, variant), strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if got := ns.Sets(t); !slices.Equal(got, []string{Set4, Set6}) {
		t.Errorf("ipsets %v, want %v", got, []string{Set4, Set6})
	}
	for set, family := range map[string]string{Set4: "inet", Set6: "inet6"} {
		out := ns.Run(t, "ipset", "list", "-t", set)
		for _, want := range []string{"Type: " + SetType, "family " + family, "timeout " + strconv.Itoa(int(setTimeout)), " comment", "maxelem 65536"} {
			if !strings.Contains(out, want) {
				t.Errorf("ipset list -t %s lacks %q:\n%s", set, want, out)
			}
		}
	}
}

func TestSetupCreatesExactlyOurs(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		c.SetUp(t, ns, c.Options(t))
		checkState(t, ns, c.Variant)
	})
}

func TestOpenCloseElement(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		b := c.SetUp(t, ns, c.Options(t))
		p4 := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 5, 30*time.Second)
		p6 := backendtest.Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50001, 6, 1500*time.Millisecond)
		for _, p := range []rules.Pinhole{p4, p6} {
			backendtest.Do(t, ns, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
		}
		if got, want := ns.Members(t, Set4), []string{`192.0.2.1,tcp:50000,192.0.2.2 comment "ftpalg session 5"`}; !slices.Equal(got, want) {
			t.Errorf("%s members %q, want %q", Set4, got, want)
		}
		if got, want := ns.Members(t, Set6), []string{`2001:db8::1,tcp:50001,2001:db8::2 comment "ftpalg session 6"`}; !slices.Equal(got, want) {
			t.Errorf("%s members %q, want %q", Set6, got, want)
		}
		// the element's timeout is the lifetime rounded up
		if out := ns.Run(t, "ipset", "list", Set6); !strings.Contains(out, "timeout 2 ") && !strings.Contains(out, "timeout 1 ") {
			t.Errorf("1.5 s lifetime: want element timeout 2 (or 1 once a second passed):\n%s", out)
		}
		for _, p := range []rules.Pinhole{p4, p6} {
			backendtest.Do(t, ns, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
			backendtest.Do(t, ns, "Close again", func(ctx context.Context) error { return b.Close(ctx, p) })
		}
		for _, set := range []string{Set4, Set6} {
			if got := ns.Members(t, set); len(got) != 0 {
				t.Errorf("after Close %s members %q, want none", set, got)
			}
		}
	})
}

func TestElementExpiresByItself(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		b := c.SetUp(t, ns, c.Options(t))
		p := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 9, time.Second)
		backendtest.Do(t, ns, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
		start := time.Now()
		if got := ns.Members(t, Set4); len(got) != 1 {
			t.Fatalf("right after Open: members %q, want one", got)
		}
		deadline := start.Add(5 * time.Second)
		for len(ns.Members(t, Set4)) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("element with a 1 s lifetime still there after %s", time.Since(start))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("gone after %s", time.Since(start).Round(10*time.Millisecond))
		// the proxy's Close of an expired pinhole is fine
		backendtest.Do(t, ns, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
	})
}

func TestSetupReconcilesLeftovers(t *testing.T) {
	each(t, func(t *testing.T, c backendtest.Config) {
		c.Require(t)
		ns := nstest.New(t)
		ipt, ip6t := nstest.Cmd("4", c.Variant), nstest.Cmd("6", c.Variant)
		// a crashed run: our set with a stale element, a v6 set of the
		// wrong type, chains with stale and foreign rules, duplicate and
		// old-style hooks
		ns.Run(t, "ipset", "create", Set4, SetType, "timeout", "30", "comment")
		ns.Run(t, "ipset", "add", Set4, "192.0.2.1,tcp:50000,198.51.100.7", "timeout", "300", "comment", "ftpalg session 1")
		ns.Run(t, "ipset", "create", Set6, "hash:ip", "family", "inet6")
		ns.Run(t, ipt, "-w", "-N", "FTPALG-INPUT")
		ns.Run(t, ipt, "-w", "-A", "FTPALG-INPUT", "-p", "tcp", "-m", "set", "--match-set", Set4, "dst,dst,src", "-j", "ACCEPT")
		ns.Run(t, ipt, "-w", "-A", "FTPALG-INPUT", "-s", "198.51.100.7", "-j", "ACCEPT")
		ns.Run(t, ipt, "-w", "-A", "INPUT", "-j", "FTPALG-INPUT")
		ns.Run(t, ipt, "-w", "-A", "INPUT", "-j", "FTPALG-INPUT")
		ns.Run(t, ip6t, "-w", "-N", "FTPALG-INPUT")
		ns.Run(t, ip6t, "-w", "-A", "FTPALG-INPUT", "-p", "tcp", "-m", "set", "--match-set", Set6, "src", "-j", "ACCEPT")
		ns.Run(t, ip6t, "-w", "-I", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT")
		ns.Run(t, ip6t, "-w", "-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT")

		b := c.SetUp(t, ns, c.Options(t))
		checkState(t, ns, c.Variant)
		for _, set := range []string{Set4, Set6} {
			if got := ns.Members(t, set); len(got) != 0 {
				t.Errorf("after Setup %s members %q, want none", set, got)
			}
		}
		got, err := listIn(ns, b)
		if err != nil || len(got) != 0 {
			t.Errorf("after Setup List = %v, %v; want nothing", got, err)
		}
		// and a second Setup (a restart without Teardown) changes nothing
		backendtest.Do(t, ns, "Setup again", b.Setup)
		checkState(t, ns, c.Variant)
	})
}

func listIn(ns *nstest.NS, b rules.Backend) (ps []rules.Pinhole, err error) {
	exit, err := ns.Enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	return b.(rules.Lister).List(context.Background())
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
		// any iptables call creates the filter table; have one already
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
		if sets := ns.Sets(t); len(sets) != 0 {
			t.Errorf("Probe left sets behind: %v", sets)
		}
	})
}

// TestCallRecoversPanic: a panic inside netlink's ipset code is an error.
func TestCallRecoversPanic(t *testing.T) {
	err := call(func() error {
		var e error = errors.New("not an errno")
		_ = e.(interface{ Errno() }) // the kind of assertion netlink v1.3.1 makes
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("call = %v, want the panic as an error", err)
	}
}

// TestErrorClassification: the kernel's answers become the package's kinds.
func TestErrorClassification(t *testing.T) {
	b := New(rules.Options{})
	for _, tc := range []struct {
		err  error
		kind error
		hint string
	}{
		{fmt.Errorf("netlink: %w", unix.EPERM), rules.ErrNotPermitted, "no CAP_NET_ADMIN: run as root or grant CAP_NET_ADMIN"},
		{nl.IPSetError(nl.IPSET_ERR_FIND_TYPE), rules.ErrUnsupported, "ipset hash:ip,port,ip not supported by this kernel: use --firewall iptables"},
		{unix.EOPNOTSUPP, rules.ErrUnsupported, "ipset not supported by this kernel: use --firewall iptables"},
	} {
		err := b.nlerr("setup: create set "+Set4, tc.err)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("nlerr(%v) = %q, want kind %v with %q", tc.err, err, tc.kind, tc.hint)
		}
		if !strings.HasPrefix(err.Error(), "rules/ipset: setup: create set ftpalg-pinholes4: ") {
			t.Errorf("nlerr(%v) = %q: want the backend and the operation first", tc.err, err)
		}
	}
}

// BenchmarkLatency measures Open and Close (see backendtest.Latency) over
// FTPALG_BENCH_N pinholes per round, 2000 by default (200 with -short):
// go test -run '^$' -bench Latency ./rules/ipset
func BenchmarkLatency(b *testing.B) {
	n := 2000
	if testing.Short() {
		n = 200
	}
	if v := os.Getenv("FTPALG_BENCH_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	c := backendtest.Config{New: func(o rules.Options) rules.Backend { return New(o) }, Tools: []string{"ipset"}}
	f := backendtest.Latency(b, c, n, 64)
	if f.OpenMedian > 100*time.Microsecond {
		b.Logf("note: open median %s is above the 100 µs aim", f.OpenMedian)
	}
}

func BenchmarkOpenClose(b *testing.B) {
	c := backendtest.Config{New: func(o rules.Options) rules.Backend { return New(o) }, Tools: []string{"ipset"}}
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
