package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// The Sync tests in this file run without root, on an xtables.Fake, as
// fake_linux_test.go's do.

// reload does to x what a firewall reload does: iptables-restore of the
// host's saved ruleset, without ours, in both families, each at once. It
// may run on any goroutine: it reports failures with Errorf.
func reload(t testing.TB, x *xtables.Fake) {
	t.Helper()
	for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
		if err := x.Restore(f, "filter", hostRules...); err != nil {
			t.Errorf("reload %s: %v", f, err)
		}
	}
}

func syncOK(t *testing.T, b *Backend) rules.Restored {
	t.Helper()
	r, err := b.Sync(context.Background())
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return r
}

// TestFakeSyncIntact: with everything in place Sync changes nothing and
// restores nothing; on iptables-nft it runs one `iptables -C` per family
// the first time and none while the ruleset's generation stays, on legacy
// (which has no generation) one per family every time. Before Setup and
// after Teardown it does nothing at all.
func TestFakeSyncIntact(t *testing.T) {
	for _, mode := range []string{"nf_tables", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			x := withHost(t)
			x.Mode = mode
			b := onFake(t, x, rules.Options{})
			runs := x.Runs()
			if r := syncOK(t, b); !r.Empty() || x.Runs() != runs {
				t.Errorf("Sync before Setup: %v, %d commands", r, x.Runs()-runs)
			}
			do(t, "Setup", b.Setup)
			for _, p := range []rules.Pinhole{p4, p6} {
				do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
			}
			wantRuns := map[string][]int{"nf_tables": {2, 0, 0}, "legacy": {2, 2, 2}}[mode]
			for i, want := range wantRuns {
				runs := x.Runs()
				if r := syncOK(t, b); !r.Empty() {
					t.Errorf("Sync #%d on an intact ruleset restored %v", i+1, r)
				}
				if n := x.Runs() - runs; n != want {
					t.Errorf("Sync #%d ran %d commands, want %d", i+1, n, want)
				}
			}
			checkFake(t, x, xtables.IPv4, filterWith("", rule4))
			checkFake(t, x, xtables.IPv6, filterWith("", rule6))
			// our own Open moves the generation: the next Sync asks again
			do(t, "Close", func(ctx context.Context) error { return b.Close(ctx, p6) })
			runs = x.Runs()
			syncOK(t, b)
			if n := x.Runs() - runs; n != 2 {
				t.Errorf("Sync after a Close ran %d commands, want 2", n)
			}
			do(t, "Teardown", b.Teardown)
			runs = x.Runs()
			if r := syncOK(t, b); !r.Empty() || x.Runs() != runs {
				t.Errorf("Sync after Teardown: %v, %d commands", r, x.Runs()-runs)
			}
			checkFake(t, x, xtables.IPv4, hostOnly)
		})
	}
}

// TestFakeSyncRestores: after a reload removed our chains and hooks in
// both families, Sync puts back exactly what Setup and the Opens had made
// — chains, hooks at the top, one rule per pinhole still within its
// lifetime — and says so; a pinhole past its lifetime is not restored
// (the proxy is about to close it). The next Sync finds nothing to do.
func TestFakeSyncRestores(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	now := time.Now()
	b.now = func() time.Time { return now }
	do(t, "Setup", b.Setup)
	short := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50002, 7, time.Second)
	for _, p := range []rules.Pinhole{p4, p6, short} {
		do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
	}
	now = now.Add(5 * time.Second)
	reload(t, x)
	checkFake(t, x, xtables.IPv4, hostOnly)

	r := syncOK(t, b)
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
	checkFake(t, x, xtables.IPv6, filterWith("", rule6))
	want := rules.Restored{Objects: []string{
		"iptables chain FTPALG-INPUT", "iptables chain FTPALG-FORWARD",
		"iptables hook INPUT → FTPALG-INPUT", "iptables hook FORWARD → FTPALG-FORWARD",
		"ip6tables chain FTPALG-INPUT", "ip6tables chain FTPALG-FORWARD",
		"ip6tables hook INPUT → FTPALG-INPUT", "ip6tables hook FORWARD → FTPALG-FORWARD",
	}, Pinholes: 2}
	if r.String() != want.String() {
		t.Errorf("Sync restored\n%s\nwant\n%s", r, want)
	}
	if r := syncOK(t, b); !r.Empty() {
		t.Errorf("second Sync restored %v", r)
	}
	// the expired one is still the proxy's to close
	do(t, "Close expired", func(ctx context.Context) error { return b.Close(ctx, short) })
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
}

// TestFakeSyncRestoresForward: a Forward pinhole comes back into
// FTPALG-FORWARD, beside an input pinhole of the same tuple.
func TestFakeSyncRestoresForward(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	fwd := p4
	fwd.Forward = true
	for _, p := range []rules.Pinhole{p4, fwd} {
		do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
	}
	reload(t, x)
	if r := syncOK(t, b); r.Pinholes != 2 {
		t.Errorf("Sync restored %v, want 2 pinholes", r)
	}
	checkFake(t, x, xtables.IPv4, withForward(filterWith("", rule4), rule4))
	if r := syncOK(t, b); !r.Empty() {
		t.Errorf("second Sync restored %v", r)
	}
}

// TestFakeSyncPartial: a hook deleted by hand comes back alone (the
// chain's rules were never gone); a saved ruleset restored with our chain
// in it, a stale pinhole rule and no hook, gets its hook, the pinholes this
// process holds, and loses the stale rule.
func TestFakeSyncPartial(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	do(t, "Open", func(ctx context.Context) error { return b.Open(ctx, p4) })
	hook := []string{"-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT"}
	if _, err := x.Run(xtables.IPv4, append([]string{"-D", "INPUT"}, hook...)...); err != nil {
		t.Fatal(err)
	}
	if r := syncOK(t, b); r.String() != "iptables hook INPUT → FTPALG-INPUT" {
		t.Errorf("Sync after the hook was deleted restored %v", r)
	}
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))

	reload(t, x)
	stale := `-s 198.51.100.7/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50099 -m comment --comment "ftpalg session 99" -j ACCEPT`
	for _, r := range [][]string{{"-N", "FTPALG-INPUT"}, append([]string{"-A", "FTPALG-INPUT"}, strings.Fields(strings.ReplaceAll(stale, `"ftpalg session 99"`, "ftpalg~session~99"))...)} {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "~", " ")
		}
		if _, err := x.Run(xtables.IPv4, r...); err != nil {
			t.Fatal(err)
		}
	}
	r := syncOK(t, b)
	if got, want := r.String(), "iptables chain FTPALG-FORWARD, iptables hook INPUT → FTPALG-INPUT, iptables hook FORWARD → FTPALG-FORWARD, "+
		"ip6tables chain FTPALG-INPUT, ip6tables chain FTPALG-FORWARD, ip6tables hook INPUT → FTPALG-INPUT, ip6tables hook FORWARD → FTPALG-FORWARD, "+
		"1 pinhole, removed 1 stray pinhole"; got != want {
		t.Errorf("Sync restored %q, want %q", got, want)
	}
	checkFake(t, x, xtables.IPv4, filterWith("", rule4))
}

// TestFakeSyncRace: Opens and Closes from many goroutines while the
// ruleset is reloaded and Synced over and over. An Open fails while our
// chain is gone (the session answers 425; the pinhole is then not open),
// but in the end — after one more Sync — the kernel holds exactly the
// pinholes whose last call was a successful Open: none that was closed
// came back, none that was opened was lost. Run with -race.
func TestFakeSyncRace(t *testing.T) {
	x := withHost(t)
	b := onFake(t, x, rules.Options{})
	do(t, "Setup", b.Setup)
	const workers, rounds = 8, 200
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		// holds counts each key's Opens not yet Closed (rules.Backend):
		// a key is open while it has one. Each worker's keys are its own.
		holds = map[rules.Key]int{}
		stop  = make(chan struct{})
	)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				p := backendtest.Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, uint16(40000+w*100+i%10), uint64(w), time.Minute)
				if i%3 == 2 {
					p.Peer, p.Local = nstest.PeerAddr6, netip.AddrPortFrom(nstest.ServerAddr6, p.Local.Port())
				}
				// A failed Open holds nothing, and its caller does not Close.
				if err := b.Open(context.Background(), p); err != nil {
					continue
				}
				mu.Lock()
				holds[p.Key()]++
				mu.Unlock()
				if i%2 == 1 {
					if err := b.Close(context.Background(), p); err != nil {
						t.Errorf("Close: %v", err)
					}
					mu.Lock()
					holds[p.Key()]--
					mu.Unlock()
				}
			}
		})
	}
	var (
		syncs             sync.WaitGroup
		reloads, restored int
	)
	syncs.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			reload(t, x)
			reloads++
			r, err := b.Sync(context.Background())
			if err != nil {
				t.Errorf("Sync: %v", err)
			}
			restored += r.Pinholes
		}
	})
	wg.Wait()
	close(stop)
	syncs.Wait()
	syncOK(t, b) // the last reload may have come after the last Sync
	syncOK(t, b)
	t.Logf("%d reloads, %d pinholes restored", reloads, restored)
	got, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var have, want []string
	for _, p := range got {
		have = append(have, fmt.Sprint(p.Key()))
	}
	for k, n := range holds {
		if n > 0 {
			want = append(want, fmt.Sprint(k))
		}
	}
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		t.Errorf("kernel holds %d pinholes, want %d:\nhave %v\nwant %v", len(have), len(want), have, want)
	}
}
