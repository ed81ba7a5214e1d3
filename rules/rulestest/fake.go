// Package rulestest provides a stateful fake rules.Backend for other
// packages' tests. It lives in a normal file so any test can import it.
//
// The fake keeps pinholes as the real backends do, so that a proxy test
// cannot pass against it and fail against ipset or iptables: a pinhole is
// checked and normalised like theirs (rules.Pinhole.Check: an invalid one
// is rules.ErrInvalid, an IPv4-mapped peer is the IPv4 peer), it is keyed
// by rules.Key (protocol, peer, local address and port), opening a key
// that is open already refreshes it (the new session and lifetime replace
// the old, as ipset replaces its element), one Close of the key removes it
// whatever the session, and closing what is not open is fine. It runs the
// state tests of the backends' conformance suite (rules/internal/backendtest)
// in this package's tests.
//
// It does not model time: a pinhole stays until it is closed, flushed or
// torn down, where an ipset element would also expire after its lifetime.
// Nor does it model a firewall reload: its Kernel never loses what it
// holds, so Sync has nothing to restore.
package rulestest

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ftpalg/ftpalg/rules"
)

// Name is the fake's name, in its errors ("rules/fake: …").
const Name = "fake"

// Kernel is the state fakes share, as backends in one network namespace
// share the kernel: the pinholes of each instance (rules.Options.Instance).
// A Fake made by NewFake has a Kernel of its own; Kernel.New makes fakes
// that share one, such as a daemon and an `ftpalg rules show` beside it.
type Kernel struct {
	mu   sync.Mutex
	open map[string]map[rules.Key]rules.Pinhole // by Options.Suffix
}

// NewKernel returns a Kernel without pinholes.
func NewKernel() *Kernel { return &Kernel{open: map[string]map[rules.Key]rules.Pinhole{}} }

// New returns a fake backend on k that has not run Setup: like a real
// backend, it refuses Open with rules.ErrNotReady until then.
func (k *Kernel) New(opts rules.Options) *Fake {
	return &Fake{k: k, instance: opts.Suffix()}
}

// Fake is a rules.Backend and rules.Lister whose pinholes live in a
// Kernel. It is safe for concurrent use.
type Fake struct {
	k        *Kernel
	instance string

	mu                        sync.Mutex
	ready                     bool
	opened, refreshed, closed int
	syncs                     int
	// holds counts the Opens of each key not yet Closed (the kernel's
	// state is the Kernel's; the holds are this process's, as a real
	// backend's memory map).
	holds map[rules.Key]int
	// FailOpen, when set, is returned by every Open of a valid pinhole.
	FailOpen error
}

// NewFake returns a Fake on a Kernel of its own, set up: Open works at
// once.
func NewFake() *Fake {
	f := NewKernel().New(rules.Options{})
	f.ready = true
	return f
}

func (f *Fake) Name() string { return Name }

// Setup makes f ready and, as the real backends flush their set or chain,
// removes the pinholes its instance left in the Kernel.
func (f *Fake) Setup(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.open, f.instance)
	f.holds = nil
	f.ready = true
	return nil
}

// Teardown removes its instance's pinholes; Open is ErrNotReady until the
// next Setup. Calling it again, or without Setup, is fine.
func (f *Fake) Teardown(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.open, f.instance)
	f.holds = nil
	f.ready = false
	return nil
}

// Open adds p, or refreshes the pinhole of p's key when one is open (p
// replaces it, with its session and lifetime) and adds a hold.
func (f *Fake) Open(ctx context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "open "+desc(p), rules.ErrInvalid, "", err)
	}
	if err := ctx.Err(); err != nil {
		return rules.Wrap(Name, "open "+desc(p), nil, "", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailOpen != nil {
		return f.FailOpen
	}
	if !f.ready {
		return rules.Wrap(Name, "open "+desc(p), nil, "", fmt.Errorf("%w: call Setup first", rules.ErrNotReady))
	}
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	m := f.k.open[f.instance]
	if m == nil {
		m = map[rules.Key]rules.Pinhole{}
		f.k.open[f.instance] = m
	}
	if _, ok := m[p.Key()]; ok {
		f.refreshed++
	} else {
		f.opened++
	}
	m[p.Key()] = p
	if f.holds == nil {
		f.holds = map[rules.Key]int{}
	}
	f.holds[p.Key()]++
	return nil
}

// Close releases one hold on p's key, whatever its session, and removes
// the pinhole with the last; one that is not open (never opened, closed,
// flushed) is fine.
func (f *Fake) Close(_ context.Context, p rules.Pinhole) error {
	p, err := p.Check()
	if err != nil {
		return rules.Wrap(Name, "close "+desc(p), rules.ErrInvalid, "", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ready {
		return nil
	}
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if f.holds[p.Key()] > 1 {
		f.holds[p.Key()]--
		return nil
	}
	delete(f.holds, p.Key())
	if _, ok := f.k.open[f.instance][p.Key()]; ok {
		delete(f.k.open[f.instance], p.Key())
		f.closed++
	}
	return nil
}

// Sync finds nothing to restore: a Kernel is never reloaded behind a
// Fake's back. It counts its calls (Syncs).
func (f *Fake) Sync(context.Context) (rules.Restored, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	return rules.Restored{}, nil
}

// Syncs returns how many times Sync was called.
func (f *Fake) Syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

// Pinholes returns the pinholes of f's instance open now, ordered by local
// address and port, then peer, as the real backends' List.
func (f *Fake) Pinholes() []rules.Pinhole {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	out := make([]rules.Pinhole, 0, len(f.k.open[f.instance]))
	for _, p := range f.k.open[f.instance] {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b rules.Pinhole) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Peer.Compare(b.Peer)
	})
	return out
}

// Counts returns how many pinholes f's Opens created and its Closes
// removed, in all. A refresh (Open of an open key) counts in neither: after
// every pinhole is closed, opened == closed.
func (f *Fake) Counts() (opened, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opened, f.closed
}

// Refreshed returns how many Opens found their key open already.
func (f *Fake) Refreshed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refreshed
}

// List returns the pinholes open now, as a rules.Lister; it works without
// Setup.
func (f *Fake) List(context.Context) ([]rules.Pinhole, error) { return f.Pinholes(), nil }

// Flush removes every pinhole of f's instance, as a rules.Lister; it works
// without Setup.
func (f *Fake) Flush(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.open, f.instance)
	f.holds = nil
	return nil
}

// desc names a pinhole in an error: "203.0.113.9→192.0.2.1:50012".
func desc(p rules.Pinhole) string { return p.Peer.String() + "→" + p.Local.String() }

var (
	_ rules.Backend = (*Fake)(nil)
	_ rules.Lister  = (*Fake)(nil)
)
