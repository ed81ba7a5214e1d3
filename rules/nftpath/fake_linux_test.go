package nftpath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// fakeKernel is kernel in memory: the table's elements and what a packet
// does to them (connect), so the mapping logic is tested without root.
type fakeKernel struct {
	mu      sync.Mutex
	now     func() time.Time
	table   bool
	token   string
	arm     map[rules.MappingKey]fakeElem
	dnat    map[rules.MappingKey]netip.AddrPort
	snat    map[snatKey]netip.Addr
	gen     uint32
	calls   map[string]int
	failAdd error
}

type fakeElem struct {
	expires time.Time
	session uint64
}

func newFakeKernel(now func() time.Time) *fakeKernel {
	return &fakeKernel{now: now, arm: map[rules.MappingKey]fakeElem{}, dnat: map[rules.MappingKey]netip.AddrPort{},
		snat: map[snatKey]netip.Addr{}, calls: map[string]int{}}
}

func (k *fakeKernel) call(name string) {
	k.calls[name]++
	if name != "generation" && name != "check" && name != "armed" && name != "list" {
		k.gen++
	}
}

func (k *fakeKernel) count(name string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.calls[name]
}

func (k *fakeKernel) create(token string, ms []held, now time.Time) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("create")
	k.table, k.token = true, token
	clear(k.arm)
	clear(k.dnat)
	clear(k.snat)
	for _, h := range ms {
		k.addLocked(h.m, h.expires.Sub(now))
	}
	return nil
}

func (k *fakeKernel) addLocked(m rules.Mapping, life time.Duration) {
	k.arm[m.Key()] = fakeElem{expires: k.now().Add(life), session: m.Session}
	k.dnat[m.Key()] = m.Target
	if m.Source.IsValid() {
		k.snat[snatKey{m.Peer, m.Target}] = m.Source
	}
}

func (k *fakeKernel) add(m rules.Mapping, life time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("add")
	if !k.table {
		return fmt.Errorf("netlink receive: %w", unix.ENOENT)
	}
	if k.failAdd != nil {
		return k.failAdd
	}
	k.addLocked(m, life)
	return nil
}

func (k *fakeKernel) remove(m rules.Mapping, which int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("remove")
	if which&elArmed != 0 {
		delete(k.arm, m.Key())
	}
	if which&elDNAT != 0 {
		delete(k.dnat, m.Key())
	}
	if which&elSNAT != 0 && m.Source.IsValid() {
		delete(k.snat, snatKey{m.Peer, m.Target})
	}
	return nil
}

func (k *fakeKernel) removeUsed(m rules.Mapping) error { return k.remove(m, elAll) }

func (k *fakeKernel) check(token string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("check")
	return k.table && k.token == token, nil
}

func (k *fakeKernel) generation() (uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("generation")
	return k.gen, nil
}

func (k *fakeKernel) expire() {
	for key, e := range k.arm {
		if !e.expires.After(k.now()) {
			delete(k.arm, key)
		}
	}
}

func (k *fakeKernel) armed() (map[rules.MappingKey]bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("armed")
	k.expire()
	out := map[rules.MappingKey]bool{}
	for key := range k.arm {
		out[key] = true
	}
	return out, nil
}

func (k *fakeKernel) list() ([]rules.Mapping, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("list")
	k.expire()
	var out []rules.Mapping
	for key, e := range k.arm {
		m := rules.Mapping{Peer: key.Peer, Announced: key.Announced, Target: k.dnat[key], Session: e.session,
			Lifetime: e.expires.Sub(k.now())}
		m.Source = k.snat[snatKey{m.Peer, m.Target}]
		out = append(out, m)
	}
	return out, nil
}

func (k *fakeKernel) flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("flush")
	clear(k.arm)
	clear(k.dnat)
	clear(k.snat)
	return nil
}

func (k *fakeKernel) destroy() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.call("destroy")
	k.table = false
	clear(k.arm)
	clear(k.dnat)
	clear(k.snat)
	return nil
}

func (k *fakeKernel) close() {}

// reload is what a firewall reload does: the table is gone.
func (k *fakeKernel) reload() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.table = false
	k.gen++
	clear(k.arm)
	clear(k.dnat)
	clear(k.snat)
}

// connect is what the prerouting rule does to a SYN from src to dst: the
// target it is DNATed to, if an armed element matched (which it deletes).
func (k *fakeKernel) connect(src, dst netip.AddrPort) (netip.AddrPort, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.expire()
	key := rules.MappingKey{Peer: src.Addr(), Announced: dst}
	if _, ok := k.arm[key]; !ok || !k.table {
		return netip.AddrPort{}, false
	}
	delete(k.arm, key)
	return k.dnat[key], true
}

// fakeTracker is tracker in memory: conntrack's entries, and the events
// the test sends.
type fakeTracker struct {
	mu        sync.Mutex
	entries   map[[2]netip.AddrPort]entry
	replySrcs map[[2]netip.AddrPort]netip.AddrPort
	src       *fakeSource
	subs      int // subscriptions so far
	failGet   error
}

func newFakeTracker() *fakeTracker {
	return &fakeTracker{entries: map[[2]netip.AddrPort]entry{}, replySrcs: map[[2]netip.AddrPort]netip.AddrPort{}}
}

func (t *fakeTracker) get(src, dst netip.AddrPort) (entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failGet != nil {
		return entry{}, t.failGet
	}
	e, ok := t.entries[[2]netip.AddrPort{src, dst}]
	if !ok {
		return entry{}, errGone
	}
	return e, nil
}

func (t *fakeTracker) events() (eventSource, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.subs++
	t.src = &fakeSource{evs: make(chan event), errs: make(chan error, 1), closed: make(chan struct{})}
	return t.src, nil
}

func (t *fakeTracker) dump() ([]event, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []event
	for k := range t.entries {
		out = append(out, newEvent(k[0], k[1], t.replySrcs[k]))
	}
	return out, nil
}

func (t *fakeTracker) close() {}

// fakeSource is eventSource fed by the test.
type fakeSource struct {
	evs    chan event
	errs   chan error
	once   sync.Once
	closed chan struct{}
}

func (s *fakeSource) next() (event, error) {
	select {
	case ev := <-s.evs:
		return ev, nil
	case err := <-s.errs:
		return event{}, err
	case <-s.closed:
		return event{}, net.ErrClosed
	}
}

func (s *fakeSource) close() { s.once.Do(func() { close(s.closed) }) }

// send hands ev to the watcher (dropped when the source is closed).
func (t *fakeTracker) send(ev event) {
	t.mu.Lock()
	src := t.src
	t.mu.Unlock()
	if src == nil {
		return
	}
	select {
	case src.evs <- ev:
	case <-src.closed:
	}
}

// emit sends a NEW event for a connection from src to dst DNATed to
// replySrc (invalid: not DNATed), recording the entry, as conntrack does.
func (t *fakeTracker) emit(src, dst, replySrc netip.AddrPort, e entry) {
	t.record(src, dst, replySrc, e)
	t.send(newEvent(src, dst, replySrc))
}

func (t *fakeTracker) record(src, dst, replySrc netip.AddrPort, e entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := [2]netip.AddrPort{src, dst}
	t.entries[k] = e
	t.replySrcs[k] = replySrc
}

func newEvent(src, dst, replySrc netip.AddrPort) event {
	if !replySrc.IsValid() {
		replySrc = dst
	}
	return event{proto: unix.IPPROTO_TCP, src: src, dst: dst, replySrc: replySrc, replySrcValid: true}
}

// fail reports err from the event source: errLost, as an overflowing
// socket does, or another error, which ends the source.
func (t *fakeTracker) fail(err error) {
	t.mu.Lock()
	src := t.src
	t.mu.Unlock()
	src.errs <- err
}

// clock is a time the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// onFakes returns a data path over a fake kernel and conntrack, on a
// clock the test moves, with the host's prerequisites met (IPv6 refused
// when noIPv6).
func onFakes(log *zap.Logger, noIPv6 bool) (*DataPath, *fakeKernel, *fakeTracker, *clock) {
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	k, ct := newFakeKernel(c.Now), newFakeTracker()
	d := New(rules.Options{Logger: log})
	d.now = c.Now
	d.dial = func(int, string) (kernel, tracker, error) { return k, ct, nil }
	d.host = func(context.Context, rules.Options, *zap.Logger) (hostState, error) {
		hs := hostState{acct: true}
		if noIPv6 {
			hs.ipv6 = errors.New("IPv6 forwarding is off")
		}
		return hs, nil
	}
	return d, k, ct, c
}
