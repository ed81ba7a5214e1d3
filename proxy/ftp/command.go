package ftp

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Kind classifies the commands the proxy has to act on.
type Kind uint8

const (
	KindOther Kind = iota
	KindPASV       // PASV, and CPSV (a PASV variant also answered with 227)
	KindEPSV       // EPSV, EPSV 1, EPSV 2
	KindLPSV       // LPSV (RFC 1639)
	KindPORT
	KindEPRT
	KindLPRT
	KindEPSVAll // EPSV ALL (RFC 2428 4)
	KindAUTH    // AUTH TLS/SSL: the control channel may turn into TLS
	KindABOR
	KindQUIT
	KindREIN
	KindPASS
	KindPBSZ // PBSZ (RFC 4217): protection buffer size, 0 for TLS
	KindPROT // PROT C|S|E|P (RFC 4217): data channel protection
	KindCCC  // CCC (RFC 4217): clear the control channel
	KindUSER
)

// Command is a parsed command line.
type Command struct {
	Verb string // upper case (ASCII only)
	Arg  string // as sent, after the single separator following the verb
	Kind Kind
}

// Passive reports whether c asks the server for a passive data address.
func (c Command) Passive() bool {
	return c.Kind == KindPASV || c.Kind == KindEPSV || c.Kind == KindLPSV
}

// Active reports whether c announces an active-mode data address.
func (c Command) Active() bool {
	return c.Kind == KindPORT || c.Kind == KindEPRT || c.Kind == KindLPRT
}

// ParseCommand splits a command line's text into verb and argument.
//
// Servers split the verb off differently: vsftpd and pyftpdlib at SP only,
// ProFTPD (pr_str_get_word) at any isspace() byte after skipping leading
// whitespace. So that no server runs a PORT the proxy took for something
// else, leading SP/HT/VT/FF are skipped and the verb ends at the first of
// them: "PORT\t192,0,2,1,0,21" and " PORT ..." are PORT commands here too.
// (CR, LF and NUL make a line unclean; the proxy refuses it anyway.)
func ParseCommand(text []byte) Command {
	text = bytes.TrimLeft(text, " \t\v\f")
	verb, arg := text, []byte(nil)
	if i := bytes.IndexAny(text, " \t\v\f"); i >= 0 {
		verb, arg = text[:i], text[i+1:]
	}
	c := Command{Verb: asciiUpper(verb), Arg: string(arg)}
	switch c.Verb {
	case "PASV", "CPSV":
		c.Kind = KindPASV
	case "EPSV":
		c.Kind = KindEPSV
		if strings.EqualFold(strings.TrimSpace(c.Arg), "ALL") {
			c.Kind = KindEPSVAll
		}
	case "LPSV":
		c.Kind = KindLPSV
	case "PORT":
		c.Kind = KindPORT
	case "EPRT":
		c.Kind = KindEPRT
	case "LPRT":
		c.Kind = KindLPRT
	case "AUTH":
		c.Kind = KindAUTH
	case "PBSZ":
		c.Kind = KindPBSZ
	case "PROT":
		c.Kind = KindPROT
	case "CCC":
		c.Kind = KindCCC
	case "USER":
		c.Kind = KindUSER
	case "ABOR":
		c.Kind = KindABOR
	case "QUIT":
		c.Kind = KindQUIT
	case "REIN":
		c.Kind = KindREIN
	case "PASS":
		c.Kind = KindPASS
	}
	return c
}

// asciiUpper upper-cases ASCII letters only, as servers do (strings.ToUpper
// would also map "ſ" to "S" and bytes that are not UTF-8 to U+FFFD).
func asciiUpper(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

// String returns the command for logs, with a password hidden.
func (c Command) String() string {
	if c.Kind == KindPASS {
		return "PASS <redacted>"
	}
	if c.Arg == "" {
		return c.Verb
	}
	return c.Verb + " " + c.Arg
}

// ParseActive parses the address of a PORT, EPRT or LPRT command.
func ParseActive(c Command) (netip.AddrPort, error) {
	switch c.Kind {
	case KindPORT:
		return ParsePORT(c.Arg)
	case KindEPRT:
		return ParseEPRT(c.Arg)
	case KindLPRT:
		return ParseLPRT(c.Arg)
	}
	return netip.AddrPort{}, fmt.Errorf("%w: %s is not an active-mode command", ErrSyntax, c.Verb)
}

// Policy errors of CheckActive (reply 504).
var (
	ErrBounce         = errors.New("ftp: data address is not the client's address")
	ErrPrivilegedPort = errors.New("ftp: data port below 1024")
	ErrBadAddress     = errors.New("ftp: data address is not a unicast address")
)

// CheckActive applies RFC 2577 to an address a client announced: it must be
// the client's own control-connection address (no FTP bounce to third
// parties) and an unprivileged port. Addresses are compared unmapped, so
// "::ffff:192.0.2.1" is the same host as "192.0.2.1".
func CheckActive(announced netip.AddrPort, client netip.Addr) error {
	a := announced.Addr().Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == netip.IPv4Unspecified() ||
		a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}:
		return fmt.Errorf("%w: %s", ErrBadAddress, a)
	case a != client.Unmap().WithZone(""):
		return fmt.Errorf("%w: %s is not %s", ErrBounce, a, client.Unmap())
	case announced.Port() < 1024:
		return fmt.Errorf("%w: %d", ErrPrivilegedPort, announced.Port())
	}
	return nil
}

// TransferVerb reports whether verb starts a transfer over the data
// connection (RFC 959, RFC 3659).
func TransferVerb(verb string) bool {
	switch verb {
	case "RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD":
		return true
	}
	return false
}
