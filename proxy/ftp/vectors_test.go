package ftp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/proxy/ftp/ftptest"
)

// chunkReader returns one chunk per Read, as the network would.
type chunkReader struct{ chunks [][]byte }

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.chunks) > 0 && len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	return n, nil
}

// byteChunks splits b into reads of one byte each.
func byteChunks(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func loadVectors(t *testing.T) []ftptest.Vector {
	t.Helper()
	vs, err := ftptest.Load("testdata")
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestVectorsParse checks every vector's expected parse (kind, address,
// port, family, code, line count) against the codec, fed as recorded, in
// one piece and one byte per read.
func TestVectorsParse(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.ID, func(t *testing.T) {
			feeds := map[string][][]byte{"recorded": v.RawChunks(), "bytewise": byteChunks(v.Raw())}
			for name, chunks := range feeds {
				switch v.Kind {
				case "reply":
					checkReplyVector(t, name, v, chunks)
				case "command":
					checkCommandVector(t, name, v, chunks)
				default:
					t.Fatalf("unknown kind %q", v.Kind)
				}
			}
		})
	}
}

// passiveKindOf returns the request kind a reply vector answers; a vector
// without a request answers the request its code belongs to.
func passiveKindOf(v ftptest.Vector, code int) Kind {
	if v.Context.Request != "" {
		return ParseCommand([]byte(v.Context.Request)).Kind
	}
	switch code {
	case CodePASV:
		return KindPASV
	case CodeEPSV:
		return KindEPSV
	case CodeLPSV:
		return KindLPSV
	}
	return KindOther
}

func checkReplyVector(t *testing.T, feed string, v ftptest.Vector, chunks [][]byte) {
	t.Helper()
	rr := NewReplyReader(NewReplyScanner(&chunkReader{chunks: chunks}))
	first, err := rr.Next()
	if errors.Is(err, ErrLineTooLong) {
		if v.Expect.Action != "close" && !v.Allows("close") {
			t.Fatalf("%s: line too long, but expected %s", feed, v.Expect.Action)
		}
		return
	}
	// io.ErrUnexpectedEOF: the bytes end inside a line (LightFTP sent a
	// 227 cut short, with no CRLF) or inside a multi-line reply; the reply
	// holds what was read, a partial line last.
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("%s: first reply: %v", feed, err)
	}
	if c := v.Expect.Code; c != nil && first.Code != *c {
		t.Errorf("%s: code %d, want %d", feed, first.Code, *c)
	}
	// A reply longer than one chunk arrives in several; count all its lines.
	lines := len(first.Lines)
	for r := first; r.More; {
		r, err = rr.Next()
		lines += len(r.Lines)
		if err != nil {
			break
		}
	}
	if n := v.Expect.Lines; n != nil && lines != *n {
		t.Errorf("%s: %d lines, want %d", feed, lines, *n)
	}
	if v.Expect.Multiline && lines < 2 {
		t.Errorf("%s: want a multi-line reply, got %d line", feed, lines)
	}
	got, ap, perr := replyParse(v, first)
	if got != v.Expect.Parse {
		t.Fatalf("%s: parse %s (err %v), want %s", feed, got, perr, v.Expect.Parse)
	}
	if got == "none" || got == "error" {
		return
	}
	checkAddr(t, feed, v, ap)
}

// replyParse classifies the first reply of a reply vector the way the
// proxy does: only a reply to a passive request is parsed, by its code.
func replyParse(v ftptest.Vector, first *Reply) (string, netip.AddrPort, error) {
	req := Command{Kind: passiveKindOf(v, first.Code)}
	ap, ok, err := ParsePassiveReply(first)
	switch {
	case !req.Passive() || !ok:
		return "none", ap, err
	case err != nil:
		return "error", ap, err
	case first.Code == CodePASV:
		return "pasv", ap, nil
	case first.Code == CodeEPSV:
		return "epsv", ap, nil
	default:
		return "lpsv", ap, nil
	}
}

func checkCommandVector(t *testing.T, feed string, v ftptest.Vector, chunks [][]byte) {
	t.Helper()
	sc := NewCommandScanner(&chunkReader{chunks: chunks})
	l, err := sc.Next()
	if errors.Is(err, ErrLineTooLong) {
		if !v.Allows("reject") && !v.Allows("close") {
			t.Fatalf("%s: line too long, but expected %s", feed, v.Expect.Action)
		}
		return
	}
	// io.ErrUnexpectedEOF: the bytes end inside a line; it is parsed like
	// any other, and it is not clean (no CRLF).
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("%s: %v", feed, err)
	}
	c := ParseCommand(l.Text)
	got := "none"
	var ap netip.AddrPort
	if c.Active() {
		ap, err = ParseActive(c)
		switch {
		case err != nil:
			got = "error"
		case c.Kind == KindPORT:
			got = "port"
		case c.Kind == KindEPRT:
			got = "eprt"
		case c.Kind == KindLPRT:
			got = "lprt"
		}
	}
	if got != v.Expect.Parse {
		t.Fatalf("%s: parse %s (err %v), want %s", feed, got, err, v.Expect.Parse)
	}
	if !l.Clean() && v.Expect.Action == "pass-through" {
		t.Errorf("%s: line is not clean (CRLF %v, bare CR %v, bare LF %v, NUL %v) but expected pass-through",
			feed, l.CRLF, l.BareCR, l.BareLF, l.NUL)
	}
	if got == "none" || got == "error" {
		return
	}
	checkAddr(t, feed, v, ap)
}

func checkAddr(t *testing.T, feed string, v ftptest.Vector, ap netip.AddrPort) {
	t.Helper()
	if p := v.Expect.Port; p != nil && int(ap.Port()) != *p {
		t.Errorf("%s: port %d, want %d", feed, ap.Port(), *p)
	}
	if v.Expect.IP != nil {
		want, err := netip.ParseAddr(*v.Expect.IP)
		if err != nil {
			t.Fatalf("bad expected ip %q", *v.Expect.IP)
		}
		// Compared as values and unmapped: "::ffff:192.0.2.1" and
		// "192.0.2.1" name one host (CheckActive compares them so too).
		if ap.Addr().Unmap() != want.Unmap() {
			t.Errorf("%s: ip %v, want %v", feed, ap.Addr(), want)
		}
	}
	// A 229 with ip null: the data address is the server's control address.
	// The codec reports an address only for the CEPR form that carries one
	// (TestParseEPSV checks that), and the proxy dials the control address
	// for every 229 anyway, so such an address is no error here.
	if f := v.Expect.Family; f != nil && v.Expect.IP != nil {
		fam := 6
		if ap.Addr().Is4() {
			fam = 4
		}
		// A v4-mapped address is IPv4 as a host, IPv6 as sent: either.
		if fam != *f && !(ap.Addr().Is4In6() && *f == 4) {
			t.Errorf("%s: family %d, want %d", feed, fam, *f)
		}
	}
}

// TestVectorsAction checks each vector's expected action against the one the
// codec implies. For commands the policy is fully in the codec: an unclean
// line, a data-channel command after EPSV ALL, or a PORT/EPRT/LPRT that does
// not parse or fails CheckActive is refused; another PORT/EPRT/LPRT is
// rewritten; anything else passes through. A vector of pipelined lines may
// name the action for its first line or for its worst one. For replies the
// proxy owns the policy, so only the safety bound is checked: a reply the
// codec does not parse is never rewritten.
func TestVectorsAction(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.ID, func(t *testing.T) {
			switch v.Kind {
			case "command":
				checkCommandAction(t, v)
			case "reply":
				checkReplyAction(t, v)
			}
		})
	}
}

var actionRank = map[string]int{"pass-through": 0, "rewrite": 1, "reject": 2, "close": 3}

func checkCommandAction(t *testing.T, v ftptest.Vector) {
	t.Helper()
	var client netip.Addr
	if v.Context.ClientAddr != "" {
		var err error
		if client, err = netip.ParseAddr(v.Context.ClientAddr); err != nil {
			t.Fatalf("bad client_addr %q", v.Context.ClientAddr)
		}
	}
	sc := NewCommandScanner(bytes.NewReader(v.Raw()))
	var first, worst string
	for {
		l, err := sc.Next()
		var a string
		switch {
		case errors.Is(err, ErrLineTooLong):
			a = "close"
			if v.Allows("reject") {
				a = "reject" // refusing the line and closing are both right
			}
		case err == nil || errors.Is(err, io.ErrUnexpectedEOF):
			a = commandAction(&l, v.Context.EPSVAll, client)
		}
		if a != "" {
			if first == "" {
				first = a
			}
			if actionRank[a] >= actionRank[worst] {
				worst = a
			}
		}
		if err != nil {
			break
		}
	}
	if !v.Allows(first) && !v.Allows(worst) {
		t.Errorf("codec implies %s (worst line: %s), vector expects %s %v", first, worst, v.Expect.Action, v.Expect.Acceptable)
	}
}

// commandAction is the proxy's decision for one command line.
func commandAction(l *Line, epsvAll bool, client netip.Addr) string {
	if !l.Clean() {
		return "reject"
	}
	c := ParseCommand(l.Text)
	if epsvAll && (c.Active() || c.Kind == KindPASV || c.Kind == KindLPSV) {
		return "reject"
	}
	if !c.Active() {
		return "pass-through"
	}
	ap, err := ParseActive(c)
	if err != nil {
		return "reject"
	}
	if client.IsValid() && CheckActive(ap, client) != nil {
		return "reject"
	}
	return "rewrite"
}

func checkReplyAction(t *testing.T, v ftptest.Vector) {
	t.Helper()
	rr := NewReplyReader(NewReplyScanner(bytes.NewReader(v.Raw())))
	first, err := rr.Next()
	if errors.Is(err, ErrLineTooLong) {
		return // checked by TestVectorsParse
	}
	got, _, _ := replyParse(v, first)
	if (got == "none" || got == "error") && v.Expect.Action == "rewrite" {
		t.Errorf("codec parses %s, but vector expects a rewrite", got)
	}
}
