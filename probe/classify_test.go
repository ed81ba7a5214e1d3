package probe

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want AddrClass
	}{
		{"0.0.0.0", ClassUnspecified},
		{"::", ClassUnspecified},
		{"127.0.0.1", ClassLoopback},
		{"127.255.0.9", ClassLoopback},
		{"::1", ClassLoopback},
		{"::ffff:127.0.0.1", ClassLoopback},
		{"10.0.0.5", ClassPrivate},
		{"172.16.0.1", ClassPrivate},
		{"172.31.255.255", ClassPrivate},
		{"172.32.0.1", ClassPublic},
		{"192.168.1.20", ClassPrivate},
		{"::ffff:10.1.2.3", ClassPrivate},
		{"fd00::5", ClassPrivate},
		{"fc00::1", ClassPrivate},
		{"100.64.0.1", ClassCGNAT},
		{"100.127.255.254", ClassCGNAT},
		{"100.128.0.1", ClassPublic},
		{"169.254.10.1", ClassLinkLocal},
		{"fe80::1", ClassLinkLocal},
		{"fe80::1%eth0", ClassLinkLocal},
		{"192.0.2.10", ClassDocumentation},
		{"198.51.100.1", ClassDocumentation},
		{"203.0.113.9", ClassDocumentation},
		{"2001:db8::1", ClassDocumentation},
		{"3fff::1", ClassDocumentation},
		{"224.0.0.1", ClassMulticast},
		{"239.1.1.1", ClassMulticast},
		{"ff02::1", ClassMulticast},
		{"0.1.2.3", ClassReserved},
		{"240.0.0.1", ClassReserved},
		{"255.255.255.255", ClassReserved},
		{"192.0.0.8", ClassReserved},
		{"198.18.0.1", ClassReserved},
		{"100::1", ClassReserved},
		{"fec0::1", ClassReserved},
		{"64:ff9b:1::1", ClassReserved},
		{"4000::1", ClassReserved},
		{"64:ff9b::8.8.8.8", ClassPublic},
		{"8.8.8.8", ClassPublic},
		{"1.1.1.1", ClassPublic},
		{"2606:4700::1111", ClassPublic},
		{"::ffff:8.8.4.4", ClassPublic},
	} {
		if got := Classify(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Classify(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if got := Classify(netip.Addr{}); got != ClassUnspecified {
		t.Errorf("Classify(zero) = %s", got)
	}
	if !ClassPublic.Routable() || ClassPrivate.Routable() || ClassDocumentation.Routable() || ClassCGNAT.Routable() {
		t.Error("Routable")
	}
}

func TestDialable(t *testing.T) {
	lo, pub := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("203.0.113.9")
	for _, tc := range []struct {
		addr    string
		control netip.Addr
		want    bool
	}{
		{"10.0.0.5", pub, true},
		{"100.64.0.1", pub, true},
		{"198.51.100.7", pub, true},
		{"0.0.0.0", pub, false},
		{"0.0.0.0", lo, false},
		{"127.0.0.1", pub, false},
		{"127.0.0.1", lo, true},
		{"224.0.0.1", pub, false},
		{"255.255.255.255", pub, false},
		{"169.254.1.1", pub, false},
	} {
		if got, why := dialable(netip.MustParseAddr(tc.addr), tc.control); got != tc.want || !got && why == "" {
			t.Errorf("dialable(%s, control %s) = %v %q", tc.addr, tc.control, got, why)
		}
	}
}
