package nftpath

import (
	"context"
	"errors"

	"github.com/ftpalg/ftpalg/rules"
)

// Sync checks that the table is in place and restores it when a firewall
// reload removed it (`nft flush ruleset`, `nft -f` of a ruleset that
// starts with one, a table deleted by hand), with every mapping this
// process holds that is not used and within its lifetime, for the time it
// has left: one batch, like Setup's. Armed elements the kernel holds and
// memory does not (a saved copy of the table restored with old elements)
// are removed, and counted as Stray.
//
// The check is cheap when nothing changed: the nf_tables generation (one
// netlink round trip), which every committed change of any table moves;
// while it stays where the last good check left it, nothing was touched.
// Otherwise (after any change, our own mappings included) it reads our
// two chains' rules, whose comments carry this run's token, and the armed
// elements. Mappings flushed by `ftpalg rules flush` while the table stays
// are not put back.
//
// It never holds up Map and Close for more than one kernel call: it takes
// their mutex only for the rebuild's batch and for each stray removed.
func (d *DataPath) Sync(ctx context.Context) (rules.Restored, error) {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	var r rules.Restored
	d.mu.Lock()
	ready, k, token := d.ready, d.k, d.token
	d.mu.Unlock()
	if !ready {
		return r, nil
	}
	if err := ctx.Err(); err != nil {
		return r, rules.Wrap(Name, "sync", nil, "", err)
	}
	gen, genErr := k.generation()
	if genErr == nil && d.verifiedOK && gen == d.verified {
		return r, nil
	}
	d.verifiedOK = false
	intact, err := k.check(token)
	if err != nil {
		return r, d.kerr("sync: check table inet "+d.table, err)
	}
	if !intact {
		n, err := d.rebuild()
		if err != nil {
			return r, d.kerr("sync: recreate table inet "+d.table, err)
		}
		r.Add("table inet %s", d.table)
		r.Mappings = n
		return r, nil
	}
	n, err := d.removeStrays()
	r.Stray = n
	if err == nil && n == 0 && genErr == nil {
		d.verified, d.verifiedOK = gen, true
	}
	return r, err
}

// rebuild replaces the table by a fresh one with the live mappings (not
// used, within their lifetime), under mu so that no Map or Close slips
// between the copy and the batch.
func (d *DataPath) rebuild() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ready {
		return 0, nil
	}
	now := d.now()
	var hs []held
	for _, f := range d.live {
		if f.expires.After(now) {
			hs = append(hs, held{m: f.m, expires: f.expires})
		}
	}
	return len(hs), d.k.create(d.token, hs, now)
}

// removeStrays deletes the armed elements the kernel holds and memory
// does not, with their DNAT element.
func (d *DataPath) removeStrays() (int, error) {
	// What memory holds before the kernel is read: a mapping live then and
	// gone later was used or closed meanwhile, not a stray.
	d.mu.Lock()
	k := d.k
	before := make(map[rules.MappingKey]bool, len(d.live))
	for key := range d.live {
		before[key] = true
	}
	d.mu.Unlock()
	armed, err := k.armed()
	if err != nil {
		return 0, d.kerr("sync: read the armed mappings", err)
	}
	n := 0
	var errs []error
	for key := range armed {
		if before[key] {
			continue
		}
		d.mu.Lock()
		_, live := d.live[key]
		if !live && d.ready {
			m := rules.Mapping{Peer: key.Peer, Announced: key.Announced}
			if err := d.k.remove(m, elArmed|elDNAT); err != nil {
				errs = append(errs, d.kerr("sync: remove stray "+key.Peer.String()+"→"+key.Announced.String(), err))
			} else {
				n++
			}
		}
		d.mu.Unlock()
	}
	return n, errors.Join(errs...)
}
