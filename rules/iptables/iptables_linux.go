package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// Name is the backend's --firewall name.
const Name = "iptables"

func init() {
	rules.Register(rules.Driver{
		Name:       Name,
		Preference: 20,
		New:        func(o rules.Options) (rules.Backend, error) { return New(o), nil },
		Probe:      Probe,
	})
}

// Backend keeps one iptables rule per pinhole in FTPALG-INPUT, or in
// FTPALG-FORWARD for a Forward pinhole. It is safe for concurrent use;
// kernel changes are serialised (each is a process).
type Backend struct {
	opts  rules.Options
	log   *zap.Logger
	hooks []xtables.Hook
	// chains are FTPALG-INPUT and FTPALG-FORWARD with the instance
	// suffix: the pinholes' chains, for input and Forward pinholes.
	chains [2]string
	// newTables finds a family's binary: xtables.New, or a fake's Open in
	// tests.
	newTables xtables.Opener
	// now is the clock of the pinholes' lifetimes: time.Now, or a test's.
	now func() time.Time

	// syncMu serialises Sync with Setup and Teardown (taken before mu). Open
	// and Close never take it, so they do not wait for a Sync's checks.
	syncMu sync.Mutex
	// verified is, per family, the nf_tables generation at which Sync last
	// found our hook in place (valid when verifiedOK): until the
	// generation moves nothing can have changed. Guarded by syncMu.
	verified   [2]uint32
	verifiedOK [2]bool

	mu    sync.Mutex // guards everything below and orders kernel changes
	x     [2]*xtables.Tables
	xerr  [2]error // why x[i] is nil after Setup
	ready bool
	// open is the source of truth for what this process has opened. A
	// pinhole whose rule could not be deleted stays here, so Flush and
	// Teardown (which flush the chain) remove it.
	open map[rules.Key]held
	seq  uint64 // numbers the entries of open, so Sync can tell a new one from the one it saw
}

// held is a pinhole this process holds open.
type held struct {
	p rules.Pinhole
	// expires is when its lifetime ends: the proxy closes it by then, and
	// Sync restores it only before.
	expires time.Time
	seq     uint64 // the Open that added it
	holds   int    // Opens not yet Closed (rules.Backend: the last Close removes it)
}

// New returns an iptables backend; it touches the kernel only from Setup on.
func New(opts rules.Options) *Backend {
	return &Backend{
		opts:      opts,
		log:       opts.Log().With(zap.String("firewall", Name)),
		hooks:     xtables.Hooks(opts.Suffix()),
		chains:    [2]string{xtables.ChainInput + opts.Suffix(), xtables.ChainForward + opts.Suffix()},
		newTables: xtables.New,
		now:       time.Now,
		open:      map[rules.Key]held{},
	}
}

// Name returns "iptables".
func (b *Backend) Name() string { return Name }

var families = [2]xtables.Family{xtables.IPv4, xtables.IPv6}

// Setup creates FTPALG-INPUT and FTPALG-FORWARD (flushing them when a
// crashed run left them, which also removes its pinholes) and hooks them at
// the top of INPUT and FORWARD, once. IPv4 must work; IPv6 is set up when
// the host has ip6tables and is otherwise logged and left out.
func (b *Backend) Setup(ctx context.Context) error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	b.verifiedOK = [2]bool{}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, fam := range families {
		err := b.setupFamily(ctx, i, fam)
		b.xerr[i] = err
		if err == nil {
			continue
		}
		if fam == xtables.IPv4 {
			return err
		}
		b.log.Warn("IPv6 pinholes unavailable", zap.Error(err))
		if b.x[i] != nil {
			for _, h := range b.hooks {
				_ = b.x[i].RemoveHooks(h)
				_ = b.x[i].RemoveChain(h.Chain)
			}
		}
		b.x[i] = nil
	}
	clear(b.open)
	b.ready = true
	b.log.Info("firewall set up", zap.Bool("ipv6", b.x[1] != nil), zap.Bool("keep_hooks", b.opts.KeepHooks))
	return nil
}

func (b *Backend) setupFamily(ctx context.Context, i int, fam xtables.Family) error {
	x, err := b.tables(ctx, i)
	if err != nil {
		return err
	}
	b.log.Info("iptables found", zap.String("command", x.Cmd), zap.String("mode", x.Mode))
	if w := x.OtherVariantWarning(); w != "" {
		b.log.Warn("two iptables variants in use", zap.String("warning", w))
	}
	for _, h := range b.hooks {
		if err := x.EnsureChain(h.Chain); err != nil {
			return b.wrap("setup: chain "+h.Chain, err)
		}
		if err := x.EnsureHook(h); err != nil {
			return b.wrap("setup: hook "+h.Builtin+" → "+h.Chain, err)
		}
	}
	return nil
}

// tables finds family i's binary, once.
func (b *Backend) tables(ctx context.Context, i int) (*xtables.Tables, error) {
	if b.x[i] != nil {
		return b.x[i], nil
	}
	x, err := b.newTables(ctx, families[i], b.opts.Iptables)
	if err != nil {
		return nil, b.wrap("find "+families[i].String()+" iptables", err)
	}
	b.x[i] = x
	return x, nil
}

// chain is the chain p's rule goes to: FTPALG-INPUT, or FTPALG-FORWARD
// for a connection the host forwards (the kernel data path's, after its
// DNAT: Local is then the real target).
func (b *Backend) chain(p rules.Pinhole) string {
	if p.Forward {
		return b.chains[1]
	}
	return b.chains[0]
}

// ruleSpec is p's rule: exactly one peer, one local address, one port.
// Conntrack state and --syn are checked once, by the hook.
func ruleSpec(p rules.Pinhole) []string {
	return []string{
		"-p", "tcp",
		"-s", p.Peer.String(),
		"-d", p.Local.Addr().String(),
		"--dport", strconv.Itoa(int(p.Local.Port())),
		"-m", "comment", "--comment", p.Comment(),
		"-j", "ACCEPT",
	}
}

// Open appends p's rule to FTPALG-INPUT (FTPALG-FORWARD). The rule has no kernel timeout:
// it lives until Close, Flush or Teardown, or — when the proxy crashed —
// until the next Setup flushes the chain. Opening a pinhole that is open
// already adds no second rule.
func (b *Backend) Open(ctx context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "open "+desc(p), rules.ErrInvalid, "", err)
	}
	if err := ctx.Err(); err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// calls queue here behind each other's processes: one whose caller
	// gave up meanwhile must not open a pinhole nobody will announce
	if err := ctx.Err(); err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	x, err := b.family(p)
	if err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	expires := b.now().Add(lifetime(p))
	if h, ok := b.open[p.Key()]; ok {
		// open already, unless someone flushed the chain behind our back
		// (`ftpalg rules flush`): ask the kernel, in this rare case only
		ok, err := x.Exists(b.chain(p), ruleSpec(h.p)...)
		if err != nil {
			return b.wrap("open "+desc(p), err)
		}
		if ok {
			if expires.After(h.expires) { // the rule stays as the first Open wrote it
				h.expires = expires
			}
			h.holds++
			b.open[p.Key()] = h
			return nil
		}
	}
	if err := x.Append(b.chain(p), ruleSpec(p)...); err != nil {
		return b.wrap("open "+desc(p), err)
	}
	b.seq++
	// After a flush behind our back the earlier holds still count.
	b.open[p.Key()] = held{p: p, expires: expires, seq: b.seq, holds: b.open[p.Key()].holds + 1}
	return nil
}

// Close deletes p's rule; one already gone is fine. The rule is found by
// the pinhole this process opened (its session is part of the rule's
// comment), or by p itself when this process did not open it.
func (b *Backend) Close(ctx context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "close "+desc(p), rules.ErrInvalid, "", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if h, ok := b.open[p.Key()]; ok {
		if h.holds > 1 {
			h.holds--
			b.open[p.Key()] = h
			return nil
		}
		p = h.p
	}
	if !b.ready {
		delete(b.open, p.Key())
		return nil
	}
	x, err := b.family(p)
	if err != nil {
		return nil // never opened
	}
	if err := x.Delete(b.chain(p), ruleSpec(p)...); err != nil {
		return b.wrap("close "+desc(p), err)
	}
	delete(b.open, p.Key())
	return nil
}

// List returns the pinhole rules in FTPALG-INPUT and FTPALG-FORWARD (as
// Forward pinholes) of both families, read from the kernel (so it works in
// a process that did not call Setup). Lifetime is zero: these rules have
// no kernel timeout.
func (b *Backend) List(ctx context.Context) ([]rules.Pinhole, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []rules.Pinhole
	for i := range families {
		x, err := b.tables(ctx, i)
		if err != nil {
			if i == 1 {
				continue // no ip6tables, no IPv6 pinholes
			}
			return nil, err
		}
		for j, chain := range b.chains {
			ok, err := x.ChainExists(chain)
			if err != nil {
				return nil, b.wrap("list "+x.Cmd+" "+chain, err)
			}
			if !ok {
				continue
			}
			specs, err := x.List(chain)
			if err != nil {
				return nil, b.wrap("list "+x.Cmd+" "+chain, err)
			}
			for _, s := range specs {
				if p, ok := parseRule(s); ok {
					p.Forward = j == 1
					out = append(out, p)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b rules.Pinhole) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Peer.Compare(b.Peer)
	})
	return out, nil
}

// parseRule reads a pinhole back from a rule as `iptables -S` prints it:
// "-s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment
// --comment "ftpalg session 7" -j ACCEPT".
func parseRule(spec []string) (rules.Pinhole, bool) {
	p := rules.Pinhole{}
	var (
		local   netip.Addr
		port    uint64
		comment string
	)
	for i := 0; i+1 < len(spec); i++ {
		v := spec[i+1]
		switch spec[i] {
		case "-s":
			if pr, err := netip.ParsePrefix(v); err == nil && pr.IsSingleIP() {
				p.Peer = pr.Addr()
			} else if a, err := netip.ParseAddr(v); err == nil {
				p.Peer = a
			}
		case "-d":
			if pr, err := netip.ParsePrefix(v); err == nil && pr.IsSingleIP() {
				local = pr.Addr()
			} else if a, err := netip.ParseAddr(v); err == nil {
				local = a
			}
		case "-p":
			if v == "tcp" {
				p.Proto = rules.ProtoTCP
			}
		case "--dport":
			port, _ = strconv.ParseUint(v, 10, 16)
		case "--comment":
			comment = v
		}
	}
	session, ok := rules.ParseComment(comment)
	if !ok || !p.Peer.IsValid() || !local.IsValid() || port == 0 || p.Proto != rules.ProtoTCP {
		return rules.Pinhole{}, false
	}
	p.Local = netip.AddrPortFrom(local, uint16(port))
	p.Session = session
	return p, true
}

// Flush removes every pinhole rule (the chains hold nothing else) and
// forgets every pinhole. It works without Setup.
func (b *Backend) Flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flush(ctx)
}

func (b *Backend) flush(ctx context.Context) error {
	var errs []error
	for i := range families {
		x, err := b.tables(ctx, i)
		if err != nil {
			if i == 0 {
				errs = append(errs, err)
			}
			continue
		}
		for _, chain := range b.chains {
			if err := x.FlushChain(chain); err != nil {
				errs = append(errs, b.wrap("flush "+x.Cmd+" "+chain, err))
			}
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		clear(b.open)
	}
	return err
}

// Teardown removes every pinhole and then, unless KeepHooks, the hooks and
// chains. Missing objects are fine and errors do not stop it: it doubles as
// the cleanup entry point for a run that crashed, called without Setup.
func (b *Backend) Teardown(ctx context.Context) error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready = false
	errs := []error{b.flush(ctx)}
	clear(b.open)
	if !b.opts.KeepHooks {
		for i := range families {
			x := b.x[i]
			if x == nil {
				continue // flush could not find it: nothing of ours there
			}
			for _, h := range b.hooks {
				if err := x.RemoveHooks(h); err != nil {
					errs = append(errs, b.wrap("teardown: hook "+h.Builtin+" → "+h.Chain, err))
				}
				if err := x.RemoveChain(h.Chain); err != nil {
					errs = append(errs, b.wrap("teardown: chain "+h.Chain, err))
				}
			}
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		b.log.Info("firewall torn down", zap.Bool("kept_hooks", b.opts.KeepHooks))
	}
	return err
}

// family returns p's family's binary, set up.
func (b *Backend) family(p rules.Pinhole) (*xtables.Tables, error) {
	if !b.ready {
		return nil, fmt.Errorf("%w: call Setup first", rules.ErrNotReady)
	}
	i := 0
	if p.Is6() {
		i = 1
	}
	if b.x[i] == nil {
		return nil, &rules.Error{Backend: Name, Op: "ipv6", Kind: rules.ErrUnsupported,
			Hint: "IPv6 pinholes are unavailable on this host", Err: b.xerr[i]}
	}
	return b.x[i], nil
}

func (b *Backend) wrap(op string, err error) error {
	kind, hint := xtables.Classify(err)
	return rules.Wrap(Name, op, kind, hint, err)
}

// desc names a pinhole in an error: "203.0.113.9→192.0.2.1:50012".
func desc(p rules.Pinhole) string { return p.Peer.String() + "→" + p.Local.String() }

// Probe checks that iptables works in the calling thread's network
// namespace: the binary is there, we may change the filter table, and it
// has the conntrack and comment matches (it creates and deletes a
// throwaway chain).
func Probe(ctx context.Context, opts rules.Options) (err error) {
	if err := opts.Check(); err != nil {
		return rules.Wrap(Name, "probe", rules.ErrInvalid, "", err)
	}
	b := New(opts)
	x, err := b.tables(ctx, 0)
	if err != nil {
		return err
	}
	chain := "FTPALG-PROBE-" + strconv.Itoa(os.Getpid()) // two instances may probe at once
	if err := x.EnsureChain(chain); err != nil {
		return b.wrap("probe: create chain "+chain, err)
	}
	defer func() {
		if rerr := x.RemoveChain(chain); rerr != nil && err == nil {
			err = b.wrap("probe: remove chain "+chain, rerr)
		}
	}()
	spec := append(append([]string{}, xtables.HookMatch...),
		"-s", "192.0.2.2", "-d", "192.0.2.1", "--dport", "9", "-m", "comment", "--comment", "ftpalg probe", "-j", "RETURN")
	if err := x.Append(chain, spec...); err != nil {
		return b.wrap("probe: rule", err)
	}
	return nil
}
