package ftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestParseCode(t *testing.T) {
	tests := []struct {
		in   string
		code int
		sep  byte
		ok   bool
	}{
		{"227 Entering Passive Mode", 227, ' ', true},
		{"211-Features:", 211, '-', true},
		{"211", 211, 0, true},
		{"200 ", 200, ' ', true},
		{"631 base64", 631, ' ', true}, // RFC 2228
		{"999 x", 999, ' ', true},
		{"227Entering Passive Mode", 0, 0, false},
		{"2270 Entering", 0, 0, false},
		{"227\tEntering", 0, 0, false},
		{"22 x", 0, 0, false},
		{"22", 0, 0, false},
		{"", 0, 0, false},
		{"022 x", 0, 0, false},
		{"  234 A line beginning with numbers", 0, 0, false},
		{"2a7 x", 0, 0, false},
		{"-227 x", 0, 0, false},
	}
	for _, tt := range tests {
		code, sep, ok := ParseCode([]byte(tt.in))
		if code != tt.code || sep != tt.sep || ok != tt.ok {
			t.Errorf("%q: %d %q %v; want %d %q %v", tt.in, code, sep, ok, tt.code, tt.sep, tt.ok)
		}
	}
}

func TestReplyText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"227 Entering Passive Mode (1,2,3,4,5,6)", "Entering Passive Mode (1,2,3,4,5,6)"},
		{"211-Features:", "Features:"},
		{"200 ", ""},
		{"200", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := string(ReplyText([]byte(tt.in))); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.in, got, tt.want)
		}
	}
}

// readReplies reads every reply (or chunk) from in, fed in reads of size
// step (0: all at once).
func readReplies(in string, step int) ([]*Reply, error) {
	var chunks [][]byte
	for b := []byte(in); len(b) > 0; {
		n := len(b)
		if step > 0 && step < n {
			n = step
		}
		chunks = append(chunks, b[:n])
		b = b[n:]
	}
	rr := NewReplyReader(NewReplyScanner(&chunkReader{chunks: chunks}))
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

type replyWant struct {
	code            int
	lines           int
	continued, more bool
}

func TestReplyReader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []replyWant
		wantErr error
	}{
		{"single", "227 Entering Passive Mode (127,0,0,1,156,64).\r\n", []replyWant{{227, 1, false, false}}, io.EOF},
		{"sequence", "150 Opening\r\n226 Done\r\n", []replyWant{{150, 1, false, false}, {226, 1, false, false}}, io.EOF},
		{"multi-line", "211-Features:\r\n EPRT\r\n EPSV\r\n211 End\r\n", []replyWant{{211, 4, false, false}}, io.EOF},
		{"RFC 959 inner digits", "123-First line\r\nSecond line\r\n  234 A line beginning with numbers\r\n123 The last line\r\n",
			[]replyWant{{123, 4, false, false}}, io.EOF},
		{"inner line with another code", "123-x\r\n234 not the end\r\n123-still open\r\n1234 nor this\r\n123\r\n",
			[]replyWant{{123, 5, false, false}}, io.EOF},
		{"inner 227 in 214", "214-Help\r\n227 Entering Passive Mode (192,0,2,99,0,22)\r\n214 OK\r\n",
			[]replyWant{{214, 3, false, false}}, io.EOF},
		{"unindented STAT", "211-Server status\r\nConnected to 127.0.0.1:2191\r\nLogged in as vec\r\n211 End of status\r\n",
			[]replyWant{{211, 4, false, false}}, io.EOF},
		{"aioftp 227", "227-listen socket created\r\n227 (127,0,0,1,154,21)\r\n", []replyWant{{227, 2, false, false}}, io.EOF},
		{"bare LF stays inside", "500 x\n227 (1,2,3,4,5,6)\r\n200 ok\r\n", []replyWant{{500, 1, false, false}, {200, 1, false, false}}, io.EOF},
		{"malformed", "227Entering Passive Mode\r\n200 ok\r\n", []replyWant{{0, 1, false, false}, {200, 1, false, false}}, io.EOF},
		{"four-digit code", "2270 x\r\n", []replyWant{{0, 1, false, false}}, io.EOF},
		{"partial line", "200 ok\r\n227 Entering Passive Mode (", []replyWant{{200, 1, false, false}, {227, 1, false, false}}, io.ErrUnexpectedEOF},
		{"unfinished multi-line", "211-a\r\n b\r\n", []replyWant{{211, 2, false, false}}, io.ErrUnexpectedEOF},
		{"unfinished multi-line, partial", "211-a\r\n b", []replyWant{{211, 2, false, false}}, io.ErrUnexpectedEOF},
		{"empty", "", nil, io.EOF},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 7} {
			got, err := readReplies(tt.in, step)
			if err != tt.wantErr {
				t.Errorf("%s/%d: error %v, want %v", tt.name, step, err, tt.wantErr)
			}
			checkReplies(t, fmt.Sprintf("%s/%d", tt.name, step), tt.in, got, tt.want)
		}
	}
}

func checkReplies(t *testing.T, name, in string, got []*Reply, want []replyWant) {
	t.Helper()
	var raw []byte
	for _, r := range got {
		raw = append(raw, r.Raw()...)
	}
	if string(raw) != in {
		t.Errorf("%s: raw %q, want %q", name, raw, in)
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d replies, want %d", name, len(got), len(want))
		return
	}
	for i, w := range want {
		g := replyWant{got[i].Code, len(got[i].Lines), got[i].Continued, got[i].More}
		if g != w {
			t.Errorf("%s: reply %d is %+v, want %+v", name, i, g, w)
		}
	}
}

func TestReplyReaderChunks(t *testing.T) {
	var b strings.Builder
	b.WriteString("211-Status of /\r\n")
	for i := 0; i < 148; i++ {
		fmt.Fprintf(&b, " file%03d\r\n", i)
	}
	b.WriteString("211 End\r\n200 next\r\n")
	got, err := readReplies(b.String(), 0)
	if err != io.EOF {
		t.Fatal(err)
	}
	checkReplies(t, "150 lines", b.String(), got, []replyWant{
		{211, maxReplyLines, false, true},
		{211, maxReplyLines, true, true},
		{211, 150 - 2*maxReplyLines, true, false},
		{200, 1, false, false},
	})
	if got[0].Whole() || got[1].Whole() || got[2].Whole() || !got[3].Whole() {
		t.Error("Whole wrong for chunks")
	}

	// The byte limit: lines of 1000 bytes, 16 of them fill a chunk.
	b.Reset()
	b.WriteString("211-big\r\n")
	line := " " + strings.Repeat("x", 997) + "\r\n"
	for i := 0; i < 20; i++ {
		b.WriteString(line)
	}
	b.WriteString("211 End\r\n")
	got, err = readReplies(b.String(), 0)
	if err != io.EOF {
		t.Fatal(err)
	}
	first := 1 + (maxReplyBytes-9+len(line)-1)/len(line) // header + lines until size >= maxReplyBytes
	checkReplies(t, "20 KB", b.String(), got, []replyWant{
		{211, first, false, true},
		{211, 22 - first, true, false},
	})

	// A chunk boundary right before the closing line.
	b.Reset()
	b.WriteString("211-x\r\n")
	for i := 0; i < maxReplyLines-1; i++ {
		b.WriteString(" y\r\n")
	}
	b.WriteString("211 End\r\n")
	got, _ = readReplies(b.String(), 0)
	checkReplies(t, "boundary", b.String(), got, []replyWant{{211, maxReplyLines, false, true}, {211, 1, true, false}})
}

func TestReplyLinesAreCopies(t *testing.T) {
	rr := NewReplyReader(NewReplyScanner(strings.NewReader("200 first\r\n200 second\r\n")))
	a, _ := rr.Next()
	b, _ := rr.Next()
	if string(a.Lines[0].Text) != "200 first" || string(b.Lines[0].Text) != "200 second" {
		t.Errorf("lines overwritten: %q %q", a.Lines[0].Text, b.Lines[0].Text)
	}
}

func TestReplyFinalTelnet(t *testing.T) {
	got, _ := readReplies("\xff\xfc\x01150 x\r\n\xff\xfe\x03226-a\r\n\xff\xf1226 b\r\n", 0)
	if len(got) != 2 {
		t.Fatalf("%d replies", len(got))
	}
	if got[0].Final() || !got[1].Final() {
		t.Error("Final: 150 is preliminary, 226 final")
	}
	if string(got[0].Telnet()) != "\xff\xfc\x01" || string(got[1].Telnet()) != "\xff\xfe\x03\xff\xf1" {
		t.Errorf("Telnet %q %q", got[0].Telnet(), got[1].Telnet())
	}
	if (&Reply{Code: 0}).Final() != true {
		t.Error("a malformed reply counts as final")
	}
}

func TestParsePassiveReply(t *testing.T) {
	type result struct {
		ap  netip.AddrPort
		ok  bool
		err bool
	}
	addr := func(s string) result { return result{netip.MustParseAddrPort(s), true, false} }
	none := result{}
	bad := result{ok: true, err: true}
	long := "227-x\r\n" + strings.Repeat(" y\r\n", maxReplyLines) + "227 (127,0,0,1,156,64)\r\n"
	tests := []struct {
		in   string
		want result
	}{
		{"227 Entering Passive Mode (127,0,0,1,156,64).\r\n", addr("127.0.0.1:40000")},
		{"\xff\xfc\x01227 Entering Passive Mode (127,0,0,1,156,64).\r\n", addr("127.0.0.1:40000")},
		{"227 Entering Passive Mode. 127,0,0,1,156,64\r\n", addr("127.0.0.1:40000")},
		{"229 Entering Extended Passive Mode (|||40000|)\r\n", result{netip.AddrPortFrom(netip.Addr{}, 40000), true, false}},
		{"229 (|1|192.0.2.10|40000|)\r\n", addr("192.0.2.10:40000")},
		{"228 Entering Long Passive Mode (4,4,127,0,0,1,2,156,64)\r\n", addr("127.0.0.1:40000")},
		{"227-listen socket created\r\n227 (127,0,0,1,154,21)\r\n", addr("127.0.0.1:39445")},
		{"227-Entering Passive Mode\r\n(127,0,0,1,156,64)\r\n227 End\r\n", addr("127.0.0.1:40000")},
		// A line holding only the code: nothing to parse there.
		{"227\r\n", bad},
		{"227 Logout.\r\n", bad},
		{"227 Entering Passive Mode (::1,156,64).\r\n", bad},
		{"227 Entering Passive Mode (127,0,0,1,156,64)\x00\r\n", bad},
		{"227 Entering Passive Mode\n(127,0,0,1,156,64)\r\n", bad},
		{"227 Entering Passive Mode (127,0,0,1,156,64)\r(\r\n", bad},
		{"227 Entering Passive Mode (127,0,0,1,156,64)\xff\r\n", bad},
		{"227-x\ny\r\n227 (127,0,0,1,156,64)\r\n", bad},
		{"227 Entering Passive Mode (127,0,0,1,156,64)", bad}, // no CRLF: the stream ended
		{long, bad},
		{"227-Entering Passive Mode (127,0,0,1,156,64)\r\n", bad},       // the stream ended: unfinished
		{"227-Entering Passive Mode (127,0,0,1,156,64)\r\n x\r\n", bad}, // likewise
		{"229 Entering Extended Passive Mode (|||0|)\r\n", bad},
		{"228 Entering Long Passive Mode (5,4,127,0,0,1,2,156,64)\r\n", bad},
		{"200 Entering Passive Mode (127,0,0,1,156,64)\r\n", none},
		{"500 x\n227 Entering Passive Mode (127,0,0,1,156,64)\r\n", none},
		{"227Entering Passive Mode (127,0,0,1,156,64)\r\n", none},
		{"2270 Entering Passive Mode (127,0,0,1,156,64)\r\n", none},
		{"214-x\r\n227 Entering Passive Mode (127,0,0,1,156,64)\r\n214 y\r\n", none},
	}
	for _, tt := range tests {
		rr := NewReplyReader(NewReplyScanner(strings.NewReader(tt.in)))
		r, err := rr.Next()
		if err != nil && err != io.ErrUnexpectedEOF {
			t.Fatalf("%q: %v", tt.in, err)
		}
		ap, ok, perr := ParsePassiveReply(r)
		got := result{ap, ok, perr != nil}
		if got != tt.want {
			t.Errorf("%q: %v %v %v; want %+v", tt.in, ap, ok, perr, tt.want)
		}
		if perr != nil && !errors.Is(perr, ErrSyntax) && !errors.Is(perr, ErrFamily) {
			t.Errorf("%q: error %v wraps neither ErrSyntax nor ErrFamily", tt.in, perr)
		}
	}
	// A continued chunk of a long 227 is no whole reply either.
	rr := NewReplyReader(NewReplyScanner(bytes.NewReader([]byte(long))))
	rr.Next()
	r, _ := rr.Next()
	if _, ok, err := ParsePassiveReply(r); !r.Continued || !ok || err == nil {
		t.Errorf("continued chunk: continued %v ok %v err %v", r.Continued, ok, err)
	}
}
