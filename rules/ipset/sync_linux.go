package ipset

import (
	"context"
	"errors"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// Sync checks that our sets, chains and hooks are in place in each family
// set up, and restores what a firewall reload removed: the set (with every
// pinhole this process holds open, for the time it has left), the chains
// with their rule, and the hooks. Elements of our set that this process
// does not hold open are removed: memory is the source of truth.
//
// The check costs one netlink round trip per family and runs no binary:
// it reads the set's header (`ipset list -t`), which says whether the set
// exists, is ours, and how many rules refer to it. Our two hooks and our
// two chains' rules each hold a reference (hookMatch), so a reload that
// replaced the filter table, `iptables -F`, `nft flush ruleset` or a
// deleted hook all show as fewer references. Only then does Sync run
// iptables to see what is missing and repair it.
//
// It does not hold up Open and Close: their mutex is taken only for each
// element re-added or removed (microseconds), and a pinhole closed or
// opened again meanwhile is left to Close and Open.
func (b *Backend) Sync(ctx context.Context) (rules.Restored, error) {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	var r rules.Restored
	b.mu.Lock()
	ready := b.ready
	b.mu.Unlock()
	if !ready {
		return r, nil
	}
	var errs []error
	// b.fams changes only in Setup and Teardown, which syncMu keeps out.
	for i := range b.fams {
		f := &b.fams[i]
		if f.x == nil {
			continue // no IPv6 here
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, rules.Wrap(Name, "sync", nil, "", err))
			break
		}
		hdr, err := setHeader(f.set)
		switch {
		case err == nil && compatible(hdr, f.af) && hdr.References >= f.hookRefs():
			continue
		case errors.Is(err, unix.ENOENT):
			hdr = nil
		case err != nil:
			errs = append(errs, b.nlerr("sync: check set "+f.set, err))
			continue
		}
		if err := b.repair(ctx, f, hdr, &r); err != nil {
			errs = append(errs, err)
		}
	}
	return r, errors.Join(errs...)
}

// repair restores family f, whose set header is hdr (nil: no set): the
// set, its elements, the chains and their rule, then the hooks, which make
// it all live again.
func (b *Backend) repair(ctx context.Context, f *family, hdr *setDump, r *rules.Restored) error {
	// What this process holds, before the kernel is read: a pinhole
	// opened after this moment may be in the kernel and not here; one here
	// and not in the kernel was not added since (see restore).
	snap := b.snapshot(f)
	fresh := false
	switch {
	case hdr == nil:
		if err := b.create(f.set, f.af); err != nil && !errors.Is(err, unix.EEXIST) {
			return b.nlerr("sync: create set "+f.set, err)
		}
		fresh = true
		r.Add("set %s", f.set)
	case !compatible(hdr, f.af):
		// replaced by a set of another kind (a saved set restored?): drop
		// our references to it and make ours again
		for _, h := range f.hooks {
			if err := f.x.RemoveHooks(h); err != nil {
				return b.xerr("sync: remove hook "+h.Builtin+" → "+h.Chain, err)
			}
			if err := f.x.FlushChain(h.Chain); err != nil {
				return b.xerr("sync: flush chain "+h.Chain, err)
			}
		}
		if err := b.destroy(ctx, f.set); err != nil {
			return b.nlerr("sync: destroy set "+f.set+" of type "+hdr.TypeName, err)
		}
		if err := b.create(f.set, f.af); err != nil {
			return b.nlerr("sync: create set "+f.set, err)
		}
		fresh = true
		r.Add("set %s (was %s)", f.set, hdr.TypeName)
	}

	have := map[rules.Key]rules.Pinhole{}
	if !fresh {
		d, err := listSet(f.set)
		if err != nil {
			return b.nlerr("sync: list set "+f.set, err)
		}
		for _, e := range d.Elements {
			if p, ok := fromElement(e); ok {
				have[p.Key()] = p
			}
		}
	}
	errs := rules.ReconcilePinholes(r, have, snap,
		func(k rules.Key, h held) (bool, error) { return b.restore(f, k, h.seq) },
		func(p rules.Pinhole) (bool, error) { return b.removeStray(f, p) },
		func(what string, err error) error { return b.nlerr("sync: "+what, err) })

	fail := func(err error) error { return errors.Join(append(errs, err)...) }
	if err := ctx.Err(); err != nil {
		return fail(rules.Wrap(Name, "sync", nil, "", err))
	}
	x := f.x
	for _, h := range f.hooks {
		ok, err := x.ChainExists(h.Chain)
		if err != nil {
			return fail(b.xerr("sync: "+x.Cmd+" chain "+h.Chain, err))
		}
		if !ok {
			if err := x.EnsureChain(h.Chain); err != nil {
				return fail(b.xerr("sync: create "+x.Cmd+" chain "+h.Chain, err))
			}
			r.Add("%s chain %s", x.Cmd, h.Chain)
		} else {
			has, err := x.Exists(h.Chain, matchSpec(f.set)...)
			if err != nil {
				return fail(b.xerr("sync: "+x.Cmd+" rule in "+h.Chain, err))
			}
			if has {
				continue
			}
			r.Add("%s rule in %s", x.Cmd, h.Chain)
		}
		if err := x.Append(h.Chain, matchSpec(f.set)...); err != nil {
			return fail(b.xerr("sync: "+x.Cmd+" rule in "+h.Chain, err))
		}
	}
	for _, h := range f.hooks {
		inserted, err := x.SyncHook(h)
		if err != nil {
			return fail(b.xerr("sync: "+x.Cmd+" hook "+h.Builtin+" → "+h.Chain, err))
		}
		if inserted {
			r.Add("%s hook %s → %s", x.Cmd, h.Builtin, h.Chain)
		}
	}
	return errors.Join(errs...)
}

// snapshot copies the pinholes of family f this process holds open and
// whose lifetime has not ended.
func (b *Backend) snapshot(f *family) map[rules.Key]held {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	out := map[rules.Key]held{}
	for k, h := range b.open {
		if h.p.Is6() == (f.af == unix.AF_INET6) && h.expires.After(now) {
			out[k] = h
		}
	}
	return out
}

// restore adds the element of pinhole k, which the kernel did not hold
// after the snapshot that saw it as entry seq, with the time it has left,
// unless it was closed or opened again since (then Close or Open has done
// what is right) or its time ran out meanwhile.
func (b *Backend) restore(f *family, k rules.Key, seq uint64) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.open[k]
	if !ok || h.seq != seq || !b.ready {
		return false, nil
	}
	left := h.expires.Sub(b.now())
	if left <= 0 {
		return false, nil
	}
	to := uint32(max(1, (left+time.Second-1)/time.Second))
	e := element(h.p)
	e.Timeout, e.Comment, e.Replace = &to, h.p.Comment(), true
	return true, call(func() error { return b.h.IpsetAdd(f.set, e) })
}

// removeStray deletes p's element, which the kernel held and this process
// did not, unless an Open added it since.
func (b *Backend) removeStray(f *family, p rules.Pinhole) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.open[p.Key()]; ok || !b.ready {
		return false, nil
	}
	err := call(func() error { return b.h.IpsetDel(f.set, element(p)) })
	if err == nil || isIPSetErr(err, nl.IPSET_ERR_EXIST) || errors.Is(err, unix.ENOENT) {
		return err == nil, nil
	}
	return false, err
}
