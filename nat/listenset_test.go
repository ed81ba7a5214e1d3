package nat

import (
	"net"
	"strconv"
	"testing"
)

// TestListenSet: connections are told apart by the listener that accepted
// them, wildcard listeners included.
func TestListenSet(t *testing.T) {
	listen := func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	implicit, explicit := listen("0.0.0.0:0"), listen("127.0.0.1:0")
	var set ListenSet
	accepted := func(ln net.Listener) net.Conn {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	ci, ce := accepted(implicit), accepted(explicit)
	if set.Has(ci) {
		t.Error("an empty set has a connection")
	}
	set.Set(implicit)
	if !set.Has(ci) || set.Has(ce) {
		t.Errorf("wildcard listener: Has = %v (its own), %v (the other's)", set.Has(ci), set.Has(ce))
	}
	set.Set(explicit)
	if set.Has(ci) || !set.Has(ce) {
		t.Errorf("specific listener: Has = %v (the other's), %v (its own)", set.Has(ci), set.Has(ce))
	}
}
