package nat

import (
	"errors"
	"fmt"
)

// Mode is how intercepted connections reach a transparent proxy, which
// decides where their original destination is read from (see Destination).
type Mode uint8

const (
	// ModeRedirect: an iptables/nft REDIRECT (or DNAT) rule rewrote the
	// destination to the proxy's own address and port; the original one
	// is kept by conntrack and read with SO_ORIGINAL_DST.
	ModeRedirect Mode = iota + 1
	// ModeTProxy: a TPROXY rule delivered the packets, destination
	// untouched, to a listener with IP_TRANSPARENT; the accepted socket's
	// local address is the original destination.
	ModeTProxy
)

func (m Mode) String() string {
	switch m {
	case ModeRedirect:
		return "redirect"
	case ModeTProxy:
		return "tproxy"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "redirect" or "tproxy".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "redirect":
		return ModeRedirect, nil
	case "tproxy":
		return ModeTProxy, nil
	}
	return 0, fmt.Errorf("nat: interception mode %q: want redirect or tproxy", s)
}

// ErrNotIntercepted is returned by Destination in ModeRedirect for a
// connection no REDIRECT/DNAT rule rewrote: the client connected to the
// proxy's own address and port, and proxying it to its "original
// destination" would connect the proxy to itself.
var ErrNotIntercepted = errors.New("nat: connection was not redirected: it was addressed to the proxy itself")
