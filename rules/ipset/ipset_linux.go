package ipset

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// Name is the backend's --firewall name.
const Name = "ipset"

// The kernel objects this backend owns besides xtables' chains and hooks.
const (
	// Set4 and Set6 hold the pinholes, one set per address family because
	// an ipset hash holds one family.
	Set4 = "ftpalg-pinholes4"
	Set6 = "ftpalg-pinholes6"
	// SetType is the element "local ip, tcp:local port, peer ip": exactly a
	// pinhole's three facts, so one lookup decides a SYN and no element
	// admits a second peer or a second port. hash:ip,port lacks the peer;
	// hash:ip,port,net would admit a network.
	SetType = "hash:ip,port,ip"
	// MatchDirs maps the element's three parts onto the packet: the local
	// ip and port are the SYN's destination, the peer its source.
	MatchDirs = "dst,dst,src"

	// Probe's throwaway objects (with the process id appended).
	probeSet   = "ftpalg-probe"
	probeChain = "FTPALG-PROBE"
)

const (
	// setTimeout is the set's default element timeout. Giving the set a
	// timeout is what enables per-element timeouts; every Open passes its
	// own, so this applies only to elements added by hand.
	setTimeout = uint32(rules.DefaultLifetime / time.Second)
	// maxElements bounds the set: the kernel refuses adds beyond it
	// ("hash is full") instead of growing without limit.
	maxElements = 65536
	// socketTimeout bounds one netlink round trip; ipset answers in
	// microseconds, so hitting it means the kernel is wedged.
	socketTimeout = 5 * time.Second
	// destroyWait is how long Teardown retries destroying a set that is
	// still referenced: iptables-nft releases a deleted rule's set
	// reference in deferred work after the transaction commits.
	destroyWait = 3 * time.Second
)

func init() {
	rules.Register(rules.Driver{
		Name:       Name,
		Preference: 10,
		New:        func(o rules.Options) (rules.Backend, error) { return New(o), nil },
		Probe:      Probe,
	})
}

// family is one address family's set, hooks and iptables binary.
type family struct {
	fam   xtables.Family
	set   string
	af    uint8
	hooks []xtables.Hook  // matching set, so that they hold references to it (hookRefs)
	x     *xtables.Tables // nil until found, or when the family is unusable
	err   error           // why x is nil after Setup
}

// Backend keeps pinholes as elements of a timeout-enabled ipset matched by
// one static iptables rule per chain. It is safe for concurrent use.
type Backend struct {
	opts rules.Options
	log  *zap.Logger
	// now is the clock of the pinholes' lifetimes: time.Now, or a test's.
	now func() time.Time

	// syncMu serialises Sync with Setup and Teardown (taken before mu).
	// Open and Close never take it, so they do not wait for a Sync's
	// iptables runs.
	syncMu sync.Mutex

	mu    sync.Mutex // guards everything below and orders kernel changes
	h     *netlink.Handle
	fams  [2]family
	ready bool
	// open is the source of truth for what this process has opened: Close
	// and Flush act on it, Sync restores it, and the tests hold the kernel
	// to it.
	open map[rules.Key]held
	seq  uint64 // numbers the entries of open, so Sync can tell a new one from the one it saw
}

// held is a pinhole this process holds open.
type held struct {
	p rules.Pinhole
	// expires is when the element's kernel timeout ends (at the latest:
	// the kernel's rounds up and starts a little later). Sync restores the
	// element only before, with the time left.
	expires time.Time
	seq     uint64 // the Open that added it
	holds   int    // Opens not yet Closed (rules.Backend: the last Close removes it)
}

// New returns an ipset backend; it touches the kernel only from Setup on.
func New(opts rules.Options) *Backend {
	b := &Backend{
		opts: opts,
		log:  opts.Log().With(zap.String("firewall", Name)),
		now:  time.Now,
		fams: [2]family{
			{fam: xtables.IPv4, set: Set4 + opts.Suffix(), af: unix.AF_INET},
			{fam: xtables.IPv6, set: Set6 + opts.Suffix(), af: unix.AF_INET6},
		},
		open: map[rules.Key]held{},
	}
	for i := range b.fams {
		f := &b.fams[i]
		f.hooks = xtables.Hooks(opts.Suffix(), hookMatch(f.set)...)
	}
	return b
}

// Name returns "ipset".
func (b *Backend) Name() string { return Name }

// Setup creates the sets, chains and hooks, reconciling what a crashed run
// left: a set that exists is flushed (or recreated when its type is not
// ours), chains are flushed and refilled, hooks are not duplicated. IPv4
// must work; IPv6 is set up when the host has it and otherwise logged and
// left out, and Open refuses IPv6 pinholes.
func (b *Backend) Setup(ctx context.Context) error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.handle(); err != nil {
		return err
	}
	for i := range b.fams {
		f := &b.fams[i]
		f.err = b.setupFamily(ctx, f)
		if f.err == nil {
			continue
		}
		if f.fam == xtables.IPv4 {
			return f.err
		}
		b.log.Warn("IPv6 pinholes unavailable", zap.Error(f.err))
		if f.x != nil { // undo what got made before the failure
			for _, h := range f.hooks {
				_ = f.x.RemoveHooks(h)
				_ = f.x.RemoveChain(h.Chain)
			}
		}
		_ = b.destroy(ctx, f.set)
		f.x = nil
	}
	clear(b.open)
	b.ready = true
	b.log.Info("firewall set up", zap.Strings("sets", b.sets()), zap.Bool("keep_hooks", b.opts.KeepHooks))
	return nil
}

func (b *Backend) setupFamily(ctx context.Context, f *family) error {
	if f.x == nil {
		x, err := xtables.New(ctx, f.fam, b.opts.Iptables)
		if err != nil {
			return b.xerr("setup: find "+f.fam.String()+" iptables", err)
		}
		f.x = x
	}
	b.log.Info("iptables found", zap.String("command", f.x.Cmd), zap.String("mode", f.x.Mode))
	if w := f.x.OtherVariantWarning(); w != "" {
		b.log.Warn("two iptables variants in use", zap.String("warning", w))
	}
	// Chains first: flushing a leftover chain drops its reference to a
	// leftover set, which may then be recreated.
	for _, h := range f.hooks {
		if err := f.x.EnsureChain(h.Chain); err != nil {
			return b.xerr("setup: chain "+h.Chain, err)
		}
	}
	if err := b.ensureSet(ctx, f); err != nil {
		return err
	}
	for _, h := range f.hooks {
		if err := f.x.Append(h.Chain, matchSpec(f.set)...); err != nil {
			return b.xerr("setup: rule in "+h.Chain, err)
		}
		if err := f.x.EnsureHook(h); err != nil {
			return b.xerr("setup: hook "+h.Builtin+" → "+h.Chain, err)
		}
	}
	return nil
}

// matchSpec is the one rule in each of our chains: accept a SYN whose
// (destination ip, destination port, source ip) is an element of set.
// Whatever does not match falls off the end of the chain, which returns to
// the built-in chain and the host's own rules. The host's rules must accept
// ESTABLISHED traffic (every default-DROP ruleset does), since only the
// connection's first packet passes here.
func matchSpec(set string) []string {
	return []string{"-p", "tcp", "-m", "set", "--match-set", set, MatchDirs, "-j", "ACCEPT"}
}

// hookMatch is what our hooks match besides a new SYN: an element of set,
// the same test as the chain's rule. It changes nothing about what passes
// (only an element's SYN is accepted in the chain) but makes each hook
// hold a reference to the set, so that the set's reference count, which
// one netlink round trip reads, tells Sync whether the hooks and the
// chains' rules are all still there (hookRefs).
func hookMatch(set string) []string { return []string{"-m", "set", "--match-set", set, MatchDirs} }

// hookRefs is how many references our rules hold to a family's set: each
// hook and each chain's rule.
func (f *family) hookRefs() uint32 { return uint32(2 * len(f.hooks)) }

// ensureSet creates f's set, or flushes it when a compatible one is left
// over, or replaces an incompatible one.
func (b *Backend) ensureSet(ctx context.Context, f *family) error {
	err := b.create(f.set, f.af)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return b.nlerr("setup: create set "+f.set, err)
	}
	res, err := listSet(f.set)
	if err != nil {
		return b.nlerr("setup: inspect leftover set "+f.set, err)
	}
	if compatible(res, f.af) {
		b.log.Info("flushing leftover set", zap.String("set", f.set), zap.Int("entries", len(res.Elements)))
		return b.nlerr("setup: flush leftover set "+f.set, call(func() error { return b.h.IpsetFlush(f.set) }))
	}
	b.log.Warn("replacing leftover set of another type", zap.String("set", f.set),
		zap.String("type", res.TypeName), zap.Uint8("family", res.Family))
	// hooks of ours may still refer to it; setupFamily adds them again
	for _, h := range f.hooks {
		if err := f.x.RemoveHooks(h); err != nil {
			return b.xerr("setup: remove hook "+h.Builtin+" → "+h.Chain, err)
		}
	}
	if err := b.destroy(ctx, f.set); err != nil {
		return b.nlerr("setup: destroy leftover set "+f.set, err)
	}
	return b.nlerr("setup: create set "+f.set, b.create(f.set, f.af))
}

func (b *Backend) create(set string, af uint8) error {
	to := setTimeout
	return call(func() error {
		return b.h.IpsetCreate(set, SetType, netlink.IpsetCreateOptions{
			Family: af, Timeout: &to, Comments: true, MaxElements: maxElements,
		})
	})
}

// compatible reports whether a leftover set can be reused: our type and
// family, with timeouts and comments.
func compatible(r *setDump, af uint8) bool {
	return r.TypeName == SetType && r.Family == af && r.Timeout != nil &&
		r.CadtFlags&nl.IPSET_FLAG_WITH_COMMENT != 0
}

// destroy destroys set, retrying while a kernel component still holds it.
func (b *Backend) destroy(ctx context.Context, set string) error {
	deadline := time.Now().Add(destroyWait)
	for {
		err := call(func() error { return b.h.IpsetDestroy(set) })
		if err == nil || absent(err) {
			return nil
		}
		if !isIPSetErr(err, nl.IPSET_ERR_REFERENCED) && !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Open adds p's element with a timeout of p's lifetime, rounded up to whole
// seconds: the kernel removes it by itself if the proxy never closes it, so
// a crashed proxy leaves no pinhole open longer than that. Opening a
// pinhole that is open already refreshes its timeout and adds a hold.
func (b *Backend) Open(ctx context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "open "+desc(p), rules.ErrInvalid, "", err)
	}
	if err := ctx.Err(); err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	e := element(p)
	to := p.TimeoutSeconds()
	e.Timeout, e.Comment, e.Replace = &to, p.Comment(), true

	b.mu.Lock()
	defer b.mu.Unlock()
	f, err := b.family(p)
	if err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	expires := b.now().Add(time.Duration(to) * time.Second)
	if err := call(func() error { return b.h.IpsetAdd(f.set, e) }); err != nil {
		// The caller takes a failed Open for a pinhole not open and will
		// not Close it; the holds of earlier Opens stay theirs.
		return b.nlerr("open "+desc(p), err)
	}
	b.seq++
	b.open[p.Key()] = held{p: p, expires: expires, seq: b.seq, holds: b.open[p.Key()].holds + 1}
	return nil
}

// Close deletes p's element; one already gone (expired, flushed) is fine.
// p leaves the memory map even when the kernel refuses: the element's
// timeout removes it anyway.
func (b *Backend) Close(ctx context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "close "+desc(p), rules.ErrInvalid, "", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if h, ok := b.open[p.Key()]; ok && h.holds > 1 {
		h.holds--
		b.open[p.Key()] = h
		return nil
	}
	delete(b.open, p.Key())
	if !b.ready {
		return nil
	}
	f, err := b.family(p)
	if err != nil {
		return nil // never opened: nothing to close
	}
	err = call(func() error { return b.h.IpsetDel(f.set, element(p)) })
	if err == nil || isIPSetErr(err, nl.IPSET_ERR_EXIST) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return b.nlerr("close "+desc(p), err)
}

// List returns the pinholes in the kernel's sets, with the session from
// each element's comment and the seconds it has left as Lifetime. It reads
// the sets of the calling thread's network namespace and works without
// Setup.
func (b *Backend) List(ctx context.Context) ([]rules.Pinhole, error) {
	var out []rules.Pinhole
	for _, f := range b.fams {
		res, err := listSet(f.set)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil, b.nlerr("list "+f.set, err)
		}
		for _, e := range res.Elements {
			if p, ok := fromElement(e); ok {
				out = append(out, p)
			}
		}
	}
	sortPinholes(out)
	return out, nil
}

// Flush removes every element of both sets and forgets every pinhole. It
// works without Setup.
func (b *Backend) Flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.open)
	h, done, err := b.tempHandle()
	if err != nil {
		return err
	}
	defer done()
	var errs []error
	for _, f := range b.fams {
		err := call(func() error { return h.IpsetFlush(f.set) })
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, b.nlerr("flush "+f.set, err))
		}
	}
	return errors.Join(errs...)
}

// Teardown removes every pinhole and then, unless KeepHooks, the hooks, the
// chains and the sets. Missing objects are fine and errors do not stop it:
// it doubles as the cleanup entry point for a run that crashed, called
// without Setup.
func (b *Backend) Teardown(ctx context.Context) error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready = false
	clear(b.open)
	if err := b.handle(); err != nil {
		return err
	}
	defer func() { b.h.Close(); b.h = nil }()
	var errs []error
	for i := range b.fams {
		f := &b.fams[i]
		if err := call(func() error { return b.h.IpsetFlush(f.set) }); err != nil && !absent(err) {
			errs = append(errs, b.nlerr("teardown: flush "+f.set, err))
		}
		if b.opts.KeepHooks {
			continue
		}
		if f.x == nil {
			x, err := xtables.New(ctx, f.fam, b.opts.Iptables)
			if err != nil {
				if f.fam == xtables.IPv4 {
					errs = append(errs, b.xerr("teardown: find iptables", err))
				}
				// without ip6tables there can be no IPv6 hooks; the set may still exist
			}
			f.x = x
		}
		if f.x != nil {
			for _, h := range f.hooks {
				if err := f.x.RemoveHooks(h); err != nil {
					errs = append(errs, b.xerr("teardown: hook "+h.Builtin+" → "+h.Chain, err))
				}
				if err := f.x.RemoveChain(h.Chain); err != nil {
					errs = append(errs, b.xerr("teardown: chain "+h.Chain, err))
				}
			}
		}
		if err := b.destroy(ctx, f.set); err != nil {
			errs = append(errs, b.nlerr("teardown: destroy "+f.set, err))
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		b.log.Info("firewall torn down", zap.Bool("kept_hooks", b.opts.KeepHooks))
	}
	return err
}

// handle opens the netlink handle in the calling thread's namespace, once.
func (b *Backend) handle() error {
	if b.h != nil {
		return nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return b.nlerr("open netlink socket", err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return b.nlerr("open netlink socket", err)
	}
	b.h = h
	return nil
}

// tempHandle returns the backend's handle, or a new one for a process that
// did not call Setup (`ftpalg rules show`), and a func to release it.
func (b *Backend) tempHandle() (*netlink.Handle, func(), error) {
	if b.h != nil {
		return b.h, func() {}, nil
	}
	if err := b.handle(); err != nil {
		return nil, nil, err
	}
	return b.h, func() { b.h.Close(); b.h = nil }, nil
}

// family returns p's family, set up.
func (b *Backend) family(p rules.Pinhole) (*family, error) {
	if !b.ready {
		return nil, fmt.Errorf("%w: call Setup first", rules.ErrNotReady)
	}
	f := &b.fams[0]
	if p.Is6() {
		f = &b.fams[1]
	}
	if f.x == nil {
		return nil, &rules.Error{Backend: Name, Op: "ipv6", Kind: rules.ErrUnsupported,
			Hint: "IPv6 pinholes are unavailable on this host", Err: f.err}
	}
	return f, nil
}

func (b *Backend) sets() []string {
	var out []string
	for _, f := range b.fams {
		if f.x != nil {
			out = append(out, f.set)
		}
	}
	return out
}

// element is p's set element, without timeout or comment.
func element(p rules.Pinhole) *netlink.IPSetEntry {
	port, proto := p.Local.Port(), uint8(p.Proto)
	return &netlink.IPSetEntry{
		IP:       net.IP(p.Local.Addr().AsSlice()),
		Port:     &port,
		Protocol: &proto,
		IP2:      net.IP(p.Peer.AsSlice()),
	}
}

// fromElement reads a pinhole back from a listed element.
func fromElement(e dumpElement) (rules.Pinhole, bool) {
	if !e.IP.IsValid() || !e.IP2.IsValid() || e.Port == 0 {
		return rules.Pinhole{}, false
	}
	p := rules.Pinhole{
		Proto:    rules.Proto(e.Proto),
		Peer:     e.IP2.Unmap(),
		Local:    netip.AddrPortFrom(e.IP.Unmap(), e.Port),
		Lifetime: time.Duration(e.Timeout) * time.Second,
	}
	p.Session, _ = rules.ParseComment(e.Comment)
	return p, true
}

func sortPinholes(ps []rules.Pinhole) {
	slices.SortFunc(ps, func(a, b rules.Pinhole) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Peer.Compare(b.Peer)
	})
}

// desc names a pinhole in an error: "203.0.113.9→192.0.2.1:50012".
func desc(p rules.Pinhole) string { return p.Peer.String() + "→" + p.Local.String() }

// call runs one netlink ipset call, turning a panic into an error:
// netlink v1.3.1 asserts that every error it gets is a syscall.Errno and
// panics when one is not (fixed upstream, not yet released).
func call(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("netlink ipset call panicked: %v", r)
		}
	}()
	return f()
}

// absent reports whether err says the set cannot be there: it does not
// exist, or this kernel has no ipset at all.
func absent(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || isIPSetErr(err, nl.IPSET_ERR_PROTOCOL)
}

func isIPSetErr(err error, code int) bool {
	var e nl.IPSetError
	return errors.As(err, &e) && int(e) == code
}

// nlerr classifies a netlink ipset error.
func (b *Backend) nlerr(op string, err error) error {
	if err == nil {
		return nil
	}
	var kind error
	hint := ""
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		kind, hint = rules.ErrNotPermitted, rules.HintNotPermitted
	case isIPSetErr(err, nl.IPSET_ERR_FIND_TYPE):
		kind, hint = rules.ErrUnsupported, "ipset "+SetType+" not supported by this kernel: use --firewall iptables"
	case isIPSetErr(err, nl.IPSET_ERR_PROTOCOL), errors.Is(err, unix.EOPNOTSUPP),
		errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		kind, hint = rules.ErrUnsupported, "ipset not supported by this kernel: use --firewall iptables"
	case isIPSetErr(err, nl.IPSET_ERR_TYPE_SPECIFIC): // hash:* "hash is full"
		hint = fmt.Sprintf("more than %d pinholes open at once", maxElements)
	case errors.Is(err, unix.ENOENT):
		kind, hint = rules.ErrNotReady, "the set is gone (destroyed behind ftpalg's back): the next firewall check restores it (--firewall-check-interval), or restart ftpalg"
	case errors.Is(err, syscall.EAGAIN):
		hint = "the kernel did not answer within " + socketTimeout.String()
	}
	return rules.Wrap(Name, op, kind, hint, err)
}

// xerr classifies an iptables error.
func (b *Backend) xerr(op string, err error) error {
	kind, hint := xtables.Classify(err)
	return rules.Wrap(Name, op, kind, hint, err)
}

// Probe checks that this backend works in the calling thread's network
// namespace: it creates a throwaway hash:ip,port,ip set with timeouts and
// comments, adds an element, matches it from a throwaway chain and removes
// both again.
func Probe(ctx context.Context, opts rules.Options) (err error) {
	if err := opts.Check(); err != nil {
		return rules.Wrap(Name, "probe", rules.ErrInvalid, "", err)
	}
	b := New(opts)
	x, err := xtables.New(ctx, xtables.IPv4, opts.Iptables)
	if err != nil {
		return b.xerr("probe: find iptables", err)
	}
	if err := b.handle(); err != nil {
		return err
	}
	defer func() { b.h.Close(); b.h = nil }()
	// leftovers of a probe that was killed half-way
	// per process: two instances starting at once must not share them
	pid := "-" + strconv.Itoa(os.Getpid())
	probeSet, probeChain := probeSet+pid, probeChain+pid
	if err := x.RemoveChain(probeChain); err != nil {
		return b.xerr("probe: remove leftover chain "+probeChain, err)
	}
	if err := b.destroy(ctx, probeSet); err != nil {
		return b.nlerr("probe: destroy leftover set "+probeSet, err)
	}

	if err := b.create(probeSet, unix.AF_INET); err != nil {
		return b.nlerr("probe: create set "+probeSet, err)
	}
	defer func() {
		if derr := b.destroy(ctx, probeSet); derr != nil && err == nil {
			err = b.nlerr("probe: destroy set "+probeSet, derr)
		}
	}()
	p := rules.Pinhole{Proto: rules.ProtoTCP, Peer: netip.MustParseAddr("192.0.2.2"),
		Local: netip.MustParseAddrPort("192.0.2.1:9"), Lifetime: time.Second}
	e := element(p)
	to := p.TimeoutSeconds()
	e.Timeout, e.Comment = &to, p.Comment()
	if err := call(func() error { return b.h.IpsetAdd(probeSet, e) }); err != nil {
		return b.nlerr("probe: add element with timeout", err)
	}
	if err := x.EnsureChain(probeChain); err != nil {
		return b.xerr("probe: create chain "+probeChain, err)
	}
	defer func() {
		if rerr := x.RemoveChain(probeChain); rerr != nil && err == nil {
			err = b.xerr("probe: remove chain "+probeChain, rerr)
		}
	}()
	spec := append(append([]string{}, xtables.HookMatch...), "-m", "set", "--match-set", probeSet, MatchDirs, "-j", "RETURN")
	if err := x.Append(probeChain, spec...); err != nil {
		return b.xerr("probe: rule matching the set", err)
	}
	return nil
}
