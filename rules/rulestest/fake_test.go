package rulestest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

var (
	peer  = netip.MustParseAddr("192.0.2.2")
	local = netip.MustParseAddrPort("192.0.2.1:50000")
)

// TestRefresh: a second Open of a key replaces the pinhole (new session
// and lifetime, as ipset replaces its element) and counts as a refresh,
// not as an open; one Close of the key, from any session, removes it.
func TestRefresh(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	p := rules.Pinhole{Proto: rules.ProtoTCP, Peer: peer, Local: local, Lifetime: 30 * time.Second, Session: 1}
	q := p
	q.Session, q.Lifetime = 2, time.Minute
	q.Peer = netip.AddrFrom16(peer.As16()) // the same key, spelled IPv4-mapped
	for _, x := range []rules.Pinhole{p, q} {
		if err := f.Open(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	want := q
	want.Peer = peer
	if got := f.Pinholes(); !slices.Equal(got, []rules.Pinhole{want}) {
		t.Errorf("after re-open: %v, want [%v]", got, want)
	}
	if opened, closed := f.Counts(); opened != 1 || closed != 0 || f.Refreshed() != 1 {
		t.Errorf("Counts = %d, %d, Refreshed = %d; want 1, 0, 1", opened, closed, f.Refreshed())
	}
	if err := f.Close(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx, q); err != nil {
		t.Fatal(err)
	}
	if got := f.Pinholes(); len(got) != 0 {
		t.Errorf("after Close: %v", got)
	}
	if opened, closed := f.Counts(); opened != 1 || closed != 1 {
		t.Errorf("Counts = %d, %d; want 1, 1", opened, closed)
	}
}

// TestFailOpen: FailOpen fails every Open of a valid pinhole; an invalid
// one is still rules.ErrInvalid.
func TestFailOpen(t *testing.T) {
	f := NewFake()
	no := errors.New("no")
	f.FailOpen = no
	p := rules.Pinhole{Proto: rules.ProtoTCP, Peer: peer, Local: local}
	if err := f.Open(context.Background(), p); err != no {
		t.Errorf("Open = %v, want FailOpen", err)
	}
	p.Local = netip.AddrPortFrom(local.Addr(), 0)
	if err := f.Open(context.Background(), p); !errors.Is(err, rules.ErrInvalid) {
		t.Errorf("Open(port 0) = %v, want ErrInvalid", err)
	}
	if len(f.Pinholes()) != 0 {
		t.Error("a failed Open left a pinhole")
	}
}
