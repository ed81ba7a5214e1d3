package backendtest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
)

// hostRuleset is what a firewall reload restores: the namespace's
// iptables-save of both families, taken before the backend's Setup, so
// without any of its objects.
type hostRuleset map[string]string // family ("4", "6") → iptables-save

func saveHost(t testing.TB, ns *nstest.NS, variant string) hostRuleset {
	t.Helper()
	h := hostRuleset{}
	for _, fam := range []string{"4", "6"} {
		h[fam] = ns.Run(t, nstest.Cmd(fam, variant)+"-save")
	}
	return h
}

// ReloadFirewall does in ns what a firewall reload (netfilter-persistent,
// a firewalld or ufw reload, a boot script) does: iptables-restore of the
// host's saved ruleset in both families, which replaces every table in it
// and so removes the backend's hooks, chains and rules; then, as a full
// reload script does after the restore, it destroys every ipset (with
// retries: iptables-nft lets go of a deleted rule's set a moment after the
// restore commits).
func ReloadFirewall(t testing.TB, ns *nstest.NS, variant string, h hostRuleset) {
	t.Helper()
	dir := t.TempDir()
	for _, fam := range []string{"4", "6"} {
		file := filepath.Join(dir, "rules.v"+fam)
		if err := os.WriteFile(file, []byte(h[fam]), 0o600); err != nil {
			t.Fatal(err)
		}
		ns.Run(t, nstest.Cmd(fam, variant)+"-restore", file)
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := ns.Try("ipset", "destroy")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipset destroy after the reload: %v\n%s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reloadSetup is a default-DROP server namespace with the backend set up,
// echo listeners on IPv4 and IPv6 and a pinhole open to each for a
// minute, and a third on IPv4 with a one-second lifetime.
type reloadSetup struct {
	topo             *nstest.Topology
	host             hostRuleset
	b                rules.Backend
	p4, p6, short    rules.Pinhole
	at4, at6, atShrt netip.AddrPort
}

func newReloadSetup(t *testing.T, c Config, opts rules.Options) *reloadSetup {
	c.Require(t)
	s := &reloadSetup{topo: nstest.NewTopology(t)}
	nstest.DefaultDrop(t, s.topo.Server, c.Variant)
	s.host = saveHost(t, s.topo.Server, c.Variant)
	s.b = c.SetUp(t, s.topo.Server, opts)
	listen := func(a netip.Addr) netip.AddrPort {
		ln := s.topo.Server.Listen(t, netip.AddrPortFrom(a, 0))
		go echo(ln)
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}
	s.at4, s.at6, s.atShrt = listen(nstest.ServerAddr4), listen(nstest.ServerAddr6), listen(nstest.ServerAddr4)
	s.p4 = Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, s.at4.Port(), 41, time.Minute)
	s.p6 = Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, s.at6.Port(), 42, time.Minute)
	s.short = Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, s.atShrt.Port(), 43, time.Second)
	for _, p := range []rules.Pinhole{s.p4, s.p6, s.short} {
		Do(t, s.topo.Server, "Open "+p.String(), func(ctx context.Context) error { return s.b.Open(ctx, p) })
	}
	return s
}

// mustPass connects from the peer to a pinhole's port.
func (s *reloadSetup) mustPass(t *testing.T, from netip.Addr, to netip.AddrPort, when string) {
	t.Helper()
	conn, err := s.topo.Peer.Dial(from, to, 2*time.Second)
	if err != nil {
		t.Fatalf("%s: connect from %s to %s: %v", when, from, to, err)
	}
	conn.Close()
}

// ours returns the lines of `iptables -S` (ip6tables) that are ftpalg's,
// sorted, leaving out those of the port skip.
func ours(t *testing.T, ns *nstest.NS, fam, variant string, skip uint16) []string {
	t.Helper()
	var out []string
	for _, l := range ns.Rules(t, fam, variant) {
		if strings.Contains(l, "FTPALG") && !strings.Contains(l, "--dport "+strconv.Itoa(int(skip))+" ") {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// Reload replaces the ruleset of a default-DROP namespace, while pinholes
// are open, with the host's saved one (ReloadFirewall: no hooks, chains or
// sets of ours any more): the live pinholes' connections are dropped.
// One Sync puts back exactly what was there — the same rules of ours in
// `iptables -S` of both families, our hook first in INPUT, the same sets —
// and the pinholes, except the one whose lifetime ended meanwhile; the
// live pinholes let connections in again and the expired one does not. A
// second Sync finds nothing to do.
func Reload(t *testing.T, c Config) {
	s := newReloadSetup(t, c, c.Options(t))
	ns := s.topo.Server
	s.mustPass(t, nstest.PeerAddr4, s.at4, "before the reload")
	before := map[string][]string{}
	for _, fam := range []string{"4", "6"} {
		before[fam] = ours(t, ns, fam, c.Variant, s.atShrt.Port())
	}
	var sets []string
	if _, err := exec.LookPath("ipset"); err == nil {
		sets = ns.Sets(t)
	}
	time.Sleep(1100 * time.Millisecond) // the short pinhole's lifetime ends

	ReloadFirewall(t, ns, c.Variant, s.host)
	for _, fam := range []string{"4", "6"} {
		if o := ours(t, ns, fam, c.Variant, 0); len(o) != 0 {
			t.Fatalf("after the reload %s still holds:\n%s", nstest.Cmd(fam, c.Variant), strings.Join(o, "\n"))
		}
	}
	mustDrop(t, s.topo, nstest.PeerAddr4, s.at4, "after the reload, before Sync")

	var r rules.Restored
	Do(t, ns, "Sync", func(ctx context.Context) (err error) { r, err = s.b.Sync(ctx); return err })
	t.Logf("Sync restored: %s", r)
	if r.Pinholes != 2 || len(r.Objects) == 0 {
		t.Errorf("Sync restored %s; want our objects and 2 pinholes", r)
	}
	for _, fam := range []string{"4", "6"} {
		if got := ours(t, ns, fam, c.Variant, s.atShrt.Port()); !slices.Equal(got, before[fam]) {
			t.Errorf("%s after Sync:\n%s\nbefore the reload:\n%s", nstest.Cmd(fam, c.Variant),
				strings.Join(got, "\n"), strings.Join(before[fam], "\n"))
		}
		for _, l := range ns.Rules(t, fam, c.Variant) {
			if strings.HasPrefix(l, "-A INPUT ") {
				if !strings.Contains(l, "-j FTPALG-INPUT") {
					t.Errorf("%s: the first rule of INPUT is %q, want our hook", nstest.Cmd(fam, c.Variant), l)
				}
				break
			}
		}
	}
	if sets != nil {
		if got := ns.Sets(t); !slices.Equal(got, sets) {
			t.Errorf("ipsets after Sync %v, before the reload %v", got, sets)
		}
	}
	expect(t, ns, s.b.(rules.Lister), []rules.Pinhole{s.p4, s.p6}, []int{0, 1}, "after Sync")
	s.mustPass(t, nstest.PeerAddr4, s.at4, "IPv4 pinhole after Sync")
	s.mustPass(t, nstest.PeerAddr6, s.at6, "IPv6 pinhole after Sync")
	mustDrop(t, s.topo, nstest.PeerAddr4, s.atShrt, "the pinhole past its lifetime, after Sync")
	mustDrop(t, s.topo, nstest.OtherAddr4, s.at4, "from a third address after Sync")

	Do(t, ns, "Sync again", func(ctx context.Context) (err error) { r, err = s.b.Sync(ctx); return err })
	if !r.Empty() {
		t.Errorf("a second Sync restored %s", r)
	}
	// Close works on what Sync restored
	Do(t, ns, "Close", func(ctx context.Context) error { return s.b.Close(ctx, s.p4) })
	mustDrop(t, s.topo, nstest.PeerAddr4, s.at4, "after Close of a restored pinhole")
}

// Watcher runs rules.Watch on the backend with a short interval inside the
// server namespace, as ftpalg does, reloads the firewall while a pinhole
// is open, and waits (bounded) until that pinhole lets a connection in
// again; the watch must have logged rules.MsgRestored naming the backend,
// our INPUT hook and the pinhole.
func Watcher(t *testing.T, c Config) {
	core, logs := observer.New(zapcore.InfoLevel)
	opts := c.Options(t)
	opts.Logger = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	s := newReloadSetup(t, c, opts)
	ns := s.topo.Server

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var gate sync.Mutex
	go func() {
		exit, err := ns.Enter()
		if err != nil {
			done <- err
			return
		}
		defer exit()
		rules.Watch(ctx, 100*time.Millisecond, opts.Logger, gatedSyncer{s.b, &gate})
		done <- nil
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("watch: %v", err)
			}
		}
	}
	defer stop()

	// A reload script restores and then destroys the sets in one go; a
	// Sync in between would put the hooks back, which keep the set in use,
	// and the destroy would fail ("Set cannot be destroyed: it is in
	// use": this test was flaky). The watch waits for the whole reload.
	gate.Lock()
	ReloadFirewall(t, ns, c.Variant, s.host)
	gate.Unlock()
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	for {
		conn, err := s.topo.Peer.Dial(nstest.PeerAddr4, s.at4, 300*time.Millisecond)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("the pinhole still drops %s after the reload (last: %v); log:\n%s",
				time.Since(start).Round(time.Millisecond), err, dumpLogs(logs))
		}
	}
	t.Logf("pinhole passes again %s after the reload", time.Since(start).Round(time.Millisecond))
	stop()
	var restored []string
	for _, e := range logs.FilterMessage(rules.MsgRestored).All() {
		f := e.ContextMap()
		if f["firewall"] != s.b.Name() {
			t.Errorf("%s names firewall %v, want %s", rules.MsgRestored, f["firewall"], s.b.Name())
		}
		restored = append(restored, f["restored"].(string))
	}
	all := strings.Join(restored, "; ")
	for _, want := range []string{"hook INPUT → FTPALG-INPUT", "chain FTPALG-INPUT", "pinhole"} {
		if !strings.Contains(all, want) {
			t.Errorf("%s lines say %q; want %q named; log:\n%s", rules.MsgRestored, all, want, dumpLogs(logs))
		}
	}
}

// gatedSyncer is a Syncer whose Sync waits while gate is held, so that a
// test can make a sequence of its own atomic with respect to a Watch.
type gatedSyncer struct {
	rules.Syncer
	gate *sync.Mutex
}

func (g gatedSyncer) Sync(ctx context.Context) (rules.Restored, error) {
	g.gate.Lock()
	defer g.gate.Unlock()
	return g.Syncer.Sync(ctx)
}

func dumpLogs(logs *observer.ObservedLogs) string {
	var b strings.Builder
	for _, e := range logs.All() {
		fmt.Fprintf(&b, "%s %s", e.Level, e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ReloadRace opens and closes pinholes from several goroutines while the
// firewall is reloaded (ReloadFirewall) and Synced again and again in the
// namespace. An Open may fail while our objects are gone (the session
// would answer 425; the pinhole is then not open), but once the reloads
// stop and one more Sync ran, the kernel (List) holds exactly the pinholes
// whose last call was a successful Open: none that was closed came back,
// none that was opened was lost.
func ReloadRace(t *testing.T, c Config) {
	c.Require(t)
	ns := nstest.New(t)
	nstest.DefaultDrop(t, ns, c.Variant)
	host := saveHost(t, ns, c.Variant)
	b := c.SetUp(t, ns, c.Options(t))
	const workers, reloads = 4, 3
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
			exit, err := c.enter(ns)
			if err != nil {
				t.Error(err)
				return
			}
			defer exit()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				peer, local := nstest.PeerAddr4, nstest.ServerAddr4
				if i%3 == 2 {
					peer, local = nstest.PeerAddr6, nstest.ServerAddr6
				}
				p := Pinhole(peer, local, uint16(40000+w*100+i%20), uint64(w*1000+i), time.Minute)
				// A failed Open holds nothing, and its caller does not Close.
				if err := b.Open(context.Background(), p); err != nil {
					continue
				}
				mu.Lock()
				holds[p.Key()]++
				mu.Unlock()
				if i%2 == 1 {
					if err := b.Close(context.Background(), p); err != nil {
						t.Errorf("Close %s: %v", p, err)
					}
					mu.Lock()
					holds[p.Key()]--
					mu.Unlock()
				}
			}
		})
	}
	restored := 0
	for range reloads {
		time.Sleep(50 * time.Millisecond)
		ReloadFirewall(t, ns, c.Variant, host)
		var r rules.Restored
		Do(t, ns, "Sync", func(ctx context.Context) (err error) { r, err = b.Sync(ctx); return err })
		restored += r.Pinholes
	}
	close(stop)
	wg.Wait()
	Do(t, ns, "Sync", func(ctx context.Context) error { _, err := b.Sync(ctx); return err })
	// by key: a reopened key keeps its first session with iptables, the
	// last with ipset (Reopen)
	var have, want []string
	for _, p := range mustList(t, ns, b.(rules.Lister)) {
		have = append(have, fmt.Sprint(p.Key()))
	}
	for k, n := range holds {
		if n > 0 {
			want = append(want, fmt.Sprint(k))
		}
	}
	slices.Sort(have)
	slices.Sort(want)
	t.Logf("%d reloads, %d pinholes restored, %d open at the end", reloads, restored, len(want))
	if !slices.Equal(have, want) {
		t.Errorf("after the reloads the kernel holds %d pinholes, want %d\nmissing: %v\nextra:   %v",
			len(have), len(want), diff(want, have), diff(have, want))
	}
}

// CPU is the CPU time this process and its waited-for children (the
// iptables binaries) have used: what a periodic check costs the host.
func CPU() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

// SyncCost is a benchmark's body: the cost of one Sync with n pinholes
// open, in a namespace with a host ruleset. The case is one of
//
//	intact   nothing changed since the last Sync (the steady state)
//	busy     the ruleset changed since (an Open and a Close ran before
//	         each Sync, untimed): on iptables-nft the generation moved,
//	         so the check cannot be skipped
//	restore  a firewall reload (ReloadFirewall, untimed) removed
//	         everything before each Sync, which restores it all
//
// ns/op is the Sync's wall time; it also reports its CPU time, this
// process's and the binaries' (cpu-µs/op), and for intact and busy what
// checking every rules.DefaultWatchInterval costs per hour (cpu-s/h).
func SyncCost(b *testing.B, c Config, n int, kind string) {
	c.Require(b)
	ns := nstest.New(b)
	nstest.DefaultDrop(b, ns, c.Variant)
	host := saveHost(b, ns, c.Variant)
	opts := c.Options(b)
	opts.Logger = zap.NewNop()
	be := c.SetUp(b, ns, opts)
	ps := make([]rules.Pinhole, n)
	for i := range ps {
		ps[i] = Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, uint16(10000+i), uint64(i), time.Hour)
		if i%2 == 1 {
			ps[i] = Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, uint16(10000+i), uint64(i), time.Hour)
		}
	}
	extra := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 9999, 1, time.Hour)
	var cpu time.Duration
	ns.Do(b, func() {
		ctx := context.Background()
		for _, p := range ps {
			if err := be.Open(ctx, p); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := be.Sync(ctx); err != nil { // the first sees the generation
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			switch kind {
			case "busy":
				if err := be.Open(ctx, extra); err != nil {
					b.Fatal(err)
				}
				if err := be.Close(ctx, extra); err != nil {
					b.Fatal(err)
				}
			case "restore":
				ReloadFirewall(b, ns, c.Variant, host)
			}
			start := CPU()
			b.StartTimer()
			r, err := be.Sync(ctx)
			b.StopTimer()
			cpu += CPU() - start
			if err != nil {
				b.Fatal(err)
			}
			if kind == "restore" && r.Pinholes != n || kind != "restore" && !r.Empty() {
				b.Fatalf("%s: Sync restored %s, want %d pinholes", kind, r, map[bool]int{true: n}[kind == "restore"])
			}
			b.StartTimer()
		}
	})
	perOp := cpu / time.Duration(b.N)
	b.ReportMetric(float64(perOp)/float64(time.Microsecond), "cpu-µs/op")
	if kind != "restore" { // a restore is not what every check costs
		b.ReportMetric(perOp.Seconds()*float64(time.Hour/rules.DefaultWatchInterval), "cpu-s/h")
	}
}
