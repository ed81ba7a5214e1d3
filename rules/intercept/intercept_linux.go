package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// backend is the name errors carry: "rules/intercept: …".
const backend = "intercept"

// Rules are the interception rules one Install put in the kernel.
type Rules struct {
	c    Config // normalized
	log  *zap.Logger
	k    kernel
	fams []family // the families Install set up

	mu sync.Mutex // orders Sync and Remove
	// changes counts the kernel changes Install made: zero when it found
	// everything in place already (the tests' idempotence check).
	changes int
	// x holds each family's binary, found by Install, for Sync.
	x map[family]*xtables.Tables
	// removed is set by Remove: Sync then leaves the kernel alone.
	removed bool
	// verified is, per family, the nf_tables generation at which Sync
	// last found our hooks in place: until it moves, nothing changed.
	verified map[family]uint32
	// restoring, while Sync repairs, collects what it puts back.
	restoring *rules.Restored
}

// Install reconciles the kernel with c and returns what it installed: in
// the calling thread's network namespace, for each family c uses, it
// builds our chains with exactly c's rules, makes our hooks in PREROUTING
// exactly c's (removing duplicates, jumps to chains c does not use and
// older spellings), adds the policy routing when c needs it and removes
// stale routing of ours in c.Table. Leftovers of a crashed run are
// reconciled, not duplicated; objects of ours that c does not use (the
// other method's chain, a family c leaves out) are removed. A second
// Install with the same c changes nothing.
//
// When c has no IPv6 source (only interfaces, or only the divert) and
// IPv6 cannot be set up (no ip6tables, IPv6 disabled), IPv6 is logged and
// left out. Any other failure removes what this call installed and is
// returned as an *rules.Error.
func Install(ctx context.Context, c Config) (*Rules, error) { return installOn(ctx, c, host()) }

// kernel is what Install, Remove and Cleanup change: the iptables binaries
// and the policy routing. host() is this machine's; tests put fakes in.
type kernel struct {
	tables  xtables.Opener
	routing func() (router, error)
}

func host() kernel {
	return kernel{
		tables: xtables.New,
		routing: func() (router, error) {
			h, err := netlink.NewHandle()
			if err != nil {
				return nil, err
			}
			return h, nil
		},
	}
}

// router is the part of *netlink.Handle the policy routing uses.
type router interface {
	LinkByName(name string) (netlink.Link, error)
	RuleListFiltered(family int, filter *netlink.Rule, filterMask uint64) ([]netlink.Rule, error)
	RuleAdd(rule *netlink.Rule) error
	RuleDel(rule *netlink.Rule) error
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	RouteGetWithOptions(destination net.IP, options *netlink.RouteGetOptions) ([]netlink.Route, error)
	Close()
}

var _ router = (*netlink.Handle)(nil)

func installOn(ctx context.Context, c Config, k kernel) (*Rules, error) {
	n, err := c.normalized()
	if err != nil {
		return nil, rules.Wrap(backend, "install", rules.ErrInvalid, "", err)
	}
	r := &Rules{c: n, log: logger(n), k: k, x: map[family]*xtables.Tables{}, verified: map[family]uint32{}}
	h, err := k.routing()
	if err != nil {
		return nil, wrapNL("install: netlink", err, "")
	}
	defer h.Close()

	fams, explicit6 := n.families()
	for _, f := range []family{ipv4, ipv6} {
		if err := ctx.Err(); err != nil {
			r.rollback(h, r.fams)
			return nil, rules.Wrap(backend, "install", nil, "", err)
		}
		if !slices.Contains(fams, f) {
			// a previous run's objects in a family this one leaves out
			if err := r.removeFamily(ctx, h, f, true); err != nil {
				r.log.Warn("removing leftovers failed", zap.Stringer("family", f), zap.Error(err))
			}
			continue
		}
		err := r.installFamily(ctx, h, f)
		if err == nil {
			r.fams = append(r.fams, f)
			continue
		}
		if f == ipv6 && !explicit6 {
			r.log.Warn("IPv6 interception unavailable; IPv4 only", zap.Error(err))
			if err := r.removeFamily(ctx, h, f, true); err != nil {
				r.log.Warn("removing IPv6 remains failed", zap.Error(err))
			}
			continue
		}
		r.rollback(h, append(slices.Clone(r.fams), f))
		return nil, err
	}
	r.log.Info("interception installed",
		zap.Stringer("method", n.Mode), zap.Stringers("families", r.fams),
		zap.Stringers("sources", n.Sources), zap.Strings("interfaces", n.Interfaces),
		zap.Uint16("port", n.Port), zap.Uint16("listen_port", n.ListenPort),
		zap.Bool("divert", n.Divert), zap.Bool("policy_routing", n.routing()),
		zap.String("mark", fmt.Sprintf("0x%x/0x%x", n.Mark, n.Mask)), zap.Int("table", n.Table),
		zap.Int("changes", r.changes))
	return r, nil
}

// rollback removes what a failed Install may have left in fams.
func (r *Rules) rollback(h router, fams []family) {
	for _, f := range fams {
		if err := r.removeFamily(context.Background(), h, f, false); err != nil {
			r.log.Warn("rollback after a failed install", zap.Stringer("family", f), zap.Error(err))
		}
	}
}

// Remove removes everything Install installed: our hooks, our chains, and
// our ip rule and route (those carrying RouteProtocol; an operator's
// identical ones that Install found and used stay). What is gone already
// is success; a failure does not stop the rest, and all are returned
// joined. Calling it again is harmless.
func (r *Rules) Remove(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = true
	h, err := r.k.routing()
	if err != nil {
		return wrapNL("remove: netlink", err, "")
	}
	defer h.Close()
	var errs []error
	for _, f := range r.fams {
		errs = append(errs, r.removeFamily(ctx, h, f, false))
	}
	err = errors.Join(errs...)
	if err == nil {
		r.log.Info("interception removed", zap.Stringers("families", r.fams))
	}
	return err
}

// Cleanup removes, without an Install in this process, every object of
// ours for c.Instance and c.Table: our chains and the hooks to them, in
// both families and both tables, and the ip rules and routes with
// RouteProtocol in c.Table. It is `ftpalg rules cleanup` after a
// crash. Only c.Instance, c.Iptables, c.Table and c.Logger matter. A
// family whose iptables binary is missing, or a table never loaded, has
// nothing to remove.
func Cleanup(ctx context.Context, c Config) error { return cleanupOn(ctx, c, host()) }

func cleanupOn(ctx context.Context, c Config, k kernel) error {
	if err := (rules.Options{Instance: c.Instance, Iptables: c.Iptables}).Check(); err != nil {
		return rules.Wrap(backend, "cleanup", rules.ErrInvalid, "", err)
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if err := checkTable(c.Table); err != nil {
		return rules.Wrap(backend, "cleanup", rules.ErrInvalid, "", err)
	}
	r := &Rules{c: c, log: logger(c), k: k}
	h, err := k.routing()
	if err != nil {
		return wrapNL("cleanup: netlink", err, "")
	}
	defer h.Close()
	var errs []error
	for _, f := range []family{ipv4, ipv6} {
		errs = append(errs, r.removeFamily(ctx, h, f, true))
	}
	return errors.Join(errs...)
}

func logger(c Config) *zap.Logger {
	l := c.Logger
	if l == nil {
		l = zap.NewNop()
	}
	return l.With(zap.String("component", "intercept"))
}

// xfamily is f for xtables.
func (f family) x() xtables.Family {
	if f == ipv6 {
		return xtables.IPv6
	}
	return xtables.IPv4
}

// nl is f for netlink.
func (f family) nl() int {
	if f == ipv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// installFamily brings family f to c's state: policy routing first (it
// only acts on marked packets), then our chains, then the hooks that make
// them live, then the removal of what c does not use.
func (r *Rules) installFamily(ctx context.Context, h router, f family) error {
	op := "install " + f.String()
	x := r.x[f]
	if x == nil {
		var err error
		if x, err = r.k.tables(ctx, f.x(), r.c.Iptables); err != nil {
			return wrap(op+": find iptables", err, "")
		}
		r.x[f] = x
	}
	r.log.Debug("iptables found", zap.Stringer("family", f), zap.String("command", x.Cmd), zap.String("mode", x.Mode))
	if w := x.OtherVariantWarning(); w != "" {
		r.log.Warn("two iptables variants in use", zap.String("warning", w))
	}
	if r.c.routing() {
		if err := r.ensureRouting(h, f); err != nil {
			return err
		}
	}
	for _, tw := range r.c.want(f) {
		t := x.In(tw.table)
		if len(tw.chains) == 0 && !t.Loaded() {
			continue // nothing wanted, nothing there: leave a legacy table unloaded
		}
		for _, cw := range tw.chains {
			if err := r.ensureChain(t, cw); err != nil {
				return wrap(fmt.Sprintf("%s: %s chain %s", op, tw.table, cw.name), err, needs(cw.name))
			}
		}
		if err := r.syncHooks(t, tw.hooks, tw.ours); err != nil {
			return wrap(fmt.Sprintf("%s: %s %s hooks", op, tw.table, prerouting), err, "")
		}
		for _, name := range tw.ours {
			if slices.ContainsFunc(tw.chains, func(cw chainWant) bool { return cw.name == name }) {
				continue
			}
			if err := r.removeChain(t, name); err != nil {
				return wrap(fmt.Sprintf("%s: remove unused %s chain %s", op, tw.table, name), err, "")
			}
		}
	}
	if !r.c.routing() {
		if err := r.removeRouting(h, f); err != nil {
			return err
		}
	}
	return nil
}

// needs is the hint for a chain whose rules the kernel refused: the
// modules its target and match live in.
func needs(chain string) string {
	switch {
	case strings.HasPrefix(chain, ChainRedirect):
		return "the kernel lacks NAT or the REDIRECT target (nf_nat, xt_REDIRECT) for this family"
	case strings.HasPrefix(chain, ChainTProxy):
		return "the kernel lacks the TPROXY target (xt_TPROXY, nf_tproxy_ipv4/ipv6); use the redirect method"
	case strings.HasPrefix(chain, ChainDivert):
		return "the kernel lacks the socket match or the MARK target (xt_socket, xt_mark)"
	}
	return ""
}

// ensureChain makes chain cw.name hold exactly cw.rules. A chain that does
// already is left alone (no window without our rules); otherwise it is
// created, or flushed, and filled.
func (r *Rules) ensureChain(t *xtables.Tables, cw chainWant) error {
	ok, err := t.ChainExists(cw.name)
	if err != nil {
		return err
	}
	if ok {
		have, err := t.List(cw.name)
		if err != nil {
			return err
		}
		if sameSpecs(have, cw.rules) {
			return nil
		}
	}
	r.changed("chain rebuilt", zap.String("table", t.TableName()), zap.String("chain", cw.name), zap.String("command", t.Cmd))
	r.note("%s %s chain %s", t.Cmd, t.TableName(), cw.name)
	if err := t.EnsureChain(cw.name); err != nil {
		return err
	}
	for _, spec := range cw.rules {
		if err := t.Append(cw.name, spec...); err != nil {
			return err
		}
	}
	return nil
}

// syncHooks makes our rules in PREROUTING (those jumping to one of ours)
// exactly want, in order. When they are already, nothing changes;
// otherwise all of ours are deleted and want is inserted at the top, in
// order. An operator who moved our hooks further down keeps them there as
// long as they stay what c wants.
func (r *Rules) syncHooks(t *xtables.Tables, want [][]string, ours []string) error {
	rs, err := t.List(prerouting)
	if err != nil {
		return err
	}
	var have [][]string
	for _, spec := range rs {
		if slices.Contains(ours, xtables.Target(spec)) {
			have = append(have, spec)
		}
	}
	if sameSpecs(have, want) {
		return nil
	}
	for _, spec := range have {
		r.changed("hook removed", zap.String("table", t.TableName()), zap.Strings("rule", spec), zap.String("command", t.Cmd))
		if err := t.Delete(prerouting, spec...); err != nil {
			return err
		}
	}
	for i, spec := range want {
		r.changed("hook inserted", zap.String("table", t.TableName()), zap.Strings("rule", spec), zap.String("command", t.Cmd))
		r.note("%s %s hook %s → %s", t.Cmd, t.TableName(), prerouting, xtables.Target(spec))
		if err := t.Insert(prerouting, i+1, spec...); err != nil {
			return err
		}
	}
	return nil
}

// removeChain deletes one of our chains once nothing jumps to it; a
// missing chain is fine.
func (r *Rules) removeChain(t *xtables.Tables, name string) error {
	ok, err := t.ChainExists(name)
	if err != nil || !ok {
		return err
	}
	r.changed("chain removed", zap.String("table", t.TableName()), zap.String("chain", name), zap.String("command", t.Cmd))
	return t.RemoveChain(name)
}

// removeFamily removes our hooks, chains and policy routing in family f.
// tolerant (Cleanup, leftovers) treats a missing iptables binary and a
// family the kernel lacks as "nothing there".
func (r *Rules) removeFamily(ctx context.Context, h router, f family, tolerant bool) error {
	op := "remove " + f.String()
	var errs []error
	x, err := r.k.tables(ctx, f.x(), r.c.Iptables)
	switch {
	case err != nil && tolerant:
		r.log.Debug("no iptables binary: no rules to remove", zap.Stringer("family", f), zap.Error(err))
	case err != nil:
		errs = append(errs, wrap(op+": find iptables", err, ""))
	default:
		for _, table := range []string{tableNat, tableMangle} {
			t := x.In(table)
			if !t.Loaded() {
				continue // a legacy table never loaded holds nothing of ours
			}
			ours := r.ours(table)
			if err := r.syncHooks(t, nil, ours); err != nil {
				errs = append(errs, wrap(fmt.Sprintf("%s: %s %s hooks", op, table, prerouting), err, ""))
				continue // a chain still hooked cannot be deleted
			}
			for _, name := range ours {
				if err := r.removeChain(t, name); err != nil {
					errs = append(errs, wrap(fmt.Sprintf("%s: %s chain %s", op, table, name), err, ""))
				}
			}
		}
	}
	err = r.removeRouting(h, f)
	if tolerant && errors.Is(err, unix.EAFNOSUPPORT) {
		err = nil
	}
	errs = append(errs, err)
	return errors.Join(errs...)
}

// ours lists all our chain names in table, whatever c uses.
func (r *Rules) ours(table string) []string {
	sfx := r.c.suffix()
	if table == tableNat {
		return []string{ChainRedirect + sfx}
	}
	return []string{ChainTProxy + sfx, ChainDivert + sfx}
}

func (r *Rules) changed(msg string, fields ...zap.Field) {
	r.changes++
	r.log.Debug(msg, fields...)
}

// note records an object put back, while Sync repairs.
func (r *Rules) note(format string, args ...any) {
	if r.restoring != nil {
		r.restoring.Add(format, args...)
	}
}

// The policy routing (kernel Documentation/networking/tproxy.rst):
//
//	ip rule add fwmark MARK/MASK lookup TABLE proto 70
//	ip route add local 0.0.0.0/0 dev lo table TABLE proto 70   (::/0 for IPv6)
//
// A packet carrying the mark (set by TPROXY or by the divert) is looked up
// in TABLE, whose only route says every destination is local: it goes up
// the local stack to the transparent socket instead of being forwarded.
// Ours carry RouteProtocol; an operator's identical rule or route is used
// as it is and never removed.

// wantRule is our ip rule for family f.
func (r *Rules) wantRule(f family) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = f.nl()
	rule.Table = r.c.Table
	rule.Mark = r.c.Mark
	mask := r.c.Mask
	rule.Mask = &mask
	rule.Protocol = RouteProtocol
	return rule
}

// sameRule reports whether have does what our rule does: fwmark
// Mark/Mask, lookup Table, and nothing else to match or do.
func (r *Rules) sameRule(have netlink.Rule) bool {
	mask := uint32(0xffffffff)
	if have.Mask != nil {
		mask = *have.Mask
	}
	return have.Table == r.c.Table && have.Mark == r.c.Mark && mask == r.c.Mask &&
		have.Src == nil && have.Dst == nil && have.IifName == "" && have.OifName == "" &&
		!have.Invert && have.Goto < 0 && have.Tos == 0 && have.IPProto == 0 &&
		have.Dport == nil && have.Sport == nil && have.UIDRange == nil &&
		(have.Type == 0 || have.Type == unix.FR_ACT_TO_TBL)
}

// wantRoute is our local default route for family f.
func (r *Rules) wantRoute(f family, lo int) *netlink.Route {
	rt := &netlink.Route{
		LinkIndex: lo,
		Dst:       zeroNet(f),
		Table:     r.c.Table,
		Type:      unix.RTN_LOCAL,
		Protocol:  RouteProtocol,
		Family:    f.nl(),
		Scope:     netlink.SCOPE_HOST, // what `ip route add local` sets for IPv4
	}
	if f == ipv6 {
		rt.Scope = netlink.SCOPE_UNIVERSE // IPv6 has no route scopes; ip sets universe
	}
	return rt
}

func zeroNet(f family) *net.IPNet {
	if f == ipv6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

// isDefault reports whether a route's destination is the whole family.
func isDefault(rt netlink.Route) bool {
	if rt.Dst == nil {
		return true
	}
	ones, _ := rt.Dst.Mask.Size()
	return ones == 0
}

// sameRoute reports whether have is a local default route through lo.
func sameRoute(have netlink.Route, lo int) bool {
	return isDefault(have) && have.Type == unix.RTN_LOCAL && have.LinkIndex == lo &&
		have.Gw == nil && len(have.MultiPath) == 0
}

// ensureRouting gives family f exactly one rule and one route of ours in
// c.Table, or uses an operator's identical one; rules and routes of ours
// that differ (a previous run's mark, duplicates) are removed.
func (r *Rules) ensureRouting(h router, f family) error {
	op := "install " + f.String() + ": policy routing"
	lo, err := h.LinkByName("lo")
	if err != nil {
		return wrapNL(op+": find lo", err, "")
	}
	loIdx := lo.Attrs().Index

	have, err := r.listRules(h, f)
	if err != nil {
		return wrapNL(op+": list rules", err, "")
	}
	kept, other := false, false
	for _, rule := range have {
		switch {
		case rule.Protocol != RouteProtocol:
			other = other || r.sameRule(rule)
		case r.sameRule(rule) && !kept:
			kept = true
		default:
			if err := r.delRule(h, rule); err != nil {
				return wrapNL(op+": remove stale rule "+ruleString(rule), err, "")
			}
		}
	}
	switch {
	case kept:
	case other:
		r.log.Info("using the host's own policy rule; it stays at removal",
			zap.Stringer("family", f), zap.String("rule", ruleString(*r.wantRule(f))))
	default:
		r.changed("ip rule added", zap.Stringer("family", f), zap.String("rule", ruleString(*r.wantRule(f))))
		r.note("%s ip rule %s", f, ruleString(*r.wantRule(f)))
		if err := h.RuleAdd(r.wantRule(f)); err != nil && !errors.Is(err, unix.EEXIST) {
			return wrapNL(op+": add rule "+ruleString(*r.wantRule(f)), err, "")
		}
	}

	routes, err := h.RouteListFiltered(f.nl(), &netlink.Route{Table: r.c.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return wrapNL(op+": list routes", err, "")
	}
	kept, other = false, false
	for _, rt := range routes {
		switch {
		case int(rt.Protocol) != RouteProtocol:
			other = other || sameRoute(rt, loIdx)
		case sameRoute(rt, loIdx) && !kept:
			kept = true
		default:
			if err := r.delRoute(h, f, rt); err != nil {
				return wrapNL(op+": remove stale route "+rt.String(), err, "")
			}
		}
	}
	switch {
	case kept:
	case other:
		r.log.Info("using the host's own local route; it stays at removal",
			zap.Stringer("family", f), zap.Int("table", r.c.Table))
	default:
		want := r.wantRoute(f, loIdx)
		r.changed("ip route added", zap.Stringer("family", f), zap.Int("table", r.c.Table))
		r.note("%s ip route local %s dev lo table %d", f, zeroNet(f), r.c.Table)
		if err := h.RouteAdd(want); err != nil {
			hint := ""
			if errors.Is(err, unix.EEXIST) {
				hint = fmt.Sprintf("routing table %d already has a default route that is not a local one: the table is not free, pick another", r.c.Table)
			}
			return wrapNL(fmt.Sprintf("%s: add route local %s dev lo table %d", op, zeroNet(f), r.c.Table), err, hint)
		}
	}
	return nil
}

// removeRouting deletes the rules and routes of ours (RouteProtocol) in
// c.Table of family f; others stay.
func (r *Rules) removeRouting(h router, f family) error {
	op := "remove " + f.String() + ": policy routing"
	var errs []error
	rs, err := r.listRules(h, f)
	if err != nil {
		return wrapNL(op+": list rules", err, "")
	}
	for _, rule := range rs {
		if rule.Protocol == RouteProtocol {
			if err := r.delRule(h, rule); err != nil {
				errs = append(errs, wrapNL(op+": remove rule "+ruleString(rule), err, ""))
			}
		}
	}
	routes, err := h.RouteListFiltered(f.nl(), &netlink.Route{Table: r.c.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return errors.Join(append(errs, wrapNL(op+": list routes", err, ""))...)
	}
	for _, rt := range routes {
		if int(rt.Protocol) == RouteProtocol {
			if err := r.delRoute(h, f, rt); err != nil {
				errs = append(errs, wrapNL(op+": remove route "+rt.String(), err, ""))
			}
		}
	}
	return errors.Join(errs...)
}

// listRules returns family f's rules that look up c.Table.
func (r *Rules) listRules(h router, f family) ([]netlink.Rule, error) {
	rs, err := h.RuleListFiltered(f.nl(), &netlink.Rule{Table: r.c.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(rs, func(rule netlink.Rule) bool { return rule.Table != r.c.Table }), nil
}

// delRule deletes exactly rule (by priority, table, mark and protocol);
// one already gone is fine.
func (r *Rules) delRule(h router, rule netlink.Rule) error {
	del := netlink.NewRule()
	del.Family, del.Priority, del.Table = rule.Family, rule.Priority, rule.Table
	del.Mark, del.Mask, del.Protocol = rule.Mark, rule.Mask, rule.Protocol
	r.changed("ip rule removed", zap.String("rule", ruleString(rule)))
	err := h.RuleDel(del)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// delRoute deletes rt; one already gone is fine.
func (r *Rules) delRoute(h router, f family, rt netlink.Route) error {
	if rt.Dst == nil {
		rt.Dst = zeroNet(f) // netlink wants a destination to delete by
	}
	r.changed("ip route removed", zap.String("route", rt.String()))
	err := h.RouteDel(&rt)
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// ruleString prints a rule the way `ip rule` does, for messages.
func ruleString(rule netlink.Rule) string {
	s := fmt.Sprintf("fwmark 0x%x", rule.Mark)
	if rule.Mask != nil && *rule.Mask != 0xffffffff {
		s += fmt.Sprintf("/0x%x", *rule.Mask)
	}
	s += fmt.Sprintf(" lookup %d", rule.Table)
	if rule.Protocol != 0 {
		s += fmt.Sprintf(" proto %d", rule.Protocol)
	}
	if rule.Priority > 0 {
		s = fmt.Sprintf("%d: %s", rule.Priority, s)
	}
	return s
}

// wrapNL classifies a netlink error: a missing capability, a family the
// kernel lacks; hint says what to do when it is neither.
func wrapNL(op string, err error, hint string) error {
	if err == nil {
		return nil
	}
	var kind error
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		kind, hint = rules.ErrNotPermitted, rules.HintNotPermitted
	case errors.Is(err, unix.EAFNOSUPPORT):
		kind, hint = rules.ErrUnsupported, "this kernel or namespace lacks the address family (IPv6 disabled?)"
	}
	return rules.Wrap(backend, op, kind, hint, err)
}

// wrap classifies an error of the iptables binary once, at this package's
// boundary: what every backend shares (capability, missing binary), a
// missing table, and, when the kernel refused a rule's target or match
// (iptables says "No chain/target/match", "Couldn't load" or "Extension …
// not supported"), need: the modules the rule needs.
func wrap(op string, err error, need string) error {
	if err == nil {
		return nil
	}
	if e, ok := errors.AsType[*rules.Error](err); ok {
		return e
	}
	var kind error
	var hint string
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Table does not exist"):
		kind, hint = rules.ErrUnsupported, "the kernel lacks the nat or mangle table for this family (iptable_nat, ip6table_nat, iptable_mangle, ip6table_mangle)"
	case need != "" && (strings.Contains(msg, "No chain/target/match") || strings.Contains(msg, "Couldn't load") ||
		strings.Contains(msg, "Extension") && strings.Contains(msg, "not supported")):
		kind, hint = rules.ErrUnsupported, need
	default:
		kind, hint = xtables.Classify(err)
	}
	return rules.Wrap(backend, op, kind, hint, err)
}
