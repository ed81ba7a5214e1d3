package nftpath

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
)

// The tests in this file run as root in throwaway network namespaces
// (deleted at the end, failed or not: the table goes with them) and
// check against the kernel: `nft -j list table`, `nft list table`, real
// connections, conntrack's counters.

func require(t testing.TB) { nstest.Require(t, "nft", "iptables", "ip6tables") }

// newNS returns a namespace ready for Setup: forwarding on in both
// families, conntrack accounting on.
func newNS(t testing.TB) *nstest.NS {
	t.Helper()
	require(t)
	n := nstest.New(t)
	forwarding(t, n)
	return n
}

func forwarding(t testing.TB, n *nstest.NS) {
	n.Sysctl(t, "net.ipv4.ip_forward", "1")
	n.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	n.Sysctl(t, "net.netfilter.nf_conntrack_acct", "1")
}

// setUp builds a data path with opts and runs Setup inside n; Teardown
// runs when t ends.
func setUp(t testing.TB, n *nstest.NS, opts rules.Options) *DataPath {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	d := New(opts)
	n.Do(t, func() {
		if err := d.Setup(context.Background()); err != nil {
			t.Fatalf("Setup: %v", err)
		}
	})
	t.Cleanup(func() {
		n.Do(t, func() {
			if err := d.Teardown(context.Background()); err != nil {
				t.Errorf("Teardown: %v", err)
			}
		})
	})
	return d
}

func doIn(t testing.TB, n *nstest.NS, what string, f func(context.Context) error) {
	t.Helper()
	var err error
	n.Do(t, func() { err = f(context.Background()) })
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func mapIn(t testing.TB, n *nstest.NS, d *DataPath, m rules.Mapping) rules.Forward {
	t.Helper()
	var (
		f   rules.Forward
		err error
	)
	n.Do(t, func() { f, err = d.Map(context.Background(), m) })
	if err != nil {
		t.Fatalf("Map %s: %v", m, err)
	}
	return f
}

// nftObject is one object of `nft -j list table`.
type nftObject struct {
	Table *struct {
		Family, Name string
	}
	Chain *struct {
		Name, Type, Hook, Policy string
		Prio                     int
	}
	Set *nftSet
	Map *nftSet
}

type nftSet struct {
	Name    string
	Type    []string
	Map     string
	Flags   []string
	Timeout int
	Size    int
	Elem    []json.RawMessage
}

// listTable reads `nft -j list table inet NAME` in n: the objects, one
// line each, and the elements, one line each ("dnat4 198.51.100.10 .
// 198.51.100.1 . 50000 : 192.0.2.10 . 40000 timeout 60 comment ftpalg
// session 7"), both sorted; nil, nil when there is no such table.
func listTable(t testing.TB, n *nstest.NS, name string) (objects, elements []string) {
	t.Helper()
	out, err := n.Try("nft", "-j", "list", "table", "inet", name)
	if err != nil {
		if strings.Contains(out, "No such file or directory") {
			return nil, nil
		}
		t.Fatal(err)
	}
	var doc struct{ Nftables []nftObject }
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j: %v\n%s", err, out)
	}
	for _, o := range doc.Nftables {
		switch {
		case o.Table != nil:
			objects = append(objects, "table "+o.Table.Family+" "+o.Table.Name)
		case o.Chain != nil:
			c := o.Chain
			objects = append(objects, fmt.Sprintf("chain %s type %s hook %s prio %d policy %s", c.Name, c.Type, c.Hook, c.Prio, c.Policy))
		case o.Set != nil, o.Map != nil:
			s, kind := o.Set, "set"
			if s == nil {
				s, kind = o.Map, "map"
			}
			typ := strings.Join(s.Type, " . ")
			if s.Map != "" {
				typ += " : " + s.Map
			}
			objects = append(objects, fmt.Sprintf("%s %s type %s flags %s timeout %d size %d", kind, s.Name, typ, strings.Join(s.Flags, ","), s.Timeout, s.Size))
			for _, raw := range s.Elem {
				elements = append(elements, s.Name+" "+elemString(t, raw))
			}
		}
	}
	slices.Sort(objects)
	slices.Sort(elements)
	return objects, elements
}

// elemString prints one element of nft's JSON: a set's {"elem": {...}},
// or a map's [{"elem": {...}}, value].
func elemString(t testing.TB, raw json.RawMessage) string {
	type elem struct {
		Elem struct {
			Val     json.RawMessage
			Timeout int
			Comment string
		}
	}
	var (
		e     elem
		value json.RawMessage
	)
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) == nil && len(pair) == 2 {
		if err := json.Unmarshal(pair[0], &e); err != nil {
			t.Fatalf("element %s: %v", raw, err)
		}
		value = pair[1]
	} else if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("element %s: %v", raw, err)
	}
	s := concat(t, e.Elem.Val)
	if value != nil {
		s += " : " + concat(t, value)
	}
	return fmt.Sprintf("%s timeout %d comment %s", s, e.Elem.Timeout, e.Elem.Comment)
}

// concat prints {"concat": [a, b, port]} as "a . b . port", and a plain
// value as itself.
func concat(t testing.TB, raw json.RawMessage) string {
	var c struct{ Concat []any }
	if json.Unmarshal(raw, &c) == nil && c.Concat != nil {
		parts := make([]string, len(c.Concat))
		for i, p := range c.Concat {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, " . ")
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("value %s: %v", raw, err)
	}
	return fmt.Sprint(v)
}

// wantObjects are the objects Setup creates, as listTable prints them.
func wantObjects(table string) []string {
	set := func(kind, name, typ, flags string) string {
		return fmt.Sprintf("%s %s type %s flags %s timeout 30 size 65536", kind, name, typ, flags)
	}
	v4, v6 := "ipv4_addr . ipv4_addr . inet_service", "ipv6_addr . ipv6_addr . inet_service"
	w := []string{
		"table inet " + table,
		"chain prerouting type nat hook prerouting prio -101 policy accept",
		"chain postrouting type nat hook postrouting prio 99 policy accept",
		set("set", "armed4", v4, "timeout"), set("set", "armed6", v6, "timeout"),
		set("map", "dnat4", v4+" : ipv4_addr . inet_service", "timeout"), set("map", "dnat6", v6+" : ipv6_addr . inet_service", "timeout"),
		set("map", "snat4", v4+" : ipv4_addr", "timeout"), set("map", "snat6", v6+" : ipv6_addr", "timeout"),
	}
	slices.Sort(w)
	return w
}

// wantRules are our rules as `nft list table` prints them, the run's
// token as TOKEN.
var wantRules = []string{
	`ip saddr . ip daddr . tcp dport @armed4 delete @armed4 { ip saddr . ip daddr . tcp dport } dnat ip to ip saddr . ip daddr . tcp dport map @dnat4 comment "ftpalg ipv4 dnat, run TOKEN"`,
	`ip6 saddr . ip6 daddr . tcp dport @armed6 delete @armed6 { ip6 saddr . ip6 daddr . tcp dport } dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @dnat6 comment "ftpalg ipv6 dnat, run TOKEN"`,
	`ct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4 comment "ftpalg ipv4 snat, run TOKEN"`,
	`ct status dnat snat ip6 to ip6 saddr . ip6 daddr . tcp dport map @snat6 comment "ftpalg ipv6 snat, run TOKEN"`,
}

var tokenRE = regexp.MustCompile(`run [0-9a-f]{8}"`)

// listRules returns the rule lines of `nft list table inet NAME`, in
// order, the token replaced by TOKEN, and the tokens seen.
func listRules(t testing.TB, n *nstest.NS, name string) (lines []string, tokens []string) {
	t.Helper()
	out := n.Run(t, "nft", "list", "table", "inet", name)
	for l := range strings.SplitSeq(out, "\n") {
		l = strings.TrimSpace(l)
		if !strings.Contains(l, "comment \"ftpalg ") {
			continue
		}
		if tok := tokenRE.FindString(l); tok != "" {
			tokens = append(tokens, tok[4:12])
		}
		lines = append(lines, tokenRE.ReplaceAllString(l, `run TOKEN"`))
	}
	return lines, tokens
}

func checkObjects(t *testing.T, n *nstest.NS, table string) (token string) {
	t.Helper()
	objs, elems := listTable(t, n, table)
	if want := wantObjects(table); !slices.Equal(objs, want) {
		t.Errorf("nft -j list table inet %s:\n%s\nwant:\n%s", table, strings.Join(objs, "\n"), strings.Join(want, "\n"))
	}
	if len(elems) != 0 {
		t.Errorf("elements after Setup: %v", elems)
	}
	rs, tokens := listRules(t, n, table)
	if !slices.Equal(rs, wantRules) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(rs, "\n"), strings.Join(wantRules, "\n"))
	}
	for _, tok := range tokens {
		if tok != tokens[0] {
			t.Errorf("rules of two runs: %v", tokens)
		}
	}
	if len(tokens) == 0 {
		return ""
	}
	return tokens[0]
}

// TestSetupObjects: Setup creates exactly our table, chains (hook,
// priority, type), sets and maps (types, flags, timeouts) and rules; a
// second Setup replaces it with the same objects (a new run's token);
// Teardown leaves no table, and so does a Teardown without Setup.
func TestSetupObjects(t *testing.T) {
	n := newNS(t)
	d := setUp(t, n, rules.Options{})
	tok := checkObjects(t, n, TableName)
	doIn(t, n, "Setup again", d.Setup)
	if again := checkObjects(t, n, TableName); again == tok {
		t.Errorf("a second Setup kept the run's token %s", tok)
	}
	doIn(t, n, "Teardown", d.Teardown)
	if objs, _ := listTable(t, n, TableName); objs != nil {
		t.Errorf("after Teardown: %v", objs)
	}
	if out := n.Run(t, "nft", "list", "tables"); strings.TrimSpace(out) != "" {
		t.Errorf("after Teardown nft list tables: %s", out)
	}
	doIn(t, n, "Teardown again", d.Teardown)
	doIn(t, n, "Teardown without Setup", New(rules.Options{}).Teardown)
	doIn(t, n, "Setup after Teardown", d.Setup)
	checkObjects(t, n, TableName)
}

// TestElements: Map puts in exactly the elements of a mapping (IPv4 with
// SNAT, IPv6 without), with the lifetime as timeout and the session as
// comment; Mappings and FlushMappings work from another instance that
// never ran Setup (`ftpalg rules show|flush`); Close removes the
// elements; a mapping with a 1 s lifetime leaves by itself.
func TestElements(t *testing.T) {
	n := newNS(t)
	d := setUp(t, n, rules.Options{})
	m4 := rules.Mapping{Peer: peer, Announced: annc, Target: target, Source: source, Lifetime: 60 * time.Second, Session: 7}
	m6 := rules.Mapping{Peer: peer6, Announced: annc6, Target: target6, Lifetime: 1500 * time.Millisecond, Session: 8}
	f4, f6 := mapIn(t, n, d, m4), mapIn(t, n, d, m6)
	_, elems := listTable(t, n, TableName)
	want := []string{
		"armed4 198.51.100.10 . 198.51.100.1 . 50000 timeout 60 comment ftpalg session 7",
		"armed6 2001:db8:1::10 . 2001:db8:1::1 . 50000 timeout 2 comment ftpalg session 8",
		"dnat4 198.51.100.10 . 198.51.100.1 . 50000 : 192.0.2.10 . 40000 timeout 60 comment ftpalg session 7",
		"dnat6 2001:db8:1::10 . 2001:db8:1::1 . 50000 : 2001:db8:2::10 . 40000 timeout 2 comment ftpalg session 8",
		"snat4 198.51.100.10 . 192.0.2.10 . 40000 : 192.0.2.1 timeout 60 comment ftpalg session 7",
	}
	if !slices.Equal(elems, want) {
		t.Errorf("elements after Map:\n%s\nwant:\n%s", strings.Join(elems, "\n"), strings.Join(want, "\n"))
	}
	cli := New(rules.Options{})
	var ms []rules.Mapping
	doIn(t, n, "Mappings", func(ctx context.Context) (err error) { ms, err = cli.Mappings(ctx); return err })
	if len(ms) != 2 || ms[0].Session != 7 || ms[0].Target != target || ms[0].Source != source ||
		ms[1].Session != 8 || ms[1].Target != target6 || ms[1].Source.IsValid() ||
		ms[0].Lifetime <= 55*time.Second || ms[0].Lifetime > 60*time.Second {
		t.Errorf("Mappings from another instance = %v", ms)
	}
	doIn(t, n, "Close", f4.Close)
	if _, elems := listTable(t, n, TableName); len(elems) != 2 || !strings.HasPrefix(elems[0], "armed6") {
		t.Errorf("after Close of the IPv4 mapping: %v", elems)
	}
	// the 1.5 s mapping (timeout 2 s) expires in the kernel
	deadline := time.Now().Add(4 * time.Second)
	for {
		if _, elems := listTable(t, n, TableName); len(elems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 2 s elements are still there after 4 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	doIn(t, n, "Close expired", f6.Close)
	mapIn(t, n, d, m4)
	doIn(t, n, "FlushMappings from another instance", cli.FlushMappings)
	if _, elems := listTable(t, n, TableName); len(elems) != 0 {
		t.Errorf("after FlushMappings: %v", elems)
	}
	if objs, _ := listTable(t, n, TableName); !slices.Equal(objs, wantObjects(TableName)) {
		t.Errorf("FlushMappings changed the objects: %v", objs)
	}
}

// TestCrashRestart: a run that ends without Teardown (its sockets closed,
// as a killed process's are) leaves the table and its mappings; the next
// run's Setup replaces them by a fresh table, and its Teardown leaves
// none. Another instance's table is left alone throughout.
func TestCrashRestart(t *testing.T) {
	n := newNS(t)
	other := setUp(t, n, rules.Options{Instance: "other"})
	mapIn(t, n, other, rules.Mapping{Peer: peer, Announced: annc, Target: target, Lifetime: time.Minute, Session: 9})
	crashed := New(rules.Options{Logger: zaptest.NewLogger(t)})
	doIn(t, n, "Setup", crashed.Setup)
	mapIn(t, n, crashed, rules.Mapping{Peer: peer, Announced: annc, Target: target, Source: source, Lifetime: time.Minute, Session: 1})
	_, tokens := listRules(t, n, TableName)
	crashed.syncMu.Lock()
	crashed.stop()
	crashed.release() // the process is gone; the kernel keeps its table
	crashed.syncMu.Unlock()
	if _, elems := listTable(t, n, TableName); len(elems) != 3 {
		t.Fatalf("after the crash: %v, want the mapping's 3 elements", elems)
	}
	restarted := setUp(t, n, rules.Options{})
	if tok := checkObjects(t, n, TableName); tok == tokens[0] {
		t.Error("the restart kept the crashed run's rules")
	}
	if _, elems := listTable(t, n, "ftpalg-other"); len(elems) != 2 {
		t.Errorf("the other instance's mapping after the restart: %v", elems)
	}
	doIn(t, n, "Teardown", restarted.Teardown)
	if objs, _ := listTable(t, n, TableName); objs != nil {
		t.Errorf("after Teardown: %v", objs)
	}
	if objs, _ := listTable(t, n, "ftpalg-other"); !slices.Equal(objs, wantObjects("ftpalg-other")) {
		t.Errorf("the other instance's table after our Teardown: %v", objs)
	}
}

// TestPrerequisites: Setup fails, naming the fix, without IPv4
// forwarding; without conntrack accounting or IPv6 forwarding it warns
// (and refuses IPv6 mappings); a forward chain with a drop policy in
// another nftables table, or iptables' FORWARD policy DROP, makes it warn
// with the rule to add and Probe fail; with that rule, or with the
// pinhole backend's FTPALG-FORWARD hook, neither.
func TestPrerequisites(t *testing.T) {
	require(t)
	n := nstest.New(t)
	n.Sysctl(t, "net.ipv4.ip_forward", "0")
	d := New(rules.Options{})
	var err error
	n.Do(t, func() { err = d.Setup(context.Background()) })
	if !isKind(err, rules.ErrUnsupported) || !strings.Contains(err.Error(), "sysctl -w net.ipv4.ip_forward=1") {
		t.Fatalf("Setup without IPv4 forwarding: %v", err)
	}
	if objs, _ := listTable(t, n, TableName); objs != nil {
		t.Errorf("a failed Setup left %v", objs)
	}
	n.Do(t, func() { err = Probe(context.Background(), rules.Options{}) })
	if !isKind(err, rules.ErrUnsupported) {
		t.Errorf("Probe without IPv4 forwarding: %v", err)
	}

	n.Sysctl(t, "net.ipv4.ip_forward", "1")
	n.Sysctl(t, "net.ipv6.conf.all.forwarding", "0")
	n.Sysctl(t, "net.netfilter.nf_conntrack_acct", "0")
	logs := setUpObserved(t, n, rules.Options{})
	for _, msg := range []string{MsgNoAccounting, MsgNoIPv6} {
		if logs.logs.FilterMessage(msg).Len() != 1 {
			t.Errorf("no warning %q:\n%v", msg, logs.logs.All())
		}
	}
	d6 := setUp(t, n, rules.Options{})
	var serr error
	n.Do(t, func() { serr = d6.Supports(rules.Mapping{Peer: peer6, Announced: annc6, Target: target6}) })
	if !errors.Is(serr, rules.ErrInvalid) || !strings.Contains(serr.Error(), "net.ipv6.conf.all.forwarding=1") {
		t.Errorf("Supports(IPv6) without IPv6 forwarding: %v", serr)
	}
	doIn(t, n, "Teardown", d6.Teardown)

	forwarding(t, n)
	n.Run(t, "nft", "add table inet filter")
	n.Run(t, "nft", "add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	n.Run(t, "nft", "add rule inet filter forward ct state established,related accept")
	fix := "nft insert rule inet filter forward ct status dnat accept"
	logs = setUpObserved(t, n, rules.Options{})
	if w := logs.logs.FilterMessage(MsgForwardDropped).All(); len(w) != 1 || w[0].ContextMap()["fix"] != fix {
		t.Errorf("warnings for a policy-drop forward chain: %v, want one with the fix %q", w, fix)
	}
	n.Do(t, func() { err = Probe(context.Background(), rules.Options{}) })
	if !isKind(err, rules.ErrUnsupported) || !strings.Contains(err.Error(), fix) {
		t.Errorf("Probe with a policy-drop forward chain: %v", err)
	}
	n.Run(t, append([]string{"nft"}, strings.Fields(strings.TrimPrefix(fix, "nft "))...)...)
	logs = setUpObserved(t, n, rules.Options{})
	if w := logs.logs.FilterMessage(MsgForwardDropped).All(); len(w) != 0 {
		t.Errorf("warnings once the chain accepts ct status dnat: %v", w)
	}
	n.Do(t, func() { err = Probe(context.Background(), rules.Options{}) })
	if err != nil {
		t.Errorf("Probe once the chain accepts ct status dnat: %v", err)
	}
	if objs, _ := listTable(t, n, TableName+"-probe"); objs != nil {
		t.Errorf("Probe left %v", objs)
	}

	n.Run(t, "nft", "delete table inet filter")
	nstest.ForwardDrop(t, n, "")
	logs = setUpObserved(t, n, rules.Options{})
	if w := logs.logs.FilterMessage(MsgForwardDropped).All(); len(w) != 2 ||
		!strings.Contains(fmt.Sprint(w[0].ContextMap()["fix"]), "-I FORWARD -m conntrack --ctstate DNAT -j ACCEPT") {
		t.Errorf("warnings for iptables FORWARD policy DROP: %v, want one per family", w)
	}
	// the pinhole backends' hook admits the mapped connections' first packets
	for _, cmd := range []string{"iptables", "ip6tables"} {
		n.Run(t, cmd, "-w", "-N", "FTPALG-FORWARD")
		n.Run(t, cmd, "-w", "-I", "FORWARD", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-FORWARD")
	}
	logs = setUpObserved(t, n, rules.Options{})
	if w := logs.logs.FilterMessage(MsgForwardDropped).All(); len(w) != 0 {
		t.Errorf("warnings with the FTPALG-FORWARD hook in place: %v", w)
	}
}

type observed struct {
	d    *DataPath
	logs *observer.ObservedLogs
}

// setUpObserved is setUp with the log observed.
func setUpObserved(t *testing.T, n *nstest.NS, opts rules.Options) observed {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	opts.Logger = zap.New(core)
	o := observed{d: setUp(t, n, opts), logs: logs}
	doIn(t, n, "Teardown", o.d.Teardown) // the log is what counts; the next one sets up again
	return o
}

func isKind(err, kind error) bool {
	_, ok := errors.AsType[*rules.Error](err)
	return ok && errors.Is(err, kind)
}

// TestSyncMany: a restore of more mappings than one batch carries
// (chunk) puts back every one of them.
func TestSyncMany(t *testing.T) {
	n := newNS(t)
	d := setUp(t, n, rules.Options{Logger: zap.NewNop()})
	const many = chunk*2 + 100
	n.Do(t, func() {
		for i := range many {
			m := rules.Mapping{Peer: peer, Announced: netip.AddrPortFrom(annc.Addr(), uint16(10000+i)),
				Target: netip.AddrPortFrom(target.Addr(), uint16(30000+i)), Source: source, Lifetime: time.Minute, Session: uint64(i)}
			if i%2 == 1 {
				m = rules.Mapping{Peer: peer6, Announced: netip.AddrPortFrom(annc6.Addr(), uint16(10000+i)),
					Target: netip.AddrPortFrom(target6.Addr(), uint16(30000+i)), Lifetime: time.Minute, Session: uint64(i)}
			}
			if _, err := d.Map(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	})
	n.Run(t, "nft", "flush", "ruleset")
	var r rules.Restored
	doIn(t, n, "Sync", func(ctx context.Context) (err error) { r, err = d.Sync(ctx); return err })
	if r.Mappings != many {
		t.Errorf("Sync restored %v, want %d mappings", r, many)
	}
	var ms []rules.Mapping
	doIn(t, n, "Mappings", func(ctx context.Context) (err error) { ms, err = d.Mappings(ctx); return err })
	if len(ms) != many {
		t.Errorf("after the restore the kernel holds %d mappings, want %d", len(ms), many)
	}
	if _, elems := listTable(t, n, TableName); len(elems) != many*5/2 {
		t.Errorf("after the restore the kernel holds %d elements, want %d", len(elems), many*5/2)
	}
}
