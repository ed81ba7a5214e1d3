package xtables

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
)

// open returns family f's Tables of x, failing t on error.
func open(t *testing.T, x *Fake, f Family) *Tables {
	t.Helper()
	tb, err := x.Open(context.Background(), f, "")
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// plant runs command lines in x, failing t on error: what a host's own
// ruleset or a crashed run left.
func plant(t *testing.T, x *Fake, f Family, cmds ...[]string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := x.Run(f, c...); err != nil {
			t.Fatalf("plant %q: %v", c, err)
		}
	}
}

func checkRules(t *testing.T, x *Fake, f Family, table string, want ...string) {
	t.Helper()
	if got := x.Rules(f, table); !slices.Equal(got, want) {
		t.Errorf("%s -t %s -S:\n%s\nwant:\n%s", f, table, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

const (
	hookLine = "-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-INPUT"
	oldHook  = "-A INPUT -j FTPALG-INPUT"
)

var (
	hostLo  = []string{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"}
	hostEst = []string{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"}
)

// TestFakeCanonical: the fake stores a rule the way `iptables -S` prints
// it (as checked against the binaries by TestFakeMatchesIptables) and
// finds it however it was spelled.
func TestFakeCanonical(t *testing.T) {
	x := NewFake()
	for _, tc := range []struct {
		f    Family
		spec string
		want string
	}{
		{IPv4, `-p tcp --syn -m conntrack --ctstate NEW -j ACCEPT`,
			`-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j ACCEPT`},
		{IPv4, `-m conntrack --ctstate ESTABLISHED,NEW -p tcp --dport 21 -j RETURN`,
			`-p tcp -m conntrack --ctstate NEW,ESTABLISHED -m tcp --dport 21 -j RETURN`},
		{IPv4, `-p tcp --dport 50000 -s 192.0.2.2 -d 192.0.2.1 -m comment --comment ftpalg_x -j ACCEPT`,
			`-s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment ftpalg_x -j ACCEPT`},
		{IPv4, `-s 198.51.100.7/24 -d 0.0.0.0/0 -p all -j DROP`, `-s 198.51.100.0/24 -j DROP`},
		{IPv6, `-s 2001:db8::2 -p 6 -j REJECT`, `-s 2001:db8::2/128 -p tcp -j REJECT --reject-with icmp6-port-unreachable`},
		{IPv4, `-p tcp -m tcp --dport 21 -m tcp --sport 7 -j ACCEPT`, `-p tcp -m tcp --sport 7 --dport 21 -j ACCEPT`},
		{IPv4, `-p tcp -m socket --transparent -j MARK --set-mark 0x1`, `-p tcp -m socket --transparent -j MARK --set-xmark 0x1/0xffffffff`},
		{IPv4, `-p tcp -m mark --mark 1/0xffffffff -j ACCEPT`, `-p tcp -m mark --mark 0x1 -j ACCEPT`},
		{IPv4, `-p tcp -m set --match-set s dst,dst,src -j ACCEPT`, `-p tcp -m set --match-set s dst,dst,src -j ACCEPT`},
	} {
		x := NewFake()
		plant(t, x, tc.f, []string{"-N", "C"})
		if _, err := x.Run(tc.f, append([]string{"-A", "C"}, strings.Fields(tc.spec)...)...); err != nil {
			t.Errorf("-A C %s: %v", tc.spec, err)
			continue
		}
		got, _ := x.Run(tc.f, "-S", "C", "1")
		if want := "-A C " + tc.want; !slices.Equal(got, []string{want}) {
			t.Errorf("-A C %s\n  got  %q\n  want %q", tc.spec, got, want)
		}
		// found in its printed spelling too
		if _, err := x.Run(tc.f, append([]string{"-D", "C"}, strings.Fields(tc.want)...)...); err != nil {
			t.Errorf("-D C %s (as printed): %v", tc.want, err)
		}
	}
	// a comment with blanks and quotes, through Tables.List and Split
	tb := open(t, x, IPv4)
	if err := tb.EnsureChain("C"); err != nil {
		t.Fatal(err)
	}
	comment := `ftpalg "session" 7 \ it's`
	if err := tb.Append("C", "-m", "comment", "--comment", comment, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	rs, err := tb.List("C")
	if err != nil || len(rs) != 1 || !slices.Equal(rs[0], []string{"-m", "comment", "--comment", comment, "-j", "ACCEPT"}) {
		t.Errorf("List(C) = %q, %v", rs, err)
	}
	if got := x.Rules(IPv4, "filter"); got[len(got)-1] != `-A C -m comment --comment "ftpalg \"session\" 7 \\ it\'s" -j ACCEPT` {
		t.Errorf("comment printed as %s", got[len(got)-1])
	}
}

// TestEnsureHookFresh: on a host with rules of its own in INPUT the hook
// goes to the top, once; a second EnsureHook only lists.
func TestEnsureHookFresh(t *testing.T) {
	x := NewFake()
	plant(t, x, IPv4, hostLo, hostEst)
	tb := open(t, x, IPv4)
	h := Hooks("")[0]
	if err := tb.EnsureChain(h.Chain); err != nil {
		t.Fatal(err)
	}
	if err := tb.EnsureHook(h); err != nil {
		t.Fatal(err)
	}
	want := []string{"-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-N FTPALG-INPUT",
		hookLine, "-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}
	checkRules(t, x, IPv4, "filter", want...)
	runs := x.Runs()
	if err := tb.EnsureHook(h); err != nil {
		t.Fatal(err)
	}
	checkRules(t, x, IPv4, "filter", want...)
	if n := x.Runs() - runs; n != 1 {
		t.Errorf("second EnsureHook ran %d commands, want 1 (the listing)", n)
	}
}

// TestEnsureHookLeftovers: what a crashed run or an older version left in
// INPUT — old-style jumps, duplicates of the hook — becomes exactly one
// hook. A hook of ours that an operator moved below their own rules stays
// where it is; another instance's hook is left alone.
func TestEnsureHookLeftovers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant [][]string
		want  []string // INPUT's rules afterwards
	}{
		{
			name: "old-style only",
			plant: [][]string{hostLo, {"-A", "INPUT", "-j", "FTPALG-INPUT"}, hostEst,
				{"-A", "INPUT", "-j", "FTPALG-INPUT"}},
			want: []string{hookLine, "-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"},
		},
		{
			name: "moved down, with old-style",
			plant: [][]string{hostLo, {"-A", "INPUT", "-j", "FTPALG-INPUT"},
				{"-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT"},
				hostEst, {"-A", "INPUT", "-j", "FTPALG-INPUT"}},
			want: []string{"-A INPUT -i lo -j ACCEPT", hookLine, "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"},
		},
		{
			// -D deletes the first match: thinning the copies out would
			// keep the one below the host's DROP
			name: "duplicated around a DROP",
			plant: [][]string{hostLo,
				{"-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT"},
				{"-A", "INPUT", "-j", "DROP"},
				{"-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT"}},
			want: []string{hookLine, "-A INPUT -i lo -j ACCEPT", "-A INPUT -j DROP"},
		},
		{
			name: "another instance",
			plant: [][]string{{"-N", "FTPALG-INPUT-web"},
				{"-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT-web"}},
			want: []string{hookLine, strings.Replace(hookLine, "FTPALG-INPUT", "FTPALG-INPUT-web", 1)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := NewFake()
			plant(t, x, IPv4, []string{"-N", "FTPALG-INPUT"})
			plant(t, x, IPv4, tc.plant...)
			tb := open(t, x, IPv4)
			h := Hooks("")[0]
			if err := tb.EnsureHook(h); err != nil {
				t.Fatal(err)
			}
			got := slices.DeleteFunc(x.Rules(IPv4, "filter"), func(l string) bool { return !strings.HasPrefix(l, "-A INPUT ") })
			if !slices.Equal(got, tc.want) {
				t.Errorf("INPUT:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			before := x.Rules(IPv4, "filter")
			if err := tb.EnsureHook(h); err != nil {
				t.Fatal(err)
			}
			if after := x.Rules(IPv4, "filter"); !slices.Equal(after, before) {
				t.Errorf("a second EnsureHook changed:\n%s", strings.Join(after, "\n"))
			}
		})
	}
}

// TestRemoval: every removal treats "already gone" as success, and they
// leave the host's rules alone; a chain still hooked cannot go, so callers
// remove the hooks first.
func TestRemoval(t *testing.T) {
	x := NewFake()
	plant(t, x, IPv4, hostLo)
	tb := open(t, x, IPv4)
	h := Hooks("")[0]
	for what, f := range map[string]func() error{
		"RemoveHooks of none": func() error { return tb.RemoveHooks(h) },
		"RemoveChain missing": func() error { return tb.RemoveChain(h.Chain) },
		"FlushChain missing":  func() error { return tb.FlushChain(h.Chain) },
		"Delete missing rule": func() error { return tb.Delete("INPUT", "-s", "192.0.2.9", "-j", "ACCEPT") },
		"Delete in missing chain": func() error {
			return tb.Delete(h.Chain, "-s", "192.0.2.9", "-j", "ACCEPT")
		},
	} {
		if err := f(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	if ok, err := tb.Exists(h.Chain, "-j", "ACCEPT"); ok || err != nil {
		t.Errorf("Exists in a missing chain = %v, %v; want false, nil", ok, err)
	}
	if ok, err := tb.ChainExists(h.Chain); ok || err != nil {
		t.Errorf("ChainExists of a missing chain = %v, %v", ok, err)
	}

	if err := tb.EnsureChain(h.Chain); err != nil {
		t.Fatal(err)
	}
	if err := tb.Append(h.Chain, "-s", "192.0.2.9", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	if err := tb.EnsureHook(h); err != nil {
		t.Fatal(err)
	}
	err := tb.RemoveChain(h.Chain)
	if err == nil || IsNotExist(err) {
		t.Errorf("RemoveChain of a hooked chain = %v; want the kernel's refusal", err)
	}
	if err := tb.RemoveHooks(h); err != nil {
		t.Fatal(err)
	}
	if err := tb.RemoveChain(h.Chain); err != nil {
		t.Fatal(err)
	}
	checkRules(t, x, IPv4, "filter", "-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-A INPUT -i lo -j ACCEPT")
}

// TestFakeErrors: the fake's failures read like the binary's, for
// IsNotExist and Classify.
func TestFakeErrors(t *testing.T) {
	x := NewFake()
	for _, tc := range []struct {
		args     []string
		status   int
		notExist bool
	}{
		{[]string{"-D", "INPUT", "-s", "192.0.2.9", "-j", "ACCEPT"}, 1, true},
		{[]string{"-D", "NOPE", "-j", "ACCEPT"}, 1, true},
		{[]string{"-F", "NOPE"}, 1, true},
		{[]string{"-X", "NOPE"}, 1, true},
		{[]string{"-A", "INPUT", "-j", "NOPE"}, 2, true},
		{[]string{"-t", "nosuch", "-S"}, 3, true},
		{[]string{"-S", "NOPE"}, 1, false}, // nft: "incompatible"
		{[]string{"-N", "INPUT"}, 1, false},
		{[]string{"-A", "INPUT", "--dport", "21", "-j", "ACCEPT"}, 2, false},
		{[]string{"-I", "INPUT", "5", "-j", "ACCEPT"}, 1, false},
		{[]string{"-X", "INPUT"}, 4, false},
		{[]string{"-A", "INPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "1"}, 4, false},
	} {
		_, err := x.Run(IPv4, tc.args...)
		e, ok := errors.AsType[*Exit](err)
		if !ok || e.Status != tc.status || IsNotExist(err) != tc.notExist {
			t.Errorf("%q: %v; want exit status %d, IsNotExist %v", tc.args, err, tc.status, tc.notExist)
		}
	}
	if _, err := x.Run(IPv4, "-S", "NOPE"); err == nil || !strings.Contains(err.Error(), "incompatible, use 'nft' tool") {
		t.Errorf("-S NOPE with nft: %v", err)
	}
	x.Mode = "legacy"
	if _, err := x.Run(IPv4, "-S", "NOPE"); !IsNotExist(err) {
		t.Errorf("-S NOPE with legacy: %v, want No chain/target/match", err)
	}

	// the Fail hook: a missing binary, no capability
	x.Fail = func(f Family, args []string) error {
		if f == IPv6 {
			return &exec.Error{Name: "ip6tables", Err: exec.ErrNotFound}
		}
		if args[0] == "-t" && args[2] == "-N" {
			return &Exit{Status: 4, Msg: "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"}
		}
		return nil
	}
	if _, err := x.Open(context.Background(), IPv6, ""); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("Open(IPv6) with ip6tables missing: %v", err)
	} else if kind, _ := Classify(err); kind != rules.ErrUnsupported {
		t.Errorf("Classify(%v) = %v, want ErrUnsupported", err, kind)
	}
	err := open(t, x, IPv4).EnsureChain("FTPALG-INPUT")
	if kind, hint := Classify(err); kind != rules.ErrNotPermitted || hint != rules.HintNotPermitted {
		t.Errorf("Classify(%v) = %v, %q; want ErrNotPermitted", err, kind, hint)
	}
	if !strings.HasPrefix(err.Error(), "running [iptables -t filter -N FTPALG-INPUT --wait]: exit status 4: ") {
		t.Errorf("error text %q: want go-iptables' form", err)
	}
}

// TestFakeLoaded: a legacy table is loaded by the first command naming
// it; nf_tables tables always count as loaded, and legacy tables next to
// them make a warning.
func TestFakeLoaded(t *testing.T) {
	x := &Fake{Mode: "legacy"}
	nat := open(t, x, IPv4).In("nat")
	if nat.Loaded() {
		t.Error("legacy nat loaded before any command")
	}
	if _, err := nat.ChainExists("FTPALG-REDIRECT"); err != nil {
		t.Fatal(err)
	}
	if !nat.Loaded() {
		t.Error("legacy nat not loaded after listing it")
	}
	if open(t, x, IPv6).In("nat").Loaded() {
		t.Error("listing IPv4's nat loaded IPv6's")
	}

	y := &Fake{Legacy: map[Family][]string{IPv4: {"filter", "nat"}}}
	if !open(t, y, IPv4).In("mangle").Loaded() {
		t.Error("an nf_tables table not loaded")
	}
	if w := open(t, y, IPv4).OtherVariantWarning(); !strings.Contains(w, "iptables-legacy tables are loaded as well (filter,nat)") {
		t.Errorf("OtherVariantWarning = %q", w)
	}
	if w := open(t, y, IPv6).OtherVariantWarning(); w != "" {
		t.Errorf("IPv6 OtherVariantWarning = %q, want none", w)
	}
}

// crossCheck is a script of command lines, run against each iptables
// variant in a namespace and against a Fake of that mode: every answer
// (exit status and message) and the resulting tables must be the same. A
// "~" inside an argument stands for a blank.
var crossCheck = []struct {
	f    Family
	args string
}{
	{IPv4, "-N FTPALG-INPUT"},
	{IPv4, "-N FTPALG-INPUT"},
	{IPv4, "-A INPUT -p tcp --syn -m conntrack --ctstate NEW -j FTPALG-INPUT"},
	{IPv4, "-A INPUT -j FTPALG-INPUT"},
	{IPv4, "-I INPUT 1 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j FTPALG-INPUT"},
	{IPv4, "-A FTPALG-INPUT -s 192.0.2.2 -d 192.0.2.1 -p tcp --dport 50000 -m comment --comment ftpalg_session_5 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m comment --comment plain_word-1 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m comment --comment a.b -j ACCEPT"},
	{IPv4, `-A FTPALG-INPUT -p tcp -m comment --comment ftpalg~"session"~\~it's -j ACCEPT`},
	{IPv4, "-A FTPALG-INPUT -p tcp -m comment --comment ftpalg~session~7 -j ACCEPT"},
	{IPv4, `-D FTPALG-INPUT -p tcp -m comment --comment ftpalg~"session"~\~it's -j ACCEPT`},
	{IPv4, "-A FTPALG-INPUT -m conntrack --ctstate ESTABLISHED,NEW,RELATED -p tcp --dport 21 --syn -j RETURN"},
	{IPv4, "-A FTPALG-INPUT -p tcp --tcp-flags SYN,RST SYN -s 198.51.100.7/24 -j DROP"},
	{IPv4, "-A FTPALG-INPUT -i lan+ -o wan0 -p 6 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -s 0.0.0.0/0 -p all -j REJECT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m mark --mark 0x1/0x1 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m mark --mark 1 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m tcp --sport 1:2 --dport 21 -m conntrack --ctstate NEW -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m set --match-set ftpalg-xcheck dst,dst,src -j ACCEPT"},
	{IPv4, "-C FTPALG-INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 50000 -m comment --comment ftpalg_session_5 -j ACCEPT"},
	{IPv4, "-C FTPALG-INPUT -s 192.0.2.3 -p tcp -j ACCEPT"},
	{IPv4, "-D FTPALG-INPUT -p tcp -d 192.0.2.1 --dport 50000 -s 192.0.2.2 -m comment --comment ftpalg_session_5 -j ACCEPT"},
	{IPv4, "-D FTPALG-INPUT -p tcp -d 192.0.2.1 --dport 50000 -s 192.0.2.2 -m comment --comment ftpalg_session_5 -j ACCEPT"},
	{IPv4, "-D NOPE -j ACCEPT"},
	{IPv4, "-C NOPE -j ACCEPT"},
	{IPv4, "-S NOPE"},
	{IPv4, "-S NOPE 1"},
	{IPv4, "-S FTPALG-INPUT 1"},
	{IPv4, "-S FTPALG-INPUT 99"},
	{IPv4, "-S FTPALG-INPUT 0"},
	{IPv4, "-S INPUT"},
	{IPv4, "-F NOPE"},
	{IPv4, "-X NOPE"},
	{IPv4, "-X FTPALG-INPUT"},
	{IPv4, "-X INPUT"},
	{IPv4, "-A FTPALG-INPUT -j NOPE"},
	{IPv4, "-A FTPALG-INPUT --foo -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT --dport 21 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -m foo -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -j ACCEPT -j DROP"},
	{IPv4, "-A FTPALG-INPUT -p tcp --dport 21 --dport 22 -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -p tcp -m conntrack --ctstate FOO -j ACCEPT"},
	{IPv4, "-A FTPALG-INPUT -s 2001:db8::1 -j ACCEPT"},
	{IPv4, "-A NOPE -j ACCEPT"},
	{IPv4, "-I NOPE 1 -j ACCEPT"},
	{IPv4, "-I FTPALG-INPUT 50 -j ACCEPT"},
	{IPv4, "-I FTPALG-INPUT 0 -j ACCEPT"},
	{IPv4, "-I FTPALG-INPUT 2 -j DROP"},
	{IPv4, "-D FTPALG-INPUT 99"},
	{IPv4, "-D FTPALG-INPUT 2"},
	{IPv4, "-N ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"},
	{IPv4, "-N EMPTY"},
	{IPv4, "-N REF"},
	{IPv4, "-A REF -j EMPTY"},
	{IPv4, "-X EMPTY"},
	{IPv4, "-F REF"},
	{IPv4, "-X EMPTY"},
	{IPv4, "-X REF"},
	{IPv4, "-N DIRTY"},
	{IPv4, "-A DIRTY -j ACCEPT"},
	{IPv4, "-X DIRTY"},
	{IPv4, "-F DIRTY"},
	{IPv4, "-X DIRTY"},
	{IPv4, "-P FORWARD DROP"},
	{IPv4, "-P NOPE DROP"},
	{IPv4, "-P FTPALG-INPUT DROP"},
	{IPv4, "-A INPUT -p tcp -j REDIRECT --to-ports 1"},
	{IPv4, "-t nosuch -S"},
	{IPv4, "-t nat -N FTPALG-REDIRECT"},
	{IPv4, "-t nat -A FTPALG-REDIRECT -p tcp -j REDIRECT --to-ports 9999"},
	{IPv4, "-t nat -A FTPALG-REDIRECT -s 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 9999-10000"},
	{IPv4, "-t nat -A FTPALG-REDIRECT -j REDIRECT --to-ports 1"},
	{IPv4, "-t nat -A PREROUTING -s 198.51.100.0/24 -p tcp --dport 21 -j FTPALG-REDIRECT"},
	{IPv4, "-t nat -I PREROUTING 1 -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT"},
	{IPv4, "-t nat -A PREROUTING -i wan0 -p tcp --dport 8080 -j DNAT --to-destination 198.51.100.20:80"},
	{IPv4, "-t nat -A POSTROUTING -o wan0 -j MASQUERADE"},
	{IPv4, "-t nat -A PREROUTING -p tcp -j TPROXY --on-port 1"},
	{IPv4, "-t nat -A INPUT -p tcp -j REDIRECT --to-ports 1"},
	{IPv4, "-t nat -X FTPALG-INPUT"},
	{IPv4, "-t nat -S FTPALG-INPUT"},
	{IPv4, "-t mangle -N FTPALG-TPROXY"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -j TPROXY --on-port 9999 --tproxy-mark 0x1/0x1"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -j TPROXY --on-port 9999 --on-ip 127.0.0.1 --tproxy-mark 0x1"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -j TPROXY --on-port 9999"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -m socket --transparent -j MARK --set-mark 0x1"},
	{IPv4, "-t mangle -A FTPALG-TPROXY -p tcp -m socket -j MARK --set-mark 0x1/0x3"},
	{IPv4, "-t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"},
	{IPv4, "-t mangle -A INPUT -p tcp -j TPROXY --on-port 1"},
	{IPv4, "-t mangle -A PREROUTING -j TPROXY --on-port 1"},
	{IPv4, "-t mangle -I PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY"},
	{IPv4, "-t mangle -A PREROUTING -i wan0 -j MARK --set-xmark 0x100/0x100"},
	{IPv4, "-t mangle -D PREROUTING -p tcp --dport 21 -j FTPALG-TPROXY"},
	{IPv6, "-N X"},
	{IPv6, "-A X -s 2001:db8::2 -d 2001:db8:1::/64 -p tcp --dport 5 -j ACCEPT"},
	{IPv6, "-A X -s ::/0 -j ACCEPT"},
	{IPv6, "-A X -s 2001:db8::1/64 -j REJECT"},
	{IPv6, "-A X -s 192.0.2.1 -j ACCEPT"},
	{IPv6, "-D X 1"},
	{IPv6, "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port 9999 --tproxy-mark 0x1/0x1"},
	{IPv6, "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port 9999 --on-ip ::1 --tproxy-mark 0x1/0x1"},
	{IPv6, "-S NOPE"},
}

// TestFakeMatchesIptables runs crossCheck against iptables-nft and
// iptables-legacy in fresh namespaces (as root) and against a Fake of each
// mode: the fake must answer every command as the binary does, and end
// with the same tables. This is what makes the fake's other tests, and the
// backends' tests that use it, worth something.
func TestFakeMatchesIptables(t *testing.T) {
	for _, v := range nstest.Variants(t) {
		t.Run(v, func(t *testing.T) {
			nstest.Require(t, nstest.Cmd("4", v), nstest.Cmd("6", v), "ipset")
			n := nstest.New(t)
			n.Run(t, "ipset", "create", "ftpalg-xcheck", "hash:ip,port,ip")
			x := &Fake{Mode: map[string]string{"nft": "nf_tables", "legacy": "legacy"}[v]}
			fam := map[Family]string{IPv4: "4", IPv6: "6"}
			for _, c := range crossCheck {
				args := strings.Fields(c.args)
				for i := range args {
					args[i] = strings.ReplaceAll(args[i], "~", " ")
				}
				var stdout, stderr bytes.Buffer
				status := 0
				n.Do(t, func() {
					cmd := exec.Command(nstest.Cmd(fam[c.f], v), append([]string{"-w"}, args...)...)
					cmd.Stdout, cmd.Stderr = &stdout, &stderr
					if err := cmd.Run(); err != nil {
						e, ok := errors.AsType[*exec.ExitError](err)
						if !ok {
							t.Fatal(err)
						}
						status = e.ExitCode()
					}
				})
				out, err := x.Run(c.f, args...)
				fstatus, fmsg := 0, ""
				if e, ok := errors.AsType[*Exit](err); ok {
					fstatus, fmsg = e.Status, e.Msg
				} else if err != nil {
					t.Fatal(err)
				}
				if fstatus != status || fmsg != stderr.String() {
					t.Errorf("%s %s:\n  binary: exit %d %q\n  fake:   exit %d %q", c.f, c.args, status, stderr.String(), fstatus, fmsg)
				}
				if want := strings.Join(out, "\n"); status == 0 && strings.TrimSpace(stdout.String()) != want {
					t.Errorf("%s %s: printed\n%s\nfake:\n%s", c.f, c.args, stdout.String(), want)
				}
			}
			for f, arg := range fam {
				for _, table := range []string{"filter", "nat", "mangle"} {
					got := strings.TrimSpace(n.Run(t, nstest.Cmd(arg, v), "-w", "-t", table, "-S"))
					if want := strings.Join(x.Rules(f, table), "\n"); got != want {
						t.Errorf("%s -t %s -S:\n%s\nfake:\n%s", f, table, got, want)
					}
				}
			}
		})
	}
}

// TestSyncHook: SyncHook says whether it had to insert the hook, HasHook
// finds it in one command, and a hook's Match is part of its spec.
func TestSyncHook(t *testing.T) {
	x := NewFake()
	plant(t, x, IPv4, hostLo, []string{"-N", "FTPALG-INPUT"})
	tb := open(t, x, IPv4)
	h := Hooks("", "-m", "set", "--match-set", "s4", "dst,dst,src")[0]
	for i, want := range []bool{true, false} {
		inserted, err := tb.SyncHook(h)
		if err != nil || inserted != want {
			t.Fatalf("SyncHook #%d = %v, %v; want %v", i+1, inserted, err, want)
		}
	}
	checkRules(t, x, IPv4, "filter", "-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-N FTPALG-INPUT",
		"-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m set --match-set s4 dst,dst,src -j FTPALG-INPUT",
		"-A INPUT -i lo -j ACCEPT")
	runs := x.Runs()
	if ok, err := tb.HasHook(h); !ok || err != nil {
		t.Errorf("HasHook = %v, %v; want true", ok, err)
	}
	if n := x.Runs() - runs; n != 1 {
		t.Errorf("HasHook ran %d commands, want 1", n)
	}
	plant(t, x, IPv4, []string{"-F", "INPUT"})
	if ok, err := tb.HasHook(h); ok || err != nil {
		t.Errorf("HasHook after -F INPUT = %v, %v; want false", ok, err)
	}
	plant(t, x, IPv4, []string{"-X", "FTPALG-INPUT"})
	if ok, err := tb.HasHook(h); ok || err != nil {
		t.Errorf("HasHook with the chain gone = %v, %v; want false", ok, err)
	}
}

// TestGeneration: the nf_tables generation stays put while the tables are
// only read and moves with every change, in the kernel (iptables-nft in a
// namespace, as root) as in an nf_tables Fake; legacy has none.
func TestGeneration(t *testing.T) {
	check := func(t *testing.T, tb *Tables, run func(args ...string)) {
		t.Helper()
		g0, ok := tb.Generation()
		if !ok {
			t.Fatal("no generation")
		}
		run("-S")
		run("-C", "INPUT", "-j", "ACCEPT")
		if g, _ := tb.Generation(); g != g0 {
			t.Errorf("generation moved from %d to %d with reads only", g0, g)
		}
		run("-N", "FTPALG-GEN")
		g1, _ := tb.Generation()
		if g1 == g0 {
			t.Errorf("generation stayed at %d after -N", g0)
		}
		run("-X", "FTPALG-GEN")
		if g, _ := tb.Generation(); g == g1 {
			t.Errorf("generation stayed at %d after -X", g1)
		}
	}
	t.Run("fake", func(t *testing.T) {
		x := NewFake()
		check(t, open(t, x, IPv4), func(args ...string) { _, _ = x.Run(IPv4, args...) })
		legacy := &Fake{Mode: "legacy"}
		if _, ok := open(t, legacy, IPv4).Generation(); ok {
			t.Error("a legacy Fake has a generation")
		}
	})
	t.Run("kernel", func(t *testing.T) {
		nstest.Require(t, "iptables-nft", "iptables-legacy")
		n := nstest.New(t)
		n.Do(t, func() {
			tb, err := New(context.Background(), IPv4, "nft")
			if err != nil {
				t.Fatal(err)
			}
			check(t, tb, func(args ...string) { _ = exec.Command("iptables-nft", append([]string{"-w"}, args...)...).Run() })
			legacy, err := New(context.Background(), IPv4, "legacy")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := legacy.Generation(); ok {
				t.Error("legacy Tables have a generation")
			}
		})
	})
}

// TestFakeRestore: Restore replaces one table at once, leaves the others,
// and on a failing line leaves the table as it was.
func TestFakeRestore(t *testing.T) {
	x := NewFake()
	plant(t, x, IPv4, []string{"-N", "FTPALG-INPUT"}, []string{"-A", "INPUT", "-j", "FTPALG-INPUT"},
		[]string{"-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"})
	g0, _ := open(t, x, IPv4).Generation()
	if err := x.Restore(IPv4, "filter", []string{"-P", "INPUT", "DROP"}, hostLo); err != nil {
		t.Fatal(err)
	}
	checkRules(t, x, IPv4, "filter", "-P INPUT DROP", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-A INPUT -i lo -j ACCEPT")
	checkRules(t, x, IPv4, "nat", "-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT",
		"-A POSTROUTING -j MASQUERADE")
	if g, _ := open(t, x, IPv4).Generation(); g == g0 {
		t.Error("Restore did not move the generation")
	}
	before := x.Rules(IPv4, "filter")
	if err := x.Restore(IPv4, "filter", hostEst, []string{"-A", "INPUT", "-j", "NOWHERE"}); err == nil {
		t.Error("Restore with a jump to no chain succeeded")
	}
	checkRules(t, x, IPv4, "filter", before...)
}
