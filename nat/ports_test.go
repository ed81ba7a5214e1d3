package nat

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestParsePortRange(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    PortRange
		wantErr bool
	}{
		{"50000-50999", PortRange{50000, 50999}, false},
		{" 2121 ", PortRange{2121, 2121}, false},
		{"0", PortRange{}, false},
		{"0-0", PortRange{}, false},
		{"10-5", PortRange{}, true},
		{"0-5", PortRange{}, true},
		{"1-65536", PortRange{}, true},
		{"a-b", PortRange{}, true},
		{"", PortRange{}, true},
	} {
		got, err := ParsePortRange(c.in)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v, err %v", c.in, got, err, c.want, c.wantErr)
		}
	}
}

// TestPortsExhaustAndReuse fills a small range, checks the next Listen
// fails with ErrNoPort, and that a freed port is handed out again.
func TestPortsExhaustAndReuse(t *testing.T) {
	// Find 3 consecutive free ports by probing; skip the test's own choice
	// if something else grabs one in between (then Listen still must not
	// hand out a port outside the range).
	base := freePortBlock(t, 3)
	p := NewPorts(PortRange{base, base + 2})
	lo := netip.MustParseAddr("127.0.0.1")
	seen := map[uint16]*net.TCPListener{}
	for range 3 {
		ln, ap, err := p.Listen(lo)
		if err != nil {
			t.Fatal(err)
		}
		if ap.Port() < base || ap.Port() > base+2 || seen[ap.Port()] != nil {
			t.Fatalf("got port %d, want a new one in %d-%d", ap.Port(), base, base+2)
		}
		seen[ap.Port()] = ln
	}
	if _, _, err := p.Listen(lo); !errors.Is(err, ErrNoPort) {
		t.Fatalf("full range: err %v, want ErrNoPort", err)
	}
	seen[base+1].Close()
	ln, ap, err := p.Listen(lo)
	if err != nil || ap.Port() != base+1 {
		t.Fatalf("after freeing %d: got %v, %v", base+1, ap, err)
	}
	ln.Close()
	for port, l := range seen {
		if port != base+1 {
			l.Close()
		}
	}
}

func TestPortsAnyPort(t *testing.T) {
	ln, ap, err := NewPorts(PortRange{}).Listen(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ap.Port() == 0 || ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("got %v", ap)
	}
}

// freePortBlock returns the first of n consecutive ports free on 127.0.0.1.
func freePortBlock(t *testing.T, n int) uint16 {
	t.Helper()
	for base := 42000; base < 60000; base += n {
		ok := true
		var lns []net.Listener
		for i := range n {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(base+i)).String())
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return uint16(base)
		}
	}
	t.Fatal("no free port block")
	return 0
}

func TestAdvertised(t *testing.T) {
	local := netip.MustParseAddr("::ffff:198.51.100.1")
	if got := Advertised(netip.Addr{}, local); got != netip.MustParseAddr("198.51.100.1") {
		t.Fatalf("got %v", got)
	}
	pub := netip.MustParseAddr("203.0.113.7")
	if got := Advertised(pub, local); got != pub {
		t.Fatalf("got %v", got)
	}
}

// TestAdvertisedFor: the longest matching prefix wins, families never
// cross, and without a match the default (or the control connection's
// local address) is announced.
func TestAdvertisedFor(t *testing.T) {
	def, rules, err := ParseAdvertise("203.0.113.7, 10.0.0.0/8=10.0.0.1,10.1.0.0/16=10.1.0.1, 2001:db8::/32=2001:db8::7")
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddr("192.0.2.1")
	for client, want := range map[string]string{
		"10.9.9.9": "10.0.0.1", "10.1.2.3": "10.1.0.1", "::ffff:10.1.2.3": "10.1.0.1", "198.51.100.5": "203.0.113.7",
		"2001:db8::5": "2001:db8::7",
	} {
		if got := AdvertisedFor(rules, netip.MustParseAddr(client), def, local); got != netip.MustParseAddr(want) {
			t.Errorf("client %s: announced %s, want %s", client, got, want)
		}
	}
	if got := AdvertisedFor(rules, netip.MustParseAddr("198.51.100.5"), netip.Addr{}, local); got != local {
		t.Errorf("no rule, no default: %s, want the local address %s", got, local)
	}
	for _, bad := range []string{"", "203.0.113.7,203.0.113.8", "10.0.0.0/8=2001:db8::1", "10.0.0.0/8", "10.0.0.0/33=10.0.0.1",
		"10.0.0.0/8=10.0.0.1,10.0.0.0/8=10.0.0.2", "fe80::1%eth0", "proxy.example"} {
		if _, _, err := ParseAdvertise(bad); err == nil {
			t.Errorf("ParseAdvertise(%q) accepted", bad)
		}
	}
}

// TestPortsReserve: a reservation holds no socket, is never handed out
// twice while held, and Listen steps over it.
func TestPortsReserve(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	p := NewPorts(freeRange(t, lo, 3))
	a, relA, err := p.Reserve(lo)
	if err != nil {
		t.Fatal(err)
	}
	// No socket: the port can be bound by anyone.
	if ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(a)); err != nil {
		t.Fatalf("reserved %s holds a socket: %v", a, err)
	} else {
		ln.Close()
	}
	b, relB, err := p.Reserve(lo)
	if err != nil || b == a {
		t.Fatalf("second reservation %s, %v (first %s)", b, err, a)
	}
	ln, got, err := p.Listen(lo)
	if err != nil || got == a || got == b {
		t.Fatalf("Listen took %s, %v; reserved %s and %s", got, err, a, b)
	}
	if _, _, err := p.Reserve(lo); !errors.Is(err, ErrNoPort) {
		t.Fatalf("a fourth port out of three: %v", err)
	}
	ln.Close()
	relA()
	relA() // twice is fine
	if c, _, err := p.Reserve(lo); err != nil {
		t.Fatalf("after a release: %v", err)
	} else if c != a && c != got {
		t.Fatalf("reserved %s, want a freed port", c)
	}
	relB()
}

// TestLocalAddrs: loopback is local, a documentation address is not, and
// the reading is refreshed after localRefresh.
func TestLocalAddrs(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &LocalAddrs{now: func() time.Time { return now }}
	if !l.Has(netip.MustParseAddr("127.0.0.1")) || !l.Has(netip.MustParseAddr("::ffff:127.0.0.1")) {
		t.Error("127.0.0.1 not local")
	}
	if l.Has(netip.MustParseAddr("192.0.2.99")) {
		t.Error("192.0.2.99 local")
	}
	first := l.read
	now = now.Add(localRefresh - time.Nanosecond)
	l.Has(netip.MustParseAddr("127.0.0.1"))
	if l.read != first {
		t.Error("read again before localRefresh")
	}
	now = now.Add(time.Nanosecond)
	l.Has(netip.MustParseAddr("127.0.0.1"))
	if l.read == first {
		t.Error("not read again after localRefresh")
	}
}

// freeRange finds n consecutive ports of addr that nothing holds now, below
// the usual ephemeral range (a fixed range may be taken by another test or
// process on the machine).
func freeRange(t *testing.T, addr netip.Addr, n uint16) PortRange {
	t.Helper()
	for lo := uint16(20000); lo < 30000; lo += n {
		free := true
		for port := lo; port < lo+n && free; port++ {
			ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			return PortRange{Lo: lo, Hi: lo + n - 1}
		}
	}
	t.Fatalf("no %d free consecutive ports on %s", n, addr)
	return PortRange{}
}
