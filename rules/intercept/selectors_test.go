package intercept

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

func TestParseSelectors(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		in      string
		sources []netip.Prefix
		ifaces  []string
	}{
		{"", nil, nil},
		{" , ,", nil, nil},
		{"198.51.100.0/24", []netip.Prefix{pfx("198.51.100.0/24")}, nil},
		{"198.51.100.77/25", []netip.Prefix{pfx("198.51.100.77/25")}, nil}, // Install masks
		{"198.51.100.7", []netip.Prefix{pfx("198.51.100.7/32")}, nil},
		{"2001:db8:1::/64,2001:db8:1::7", []netip.Prefix{pfx("2001:db8:1::/64"), pfx("2001:db8:1::7/128")}, nil},
		{"0.0.0.0/0", []netip.Prefix{pfx("0.0.0.0/0")}, nil},
		{"lan0", nil, []string{"lan0"}},
		{"lan+, wg0 ,eth0.10,br-lan", nil, []string{"lan+", "wg0", "eth0.10", "br-lan"}},
		{"abcdefghijklmno", nil, []string{"abcdefghijklmno"}}, // 15 bytes
		{"198.51.100.0/24,lan0,2001:db8:1::/64", []netip.Prefix{pfx("198.51.100.0/24"), pfx("2001:db8:1::/64")}, []string{"lan0"}},
	} {
		srcs, ifs, err := ParseSelectors(tc.in)
		if err != nil || !slices.Equal(srcs, tc.sources) || !slices.Equal(ifs, tc.ifaces) {
			t.Errorf("ParseSelectors(%q) = %v, %q, %v; want %v, %q", tc.in, srcs, ifs, err, tc.sources, tc.ifaces)
		}
		// What it accepts, Check accepts.
		if err == nil && (len(srcs) > 0 || len(ifs) > 0) {
			c := Config{Mode: nat.ModeRedirect, Sources: srcs, Interfaces: ifs, ListenPort: 2121}
			if err := c.Check(); err != nil {
				t.Errorf("ParseSelectors(%q) accepted what Check refuses: %v", tc.in, err)
			}
		}
	}
}

func TestParseSelectorsRefuses(t *testing.T) {
	for _, in := range []string{
		"10.0.0.300",              // a mistyped address, not an interface
		"198.51.100.0/33",         // prefix too long
		"198.51.100.0/24/8",       // junk
		"192.0.2.1,300.1.1.1",     // one bad item spoils the list
		"lan0/24",                 // '/' in an interface name
		"lan 0",                   // whitespace inside an item
		"abcdefghijklmnop",        // 16 bytes
		"la+n",                    // '+' not at the end
		"-j",                      // would read as an option
		"!lan0",                   // negation
		"lan0:1",                  // alias syntax, ':' is not allowed
		"fe80::1%lan0",            // zone
		"::ffff:198.51.100.0/120", // IPv4-mapped
		"lan\"0",                  // quote
		".",                       // not a name
	} {
		srcs, ifs, err := ParseSelectors(in)
		if !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("ParseSelectors(%q) = %v, %q, %v; want ErrInvalid", in, srcs, ifs, err)
			continue
		}
		if srcs != nil || ifs != nil {
			t.Errorf("ParseSelectors(%q) returned %v, %q with its error", in, srcs, ifs)
		}
		items := strings.Split(in, ",")
		if bad := strconv.Quote(items[len(items)-1]); !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseSelectors(%q): error %q does not name the item %q", in, err, bad)
		}
	}
}
