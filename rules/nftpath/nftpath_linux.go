package nftpath

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// Name is the data path's --data-path name.
const Name = "nftables"

func init() {
	rules.RegisterDataPath(rules.DataPathDriver{
		Name:       Name,
		Preference: 10,
		New:        func(o rules.Options) (rules.DataPath, error) { return New(o), nil },
		Probe:      Probe,
	})
}

// DataPath forwards announced data connections in the kernel with
// nftables NAT, one mapping per connection (see the package doc). It is
// safe for concurrent use.
type DataPath struct {
	opts  rules.Options
	log   *zap.Logger
	table string // "ftpalg" with the instance suffix
	now   func() time.Time
	local nat.LocalAddrs

	// dial opens the kernel and conntrack sides in the network namespace
	// ns: the netlink implementations, or a test's fakes.
	dial func(ns int, table string) (kernel, tracker, error)
	// host checks the host's prerequisites: checkHost, or a test's.
	host func(context.Context, rules.Options, *zap.Logger) (hostState, error)

	// syncMu serialises Sync with Setup and Teardown (taken before mu).
	// Map and Close never take it.
	syncMu sync.Mutex
	// verified is the nf_tables generation at which Sync last found our
	// table intact (valid when verifiedOK). Guarded by syncMu.
	verified   uint32
	verifiedOK bool

	// mu guards everything below and orders every change of the kernel's
	// elements, so that an element is in the kernel exactly when memory
	// says so.
	mu    sync.Mutex
	k     kernel
	ct    tracker
	ns    netns.NsHandle // Setup's network namespace, for re-dialling; -1 without
	w     *watcher
	ready bool
	ipv6  error  // why IPv6 mappings are refused (nil: they are not)
	token string // this run's mark in our rules' comments
	// live holds the mappings not used yet: the source of truth that
	// Sync restores and the conntrack watcher matches events against.
	live map[rules.MappingKey]*forward
	// snat indexes the live mappings by their SNAT key (peer, target):
	// two live mappings must not share one while either has a Source,
	// since the postrouting rule sees only the post-DNAT tuple.
	snat map[snatKey]*forward
}

type snatKey struct {
	peer   netip.Addr
	target netip.AddrPort
}

// held is a mapping with the end of its kernel lifetime, for Sync.
type held struct {
	m       rules.Mapping
	expires time.Time
}

// New returns an nftables data path; it touches the kernel only from
// Setup on (or in Mappings, FlushMappings and Teardown, which work
// without Setup).
func New(opts rules.Options) *DataPath {
	return &DataPath{
		opts:  opts,
		log:   opts.Log().With(zap.String("data_path", Name)),
		table: TableName + opts.Suffix(),
		now:   time.Now,
		dial:  dialNetlink,
		host:  checkHost,
		ns:    -1,
		live:  map[rules.MappingKey]*forward{},
		snat:  map[snatKey]*forward{},
	}
}

// Name returns "nftables".
func (d *DataPath) Name() string { return Name }

// Table returns the name of the nftables table (of family inet) the data
// path owns.
func (d *DataPath) Table() string { return d.table }

// Setup checks the host's prerequisites (see Probe), replaces whatever a
// crashed run of the same instance left by a fresh table, in one netlink
// batch, and starts watching conntrack for the mapped connections. It
// runs in the calling thread's network namespace, which every later call
// then uses. Calling it again starts over: mappings held are forgotten.
func (d *DataPath) Setup(ctx context.Context) error {
	if err := d.opts.Check(); err != nil {
		return rules.Wrap(Name, "setup", rules.ErrInvalid, "", err)
	}
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.stop() // a second Setup starts over
	d.release()
	hs, err := d.host(ctx, d.opts, d.log)
	if err != nil {
		return err
	}
	ns, err := netns.Get()
	if err != nil {
		return rules.Wrap(Name, "setup: network namespace", nil, "", err)
	}
	k, ct, err := d.dial(int(ns), d.table)
	if err != nil {
		ns.Close()
		return err
	}
	token := newToken()
	if err := k.create(token, nil, d.now()); err != nil {
		k.close()
		ct.close()
		ns.Close()
		return d.kerr("setup: create table inet "+d.table, err)
	}
	d.mu.Lock()
	d.k, d.ct, d.ns, d.token = k, ct, ns, token
	d.ipv6 = hs.ipv6
	clear(d.live)
	clear(d.snat)
	d.ready = true
	d.verifiedOK = false
	d.mu.Unlock()
	w, err := d.startWatcher()
	if err != nil {
		d.mu.Lock()
		d.ready = false
		d.mu.Unlock()
		_ = k.destroy()
		d.release()
		return err
	}
	d.mu.Lock()
	d.w = w
	d.mu.Unlock()
	d.log.Info("kernel data path set up", zap.String("table", "inet "+d.table),
		zap.Bool("ipv6", hs.ipv6 == nil), zap.Bool("accounting", hs.acct))
	return nil
}

// release closes the kernel handles and the namespace handle. Callers
// hold syncMu and have stopped the watcher.
func (d *DataPath) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.k != nil {
		d.k.close()
		d.k = nil
	}
	if d.ct != nil {
		d.ct.close()
		d.ct = nil
	}
	if d.ns >= 0 {
		d.ns.Close()
		d.ns = -1
	}
}

// stop ends the watcher and marks the data path not ready; callers hold
// syncMu, not mu (the watcher may be waiting for mu to deliver an event).
func (d *DataPath) stop() {
	d.mu.Lock()
	d.ready = false
	w := d.w
	d.w = nil
	d.mu.Unlock()
	if w != nil {
		w.stop()
	}
}

// Teardown stops watching conntrack and removes the table, with every
// mapping still in it. Connections already forwarded go on: conntrack
// holds their NAT bindings. A table already gone is fine, and Teardown
// works without Setup: it is the cleanup entry point for a crashed run
// (`ftpalg rules cleanup`), in the calling thread's network namespace.
func (d *DataPath) Teardown(ctx context.Context) error {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.stop()
	d.mu.Lock()
	k := d.k
	clear(d.live)
	clear(d.snat)
	d.mu.Unlock()
	var err error
	if k == nil {
		k, err = d.transient()
		if err != nil {
			return err
		}
		defer k.close()
	}
	err = k.destroy()
	d.release()
	if err != nil {
		return d.kerr("teardown: delete table inet "+d.table, err)
	}
	d.log.Info("kernel data path torn down", zap.String("table", "inet "+d.table))
	return nil
}

// transient opens the kernel side in the calling thread's namespace, for
// a process that did not call Setup (`ftpalg rules show|flush|cleanup`).
func (d *DataPath) transient() (kernel, error) {
	k, err := dialKernel(0, d.table)
	if err != nil {
		return nil, d.kerr("open netlink socket", err)
	}
	return k, nil
}

// Supports tells, from m alone and the host's state at Setup, whether
// the kernel can forward m: Mapping.Check's reasons, a target on this
// host (DNAT to a local address is delivered, not forwarded, and could
// not be SNATed to the proxy's address), a peer on this host (its
// connections never pass prerouting), and IPv6 while the host does not
// forward IPv6. It reads the host's addresses (at most every few
// seconds) in the calling thread's network namespace, which must be
// Setup's.
func (d *DataPath) Supports(m rules.Mapping) error {
	m, err := m.Check()
	if err != nil {
		return err
	}
	t := m.Target.Addr()
	if t.IsLoopback() || d.local.Has(t) {
		return fmt.Errorf("%w: mapping %s: the target %s is this host's own address: the kernel delivers such a connection instead of forwarding it", rules.ErrInvalid, m, t)
	}
	// A peer on this host (a server on loopback, in active mode)
	// connects from a local socket: its SYN leaves through the output
	// hook and never passes prerouting, where the mappings apply, and
	// would reach the reserved port, where nothing listens.
	if p := m.Peer; p.IsLoopback() || d.local.Has(p) {
		return fmt.Errorf("%w: mapping %s: the peer %s is this host's own address: its connections never pass the prerouting hook the mappings are in", rules.ErrInvalid, m, p)
	}
	if m.Peer.Is6() {
		d.mu.Lock()
		why := d.ipv6
		ready := d.ready
		d.mu.Unlock()
		if ready && why != nil {
			return fmt.Errorf("%w: mapping %s: %v", rules.ErrInvalid, m, why)
		}
	}
	return nil
}

// Map installs m: from its return on, the first new TCP connection from
// m.Peer to m.Announced is forwarded to m.Target (from m.Source when
// valid), and no other. The mapping expires in the kernel after
// m.TimeoutSeconds() if nothing used it.
func (d *DataPath) Map(ctx context.Context, m rules.Mapping) (rules.Forward, error) {
	if err := d.Supports(m); err != nil {
		return nil, rules.Wrap(Name, "map "+desc(m), rules.ErrInvalid, "", err)
	}
	m, _ = m.Check()
	if err := ctx.Err(); err != nil {
		return nil, rules.Wrap(Name, "map "+desc(m), nil, "", err)
	}
	life := time.Duration(m.TimeoutSeconds()) * time.Second
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ready {
		return nil, rules.Wrap(Name, "map "+desc(m), rules.ErrNotReady, "call Setup first", nil)
	}
	now := d.now()
	if old, ok := d.live[m.Key()]; ok {
		if old.expires.After(now) {
			return nil, rules.Wrap(Name, "map "+desc(m), rules.ErrInvalid, "",
				fmt.Errorf("%s is mapped already (session %d)", m.Key().Announced, old.m.Session))
		}
		d.forget(old) // its kernel timeout has run out: the proxy is about to close it
	}
	sk := snatKey{m.Peer, m.Target}
	if old, ok := d.snat[sk]; ok && (m.Source.IsValid() || old.m.Source.IsValid()) {
		if old.expires.After(now) {
			return nil, rules.Wrap(Name, "map "+desc(m), rules.ErrInvalid, "",
				fmt.Errorf("%s → %s is the target of another mapping not used yet (session %d): the SNAT rule could not tell them apart", m.Peer, m.Target, old.m.Session))
		}
		d.forget(old)
	}
	if err := d.k.add(m, life); err != nil {
		return nil, d.kerr("map "+desc(m), err)
	}
	f := &forward{d: d, m: m, expires: now.Add(life), used: make(chan struct{})}
	d.live[m.Key()] = f
	d.snat[sk] = f
	return f, nil
}

// forget drops f from the live mappings (it is used, closed or expired).
// Callers hold mu.
func (d *DataPath) forget(f *forward) {
	if d.live[f.m.Key()] == f {
		delete(d.live, f.m.Key())
	}
	sk := snatKey{f.m.Peer, f.m.Target}
	if d.snat[sk] == f {
		delete(d.snat, sk)
	}
}

// used records that the connection of the live mapping at k has arrived
// (conntrack saw it, DNATed to the mapping's target), closes its Used,
// and removes what is left of it in the kernel: the packet path deleted
// the armed element, the DNAT and SNAT elements are removed now.
func (d *DataPath) used(k rules.MappingKey, peerPort uint16, replySrc netip.AddrPort, at time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, ok := d.live[k]
	if !ok || !d.ready || replySrc != f.m.Target {
		return false // not ours, or not DNATed to its target (not by our rule)
	}
	d.forget(f)
	f.fmu.Lock()
	f.peerPort, f.seen, f.isUsed = peerPort, at, true
	f.fmu.Unlock()
	close(f.used)
	if err := d.k.removeUsed(f.m); err != nil {
		d.log.Warn("removing a used mapping's elements failed (they expire by themselves)",
			zap.Stringer("mapping", f.m), zap.Error(err))
	}
	return true
}

// Mappings returns the mappings in the kernel now (armed: not used yet,
// not expired) with their session and the time each has left as
// Lifetime, read from the calling thread's network namespace. It works
// without Setup (`ftpalg rules show`); without the table it returns none.
func (d *DataPath) Mappings(ctx context.Context) ([]rules.Mapping, error) {
	k, done, err := d.kernelFor()
	if err != nil {
		return nil, err
	}
	defer done()
	ms, err := k.list()
	if err != nil {
		return nil, d.kerr("list table inet "+d.table, err)
	}
	slices.SortFunc(ms, func(a, b rules.Mapping) int {
		if c := a.Announced.Compare(b.Announced); c != 0 {
			return c
		}
		return a.Peer.Compare(b.Peer)
	})
	return ms, nil
}

// FlushMappings removes every mapping from the kernel (and, in the
// process that holds them, from memory: their Used never comes).
// Connections already forwarded go on. It works without Setup.
func (d *DataPath) FlushMappings(ctx context.Context) error {
	d.mu.Lock()
	clear(d.live)
	clear(d.snat)
	d.mu.Unlock()
	k, done, err := d.kernelFor()
	if err != nil {
		return err
	}
	defer done()
	if err := k.flush(); err != nil {
		return d.kerr("flush table inet "+d.table, err)
	}
	return nil
}

// kernelFor returns the kernel side set up, or a transient one.
func (d *DataPath) kernelFor() (kernel, func(), error) {
	d.mu.Lock()
	k := d.k
	d.mu.Unlock()
	if k != nil {
		return k, func() {}, nil
	}
	k, err := d.transient()
	if err != nil {
		return nil, nil, err
	}
	return k, k.close, nil
}

// forward is one mapping, for the proxy that installed it.
type forward struct {
	d       *DataPath
	m       rules.Mapping
	expires time.Time
	used    chan struct{}

	// Guarded by d.mu:
	closed bool

	fmu      sync.Mutex // guards the rest
	isUsed   bool
	peerPort uint16
	seen     time.Time
	last     *rules.Flow // the last Flow read from conntrack
}

func (f *forward) Used() <-chan struct{} { return f.used }

// Flow reads the connection's counters and state from conntrack (one
// netlink round trip). Once conntrack has forgotten the connection it
// returns the last reading, Closed; it fails before Used, and when it
// never got a reading.
func (f *forward) Flow(ctx context.Context) (rules.Flow, error) {
	f.fmu.Lock()
	isUsed, port, seen := f.isUsed, f.peerPort, f.seen
	f.fmu.Unlock()
	if !isUsed {
		return rules.Flow{}, rules.ErrNotUsed
	}
	f.d.mu.Lock()
	ct := f.d.ct
	f.d.mu.Unlock()
	var (
		e   entry
		err error
	)
	if ct == nil {
		err = errors.New("conntrack closed (Teardown)")
	} else {
		e, err = ct.get(netip.AddrPortFrom(f.m.Peer, port), f.m.Announced)
	}
	f.fmu.Lock()
	defer f.fmu.Unlock()
	if err != nil {
		if f.last != nil && (errors.Is(err, errGone) || ct == nil) {
			fl := *f.last
			fl.Closed = true
			return fl, nil
		}
		return rules.Flow{}, rules.Wrap(Name, "conntrack "+desc(f.m), nil, "", err)
	}
	fl := rules.Flow{
		PeerPort: port, Seen: seen,
		ToTarget: e.orig, FromTarget: e.reply,
		// With accounting off the kernel sends no counters at all; with it
		// on, the first packet (the SYN) is counted.
		Counted: e.orig.Packets > 0,
		Closed:  e.closed,
	}
	f.last = &fl
	return fl, nil
}

// Close removes the mapping's elements if it was not used; a used or
// closed one is left alone. The kernel's element timeout removes them
// anyway if this fails.
func (f *forward) Close(ctx context.Context) error {
	d := f.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	f.fmu.Lock()
	isUsed := f.isUsed
	f.fmu.Unlock()
	if isUsed {
		return nil // the watcher removed what the packet path left
	}
	wasLive := d.live[f.m.Key()] == f
	d.forget(f)
	if !d.ready || !wasLive {
		return nil // torn down, flushed or replaced: nothing of ours left
	}
	if err := d.k.remove(f.m, elAll); err != nil {
		return d.kerr("close "+desc(f.m), err)
	}
	return nil
}

// desc names a mapping in an error: "198.51.100.10→198.51.100.1:50000⇒192.0.2.10:40000".
func desc(m rules.Mapping) string {
	return m.Peer.String() + "→" + m.Announced.String() + "⇒" + m.Target.String()
}

// newToken is a run's mark: 8 random hex digits.
func newToken() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var (
	_ rules.DataPath      = (*DataPath)(nil)
	_ rules.MappingLister = (*DataPath)(nil)
	_ rules.Syncer        = (*DataPath)(nil)
)
