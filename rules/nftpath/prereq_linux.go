package nftpath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/xtables"
)

// The host's prerequisites, with the exact fix for each. Errors end
// Setup (and make Probe fail); warnings only degrade.
const (
	hintForward4 = "IPv4 forwarding is off (net.ipv4.ip_forward=0), and the kernel path forwards the data connections: " +
		"sysctl -w net.ipv4.ip_forward=1 (and a file in /etc/sysctl.d/ to keep it); the host then routes between all its " +
		"interfaces, so keep a FORWARD policy that drops what it should not pass; or use --data-path splice"
	hintEvents = "conntrack events are off (net.netfilter.nf_conntrack_events=0), and they tell ftpalg that a mapped " +
		"connection arrived: sysctl -w net.netfilter.nf_conntrack_events=1; or use --data-path splice"
	warnForward6 = "IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): IPv6 data connections are spliced by ftpalg. " +
		"To forward them in the kernel: sysctl -w net.ipv6.conf.all.forwarding=1 — and then accept_ra=2 " +
		"(sysctl -w net.ipv6.conf.IFACE.accept_ra=2) on each interface that takes its address or default route from " +
		"router advertisements: with forwarding on, accept_ra=1 ignores them"
	warnAcct = "conntrack accounting is off (net.netfilter.nf_conntrack_acct=0): the byte counts of kernel-forwarded " +
		"transfers will be 0. Fix: sysctl -w net.netfilter.nf_conntrack_acct=1 (it counts connections that start afterwards)"
)

// hostState is what Setup learns of the host.
type hostState struct {
	ipv6     error // why IPv6 mappings are refused; nil: they are forwarded
	acct     bool  // conntrack accounting is on
	blockers []blocker
	// unchecked names forward chains that could not be read (an iptables
	// binary missing), with why.
	unchecked []string
}

// blocker is a forward chain of someone else's that would drop the
// forwarded data connections, and the rule that would let them through.
type blocker struct {
	where, fix string
	ipv6       bool // only IPv6 connections pass it
}

func (b blocker) String() string { return b.where + ": " + b.fix }

// sysctl reads a sysctl of the calling thread's network namespace
// ("net/ipv4/ip_forward").
func sysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b)), err
}

// inspect checks the host's prerequisites in the calling thread's network
// namespace: IPv4 forwarding and conntrack events (errors), IPv6
// forwarding and conntrack accounting (hostState), and forward chains,
// in nftables tables and iptables, that would drop the forwarded data.
func inspect(ctx context.Context, opts rules.Options) (hostState, error) {
	var hs hostState
	if v, err := sysctl("net/ipv4/ip_forward"); err != nil || v != "1" {
		return hs, &rules.Error{Backend: Name, Op: "setup: IPv4 forwarding", Kind: rules.ErrUnsupported, Hint: hintForward4, Err: err}
	}
	if v, err := sysctl("net/netfilter/nf_conntrack_events"); err == nil && v == "0" {
		return hs, &rules.Error{Backend: Name, Op: "setup: conntrack events", Kind: rules.ErrUnsupported, Hint: hintEvents}
	}
	v, err := sysctl("net/netfilter/nf_conntrack_acct")
	hs.acct = err == nil && v == "1"
	switch v, err := sysctl("net/ipv6/conf/all/forwarding"); {
	case err != nil:
		hs.ipv6 = errors.New("this host has no IPv6 (net.ipv6.conf.all.forwarding unreadable): IPv6 data connections are spliced")
	case v != "1":
		hs.ipv6 = errors.New(warnForward6)
	}
	bs, unchecked, err := forwardBlockers(ctx, opts)
	if err != nil {
		return hs, err
	}
	hs.unchecked = unchecked
	for _, b := range bs {
		if !b.ipv6 || hs.ipv6 == nil {
			hs.blockers = append(hs.blockers, b)
		}
	}
	return hs, nil
}

// checkHost is inspect for Setup: what only degrades, and the chains
// that would drop the data, are logged at Warn with their fix.
func checkHost(ctx context.Context, opts rules.Options, log *zap.Logger) (hostState, error) {
	hs, err := inspect(ctx, opts)
	if err != nil {
		return hs, err
	}
	if !hs.acct {
		log.Warn(MsgNoAccounting, zap.String("fix", "sysctl -w net.netfilter.nf_conntrack_acct=1"), zap.String("why", warnAcct))
	}
	if hs.ipv6 != nil {
		log.Warn(MsgNoIPv6, zap.String("why", hs.ipv6.Error()))
	}
	for _, b := range hs.blockers {
		log.Warn(MsgForwardDropped, zap.String("chain", b.where), zap.String("fix", b.fix))
	}
	for _, u := range hs.unchecked {
		log.Warn(MsgForwardUnchecked, zap.String("chain", u))
	}
	return hs, nil
}

// The messages Setup logs at Warn, for operators' alerting and tests.
const (
	MsgNoAccounting   = "conntrack accounting is off: kernel-forwarded transfers will count 0 bytes"
	MsgNoIPv6         = "IPv6 data connections are not forwarded in the kernel"
	MsgForwardDropped = "a forward chain would drop kernel-forwarded data connections: add the rule given as fix"
	// MsgForwardUnchecked: a forward chain could not be read (its iptables
	// binary is missing); if it drops, so do the forwarded connections.
	MsgForwardUnchecked = "a forward chain could not be checked for drops of kernel-forwarded data connections"
)

// forwardBlockers finds the forward chains, other than ours, that would
// drop a forwarded data connection: a filter chain on the forward hook
// whose policy is drop, or that ends in an unconditional drop or reject,
// without a rule before that admits it — an accept of `ct status dnat`
// (which every mapped connection has, both ways and in every state), or
// the jump to the pinhole backends' FTPALG-FORWARD chain (which admits
// each mapped connection's first packet: ESTABLISHED must then be
// accepted too, as for every pinhole). An accept in our own table would
// not help: a drop in any table on the hook drops.
//
// nftables tables are read over netlink. The iptables-nft tables among
// them (ip/ip6 filter, chain FORWARD) and the legacy iptables tables,
// when loaded, are read with `iptables -S FORWARD`, once; without the
// binary an iptables-nft chain is read as nftables (policy and native
// rules only) and a legacy one is reported unchecked.
func forwardBlockers(ctx context.Context, opts rules.Options) (out []blocker, unchecked []string, err error) {
	c, err := nftables.New()
	if err != nil {
		return nil, nil, kerr("setup: read the forward chains", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, nil, kerr("setup: read the forward chains", err)
	}
	ours := TableName + opts.Suffix()
	fwdChain := xtables.ChainForward + opts.Suffix()
	iptNFT := map[xtables.Family]bool{}
	native := func(ch *nftables.Chain, fam string) error {
		t := ch.Table
		rs, err := c.GetRules(t, ch)
		if err != nil {
			return kerr("setup: read the rules of "+fam+" "+t.Name+" "+ch.Name, err)
		}
		drop := ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
		if blocks(rs, drop, fwdChain) {
			why := "policy drop"
			if !drop {
				why = "ends in a drop"
			}
			out = append(out, blocker{
				where: fmt.Sprintf("nft table %s %s chain %s (%s)", fam, t.Name, ch.Name, why),
				fix:   fmt.Sprintf("nft insert rule %s %s %s ct status dnat accept", fam, t.Name, ch.Name),
				ipv6:  t.Family == nftables.TableFamilyIPv6,
			})
		}
		return nil
	}
	iptChains := map[xtables.Family]*nftables.Chain{}
	for _, ch := range chains {
		t := ch.Table
		if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward || ch.Type != nftables.ChainTypeFilter ||
			t.Family == nftables.TableFamilyINet && t.Name == ours {
			continue
		}
		fam, ok := familyName[t.Family]
		if !ok {
			continue // netdev, bridge: not the IP forward path
		}
		if (t.Family == nftables.TableFamilyIPv4 || t.Family == nftables.TableFamilyIPv6) && t.Name == "filter" && ch.Name == "FORWARD" {
			f := xtables.IPv4
			if t.Family == nftables.TableFamilyIPv6 {
				f = xtables.IPv6
			}
			iptNFT[f], iptChains[f] = true, ch
			continue // iptables-nft's: read below as iptables prints it
		}
		if err := native(ch, fam); err != nil {
			return nil, nil, err
		}
	}
	for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
		for _, variant := range []string{"nft", "legacy"} {
			if variant == "nft" && !iptNFT[f] || variant == "legacy" && !xtables.LegacyLoaded(f, "filter") {
				continue
			}
			b, err := iptablesBlocker(ctx, f, variant, fwdChain)
			switch {
			case errors.Is(err, exec.ErrNotFound) && variant == "nft":
				if err := native(iptChains[f], familyName[iptChains[f].Table.Family]); err != nil {
					return nil, nil, err
				}
			case errors.Is(err, exec.ErrNotFound):
				unchecked = append(unchecked, fmt.Sprintf("%s-legacy FORWARD (%v)", map[xtables.Family]string{xtables.IPv4: "iptables", xtables.IPv6: "ip6tables"}[f], err))
			case err != nil:
				return nil, nil, err
			case b != nil:
				out = append(out, *b)
			}
		}
	}
	return out, unchecked, nil
}

var familyName = map[nftables.TableFamily]string{
	nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
}

// blocks reports whether a chain with these rules (and a drop policy when
// drop) drops a mapped connection: it reaches a drop before an admitting
// rule.
func blocks(rs []*nftables.Rule, drop bool, fwdChain string) bool {
	for _, r := range rs {
		if admits(r, fwdChain) {
			return false
		}
		if dropsAll(r) {
			return true
		}
	}
	return drop
}

// admits reports whether r accepts DNATed connections (`ct status dnat
// accept`, whatever else it matches besides the status) or jumps to the
// pinhole backends' forward chain.
func admits(r *nftables.Rule, fwdChain string) bool {
	status, dnat := false, false
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Ct:
			status = status || e.Key == expr.CtKeySTATUS
		case *expr.Bitwise:
			dnat = dnat || len(e.Mask) == 4 && binary.NativeEndian.Uint32(e.Mask)&ipsDstNAT != 0
		case *expr.Verdict:
			switch {
			case (e.Kind == expr.VerdictJump || e.Kind == expr.VerdictGoto) && e.Chain == fwdChain:
				return true
			case e.Kind == expr.VerdictAccept:
				return status && dnat
			}
		}
	}
	return false
}

// dropsAll reports whether r drops or rejects every packet: nothing but
// counters and logging before the verdict.
func dropsAll(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter, *expr.Log:
		case *expr.Reject:
			return true
		case *expr.Verdict:
			return e.Kind == expr.VerdictDrop
		default:
			return false
		}
	}
	return false
}

// iptablesBlocker reads the FORWARD chain of one iptables family and
// variant and returns it as a blocker if it drops a mapped connection.
func iptablesBlocker(ctx context.Context, f xtables.Family, variant, fwdChain string) (*blocker, error) {
	x, err := xtables.New(ctx, f, variant)
	if err != nil {
		kind, hint := xtables.Classify(err)
		return nil, rules.Wrap(Name, "setup: read the iptables FORWARD chain", kind, hint, err)
	}
	policy, err := x.Policy("FORWARD")
	if err != nil {
		kind, hint := xtables.Classify(err)
		return nil, rules.Wrap(Name, "setup: read "+x.Cmd+" FORWARD", kind, hint, err)
	}
	specs, err := x.List("FORWARD")
	if err != nil {
		kind, hint := xtables.Classify(err)
		return nil, rules.Wrap(Name, "setup: read "+x.Cmd+" FORWARD", kind, hint, err)
	}
	blocked := policy == "DROP"
	why := "policy DROP"
	for _, s := range specs {
		target := xtables.Target(s)
		if target == fwdChain || target == "ACCEPT" && dnatState(s) {
			blocked = false
			break
		}
		if len(s) >= 2 && s[0] == "-j" && (s[1] == "DROP" || s[1] == "REJECT") {
			blocked, why = true, "ends in -j "+s[1]
			break
		}
	}
	if !blocked {
		return nil, nil
	}
	return &blocker{
		where: fmt.Sprintf("%s FORWARD (%s)", x.Cmd, why),
		fix: fmt.Sprintf("%s -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT (or use a pinhole backend, --firewall ipset, "+
			"whose FORWARD hook admits each mapped connection's first packet, with ESTABLISHED,RELATED accepted in FORWARD)", x.Cmd),
		ipv6: f == xtables.IPv6,
	}, nil
}

// dnatState reports whether a rule spec matches conntrack state DNAT.
func dnatState(spec []string) bool {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "--ctstate" && slices.Contains(strings.Split(spec[i+1], ","), "DNAT") {
			return true
		}
	}
	return false
}

// Probe checks that the kernel data path works in the calling thread's
// network namespace, for --data-path auto: the host's prerequisites
// (IPv4 forwarding, conntrack events) hold, no forward chain would drop
// the forwarded data, the kernel takes our objects (a throwaway table
// with a mapping, created and deleted) and conntrack's events can be
// joined. It leaves nothing behind. An error says what to change.
func Probe(ctx context.Context, opts rules.Options) error {
	if err := opts.Check(); err != nil {
		return rules.Wrap(Name, "probe", rules.ErrInvalid, "", err)
	}
	hs, err := inspect(ctx, opts)
	if err != nil {
		return err
	}
	if len(hs.blockers) > 0 {
		var where, fixes []string
		for _, b := range hs.blockers {
			where = append(where, b.where)
			fixes = append(fixes, b.fix)
		}
		return &rules.Error{Backend: Name, Op: "probe: forward chains", Kind: rules.ErrUnsupported,
			Hint: "the forwarded data connections would be dropped by " + strings.Join(where, ", ") + "; fix: " + strings.Join(fixes, "; ")}
	}
	// per process: two instances may probe at once
	k, err := dialKernel(0, TableName+"-probe-"+strconv.Itoa(os.Getpid()))
	if err != nil {
		return kerr("probe: open netlink socket", err)
	}
	defer k.close()
	now := time.Now()
	m := rules.Mapping{Peer: netip.MustParseAddr("192.0.2.2"), Announced: netip.MustParseAddrPort("192.0.2.1:9"),
		Target: netip.MustParseAddrPort("198.51.100.1:9"), Source: netip.MustParseAddr("198.51.100.2"), Session: 1}
	err = k.create("probe", []held{{m: m, expires: now.Add(time.Second)}}, now)
	if derr := k.destroy(); err == nil && derr != nil {
		err = derr
	}
	if err != nil {
		return kerr("probe: create table", err)
	}
	ct, err := dialTracker(0)
	if err != nil {
		return kerr("probe: open conntrack socket", err)
	}
	defer ct.close()
	src, err := ct.events()
	if err != nil {
		return kerr("probe: listen to conntrack events", err)
	}
	src.close()
	return nil
}
