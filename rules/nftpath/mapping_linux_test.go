package nftpath

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// The tests in this file run without root: the data path's mapping logic
// over fakeKernel and fakeTracker.

var (
	peer    = netip.MustParseAddr("198.51.100.10")
	intrude = netip.MustParseAddr("198.51.100.11")
	annc    = netip.MustParseAddrPort("198.51.100.1:50000")
	target  = netip.MustParseAddrPort("192.0.2.10:40000")
	source  = netip.MustParseAddr("192.0.2.1")
	peer6   = netip.MustParseAddr("2001:db8:1::10")
	annc6   = netip.MustParseAddrPort("[2001:db8:1::1]:50000")
	target6 = netip.MustParseAddrPort("[2001:db8:2::10]:40000")
)

func mapping(port uint16, session uint64) rules.Mapping {
	return rules.Mapping{Peer: peer, Announced: netip.AddrPortFrom(annc.Addr(), port), Target: target, Source: source,
		Lifetime: 30 * time.Second, Session: session}
}

func setUpFake(t *testing.T) (*DataPath, *fakeKernel, *fakeTracker, *clock) {
	t.Helper()
	d, k, ct, c := onFakes(zap.NewNop(), false)
	if err := d.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { d.Teardown(context.Background()) })
	return d, k, ct, c
}

func mustMap(t *testing.T, d *DataPath, m rules.Mapping) rules.Forward {
	t.Helper()
	f, err := d.Map(context.Background(), m)
	if err != nil {
		t.Fatalf("Map %s: %v", m, err)
	}
	return f
}

func waitUsed(t *testing.T, f rules.Forward) {
	t.Helper()
	select {
	case <-f.Used():
	case <-time.After(5 * time.Second):
		t.Fatal("Used did not close within 5 s")
	}
}

func notUsed(t *testing.T, f rules.Forward, when string) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // the watcher's goroutine had its chance
	select {
	case <-f.Used():
		t.Fatalf("%s: Used closed", when)
	default:
	}
}

// connect plays a SYN from src:port to dst through the fake kernel and,
// when it is forwarded, conntrack's NEW event; it says whether it was.
func connect(k *fakeKernel, ct *fakeTracker, src netip.Addr, port uint16, dst netip.AddrPort, e entry) bool {
	from := netip.AddrPortFrom(src, port)
	to, ok := k.connect(from, dst)
	if !ok {
		ct.emit(from, dst, netip.AddrPort{}, e) // delivered locally or dropped, not DNATed
		return false
	}
	ct.emit(from, dst, to, e)
	return true
}

// TestMapUsedOnce: Map puts the three elements in; the peer's connection
// is forwarded once, its event closes Used and takes the DNAT and SNAT
// elements out; a second connection and an intruder are not forwarded;
// Close after use does nothing more.
func TestMapUsedOnce(t *testing.T) {
	d, k, ct, _ := setUpFake(t)
	m := mapping(50000, 7)
	f := mustMap(t, d, m)
	if len(k.arm) != 1 || k.dnat[m.Key()] != target || k.snat[snatKey{peer, target}] != source {
		t.Fatalf("after Map: armed %v dnat %v snat %v", k.arm, k.dnat, k.snat)
	}
	if _, err := f.Flow(context.Background()); !errors.Is(err, rules.ErrNotUsed) {
		t.Errorf("Flow before Used: %v, want ErrNotUsed", err)
	}
	if connect(k, ct, intrude, 33000, m.Announced, entry{}) {
		t.Fatal("an intruder's connection was forwarded")
	}
	notUsed(t, f, "after the intruder's connection")
	if !connect(k, ct, peer, 33001, m.Announced, entry{orig: rules.Counter{Packets: 3, Bytes: 180}}) {
		t.Fatal("the peer's connection was not forwarded")
	}
	waitUsed(t, f)
	fl, err := f.Flow(context.Background())
	if err != nil || fl.PeerPort != 33001 || fl.ToTarget.Bytes != 180 || !fl.Counted || fl.Closed || fl.Seen.IsZero() {
		t.Errorf("Flow = %+v, %v", fl, err)
	}
	k.mu.Lock()
	left := len(k.arm) + len(k.dnat) + len(k.snat)
	k.mu.Unlock()
	if left != 0 {
		t.Errorf("after Used the kernel holds %d elements, want none", left)
	}
	if connect(k, ct, peer, 33002, m.Announced, entry{}) {
		t.Error("a second connection was forwarded")
	}
	removes := k.count("remove")
	if err := f.Close(context.Background()); err != nil {
		t.Errorf("Close after use: %v", err)
	}
	if n := k.count("remove"); n != removes {
		t.Errorf("Close after use asked the kernel %d times, want none", n-removes)
	}
	if ms, _ := d.Mappings(context.Background()); len(ms) != 0 {
		t.Errorf("Mappings after use = %v", ms)
	}
}

// TestEventsNotOurs: an event is matched on the original tuple and on the
// reply's source being the target: one not DNATed to it (another DNAT, or
// none, say after a flush) does not use the mapping; neither does a UDP
// event.
func TestEventsNotOurs(t *testing.T) {
	d, _, ct, _ := setUpFake(t)
	m := mapping(50000, 7)
	f := mustMap(t, d, m)
	ct.emit(netip.AddrPortFrom(peer, 1), m.Announced, netip.AddrPort{}, entry{})
	ct.emit(netip.AddrPortFrom(peer, 2), m.Announced, netip.MustParseAddrPort("192.0.2.99:40000"), entry{})
	ev := newEvent(netip.AddrPortFrom(peer, 3), m.Announced, target)
	ev.proto = 17
	ct.send(ev)
	notUsed(t, f, "after events not ours")
	ct.emit(netip.AddrPortFrom(peer, 4), m.Announced, target, entry{})
	waitUsed(t, f)
}

// TestCloseUnused: Close of an unused mapping removes its elements; again
// is fine; the key may be mapped again.
func TestCloseUnused(t *testing.T) {
	d, k, _, _ := setUpFake(t)
	m := mapping(50000, 7)
	f := mustMap(t, d, m)
	for range 2 {
		if err := f.Close(context.Background()); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if len(k.arm)+len(k.dnat)+len(k.snat) != 0 {
		t.Errorf("after Close: armed %v dnat %v snat %v", k.arm, k.dnat, k.snat)
	}
	mustMap(t, d, m)
}

// TestMapRefusals: a key mapped already, a second mapping of the same peer
// and target while one wants SNAT, IPv4-to-IPv6, loopback and this host's
// own targets and peers, IPv6 on a host not forwarding it, Map before Setup and
// after Teardown.
func TestMapRefusals(t *testing.T) {
	d, k, _, c := setUpFake(t)
	m := mapping(50000, 7)
	mustMap(t, d, m)
	same := mapping(50000, 8)
	if _, err := d.Map(context.Background(), same); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "mapped already") {
		t.Errorf("Map of a mapped key: %v", err)
	}
	sameTarget := mapping(50001, 9)
	if _, err := d.Map(context.Background(), sameTarget); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "SNAT") {
		t.Errorf("Map of a second mapping to the same target with SNAT: %v", err)
	}
	// past its lifetime the old one no longer counts (the proxy is closing it)
	c.Add(31 * time.Second)
	mustMap(t, d, same)
	mustMap(t, d, withTarget(sameTarget, netip.MustParseAddrPort("192.0.2.10:40001")))
	for _, bad := range []rules.Mapping{
		{Peer: peer, Announced: annc, Target: target6},
		{Peer: peer, Announced: annc, Target: netip.MustParseAddrPort("127.0.0.1:21")},
		{Peer: peer, Announced: annc, Target: netip.AddrPortFrom(netip.IPv4Unspecified(), 1)},
		// A server on loopback in active mode: its SYN never passes
		// prerouting (found by test/e2e TestKernelSpliceFallback).
		{Peer: netip.MustParseAddr("127.0.0.1"), Announced: netip.MustParseAddrPort("127.0.0.1:50000"), Target: target},
	} {
		if _, err := d.Map(context.Background(), bad); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Map(%s) = %v, want ErrInvalid", bad, err)
		}
	}
	if own := ownAddr(t); own.IsValid() {
		bad := rules.Mapping{Peer: peer, Announced: annc, Target: netip.AddrPortFrom(own, 21)}
		if err := d.Supports(bad); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "own address") {
			t.Errorf("Supports(%s) = %v, want ErrInvalid naming the host's own address", bad, err)
		}
		bad = rules.Mapping{Peer: own, Announced: annc, Target: target}
		if err := d.Supports(bad); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "peer") {
			t.Errorf("Supports(%s) = %v, want ErrInvalid naming the peer as the host's own address", bad, err)
		}
	}
	adds := k.count("add")
	if err := d.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Map(context.Background(), mapping(50002, 1)); !errors.Is(err, rules.ErrNotReady) {
		t.Errorf("Map after Teardown: %v, want ErrNotReady", err)
	}
	if k.count("add") != adds {
		t.Error("a refused Map asked the kernel")
	}

	d6, _, _, _ := onFakes(zap.NewNop(), true)
	if err := d6.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d6.Teardown(context.Background())
	m6 := rules.Mapping{Peer: peer6, Announced: annc6, Target: target6}
	if err := d6.Supports(m6); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "IPv6 forwarding is off") {
		t.Errorf("Supports(IPv6) without IPv6 forwarding = %v", err)
	}
	if _, err := New(rules.Options{}).Map(context.Background(), mapping(50000, 1)); !errors.Is(err, rules.ErrNotReady) {
		t.Errorf("Map before Setup: %v, want ErrNotReady", err)
	}
}

func withTarget(m rules.Mapping, t netip.AddrPort) rules.Mapping { m.Target = t; return m }

// ownAddr returns one of this host's addresses that is not loopback, or
// the zero Addr.
func ownAddr(t *testing.T) netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() && p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// TestFlowStates: Flow reads conntrack each time; a closed connection says
// Closed; once conntrack forgot it, the last reading comes back Closed; a
// mapping whose entry was never read fails then; with accounting off
// (no counters) Counted is false.
func TestFlowStates(t *testing.T) {
	d, k, ct, _ := setUpFake(t)
	m, m2 := mapping(50000, 7), withTarget(mapping(50001, 8), netip.MustParseAddrPort("192.0.2.10:40001"))
	f, f2 := mustMap(t, d, m), mustMap(t, d, m2)
	connect(k, ct, peer, 33001, m.Announced, entry{orig: rules.Counter{Packets: 1, Bytes: 60}})
	connect(k, ct, peer, 33002, m2.Announced, entry{})
	waitUsed(t, f)
	waitUsed(t, f2)
	if fl, err := f2.Flow(context.Background()); err != nil || fl.Counted {
		t.Errorf("Flow without accounting = %+v, %v; want Counted false", fl, err)
	}
	ct.record(netip.AddrPortFrom(peer, 33001), m.Announced, target,
		entry{orig: rules.Counter{Packets: 10, Bytes: 5000}, reply: rules.Counter{Packets: 8, Bytes: 400}, closed: true})
	fl, err := f.Flow(context.Background())
	if err != nil || !fl.Closed || fl.ToTarget.Bytes != 5000 || fl.FromTarget.Packets != 8 {
		t.Fatalf("Flow of a closed connection = %+v, %v", fl, err)
	}
	ct.mu.Lock()
	clear(ct.entries)
	ct.mu.Unlock()
	if again, err := f.Flow(context.Background()); err != nil || again != fl {
		t.Errorf("Flow once conntrack forgot it = %+v, %v; want the last reading %+v", again, err, fl)
	}
	f3 := mustMap(t, d, withTarget(mapping(50002, 9), netip.MustParseAddrPort("192.0.2.10:40002")))
	connect(k, ct, peer, 33003, mapping(50002, 9).Announced, entry{})
	waitUsed(t, f3)
	ct.mu.Lock()
	clear(ct.entries)
	ct.mu.Unlock()
	if _, err := f3.Flow(context.Background()); err == nil {
		t.Error("Flow of a connection conntrack never showed: no error")
	}
}

// TestSyncFake: an intact table costs one generation read while nothing
// changes, a check of the rules when it moved; a reload that removed the
// table makes Sync recreate it with the mappings not used and within
// their lifetime (not the used, closed or expired ones), for the time
// they have left; stray armed elements are removed.
func TestSyncFake(t *testing.T) {
	d, k, ct, c := setUpFake(t)
	ctx := context.Background()
	sync := func() rules.Restored {
		t.Helper()
		r, err := d.Sync(ctx)
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		return r
	}
	if r := sync(); !r.Empty() {
		t.Errorf("first Sync restored %v", r)
	}
	checks := k.count("check")
	if r := sync(); !r.Empty() || k.count("check") != checks {
		t.Errorf("Sync with the generation unchanged: %v, %d checks", r, k.count("check")-checks)
	}
	live := mustMap(t, d, mapping(50000, 1))
	short := withTarget(mapping(50001, 2), netip.MustParseAddrPort("192.0.2.10:40001"))
	short.Lifetime = time.Second
	mustMap(t, d, short)
	used := mustMap(t, d, withTarget(mapping(50002, 3), netip.MustParseAddrPort("192.0.2.10:40002")))
	closed := mustMap(t, d, withTarget(mapping(50003, 4), netip.MustParseAddrPort("192.0.2.10:40003")))
	connect(k, ct, peer, 33000, mapping(50002, 3).Announced, entry{})
	waitUsed(t, used)
	closed.Close(ctx)
	if r := sync(); !r.Empty() {
		t.Errorf("Sync after our own changes restored %v", r)
	}
	c.Add(5 * time.Second)
	k.reload()
	r := sync()
	if r.Mappings != 1 || len(r.Objects) != 1 || r.Objects[0] != "table inet ftpalg" {
		t.Errorf("Sync after a reload restored %v, want the table and 1 mapping", r)
	}
	ms, _ := d.Mappings(ctx)
	if len(ms) != 1 || ms[0].Key() != mapping(50000, 1).Key() || ms[0].Lifetime != 25*time.Second || ms[0].Session != 1 {
		t.Errorf("after the restore the kernel holds %v, want the live mapping with 25 s left", ms)
	}
	// the restored mapping works
	connect(k, ct, peer, 33001, mapping(50000, 1).Announced, entry{})
	waitUsed(t, live)
	// a stray: an armed element nobody holds (a saved table restored)
	k.mu.Lock()
	k.arm[mapping(50009, 9).Key()] = fakeElem{expires: c.Now().Add(time.Minute)}
	k.gen++
	k.mu.Unlock()
	if r := sync(); r.Stray != 1 {
		t.Errorf("Sync with a stray armed element: %v, want 1 stray", r)
	}
	if ms, _ := d.Mappings(ctx); len(ms) != 0 {
		t.Errorf("after removing the stray: %v", ms)
	}
	if err := d.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if r := sync(); !r.Empty() {
		t.Errorf("Sync after Teardown restored %v", r)
	}
}

// TestLostEvents: when the event socket overflows, the watcher listens
// again and finds the mapped connection whose event was lost (its armed
// element gone, conntrack holding it); the others stay unused.
func TestLostEvents(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	d, k, ct, _ := onFakes(zap.New(core), false)
	if err := d.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Teardown(context.Background())
	m1, m2 := mapping(50000, 1), withTarget(mapping(50001, 2), netip.MustParseAddrPort("192.0.2.10:40001"))
	f1, f2 := mustMap(t, d, m1), mustMap(t, d, m2)
	// the packet passes, the event is lost
	from := netip.AddrPortFrom(peer, 33000)
	to, _ := k.connect(from, m1.Announced)
	ct.record(from, m1.Announced, to, entry{})
	ct.fail(errLost)
	waitUsed(t, f1)
	notUsed(t, f2, "after the recovery")
	ct.mu.Lock()
	subs := ct.subs
	ct.mu.Unlock()
	if subs != 1 {
		t.Errorf("subscribed %d times after lost events, want once (the socket goes on)", subs)
	}
	if logs.FilterMessage("missed connections found").Len() != 1 {
		t.Errorf("no log of the recovery: %v", logs.All())
	}
	// and events flow again
	connect(k, ct, peer, 33001, m2.Announced, entry{})
	waitUsed(t, f2)
}

// TestFlushAndTeardown: FlushMappings empties the kernel and forgets the
// mappings (their Close is fine); Teardown deletes the table, Close
// after it is fine, Teardown again and without Setup too.
func TestFlushAndTeardown(t *testing.T) {
	d, k, _, _ := setUpFake(t)
	ctx := context.Background()
	f := mustMap(t, d, mapping(50000, 1))
	if err := d.FlushMappings(ctx); err != nil {
		t.Fatal(err)
	}
	if len(k.arm) != 0 || len(d.live) != 0 {
		t.Errorf("after FlushMappings: kernel %v, memory %v", k.arm, d.live)
	}
	if err := f.Close(ctx); err != nil {
		t.Errorf("Close after flush: %v", err)
	}
	f2 := mustMap(t, d, withTarget(mapping(50001, 2), netip.MustParseAddrPort("192.0.2.10:40001")))
	if err := d.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if k.table {
		t.Error("Teardown left the table")
	}
	if err := f2.Close(ctx); err != nil {
		t.Errorf("Close after Teardown: %v", err)
	}
	if err := d.Teardown(ctx); err != nil {
		t.Errorf("Teardown again: %v", err)
	}
	if _, err := f2.Flow(ctx); !errors.Is(err, rules.ErrNotUsed) {
		t.Errorf("Flow of an unused mapping after Teardown: %v", err)
	}
}

// TestKeyCodec: keys and values are laid out as the kernel's registers
// hold them (ports in network order, padded to 4 bytes) and read back.
func TestKeyCodec(t *testing.T) {
	b := key(peer, annc)
	want := []byte{198, 51, 100, 10, 198, 51, 100, 1, 0xc3, 0x50, 0, 0}
	if string(b) != string(want) {
		t.Errorf("key = % x, want % x", b, want)
	}
	if p, ap, ok := parseKey(b); !ok || p != peer || ap != annc {
		t.Errorf("parseKey = %s %s %v", p, ap, ok)
	}
	b6 := key(peer6, annc6)
	if p, ap, ok := parseKey(b6); len(b6) != 36 || !ok || p != peer6 || ap != annc6 {
		t.Errorf("parseKey(v6) = %s %s %v (len %d)", p, ap, ok, len(b6))
	}
	if ap, ok := parseAddrPort(addrPort(target6)); !ok || ap != target6 || len(addrPort(target6)) != 20 {
		t.Errorf("parseAddrPort(addrPort(%s)) = %s, %v", target6, ap, ok)
	}
	if _, _, ok := parseKey(b[:11]); ok {
		t.Error("parseKey took a short key")
	}
}

// TestResubscribe: when the event socket fails (not an overflow), the
// watcher subscribes again and looks for what it missed.
func TestResubscribe(t *testing.T) {
	d, k, ct, _ := setUpFake(t)
	m := mapping(50000, 1)
	f := mustMap(t, d, m)
	from := netip.AddrPortFrom(peer, 33000)
	to, _ := k.connect(from, m.Announced)
	ct.record(from, m.Announced, to, entry{})
	ct.fail(errors.New("netlink receive: bad file descriptor"))
	waitUsed(t, f)
	ct.mu.Lock()
	subs := ct.subs
	ct.mu.Unlock()
	if subs != 2 {
		t.Errorf("subscribed %d times, want 2", subs)
	}
	f2 := mustMap(t, d, withTarget(mapping(50001, 2), netip.MustParseAddrPort("192.0.2.10:40001")))
	connect(k, ct, peer, 33001, mapping(50001, 2).Announced, entry{})
	waitUsed(t, f2)
}

// TestParseCT reads a ctnetlink NEW message as the kernel sends it: the
// original and reply tuples of a TCP connection DNATed to the target; a
// UDP one and a truncated one are not taken.
func TestParseCT(t *testing.T) {
	msg := func(proto uint8, src, dst, rsrc, rdst netip.AddrPort) []byte {
		tup := func(ae *netlink.AttributeEncoder, s, d netip.AddrPort) error {
			srcT, dstT := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
			if s.Addr().Is6() {
				srcT, dstT = ctaIPv6Src, ctaIPv6Dst
			}
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(srcT, s.Addr().AsSlice())
				ae.Bytes(dstT, d.Addr().AsSlice())
				return nil
			})
			ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoNum, proto)
				ae.Bytes(ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, s.Port()))
				ae.Bytes(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, d.Port()))
				return nil
			})
			return nil
		}
		ae := netlink.NewAttributeEncoder()
		ae.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error { return tup(ae, src, dst) })
		ae.Nested(ctaTupleReply, func(ae *netlink.AttributeEncoder) error { return tup(ae, rsrc, rdst) })
		ae.Uint32(3, 0x188) // CTA_STATUS, ignored
		b, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{unix.AF_INET, 0, 0, 0}, b...)
	}
	src := netip.AddrPortFrom(peer, 33000)
	b := msg(unix.IPPROTO_TCP, src, annc, target, netip.AddrPortFrom(source, 33000))
	ev, ok := parseCT(b)
	if !ok || ev.src != src || ev.dst != annc || ev.replySrc != target || !ev.replySrcValid {
		t.Errorf("parseCT = %+v, %v", ev, ok)
	}
	src6 := netip.AddrPortFrom(peer6, 33000)
	if ev, ok := parseCT(msg(unix.IPPROTO_TCP, src6, annc6, target6, src6)); !ok || ev.src != src6 || ev.replySrc != target6 {
		t.Errorf("parseCT(IPv6) = %+v, %v", ev, ok)
	}
	if _, ok := parseCT(msg(unix.IPPROTO_UDP, src, annc, target, src)); ok {
		t.Error("parseCT took a UDP connection")
	}
	for n := range len(b) {
		if ev, ok := parseCT(b[:n]); ok && ev.replySrc == target && n < len(b)-8 {
			t.Errorf("parseCT took a message cut at %d of %d: %+v", n, len(b), ev)
		}
	}
}
