package rules

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
)

// The kinds of failure a backend reports. Each backend classifies its
// library's errors once, at its boundary, into an *Error whose Kind is one
// of these, so callers test with errors.Is and never parse library text.
var (
	// ErrNotPermitted: the process lacks CAP_NET_ADMIN.
	ErrNotPermitted = errors.New("not permitted")
	// ErrUnsupported: the kernel or the host's tools lack something the
	// backend needs (a set type, a match, a binary, an address family).
	ErrUnsupported = errors.New("not supported")
	// ErrInvalid: the pinhole cannot be expressed (mixed address families,
	// an unspecified local address, port 0, a protocol other than TCP).
	ErrInvalid = errors.New("invalid pinhole")
	// ErrNotReady: Open before Setup, or the backend's kernel objects were
	// removed behind its back.
	ErrNotReady = errors.New("not set up")
	// ErrUnknownBackend: New or Detect was given a name no backend
	// registered.
	ErrUnknownBackend = errors.New("unknown firewall backend")
	// ErrUnknownDataPath: NewDataPath was given a name no data path
	// registered.
	ErrUnknownDataPath = errors.New("unknown data path")
)

// Error is a backend failure: which backend, what it was doing, what kind of
// failure it is, what the operator can do, and the library's own error.
type Error struct {
	Backend string // "ipset", "iptables"
	Op      string // what failed: "setup: create set ftpalg-pinholes4"
	Kind    error  // ErrNotPermitted, ErrUnsupported, …; nil when unclassified
	Hint    string // what to do, for the operator: "run as root or grant CAP_NET_ADMIN"
	Err     error  // the underlying error
}

// Error reads "rules/ipset: setup: create set ftpalg-pinholes4: no
// CAP_NET_ADMIN: run as root or grant CAP_NET_ADMIN (operation not
// permitted)".
func (e *Error) Error() string {
	s := "rules/" + e.Backend + ": " + e.Op
	switch {
	case e.Hint != "":
		s += ": " + e.Hint
		if e.Err != nil {
			s += " (" + oneLine(e.Err.Error()) + ")"
		}
	case e.Err != nil:
		s += ": " + oneLine(e.Err.Error())
	case e.Kind != nil:
		s += ": " + e.Kind.Error()
	}
	return s
}

// oneLine folds the line breaks of a binary's stderr into spaces, so an
// error stays one log field.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Unwrap lets errors.Is find both the kind and the underlying error.
func (e *Error) Unwrap() []error {
	var out []error
	if e.Kind != nil {
		out = append(out, e.Kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// Hints shared by the backends.
const (
	HintNotPermitted = "no CAP_NET_ADMIN: run as root or grant CAP_NET_ADMIN"
)

// Wrap classifies err for backend and op, knowing only the failures every
// backend shares: a missing capability and a missing binary. A backend
// classifies its own library's errors first and passes kind and hint; when
// kind is nil Wrap tries the shared ones. An err that is already an *Error
// is returned as is, and nil stays nil.
func Wrap(backend, op string, kind error, hint string, err error) error {
	if err == nil && kind == nil {
		return nil
	}
	if e, ok := errors.AsType[*Error](err); ok && kind == nil {
		return e
	}
	if kind == nil {
		switch {
		case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
			kind, hint = ErrNotPermitted, HintNotPermitted
		case errors.Is(err, exec.ErrNotFound):
			kind = ErrUnsupported
			if hint == "" {
				hint = "a binary the backend runs is not installed"
			}
		}
	}
	return &Error{Backend: backend, Op: op, Kind: kind, Hint: hint, Err: err}
}
