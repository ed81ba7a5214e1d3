package nftpath

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/ipset"
)

// The packet tests run three namespaces, client ─ router ─ server
// (nstest.Chain), the data path in the router. The client and the server
// route each other's network via the router, so that a transparent
// mapping (the client connects to the server's address) passes it too.

// newChain builds the three namespaces with forwarding and conntrack
// accounting on in the router, and a third address on the client's side
// (intruder) of each family.
func newChain(t *testing.T) *nstest.Chain {
	t.Helper()
	require(t)
	ch := nstest.NewChain(t, nstest.ChainOptions{Forwarding: true,
		ClientRoutes: []netip.Prefix{nstest.V4.ServerNet, nstest.V6.ServerNet},
		ServerRoutes: []netip.Prefix{nstest.V4.ClientNet, nstest.V6.ClientNet}})
	ch.Router.Sysctl(t, "net.netfilter.nf_conntrack_acct", "1")
	for _, f := range nstest.Families {
		ch.Client.Addr(t, "eth0", netip.PrefixFrom(intruder(f), f.ClientNet.Bits()).String())
	}
	return ch
}

// intruder is a third address beside the client: .11 / ::11.
func intruder(f nstest.Family) netip.Addr {
	a := f.Client.As16()
	a[15]++
	if f.Client.Is4() {
		return netip.AddrFrom4([4]byte(a[12:]))
	}
	return netip.AddrFrom16(a)
}

// server accepts connections on the server's address of a family and
// records from where each came; each is then handled by serve (nil:
// echo).
type server struct {
	ln    *net.TCPListener
	addr  netip.AddrPort
	conns chan accepted
}

type accepted struct {
	c      *net.TCPConn
	remote netip.AddrPort
}

func newServer(t *testing.T, ch *nstest.Chain, f nstest.Family) *server {
	t.Helper()
	ln := ch.Server.Listen(t, netip.AddrPortFrom(f.Server, 0))
	s := &server{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), conns: make(chan accepted, 16)}
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			s.conns <- accepted{c, c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		}
	}()
	return s
}

// accept returns the next connection the server accepted, within 5 s.
func (s *server) accept(t *testing.T) accepted {
	t.Helper()
	select {
	case a := <-s.conns:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("the server accepted nothing within 5 s")
		return accepted{}
	}
}

// none checks that the server accepted nothing.
func (s *server) none(t *testing.T, when string) {
	t.Helper()
	select {
	case a := <-s.conns:
		t.Fatalf("%s: the server accepted a connection from %s", when, a.remote)
	default:
	}
}

// notForwarded dials from src to dst and wants it not to reach the
// server: refused (the host it was addressed to answered) or dropped.
func notForwarded(t *testing.T, ch *nstest.Chain, s *server, src netip.Addr, dst netip.AddrPort, when string) {
	t.Helper()
	c, err := ch.Client.Dial(src, dst, 600*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connect from %s to %s succeeded, want it refused or dropped", when, src, dst)
	}
	time.Sleep(20 * time.Millisecond)
	s.none(t, when)
}

// ipHeaders is what conntrack counts besides the payload for n packets
// of a connection on Linux defaults: IP and TCP headers with the
// timestamp option (IPv4 52 bytes, IPv6 72), and 8 more on the SYN or
// SYN-ACK for MSS, SACK-permitted and window scale.
func ipHeaders(n uint64, v6 bool) uint64 {
	hdr := uint64(52)
	if v6 {
		hdr = 72
	}
	return n*hdr + 8
}

// TestPackets: real connections through the router, per family: a
// reverse-proxy mapping (the client connects to the router's address,
// DNAT to the server, SNAT to the router's address on the server's side:
// the server sees the router) and a transparent one (the client connects
// to the server's address on another port, no SNAT: the server sees the
// client). Each forwards exactly one connection: an intruder from a third
// address is not forwarded (and does not use the mapping up), a second
// connection from the client is not forwarded. Used closes on the
// connection, Flow's counters are conntrack's, exactly the bytes sent
// plus the headers, and Flow says Closed once both ends have closed.
func TestPackets(t *testing.T) {
	ch := newChain(t)
	d := setUp(t, ch.Router, rules.Options{})
	for i, f := range nstest.Families {
		t.Run(f.Name, func(t *testing.T) {
			s := newServer(t, ch, f)
			for j, tc := range []struct {
				name      string
				announced netip.AddrPort
				source    netip.Addr
				seen      netip.Addr // the server sees the connection from
			}{
				{"reverse", netip.AddrPortFrom(f.RouterClient, 50000), f.RouterServer, f.RouterServer},
				{"transparent", netip.AddrPortFrom(f.Server, 50001), netip.Addr{}, f.Client},
			} {
				t.Run(tc.name, func(t *testing.T) {
					m := rules.Mapping{Peer: f.Client, Announced: tc.announced, Target: s.addr, Source: tc.source,
						Lifetime: 30 * time.Second, Session: uint64(10*i + j)}
					fwd := mapIn(t, ch.Router, d, m)
					notForwarded(t, ch, s, intruder(f), m.Announced, "from a third address")
					select {
					case <-fwd.Used():
						t.Fatal("the intruder's connection used the mapping")
					default:
					}
					c, err := ch.Client.Dial(f.Client, m.Announced, 2*time.Second)
					if err != nil {
						t.Fatalf("connect from %s to %s: %v", f.Client, m.Announced, err)
					}
					defer c.Close()
					a := s.accept(t)
					if a.remote.Addr() != tc.seen {
						t.Errorf("the server sees the connection from %s, want %s", a.remote, tc.seen)
					}
					select {
					case <-fwd.Used():
					case <-time.After(5 * time.Second):
						t.Fatal("Used did not close within 5 s of the connection")
					}
					notForwarded(t, ch, s, f.Client, m.Announced, "a second connection")
					if _, elems := listTable(t, ch.Router, TableName); len(elems) != 0 {
						t.Errorf("elements after the connection: %v", elems)
					}

					// bytes both ways, then both ends close
					up, down := make([]byte, 100_000), make([]byte, 7_000)
					var wg sync.WaitGroup
					wg.Go(func() { io.Copy(io.Discard, a.c) })
					if _, err := c.Write(up); err != nil {
						t.Fatal(err)
					}
					if _, err := a.c.Write(down); err != nil {
						t.Fatal(err)
					}
					if _, err := io.ReadFull(c, make([]byte, len(down))); err != nil {
						t.Fatal(err)
					}
					c.CloseWrite()
					wg.Wait()
					a.c.Close()
					c.Close()
					var fl rules.Flow
					deadline := time.Now().Add(5 * time.Second)
					for {
						if fl, err = fwd.Flow(context.Background()); err != nil {
							t.Fatalf("Flow: %v", err)
						}
						if fl.Closed || time.Now().After(deadline) {
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
					if !fl.Closed || !fl.Counted || fl.PeerPort != uint16(c.LocalAddr().(*net.TCPAddr).Port) {
						t.Errorf("Flow after both ends closed: %+v", fl)
					}
					v6 := f.Client.Is6()
					if want := uint64(len(up)) + ipHeaders(fl.ToTarget.Packets, v6); fl.ToTarget.Bytes != want {
						t.Errorf("to the target: %d bytes in %d packets, want %d (%d sent)", fl.ToTarget.Bytes, fl.ToTarget.Packets, want, len(up))
					}
					if want := uint64(len(down)) + ipHeaders(fl.FromTarget.Packets, v6); fl.FromTarget.Bytes != want {
						t.Errorf("from the target: %d bytes in %d packets, want %d (%d sent)", fl.FromTarget.Bytes, fl.FromTarget.Packets, want, len(down))
					}
					doIn(t, ch.Router, "Close", fwd.Close)
				})
			}
		})
	}
}

// TestForwardPinhole: a router with FORWARD policy DROP (and ESTABLISHED
// accepted) and the ipset pinhole backend: Setup sees the backend's hook
// and does not warn; a mapped connection without a Forward pinhole is
// dropped, with one (peer → target, as the proxy opens it) it passes,
// and once the pinhole is closed a direct connection to the target is
// dropped while the forwarded one goes on.
func TestForwardPinhole(t *testing.T) {
	ch := newChain(t)
	nstest.Require(t, "ipset")
	nstest.ForwardDrop(t, ch.Router, "")
	fw := ipset.New(rules.Options{Logger: zaptest.NewLogger(t)})
	doIn(t, ch.Router, "ipset Setup", fw.Setup)
	t.Cleanup(func() { doIn(t, ch.Router, "ipset Teardown", fw.Teardown) })
	o := setUpObservedKeep(t, ch.Router, rules.Options{})
	if w := o.logs.FilterMessage(MsgForwardDropped).All(); len(w) != 0 {
		t.Errorf("warnings with the ipset backend's FORWARD hook: %v", w)
	}
	d := o.d
	for i, f := range nstest.Families {
		t.Run(f.Name, func(t *testing.T) {
			s := newServer(t, ch, f)
			m := rules.Mapping{Peer: f.Client, Announced: netip.AddrPortFrom(f.RouterClient, 50010), Target: s.addr,
				Source: f.RouterServer, Lifetime: 30 * time.Second, Session: uint64(i)}
			fwd := mapIn(t, ch.Router, d, m)
			notForwarded(t, ch, s, f.Client, m.Announced, "mapped, without a Forward pinhole")
			doIn(t, ch.Router, "Close", fwd.Close)

			m.Announced = netip.AddrPortFrom(f.RouterClient, 50011)
			p := rules.Pinhole{Proto: rules.ProtoTCP, Peer: f.Client, Local: s.addr, Forward: true, Lifetime: 30 * time.Second, Session: uint64(i)}
			doIn(t, ch.Router, "Open", func(ctx context.Context) error { return fw.Open(ctx, p) })
			fwd = mapIn(t, ch.Router, d, m)
			c, err := ch.Client.Dial(f.Client, m.Announced, 2*time.Second)
			if err != nil {
				t.Fatalf("mapped, with the Forward pinhole: %v", err)
			}
			defer c.Close()
			a := s.accept(t)
			<-fwd.Used()
			doIn(t, ch.Router, "Close pinhole", func(ctx context.Context) error { return fw.Close(ctx, p) })
			notForwarded(t, ch, s, f.Client, s.addr, "straight to the target after the pinhole closed")
			nstest.Exchange(t, c, a.c)
		})
	}
}

// setUpObservedKeep is setUpObserved whose data path stays set up.
func setUpObservedKeep(t *testing.T, n *nstest.NS, opts rules.Options) observed {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	opts.Logger = zap.New(core)
	return observed{d: setUp(t, n, opts), logs: logs}
}

// TestSyncAfterFlush: `nft flush ruleset` (a firewall reload) takes the
// table; mapped connections are not forwarded; one Sync puts back
// exactly the objects and the mapping not used (not the used one, not
// the closed one), which then forwards; a second Sync restores nothing.
func TestSyncAfterFlush(t *testing.T) {
	ch := newChain(t)
	d := setUp(t, ch.Router, rules.Options{})
	f := nstest.V4
	s := newServer(t, ch, f)
	mk := func(port uint16, session uint64) rules.Mapping {
		return rules.Mapping{Peer: f.Client, Announced: netip.AddrPortFrom(f.RouterClient, port), Target: s.addr,
			Source: f.RouterServer, Lifetime: 30 * time.Second, Session: session}
	}
	usedM := mk(50020, 1)
	used := mapIn(t, ch.Router, d, usedM)
	c, err := ch.Client.Dial(f.Client, usedM.Announced, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.accept(t)
	<-used.Used()
	closedM := withTarget(mk(50021, 2), netip.AddrPortFrom(f.Server, s.addr.Port()+1))
	doIn(t, ch.Router, "Close", mapIn(t, ch.Router, d, closedM).Close)
	liveM := withTarget(mk(50022, 3), netip.AddrPortFrom(f.Server, s.addr.Port()+2))
	live := mapIn(t, ch.Router, d, liveM)

	ch.Router.Run(t, "nft", "flush", "ruleset")
	var err2 error
	ch.Router.Do(t, func() { _, err2 = d.Map(context.Background(), mk(50023, 4)) })
	if !errors.Is(err2, rules.ErrNotReady) {
		t.Errorf("Map with the table gone: %v, want ErrNotReady", err2)
	}
	var r rules.Restored
	doIn(t, ch.Router, "Sync", func(ctx context.Context) (err error) { r, err = d.Sync(ctx); return err })
	if r.String() != "table inet ftpalg, 1 mapping" {
		t.Errorf("Sync after a flush restored %q, want the table and 1 mapping", r)
	}
	if objs, elems := listTable(t, ch.Router, TableName); !slices.Equal(objs, wantObjects(TableName)) || len(elems) != 3 ||
		!strings.Contains(elems[0], "ftpalg session 3") {
		t.Errorf("after Sync: objects %v, elements %v", objs, elems)
	}
	doIn(t, ch.Router, "Sync", func(ctx context.Context) (err error) { r, err = d.Sync(ctx); return err })
	if !r.Empty() {
		t.Errorf("a second Sync restored %v", r)
	}
	// the restored mapping forwards (to a listener on its target port)
	ln := ch.Server.Listen(t, liveM.Target)
	c, err = ch.Client.Dial(f.Client, liveM.Announced, 2*time.Second)
	if err != nil {
		t.Fatalf("the restored mapping: %v", err)
	}
	c.Close()
	nstest.Accept(t, ln)
	select {
	case <-live.Used():
	case <-time.After(5 * time.Second):
		t.Fatal("the restored mapping's Used did not close")
	}
}

// TestWatch: rules.Watch notices the flush within its interval and puts
// the table back, logging rules.MsgRestored.
func TestWatch(t *testing.T) {
	n := newNS(t)
	d := setUp(t, n, rules.Options{})
	mapIn(t, n, d, rules.Mapping{Peer: peer, Announced: annc, Target: target, Lifetime: time.Minute, Session: 5})
	core, logs := observer.New(zap.InfoLevel)
	stop := rules.StartWatch(context.Background(), 100*time.Millisecond, zap.New(core), d)
	defer stop()
	n.Run(t, "nft", "flush", "ruleset")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, elems := listTable(t, n, TableName); len(elems) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the table is not back 15 s after the flush")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if w := logs.FilterMessage(rules.MsgRestored).All(); len(w) != 1 || w[0].ContextMap()["firewall"] != Name ||
		w[0].ContextMap()["restored"] != "table inet ftpalg, 1 mapping" {
		t.Errorf("logged %v, want one %q for the table and 1 mapping", w, rules.MsgRestored)
	}
}

// noCapEnv marks the child process TestNotPermitted starts.
const noCapEnv = "FTPALG_NFTPATH_NOCAP"

// TestNotPermitted runs again in a child process without capabilities
// (setpriv), in a fresh namespace, and there checks that Setup, Mappings
// and Teardown fail with ErrNotPermitted and the operator's hint.
func TestNotPermitted(t *testing.T) {
	if os.Getenv(noCapEnv) == "1" {
		ctx := context.Background()
		d := New(rules.Options{})
		for what, err := range map[string]error{
			"Setup":    d.Setup(ctx),
			"Mappings": func() error { _, err := d.Mappings(ctx); return err }(),
			"Teardown": d.Teardown(ctx),
		} {
			if !errors.Is(err, rules.ErrNotPermitted) || !strings.Contains(err.Error(), rules.HintNotPermitted) {
				t.Errorf("%s without CAP_NET_ADMIN: %v; want ErrNotPermitted with %q", what, err, rules.HintNotPermitted)
			}
			t.Logf("%s: %v", what, err)
		}
		return
	}
	nstest.Require(t, "setpriv")
	n := newNS(t)
	cmd := exec.Command("ip", "netns", "exec", n.Name, "setpriv", "--bounding-set=-all", "--inh-caps=-all",
		os.Args[0], "-test.run=^TestNotPermitted$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), noCapEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child without capabilities: %v\n%s", err, out)
	}
}

// TestWithoutDestroy runs the element removals as on a kernel before 6.3,
// without NFT_MSG_DESTROYSETELEM (Debian 12's 6.1): a missing element
// fails a delete batch, so the removals fall back to one element at a
// time. Close of an unused mapping, of one that expired, and the
// watcher's removal after use all leave no element and no error.
func TestWithoutDestroy(t *testing.T) {
	ch := newChain(t)
	d := setUp(t, ch.Router, rules.Options{})
	k := d.k.(*nftKernel)
	if !k.hasDestroy {
		t.Log("this kernel has no NFT_MSG_DESTROYSETELEM: the fallback is what runs anyway")
	}
	k.mu.Lock()
	k.hasDestroy = false
	k.mu.Unlock()
	f := nstest.V4
	s := newServer(t, ch, f)
	mk := func(port uint16, life time.Duration) rules.Mapping {
		return rules.Mapping{Peer: f.Client, Announced: netip.AddrPortFrom(f.RouterClient, port),
			Target: netip.AddrPortFrom(f.Server, s.addr.Port()+port-50030), Source: f.RouterServer, Lifetime: life, Session: uint64(port)}
	}
	doIn(t, ch.Router, "Close unused", mapIn(t, ch.Router, d, mk(50031, time.Minute)).Close)
	expiring := mapIn(t, ch.Router, d, mk(50032, time.Second))
	used := mapIn(t, ch.Router, d, mk(50030, time.Minute))
	c, err := ch.Client.Dial(f.Client, mk(50030, 0).Announced, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.accept(t)
	<-used.Used()
	time.Sleep(2100 * time.Millisecond) // the 1 s mapping expires in the kernel
	doIn(t, ch.Router, "Close expired", expiring.Close)
	doIn(t, ch.Router, "Close used", used.Close)
	if _, elems := listTable(t, ch.Router, TableName); len(elems) != 0 {
		t.Errorf("elements left: %v", elems)
	}
}
