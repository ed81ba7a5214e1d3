package ftp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Errors of the address parsers. All wrap ErrSyntax or ErrFamily so callers
// can tell a malformed argument (501) from an unsupported family (522).
var (
	ErrSyntax = errors.New("ftp: malformed address")
	ErrFamily = errors.New("ftp: network protocol not supported")
)

// RFC 2428 network protocol numbers.
const (
	NetPrtIPv4 = 1
	NetPrtIPv6 = 2
)

func syntaxErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSyntax}, a...)...)
}

// ParsePASV parses the text of a 227 reply: h1,h2,h3,h4,p1,p2. Following RFC
// 1123 4.1.2.6 it takes the tuple from the first parenthesised group, or,
// without parentheses, from the first digit. Numbers are decimal ("010" is
// ten, never octal), 0..255, exactly six of them; anything else is an error,
// as is an address that is not a plain IPv4 address.
func ParsePASV(text string) (netip.AddrPort, error) {
	var rest string
	paren := false
	if i := strings.IndexByte(text, '('); i >= 0 {
		rest, paren = text[i+1:], true
	} else {
		i := strings.IndexAny(text, "0123456789")
		if i < 0 {
			return netip.AddrPort{}, syntaxErr("227 without an address")
		}
		if i > 0 && (text[i-1] == '-' || text[i-1] == '+') {
			return netip.AddrPort{}, syntaxErr("signed number in 227")
		}
		rest = text[i:]
	}
	nums, rest, err := byteList(rest, 6)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if paren {
		rest = strings.TrimLeft(rest, " ")
		if !strings.HasPrefix(rest, ")") {
			return netip.AddrPort{}, syntaxErr("227 tuple not closed by ')'")
		}
	} else if rest != "" && (isDigit(rest[0]) || rest[0] == ',') {
		return netip.AddrPort{}, syntaxErr("227 tuple has trailing numbers")
	}
	return tupleAddr(nums)
}

// tupleAddr turns h1,h2,h3,h4,p1,p2 into an address; port 0 is an error.
func tupleAddr(nums []byte) (netip.AddrPort, error) {
	p := uint16(nums[4])<<8 | uint16(nums[5])
	if p == 0 {
		return netip.AddrPort{}, syntaxErr("port 0")
	}
	ip := netip.AddrFrom4([4]byte{nums[0], nums[1], nums[2], nums[3]})
	return netip.AddrPortFrom(ip, p), nil
}

// byteList parses exactly n comma-separated decimal numbers 0..255 at the
// start of s. Spaces are allowed around commas (some servers send them) but
// not inside numbers.
func byteList(s string, n int) ([]byte, string, error) {
	out := make([]byte, 0, n)
	s = strings.TrimLeft(s, " ")
	for i := 0; i < n; i++ {
		if i > 0 {
			s = strings.TrimLeft(s, " ")
			if s == "" || s[0] != ',' {
				return nil, s, syntaxErr("want %d numbers, got %d", n, i)
			}
			s = strings.TrimLeft(s[1:], " ")
		}
		v, r, err := decimal(s, 255)
		if err != nil {
			return nil, s, err
		}
		out = append(out, byte(v))
		s = r
	}
	return out, s, nil
}

// decimal parses an unsigned decimal number at the start of s, at most max.
// Leading zeros are allowed (decimal, not octal) up to 5 digits in all.
func decimal(s string, max int) (int, string, error) {
	i := 0
	v := 0
	for i < len(s) && isDigit(s[i]) {
		if i >= 5 {
			return 0, s, syntaxErr("number too long")
		}
		v = v*10 + int(s[i]-'0')
		i++
	}
	if i == 0 {
		return 0, s, syntaxErr("number expected at %q", clip(s))
	}
	if v > max {
		return 0, s, syntaxErr("number %d out of range", v)
	}
	return v, s[i:], nil
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

func clip(s string) string {
	if len(s) > 16 {
		return s[:16] + "..."
	}
	return s
}

// EPSVReply is a parsed 229 reply.
type EPSVReply struct {
	Port uint16
	// Addr is set only by servers that put an address in the reply (the
	// glFTPd "CEPR" form "(|1|192.0.2.10|40000|)"); RFC 2428 leaves the
	// first two fields empty and the data address is the control peer.
	Addr netip.Addr
}

// ParseEPSV parses the text of a 229 reply: (<d><d><d><port><d>). The
// delimiter may be any printable ASCII character but digits (RFC 2428 allows
// 33..126; '|' usual, '!' from IBM servers) and must be the same throughout.
// Two forms seen in the field are also accepted because they are
// unambiguous: a missing first delimiter "(||port|)" (BulletProof) and the
// EPRT-like "(|1|addr|port|)" (glFTPd CEPR).
func ParseEPSV(text string) (EPSVReply, error) {
	i := strings.IndexByte(text, '(')
	if i < 0 {
		return EPSVReply{}, syntaxErr("229 without '('")
	}
	s := text[i+1:]
	j := strings.IndexByte(s, ')')
	if j < 0 {
		return EPSVReply{}, syntaxErr("229 without ')'")
	}
	s = s[:j]
	if len(s) < 3 {
		return EPSVReply{}, syntaxErr("229 tuple too short")
	}
	d := s[0]
	if d < 33 || d > 126 || isDigit(d) {
		return EPSVReply{}, syntaxErr("bad delimiter %q", d)
	}
	if s[len(s)-1] != d {
		return EPSVReply{}, syntaxErr("229 tuple does not end with its delimiter")
	}
	fields := strings.Split(s[1:len(s)-1], string(d))
	var r EPSVReply
	var portField string
	switch len(fields) {
	case 3: // (|||port|) or CEPR (|1|addr|port|)
		if fields[0] != "" || fields[1] != "" {
			ap, err := parseExtended(fields)
			if err != nil {
				return EPSVReply{}, err
			}
			return EPSVReply{Port: ap.Port(), Addr: ap.Addr()}, nil
		}
		portField = fields[2]
	case 2: // (||port|): one delimiter missing
		if fields[0] != "" {
			return EPSVReply{}, syntaxErr("malformed 229 tuple")
		}
		portField = fields[1]
	default:
		return EPSVReply{}, syntaxErr("229 tuple has %d fields", len(fields))
	}
	p, err := port(portField)
	if err != nil {
		return EPSVReply{}, err
	}
	r.Port = p
	return r, nil
}

// port parses a TCP port 1..65535 given as plain decimal digits.
func port(s string) (uint16, error) {
	if s == "" || len(s) > 5 {
		return 0, syntaxErr("bad port %q", clip(s))
	}
	v, rest, err := decimal(s, 65535)
	if err != nil || rest != "" {
		return 0, syntaxErr("bad port %q", clip(s))
	}
	if v == 0 {
		return 0, syntaxErr("port 0")
	}
	return uint16(v), nil
}

// parseExtended parses the three fields net-prt, net-addr, tcp-port of an
// EPRT argument (RFC 2428 2).
func parseExtended(f []string) (netip.AddrPort, error) {
	var fam int
	switch f[0] {
	case "1":
		fam = NetPrtIPv4
	case "2":
		fam = NetPrtIPv6
	default:
		if _, err := strconv.Atoi(f[0]); err == nil {
			return netip.AddrPort{}, fmt.Errorf("%w: net-prt %s", ErrFamily, clip(f[0]))
		}
		return netip.AddrPort{}, syntaxErr("bad net-prt %q", clip(f[0]))
	}
	ip, err := netip.ParseAddr(f[1])
	if err != nil {
		return netip.AddrPort{}, syntaxErr("bad address %q", clip(f[1]))
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, syntaxErr("address with zone %q", clip(f[1]))
	}
	if fam == NetPrtIPv4 && !ip.Is4() || fam == NetPrtIPv6 && !ip.Is6() {
		return netip.AddrPort{}, syntaxErr("address %s does not match net-prt %d", ip, fam)
	}
	p, err := port(f[2])
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip, p), nil
}

// ParsePORT parses a PORT argument: h1,h2,h3,h4,p1,p2, nothing else.
func ParsePORT(arg string) (netip.AddrPort, error) {
	nums, rest, err := byteList(arg, 6)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if rest != "" {
		return netip.AddrPort{}, syntaxErr("trailing %q after PORT tuple", clip(rest))
	}
	return tupleAddr(nums)
}

// ParseEPRT parses an EPRT argument: <d><net-prt><d><net-addr><d><tcp-port><d>.
// An unknown net-prt yields an error wrapping ErrFamily (reply 522).
func ParseEPRT(arg string) (netip.AddrPort, error) {
	if len(arg) < 7 {
		return netip.AddrPort{}, syntaxErr("EPRT argument too short")
	}
	d := arg[0]
	if d < 33 || d > 126 || isDigit(d) || arg[len(arg)-1] != d {
		return netip.AddrPort{}, syntaxErr("bad EPRT delimiter")
	}
	f := strings.Split(arg[1:len(arg)-1], string(d))
	if len(f) != 3 {
		return netip.AddrPort{}, syntaxErr("EPRT needs 3 fields, got %d", len(f))
	}
	return parseExtended(f)
}

// ParseLPRT parses an LPRT argument (RFC 1639): af,hal,h1..hN,pal,p1..pM
// with af 4 (hal 4) or 6 (hal 16) and a 2-byte port.
func ParseLPRT(arg string) (netip.AddrPort, error) {
	ap, rest, err := longAddr(arg)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if rest != "" {
		return netip.AddrPort{}, syntaxErr("trailing %q after LPRT tuple", clip(rest))
	}
	return ap, nil
}

// ParseLPSV parses the text of a 228 reply: the LPRT tuple in parentheses.
func ParseLPSV(text string) (netip.AddrPort, error) {
	i := strings.IndexByte(text, '(')
	if i < 0 {
		return netip.AddrPort{}, syntaxErr("228 without '('")
	}
	ap, rest, err := longAddr(text[i+1:])
	if err != nil {
		return netip.AddrPort{}, err
	}
	if !strings.HasPrefix(strings.TrimLeft(rest, " "), ")") {
		return netip.AddrPort{}, syntaxErr("228 tuple not closed by ')'")
	}
	return ap, nil
}

func longAddr(s string) (netip.AddrPort, string, error) {
	head, rest, err := byteList(s, 2)
	if err != nil {
		return netip.AddrPort{}, s, err
	}
	var hal int
	switch {
	case head[0] == 4 && head[1] == 4:
		hal = 4
	case head[0] == 6 && head[1] == 16:
		hal = 16
	case head[0] != 4 && head[0] != 6:
		return netip.AddrPort{}, s, fmt.Errorf("%w: address family %d", ErrFamily, head[0])
	default:
		return netip.AddrPort{}, s, syntaxErr("address length %d for family %d", head[1], head[0])
	}
	rest = strings.TrimLeft(rest, " ")
	if !strings.HasPrefix(rest, ",") {
		return netip.AddrPort{}, s, syntaxErr("truncated long address")
	}
	// hal address bytes, the port length (must be 2), 2 port bytes.
	body, rest, err := byteList(strings.TrimLeft(rest[1:], " "), hal+3)
	if err != nil {
		return netip.AddrPort{}, s, err
	}
	if body[hal] != 2 {
		return netip.AddrPort{}, s, syntaxErr("port length %d", body[hal])
	}
	var ip netip.Addr
	if hal == 4 {
		ip = netip.AddrFrom4([4]byte(body[:4]))
	} else {
		ip = netip.AddrFrom16([16]byte(body[:16]))
	}
	p := uint16(body[hal+1])<<8 | uint16(body[hal+2])
	if p == 0 {
		return netip.AddrPort{}, s, syntaxErr("port 0")
	}
	return netip.AddrPortFrom(ip, p), rest, nil
}

// FormatPASV returns the text of a 227 reply for an IPv4 address.
func FormatPASV(ap netip.AddrPort) string {
	a := ap.Addr().Unmap().As4()
	return fmt.Sprintf("Entering Passive Mode (%d,%d,%d,%d,%d,%d).",
		a[0], a[1], a[2], a[3], ap.Port()>>8, ap.Port()&0xff)
}

// FormatEPSV returns the text of a 229 reply.
func FormatEPSV(p uint16) string {
	return fmt.Sprintf("Entering Extended Passive Mode (|||%d|)", p)
}

// FormatLPSV returns the text of a 228 reply.
func FormatLPSV(ap netip.AddrPort) string {
	return "Entering Long Passive Mode (" + longTuple(ap) + ")"
}

// FormatPORT returns a PORT argument for an IPv4 address.
func FormatPORT(ap netip.AddrPort) string {
	a := ap.Addr().Unmap().As4()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], ap.Port()>>8, ap.Port()&0xff)
}

// FormatEPRT returns an EPRT argument.
func FormatEPRT(ap netip.AddrPort) string {
	ip := ap.Addr().Unmap()
	fam := NetPrtIPv6
	if ip.Is4() {
		fam = NetPrtIPv4
	}
	return fmt.Sprintf("|%d|%s|%d|", fam, ip, ap.Port())
}

// FormatLPRT returns an LPRT argument.
func FormatLPRT(ap netip.AddrPort) string { return longTuple(ap) }

func longTuple(ap netip.AddrPort) string {
	ip := ap.Addr().Unmap()
	var b strings.Builder
	if ip.Is4() {
		b.WriteString("4,4")
		for _, x := range ip.As4() {
			fmt.Fprintf(&b, ",%d", x)
		}
	} else {
		b.WriteString("6,16")
		for _, x := range ip.As16() {
			fmt.Fprintf(&b, ",%d", x)
		}
	}
	fmt.Fprintf(&b, ",2,%d,%d", ap.Port()>>8, ap.Port()&0xff)
	return b.String()
}
