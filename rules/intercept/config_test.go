package intercept

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

var (
	lan4 = netip.MustParsePrefix("198.51.100.0/25")
	lan6 = netip.MustParsePrefix("2001:db8:1::/120")
)

func TestNormalizedDefaults(t *testing.T) {
	n, err := Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.77/25"), lan4}, ListenPort: 2121}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	if n.Port != 21 || n.Mark != 1 || n.Mask != 1 || n.Table != 100 {
		t.Errorf("defaults: port %d mark 0x%x/0x%x table %d", n.Port, n.Mark, n.Mask, n.Table)
	}
	if !slices.Equal(n.Sources, []netip.Prefix{lan4}) {
		t.Errorf("Sources = %v, want one masked %v", n.Sources, lan4)
	}
	if n, _ := (Config{Mark: 0x40000}).normalized(); n.Mask != 0x40000 {
		t.Errorf("Mask for Mark 0x40000 = 0x%x, want the mark's bits", n.Mask)
	}
}

func TestCheckRefuses(t *testing.T) {
	ok := Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan4}, ListenPort: 2121}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no-method", func(c *Config) { c.Mode = 0 }},
		{"bad-method", func(c *Config) { c.Mode = 7 }},
		{"no-listen-port", func(c *Config) { c.ListenPort = 0 }},
		{"mark-outside-mask", func(c *Config) { c.Mark, c.Mask = 0x3, 0x1 }},
		{"main-table", func(c *Config) { c.Table = 254 }},
		{"local-table", func(c *Config) { c.Table = 255 }},
		{"negative-table", func(c *Config) { c.Table = -1 }},
		{"mapped-source", func(c *Config) { c.Sources = []netip.Prefix{netip.MustParsePrefix("::ffff:198.51.100.0/120")} }},
		{"zero-source", func(c *Config) { c.Sources = []netip.Prefix{{}} }},
		{"iface-option", func(c *Config) { c.Interfaces = []string{"-j"} }},
		{"iface-space", func(c *Config) { c.Interfaces = []string{"lan 0"} }},
		{"iface-long", func(c *Config) { c.Interfaces = []string{"abcdefghijklmnop"} }},
		{"iface-plus-inside", func(c *Config) { c.Interfaces = []string{"la+n"} }},
		{"two-on-ip4", func(c *Config) {
			c.OnIP = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
		}},
		{"instance", func(c *Config) { c.Instance = "Web" }},
		{"variant", func(c *Config) { c.Iptables = "xtables" }},
	} {
		c := ok
		tc.mod(&c)
		if err := c.Check(); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("%s: Check() = %v, want ErrInvalid", tc.name, err)
		}
	}
	if err := ok.Check(); err != nil {
		t.Errorf("Check(%+v) = %v", ok, err)
	}
	if err := (Config{Divert: true}).Check(); err != nil {
		t.Errorf("Divert alone: %v", err)
	}
	if err := (Config{Interfaces: []string{"lan+"}, Mode: nat.ModeRedirect, ListenPort: 1}).Check(); err != nil {
		t.Errorf("interface wildcard: %v", err)
	}
}

func TestFamilies(t *testing.T) {
	for _, tc := range []struct {
		c         Config
		want      []family
		explicit6 bool
	}{
		{Config{}, nil, false},
		{Config{Divert: true}, []family{ipv4, ipv6}, false},
		{Config{Interfaces: []string{"lan0"}}, []family{ipv4, ipv6}, false},
		{Config{Sources: []netip.Prefix{lan4}, Interfaces: []string{"lan0"}}, []family{ipv4}, false},
		{Config{Sources: []netip.Prefix{lan6}}, []family{ipv6}, true},
		{Config{Sources: []netip.Prefix{lan6, lan4}}, []family{ipv4, ipv6}, true},
	} {
		got, explicit6 := tc.c.families()
		if !slices.Equal(got, tc.want) || explicit6 != tc.explicit6 {
			t.Errorf("families(%v %v divert %v) = %v %v, want %v %v", tc.c.Sources, tc.c.Interfaces, tc.c.Divert, got, explicit6, tc.want, tc.explicit6)
		}
	}
}

func TestListen(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Mode: nat.ModeRedirect, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121}, "0.0.0.0:2121 [::]:2121"},
		{Config{Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan6}, ListenPort: 2121}, "[::1]:2121"},
		{Config{Mode: nat.ModeTProxy, Interfaces: []string{"lan0"}, ListenPort: 2121,
			OnIP: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}, "192.0.2.1:2121 [::1]:2121"},
		{Config{Divert: true}, ""},
	} {
		aps, err := tc.c.Listen()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ap := range aps {
			got = append(got, ap.String())
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("Listen(%+v) = %s, want %s", tc.c, s, tc.want)
		}
	}
}

// TestWant checks the rules we ask iptables for, written as `iptables -S`
// prints them (the kernel tests check that they come back so).
func TestWant(t *testing.T) {
	c, err := Config{
		Mode: nat.ModeTProxy, Sources: []netip.Prefix{lan4, netip.MustParsePrefix("0.0.0.0/0"), lan6},
		Interfaces: []string{"lan+"}, ListenPort: 2121, Mark: 0x40000, Divert: true, Instance: "web",
	}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range []family{ipv4, ipv6} {
		for _, tw := range c.want(f) {
			for _, h := range tw.hooks {
				got = append(got, f.String()+" "+tw.table+" -A PREROUTING "+strings.Join(h, " "))
			}
			for _, cw := range tw.chains {
				for _, r := range cw.rules {
					got = append(got, f.String()+" "+tw.table+" -A "+cw.name+" "+strings.Join(r, " "))
				}
			}
		}
	}
	want := []string{
		"ipv4 mangle -A PREROUTING -p tcp -j FTPALG-DIVERT-web",
		"ipv4 mangle -A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY-web",
		"ipv4 mangle -A FTPALG-DIVERT-web -p tcp -m socket --transparent -j MARK --set-xmark 0x40000/0x40000",
		// 0.0.0.0/0 covers the family: one rule without -s
		"ipv4 mangle -A FTPALG-TPROXY-web -p tcp -j TPROXY --on-port 2121 --on-ip 127.0.0.1 --tproxy-mark 0x40000/0x40000",
		"ipv6 mangle -A PREROUTING -p tcp -j FTPALG-DIVERT-web",
		"ipv6 mangle -A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY-web",
		"ipv6 mangle -A FTPALG-DIVERT-web -p tcp -m socket --transparent -j MARK --set-xmark 0x40000/0x40000",
		"ipv6 mangle -A FTPALG-TPROXY-web -s 2001:db8:1::/120 -p tcp -j TPROXY --on-port 2121 --on-ip ::1 --tproxy-mark 0x40000/0x40000",
		"ipv6 mangle -A FTPALG-TPROXY-web -i lan+ -p tcp -j TPROXY --on-port 2121 --on-ip ::1 --tproxy-mark 0x40000/0x40000",
	}
	if !slices.Equal(got, want) {
		t.Errorf("want():\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSameSpecs(t *testing.T) {
	a := [][]string{{"-s", "2001:db8:0:0::/64", "-j", "X"}}
	b := [][]string{{"-s", "2001:db8::/64", "-j", "X"}}
	if !sameSpecs(a, b) {
		t.Error("two spellings of one prefix differ")
	}
	if sameSpecs(a, [][]string{{"-s", "2001:db8::/63", "-j", "X"}}) {
		t.Error("different prefixes compare equal")
	}
	if sameSpecs(a, append(b, b[0])) {
		t.Error("a duplicate compares equal")
	}
}

// TestChainNameLength checks our longest chain name with the longest
// instance name fits iptables' 28 characters.
func TestChainNameLength(t *testing.T) {
	for _, c := range []string{ChainRedirect, ChainTProxy, ChainDivert} {
		if n := len(c + "-abcdefghijkl"); n > 28 {
			t.Errorf("%s with a 12-character instance is %d characters, iptables allows 28", c, n)
		}
	}
}
