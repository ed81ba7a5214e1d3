// Package backendtest holds the tests every backend must pass. The kernel
// tests run as root in throwaway network namespaces: real packets through
// a default-DROP host, Teardown restoring the ruleset, two instances, no
// capabilities. The state tests (Errors, ListFlush, Concurrent, Reopen,
// Lifecycle) check only what the backend's calls and List say, so they
// also run without root against a fake (Config.Fake): the rulestest fake,
// or a backend over the xtables fake. Latency measures, for benchmarks.
// Each backend's own tests add the checks of its kernel objects.
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
)

// Config names the backend under test.
type Config struct {
	New     func(rules.Options) rules.Backend
	Variant string   // iptables variant: "nft" or "legacy"
	Tools   []string // binaries the tests need besides ip and iptables
	// Fake, when set, makes the state tests run without root or
	// namespaces: each test calls it once for a fresh fake kernel and
	// builds its backends with the New it returns, which all share that
	// kernel as backends in one namespace share the real one. The kernel
	// tests ignore it.
	Fake func(t testing.TB) func(rules.Options) rules.Backend
	// PerThread: Open and Close depend on the calling thread's namespace
	// (the iptables binary inherits it), so concurrent callers must each
	// enter the namespace. Otherwise (ipset's netlink handle is bound to
	// the namespace at Setup) they call from anywhere, as the proxy does.
	PerThread bool
}

// Place is where backend calls run: a network namespace
// (*nstest.NS), or anywhere for a fake.
type Place interface {
	// Do runs fn on the calling goroutine inside the place.
	Do(t testing.TB, fn func())
	// Enter moves the calling goroutine into the place until exit.
	Enter() (exit func(), err error)
}

// anywhere is the Place of a fake: calls run where they are.
type anywhere struct{}

func (anywhere) Do(t testing.TB, fn func())      { fn() }
func (anywhere) Enter() (exit func(), err error) { return func() {}, nil }

// state returns where a state test runs and how it builds backends: a
// fresh fake kernel when c has one, else a fresh namespace (root and the
// tools required).
func (c Config) state(t testing.TB) (Place, Config) {
	if c.Fake != nil {
		c.New = c.Fake(t)
		return anywhere{}, c
	}
	c.Require(t)
	return nstest.New(t), c
}

// enter moves the calling goroutine into n when c needs it.
func (c Config) enter(n Place) (exit func(), err error) {
	if !c.PerThread {
		return func() {}, nil
	}
	return n.Enter()
}

// Options returns the options the tests build backends with.
func (c Config) Options(t testing.TB) rules.Options {
	return rules.Options{Iptables: c.Variant, Logger: zaptest.NewLogger(t)}
}

// Require skips or fails t unless root and the tools are there.
func (c Config) Require(t testing.TB) {
	t.Helper()
	tools := []string{nstest.Cmd("4", c.Variant), nstest.Cmd("6", c.Variant),
		nstest.Cmd("4", c.Variant) + "-save", nstest.Cmd("6", c.Variant) + "-save"}
	nstest.Require(t, append(tools, c.Tools...)...)
}

// SetUp builds a backend and runs Setup inside n; Teardown runs when t ends.
func (c Config) SetUp(t testing.TB, n Place, opts rules.Options) rules.Backend {
	t.Helper()
	b := c.New(opts)
	n.Do(t, func() {
		if err := b.Setup(context.Background()); err != nil {
			t.Fatalf("Setup: %v", err)
		}
	})
	t.Cleanup(func() {
		n.Do(t, func() {
			if err := b.Teardown(context.Background()); err != nil {
				t.Errorf("Teardown: %v", err)
			}
		})
	})
	return b
}

// Pinhole returns a pinhole from peer to local:port.
func Pinhole(peer, local netip.Addr, port uint16, session uint64, life time.Duration) rules.Pinhole {
	return rules.Pinhole{Proto: rules.ProtoTCP, Peer: peer, Local: netip.AddrPortFrom(local, port),
		Lifetime: life, Session: session}
}

// Do runs a backend call inside n and fails t on error.
func Do(t testing.TB, n Place, what string, f func(context.Context) error) {
	t.Helper()
	var err error
	n.Do(t, func() { err = f(context.Background()) })
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// dropWait is how long a dial waits before its SYN counts as dropped. A
// pinholed SYN is answered in well under a millisecond on a veth.
const dropWait = 600 * time.Millisecond

// Packet sends real connections through a default-DROP server namespace:
// dropped before Open, accepted after, dropped from a third address while
// open, dropped again after Close, while the connection accepted earlier
// keeps working; and after Teardown nothing of ours lets anything in.
func Packet(t *testing.T, c Config) {
	c.Require(t)
	topo := nstest.NewTopology(t)
	nstest.DefaultDrop(t, topo.Server, c.Variant)
	b := c.SetUp(t, topo.Server, c.Options(t))

	for _, fam := range []struct {
		name               string
		server, peer, othr netip.Addr
	}{
		{"ipv4", nstest.ServerAddr4, nstest.PeerAddr4, nstest.OtherAddr4},
		{"ipv6", nstest.ServerAddr6, nstest.PeerAddr6, nstest.OtherAddr6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			ln := topo.Server.Listen(t, netip.AddrPortFrom(fam.server, 0))
			go echo(ln)
			local := ln.Addr().(*net.TCPAddr).AddrPort()
			p := Pinhole(fam.peer, fam.server, local.Port(), 7, 30*time.Second)

			mustDrop(t, topo, fam.peer, local, "before Open")
			Do(t, topo.Server, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
			conn, err := topo.Peer.Dial(fam.peer, local, 2*time.Second)
			if err != nil {
				t.Fatalf("connect from %s to %s with the pinhole open: %v", fam.peer, local, err)
			}
			defer conn.Close()
			mustDrop(t, topo, fam.othr, local, "from a third address while the pinhole is open")
			Do(t, topo.Server, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
			mustDrop(t, topo, fam.peer, local, "after Close")

			// the connection accepted through the pinhole lives on, by the
			// host's ESTABLISHED rule
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write([]byte("ping")); err != nil {
				t.Fatalf("established connection after Close: write: %v", err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("established connection after Close: read %q, %v", buf, err)
			}

			// and a pinhole left open is gone with Teardown
			Do(t, topo.Server, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
			Do(t, topo.Server, "Teardown", b.Teardown)
			mustDrop(t, topo, fam.peer, local, "after Teardown")
			Do(t, topo.Server, "Setup", b.Setup)
		})
	}
}

// ForwardPacket sends real connections through a router whose FORWARD
// policy is DROP (client ─ router ─ server, the backend in the router): a
// connection from the client to the server is dropped before a Forward
// pinhole is opened for it, passes after, is dropped from a third address
// while the pinhole is open, and again after Close, while the connection
// that passed keeps working. This is how the kernel data path's forwarded
// connections (after its DNAT: peer → target) get through a closed
// router.
func ForwardPacket(t *testing.T, c Config) {
	c.Require(t)
	ch := nstest.NewChain(t, nstest.ChainOptions{Forwarding: true,
		ClientRoutes: []netip.Prefix{nstest.V4.ServerNet, nstest.V6.ServerNet},
		ServerRoutes: []netip.Prefix{nstest.V4.ClientNet, nstest.V6.ClientNet}})
	nstest.ForwardDrop(t, ch.Router, c.Variant)
	b := c.SetUp(t, ch.Router, c.Options(t))
	for i, f := range nstest.Families {
		t.Run(f.Name, func(t *testing.T) {
			other := f.ClientNet.Addr().Next().Next().Next() // .3 / ::3, beside the client's .10 / ::10
			ch.Client.Addr(t, "eth0", netip.PrefixFrom(other, f.ClientNet.Bits()).String())
			ln := ch.Server.Listen(t, netip.AddrPortFrom(f.Server, 0))
			go echo(ln)
			to := ln.Addr().(*net.TCPAddr).AddrPort()
			p := Pinhole(f.Client, f.Server, to.Port(), uint64(20+i), 30*time.Second)
			p.Forward = true
			drop := func(from netip.Addr, when string) {
				t.Helper()
				conn, err := ch.Client.Dial(from, to, dropWait)
				if err == nil {
					conn.Close()
					t.Fatalf("%s: forwarded connect from %s to %s succeeded, want it dropped", when, from, to)
				}
				if !nstest.IsTimeout(err) {
					t.Fatalf("%s: connect from %s to %s: %v, want a timeout (SYN dropped)", when, from, to, err)
				}
			}
			drop(f.Client, "before Open")
			Do(t, ch.Router, "Open", func(ctx context.Context) error { return b.Open(ctx, p) })
			conn, err := ch.Client.Dial(f.Client, to, 2*time.Second)
			if err != nil {
				t.Fatalf("forwarded connect from %s to %s with the Forward pinhole open: %v", f.Client, to, err)
			}
			defer conn.Close()
			drop(other, "from a third address while the pinhole is open")
			Do(t, ch.Router, "Close", func(ctx context.Context) error { return b.Close(ctx, p) })
			drop(f.Client, "after Close")
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write([]byte("ping")); err != nil {
				t.Fatalf("forwarded connection after Close: write: %v", err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("forwarded connection after Close: read %q, %v", buf, err)
			}
		})
	}
}

func mustDrop(t *testing.T, topo *nstest.Topology, from netip.Addr, to netip.AddrPort, when string) {
	t.Helper()
	c, err := topo.Peer.Dial(from, to, dropWait)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connect from %s to %s succeeded, want it dropped", when, from, to)
	}
	if !nstest.IsTimeout(err) {
		t.Fatalf("%s: connect from %s to %s: %v, want a timeout (SYN dropped)", when, from, to, err)
	}
}

// echo answers every connection of ln with what it reads, until ln closes.
func echo(ln *net.TCPListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// Concurrent opens n pinholes from n goroutines, closes every other one
// from as many, and checks that the kernel then holds exactly the rest —
// nothing lost, duplicated or leaked — and nothing after closing those.
func Concurrent(t *testing.T, c Config, n int) {
	ns, c := c.state(t)
	b := c.SetUp(t, ns, c.Options(t))
	l := b.(rules.Lister)

	ps := make([]rules.Pinhole, n)
	for i := range ps {
		peer, local := nstest.PeerAddr4, nstest.ServerAddr4
		if i%4 == 3 {
			peer, local = nstest.PeerAddr6, nstest.ServerAddr6
		}
		ps[i] = Pinhole(peer, local, uint16(40000+i), uint64(i+1), time.Minute)
	}
	parallel := func(what string, idx []int, f func(context.Context, rules.Pinhole) error) {
		t.Helper()
		var (
			wg   sync.WaitGroup
			errs = make(chan error, len(idx))
		)
		for _, i := range idx {
			wg.Go(func() {
				exit, err := c.enter(ns)
				if err != nil {
					errs <- err
					return
				}
				defer exit()
				if err := f(context.Background(), ps[i]); err != nil {
					errs <- fmt.Errorf("%s %s: %w", what, ps[i], err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	var odd, even []int
	for i := range all {
		if i%2 == 1 {
			odd = append(odd, i)
		} else {
			even = append(even, i)
		}
	}
	parallel("Open", all, b.Open)
	expect(t, ns, l, ps, all, "after opening all")
	parallel("Close", odd, b.Close)
	expect(t, ns, l, ps, even, "after closing the odd ones")
	parallel("Close", even, b.Close)
	expect(t, ns, l, ps, nil, "after closing all")
}

// expect checks that List (the kernel) holds exactly ps[idx].
func expect(t *testing.T, ns Place, l rules.Lister, ps []rules.Pinhole, idx []int, when string) {
	t.Helper()
	var got []rules.Pinhole
	Do(t, ns, "List", func(ctx context.Context) (err error) { got, err = l.List(ctx); return err })
	want := make([]string, 0, len(idx))
	for _, i := range idx {
		want = append(want, key(ps[i]))
	}
	have := make([]string, 0, len(got))
	for _, p := range got {
		have = append(have, key(p))
	}
	sort.Strings(want)
	sort.Strings(have)
	if !slices.Equal(want, have) {
		t.Fatalf("%s: kernel holds %d pinholes, want %d\nmissing: %v\nextra:   %v", when, len(have), len(want),
			diff(want, have), diff(have, want))
	}
}

// key is what the kernel keeps of a pinhole: its tuple and session.
func key(p rules.Pinhole) string {
	return fmt.Sprintf("%s %s→%s #%d", p.Proto, p.Peer, p.Local, p.Session)
}

func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if _, found := slices.BinarySearch(b, s); !found {
			out = append(out, s)
		}
	}
	return out
}

// Restore checks that Setup, pinholes and Teardown leave a namespace's
// ruleset exactly as it was (iptables-save and ip6tables-save ignoring
// counters, and the list of ipsets), with KeepHooks leaving only our empty
// chains and hooks behind, which a later run reuses without duplicating.
func Restore(t *testing.T, c Config) {
	c.Require(t)
	ns := nstest.New(t)
	// a host ruleset of its own, in both families, and a set that is not ours
	nstest.DefaultDrop(t, ns, c.Variant)
	for _, fam := range []string{"4", "6"} {
		cmd := nstest.Cmd(fam, c.Variant)
		ns.Run(t, cmd, "-w", "-N", "HOST-SSH")
		ns.Run(t, cmd, "-w", "-A", "HOST-SSH", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		ns.Run(t, cmd, "-w", "-A", "INPUT", "-j", "HOST-SSH")
		ns.Run(t, cmd, "-w", "-A", "FORWARD", "-j", "DROP")
	}
	haveIpset := false
	if _, err := ns.Try("ipset", "create", "host-blocklist", "hash:ip"); err == nil {
		haveIpset = true
	}
	snapshot := func() string {
		s := ns.Save(t, "4", c.Variant) + "\n--\n" + ns.Save(t, "6", c.Variant)
		if haveIpset {
			s += "\n--\n" + strings.Join(ns.Sets(t), "\n")
		}
		return s
	}
	before := snapshot()

	run := func(opts rules.Options) rules.Backend {
		b := c.New(opts)
		Do(t, ns, "Setup", b.Setup)
		for i, p := range []rules.Pinhole{
			Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 1, time.Minute),
			Pinhole(nstest.OtherAddr4, nstest.ServerAddr4, 50001, 2, time.Minute),
			Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50002, 3, time.Minute),
		} {
			Do(t, ns, fmt.Sprint("Open ", i), func(ctx context.Context) error { return b.Open(ctx, p) })
		}
		Do(t, ns, "Teardown", b.Teardown)
		return b
	}

	// KeepHooks: pinholes go, hooks and chains stay
	opts := c.Options(t)
	opts.KeepHooks = true
	b := run(opts)
	kept := snapshot()
	if kept == before {
		t.Fatal("KeepHooks: Teardown removed the hooks too")
	}
	if got, err := listIn(ns, b); err != nil || len(got) != 0 {
		t.Fatalf("KeepHooks: after Teardown List = %v, %v; want no pinholes", got, err)
	}
	// the next run reuses them: same ruleset after its KeepHooks teardown
	run(opts)
	if again := snapshot(); again != kept {
		t.Fatalf("a second KeepHooks run changed the kept state:\nfirst:\n%s\nsecond:\n%s", kept, again)
	}
	// and a normal run removes everything
	run(c.Options(t))
	if after := snapshot(); after != before {
		t.Fatalf("Teardown did not restore the ruleset:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// a second Teardown, and a Teardown of a backend never set up, find
	// nothing to do and say so with nil
	b2 := c.New(c.Options(t))
	Do(t, ns, "Teardown without Setup", b2.Teardown)
	Do(t, ns, "Teardown again", b2.Teardown)
	if after := snapshot(); after != before {
		t.Fatalf("a cleanup Teardown changed the ruleset:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func listIn(ns Place, b rules.Backend) ([]rules.Pinhole, error) {
	exit, err := ns.Enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	return b.(rules.Lister).List(context.Background())
}

// ListFlush checks List and Flush from a second instance that never ran
// Setup, as `ftpalg rules show|flush` would be: it sees the daemon's
// pinholes with their sessions, and its Flush removes them while the
// daemon's later Close of a flushed pinhole still succeeds.
func ListFlush(t *testing.T, c Config) {
	ns, c := c.state(t)
	daemon := c.SetUp(t, ns, c.Options(t))
	ps := []rules.Pinhole{
		Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50010, 41, time.Minute),
		Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50011, 42, time.Minute),
		Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50012, 43, time.Minute),
	}
	for _, p := range ps {
		Do(t, ns, "Open", func(ctx context.Context) error { return daemon.Open(ctx, p) })
	}
	cli := c.New(c.Options(t)).(rules.Lister)
	expect(t, ns, cli, ps, []int{0, 1, 2}, "List from a second instance")
	for _, p := range mustList(t, ns, cli) {
		if p.Lifetime < 0 || p.Lifetime > time.Minute {
			t.Errorf("List: %s: lifetime %s, want within [0, 1m]", p, p.Lifetime)
		}
	}
	Do(t, ns, "Flush", cli.Flush)
	expect(t, ns, cli, ps, nil, "after Flush from a second instance")
	Do(t, ns, "Close after Flush", func(ctx context.Context) error { return daemon.Close(ctx, ps[0]) })
	// the daemon opens again after a flush
	Do(t, ns, "Open after Flush", func(ctx context.Context) error { return daemon.Open(ctx, ps[1]) })
	expect(t, ns, cli, ps, []int{1}, "after Open following Flush")
	Do(t, ns, "Flush", daemon.(rules.Lister).Flush)
	expect(t, ns, cli, ps, nil, "after the daemon's own Flush")
}

func mustList(t *testing.T, ns Place, l rules.Lister) []rules.Pinhole {
	t.Helper()
	var got []rules.Pinhole
	Do(t, ns, "List", func(ctx context.Context) (err error) { got, err = l.List(ctx); return err })
	return got
}

// Errors checks the classified errors callers rely on: a pinhole that
// cannot be expressed is ErrInvalid, and Open before Setup is ErrNotReady.
func Errors(t *testing.T, c Config) {
	ns, c := c.state(t)
	fresh := c.New(c.Options(t))
	var err error
	ns.Do(t, func() {
		err = fresh.Open(context.Background(), Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50000, 1, time.Second))
	})
	if !errors.Is(err, rules.ErrNotReady) {
		t.Errorf("Open before Setup: %v, want ErrNotReady", err)
	}
	b := c.SetUp(t, ns, c.Options(t))
	for _, p := range []rules.Pinhole{
		Pinhole(nstest.PeerAddr4, nstest.ServerAddr6, 50000, 1, time.Second),                  // mixed families
		Pinhole(nstest.PeerAddr4, netip.IPv4Unspecified(), 50000, 1, time.Second),             // any local address
		Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 0, 1, time.Second),                      // port 0
		{Proto: 17, Peer: nstest.PeerAddr4, Local: netip.AddrPortFrom(nstest.ServerAddr4, 1)}, // udp
	} {
		ns.Do(t, func() { err = b.Open(context.Background(), p) })
		if !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Open(%s): %v, want ErrInvalid", p, err)
		} else if !strings.HasPrefix(err.Error(), "rules/") {
			t.Errorf("Open(%s): %q does not name the backend", p, err)
		}
	}
	// an IPv4-mapped peer is the IPv4 peer
	mapped := Pinhole(netip.AddrFrom16(nstest.PeerAddr4.As16()), nstest.ServerAddr4, 50003, 1, time.Minute)
	Do(t, ns, "Open mapped", func(ctx context.Context) error { return b.Open(ctx, mapped) })
	got := mustList(t, ns, b.(rules.Lister))
	if len(got) != 1 || got[0].Peer != nstest.PeerAddr4 {
		t.Errorf("after opening a pinhole for an IPv4-mapped peer List = %v", got)
	}
	Do(t, ns, "Close mapped", func(ctx context.Context) error { return b.Close(ctx, mapped) })
	// closing what was never opened is fine
	Do(t, ns, "Close unknown", func(ctx context.Context) error {
		return b.Close(ctx, Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50009, 1, time.Second))
	})
}

// Reopen checks that pinholes are keyed by rules.Key (protocol, peer,
// local address and port), as the proxy relies on: opening a pinhole whose
// key is open already succeeds and leaves one pinhole (ipset refreshes its
// timeout and session, iptables keeps its rule), an IPv4-mapped peer is
// the same key, every Open is a hold that a Close by any pinhole of the
// key releases, the last Close removes it, and closing it again is fine
// (two sessions can hold one key: see rules.Backend).
func Reopen(t *testing.T, c Config) {
	ns, c := c.state(t)
	b := c.SetUp(t, ns, c.Options(t))
	l := b.(rules.Lister)
	p := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50020, 1, 30*time.Second)
	again := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50020, 2, time.Minute)
	mapped := Pinhole(netip.AddrFrom16(nstest.PeerAddr4.As16()), nstest.ServerAddr4, 50020, 3, time.Minute)
	other := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50021, 4, time.Minute)
	p6 := Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50020, 5, time.Minute)
	for _, q := range []rules.Pinhole{p, other, p6, again, mapped, p6} {
		Do(t, ns, "Open "+q.String(), func(ctx context.Context) error { return b.Open(ctx, q) })
	}
	keys := func(when string, want ...rules.Pinhole) {
		t.Helper()
		var have, wantKeys []string
		for _, q := range mustList(t, ns, l) {
			have = append(have, fmt.Sprint(q.Key()))
		}
		for _, q := range want {
			wantKeys = append(wantKeys, fmt.Sprint(q.Key()))
		}
		slices.Sort(have)
		slices.Sort(wantKeys)
		if !slices.Equal(have, wantKeys) {
			t.Fatalf("%s: List holds keys %v, want %v", when, have, wantKeys)
		}
	}
	keys("after opening three keys, two of them again", p, other, p6)
	// Three holds on p's key (p, again, mapped), two on p6's: each Close,
	// by any pinhole of the key, releases one, and the last removes it.
	closer := p
	closer.Session, closer.Lifetime = 9, time.Second
	Do(t, ns, "Close by another session's pinhole of the key", func(ctx context.Context) error { return b.Close(ctx, closer) })
	Do(t, ns, "Close again", func(ctx context.Context) error { return b.Close(ctx, again) })
	Do(t, ns, "Close p6", func(ctx context.Context) error { return b.Close(ctx, p6) })
	keys("after two of three Closes of p's key and one of two of p6's", p, other, p6)
	Do(t, ns, "Close mapped", func(ctx context.Context) error { return b.Close(ctx, mapped) })
	keys("after the last Close of p's key", other, p6)
	Do(t, ns, "Close p6 again", func(ctx context.Context) error { return b.Close(ctx, p6) })
	keys("after the last Close of p6's key", other)
	Do(t, ns, "Close of a key gone", func(ctx context.Context) error { return b.Close(ctx, p) })
	Do(t, ns, "Open after Close", func(ctx context.Context) error { return b.Open(ctx, p) })
	keys("after opening the key again", p, other)
}

// Lifecycle checks the state side of Setup and Teardown: a Setup clears
// what a run of the same instance left without Teardown (a crash) and
// leaves another instance's pinholes alone; after Teardown, Open is
// ErrNotReady and Close is fine; Teardown again, and Teardown of a backend
// that never ran Setup (the cleanup entry point), succeed; with KeepHooks
// Teardown still removes the pinholes, and the next run works.
func Lifecycle(t *testing.T, c Config) {
	ns, c := c.state(t)
	opts := c.Options(t)
	otherOpts := c.Options(t)
	otherOpts.Instance = "other"
	p1 := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50030, 1, time.Minute)
	p2 := Pinhole(nstest.PeerAddr6, nstest.ServerAddr6, 50031, 2, time.Minute)
	px := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, 50032, 3, time.Minute)
	open := func(b rules.Backend, ps ...rules.Pinhole) {
		t.Helper()
		for _, p := range ps {
			Do(t, ns, "Open "+p.String(), func(ctx context.Context) error { return b.Open(ctx, p) })
		}
	}
	all := []rules.Pinhole{p1, p2, px}

	crashed := c.New(opts)
	Do(t, ns, "Setup", crashed.Setup)
	open(crashed, p1, p2)
	x := c.SetUp(t, ns, otherOpts)
	open(x, px)
	restarted := c.New(opts)
	Do(t, ns, "Setup after a crash", restarted.Setup)
	expect(t, ns, restarted.(rules.Lister), all, nil, "after a restart's Setup")
	expect(t, ns, x.(rules.Lister), all, []int{2}, "the other instance's, after the restart's Setup")

	open(restarted, p1)
	Do(t, ns, "Teardown", restarted.Teardown)
	expect(t, ns, restarted.(rules.Lister), all, nil, "after Teardown")
	var err error
	ns.Do(t, func() { err = restarted.Open(context.Background(), p1) })
	if !errors.Is(err, rules.ErrNotReady) {
		t.Errorf("Open after Teardown: %v, want ErrNotReady", err)
	}
	Do(t, ns, "Close after Teardown", func(ctx context.Context) error { return restarted.Close(ctx, p1) })
	Do(t, ns, "Teardown again", restarted.Teardown)
	Do(t, ns, "Teardown without Setup", c.New(opts).Teardown)

	keep := opts
	keep.KeepHooks = true
	kept := c.New(keep)
	Do(t, ns, "Setup (KeepHooks)", kept.Setup)
	open(kept, p1, p2)
	Do(t, ns, "Teardown (KeepHooks)", kept.Teardown)
	expect(t, ns, kept.(rules.Lister), all, nil, "after a KeepHooks Teardown")
	next := c.SetUp(t, ns, opts)
	open(next, p2)
	expect(t, ns, next.(rules.Lister), all, []int{1}, "the next run after KeepHooks")
	expect(t, ns, x.(rules.Lister), all, []int{2}, "the other instance's, at the end")
}

// Latency is a benchmark's body: each b.Loop iteration opens and closes n
// pinholes one at a time (all n opened, then all closed, so the kernel
// holds up to n at once), then runs n Open+Close pairs from conc
// goroutines. It reports the medians and 99th percentiles of Open and
// Close over all iterations (open-median-µs, open-p99-µs, …) and the
// pairs per second, and logs them; ns/op is the time of one iteration.
func Latency(b *testing.B, c Config, n, conc int) Figures {
	c.Require(b)
	ns := nstest.New(b)
	be := c.SetUp(b, ns, c.Options(b))
	ps := make([]rules.Pinhole, n)
	for i := range ps {
		ps[i] = Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, uint16(10000+i), uint64(i), time.Minute)
	}
	var (
		opens, closes []time.Duration
		pairs         time.Duration // spent in the concurrent part
		rounds        int
	)
	for b.Loop() {
		ns.Do(b, func() {
			ctx := context.Background()
			for _, p := range ps {
				start := time.Now()
				if err := be.Open(ctx, p); err != nil {
					b.Fatal(err)
				}
				opens = append(opens, time.Since(start))
			}
			for _, p := range ps {
				start := time.Now()
				if err := be.Close(ctx, p); err != nil {
					b.Fatal(err)
				}
				closes = append(closes, time.Since(start))
			}
		})

		var (
			next atomic.Int64
			wg   sync.WaitGroup
			fail atomic.Value
		)
		start := time.Now()
		for range conc {
			wg.Go(func() {
				exit, err := c.enter(ns)
				if err != nil {
					fail.Store(err)
					return
				}
				defer exit()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					ctx := context.Background()
					if err := be.Open(ctx, ps[i]); err != nil {
						fail.Store(err)
						return
					}
					if err := be.Close(ctx, ps[i]); err != nil {
						fail.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err, _ := fail.Load().(error); err != nil {
			b.Fatal(err)
		}
		pairs += time.Since(start)
		rounds++
	}
	f := Figures{N: n, Conc: conc, Rounds: rounds}
	f.OpenMedian, f.OpenP99 = percentiles(opens)
	f.CloseMedian, f.CloseP99 = percentiles(closes)
	f.PerSecond = float64(n*rounds) / pairs.Seconds()
	µs := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(µs(f.OpenMedian), "open-median-µs")
	b.ReportMetric(µs(f.OpenP99), "open-p99-µs")
	b.ReportMetric(µs(f.CloseMedian), "close-median-µs")
	b.ReportMetric(µs(f.CloseP99), "close-p99-µs")
	b.ReportMetric(f.PerSecond, "pairs/s")
	variant := c.Variant
	if variant == "" {
		variant = "iptables on PATH"
	}
	b.Logf("%s (%s): %s", be.Name(), variant, f)
	return f
}

// Figures are the results of Latency.
type Figures struct {
	N, Conc               int
	Rounds                int // b.Loop iterations the figures are over
	OpenMedian, OpenP99   time.Duration
	CloseMedian, CloseP99 time.Duration
	PerSecond             float64 // Open+Close pairs per second with Conc goroutines
}

func (f Figures) String() string {
	return fmt.Sprintf("%d pinholes × %d rounds: open median %s p99 %s; close median %s p99 %s; %d goroutines: %.0f open+close/s",
		f.N, f.Rounds, f.OpenMedian, f.OpenP99, f.CloseMedian, f.CloseP99, f.Conc, f.PerSecond)
}

func percentiles(d []time.Duration) (median, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}

// noCapEnv marks the child process NotPermitted starts.
const noCapEnv = "FTPALG_RULES_NOCAP"

// NotPermitted runs the same test again in a child process inside a fresh
// namespace, with every capability dropped (setpriv), and there checks that
// Setup and List fail with ErrNotPermitted and the operator's hint — the
// classification against the real kernel and binaries, not made-up errors.
func NotPermitted(t *testing.T, c Config) {
	if os.Getenv(noCapEnv) == "1" {
		ctx := context.Background()
		b := c.New(c.Options(t))
		err := b.Setup(ctx)
		if !errors.Is(err, rules.ErrNotPermitted) || !strings.Contains(err.Error(), rules.HintNotPermitted) {
			t.Fatalf("Setup without CAP_NET_ADMIN: %v; want ErrNotPermitted with %q", err, rules.HintNotPermitted)
		}
		t.Logf("Setup: %v", err)
		if _, err := b.(rules.Lister).List(ctx); !errors.Is(err, rules.ErrNotPermitted) {
			t.Fatalf("List without CAP_NET_ADMIN: %v; want ErrNotPermitted", err)
		}
		return
	}
	c.Require(t)
	nstest.Require(t, "setpriv")
	ns := nstest.New(t)
	run := "^" + strings.ReplaceAll(t.Name(), "/", "$/^") + "$"
	cmd := exec.Command("ip", "netns", "exec", ns.Name,
		"setpriv", "--bounding-set=-all", "--inh-caps=-all",
		os.Args[0], "-test.run="+run, "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), noCapEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child without capabilities: %v\n%s", err, out)
	}
	for l := range strings.SplitSeq(string(out), "\n") {
		if strings.Contains(l, "Setup: rules/") {
			t.Log("child:", strings.TrimSpace(l))
		}
	}
}

// Instances runs two backends with different Options.Instance in one
// default-DROP namespace: the second's Setup leaves the first's pinholes,
// and the first's Teardown leaves the second's hooks, chains, sets and
// pinholes — a connection through the second's pinhole still gets in.
func Instances(t *testing.T, c Config) {
	c.Require(t)
	topo := nstest.NewTopology(t)
	nstest.DefaultDrop(t, topo.Server, c.Variant)
	ns := topo.Server
	optsA, optsB := c.Options(t), c.Options(t)
	optsA.Instance, optsB.Instance = "a", "b"
	a, b := c.New(optsA), c.New(optsB)
	lnA := ns.Listen(t, netip.AddrPortFrom(nstest.ServerAddr4, 0))
	lnB := ns.Listen(t, netip.AddrPortFrom(nstest.ServerAddr4, 0))
	go echo(lnA)
	go echo(lnB)
	portA, portB := lnA.Addr().(*net.TCPAddr).AddrPort(), lnB.Addr().(*net.TCPAddr).AddrPort()
	pa := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, portA.Port(), 1, time.Minute)
	pb := Pinhole(nstest.PeerAddr4, nstest.ServerAddr4, portB.Port(), 2, time.Minute)

	Do(t, ns, "Setup a", a.Setup)
	Do(t, ns, "Open a", func(ctx context.Context) error { return a.Open(ctx, pa) })
	Do(t, ns, "Setup b", b.Setup)
	Do(t, ns, "Open b", func(ctx context.Context) error { return b.Open(ctx, pb) })
	expect(t, ns, a.(rules.Lister), []rules.Pinhole{pa}, []int{0}, "a's pinholes after b's Setup")
	expect(t, ns, b.(rules.Lister), []rules.Pinhole{pb}, []int{0}, "b's pinholes")

	Do(t, ns, "Teardown a", a.Teardown)
	mustDrop(t, topo, nstest.PeerAddr4, portA, "a's pinhole after a's Teardown")
	conn, err := topo.Peer.Dial(nstest.PeerAddr4, portB, 2*time.Second)
	if err != nil {
		t.Fatalf("b's pinhole after a's Teardown: %v", err)
	}
	conn.Close()
	for _, fam := range []string{"4", "6"} {
		rs := strings.Join(ns.Rules(t, fam, c.Variant), "\n")
		if strings.Contains(rs, "FTPALG-INPUT-a") || !strings.Contains(rs, "-j FTPALG-INPUT-b") {
			t.Errorf("after a's Teardown, %s -S:\n%s", nstest.Cmd(fam, c.Variant), rs)
		}
	}
	Do(t, ns, "Teardown b", b.Teardown)
	for _, fam := range []string{"4", "6"} {
		if rs := strings.Join(ns.Rules(t, fam, c.Variant), "\n"); strings.Contains(rs, "FTPALG") {
			t.Errorf("after both Teardowns, %s -S:\n%s", nstest.Cmd(fam, c.Variant), rs)
		}
	}
}
