package rules

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// A kernel data path forwards FTP data connections at the IP layer instead
// of through ftpalg's sockets, the way the kernel's FTP helper does: ftpalg
// keeps the control channel (parsing, rewriting, policy, logging) and, for
// each data connection it announces, installs a Mapping; the kernel then
// NATs that one connection straight to its real endpoint.

// Mapping is one announced data connection handed to the kernel: the first
// new TCP connection from Peer to Announced is sent on to Target (DNAT),
// from Source when Source is valid (SNAT: the far end sees ftpalg's address,
// which servers such as vsftpd insist on) or else from the peer's own
// address. A mapping serves exactly one connection, and expires in the
// kernel after Lifetime if nothing used it.
type Mapping struct {
	Peer      netip.Addr     // the only source allowed: the client (passive) or the server (active)
	Announced netip.AddrPort // the address and port the peer was told to connect to
	Target    netip.AddrPort // where the connection really goes
	Source    netip.Addr     // source address toward Target; invalid: keep the peer's
	Lifetime  time.Duration  // kernel-side timeout of an unused mapping
	Session   uint64         // the session that asked for it, for `rules show`
}

// MappingKey identifies a mapping in the kernel: the pre-NAT tuple a new
// connection is matched on (the peer's source port is not known in advance).
type MappingKey struct {
	Peer      netip.Addr
	Announced netip.AddrPort
}

// Key returns m's key.
func (m Mapping) Key() MappingKey { return MappingKey{m.Peer, m.Announced} }

func (m Mapping) String() string {
	src := "peer"
	if m.Source.IsValid() {
		src = m.Source.String()
	}
	return fmt.Sprintf("tcp %s→%s ⇒ %s (from %s, session %d, %s)", m.Peer, m.Announced, m.Target, src, m.Session, m.Lifetime)
}

// Check returns m in the form the kernel stores it (IPv4-mapped addresses
// unmapped, zones dropped) or an error wrapping ErrInvalid when the kernel
// cannot forward it: the addresses must be of one family (the kernel does
// not translate IPv4 to IPv6; ftpalg's splice path does), none may be
// unspecified, and no port may be 0.
func (m Mapping) Check() (Mapping, error) {
	clean := func(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }
	m.Peer, m.Source = clean(m.Peer), clean(m.Source)
	m.Announced = netip.AddrPortFrom(clean(m.Announced.Addr()), m.Announced.Port())
	m.Target = netip.AddrPortFrom(clean(m.Target.Addr()), m.Target.Port())
	is4 := m.Peer.Is4()
	switch {
	case !m.Peer.IsValid() || !m.Announced.Addr().IsValid() || !m.Target.Addr().IsValid():
		return m, fmt.Errorf("%w: mapping %s: peer, announced and target addresses are needed", ErrInvalid, m)
	case m.Announced.Addr().Is4() != is4 || m.Target.Addr().Is4() != is4 || m.Source.IsValid() && m.Source.Is4() != is4:
		return m, fmt.Errorf("%w: mapping %s: addresses of different families (the kernel path does not translate)", ErrInvalid, m)
	case m.Peer.IsUnspecified() || m.Announced.Addr().IsUnspecified() || m.Target.Addr().IsUnspecified() ||
		m.Source.IsValid() && m.Source.IsUnspecified():
		return m, fmt.Errorf("%w: mapping %s: an unspecified address", ErrInvalid, m)
	case m.Announced.Port() == 0 || m.Target.Port() == 0:
		return m, fmt.Errorf("%w: mapping %s: port 0", ErrInvalid, m)
	}
	return m, nil
}

// TimeoutSeconds is the mapping's kernel-side lifetime in whole seconds,
// rounded up and at least 1 (as Pinhole.TimeoutSeconds).
func (m Mapping) TimeoutSeconds() uint32 {
	return Pinhole{Lifetime: m.Lifetime}.TimeoutSeconds()
}

// Counter is what conntrack counted for one direction of a connection:
// IP-layer packets and bytes, headers included (nf_conntrack_acct).
type Counter struct{ Packets, Bytes uint64 }

// Flow is the connection a mapping carried, as conntrack sees it.
type Flow struct {
	PeerPort   uint16    // the peer's source port
	Seen       time.Time // when the connection's first packet was seen
	ToTarget   Counter   // peer → target
	FromTarget Counter   // target → peer
	// Counted: the counters are real (conntrack accounting was on when
	// the connection started); false: they are zero for want of it.
	Counted bool
	// Closed: the connection has ended (conntrack saw FIN both ways or a
	// reset), so the counters are final.
	Closed bool
}

// Forward is one mapping in the kernel, for the proxy that installed it.
type Forward interface {
	// Used is closed once the peer's connection has arrived; the mapping
	// is used up then (no second connection is forwarded).
	Used() <-chan struct{}
	// Flow returns the connection the mapping carried, with its counters
	// as of now. It fails before Used. Once conntrack has forgotten the
	// connection it returns the last reading, Closed (and fails if there
	// was none).
	Flow(ctx context.Context) (Flow, error)
	// Close removes the mapping if it is still in the kernel (the offer
	// was dropped or expired). A connection it already carried goes on:
	// conntrack holds its NAT binding. Closing again is not an error.
	Close(ctx context.Context) error
}

// DataPath forwards data connections in the kernel.
type DataPath interface {
	// Name is the data path's name ("nftables").
	Name() string
	// Setup creates the kernel objects, removes what an earlier run left,
	// checks the host's prerequisites (failing with an *Error whose Hint
	// names the exact fix, or logging a warning for what only degrades)
	// and starts watching conntrack for the mapped connections.
	Setup(ctx context.Context) error
	// Supports tells, without asking the kernel, whether m can be
	// forwarded at all: nil, or an error wrapping ErrInvalid that says
	// why not (Mapping.Check's reasons; a target on this host, which the
	// kernel delivers instead of forwarding; a peer on this host, whose
	// connections the kernel sends out, never through prerouting). The
	// proxy splices what the kernel cannot carry.
	Supports(m Mapping) error
	// Map installs m and returns when a new connection from m.Peer to
	// m.Announced would be forwarded.
	Map(ctx context.Context, m Mapping) (Forward, error)
	// Teardown stops watching and removes every kernel object Setup
	// created. Connections already forwarded go on.
	Teardown(ctx context.Context) error
}

// MappingLister is implemented by data paths that can show and remove the
// mappings held in the kernel, from any process (`ftpalg rules show|flush`).
type MappingLister interface {
	// Mappings returns the mappings in the kernel now, with the time each
	// has left as Lifetime.
	Mappings(ctx context.Context) ([]Mapping, error)
	// FlushMappings removes every mapping; connections already forwarded
	// go on.
	FlushMappings(ctx context.Context) error
}

// ErrNotUsed is returned by Forward.Flow before the mapping's connection
// has arrived.
var ErrNotUsed = errors.New("mapping not used yet")
