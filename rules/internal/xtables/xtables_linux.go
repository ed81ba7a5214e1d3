package xtables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/ftpalg/ftpalg/rules"
)

// Table is the one table the pinhole backends use: filtering is all a
// pinhole does. Tables.In gives a view of another table (rules/intercept
// works in nat and mangle).
const Table = "filter"

// Our chains (with rules.Options.Suffix appended). FTPALG-INPUT holds
// pinholes to the host itself (the proxy's data listeners); FTPALG-FORWARD
// is for the gateway mode, where the peer connects through the host to a
// server behind it.
const (
	ChainInput   = "FTPALG-INPUT"
	ChainForward = "FTPALG-FORWARD"
)

// Hook is one jump from a built-in chain to ours.
type Hook struct {
	Builtin, Chain string
	// Match is what the hook matches besides HookMatch: nothing, or for
	// the ipset backend its set, so that the hook too holds a reference
	// to the set (see rules/ipset).
	Match []string
}

// Hooks are the jumps Setup installs and Teardown removes, for the
// instance whose names end in suffix, each matching match as well (Hook.Match).
func Hooks(suffix string, match ...string) []Hook {
	return []Hook{
		{Builtin: "INPUT", Chain: ChainInput + suffix, Match: match},
		{Builtin: "FORWARD", Chain: ChainForward + suffix, Match: match},
	}
}

// HookMatch is what a hook matches before jumping: only the first packet of
// a new TCP connection, a SYN that conntrack sees as NEW. Every other packet
// of the host, established traffic above all, costs one failed match
// instead of a walk through our chain. --syn as well as NEW because with
// nf_conntrack_tcp_loose (the default) a mid-stream packet of an unknown
// flow is NEW too, and a pinhole is for opening a connection, not for
// joining one.
var HookMatch = []string{"-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW"}

// Spec is the rule in h.Builtin that jumps to h.Chain.
func (h Hook) Spec() []string {
	return append(append(slices.Clone(HookMatch), h.Match...), "-j", h.Chain)
}

// Family is an address family: iptables or ip6tables.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// IPTables is the part of go-iptables' *iptables.IPTables this package
// calls: the seam a Fake stands in at. Every method runs the binary once or
// twice; "not there" comes back as an error for which IsNotExist is true.
type IPTables interface {
	List(table, chain string) ([]string, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
}

var _ IPTables = (*iptables.IPTables)(nil)

// Opener finds family f's binary of an iptables variant ("", "nft",
// "legacy"): New for the host, Fake.Open in tests. The backends and
// rules/intercept hold one, so their tests run without root.
type Opener func(ctx context.Context, f Family, variant string) (*Tables, error)

// Tables is one family's iptables binary.
type Tables struct {
	Family Family
	Cmd    string // the binary run: "iptables", "ip6tables-legacy", …
	Mode   string // what `Cmd --version` says it is: "nf_tables" or "legacy"
	ipt    IPTables
	// legacyTables lists the legacy tables the kernel holds in the calling
	// thread's network namespace (ip_tables_names); an error means none.
	legacyTables func(Family) ([]string, error)
	// generation reads the nf_tables ruleset generation; nil for legacy.
	generation func() (uint32, error)
	table      string // the table the chain and rule operations act on; "" is Table
}

// Command returns the binary for family and variant ("", "nft", "legacy").
func Command(f Family, variant string) (string, error) {
	cmd := "iptables"
	if f == IPv6 {
		cmd = "ip6tables"
	}
	switch variant {
	case "":
		return cmd, nil
	case "nft", "legacy":
		return cmd + "-" + variant, nil
	}
	return "", fmt.Errorf("%w: iptables variant %q: want nft, legacy or empty", rules.ErrInvalid, variant)
}

// New finds family's binary of the given variant and asks it what it is.
func New(ctx context.Context, f Family, variant string) (*Tables, error) {
	cmd, err := Command(f, variant)
	if err != nil {
		return nil, err
	}
	path, err := exec.LookPath(cmd)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	c := exec.CommandContext(ctx, path, "--version")
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("%s --version: %w: %s", cmd, err, strings.TrimSpace(out.String()))
	}
	mode := "legacy" // versions before 1.8 have no suffix and no nft variant
	if strings.Contains(out.String(), "(nf_tables)") {
		mode = "nf_tables"
	}
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path))
	if err != nil {
		return nil, err
	}
	t := &Tables{Family: f, Cmd: cmd, Mode: mode, ipt: ipt, legacyTables: procTables}
	if mode == "nf_tables" {
		t.generation = nftGeneration
	}
	return t, nil
}

// procTables reads ip_tables_names (ip6_tables_names) of the calling
// thread's network namespace: /proc/net is the namespace of the process's
// main thread, while the binary runs in the calling thread's, which the
// caller may have moved.
func procTables(f Family) ([]string, error) {
	name := "ip_tables_names"
	if f == IPv6 {
		name = "ip6_tables_names"
	}
	dir := "/proc/thread-self/net/"
	if _, err := os.Stat("/proc/thread-self"); err != nil {
		dir = "/proc/net/" // kernels before 3.17
	}
	b, err := os.ReadFile(dir + name)
	if err != nil {
		return nil, err // no x_tables in this kernel or namespace
	}
	return strings.Fields(string(b)), nil
}

// In returns a view of t whose chain and rule operations act on table
// ("nat", "mangle", …) instead of filter. It shares t's binary; t itself is
// unchanged.
func (t *Tables) In(table string) *Tables {
	c := *t
	c.table = table
	return &c
}

// TableName is the table t's chain and rule operations act on.
func (t *Tables) TableName() string { return t.tbl() }

func (t *Tables) tbl() string {
	if t.table == "" {
		return Table
	}
	return t.table
}

// Loaded reports whether t's table can hold anything in this network
// namespace, so that a caller that only wants to remove its chains can
// skip one that cannot. The legacy binary registers a table in the
// namespace merely by listing it (and a legacy table, once there, stays
// for the namespace's life), so for legacy this reads ip_tables_names
// (ip6_tables_names) of the calling thread's namespace: a table not named
// there holds nothing. iptables-nft creates nothing when listing, so for
// it the answer is always true.
func (t *Tables) Loaded() bool {
	if t.Mode == "nf_tables" {
		return true
	}
	names, err := t.legacyTables(t.Family)
	return err == nil && slices.Contains(names, t.tbl())
}

// OtherVariantWarning returns a warning when the calling thread's network
// namespace also has tables of the other variant loaded, or "". Packets
// pass both variants' hooks, so a DROP there still drops what our pinhole
// accepts. Only the direction "we use nf_tables, legacy tables exist" can
// be seen without running the legacy binary, which itself would create the
// tables it lists.
func (t *Tables) OtherVariantWarning() string {
	if t.Mode != "nf_tables" {
		return ""
	}
	names, err := t.legacyTables(t.Family)
	if err != nil || len(names) == 0 {
		return ""
	}
	return fmt.Sprintf("%s-legacy tables are loaded as well (%s); a DROP there still drops a pinholed connection: if the host's ruleset is legacy, use the legacy variant",
		strings.TrimSuffix(t.Cmd, "-nft"), strings.Join(names, ","))
}

// EnsureChain creates chain, or flushes it when it exists (a leftover).
func (t *Tables) EnsureChain(chain string) error { return t.ipt.ClearChain(t.tbl(), chain) }

// FlushChain removes every rule of chain; a missing chain is fine.
func (t *Tables) FlushChain(chain string) error {
	ok, err := t.ipt.ChainExists(t.tbl(), chain)
	if err != nil || !ok {
		return err
	}
	err = t.ipt.ClearChain(t.tbl(), chain)
	if IsNotExist(err) {
		return nil
	}
	return err
}

// RemoveChain flushes and deletes chain; a missing chain is fine.
func (t *Tables) RemoveChain(chain string) error {
	err := t.ipt.ClearAndDeleteChain(t.tbl(), chain)
	if IsNotExist(err) {
		return nil
	}
	return err
}

// EnsureHook makes h the one rule in h.Builtin that jumps to h.Chain: it
// removes other jumps to h.Chain (left by another version or by hand) and
// keeps a single h.Spec() rule where it is, even when an operator moved it
// down; when there is none, or several, it inserts h.Spec() at the top.
//
// Duplicates are not thinned out to the first: iptables -D deletes the
// first rule matching a spec, so deleting the extra copies would keep the
// last one, which may sit below a host rule (a DROP) the first one was
// above.
func (t *Tables) EnsureHook(h Hook) error {
	_, err := t.SyncHook(h)
	return err
}

// SyncHook is EnsureHook, and says whether it had to insert h: false when
// h was in place already.
func (t *Tables) SyncHook(h Hook) (inserted bool, err error) {
	jumps, err := t.jumps(h)
	if err != nil {
		return false, err
	}
	want := h.Spec()
	isHook := func(j []string) bool { return slices.Equal(j, want) || slices.Equal(j, canonical(want)) }
	hooks := 0
	for _, j := range jumps {
		if isHook(j) {
			hooks++
		}
	}
	for _, j := range jumps {
		if hooks == 1 && isHook(j) {
			continue
		}
		if err := t.Delete(h.Builtin, j...); err != nil {
			return false, err
		}
	}
	if hooks == 1 {
		return false, nil
	}
	return true, t.ipt.Insert(t.tbl(), h.Builtin, 1, want...)
}

// HasHook reports whether h.Builtin holds h.Spec() (one `iptables -C`):
// the cheap question a periodic check asks before the thorough ones.
func (t *Tables) HasHook(h Hook) (bool, error) { return t.Exists(h.Builtin, h.Spec()...) }

// canonical is spec as iptables -S prints it: --syn comes back spelled
// out as the tcp match's flags.
func canonical(spec []string) []string {
	var out []string
	for i := 0; i < len(spec); i++ {
		if spec[i] == "--syn" {
			out = append(out, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
			continue
		}
		out = append(out, spec[i])
	}
	return out
}

// RemoveHooks deletes every rule in h.Builtin that jumps to h.Chain.
func (t *Tables) RemoveHooks(h Hook) error {
	jumps, err := t.jumps(h)
	if err != nil {
		if IsNotExist(err) {
			return nil
		}
		return err
	}
	var errs []error
	for _, j := range jumps {
		errs = append(errs, t.Delete(h.Builtin, j...))
	}
	return errors.Join(errs...)
}

// jumps lists the rules of h.Builtin whose target is h.Chain, as specs.
func (t *Tables) jumps(h Hook) ([][]string, error) {
	rs, err := t.List(h.Builtin)
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, r := range rs {
		if Target(r) == h.Chain {
			out = append(out, r)
		}
	}
	return out, nil
}

// Append adds a rule at the end of chain.
func (t *Tables) Append(chain string, spec ...string) error {
	return t.ipt.Append(t.tbl(), chain, spec...)
}

// Insert adds a rule at position pos of chain; 1 is the top.
func (t *Tables) Insert(chain string, pos int, spec ...string) error {
	return t.ipt.Insert(t.tbl(), chain, pos, spec...)
}

// Exists reports whether chain holds the rule.
func (t *Tables) Exists(chain string, spec ...string) (bool, error) {
	ok, err := t.ipt.Exists(t.tbl(), chain, spec...)
	if IsNotExist(err) {
		return false, nil
	}
	return ok, err
}

// Delete removes a rule from chain; a missing rule or chain is fine.
func (t *Tables) Delete(chain string, spec ...string) error {
	err := t.ipt.Delete(t.tbl(), chain, spec...)
	if IsNotExist(err) {
		return nil
	}
	return err
}

// List returns chain's rules as specs, without the leading "-A CHAIN".
func (t *Tables) List(chain string) ([][]string, error) {
	lines, err := t.ipt.List(t.tbl(), chain)
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, l := range lines {
		f, err := Split(l)
		if err != nil {
			return nil, fmt.Errorf("%s -S %s: %w", t.Cmd, chain, err)
		}
		if len(f) >= 2 && f[0] == "-A" && f[1] == chain {
			out = append(out, f[2:])
		}
	}
	return out, nil
}

// Policy returns the policy of a built-in chain ("ACCEPT", "DROP"), as
// `iptables -S CHAIN` prints it.
func (t *Tables) Policy(chain string) (string, error) {
	lines, err := t.ipt.List(t.tbl(), chain)
	if err != nil {
		return "", err
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "-P" && f[1] == chain {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("%s -S %s: no policy line", t.Cmd, chain)
}

// LegacyLoaded reports whether the legacy (x_tables) table of family f is
// loaded in the calling thread's network namespace: only then can it hold
// rules, and asking the legacy binary would load it.
func LegacyLoaded(f Family, table string) bool {
	names, err := procTables(f)
	return err == nil && slices.Contains(names, table)
}

// ChainExists reports whether chain exists.
func (t *Tables) ChainExists(chain string) (bool, error) { return t.ipt.ChainExists(t.tbl(), chain) }

// Target returns the -j target of a rule spec, or "".
func Target(spec []string) string {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "-j" || spec[i] == "--jump" {
			return spec[i+1]
		}
	}
	return ""
}

// Split splits one line of `iptables -S` into fields, honouring the double
// quotes (with \" and \\ escapes) iptables puts around comments.
func Split(line string) ([]string, error) {
	var (
		out    []string
		cur    strings.Builder
		inWord bool
		quoted bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			quoted, inWord = true, true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// IsNotExist reports whether err is iptables saying the chain or rule does
// not exist: go-iptables' *iptables.Error, or a Fake's *Exit, whose
// IsNotExist reads the binary's message.
func IsNotExist(err error) bool {
	e, ok := errors.AsType[interface {
		error
		IsNotExist() bool
	}](err)
	return ok && e.IsNotExist()
}

// Classify sorts an error of this package (or of the binary) into a kind of
// rules error and a hint for the operator; kind is nil when it is none of
// the known ones.
func Classify(err error) (kind error, hint string) {
	if err == nil {
		return nil, ""
	}
	if errors.Is(err, rules.ErrInvalid) {
		return rules.ErrInvalid, ""
	}
	if errors.Is(err, exec.ErrNotFound) {
		return rules.ErrUnsupported, "iptables is not installed: install it, or use --firewall none and open --data-ports statically"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Permission denied"), strings.Contains(msg, "you must be root"),
		strings.Contains(msg, "Operation not permitted"):
		return rules.ErrNotPermitted, rules.HintNotPermitted
	case strings.Contains(msg, "match `set'"), strings.Contains(msg, "Extension set"):
		return rules.ErrUnsupported, "the iptables set match (xt_set) is missing: use --firewall iptables"
	case strings.Contains(msg, "match `conntrack'"), strings.Contains(msg, "Extension conntrack"):
		return rules.ErrUnsupported, "the iptables conntrack match (xt_conntrack) is missing: load the kernel module or use --firewall none"
	case strings.Contains(msg, "match `comment'"), strings.Contains(msg, "Extension comment"):
		return rules.ErrUnsupported, "the iptables comment match (xt_comment) is missing: load the kernel module or use --firewall ipset"
	case strings.Contains(msg, "Address family not supported"), strings.Contains(msg, "Protocol not supported"),
		strings.Contains(msg, "Table does not exist"):
		return rules.ErrUnsupported, "this kernel lacks the address family or the filter table"
	}
	return nil, ""
}
