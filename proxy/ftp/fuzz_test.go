package ftp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/proxy/ftp/ftptest"
)

// Fuzz targets. Run one at a time, e.g.
//
//	go test ./proxy/ftp -run XXX -fuzz FuzzParsePASV -fuzztime 20s
//
// Every target is seeded from all testdata/*vectors*.json files.

// seedVectors loads the vectors for seeding (the fuzz engine needs them
// before the first input, so a load error fails the target).
func seedVectors(f *testing.F) []ftptest.Vector {
	f.Helper()
	vs, err := ftptest.Load("testdata")
	if err != nil {
		f.Fatal(err)
	}
	return vs
}

// seedTexts returns the texts the address parsers see: the text after the
// code of every reply line and the argument of every command line.
func seedTexts(f *testing.F) []string {
	f.Helper()
	var out []string
	for _, v := range seedVectors(f) {
		if v.Kind == "command" {
			s := NewCommandScanner(bytes.NewReader(v.Raw()))
			for {
				l, err := s.Next()
				if len(l.Raw) > 0 && (err == nil || err == io.ErrUnexpectedEOF) {
					out = append(out, ParseCommand(l.Text).Arg)
				}
				if err != nil {
					break
				}
			}
			continue
		}
		s := NewReplyScanner(bytes.NewReader(v.Raw()))
		for {
			l, err := s.Next()
			if len(l.Raw) > 0 && (err == nil || err == io.ErrUnexpectedEOF) {
				text := l.Text
				if _, _, ok := ParseCode(text); ok {
					text = ReplyText(text)
				}
				out = append(out, string(text))
			}
			if err != nil {
				break
			}
		}
	}
	return out
}

func checkParseErr(t *testing.T, in string, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrFamily) {
		t.Fatalf("%q: error %v wraps neither ErrSyntax nor ErrFamily", in, err)
	}
}

func FuzzParsePASV(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ap, err := ParsePASV(text)
		checkParseErr(t, text, err)
		if err != nil {
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("%q: %v is not an IPv4 address with a port", text, ap)
		}
		back, err := ParsePASV(FormatPASV(ap))
		if err != nil || back != ap {
			t.Fatalf("%q: %v formats as %q, parses back as %v, %v", text, ap, FormatPASV(ap), back, err)
		}
		// The reply text before the first '(' never matters once there is one.
		if i := strings.IndexByte(text, '('); i >= 0 {
			if again, err := ParsePASV("Entering Passive Mode " + text[i:]); err != nil || again != ap {
				t.Fatalf("%q: prefix changed the result: %v, %v", text, again, err)
			}
		}
		// Each number is decimal and one byte: the PORT form of the result
		// appears in the text once spaces and leading zeros are dropped.
		if !strings.Contains(canonTuple(text), FormatPORT(ap)) {
			t.Fatalf("%q: %v (%s) not in the text", text, ap, FormatPORT(ap))
		}
	})
}

// canonTuple drops spaces and the leading zeros of numbers.
func canonTuple(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case s[i] == ' ':
			i++
		case isDigit(s[i]):
			j := i
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			run := strings.TrimLeft(s[i:j], "0")
			if run == "" {
				run = "0"
			}
			b.WriteString(run)
			i = j
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}

func FuzzParseEPSV(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseEPSV(text)
		checkParseErr(t, text, err)
		if err != nil {
			return
		}
		if r.Port == 0 {
			t.Fatalf("%q: port 0", text)
		}
		if r.Addr.IsValid() && r.Addr.Zone() != "" {
			t.Fatalf("%q: address with a zone %v", text, r.Addr)
		}
		back, err := ParseEPSV(FormatEPSV(r.Port))
		if err != nil || back != (EPSVReply{Port: r.Port}) {
			t.Fatalf("%q: port %d formats as %q, parses back as %+v, %v", text, r.Port, FormatEPSV(r.Port), back, err)
		}
		if r.Addr.IsValid() {
			// The CEPR form is the EPRT form in parentheses.
			ap := netip.AddrPortFrom(r.Addr, r.Port)
			cepr, err := ParseEPSV("(" + FormatEPRT(ap) + ")")
			if err != nil || cepr.Port != r.Port || cepr.Addr != r.Addr.Unmap() {
				t.Fatalf("%q: %v as CEPR parses back as %+v, %v", text, ap, cepr, err)
			}
		}
	})
}

func FuzzParsePORT(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParsePORT(arg)
		checkParseErr(t, arg, err)
		if err != nil {
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("%q: %v", arg, ap)
		}
		if back, err := ParsePORT(FormatPORT(ap)); err != nil || back != ap {
			t.Fatalf("%q: %v formats as %q, parses back as %v, %v", arg, ap, FormatPORT(ap), back, err)
		}
		// PORT and a 227 carry the same tuple.
		if pasv, err := ParsePASV("(" + arg + ")"); err != nil || pasv != ap {
			t.Fatalf("%q: as a 227 tuple gives %v, %v; as PORT %v", arg, pasv, err, ap)
		}
		if c := ParseCommand([]byte("PORT " + arg)); c.Kind == KindPORT {
			if got, err := ParseActive(c); err != nil || got != ap {
				t.Fatalf("%q: through ParseCommand: %v, %v", arg, got, err)
			}
		}
	})
}

func FuzzParseEPRT(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParseEPRT(arg)
		checkParseErr(t, arg, err)
		if err != nil {
			return
		}
		ip := ap.Addr()
		if !ip.IsValid() || ip.Zone() != "" || ap.Port() == 0 {
			t.Fatalf("%q: %v", arg, ap)
		}
		// The family field matches the address.
		if fam := arg[1]; (fam == '1') != ip.Is4() {
			t.Fatalf("%q: family %c, address %v", arg, fam, ip)
		}
		want := netip.AddrPortFrom(ip.Unmap(), ap.Port())
		if back, err := ParseEPRT(FormatEPRT(ap)); err != nil || back != want {
			t.Fatalf("%q: %v formats as %q, parses back as %v, %v", arg, ap, FormatEPRT(ap), back, err)
		}
		if back, err := ParseLPRT(FormatLPRT(ap)); err != nil || back != want {
			t.Fatalf("%q: %v as LPRT parses back as %v, %v", arg, ap, back, err)
		}
	})
}

func FuzzParseLPRT(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParseLPRT(arg)
		checkParseErr(t, arg, err)
		if err != nil {
			return
		}
		if !ap.Addr().IsValid() || ap.Port() == 0 {
			t.Fatalf("%q: %v", arg, ap)
		}
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if back, err := ParseLPRT(FormatLPRT(ap)); err != nil || back != want {
			t.Fatalf("%q: %v formats as %q, parses back as %v, %v", arg, ap, FormatLPRT(ap), back, err)
		}
		if back, err := ParseEPRT(FormatEPRT(ap)); err != nil || back != want {
			t.Fatalf("%q: %v as EPRT parses back as %v, %v", arg, ap, back, err)
		}
		// An LPRT argument in parentheses is a 228 text.
		if lpsv, err := ParseLPSV("(" + arg + ")"); err != nil || lpsv != ap {
			t.Fatalf("%q: as a 228 tuple gives %v, %v", arg, lpsv, err)
		}
	})
}

func FuzzParseLPSV(f *testing.F) {
	for _, s := range seedTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ap, err := ParseLPSV(text)
		checkParseErr(t, text, err)
		if err != nil {
			return
		}
		if !ap.Addr().IsValid() || ap.Port() == 0 {
			t.Fatalf("%q: %v", text, ap)
		}
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if back, err := ParseLPSV(FormatLPSV(ap)); err != nil || back != want {
			t.Fatalf("%q: %v formats as %q, parses back as %v, %v", text, ap, FormatLPSV(ap), back, err)
		}
	})
}

// splitReads cuts b into reads whose sizes cycle through sizes (0 entries
// count as 1).
func splitReads(b []byte, sizes []byte) [][]byte {
	if len(sizes) == 0 {
		return [][]byte{b}
	}
	var out [][]byte
	for i := 0; len(b) > 0; i++ {
		n := int(sizes[i%len(sizes)])
		if n == 0 {
			n = 1
		}
		if n > len(b) {
			n = len(b)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

type scanned struct {
	lines []Line
	err   error
	// restOK reports that after every line, the lines' Raw so far followed
	// by Rest() was exactly what the scanner had read.
	restOK bool
}

// countingReader counts the bytes it hands out.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func scanBytes(kind byte, chunks [][]byte) scanned {
	data := bytes.Join(chunks, nil)
	cr := &countingReader{r: &chunkReader{chunks: chunks}}
	var s *Scanner
	switch kind {
	case scanReply:
		s = NewReplyScanner(cr)
	case scanLearning:
		s = NewLearningReplyScanner(cr)
	default:
		s = NewCommandScanner(cr)
	}
	out := scanned{restOK: true}
	var raw []byte
	for {
		l, err := s.Next()
		if err == ErrLineTooLong {
			out.err = err
			return out
		}
		if err == nil {
			raw = append(raw, l.Raw...)
		}
		if got := append(append([]byte(nil), raw...), s.Rest()...); !bytes.Equal(got, data[:cr.n]) {
			out.restOK = false
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF {
				out.lines = append(out.lines, copyLine(l))
			}
			out.err = err
			return out
		}
		out.lines = append(out.lines, copyLine(l))
	}
}

// Scanner kinds FuzzScanner drives.
const (
	scanCommand  = iota // NewCommandScanner
	scanReply           // NewReplyScanner
	scanLearning        // NewLearningReplyScanner
	scanKinds
)

func FuzzScanner(f *testing.F) {
	for _, v := range seedVectors(f) {
		k := byte(scanCommand)
		if v.Kind == "reply" {
			k = scanReply
		}
		f.Add(v.Raw(), k, []byte{1})
		f.Add(v.Raw(), byte(scanLearning), []byte{3, 200})
	}
	f.Add([]byte("220 lf server\n227 Entering Passive Mode (1,2,3,4,5,6)\n"), byte(scanLearning), []byte{2})
	f.Fuzz(func(t *testing.T, data []byte, kind byte, sizes []byte) {
		kind %= scanKinds
		whole := scanBytes(kind, [][]byte{data})
		split := scanBytes(kind, splitReads(data, sizes))

		if !whole.restOK || !split.restOK {
			t.Fatal("returned lines and Rest() do not add up to the bytes read")
		}
		// Read boundaries never change the result.
		if whole.err != split.err || len(whole.lines) != len(split.lines) {
			t.Fatalf("whole: %d lines, %v; split: %d lines, %v", len(whole.lines), whole.err, len(split.lines), split.err)
		}
		var raw []byte
		lfStream := kind == scanLearning && len(whole.lines) > 0 && whole.lines[0].LF
		for i, l := range whole.lines {
			s := split.lines[i]
			if !bytes.Equal(l.Raw, s.Raw) || !bytes.Equal(l.Text, s.Text) || !bytes.Equal(l.Telnet, s.Telnet) ||
				l.CRLF != s.CRLF || l.LF != s.LF || l.BareCR != s.BareCR || l.BareLF != s.BareLF || l.NUL != s.NUL || l.BadTelnet != s.BadTelnet {
				t.Fatalf("line %d differs: %+v vs %+v", i, l, s)
			}
			raw = append(raw, l.Raw...)
			checkLine(t, lfStream, l, i == len(whole.lines)-1 && whole.err == io.ErrUnexpectedEOF)
		}

		// The lines' Raw is the input consumed; all of it unless a line was
		// too long.
		switch whole.err {
		case io.EOF, io.ErrUnexpectedEOF:
			if !bytes.Equal(raw, data) {
				t.Fatalf("raw of all lines %q, input %q", raw, data)
			}
		case ErrLineTooLong:
			if !bytes.HasPrefix(data, raw) || len(data)-len(raw) <= MaxLine {
				t.Fatalf("ErrLineTooLong with %d of %d bytes consumed", len(raw), len(data))
			}
		default:
			t.Fatalf("unexpected error %v", whole.err)
		}
	})
}

// checkLine checks the invariants of one line. lfStream: the line comes
// from a learning scanner whose stream's first line ended in a bare LF.
func checkLine(t *testing.T, lfStream bool, l Line, partial bool) {
	t.Helper()
	if len(l.Raw) == 0 || len(l.Raw) > MaxLine {
		t.Fatalf("raw of %d bytes", len(l.Raw))
	}
	if len(l.Text)+len(l.Telnet) > len(l.Raw) {
		t.Fatalf("text %q and telnet %q longer than raw %q", l.Text, l.Telnet, l.Raw)
	}
	if bytes.ContainsAny(l.Telnet, "\r\n") {
		t.Fatalf("telnet %q holds CR or LF", l.Telnet)
	}
	if l.BareCR != bytes.Contains(l.Text, []byte{'\r'}) || l.NUL != bytes.Contains(l.Text, []byte{0}) {
		t.Fatalf("flags BareCR %v NUL %v for text %q", l.BareCR, l.NUL, l.Text)
	}
	if l.BareLF != bytes.Contains(l.Text, []byte{'\n'}) {
		t.Fatalf("flag BareLF %v for text %q", l.BareLF, l.Text)
	}
	// Text holds a CRLF only when both are flagged (a Telnet command sat
	// between them in Raw).
	if bytes.Contains(l.Text, []byte("\r\n")) && !(l.BareCR && l.BareLF) {
		t.Fatalf("text %q holds CRLF", l.Text)
	}
	if l.CRLF && l.LF {
		t.Fatalf("line %q ends in both CRLF and a bare LF", l.Raw)
	}
	if partial {
		if l.CRLF || l.LF {
			t.Fatalf("partial line %q says CRLF %v LF %v", l.Raw, l.CRLF, l.LF)
		}
		return
	}
	if l.CRLF != bytes.HasSuffix(l.Raw, []byte("\r\n")) {
		t.Fatalf("CRLF %v for raw %q", l.CRLF, l.Raw)
	}
	if lfStream {
		// Every line ends at its first LF; Text never holds one.
		if l.Raw[len(l.Raw)-1] != '\n' || bytes.IndexByte(l.Raw, '\n') != len(l.Raw)-1 || l.BareLF {
			t.Fatalf("line %q of an LF stream", l.Raw)
		}
		if l.LF == l.CRLF {
			t.Fatalf("line %q of an LF stream: CRLF %v LF %v", l.Raw, l.CRLF, l.LF)
		}
		return
	}
	// Otherwise a line (reply or command) ends at its first CRLF and
	// nowhere else.
	if !l.CRLF || l.LF || bytes.Contains(l.Raw[:len(l.Raw)-2], []byte("\r\n")) {
		t.Fatalf("line %q", l.Raw)
	}
	if l.Clean() && bytes.ContainsAny(l.Text, "\r\n\x00") {
		t.Fatalf("clean line %q", l.Raw)
	}
}

func FuzzReplyReader(f *testing.F) {
	for _, v := range seedVectors(f) {
		if v.Kind == "reply" {
			f.Add(v.Raw(), []byte{1})
			f.Add(v.Raw(), []byte{5, 100})
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, sizes []byte) {
		whole, werr := readAll(data, nil)
		split, serr := readAll(data, sizes)
		if werr != serr || len(whole) != len(split) {
			t.Fatalf("whole: %d replies, %v; split: %d replies, %v", len(whole), werr, len(split), serr)
		}
		var raw []byte
		for i, r := range whole {
			if !bytes.Equal(r.Raw(), split[i].Raw()) || r.Code != split[i].Code || r.More != split[i].More || r.Continued != split[i].Continued {
				t.Fatalf("reply %d differs with read boundaries", i)
			}
			raw = append(raw, r.Raw()...)
			last := i == len(whole)-1 && werr != io.EOF
			checkReply(t, r, last)
			if i > 0 && whole[i-1].More != r.Continued {
				t.Fatalf("reply %d: Continued %v after More %v", i, r.Continued, whole[i-1].More)
			}
			ap, ok, err := ParsePassiveReply(r)
			if ok != AddressCode(r.Code) {
				t.Fatalf("code %d: ok %v", r.Code, ok)
			}
			checkParseErr(t, string(r.Raw()), err)
			if ok && err == nil {
				if ap.Port() == 0 || !r.Whole() || (r.Code != CodeEPSV && !ap.Addr().IsValid()) {
					t.Fatalf("reply %q gave %v", r.Raw(), ap)
				}
				for _, l := range r.Lines {
					if !l.CRLF || l.BareCR || l.BareLF || l.NUL || l.BadTelnet {
						t.Fatalf("address taken from a reply with line %q", l.Raw)
					}
				}
			}
		}
		switch werr {
		case io.EOF, io.ErrUnexpectedEOF:
			if !bytes.Equal(raw, data) {
				t.Fatalf("raw of all replies %q, input %q", raw, data)
			}
		case ErrLineTooLong:
			if !bytes.HasPrefix(data, raw) {
				t.Fatalf("raw of all replies is not a prefix of the input")
			}
		default:
			t.Fatalf("unexpected error %v", werr)
		}
	})
}

func readAll(data []byte, sizes []byte) ([]*Reply, error) {
	rr := NewReplyReader(NewReplyScanner(&chunkReader{chunks: splitReads(data, sizes)}))
	var out []*Reply
	for {
		r, err := rr.Next()
		if len(r.Lines) > 0 {
			out = append(out, r)
		}
		if err != nil {
			return out, err
		}
	}
}

// checkReply checks the framing invariants of one reply or chunk.
func checkReply(t *testing.T, r *Reply, last bool) {
	t.Helper()
	if len(r.Lines) > maxReplyLines {
		t.Fatalf("chunk of %d lines", len(r.Lines))
	}
	if n := len(r.Raw()); n >= maxReplyBytes+MaxLine {
		t.Fatalf("chunk of %d bytes", n)
	}
	code, sep, ok := ParseCode(r.Lines[0].Text)
	if !r.Continued {
		if !ok && r.Code != 0 || ok && r.Code != code {
			t.Fatalf("code %d for first line %q", r.Code, r.Lines[0].Raw)
		}
		if !ok || sep != '-' {
			if len(r.Lines) != 1 {
				t.Fatalf("single-line reply with %d lines", len(r.Lines))
			}
			return
		}
	}
	if last {
		return // the stream ended: the reply may be unfinished
	}
	// A multi-line reply (chunk) ends with its closing line unless More.
	end := r.Lines[len(r.Lines)-1].Text
	closes := endsReply(end, r.Code) && (r.Continued || len(r.Lines) > 1)
	if closes == r.More {
		t.Fatalf("code %d, More %v, last line %q", r.Code, r.More, end)
	}
	for _, l := range r.Lines[1 : len(r.Lines)-1] {
		if endsReply(l.Text, r.Code) {
			t.Fatalf("inner line %q closes the reply", l.Text)
		}
	}
}
