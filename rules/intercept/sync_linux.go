package intercept

import (
	"context"
	"errors"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// Name is "intercept", for the log lines of rules.Watch.
func (r *Rules) Name() string { return backend }

// Sync checks that what Install put in the kernel is still there and, when
// a firewall reload (or `ip rule flush`, or a network manager rewriting
// the routing) removed some of it, installs it again as Install would, and
// says what it put back. It is a rules.Syncer, for rules.Watch. After
// Remove it does nothing. Like Install it acts in the calling thread's
// network namespace.
//
// The check is cheap when nothing changed. Per family:
//   - the policy routing (when the Config needs it) with one route lookup
//     over netlink, `ip route get ADDR mark MARK`: the answer must be a
//     local route from our table, which only our rule and route (or the
//     operator's identical ones) give;
//   - the hooks: while the nf_tables generation (one netlink round trip;
//     iptables-nft only) has not moved since Sync last found them, nothing
//     changed and no binary runs; otherwise one `iptables -t TABLE -S
//     PREROUTING` per table with hooks of ours, which must hold exactly
//     ours. A reload replaces the chains with the table, so a hook in place
//     means its chain is too.
//
// Only when a check fails does Sync run the full reconciliation of that
// family (Install's), which rebuilds what differs and leaves alone what
// does not.
func (r *Rules) Sync(ctx context.Context) (rules.Restored, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res rules.Restored
	if r.removed {
		return res, nil
	}
	h, err := r.k.routing()
	if err != nil {
		return res, wrapNL("sync: netlink", err, "")
	}
	defer h.Close()
	var errs []error
	for _, f := range r.fams {
		if err := ctx.Err(); err != nil {
			errs = append(errs, rules.Wrap(backend, "sync", nil, "", err))
			break
		}
		ok, err := r.intact(h, f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			continue
		}
		delete(r.verified, f)
		r.restoring = &res
		err = r.installFamily(ctx, h, f)
		r.restoring = nil
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// probeDst is the destination of the routing check: an address of a
// documentation network (RFC 5737, RFC 3849) no host should have, so
// that its lookup reaches our rule. On a host that has it the check fails
// every time and Sync falls back to the full check, which finds nothing
// to change.
func probeDst(f family) net.IP {
	if f == ipv6 {
		return net.ParseIP("2001:db8:ffff:ffff::f7a1")
	}
	return net.ParseIP("203.0.113.254").To4()
}

// intact reports whether the cheap checks find family f as Install left
// it.
func (r *Rules) intact(h router, f family) (bool, error) {
	if r.c.routing() {
		mark := r.c.Mark
		routes, err := h.RouteGetWithOptions(probeDst(f), &netlink.RouteGetOptions{Mark: mark})
		if err != nil && !errors.Is(err, unix.ENETUNREACH) && !errors.Is(err, unix.EHOSTUNREACH) {
			return false, wrapNL("sync: "+f.String()+": route lookup", err, "")
		}
		if !slices.ContainsFunc(routes, func(rt netlink.Route) bool { return rt.Table == r.c.Table && rt.Type == unix.RTN_LOCAL }) {
			r.log.Debug("policy routing gone", zap.Stringer("family", f))
			return false, nil
		}
	}
	x := r.x[f]
	if x == nil {
		return false, nil
	}
	gen, genOK := x.Generation()
	if v, ok := r.verified[f]; ok && genOK && v == gen {
		return true, nil
	}
	for _, tw := range r.c.want(f) {
		if len(tw.hooks) == 0 {
			continue
		}
		t := x.In(tw.table)
		rs, err := t.List(prerouting)
		if err != nil {
			if xtables.IsNotExist(err) {
				return false, nil
			}
			return false, wrap("sync: "+f.String()+": list "+tw.table+" "+prerouting, err, "")
		}
		var have [][]string
		for _, spec := range rs {
			if slices.Contains(tw.ours, xtables.Target(spec)) {
				have = append(have, spec)
			}
		}
		if !sameSpecs(have, tw.hooks) {
			return false, nil
		}
	}
	if genOK {
		r.verified[f] = gen
	}
	return true, nil
}
