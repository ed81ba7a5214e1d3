package xtables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Fake is a stateful stand-in for one network namespace's iptables and
// ip6tables binaries, for tests that run without root. Its Open is an
// Opener. It keeps, per family, the tables with their built-in chains and
// policies, the user chains, and every chain's rules in order, and runs the
// command lines go-iptables runs (-N -F -X -A -I -D -C -S -P) the way the
// binaries do:
//
//   - A rule is stored and printed as `iptables -S` prints it: addresses
//     with their prefix length (and 0/0 left out), -s -d -i -o -p first,
//     the tcp match made explicit, --syn spelled out as --tcp-flags,
//     conntrack states in the kernel's order, target defaults filled in
//     (TPROXY --on-ip and --tproxy-mark, MARK --set-xmark, REJECT
//     --reject-with), comments quoted as iptables quotes them. -D and -C
//     find a rule by what it does, however it was spelled.
//   - A failure is an *Exit with the binary's exit status and message
//     (iptables 1.8.9, nft or legacy wording after Mode), so IsNotExist,
//     Classify and callers that read messages see what they would see on a
//     host: -D of a missing rule is "Bad rule", -S of a missing chain is
//     "No chain/target/match" with legacy and "incompatible" with nft, and
//     so on.
//   - It checks what the binary and the kernel check for the options it
//     knows: a jump to a chain that does not exist, deleting a chain that
//     holds rules or is jumped to, a built-in chain as -N or -X, REDIRECT,
//     DNAT and MASQUERADE outside nat, TPROXY outside mangle PREROUTING,
//     a port option without -p tcp, an insert position past the end.
//
// It knows the matches tcp, conntrack, comment, set, socket and mark and the
// targets ACCEPT, DROP, RETURN, REJECT, REDIRECT, TPROXY, MARK, DNAT,
// MASQUERADE, TCPMSS and user chains, and refuses any other option or "!"
// as the binary refuses an unknown option. It does not check that a set
// named by --match-set exists. Several Tables from one Fake share its
// state, as processes share a namespace's kernel; it is safe for
// concurrent use.
type Fake struct {
	// Mode is what the fake binaries say they are, "nf_tables" (when
	// empty) or "legacy": it picks the wording of errors that differ, and
	// with legacy every command loads the table it names, as
	// ip_tables_names shows (Tables.Loaded).
	Mode string
	// Legacy lists, per family, legacy tables loaded in the namespace
	// besides what a legacy Fake loads itself; with nf_tables it is what
	// Tables.OtherVariantWarning sees.
	Legacy map[Family][]string
	// Fail, when set, sees each command line before it runs (without the
	// binary's name and --wait; ["--version"] when Open looks a binary
	// up). An error it returns is the command's answer instead: an *Exit
	// as the binary's failure (Fail need not fill in Args), any other
	// error as a binary that could not start, e.g.
	// &exec.Error{Name: "ip6tables", Err: exec.ErrNotFound} for one not
	// installed.
	Fail func(f Family, args []string) error

	mu   sync.Mutex
	fams map[Family]*fakeFamily
	runs int
	gen  uint32 // the nf_tables generation: one more per command that changed something
}

// NewFake returns a Fake holding empty tables: built-in chains with policy
// ACCEPT, no user chains, no rules.
func NewFake() *Fake { return &Fake{} }

// Exit is a fake binary's failure: what go-iptables' *iptables.Error is
// for the real one, with the same Error text and IsNotExist.
type Exit struct {
	Args   []string // the command line, binary first, as go-iptables runs it
	Status int      // the exit status: 1 for a refusal, 2 for a bad command line, 3 for no table, 4 for an nft transaction
	Msg    string   // the binary's stderr
}

func (e *Exit) Error() string {
	return fmt.Sprintf("running %v: exit status %v: %v", e.Args, e.Status, e.Msg)
}

// ExitStatus returns the exit status, as (*iptables.Error).ExitStatus.
func (e *Exit) ExitStatus() int { return e.Status }

// IsNotExist reports whether the message says a chain or rule does not
// exist, by the patterns (*iptables.Error).IsNotExist matches.
func (e *Exit) IsNotExist() bool {
	for _, s := range []string{
		"Bad rule (does a matching rule exist in that chain?).\n",
		"No chain/target/match by that name.\n",
		"No such file or directory",
		"does not exist",
	} {
		if strings.Contains(e.Msg, s) {
			return true
		}
	}
	return false
}

// Open is the Fake's Opener: a Tables whose operations run against the
// Fake. The variant only names the binary; Mode decides what it says it is.
func (x *Fake) Open(ctx context.Context, f Family, variant string) (*Tables, error) {
	cmd, err := Command(f, variant)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := x.fail(f, cmd, []string{"--version"}); err != nil {
		if _, ok := err.(*Exit); ok {
			return nil, fmt.Errorf("%s --version: %w", cmd, err)
		}
		return nil, err
	}
	x.mu.Lock()
	x.runs += 2 // New's `--version`, and go-iptables' own
	x.mu.Unlock()
	t := &Tables{Family: f, Cmd: cmd, Mode: x.mode(), ipt: &fakeIPT{x: x, f: f, cmd: cmd}, legacyTables: x.legacyTables}
	if t.Mode == "nf_tables" {
		t.generation = x.generation
	}
	return t, nil
}

// generation is what Tables.Generation reads of an nf_tables Fake: it
// moves with every command that changed the tables, as the kernel's
// moves with every committed transaction.
func (x *Fake) generation() (uint32, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gen, nil
}

// Run runs one command line as `iptables -w ARGS…` (ip6tables for IPv6)
// would, e.g. to plant what a crashed run left: Run(IPv4, "-t", "nat",
// "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "FTPALG-REDIRECT").
// It returns what the binary prints (the lines of -S).
func (x *Fake) Run(f Family, args ...string) ([]string, error) {
	cmd := "iptables"
	if f == IPv6 {
		cmd = "ip6tables"
	}
	return x.run(f, cmd, args)
}

// Restore replaces table in family f at once, as iptables-restore does
// with a file that holds the table (what a firewall reload runs): the
// table starts again from its built-in chains with policy ACCEPT, and
// each of cmds (arguments as to Run, without -t) is applied to it; when
// one fails, the table stays as it was. It counts as one command.
func (x *Fake) Restore(f Family, table string, cmds ...[]string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.runs++
	ff := x.family(f)
	old, had := ff.tables[table]
	delete(ff.tables, table)
	if _, ok := ff.table(table); !ok {
		return fmt.Errorf("restore: no table %q", table)
	}
	cmd := "iptables-restore"
	if f == IPv6 {
		cmd = "ip6tables-restore"
	}
	for _, args := range cmds {
		c := &fakeCmd{x: x, fam: ff, f: f, cmd: cmd, args: append([]string{"-t", table}, args...)}
		if _, err := c.exec(); err != nil {
			delete(ff.tables, table)
			if had {
				ff.tables[table] = old
			}
			err.Args = append([]string{cmd}, args...)
			return err
		}
	}
	x.gen++
	return nil
}

// Rules returns table's chains and rules in family f as `iptables -t TABLE
// -S` prints them: the policies of the built-in chains, the user chains
// (sorted by name, as both variants print them), then every chain's rules.
// It inspects without running a command: no Fail, no Runs, no table
// loaded.
func (x *Fake) Rules(f Family, table string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	t, ok := x.family(f).table(table)
	if !ok {
		return nil
	}
	return t.list()
}

// Runs returns how many commands the fake binaries have run, failed ones
// included: what the real ones would have cost in processes.
func (x *Fake) Runs() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.runs
}

func (x *Fake) mode() string {
	if x.Mode == "" {
		return "nf_tables"
	}
	return x.Mode
}

func (x *Fake) legacyTables(f Family) ([]string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	names := slices.Clone(x.Legacy[f])
	for _, n := range x.family(f).loaded {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names, nil
}

func (x *Fake) fail(f Family, cmd string, args []string) error {
	if x.Fail == nil {
		return nil
	}
	err := x.Fail(f, slices.Clone(args))
	if e, ok := err.(*Exit); ok && e.Args == nil {
		e.Args = append(append([]string{cmd}, args...), "--wait")
	}
	return err
}

// run runs one command line of the binary cmd in family f.
func (x *Fake) run(f Family, cmd string, args []string) ([]string, error) {
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-w" || a == "--wait" })
	if err := x.fail(f, cmd, args); err != nil {
		x.mu.Lock()
		x.runs++
		x.mu.Unlock()
		return nil, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.runs++
	c := &fakeCmd{x: x, fam: x.family(f), f: f, cmd: cmd, args: args}
	out, err := c.exec()
	if err != nil {
		err.Args = append(append([]string{cmd}, args...), "--wait")
		return nil, err
	}
	if c.changes {
		x.gen++
	}
	return out, nil
}

func (x *Fake) family(f Family) *fakeFamily {
	if x.fams == nil {
		x.fams = map[Family]*fakeFamily{}
	}
	ff, ok := x.fams[f]
	if !ok {
		ff = &fakeFamily{tables: map[string]*fakeTable{}}
		x.fams[f] = ff
	}
	return ff
}

// builtins are each table's built-in chains, in the order -S prints them.
var builtins = map[string][]string{
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":      {"PREROUTING", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
}

type fakeFamily struct {
	tables map[string]*fakeTable
	loaded []string // legacy tables loaded, in order
}

// table returns the named table, created with its built-in chains on first
// use; ok is false for a table the kernel does not have.
func (ff *fakeFamily) table(name string) (*fakeTable, bool) {
	if t, ok := ff.tables[name]; ok {
		return t, true
	}
	bs, ok := builtins[name]
	if !ok {
		return nil, false
	}
	t := &fakeTable{chains: map[string]*fakeChain{}}
	for _, b := range bs {
		t.chains[b] = &fakeChain{name: b, builtin: true, policy: "ACCEPT"}
		t.order = append(t.order, b)
	}
	ff.tables[name] = t
	return t, true
}

type fakeTable struct {
	chains map[string]*fakeChain
	order  []string // built-in chains in their order
}

type fakeChain struct {
	name    string
	builtin bool
	policy  string
	rules   []fakeRule
}

// fakeRule is one rule as -S prints it after "-A CHAIN ", its target and
// its protocol.
type fakeRule struct {
	line   string
	target string
	proto  string
}

// chainOrder is the order -S prints chains in: built-in, then user chains
// by name.
func (t *fakeTable) chainOrder() []string {
	var user []string
	for name, c := range t.chains {
		if !c.builtin {
			user = append(user, name)
		}
	}
	slices.Sort(user)
	return append(slices.Clone(t.order), user...)
}

func (t *fakeTable) list() []string {
	var out []string
	order := t.chainOrder()
	for _, name := range order {
		out = append(out, t.chains[name].head())
	}
	for _, name := range order {
		out = append(out, t.chains[name].lines()...)
	}
	return out
}

func (c *fakeChain) head() string {
	if c.builtin {
		return "-P " + c.name + " " + c.policy
	}
	return "-N " + c.name
}

func (c *fakeChain) lines() []string {
	var out []string
	for _, r := range c.rules {
		out = append(out, strings.TrimRight("-A "+c.name+" "+r.line, " "))
	}
	return out
}

// refs counts the rules of t that jump to chain.
func (t *fakeTable) refs(chain string) int {
	n := 0
	for _, c := range t.chains {
		for _, r := range c.rules {
			if r.target == chain {
				n++
			}
		}
	}
	return n
}

// fakeCmd is one run of a fake binary.
type fakeCmd struct {
	x       *Fake
	fam     *fakeFamily
	f       Family
	cmd     string
	args    []string
	changes bool // a command that changes the tables (when it succeeds)
}

// name is the program name in the binary's messages.
func (c *fakeCmd) name() string {
	if c.f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// refuse is the short refusal of the kernel or libiptc ("iptables: …."),
// exit status 1.
func (c *fakeCmd) refuse(msg string) *Exit {
	return &Exit{Status: 1, Msg: c.name() + ": " + msg + "\n"}
}

// usage is a refusal of the command line, exit status 2.
func (c *fakeCmd) usage(format string, a ...any) *Exit {
	return &Exit{Status: 2, Msg: fmt.Sprintf("%s v1.8.9 (%s): %s\nTry `%s -h' or '%s --help' for more information.\n",
		c.name(), c.x.mode(), fmt.Sprintf(format, a...), c.name(), c.name())}
}

// kernel is the kernel refusing a rule or chain change: nft reports the
// failed transaction (exit status 4), legacy libiptc's errno text.
func (c *fakeCmd) kernel(nftOp, chain, legacy string) *Exit {
	if c.x.mode() == "legacy" {
		return c.refuse(legacy)
	}
	return &Exit{Status: 4, Msg: fmt.Sprintf("%s v1.8.9 (nf_tables):  %s\n", c.name(), fmt.Sprintf(nftOp, chain))}
}

func (c *fakeCmd) exec() ([]string, *Exit) {
	args := c.args
	table := "filter"
	if len(args) >= 2 && (args[0] == "-t" || args[0] == "--table") {
		table, args = args[1], args[2:]
	}
	t, ok := c.fam.table(table)
	if !ok {
		if c.x.mode() == "legacy" {
			return nil, &Exit{Status: 3, Msg: fmt.Sprintf("%s v1.8.9 (legacy): can't initialize %s table `%s': Table does not exist (do you need to insmod?)\nPerhaps %s or your kernel needs to be upgraded.\n",
				c.name(), c.name(), table, c.name())}
		}
		return nil, &Exit{Status: 3, Msg: fmt.Sprintf("%s v1.8.9 (nf_tables): table '%s' does not exist\nPerhaps %s or your kernel needs to be upgraded.\n",
			c.name(), table, c.name())}
	}
	if c.x.mode() == "legacy" && !slices.Contains(c.fam.loaded, table) {
		c.fam.loaded = append(c.fam.loaded, table)
	}
	if len(args) == 0 {
		return nil, c.usage("no command specified")
	}
	op, args := args[0], args[1:]
	chain := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		chain, args = args[0], args[1:]
	}
	ch := t.chains[chain]
	c.changes = !slices.Contains([]string{"-S", "--list-rules", "-C", "--check"}, op)
	switch op {
	case "-S", "--list-rules":
		return c.list(t, chain, ch, args)
	case "-N", "--new-chain":
		switch {
		case chain == "":
			return nil, c.usage("-N requires a chain name")
		case len(chain) > 28:
			return nil, c.usage("chain name `%s' too long (must be under 29 chars)", chain)
		case ch != nil:
			return nil, c.refuse("Chain already exists.")
		}
		t.chains[chain] = &fakeChain{name: chain}
		return nil, nil
	case "-F", "--flush":
		if chain == "" {
			for _, each := range t.chains {
				each.rules = nil
			}
			return nil, nil
		}
		if ch == nil {
			return nil, c.refuse("No chain/target/match by that name.")
		}
		ch.rules = nil
		return nil, nil
	case "-X", "--delete-chain":
		if chain == "" {
			for _, name := range t.chainOrder() {
				if ch := t.chains[name]; !ch.builtin {
					if err := c.deleteChain(t, ch); err != nil {
						return nil, err
					}
				}
			}
			return nil, nil
		}
		if ch == nil {
			return nil, c.refuse("No chain/target/match by that name.")
		}
		return nil, c.deleteChain(t, ch)
	case "-P", "--policy":
		if ch == nil || !ch.builtin {
			return nil, c.refuse("Bad built-in chain name.")
		}
		if len(args) != 1 || args[0] != "ACCEPT" && args[0] != "DROP" {
			return nil, c.usage("Bad policy name")
		}
		ch.policy = args[0]
		return nil, nil
	case "-A", "--append", "-I", "--insert", "-D", "--delete", "-C", "--check":
	default:
		return nil, c.usage("unknown command %q", op)
	}
	if chain == "" {
		return nil, c.usage("%s requires a chain name", op)
	}
	insert, del := op == "-I" || op == "--insert", op == "-D" || op == "--delete"
	pos := 0
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		n, err := strconv.Atoi(args[0])
		switch {
		case !insert && !del || del && len(args) > 1:
			return nil, c.usage("Bad argument `%s'", args[0])
		case err != nil || n < 1:
			return nil, c.usage("Invalid rule number `%s'", args[0])
		}
		pos, args = n, args[1:]
	}
	if del && pos > 0 {
		if ch == nil {
			return nil, c.refuse("No chain/target/match by that name.")
		}
		if pos > len(ch.rules) {
			return nil, c.refuse("Index of deletion too big.")
		}
		ch.rules = slices.Delete(ch.rules, pos-1, pos)
		return nil, nil
	}
	r, err := c.parse(t, args)
	if err != nil {
		return nil, err
	}
	if !insert && op != "-A" && op != "--append" { // -D, -C
		i := -1
		if ch != nil {
			i = slices.IndexFunc(ch.rules, func(have fakeRule) bool { return have.line == r.line })
		}
		if i < 0 {
			return nil, c.refuse("Bad rule (does a matching rule exist in that chain?).")
		}
		if del {
			ch.rules = slices.Delete(ch.rules, i, i+1)
		}
		return nil, nil
	}
	if ch == nil {
		return nil, c.refuse("No chain/target/match by that name.")
	}
	if err := c.allowed(table, ch, r, insert); err != nil {
		return nil, err
	}
	if !insert {
		ch.rules = append(ch.rules, r)
		return nil, nil
	}
	if pos == 0 {
		pos = 1
	}
	if pos > len(ch.rules)+1 {
		return nil, c.refuse("Index of insertion too big.")
	}
	ch.rules = slices.Insert(ch.rules, pos-1, r)
	return nil, nil
}

func (c *fakeCmd) list(t *fakeTable, chain string, ch *fakeChain, args []string) ([]string, *Exit) {
	if chain == "" {
		return t.list(), nil
	}
	if ch == nil {
		if c.x.mode() == "legacy" {
			return nil, c.refuse("No chain/target/match by that name.")
		}
		return nil, &Exit{Status: 1, Msg: fmt.Sprintf("%s v1.8.9 (nf_tables): chain `%s' in table `%s' is incompatible, use 'nft' tool.\n",
			c.name(), chain, tableOf(c.args))}
	}
	if len(args) == 0 {
		return append([]string{ch.head()}, ch.lines()...), nil
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 || len(args) > 1 {
		return nil, c.usage("Invalid rule number `%s'", args[0])
	}
	if n > len(ch.rules) {
		return nil, nil
	}
	return ch.lines()[n-1 : n], nil
}

func tableOf(args []string) string {
	if len(args) >= 2 && (args[0] == "-t" || args[0] == "--table") {
		return args[1]
	}
	return "filter"
}

func (c *fakeCmd) deleteChain(t *fakeTable, ch *fakeChain) *Exit {
	const busy = "CHAIN_DEL failed (Device or resource busy): chain %s"
	switch {
	case ch.builtin:
		return c.kernel(busy, ch.name, "Invalid argument. Run `dmesg' for more information.")
	case t.refs(ch.name) > 0:
		return c.kernel(busy, ch.name, "Too many links.")
	case len(ch.rules) > 0:
		return c.kernel(busy, ch.name, "Directory not empty.")
	}
	delete(t.chains, ch.name)
	return nil
}

// allowed is the kernel's check of a rule's target against the table, the
// protocol and, in a built-in chain, the hook.
func (c *fakeCmd) allowed(table string, ch *fakeChain, r fakeRule, insert bool) *Exit {
	op := "RULE_APPEND"
	if insert {
		op = "RULE_INSERT"
	}
	refuse := c.kernel(op+" failed (Invalid argument): rule in chain %s", ch.name, "Invalid argument. Run `dmesg' for more information.")
	var tables, hooks []string
	switch r.target {
	case "REDIRECT", "DNAT":
		tables, hooks = []string{"nat"}, []string{"PREROUTING", "OUTPUT"}
	case "MASQUERADE":
		tables, hooks = []string{"nat"}, []string{"POSTROUTING"}
	case "TPROXY":
		if r.proto != "tcp" && r.proto != "udp" {
			return refuse
		}
		tables, hooks = []string{"mangle"}, []string{"PREROUTING"}
	case "REJECT":
		tables, hooks = []string{"filter", "mangle", "raw", "security"}, []string{"INPUT", "FORWARD", "OUTPUT"}
	default:
		return nil
	}
	if slices.Contains(tables, table) && (!ch.builtin || slices.Contains(hooks, ch.name)) {
		return nil
	}
	return refuse
}

// fakeMatch is one -m match of a rule being parsed: its options in the
// order given.
type fakeMatch struct {
	name string
	opts map[string][]string
}

// matchOpts are the options of each known match and how many values each
// takes.
var matchOpts = map[string]map[string]int{
	"tcp": {"--sport": 1, "--source-port": 1, "--dport": 1, "--destination-port": 1,
		"--syn": 0, "--tcp-flags": 2},
	"conntrack": {"--ctstate": 1},
	"comment":   {"--comment": 1},
	"set":       {"--match-set": 2},
	"socket":    {"--transparent": 0},
	"mark":      {"--mark": 1},
}

// targetOpts are the options of each known target.
var targetOpts = map[string]map[string]int{
	"ACCEPT": {}, "DROP": {}, "RETURN": {}, "MASQUERADE": {},
	"REJECT":   {"--reject-with": 1},
	"REDIRECT": {"--to-ports": 1},
	"TPROXY":   {"--on-port": 1, "--on-ip": 1, "--tproxy-mark": 1},
	"MARK":     {"--set-xmark": 1, "--set-mark": 1},
	"DNAT":     {"--to-destination": 1},
	"TCPMSS":   {"--clamp-mss-to-pmtu": 0, "--set-mss": 1},
}

// parse reads a rule spec into the form -S prints.
func (c *fakeCmd) parse(t *fakeTable, args []string) (fakeRule, *Exit) {
	var (
		src, dst, in, out, proto string
		matches                  []*fakeMatch
		target                   string
		topts                    = map[string][]string{}
	)
	value := func(i, n int) ([]string, *Exit) {
		if i+n >= len(args) {
			return nil, c.usage("option \"%s\" requires an argument", args[i])
		}
		return args[i+1 : i+1+n], nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "!":
			return fakeRule{}, c.usage("the fake does not model \"!\"")
		case "-s", "--source", "-d", "--destination":
			v, err := value(i, 1)
			if err != nil {
				return fakeRule{}, err
			}
			p, ok := c.prefix(v[0])
			if !ok {
				return fakeRule{}, c.usage("host/network `%s' not found", v[0])
			}
			if a == "-s" || a == "--source" {
				src = p
			} else {
				dst = p
			}
			i++
		case "-i", "--in-interface", "-o", "--out-interface":
			v, err := value(i, 1)
			if err != nil {
				return fakeRule{}, err
			}
			if len(v[0]) > 15 {
				return fakeRule{}, c.usage("interface name `%s' must be shorter than IFNAMSIZ (15)", v[0])
			}
			if a == "-i" || a == "--in-interface" {
				in = v[0]
			} else {
				out = v[0]
			}
			i++
		case "-p", "--protocol":
			v, err := value(i, 1)
			if err != nil {
				return fakeRule{}, err
			}
			switch strings.ToLower(v[0]) {
			case "tcp", "6":
				proto = "tcp"
			case "udp", "17":
				proto = "udp"
			case "all", "0":
				proto = ""
			default:
				return fakeRule{}, c.usage("unknown protocol \"%s\" specified", v[0])
			}
			i++
		case "-m", "--match":
			v, err := value(i, 1)
			if err != nil {
				return fakeRule{}, err
			}
			if _, ok := matchOpts[v[0]]; !ok {
				return fakeRule{}, c.usage("Couldn't load match `%s':No such file or directory\n", v[0])
			}
			// a second -m tcp is one match, as iptables-nft prints it
			if k := slices.IndexFunc(matches, func(m *fakeMatch) bool { return m.name == "tcp" }); v[0] != "tcp" || k < 0 {
				matches = append(matches, &fakeMatch{name: v[0], opts: map[string][]string{}})
			}
			i++
		case "-j", "--jump":
			v, err := value(i, 1)
			if err != nil {
				return fakeRule{}, err
			}
			if target != "" {
				return fakeRule{}, c.usage("multiple -j flags not allowed")
			}
			target = v[0]
			if _, ok := targetOpts[target]; !ok {
				if _, ok := t.chains[target]; !ok || t.chains[target].builtin {
					if c.x.mode() == "legacy" {
						return fakeRule{}, c.usage("Couldn't load target `%s':No such file or directory\n", target)
					}
					return fakeRule{}, c.usage("Chain '%s' does not exist", target)
				}
			}
			i++
		default:
			if n, ok := targetOpts[target][a]; ok {
				v, err := value(i, n)
				if err != nil {
					return fakeRule{}, err
				}
				topts[a] = v
				i += n
				continue
			}
			m := c.owner(&matches, proto, a)
			if m == nil {
				return fakeRule{}, c.usage("unknown option \"%s\"", a)
			}
			n := matchOpts[m.name][a]
			v, err := value(i, n)
			if err != nil {
				return fakeRule{}, err
			}
			key := longName(a)
			if _, dup := m.opts[key]; dup {
				return fakeRule{}, c.usage("Only one `%s' allowed", key)
			}
			m.opts[key] = v
			i += n
		}
	}

	var tok []string
	add := func(s ...string) { tok = append(tok, s...) }
	if src != "" {
		add("-s", src)
	}
	if dst != "" {
		add("-d", dst)
	}
	if in != "" {
		add("-i", in)
	}
	if out != "" {
		add("-o", out)
	}
	if proto != "" {
		add("-p", proto)
	}
	for _, m := range matches {
		opts, err := c.matchTokens(m, proto)
		if err != nil {
			return fakeRule{}, err
		}
		add(append([]string{"-m", m.name}, opts...)...)
	}
	if target != "" {
		opts, err := c.targetTokens(target, topts, proto)
		if err != nil {
			return fakeRule{}, err
		}
		add(append([]string{"-j", target}, opts...)...)
	}
	return fakeRule{line: strings.Join(tok, " "), target: target, proto: proto}, nil
}

// owner returns the match an option belongs to: the latest match that
// knows it, or the tcp match -p tcp loads implicitly (added at this point
// when there is none yet).
func (c *fakeCmd) owner(matches *[]*fakeMatch, proto, opt string) *fakeMatch {
	for i := len(*matches) - 1; i >= 0; i-- {
		if _, ok := matchOpts[(*matches)[i].name][opt]; ok {
			return (*matches)[i]
		}
	}
	if _, ok := matchOpts["tcp"][opt]; ok && proto == "tcp" {
		m := &fakeMatch{name: "tcp", opts: map[string][]string{}}
		*matches = append(*matches, m)
		return m
	}
	return nil
}

func longName(opt string) string {
	switch opt {
	case "--sport":
		return "--source-port"
	case "--dport":
		return "--destination-port"
	}
	return opt
}

// prefix reads an address or network of c's family as -S prints it; "" for
// the whole family, which -S leaves out.
func (c *fakeCmd) prefix(s string) (string, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			if s == "0/0" && c.f == IPv4 {
				return "", true
			}
			return "", false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4() != (c.f == IPv4) || p.Addr().Is4In6() {
		return "", false
	}
	if p.Bits() == 0 {
		return "", true
	}
	return p.Masked().String(), true
}

// tcpFlags are the tcp match's flag names in the order iptables prints
// them.
var tcpFlags = []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG"}

func (c *fakeCmd) flags(s string) (string, *Exit) {
	var set []bool = make([]bool, len(tcpFlags))
	for f := range strings.SplitSeq(strings.ToUpper(s), ",") {
		switch i := slices.Index(tcpFlags, f); {
		case f == "ALL":
			for i := range set {
				set[i] = true
			}
		case f == "NONE":
		case i >= 0:
			set[i] = true
		default:
			return "", c.usage("Unknown TCP flag `%s'", f)
		}
	}
	var out []string
	for i, on := range set {
		if on {
			out = append(out, tcpFlags[i])
		}
	}
	if len(out) == 0 {
		return "NONE", nil
	}
	return strings.Join(out, ","), nil
}

// ctStates are conntrack's states in the order iptables prints them.
var ctStates = []string{"INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"}

func (c *fakeCmd) matchTokens(m *fakeMatch, proto string) ([]string, *Exit) {
	var out []string
	switch m.name {
	case "tcp":
		if proto != "tcp" {
			return nil, c.usage("Need TCP, UDP, SCTP or DCCP with port specification")
		}
		for _, o := range []string{"--source-port", "--destination-port"} {
			if v, ok := m.opts[o]; ok {
				p, err := c.ports(v[0])
				if err != nil {
					return nil, err
				}
				out = append(out, map[string]string{"--source-port": "--sport", "--destination-port": "--dport"}[o], p)
			}
		}
		_, syn := m.opts["--syn"]
		fl, hasFlags := m.opts["--tcp-flags"]
		switch {
		case syn && hasFlags:
			return nil, c.usage("multiple flags not allowed")
		case syn:
			out = append(out, "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
		case hasFlags:
			mask, err := c.flags(fl[0])
			if err != nil {
				return nil, err
			}
			comp, err := c.flags(fl[1])
			if err != nil {
				return nil, err
			}
			out = append(out, "--tcp-flags", mask, comp)
		}
	case "conntrack":
		v, ok := m.opts["--ctstate"]
		if !ok {
			break
		}
		var got []string
		for s := range strings.SplitSeq(v[0], ",") {
			if !slices.Contains(ctStates, strings.ToUpper(s)) {
				return nil, c.usage("Bad ctstate \"%s\"", s)
			}
			got = append(got, strings.ToUpper(s))
		}
		var states []string
		for _, s := range ctStates {
			if slices.Contains(got, s) {
				states = append(states, s)
			}
		}
		out = append(out, "--ctstate", strings.Join(states, ","))
	case "comment":
		v, ok := m.opts["--comment"]
		if !ok {
			return nil, c.usage("COMMENT must be specified")
		}
		if len(v[0]) > 255 {
			return nil, c.usage("comment may not exceed 255 characters")
		}
		out = append(out, "--comment", saveString(v[0]))
	case "set":
		v, ok := m.opts["--match-set"]
		if !ok {
			return nil, c.usage("You must specify `--match-set' with proper arguments")
		}
		for d := range strings.SplitSeq(v[1], ",") {
			if d != "src" && d != "dst" {
				return nil, c.usage("You must specify (the comma separated list of) 'src' or 'dst'.")
			}
		}
		out = append(out, "--match-set", v[0], v[1])
	case "socket":
		if _, ok := m.opts["--transparent"]; ok {
			out = append(out, "--transparent")
		}
	case "mark":
		v, ok := m.opts["--mark"]
		if !ok {
			return nil, c.usage("mark match: You must specify `--mark'")
		}
		val, mask, err := c.mark(v[0])
		if err != nil {
			return nil, err
		}
		if mask == 0xffffffff {
			out = append(out, "--mark", fmt.Sprintf("0x%x", val))
		} else {
			out = append(out, "--mark", fmt.Sprintf("0x%x/0x%x", val, mask))
		}
	}
	return out, nil
}

func (c *fakeCmd) targetTokens(target string, o map[string][]string, proto string) ([]string, *Exit) {
	hasPorts := proto == "tcp" || proto == "udp"
	switch target {
	case "REJECT":
		with := "icmp-port-unreachable"
		if c.f == IPv6 {
			with = "icmp6-port-unreachable"
		}
		if v, ok := o["--reject-with"]; ok {
			with = v[0]
		}
		return []string{"--reject-with", with}, nil
	case "REDIRECT":
		v, ok := o["--to-ports"]
		if !ok {
			return nil, nil
		}
		if !hasPorts {
			return nil, c.usage("Need TCP, UDP, SCTP or DCCP with port specification")
		}
		p, err := c.ports(strings.ReplaceAll(v[0], "-", ":"))
		if err != nil {
			return nil, err
		}
		return []string{"--to-ports", strings.ReplaceAll(p, ":", "-")}, nil
	case "TPROXY":
		port, ok := o["--on-port"]
		if !ok {
			return nil, c.usage("TPROXY target: Parameter --on-port is required")
		}
		p, err := strconv.ParseUint(port[0], 10, 16)
		if err != nil {
			return nil, c.usage("Port \"%s\" does not resolve to anything.", port[0])
		}
		ip := "0.0.0.0"
		if c.f == IPv6 {
			ip = "::"
		}
		if v, ok := o["--on-ip"]; ok {
			a, err := netip.ParseAddr(v[0])
			if err != nil || a.Is4() != (c.f == IPv4) {
				return nil, c.usage("Bad IP address \"%s\"", v[0])
			}
			ip = a.String()
		}
		mark, mask := uint32(0), uint32(0)
		if v, ok := o["--tproxy-mark"]; ok {
			var bad *Exit
			if mark, mask, bad = c.mark(v[0]); bad != nil {
				return nil, bad
			}
		}
		return []string{"--on-port", strconv.FormatUint(p, 10), "--on-ip", ip, "--tproxy-mark", fmt.Sprintf("0x%x/0x%x", mark, mask)}, nil
	case "MARK":
		xm, x := o["--set-xmark"]
		sm, s := o["--set-mark"]
		if x == s {
			return nil, c.usage("MARK target: Parameter --set-xmark or --set-mark is required")
		}
		v := xm
		if s {
			v = sm
		}
		val, mask, err := c.mark(v[0])
		if err != nil {
			return nil, err
		}
		return []string{"--set-xmark", fmt.Sprintf("0x%x/0x%x", val, mask)}, nil
	case "DNAT":
		v, ok := o["--to-destination"]
		if !ok {
			return nil, c.usage("DNAT: Parameter --to-destination is required")
		}
		return []string{"--to-destination", v[0]}, nil
	case "TCPMSS":
		if _, ok := o["--clamp-mss-to-pmtu"]; ok {
			return []string{"--clamp-mss-to-pmtu"}, nil
		}
		if v, ok := o["--set-mss"]; ok {
			return []string{"--set-mss", v[0]}, nil
		}
		return nil, c.usage("TCPMSS target: At least one parameter is required")
	}
	return nil, nil
}

// ports reads a port or a range "lo:hi".
func (c *fakeCmd) ports(s string) (string, *Exit) {
	lo, hi, isRange := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	if !isRange {
		if err1 != nil {
			return "", c.usage("invalid port/service `%s' specified", s)
		}
		return strconv.FormatUint(a, 10), nil
	}
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || a > b {
		return "", c.usage("invalid portrange (min > max)")
	}
	return fmt.Sprintf("%d:%d", a, b), nil
}

// mark reads "VALUE" or "VALUE/MASK" (hex, octal or decimal); a missing
// mask is all ones.
func (c *fakeCmd) mark(s string) (val, mask uint32, err *Exit) {
	v, m, hasMask := strings.Cut(s, "/")
	a, err1 := strconv.ParseUint(v, 0, 32)
	b := uint64(0xffffffff)
	var err2 error
	if hasMask {
		b, err2 = strconv.ParseUint(m, 0, 32)
	}
	if err1 != nil || err2 != nil {
		return 0, 0, c.usage("Bad mark value \"%s\"", s)
	}
	return uint32(a), uint32(b), nil
}

// saveString quotes a string as iptables' xtables_save_string does: bare
// when it is only letters, digits, '_' and '-', otherwise in double quotes
// with '"', '\' and the single quote escaped by a backslash.
func saveString(s string) string {
	plain := s != "" && strings.Trim(s, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
	if plain {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' || s[i] == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// fakeIPT is the IPTables of one family of a Fake: go-iptables' methods,
// each running the same command lines as go-iptables does.
type fakeIPT struct {
	x   *Fake
	f   Family
	cmd string
}

func (p *fakeIPT) run(args ...string) ([]string, error) { return p.x.run(p.f, p.cmd, args) }

func (p *fakeIPT) List(table, chain string) ([]string, error) {
	return p.run("-t", table, "-S", chain)
}

func (p *fakeIPT) Exists(table, chain string, rulespec ...string) (bool, error) {
	_, err := p.run(append([]string{"-t", table, "-C", chain}, rulespec...)...)
	return exitOne(err)
}

func (p *fakeIPT) Insert(table, chain string, pos int, rulespec ...string) error {
	_, err := p.run(append([]string{"-t", table, "-I", chain, strconv.Itoa(pos)}, rulespec...)...)
	return err
}

func (p *fakeIPT) Append(table, chain string, rulespec ...string) error {
	_, err := p.run(append([]string{"-t", table, "-A", chain}, rulespec...)...)
	return err
}

func (p *fakeIPT) Delete(table, chain string, rulespec ...string) error {
	_, err := p.run(append([]string{"-t", table, "-D", chain}, rulespec...)...)
	return err
}

func (p *fakeIPT) ChainExists(table, chain string) (bool, error) {
	_, err := p.run("-t", table, "-S", chain, "1")
	return exitOne(err)
}

func (p *fakeIPT) ClearChain(table, chain string) error {
	_, err := p.run("-t", table, "-N", chain)
	if e, ok := err.(*Exit); ok && e.Status == 1 {
		_, err = p.run("-t", table, "-F", chain)
	}
	return err
}

func (p *fakeIPT) ClearAndDeleteChain(table, chain string) error {
	ok, err := p.ChainExists(table, chain)
	if err != nil || !ok {
		return err
	}
	if _, err := p.run("-t", table, "-F", chain); err != nil {
		return err
	}
	_, err = p.run("-t", table, "-X", chain)
	return err
}

// exitOne is go-iptables' reading of -C and -S CHAIN 1: exit status 1 is
// "no", any other failure an error.
func exitOne(err error) (bool, error) {
	if err == nil {
		return true, nil
	}
	if e, ok := err.(*Exit); ok && e.Status == 1 {
		return false, nil
	}
	return false, err
}
