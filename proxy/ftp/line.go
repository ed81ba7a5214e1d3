package ftp

import (
	"errors"
	"io"
)

// MaxLine is the longest control line, terminator included, that the codec
// buffers. RFC 959 sets no limit; real servers use 512 bytes to 8 KiB.
const MaxLine = 8192

// Telnet bytes (RFC 854) that matter on an FTP control connection.
const (
	IAC  = 0xFF // interpret as command
	DONT = 0xFE
	DO   = 0xFD
	WONT = 0xFC
	WILL = 0xFB
	SB   = 0xFA // subnegotiation begin; a 2-byte command on FTP (see step)
	IP   = 0xF4 // interrupt process, sent before ABOR
	DM   = 0xF2 // data mark, the Synch that follows urgent data
	SE   = 0xF0 // subnegotiation end
)

// ErrLineTooLong is returned when a line exceeds MaxLine bytes. The scanner
// cannot be used after it.
var ErrLineTooLong = errors.New("ftp: line longer than 8192 bytes")

// Line is one control line.
type Line struct {
	// Raw holds the bytes exactly as received: Telnet sequences, escapes and
	// the terminator included. Forwarding Raw forwards the line unchanged.
	Raw []byte
	// Text is the line with Telnet commands removed, IAC IAC unescaped and
	// the terminator stripped. This is what gets parsed.
	Text []byte
	// Telnet holds the Telnet command sequences found in the line (IAC IP,
	// IAC DM, option negotiation), in order, for re-emitting before a
	// rewritten line.
	Telnet []byte
	// Urgent is the index in Raw of the byte the peer sent as TCP urgent
	// data, or -1.
	Urgent int
	// CRLF reports that the line ended in CRLF (false: a bare LF on a
	// stream whose lines end so, or a partial last line at the end of the
	// stream).
	CRLF bool
	// LF reports that the line ended in a bare LF, which only a
	// NewLearningReplyScanner does, on a stream whose first line ended so.
	LF bool
	// BareCR, BareLF and NUL report such bytes inside Text.
	BareCR, BareLF, NUL bool
	// BadTelnet reports a Telnet sequence cut short by CR or LF ("IAC CR",
	// "IAC WILL LF"). Peers disagree on whether such a CR or LF belongs to
	// the sequence or ends the line, so the line is never clean.
	BadTelnet bool
}

// Clean reports whether the line is a well-formed command line: CRLF
// terminated, with no bare CR, bare LF, NUL or broken Telnet sequence inside.
func (l *Line) Clean() bool {
	return l.CRLF && !l.BareCR && !l.BareLF && !l.NUL && !l.BadTelnet
}

// UrgentReader is implemented by connections that can tell which byte was
// sent as TCP urgent data. ReadUrgent works like Read and also returns the
// index in p of the urgent byte, or -1.
type UrgentReader interface {
	ReadUrgent(p []byte) (n int, urgent int, err error)
}

type scanState uint8

// lineEnds is what ends a line on a stream.
type lineEnds uint8

const (
	endCRLF  lineEnds = iota // CRLF only; a bare LF is text (flagged BareLF)
	endLearn                 // the first line's terminator decides: CRLF, or a bare LF
	endLF                    // LF, with or without a CR before it
)

const (
	stData scanState = iota
	stCR             // saw CR, waiting to see whether LF follows
	stIAC            // saw IAC
	stOpt            // saw IAC WILL/WONT/DO/DONT, waiting for the option byte
)

// Scanner splits a control stream into Lines. It reads in small chunks so an
// idle session holds little memory, and never buffers more than MaxLine bytes
// of one line.
type Scanner struct {
	r       io.Reader
	ur      UrgentReader
	ends    lineEnds
	buf     []byte
	start   int
	end     int
	off     int64   // stream offset of buf[0]
	urgents []int64 // stream offsets of urgent bytes not yet assigned
	err     error

	state   scanState
	cur     Line
	lineOff int64 // stream offset of cur.Raw[0]
	// done reports that cur is a complete line already returned by Next,
	// not bytes of a line still pending.
	done bool
}

// NewReplyScanner returns a Scanner for the server-to-client direction: lines
// end only at CRLF.
func NewReplyScanner(r io.Reader) *Scanner { return newScanner(r, endCRLF) }

// NewLearningReplyScanner returns a reply Scanner that learns the server's
// line terminator from its first line (the greeting): when that line ends
// in CRLF, lines end only at CRLF from then on, exactly as with
// NewReplyScanner; when it ends in a bare LF (embedded and old servers
// never send CR), every later LF ends a line too, and such lines have LF
// set. A server that greets with CRLF therefore never has a line split by
// a bare LF it echoes.
func NewLearningReplyScanner(r io.Reader) *Scanner { return newScanner(r, endLearn) }

// NewCommandScanner returns a Scanner for the client-to-server direction.
// Lines end only at CRLF, as RFC 959 says: a bare LF inside is flagged
// (BareLF), never a line end, so a line such as "USER x\nPORT ...\r\n" is
// one unclean line, refused whole, and nothing of it can be taken for a
// command of its own.
func NewCommandScanner(r io.Reader) *Scanner { return newScanner(r, endCRLF) }

func newScanner(r io.Reader, ends lineEnds) *Scanner {
	s := &Scanner{r: r, ends: ends, buf: make([]byte, 1024)}
	s.ur, _ = r.(UrgentReader)
	s.cur.Urgent = -1
	return s
}

// Next returns the next line. The Line's slices stay valid until the next
// call. At the end of the stream it returns io.EOF (io.ErrUnexpectedEOF when
// a partial line was pending).
func (s *Scanner) Next() (Line, error) {
	if s.err == ErrLineTooLong {
		return Line{Urgent: -1}, s.err
	}
	s.done = false
	s.cur = Line{Raw: s.cur.Raw[:0], Text: s.cur.Text[:0], Telnet: s.cur.Telnet[:0], Urgent: -1}
	if cap(s.cur.Raw) > 2048 { // do not keep a large buffer for an idle session
		s.cur = Line{Urgent: -1}
	}
	s.state = stData
	for {
		for s.start < s.end {
			b := s.buf[s.start]
			if len(s.cur.Raw) == 0 {
				s.lineOff = s.off + int64(s.start)
			}
			s.start++
			if len(s.cur.Raw) >= MaxLine {
				s.err = ErrLineTooLong
				return s.cur, s.err
			}
			s.cur.Raw = append(s.cur.Raw, b)
			if s.step(b) {
				s.assignUrgent()
				s.done = true
				return s.cur, nil
			}
		}
		if s.err != nil {
			if len(s.cur.Raw) > 0 && s.err == io.EOF {
				return s.cur, io.ErrUnexpectedEOF
			}
			return s.cur, s.err
		}
		s.fill()
	}
}

func (s *Scanner) fill() {
	s.off += int64(s.end)
	s.start, s.end = 0, 0
	var n, urg int
	var err error
	for try := 0; n == 0 && err == nil; try++ {
		if try == 100 {
			err = io.ErrNoProgress
			break
		}
		if s.ur != nil {
			n, urg, err = s.ur.ReadUrgent(s.buf)
		} else {
			n, err = s.r.Read(s.buf)
			urg = -1
		}
	}
	if urg >= 0 && urg < n && len(s.urgents) < 16 {
		s.urgents = append(s.urgents, s.off+int64(urg))
	}
	s.end = n
	if err != nil {
		s.err = err
	}
}

// assignUrgent marks the urgent byte of the line just completed, if any.
func (s *Scanner) assignUrgent() {
	lineEnd := s.lineOff + int64(len(s.cur.Raw))
	kept := s.urgents[:0]
	for _, u := range s.urgents {
		switch {
		case u >= s.lineOff && u < lineEnd:
			s.cur.Urgent = int(u - s.lineOff)
		case u >= lineEnd:
			kept = append(kept, u)
		}
	}
	s.urgents = kept
}

// step consumes one byte (already appended to Raw) and reports whether the
// line is complete.
func (s *Scanner) step(b byte) bool {
	switch s.state {
	case stCR:
		if b == '\n' {
			s.cur.CRLF = true
			if s.ends == endLearn {
				s.ends = endCRLF
			}
			return true
		}
		// The CR was bare: keep it as text and look at b afresh.
		s.cur.Text = append(s.cur.Text, '\r')
		s.cur.BareCR = true
		s.state = stData
		return s.data(b)
	case stIAC:
		s.state = stData
		switch {
		case b == '\r' || b == '\n':
			// "IAC CR", "IAC LF": a line end inside a Telnet command. Some
			// servers end the line there, others swallow the byte; treat
			// the CR or LF as data and flag the line.
			s.cur.BadTelnet = true
			return s.data(b)
		case b == IAC:
			s.cur.Text = append(s.cur.Text, IAC)
		case b >= WILL && b <= DONT:
			s.cur.Telnet = append(s.cur.Telnet, IAC, b)
			s.state = stOpt
		default:
			// IP, DM, NOP, AYT, SB, SE... and undefined bytes: a 2-byte
			// command. SB is not special: FTP never agrees to a Telnet
			// option, and servers read what follows "IAC SB" as command
			// text (inetutils drops the two bytes, ProFTPD keeps them),
			// so the subnegotiation "payload" is parsed as text here too.
			s.cur.Telnet = append(s.cur.Telnet, IAC, b)
		}
		return false
	case stOpt:
		s.state = stData
		if b == '\r' || b == '\n' {
			s.cur.Telnet = s.cur.Telnet[:len(s.cur.Telnet)-2] // drop IAC WILL
			s.cur.BadTelnet = true
			return s.data(b)
		}
		s.cur.Telnet = append(s.cur.Telnet, b)
		return false
	}
	return s.data(b)
}

func (s *Scanner) data(b byte) bool {
	switch b {
	case IAC:
		s.state = stIAC
	case '\r':
		s.state = stCR
	case '\n':
		switch s.ends {
		case endLearn:
			s.ends = endLF
			fallthrough
		case endLF:
			s.cur.LF = true
			return true
		}
		s.cur.Text = append(s.cur.Text, b)
		s.cur.BareLF = true
	case 0:
		s.cur.Text = append(s.cur.Text, b)
		s.cur.NUL = true
	default:
		s.cur.Text = append(s.cur.Text, b)
	}
	return false
}
