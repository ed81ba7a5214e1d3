package iptables

import (
	"context"
	"errors"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// Sync checks that our hooks and chains are in place in each family set
// up, and restores what a firewall reload removed: the chains, the hooks,
// and the rule of every pinhole this process holds open whose lifetime has
// not ended. Rules in our chain that this process does not hold open are
// removed: memory is the source of truth.
//
// The check is cheap when nothing changed. Per family it first reads the
// nf_tables generation (one netlink round trip; iptables-nft only): while
// it is where it was when Sync last found our hook, nothing changed and
// Sync runs no binary at all. Otherwise (legacy, or after any change to
// the ruleset, our own Opens included) it runs one `iptables -C INPUT
// <hook>`: a reload that replaced the filter table, `iptables -F` and
// `nft flush ruleset` all take the hook with them. Only when that fails
// does it look at the chains and rules (a few more runs) and repair.
//
// It does not hold up Open and Close: their mutex is taken only for each
// pinhole's rule re-added or removed, one process at a time, and a pinhole
// closed or opened again meanwhile is left to Close and Open.
func (b *Backend) Sync(ctx context.Context) (rules.Restored, error) {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	var r rules.Restored
	b.mu.Lock()
	ready, xs := b.ready, b.x
	b.mu.Unlock()
	if !ready {
		return r, nil
	}
	var errs []error
	for i, x := range xs {
		if x == nil {
			continue // no IPv6 here
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, rules.Wrap(Name, "sync", nil, "", err))
			break
		}
		gen, genOK := x.Generation()
		if genOK && b.verifiedOK[i] && gen == b.verified[i] {
			continue
		}
		b.verifiedOK[i] = false
		ok, err := x.HasHook(b.hooks[0])
		if err != nil {
			errs = append(errs, b.wrap("sync: check "+x.Cmd+" hook "+b.hooks[0].Builtin, err))
			continue
		}
		if ok {
			b.verified[i], b.verifiedOK[i] = gen, genOK
			continue
		}
		if err := b.repair(ctx, i, x, &r); err != nil {
			errs = append(errs, err)
		}
	}
	return r, errors.Join(errs...)
}

// repair restores family i: chains, hooks, then the pinholes' rules.
func (b *Backend) repair(ctx context.Context, i int, x *xtables.Tables, r *rules.Restored) error {
	// What this process holds, before the kernel is read: a pinhole
	// opened after this moment may be in the kernel and not here, one
	// here and not in the kernel was not added since (see restore).
	fam := families[i]
	snap := b.snapshot(fam)
	for _, h := range b.hooks {
		ok, err := x.ChainExists(h.Chain)
		if err != nil {
			return b.wrap("sync: "+x.Cmd+" chain "+h.Chain, err)
		}
		if ok {
			continue
		}
		if err := x.EnsureChain(h.Chain); err != nil {
			return b.wrap("sync: create "+x.Cmd+" chain "+h.Chain, err)
		}
		r.Add("%s chain %s", x.Cmd, h.Chain)
	}
	for _, h := range b.hooks {
		inserted, err := x.SyncHook(h)
		if err != nil {
			return b.wrap("sync: "+x.Cmd+" hook "+h.Builtin+" → "+h.Chain, err)
		}
		if inserted {
			r.Add("%s hook %s → %s", x.Cmd, h.Builtin, h.Chain)
		}
	}
	if err := ctx.Err(); err != nil {
		return rules.Wrap(Name, "sync", nil, "", err)
	}
	have := map[rules.Key]rules.Pinhole{}
	for j, chain := range b.chains {
		specs, err := x.List(chain)
		if err != nil {
			return b.wrap("sync: list "+x.Cmd+" "+chain, err)
		}
		for _, s := range specs {
			if p, ok := parseRule(s); ok {
				p.Forward = j == 1
				have[p.Key()] = p
			}
		}
	}
	errs := rules.ReconcilePinholes(r, have, snap,
		func(k rules.Key, h held) (bool, error) { return b.restore(x, k, h.seq) },
		func(p rules.Pinhole) (bool, error) { return b.removeStray(x, p) },
		func(what string, err error) error { return b.wrap("sync: "+what, err) })
	return errors.Join(errs...)
}

// snapshot copies the pinholes of family fam this process holds open and
// whose lifetime has not ended.
func (b *Backend) snapshot(fam xtables.Family) map[rules.Key]held {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	out := map[rules.Key]held{}
	for k, h := range b.open {
		if h.p.Is6() == (fam == xtables.IPv6) && h.expires.After(now) {
			out[k] = h
		}
	}
	return out
}

// restore appends the rule of pinhole k, which the kernel did not hold
// after the snapshot that saw it as entry seq, unless it was closed or
// opened again since (then Close or Open has done what is right) or its
// lifetime ended meanwhile.
func (b *Backend) restore(x *xtables.Tables, k rules.Key, seq uint64) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.open[k]
	if !ok || h.seq != seq || !b.ready || !h.expires.After(b.now()) {
		return false, nil
	}
	return true, x.Append(b.chain(h.p), ruleSpec(h.p)...)
}

// removeStray deletes p's rule, which the kernel held and this process
// did not, unless an Open added it since.
func (b *Backend) removeStray(x *xtables.Tables, p rules.Pinhole) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.open[p.Key()]; ok || !b.ready {
		return false, nil
	}
	return true, x.Delete(b.chain(p), ruleSpec(p)...)
}

// lifetime is how long a pinhole opened now stays restorable.
func lifetime(p rules.Pinhole) time.Duration { return time.Duration(p.TimeoutSeconds()) * time.Second }
