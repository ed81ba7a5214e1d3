package intercept

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// Our chains, with "-" + Config.Instance appended when set. The longest
// with the longest instance name (12 characters) is 28 characters, the
// most iptables allows.
const (
	// ChainRedirect (nat table) holds one REDIRECT rule per selector.
	ChainRedirect = "FTPALG-REDIRECT"
	// ChainTProxy (mangle table) holds one TPROXY rule per selector.
	ChainTProxy = "FTPALG-TPROXY"
	// ChainDivert (mangle table) marks packets of transparent sockets.
	ChainDivert = "FTPALG-DIVERT"
)

// Defaults of the Config fields left zero.
const (
	DefaultPort  = 21
	DefaultMark  = 0x1
	DefaultTable = 100
)

// RouteProtocol is the routing protocol number ftpalg's ip rules and routes
// carry (`ip rule` and `ip route` print "proto 70"). It is how ftpalg tells
// its own policy routing from an operator's identical rule or route, which
// it uses but never removes. 70 is not assigned in the kernel's or
// iproute2's lists of protocols (rtnetlink.h, rt_protos) nor used by the
// common routing daemons.
const RouteProtocol = 70

// Config says what to intercept and where to.
type Config struct {
	// Mode is how control connections are intercepted:
	// nat.ModeRedirect (nat PREROUTING REDIRECT to ListenPort on the
	// incoming interface's address; ftpalg reads the original destination
	// from conntrack) or nat.ModeTProxy (mangle PREROUTING TPROXY to a
	// transparent listener on OnIP:ListenPort, whose accepted sockets'
	// local address is the original destination). It may be zero only
	// when Sources and Interfaces are both empty.
	Mode nat.Mode
	// Sources are the client networks whose connections to Port are
	// intercepted, IPv4 and/or IPv6. The families present decide which
	// families get rules (and policy routing); when Sources is empty, both
	// do. When Sources and Interfaces are both empty no interception rules
	// are installed at all (the operator has their own) and only the
	// divert, if asked for, is.
	Sources []netip.Prefix
	// Interfaces are incoming interfaces whose connections to Port are
	// intercepted (iptables -i; a trailing + matches a prefix, "lan+").
	// A connection is intercepted when it comes from one of Sources OR in
	// through one of Interfaces.
	Interfaces []string
	// Port is the FTP control port to intercept; 0 means DefaultPort.
	Port uint16
	// ListenPort is where ftpalg listens for intercepted connections
	// (REDIRECT --to-ports, TPROXY --on-port). Required with rules.
	ListenPort uint16
	// OnIP is, per family, the address of ftpalg's TPROXY listener (TPROXY
	// --on-ip): at most one IPv4 and one IPv6 address. A family left out
	// gets loopback (127.0.0.1, ::1), which keeps the listener unreachable
	// from outside; an unspecified address (0.0.0.0, ::) makes TPROXY look
	// on the incoming interface's primary address, which a wildcard
	// listener covers. Ignored with nat.ModeRedirect. See Listen.
	OnIP []netip.Addr
	// Mark and Mask are the fwmark bits TPROXY and the divert set and the
	// ip rule matches (--tproxy-mark Mark/Mask, --set-xmark Mark/Mask,
	// `ip rule add fwmark Mark/Mask`). Mark 0 means DefaultMark; Mask 0
	// means Mark (exactly the mark's bits, so other users of the mark
	// keep theirs). Mark must lie within Mask.
	Mark, Mask uint32
	// Table is the policy routing table holding the `local` default
	// route; 0 means DefaultTable. It must not be one of the kernel's
	// (253 default, 254 main, 255 local), and each ftpalg instance needs
	// its own (see the package documentation).
	Table int
	// Divert installs the transparent-socket divert: every TCP packet
	// that belongs to a transparent socket of this host is marked and so
	// delivered locally. It is what lets a transparent listener bound to a
	// server's address catch the data connection a client opens to that
	// server, and the replies reach a socket that dialed with the client's
	// address as source (nat.DialTransparent). nat.ModeTProxy does not
	// need it for control connections.
	Divert bool
	// Instance is appended, after a "-", to every chain name, like
	// rules.Options.Instance: up to 12 characters of a-z, 0-9 and _.
	Instance string
	// Iptables picks the binaries: "" for iptables/ip6tables on PATH,
	// "nft" or "legacy" for that variant. It must be the variant of the
	// host's own ruleset.
	Iptables string
	// Logger receives lifecycle lines; nil logs nothing.
	Logger *zap.Logger
}

// normalized returns c with defaults filled in, Sources masked and
// duplicates dropped, or an error for what no rule can say.
func (c Config) normalized() (Config, error) {
	if err := (rules.Options{Instance: c.Instance, Iptables: c.Iptables}).Check(); err != nil {
		return c, err
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.Mask == 0 {
		c.Mask = c.Mark
	}
	if c.Mark&^c.Mask != 0 {
		return c, fmt.Errorf("%w: mark 0x%x has bits outside mask 0x%x", rules.ErrInvalid, c.Mark, c.Mask)
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if err := checkTable(c.Table); err != nil {
		return c, err
	}
	var srcs []netip.Prefix
	for _, p := range c.Sources {
		if !p.IsValid() {
			return c, fmt.Errorf("%w: source %s: not a prefix", rules.ErrInvalid, p)
		}
		if p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return c, fmt.Errorf("%w: source %s: write IPv4 networks as IPv4, without zones", rules.ErrInvalid, p)
		}
		if p = p.Masked(); !slices.Contains(srcs, p) {
			srcs = append(srcs, p)
		}
	}
	c.Sources = srcs
	var ifs []string
	for _, name := range c.Interfaces {
		if err := checkInterface(name); err != nil {
			return c, err
		}
		if !slices.Contains(ifs, name) {
			ifs = append(ifs, name)
		}
	}
	c.Interfaces = ifs
	var on4, on6 netip.Addr
	for _, a := range c.OnIP {
		switch {
		case !a.IsValid() || a.Zone() != "" || a.Is4In6():
			return c, fmt.Errorf("%w: on-ip %s: want an IPv4 or IPv6 address without zone", rules.ErrInvalid, a)
		case a.Is4() && on4.IsValid() && on4 != a, a.Is6() && on6.IsValid() && on6 != a:
			return c, fmt.Errorf("%w: on-ip %s: one address per family", rules.ErrInvalid, a)
		case a.Is4():
			on4 = a
		default:
			on6 = a
		}
	}
	if !on4.IsValid() {
		on4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if !on6.IsValid() {
		on6 = netip.IPv6Loopback()
	}
	c.OnIP = []netip.Addr{on4, on6}
	if c.hasRules() {
		if c.Mode != nat.ModeRedirect && c.Mode != nat.ModeTProxy {
			return c, fmt.Errorf("%w: interception mode %s: want redirect or tproxy", rules.ErrInvalid, c.Mode)
		}
		if c.ListenPort == 0 {
			return c, fmt.Errorf("%w: no listen port (REDIRECT --to-ports / TPROXY --on-port)", rules.ErrInvalid)
		}
	} else if c.Mode != 0 && c.Mode != nat.ModeRedirect && c.Mode != nat.ModeTProxy {
		return c, fmt.Errorf("%w: interception mode %s: want redirect or tproxy", rules.ErrInvalid, c.Mode)
	}
	return c, nil
}

// checkTable refuses the tables the kernel owns and what netlink cannot
// carry.
func checkTable(t int) error {
	switch {
	case t < 1 || int64(t) > math.MaxUint32:
		return fmt.Errorf("%w: routing table %d: want 1 to 4294967295", rules.ErrInvalid, t)
	case t == 253 || t == 254 || t == 255:
		return fmt.Errorf("%w: routing table %d is the kernel's (default, main, local): pick a free one", rules.ErrInvalid, t)
	}
	return nil
}

// checkInterface accepts what iptables -i accepts and nothing that could
// be read as another option: 1 to 15 bytes, no whitespace, '/', quotes or
// a leading '-' or '!', '+' only at the end.
func checkInterface(name string) error {
	bad := len(name) == 0 || len(name) > 15 || name == "." || name == ".." ||
		name[0] == '-' || name[0] == '!' ||
		strings.ContainsAny(name, " \t\n\r\"'/\\:") ||
		strings.Contains(strings.TrimSuffix(name, "+"), "+")
	if bad {
		return fmt.Errorf("%w: interface name %q", rules.ErrInvalid, name)
	}
	return nil
}

// Check reports whether Install would accept c, without touching the
// kernel.
func (c Config) Check() error {
	_, err := c.normalized()
	return err
}

// hasRules reports whether c intercepts anything itself.
func (c Config) hasRules() bool { return len(c.Sources) > 0 || len(c.Interfaces) > 0 }

// routing reports whether c needs the policy route: TPROXY's marked
// packets and the divert's both reach the local stack only through it.
func (c Config) routing() bool { return c.Divert || c.Mode == nat.ModeTProxy && c.hasRules() }

// families returns the address families c installs anything in, IPv4
// first: those of Sources, or both when Sources is empty; and whether the
// caller asked for IPv6 explicitly (an IPv6 source), which makes an IPv6
// failure fatal rather than a warning.
func (c Config) families() (fams []family, explicit6 bool) {
	if !c.hasRules() && !c.Divert {
		return nil, false
	}
	if len(c.Sources) == 0 {
		return []family{ipv4, ipv6}, false
	}
	has4 := slices.ContainsFunc(c.Sources, func(p netip.Prefix) bool { return p.Addr().Is4() })
	has6 := slices.ContainsFunc(c.Sources, func(p netip.Prefix) bool { return p.Addr().Is6() })
	if has4 {
		fams = append(fams, ipv4)
	}
	if has6 {
		fams = append(fams, ipv6)
	}
	return fams, has6
}

// Listen returns where ftpalg must listen for the rules of c to reach it,
// one address per family the rules cover (none without rules): with
// nat.ModeRedirect the wildcard address (REDIRECT rewrites to the incoming
// interface's address, so a wildcard listener catches every interface;
// nat.Destination refuses clients that connected to it directly), with
// nat.ModeTProxy the OnIP address, loopback by default, with a transparent
// listener (nat.ListenTransparent).
func (c Config) Listen() ([]netip.AddrPort, error) {
	n, err := c.normalized()
	if err != nil || !n.hasRules() {
		return nil, err
	}
	fams, _ := n.families()
	var out []netip.AddrPort
	for _, f := range fams {
		a := f.unspecified()
		if n.Mode == nat.ModeTProxy {
			a = n.onIP(f)
		}
		out = append(out, netip.AddrPortFrom(a, n.ListenPort))
	}
	return out, nil
}

// family is an address family of the rules.
type family uint8

const (
	ipv4 family = 4
	ipv6 family = 6
)

func (f family) String() string {
	if f == ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

func (f family) has(a netip.Addr) bool { return a.Is4() == (f == ipv4) }

func (f family) unspecified() netip.Addr {
	if f == ipv6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// onIP is the TPROXY --on-ip address of family f (normalized c only).
func (c Config) onIP(f family) netip.Addr {
	for _, a := range c.OnIP {
		if f.has(a) {
			return a
		}
	}
	return f.unspecified()
}

// suffix is what chain names end in.
func (c Config) suffix() string { return rules.Options{Instance: c.Instance}.Suffix() }

// The two tables we use, and the built-in chain our hooks live in.
const (
	tableNat    = "nat"
	tableMangle = "mangle"
	prerouting  = "PREROUTING"
)

// tableWant is what one table of one family should hold of ours.
type tableWant struct {
	table string
	// ours are all our chain names in this table, wanted or not: a jump
	// to any of them from PREROUTING is one of our hooks.
	ours []string
	// chains are the chains to have, in order, with their exact rules.
	chains []chainWant
	// hooks are our rules in PREROUTING, in order: nothing else of ours
	// may jump from there.
	hooks [][]string
}

type chainWant struct {
	name  string
	rules [][]string
}

// want returns, for family f of a normalized c, what the nat and the
// mangle table should hold. Every spec is written the way `iptables -S`
// prints it, so that what is there compares equal to what is wanted.
func (c Config) want(f family) []tableWant {
	sfx := c.suffix()
	redirect, tproxy, divert := ChainRedirect+sfx, ChainTProxy+sfx, ChainDivert+sfx
	natT := tableWant{table: tableNat, ours: []string{redirect}}
	mangle := tableWant{table: tableMangle, ours: []string{tproxy, divert}}
	mark := fmt.Sprintf("0x%x/0x%x", c.Mark, c.Mask)
	lp := strconv.Itoa(int(c.ListenPort))
	if c.Divert {
		// First in PREROUTING, before the TPROXY hook, as in the kernel's
		// tproxy.rst: a packet of an existing transparent socket is marked
		// whatever its port.
		mangle.chains = append(mangle.chains, chainWant{divert, [][]string{
			{"-p", "tcp", "-m", "socket", "--transparent", "-j", "MARK", "--set-xmark", mark},
		}})
		mangle.hooks = append(mangle.hooks, []string{"-p", "tcp", "-j", divert})
	}
	if sel := c.selectors(f); len(sel) > 0 {
		hook := func(chain string) []string {
			return []string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(c.Port)), "-j", chain}
		}
		var body [][]string
		for _, s := range sel {
			r := append(slices.Clone(s), "-p", "tcp")
			if c.Mode == nat.ModeRedirect {
				r = append(r, "-j", "REDIRECT", "--to-ports", lp)
			} else {
				r = append(r, "-j", "TPROXY", "--on-port", lp, "--on-ip", c.onIP(f).String(), "--tproxy-mark", mark)
			}
			body = append(body, r)
		}
		if c.Mode == nat.ModeRedirect {
			natT.chains = append(natT.chains, chainWant{redirect, body})
			natT.hooks = append(natT.hooks, hook(redirect))
		} else {
			mangle.chains = append(mangle.chains, chainWant{tproxy, body})
			mangle.hooks = append(mangle.hooks, hook(tproxy))
		}
	}
	return []tableWant{natT, mangle}
}

// selectors returns the match of each rule in our REDIRECT/TPROXY chain
// for family f: "-s PREFIX" per source of the family, "-i NAME" per
// interface; a /0 source is the empty match, and then the only one.
func (c Config) selectors(f family) [][]string {
	var out [][]string
	for _, p := range c.Sources {
		if !f.has(p.Addr()) {
			continue
		}
		if p.Bits() == 0 {
			return [][]string{{}}
		}
		out = append(out, []string{"-s", p.String()})
	}
	for _, name := range c.Interfaces {
		out = append(out, []string{"-i", name})
	}
	return out
}

// sameSpecs compares rule specs as iptables prints them, reading addresses
// after -s and -d as prefixes so that spellings of one address compare
// equal.
func sameSpecs(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool {
		return slices.EqualFunc(x, y, func(p, q string) bool {
			if p == q {
				return true
			}
			pp, err1 := netip.ParsePrefix(p)
			qp, err2 := netip.ParsePrefix(q)
			return err1 == nil && err2 == nil && pp.Masked() == qp.Masked()
		})
	})
}
