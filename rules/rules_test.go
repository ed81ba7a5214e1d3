package rules

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func pin(peer, local string) Pinhole {
	return Pinhole{Proto: ProtoTCP, Peer: netip.MustParseAddr(peer), Local: netip.MustParseAddrPort(local), Session: 3}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		p       Pinhole
		want    string // Peer→Local after Check, or "" when invalid
		invalid string // part of the error
	}{
		{pin("192.0.2.2", "192.0.2.1:50000"), "192.0.2.2→192.0.2.1:50000", ""},
		{pin("::ffff:192.0.2.2", "[::ffff:192.0.2.1]:50000"), "192.0.2.2→192.0.2.1:50000", ""},
		{pin("fe80::2%eth0", "[fe80::1%eth0]:50000"), "fe80::2→[fe80::1]:50000", ""},
		{pin("2001:db8::2", "192.0.2.1:50000"), "", "different address families"},
		{pin("192.0.2.2", "0.0.0.0:50000"), "", "not any"},
		{pin("::", "[2001:db8::1]:50000"), "", "not any"},
		{pin("192.0.2.2", "192.0.2.1:0"), "", "port 0"},
		{Pinhole{Proto: 17, Peer: netip.MustParseAddr("192.0.2.2"), Local: netip.MustParseAddrPort("192.0.2.1:1")}, "", "only tcp"},
		{Pinhole{Proto: ProtoTCP, Local: netip.MustParseAddrPort("192.0.2.1:1")}, "", "both addresses"},
	} {
		q, err := tc.p.Check()
		if tc.invalid != "" {
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.invalid) {
				t.Errorf("Check(%s) = %v, want ErrInvalid mentioning %q", tc.p, err, tc.invalid)
			}
			continue
		}
		if err != nil {
			t.Errorf("Check(%s): %v", tc.p, err)
			continue
		}
		if got := fmt.Sprintf("%s→%s", q.Peer, q.Local); got != tc.want {
			t.Errorf("Check(%s) = %s, want %s", tc.p, got, tc.want)
		}
	}
}

func TestTimeoutSeconds(t *testing.T) {
	for _, tc := range []struct {
		life time.Duration
		want uint32
	}{
		{0, 30},
		{-time.Second, 30},
		{time.Nanosecond, 1},
		{time.Second, 1},
		{1500 * time.Millisecond, 2},
		{30 * time.Second, 30},
		{1<<63 - 1, 2147483},
	} {
		if got := (Pinhole{Lifetime: tc.life}).TimeoutSeconds(); got != tc.want {
			t.Errorf("TimeoutSeconds(%s) = %d, want %d", tc.life, got, tc.want)
		}
	}
}

func TestComment(t *testing.T) {
	p := Pinhole{Session: 18446744073709551615}
	if s, ok := ParseComment(p.Comment()); !ok || s != p.Session {
		t.Errorf("ParseComment(%q) = %d, %v", p.Comment(), s, ok)
	}
	for _, bad := range []string{"", "ftpalg session", "ftpalg session x", "ftpalg session 1 extra", "ftpalg session -1", "other"} {
		if _, ok := ParseComment(bad); ok {
			t.Errorf("ParseComment(%q) accepted", bad)
		}
	}
}

func TestErrorText(t *testing.T) {
	err := Wrap("ipset", "setup: create set ftpalg-pinholes4", nil, "", fmt.Errorf("netlink: %w", syscall.EPERM))
	want := "rules/ipset: setup: create set ftpalg-pinholes4: no CAP_NET_ADMIN: run as root or grant CAP_NET_ADMIN (netlink: operation not permitted)"
	if err.Error() != want {
		t.Errorf("got  %q\nwant %q", err, want)
	}
	if !errors.Is(err, ErrNotPermitted) || !errors.Is(err, syscall.EPERM) {
		t.Errorf("%v: want both ErrNotPermitted and EPERM in its chain", err)
	}
	// wrapping a classified error again keeps it
	if again := Wrap("ipset", "other", nil, "", err); again != err {
		t.Errorf("Wrap of an *Error = %v, want it unchanged", again)
	}
	if Wrap("x", "y", nil, "", nil) != nil {
		t.Error("Wrap(nil) != nil")
	}
	e := &Error{Backend: "ipset", Op: "ipv6", Kind: ErrUnsupported, Hint: "IPv6 pinholes are unavailable on this host"}
	if got := e.Error(); got != "rules/ipset: ipv6: IPv6 pinholes are unavailable on this host" {
		t.Errorf("got %q", got)
	}
}

func TestNew(t *testing.T) {
	b, err := New("none", Options{})
	if err != nil || b.Name() != "none" {
		t.Fatalf("New(none) = %v, %v", b, err)
	}
	if _, ok := b.(Lister); !ok {
		t.Error("None is not a Lister")
	}
	if _, err := New("pf", Options{}); !errors.Is(err, ErrUnknownBackend) || !strings.Contains(err.Error(), "none") {
		t.Errorf("New(pf) = %v, want ErrUnknownBackend listing the names", err)
	}
}

func TestDetectOrderAndReason(t *testing.T) {
	fail := func(msg string) func(context.Context, Options) error {
		return func(context.Context, Options) error { return errors.New(msg) }
	}
	ok := func(context.Context, Options) error { return nil }
	log := zaptest.NewLogger(t)

	name, reason := detect(context.Background(), log, []Driver{
		{Name: "ipset", Probe: fail("rules/ipset: probe: create set ftpalg-probe: ipset hash:ip,port,ip not supported by this kernel: use --firewall iptables")},
		{Name: "iptables", Probe: ok},
	})
	if name != "iptables" || !strings.Contains(reason, "iptables works here") || !strings.Contains(reason, "hash:ip,port,ip not supported") {
		t.Errorf("detect = %q, %q", name, reason)
	}
	name, reason = detect(context.Background(), log, []Driver{{Name: "ipset", Probe: ok}, {Name: "iptables", Probe: ok}})
	if name != "ipset" || reason != "ipset works here" {
		t.Errorf("detect = %q, %q", name, reason)
	}
	name, reason = detect(context.Background(), log, []Driver{
		{Name: "ipset", Probe: fail("rules/ipset: no CAP_NET_ADMIN")},
		{Name: "iptables", Probe: fail("rules/iptables: no CAP_NET_ADMIN")},
	})
	if name != "none" || !strings.Contains(reason, "open --data-ports statically") || !strings.Contains(reason, "rules/iptables: no CAP_NET_ADMIN") {
		t.Errorf("detect = %q, %q", name, reason)
	}
}

func TestDataPathRegistry(t *testing.T) {
	dp, err := NewDataPath(Splice, Options{})
	if err != nil || dp != nil {
		t.Fatalf("NewDataPath(splice) = %v, %v; want nil, nil", dp, err)
	}
	if _, err := NewDataPath("ebpf", Options{}); !errors.Is(err, ErrUnknownDataPath) || !strings.Contains(err.Error(), Splice) {
		t.Errorf("NewDataPath(ebpf) = %v, want ErrUnknownDataPath listing the names", err)
	}
	if _, err := NewDataPath(Splice, Options{Instance: "Bad"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("NewDataPath with a bad instance = %v, want ErrInvalid", err)
	}
	if names := DataPathNames(); names[len(names)-1] != Splice {
		t.Errorf("DataPathNames = %v, want %q last", names, Splice)
	}
}

func TestDetectDataPathOrderAndReason(t *testing.T) {
	opts := Options{Logger: zaptest.NewLogger(t)}
	ok := func(context.Context, Options) error { return nil }
	fail := func(context.Context, Options) error {
		return &Error{Backend: "nftables", Op: "probe", Kind: ErrUnsupported, Hint: "IPv4 forwarding is off: sysctl -w net.ipv4.ip_forward=1"}
	}
	name, reason := detectDataPath(context.Background(), opts, []DataPathDriver{{Name: "nftables", Probe: ok}})
	if name != "nftables" || reason != "nftables works here" {
		t.Errorf("detect = %q, %q", name, reason)
	}
	name, reason = detectDataPath(context.Background(), opts, []DataPathDriver{{Name: "nftables", Probe: fail}})
	if name != Splice || !strings.Contains(reason, "spliced") || !strings.Contains(reason, "sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("detect = %q, %q", name, reason)
	}
	if name, _ := detectDataPath(context.Background(), opts, nil); name != Splice {
		t.Errorf("detect with nothing registered = %q", name)
	}
}

func TestOptionsCheck(t *testing.T) {
	for _, o := range []Options{{}, {Instance: "web"}, {Instance: "a_1"}, {Iptables: "nft"}, {Iptables: "legacy"}} {
		if err := o.Check(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []Options{{Instance: "thirteen_char"}, {Instance: "Web"}, {Instance: "a-b"}, {Instance: "a b"}, {Iptables: "nf_tables"}} {
		if _, err := New("none", o); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(none, %+v) = %v, want ErrInvalid", o, err)
		}
	}
	if got := (Options{Instance: "web"}).Suffix(); got != "-web" {
		t.Errorf("Suffix = %q", got)
	}
}
