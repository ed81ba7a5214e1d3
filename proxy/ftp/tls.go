package ftp

import (
	"errors"
	"strconv"
	"strings"
)

// FTP over TLS (RFC 4217) commands and FEAT (RFC 2389).

// ErrTLSArgument is returned for an AUTH, PBSZ or PROT argument the proxy
// does not take.
var ErrTLSArgument = errors.New("ftp: bad TLS command argument")

// AUTH mechanisms, as ParseAUTH returns them.
const (
	AuthTLS = "TLS" // AUTH TLS, and TLS-C (the same: RFC 4217's draft name)
	AuthSSL = "SSL" // AUTH SSL: old clients; the control channel becomes TLS as well
)

// ParseAUTH returns the mechanism of an AUTH argument: AuthTLS for "TLS"
// and "TLS-C", AuthSSL for "SSL" (and "TLS-P", which old clients send to
// mean SSL with protected data), matched without regard to case; anything
// else is ErrTLSArgument.
func ParseAUTH(arg string) (string, error) {
	switch strings.ToUpper(strings.TrimSpace(arg)) {
	case "TLS", "TLS-C":
		return AuthTLS, nil
	case "SSL", "TLS-P":
		return AuthSSL, nil
	}
	return "", ErrTLSArgument
}

// ParsePBSZ returns the decimal buffer size of a PBSZ argument (RFC 2228:
// up to 32 bits); TLS uses 0.
func ParsePBSZ(arg string) (uint32, error) {
	arg = strings.TrimSpace(arg)
	if arg == "" || len(arg) > 10 {
		return 0, ErrTLSArgument
	}
	for i := 0; i < len(arg); i++ {
		if !isDigit(arg[i]) {
			return 0, ErrTLSArgument
		}
	}
	n, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, ErrTLSArgument
	}
	return uint32(n), nil
}

// ParsePROT returns the protection level of a PROT argument: 'C' (clear)
// or 'P' (private), the two TLS knows ('S' and 'E' are RFC 2228's and
// refused by servers with 536, as here); upper or lower case.
func ParsePROT(arg string) (byte, error) {
	a := strings.ToUpper(strings.TrimSpace(arg))
	switch a {
	case "C", "P":
		return a[0], nil
	case "S", "E":
		return a[0], ErrTLSArgument
	}
	return 0, ErrTLSArgument
}

// Features is a parsed FEAT reply: each feature's name, upper case, with
// its parameters (RFC 2389: " NAME params").
type Features map[string]string

// Has reports whether the server lists name (case-insensitive).
func (f Features) Has(name string) bool {
	_, ok := f[strings.ToUpper(name)]
	return ok
}

// HasAUTH reports whether the server offers AUTH with mechanism mech
// ("AUTH TLS" lists it as "AUTH TLS" or "AUTH TLS;SSL" or similar).
func (f Features) HasAUTH(mech string) bool {
	p, ok := f["AUTH"]
	if !ok {
		return false
	}
	for _, m := range strings.FieldsFunc(strings.ToUpper(p), func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
		if m == mech || mech == AuthTLS && m == "TLS-C" {
			return true
		}
	}
	return false
}

// FeatureLine splits one line of a FEAT reply into the feature's name,
// upper case, and its parameters; name is empty for a blank line. A name
// ends at any white space: a line may hold a bare LF or a tab, which the
// reply scanner keeps inside the line.
func FeatureLine(text []byte) (name, params string) {
	t := strings.TrimSpace(string(text))
	name = t
	if i := strings.IndexAny(t, " \t\r\n"); i >= 0 {
		name, params = t[:i], strings.TrimSpace(t[i+1:])
	}
	return strings.ToUpper(name), params
}

// ParseFEAT returns the features of a whole 211 reply to FEAT; ok is false
// for any other reply (500 and the like: the server lists nothing).
func ParseFEAT(r *Reply) (f Features, ok bool) {
	if r.Code != 211 || !r.Whole() || len(r.Lines) < 2 {
		return nil, false
	}
	f = Features{}
	for _, l := range r.Lines[1 : len(r.Lines)-1] {
		name, params := FeatureLine(l.Text)
		if name == "" {
			continue
		}
		if prev, seen := f[name]; seen && prev != "" {
			// Listed twice (vsftpd: " AUTH SSL" and " AUTH TLS"):
			// keep both.
			params = prev + ";" + params
		}
		f[name] = params
	}
	return f, true
}
