package ftp

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
)

// Limits of one buffered reply chunk. Longer multi-line replies (a STAT of a
// large directory) are passed on in chunks, never held whole.
const (
	maxReplyLines = 64
	maxReplyBytes = 16 << 10
)

// Reply is one server reply, or one chunk of a long multi-line reply.
type Reply struct {
	// Code is the reply code (100..599 in practice); 0 when the first line
	// is not a valid reply line ("227Entering", "2270 ...", text).
	Code int
	// Lines holds the reply's lines (owned copies).
	Lines []Line
	// Continued reports that earlier lines of this reply were returned in
	// a previous chunk; More that later lines follow in the next chunk.
	Continued, More bool
}

// Final reports whether the reply completes a command (2xx..5xx), as
// opposed to a preliminary 1xx. Malformed replies count as final.
func (r *Reply) Final() bool { return r.Code == 0 || r.Code >= 200 }

// Whole reports whether r is a complete reply in one piece.
func (r *Reply) Whole() bool { return !r.Continued && !r.More }

// Raw returns the reply's bytes exactly as received.
func (r *Reply) Raw() []byte {
	n := 0
	for i := range r.Lines {
		n += len(r.Lines[i].Raw)
	}
	b := make([]byte, 0, n)
	for i := range r.Lines {
		b = append(b, r.Lines[i].Raw...)
	}
	return b
}

// Telnet returns the Telnet sequences found in the reply, to keep in front of
// a rewritten reply.
func (r *Reply) Telnet() []byte {
	var b []byte
	for i := range r.Lines {
		b = append(b, r.Lines[i].Telnet...)
	}
	return b
}

// ParseCode returns the reply code of a reply's first line, and the
// separator after it: ' ' (single line or last line), '-' (a multi-line reply
// begins) or 0 (the code alone). ok is false when the line does not start
// with exactly three digits followed by SP, '-' or the end of the line.
func ParseCode(text []byte) (code int, sep byte, ok bool) {
	if len(text) < 3 {
		return 0, 0, false
	}
	for i := 0; i < 3; i++ {
		if text[i] < '0' || text[i] > '9' {
			return 0, 0, false
		}
		code = code*10 + int(text[i]-'0')
	}
	if text[0] == '0' {
		return 0, 0, false
	}
	if len(text) == 3 {
		return code, 0, true
	}
	if text[3] == ' ' || text[3] == '-' {
		return code, text[3], true
	}
	return 0, 0, false
}

// ReplyText returns a reply line's text after the code and separator.
func ReplyText(text []byte) []byte {
	if len(text) <= 4 {
		return nil
	}
	return text[4:]
}

// ReplyReader assembles server replies from a reply Scanner (RFC 959 4.2: a
// multi-line reply starts with "ddd-" and ends at a line starting "ddd ").
type ReplyReader struct {
	s    *Scanner
	open int // code of a multi-line reply still open across chunks, or 0
}

// NewReplyReader returns a ReplyReader over s.
func NewReplyReader(s *Scanner) *ReplyReader { return &ReplyReader{s: s} }

// Next returns the next reply or reply chunk. At the end of the stream it
// returns io.EOF, or io.ErrUnexpectedEOF when the stream ends inside a
// multi-line reply or inside a line; the reply returned with it holds what
// was read, so its bytes can still be forwarded (a partial line is the last
// of its Lines, with CRLF false). An unfinished reply never yields an
// address (see ParsePassiveReply).
func (rr *ReplyReader) Next() (*Reply, error) {
	r := &Reply{}
	if rr.open != 0 {
		r.Code, r.Continued = rr.open, true
	}
	size := 0
	for {
		l, err := rr.s.Next()
		if err != nil {
			if err == io.ErrUnexpectedEOF && len(l.Raw) > 0 {
				r.Lines = append(r.Lines, copyLine(l))
				if rr.open == 0 && len(r.Lines) == 1 {
					r.Code, _, _ = ParseCode(l.Text)
				}
			}
			if err == io.EOF && rr.open != 0 {
				err = io.ErrUnexpectedEOF
			}
			return r, err
		}
		cp := copyLine(l)
		r.Lines = append(r.Lines, cp)
		size += len(cp.Raw)
		if rr.open == 0 {
			code, sep, ok := ParseCode(cp.Text)
			if !ok {
				return r, nil // malformed single line, Code 0
			}
			r.Code = code
			if sep != '-' {
				return r, nil
			}
			rr.open = code
		} else if endsReply(cp.Text, rr.open) {
			rr.open = 0
			return r, nil
		}
		if len(r.Lines) >= maxReplyLines || size >= maxReplyBytes {
			r.More = true
			return r, nil
		}
	}
}

// endsReply reports whether a line ends the multi-line reply with the given
// code: it starts with the same three digits followed by SP or nothing.
func endsReply(text []byte, code int) bool {
	c, sep, ok := ParseCode(text)
	return ok && c == code && sep != '-'
}

func copyLine(l Line) Line {
	raw := bytes.Clone(l.Raw)
	l.Raw = raw
	l.Text = bytes.Clone(l.Text)
	if len(l.Telnet) > 0 {
		l.Telnet = bytes.Clone(l.Telnet)
	} else {
		l.Telnet = nil
	}
	return l
}

// Reply codes that carry a passive data address.
const (
	CodePASV = 227
	CodeLPSV = 228
	CodeEPSV = 229
)

// AddressCode reports whether code is one of the passive-address replies.
func AddressCode(code int) bool { return code == CodePASV || code == CodeLPSV || code == CodeEPSV }

// ParsePassiveReply returns the data address in a whole reply with code
// 227, 228 or 229, in whichever form the code says (servers answer PASV with
// 229 and EPSV with 227 at times). For a 229 the address is the zero Addr
// unless the server put one in. A multi-line reply is searched line by line
// (aioftp sends "227-listen socket created" then "227 (h,h,h,h,p,p)"). ok is
// false when the code carries no address at all. A reply too long to be
// whole, an unfinished one (the stream ended), or one with control bytes or
// broken Telnet sequences inside is an error.
func ParsePassiveReply(r *Reply) (ap netip.AddrPort, ok bool, err error) {
	if !AddressCode(r.Code) {
		return netip.AddrPort{}, false, nil
	}
	if !r.Whole() {
		return netip.AddrPort{}, true, syntaxErr("%d reply longer than %d lines or %d bytes", r.Code, maxReplyLines, maxReplyBytes)
	}
	if len(r.Lines) == 0 {
		return netip.AddrPort{}, true, syntaxErr("empty %d reply", r.Code)
	}
	if _, sep, _ := ParseCode(r.Lines[0].Text); sep == '-' && (len(r.Lines) == 1 || !endsReply(r.Lines[len(r.Lines)-1].Text, r.Code)) {
		return netip.AddrPort{}, true, syntaxErr("unfinished multi-line %d reply", r.Code)
	}
	for i := range r.Lines {
		l := &r.Lines[i]
		if !l.CRLF && !l.LF {
			return netip.AddrPort{}, true, syntaxErr("%d reply not ended by CRLF", r.Code)
		}
		if l.BareCR || l.BareLF || l.NUL || l.BadTelnet {
			return netip.AddrPort{}, true, syntaxErr("control bytes inside a %d reply", r.Code)
		}
		text := string(l.Text)
		if _, _, isCode := ParseCode(l.Text); isCode {
			text = string(ReplyText(l.Text))
		}
		switch r.Code {
		case CodePASV:
			ap, err = ParsePASV(text)
		case CodeLPSV:
			ap, err = ParseLPSV(text)
		case CodeEPSV:
			var e EPSVReply
			e, err = ParseEPSV(text)
			ap = netip.AddrPortFrom(e.Addr, e.Port)
		}
		if err == nil {
			return ap, true, nil
		}
	}
	return netip.AddrPort{}, true, err
}

// CheckPassive applies to a server's passive-mode announcement what
// CheckActive applies to a client's: the port must be above 1023. A
// privileged port is never an FTP data port; a proxy that dialed one on a
// server's word would be a port scanner of the server's own services (port
// 22, 25, …), so the announcement is refused, as OpenBSD's ftp-proxy does
// in both directions. The address needs no check here: the proxy dials the
// server's control address unless told to trust the announcement.
func CheckPassive(ap netip.AddrPort) error {
	if ap.Port() < 1024 {
		return fmt.Errorf("%w: %d", ErrPrivilegedPort, ap.Port())
	}
	return nil
}
