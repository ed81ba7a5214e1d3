package rules

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Proto is a transport protocol of a pinhole. FTP data is always TCP; the
// field exists so a rule states what it lets in.
type Proto uint8

// ProtoTCP is the only protocol FTP data connections use.
const ProtoTCP Proto = 6

func (p Proto) String() string {
	if p == ProtoTCP {
		return "tcp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Pinhole lets exactly one peer reach one local address and port, for a
// limited time.
type Pinhole struct {
	Proto    Proto
	Peer     netip.Addr     // the only source allowed
	Local    netip.AddrPort // the proxy's listening address and port
	Lifetime time.Duration  // the kernel-side timeout, where the backend has one
	Session  uint64         // the session that asked for it, for `rules show` and comments
}

func (p Pinhole) String() string {
	return fmt.Sprintf("%s %s→%s (session %d, %s)", p.Proto, p.Peer, p.Local, p.Session, p.Lifetime)
}

// Backend is a firewall the proxy opens pinholes in.
type Backend interface {
	// Name is the backend's name as given to --firewall.
	Name() string
	// Setup installs the backend's own state (chains, sets, hooks) and
	// removes leftovers of a previous run.
	Setup(ctx context.Context) error
	// Open adds a pinhole; when it returns nil the peer's SYN is accepted.
	Open(ctx context.Context, p Pinhole) error
	// Close removes a pinhole; one that is already gone is not an error.
	Close(ctx context.Context, p Pinhole) error
	// Teardown removes everything Setup installed.
	Teardown(ctx context.Context) error
}

// None manages nothing: the operator opens the data-port range statically.
type None struct{}

func (None) Name() string                         { return "none" }
func (None) Setup(context.Context) error          { return nil }
func (None) Open(context.Context, Pinhole) error  { return nil }
func (None) Close(context.Context, Pinhole) error { return nil }
func (None) Teardown(context.Context) error       { return nil }
