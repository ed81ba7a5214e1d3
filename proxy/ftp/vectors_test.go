package ftp

import (
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
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("%s: first reply: %v", feed, err)
	}
	if c := v.Expect.Code; c != nil && first.Code != *c {
		t.Errorf("%s: code %d, want %d", feed, first.Code, *c)
	}
	if n := v.Expect.Lines; n != nil && len(first.Lines) != *n {
		t.Errorf("%s: %d lines, want %d", feed, len(first.Lines), *n)
	}
	if v.Expect.Multiline && len(first.Lines) < 2 {
		t.Errorf("%s: want a multi-line reply, got %d line", feed, len(first.Lines))
	}
	req := Command{Kind: passiveKindOf(v, first.Code)}
	ap, ok, perr := ParsePassiveReply(first)
	got := "none"
	switch {
	case !req.Passive() || !ok:
	case perr != nil:
		got = "error"
	case first.Code == CodePASV:
		got = "pasv"
	case first.Code == CodeEPSV:
		got = "epsv"
	case first.Code == CodeLPSV:
		got = "lpsv"
	}
	if got != v.Expect.Parse {
		t.Fatalf("%s: parse %s (err %v), want %s", feed, got, perr, v.Expect.Parse)
	}
	if got == "none" || got == "error" {
		return
	}
	checkAddr(t, feed, v, ap, first.Code == CodeEPSV)
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
	if err != nil {
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
	checkAddr(t, feed, v, ap, false)
}

func checkAddr(t *testing.T, feed string, v ftptest.Vector, ap netip.AddrPort, epsv bool) {
	t.Helper()
	if p := v.Expect.Port; p != nil && int(ap.Port()) != *p {
		t.Errorf("%s: port %d, want %d", feed, ap.Port(), *p)
	}
	if v.Expect.IP != nil {
		want, err := netip.ParseAddr(*v.Expect.IP)
		if err != nil {
			t.Fatalf("bad expected ip %q", *v.Expect.IP)
		}
		if ap.Addr() != want {
			t.Errorf("%s: ip %v, want %v", feed, ap.Addr(), want)
		}
	} else if epsv && ap.Addr().IsValid() {
		t.Errorf("%s: 229 gave address %v, want none", feed, ap.Addr())
	}
	if f := v.Expect.Family; f != nil && v.Expect.IP != nil {
		fam := 6
		if ap.Addr().Is4() {
			fam = 4
		}
		if fam != *f {
			t.Errorf("%s: family %d, want %d", feed, fam, *f)
		}
	}
}
