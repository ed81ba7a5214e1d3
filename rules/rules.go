package rules

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
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
	Local    netip.AddrPort // the proxy's listening address and port (with Forward: the forwarded connection's destination)
	Lifetime time.Duration  // the kernel-side timeout, where the backend has one
	Session  uint64         // the session that asked for it, for `rules show` and comments
	// Forward: the pinhole admits a connection the host forwards (the
	// kernel data path, after its DNAT: Local is then the real target),
	// not one to the host itself.
	Forward bool
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
	// Open adds a pinhole, or a hold on one already open with the same
	// Key (refreshing its lifetime); when it returns nil the peer's SYN is
	// accepted. Two sessions can need the same key: a client's forward
	// pinholes of the kernel data path end at the server's passive port,
	// which the server may hand to the next session the moment the first
	// one's connection arrived.
	Open(ctx context.Context, p Pinhole) error
	// Close releases one hold on p's key, by any pinhole of that key; the
	// pinhole goes with the last. One already gone is not an error.
	Close(ctx context.Context, p Pinhole) error
	// Sync checks that the hooks, chains and sets Setup installed are
	// still in place and, when a firewall reload removed some, restores
	// them and the pinholes this process holds open (those not yet past
	// their lifetime), and says what it restored (see Syncer). It never
	// delays Open and Close by more than one kernel call.
	Sync(ctx context.Context) (Restored, error)
	// Teardown removes everything Setup installed.
	Teardown(ctx context.Context) error
}

// Lister is implemented by backends that can show and remove the pinholes
// they hold, for `ftpalg rules show|flush`. Both work in a process that did
// not call Setup (the CLI is not the daemon): they read and change the
// kernel's state, which is the only state two processes share.
type Lister interface {
	// List returns the pinholes open in the kernel now, with the session
	// that opened them and, where the backend has a kernel-side timeout,
	// the time each has left as Lifetime.
	List(ctx context.Context) ([]Pinhole, error)
	// Flush removes every pinhole; hooks, chains and sets stay.
	Flush(ctx context.Context) error
}

// Options configure a backend built by New.
type Options struct {
	// KeepHooks leaves the hooks, chains and sets in place at Teardown
	// (the pinholes are removed all the same), for hosts whose firewall
	// manager should not see rules come and go.
	KeepHooks bool
	// Iptables picks the iptables binaries the backend runs for its hooks
	// and rules: "" runs iptables/ip6tables as found on PATH, "nft" runs
	// iptables-nft/ip6tables-nft, "legacy" iptables-legacy/ip6tables-legacy.
	// It must be the variant the host's own ruleset uses: a DROP in the
	// other one still drops a connection the pinhole accepts.
	Iptables string
	// Instance, when set, is appended to the name of every kernel object
	// the backend owns (FTPALG-INPUT-web, ftpalg-pinholes4-web), so that
	// several ftpalg processes on one host keep out of each other's way:
	// without it a second process's Setup flushes the first one's
	// pinholes. Up to 12 characters of a-z, 0-9 and _.
	Instance string
	// Logger receives lifecycle lines (Setup, Teardown, detection); nil
	// logs nothing. Open and Close do not log: the proxy does.
	Logger *zap.Logger
}

// Log returns o.Logger, or a no-op logger when it is nil.
func (o Options) Log() *zap.Logger {
	if o.Logger == nil {
		return zap.NewNop()
	}
	return o.Logger
}

// Suffix is what the backend appends to its kernel objects' names: "" or
// "-" + Instance.
func (o Options) Suffix() string {
	if o.Instance == "" {
		return ""
	}
	return "-" + o.Instance
}

// Check validates o.
func (o Options) Check() error {
	if len(o.Instance) > 12 {
		return fmt.Errorf("%w: instance name %q: at most 12 characters (kernel object names are short)", ErrInvalid, o.Instance)
	}
	for _, c := range o.Instance {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("%w: instance name %q: only a-z, 0-9 and _", ErrInvalid, o.Instance)
		}
	}
	switch o.Iptables {
	case "", "nft", "legacy":
	default:
		return fmt.Errorf("%w: iptables variant %q: want nft, legacy or empty", ErrInvalid, o.Iptables)
	}
	return nil
}

// DefaultLifetime is the kernel-side lifetime of a pinhole whose Lifetime is
// zero: the proxy's default data accept timeout.
const DefaultLifetime = 30 * time.Second

// None manages nothing: the operator opens the data-port range statically.
type None struct{}

func (None) Name() string                         { return "none" }
func (None) Setup(context.Context) error          { return nil }
func (None) Open(context.Context, Pinhole) error  { return nil }
func (None) Close(context.Context, Pinhole) error { return nil }
func (None) Teardown(context.Context) error       { return nil }

// Sync has nothing to check.
func (None) Sync(context.Context) (Restored, error) { return Restored{}, nil }

// List returns no pinholes: none are ever opened.
func (None) List(context.Context) ([]Pinhole, error) { return nil, nil }

// Flush has nothing to remove.
func (None) Flush(context.Context) error { return nil }
