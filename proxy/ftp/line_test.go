package ftp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// scanAll reads every line from chunks, one chunk per read, and returns them
// (with owned copies of their slices) and the error that ended the stream.
func scanAll(reply bool, chunks ...string) ([]Line, error) {
	cs := make([][]byte, len(chunks))
	for i, c := range chunks {
		cs[i] = []byte(c)
	}
	var s *Scanner
	if reply {
		s = NewReplyScanner(&chunkReader{chunks: cs})
	} else {
		s = NewCommandScanner(&chunkReader{chunks: cs})
	}
	var out []Line
	for {
		l, err := s.Next()
		if err != nil {
			if len(l.Raw) > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
				out = append(out, copyLine(l))
			}
			return out, err
		}
		out = append(out, copyLine(l))
	}
}

type lineWant struct {
	raw, text, telnet string
	crlf, lf          bool
	bareCR, bareLF    bool
	nul, badTelnet    bool
}

func checkLines(t *testing.T, name string, got []Line, want []lineWant) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d lines, want %d: %v", name, len(got), len(want), got)
		return
	}
	for i, w := range want {
		g := got[i]
		if string(g.Raw) != w.raw || string(g.Text) != w.text || string(g.Telnet) != w.telnet {
			t.Errorf("%s line %d: raw %q text %q telnet %q; want %q %q %q", name, i, g.Raw, g.Text, g.Telnet, w.raw, w.text, w.telnet)
		}
		if g.CRLF != w.crlf || g.LF != w.lf || g.BareCR != w.bareCR || g.BareLF != w.bareLF || g.NUL != w.nul || g.BadTelnet != w.badTelnet {
			t.Errorf("%s line %d: CRLF %v BareCR %v BareLF %v NUL %v BadTelnet %v; want %+v",
				name, i, g.CRLF, g.BareCR, g.BareLF, g.NUL, g.BadTelnet, w)
		}
		if g.Urgent != -1 {
			t.Errorf("%s line %d: Urgent %d without an UrgentReader", name, i, g.Urgent)
		}
	}
}

func TestScannerTelnet(t *testing.T) {
	tests := []struct {
		name  string
		reply bool
		in    string
		want  []lineWant
	}{
		{"IP DM ABOR", false, "\xff\xf4\xff\xf2ABOR\r\n",
			[]lineWant{{raw: "\xff\xf4\xff\xf2ABOR\r\n", text: "ABOR", telnet: "\xff\xf4\xff\xf2", crlf: true}}},
		{"IAC IAC is 0xFF", false, "CWD caf\xff\xffe\r\n",
			[]lineWant{{raw: "CWD caf\xff\xffe\r\n", text: "CWD caf\xffe", crlf: true}}},
		{"IAC IAC IAC IAC", true, "550 \xff\xff\xff\xff\r\n",
			[]lineWant{{raw: "550 \xff\xff\xff\xff\r\n", text: "550 \xff\xff", crlf: true}}},
		{"option negotiation", true, "\xff\xfc\x01\xff\xfe\x01220 ready\r\n",
			[]lineWant{{raw: "\xff\xfc\x01\xff\xfe\x01220 ready\r\n", text: "220 ready", telnet: "\xff\xfc\x01\xff\xfe\x01", crlf: true}}},
		{"option byte IAC", false, "NO\xff\xfb\xffOP\r\n",
			[]lineWant{{raw: "NO\xff\xfb\xffOP\r\n", text: "NOOP", telnet: "\xff\xfb\xff", crlf: true}}},
		{"option byte NUL (binary)", false, "\xff\xfd\x00NOOP\r\n",
			[]lineWant{{raw: "\xff\xfd\x00NOOP\r\n", text: "NOOP", telnet: "\xff\xfd\x00", crlf: true}}},
		{"NOP inside a number", false, "PORT 1,2,3,4,\xff\xf15,6\r\n",
			[]lineWant{{raw: "PORT 1,2,3,4,\xff\xf15,6\r\n", text: "PORT 1,2,3,4,5,6", telnet: "\xff\xf1", crlf: true}}},
		// IAC SB is a 2-byte command: what follows is text, as servers read it.
		{"SB does not hide text", false, "\xff\xfaPORT 1,2,3,4,5,6\xff\xf0\r\n",
			[]lineWant{{raw: "\xff\xfaPORT 1,2,3,4,5,6\xff\xf0\r\n", text: "PORT 1,2,3,4,5,6", telnet: "\xff\xfa\xff\xf0", crlf: true}}},
		{"SB does not hide a line end", false, "\xff\xfa\x18\r\nNOOP\r\n", []lineWant{
			{raw: "\xff\xfa\x18\r\n", text: "\x18", telnet: "\xff\xfa", crlf: true},
			{raw: "NOOP\r\n", text: "NOOP", crlf: true}}},
		// A CR or LF never belongs to a Telnet sequence.
		{"IAC CRLF reply", true, "550 caf\xff\r\n227 x\r\n", []lineWant{
			{raw: "550 caf\xff\r\n", text: "550 caf", crlf: true, badTelnet: true},
			{raw: "227 x\r\n", text: "227 x", crlf: true}}},
		// Nor does it end a command line: the whole line is unclean.
		{"IAC LF command", false, "NOOP\xff\nPASV\r\n", []lineWant{
			{raw: "NOOP\xff\nPASV\r\n", text: "NOOP\nPASV", crlf: true, bareLF: true, badTelnet: true}}},
		{"IAC WILL LF command", false, "NOOP\xff\xfb\nPORT 1,2,3,4,5,6\r\n", []lineWant{
			{raw: "NOOP\xff\xfb\nPORT 1,2,3,4,5,6\r\n", text: "NOOP\nPORT 1,2,3,4,5,6", crlf: true, bareLF: true, badTelnet: true}}},
		{"IAC WILL CRLF reply", true, "220 x\xff\xfb\r\n", []lineWant{
			{raw: "220 x\xff\xfb\r\n", text: "220 x", crlf: true, badTelnet: true}}},
		{"IAC WILL LF reply", true, "220 x\xff\xfb\ny\r\n", []lineWant{
			{raw: "220 x\xff\xfb\ny\r\n", text: "220 x\ny", crlf: true, bareLF: true, badTelnet: true}}},
		{"CR IAC", true, "500 a\r\xff\xf1\n\r\n", []lineWant{
			{raw: "500 a\r\xff\xf1\n\r\n", text: "500 a\r\n", telnet: "\xff\xf1", crlf: true, bareCR: true, bareLF: true}}},
	}
	for _, tt := range tests {
		got, err := scanAll(tt.reply, tt.in)
		if err != io.EOF {
			t.Errorf("%s: error %v", tt.name, err)
		}
		checkLines(t, tt.name, got, tt.want)
		// One byte per read gives the same lines.
		got, err = scanAll(tt.reply, strings.Split(tt.in, "")...)
		if err != io.EOF {
			t.Errorf("%s bytewise: error %v", tt.name, err)
		}
		checkLines(t, tt.name+" bytewise", got, tt.want)
	}
}

func TestScannerLineEnds(t *testing.T) {
	tests := []struct {
		name    string
		reply   bool
		in      []string
		want    []lineWant
		wantErr error
	}{
		{"reply bare LF", true, []string{"500 a\n227 (1,2,3,4,5,6)\r\n"}, []lineWant{
			{raw: "500 a\n227 (1,2,3,4,5,6)\r\n", text: "500 a\n227 (1,2,3,4,5,6)", crlf: true, bareLF: true}}, io.EOF},
		{"reply bare CR", true, []string{"500 a\r227 b\r\n"}, []lineWant{
			{raw: "500 a\r227 b\r\n", text: "500 a\r227 b", crlf: true, bareCR: true}}, io.EOF},
		{"reply LF CR", true, []string{"500 a\n\r227 b\r\n"}, []lineWant{
			{raw: "500 a\n\r227 b\r\n", text: "500 a\n\r227 b", crlf: true, bareCR: true, bareLF: true}}, io.EOF},
		{"reply CR CR LF", true, []string{"500 a\r\r\n"}, []lineWant{
			{raw: "500 a\r\r\n", text: "500 a\r", crlf: true, bareCR: true}}, io.EOF},
		{"reply NUL", true, []string{"550 a\x00b\r\n"}, []lineWant{
			{raw: "550 a\x00b\r\n", text: "550 a\x00b", crlf: true, nul: true}}, io.EOF},
		{"reply CR | LF across reads", true, []string{"200 a\r", "\n200 b\r\n"}, []lineWant{
			{raw: "200 a\r\n", text: "200 a", crlf: true},
			{raw: "200 b\r\n", text: "200 b", crlf: true}}, io.EOF},
		{"reply empty line", true, []string{"\r\n"}, []lineWant{{raw: "\r\n", crlf: true}}, io.EOF},
		{"reply partial at EOF", true, []string{"227 Entering Passive Mode ("}, []lineWant{
			{raw: "227 Entering Passive Mode (", text: "227 Entering Passive Mode ("}}, io.ErrUnexpectedEOF},
		{"reply trailing CR at EOF", true, []string{"200 a\r"}, []lineWant{
			{raw: "200 a\r", text: "200 a"}}, io.ErrUnexpectedEOF},

		{"command CRLF", false, []string{"PASV\r\nLIST\r\n"}, []lineWant{
			{raw: "PASV\r\n", text: "PASV", crlf: true},
			{raw: "LIST\r\n", text: "LIST", crlf: true}}, io.EOF},
		// A bare LF does not end a command line: the line runs to its
		// CRLF and is refused whole, so nothing after the LF can pass for
		// a command of its own.
		{"command bare LF does not end", false, []string{"USER a\nPORT 1,2,3,4,5,6\r\n"}, []lineWant{
			{raw: "USER a\nPORT 1,2,3,4,5,6\r\n", text: "USER a\nPORT 1,2,3,4,5,6", crlf: true, bareLF: true}}, io.EOF},
		{"command bare CR", false, []string{"USER a\rPORT 1,2,3,4,5,6\r\n"}, []lineWant{
			{raw: "USER a\rPORT 1,2,3,4,5,6\r\n", text: "USER a\rPORT 1,2,3,4,5,6", crlf: true, bareCR: true}}, io.EOF},
		{"command CR CR LF", false, []string{"NOOP\r\r\n"}, []lineWant{
			{raw: "NOOP\r\r\n", text: "NOOP\r", crlf: true, bareCR: true}}, io.EOF},
		{"command NUL", false, []string{"CWD a\x00b\r\n"}, []lineWant{
			{raw: "CWD a\x00b\r\n", text: "CWD a\x00b", crlf: true, nul: true}}, io.EOF},
		{"command LF only", false, []string{"\n"}, []lineWant{{raw: "\n", text: "\n", bareLF: true}}, io.ErrUnexpectedEOF},
		{"command CR | LF across reads", false, []string{"PORT 1,2,3,4,5,6\r", "\n"}, []lineWant{
			{raw: "PORT 1,2,3,4,5,6\r\n", text: "PORT 1,2,3,4,5,6", crlf: true}}, io.EOF},
		{"command partial at EOF", false, []string{"NOOP"}, []lineWant{{raw: "NOOP", text: "NOOP"}}, io.ErrUnexpectedEOF},
		{"empty stream", false, nil, nil, io.EOF},
	}
	for _, tt := range tests {
		got, err := scanAll(tt.reply, tt.in...)
		if err != tt.wantErr {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.wantErr)
		}
		checkLines(t, tt.name, got, tt.want)
		got, _ = scanAll(tt.reply, strings.Split(strings.Join(tt.in, ""), "")...)
		checkLines(t, tt.name+" bytewise", got, tt.want)
	}
}

// TestScannerLearnsLineEnds: a NewLearningReplyScanner ends lines as the
// stream's first line ended.
func TestScannerLearnsLineEnds(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []lineWant
	}{
		{"CRLF server: a bare LF never splits", "220 hi\r\n550 /x\n227 (1,2,3,4,5,6)\r\n", []lineWant{
			{raw: "220 hi\r\n", text: "220 hi", crlf: true},
			{raw: "550 /x\n227 (1,2,3,4,5,6)\r\n", text: "550 /x\n227 (1,2,3,4,5,6)", crlf: true, bareLF: true}}},
		{"LF server", "220 hi\n211-Features:\n EPSV\n211 End\n", []lineWant{
			{raw: "220 hi\n", text: "220 hi", lf: true},
			{raw: "211-Features:\n", text: "211-Features:", lf: true},
			{raw: " EPSV\n", text: " EPSV", lf: true},
			{raw: "211 End\n", text: "211 End", lf: true}}},
		{"LF server sending a CRLF", "220 hi\n200 ok\r\n", []lineWant{
			{raw: "220 hi\n", text: "220 hi", lf: true},
			{raw: "200 ok\r\n", text: "200 ok", crlf: true}}},
		{"LF server, bare CR", "220 hi\n200 a\rb\n", []lineWant{
			{raw: "220 hi\n", text: "220 hi", lf: true},
			{raw: "200 a\rb\n", text: "200 a\rb", lf: true, bareCR: true}}},
	}
	for _, tt := range tests {
		for _, chunks := range [][]string{{tt.in}, strings.Split(tt.in, "")} {
			cs := make([][]byte, len(chunks))
			for i, c := range chunks {
				cs[i] = []byte(c)
			}
			s := NewLearningReplyScanner(&chunkReader{chunks: cs})
			var got []Line
			for {
				l, err := s.Next()
				if err != nil {
					if err != io.EOF {
						t.Errorf("%s: %v", tt.name, err)
					}
					break
				}
				got = append(got, copyLine(l))
			}
			checkLines(t, tt.name, got, tt.want)
		}
	}
}

func TestLineClean(t *testing.T) {
	tests := []struct {
		in    string
		clean bool
	}{
		{"NOOP\r\n", true},
		{"\xff\xf4\xff\xf2ABOR\r\n", true},
		{"CWD \xff\xff\r\n", true},
		{"NOOP\n", false},
		{"NO\rOP\r\n", false},
		{"NO\x00OP\r\n", false},
		{"NOOP\r\r\n", false},
		{"NOOP\xff\r\n", false},
		{"NOOP\xff\xfb\r\n", false},
		{"NOOP", false},
	}
	for _, tt := range tests {
		ls, _ := scanAll(false, tt.in)
		if len(ls) == 0 {
			t.Fatalf("%q: no line", tt.in)
		}
		if ls[0].Clean() != tt.clean {
			t.Errorf("%q: Clean %v, want %v", tt.in, ls[0].Clean(), tt.clean)
		}
	}
}

func TestScannerMaxLine(t *testing.T) {
	for _, reply := range []bool{false, true} {
		exact := strings.Repeat("A", MaxLine-2) + "\r\n"
		ls, err := scanAll(reply, exact, "NOOP\r\n")
		if err != io.EOF || len(ls) != 2 || len(ls[0].Raw) != MaxLine || string(ls[1].Raw) != "NOOP\r\n" {
			t.Errorf("reply=%v: a line of exactly MaxLine bytes: %d lines, err %v", reply, len(ls), err)
		}
		// The same bytes one per read.
		ls, err = scanAll(reply, strings.Split(exact, "")...)
		if err != io.EOF || len(ls) != 1 || len(ls[0].Raw) != MaxLine {
			t.Errorf("reply=%v: bytewise MaxLine line: %d lines, err %v", reply, len(ls), err)
		}

		over := strings.Repeat("A", MaxLine-1) + "\r\n"
		s := NewCommandScanner(strings.NewReader(over + "NOOP\r\n"))
		if reply {
			s = NewReplyScanner(strings.NewReader(over + "NOOP\r\n"))
		}
		l, err := s.Next()
		if err != ErrLineTooLong || len(l.Raw) != MaxLine {
			t.Errorf("reply=%v: MaxLine+1 bytes: %d raw bytes, err %v", reply, len(l.Raw), err)
		}
		// The scanner stays unusable: no line is ever taken from the middle
		// of the oversized one.
		if l, err := s.Next(); err != ErrLineTooLong || len(l.Raw) != 0 {
			t.Errorf("reply=%v: after ErrLineTooLong: %q, %v", reply, l.Raw, err)
		}

		// MaxLine bytes without a terminator at EOF: a partial line.
		ls, err = scanAll(reply, strings.Repeat("A", MaxLine))
		if err != io.ErrUnexpectedEOF || len(ls) != 1 || len(ls[0].Raw) != MaxLine {
			t.Errorf("reply=%v: MaxLine bytes then EOF: %d lines, err %v", reply, len(ls), err)
		}
	}
	// In the reply direction a bare LF is not a line end: a long reply
	// made of short LF-separated pieces is still one oversized line.
	_, err := scanAll(true, strings.Repeat("500 x\n", MaxLine/6+1)+"\r\n")
	if err != ErrLineTooLong {
		t.Errorf("LF-separated reply over MaxLine: %v", err)
	}
	// Telnet bytes count: the limit is on Raw.
	_, err = scanAll(false, strings.Repeat("\xff\xf1", MaxLine/2)+"\r\n")
	if err != ErrLineTooLong {
		t.Errorf("Telnet-only line over MaxLine: %v", err)
	}
}

// urgentReader returns one chunk per read, with the urgent index of each.
type urgentReader struct {
	chunks  []string
	urgents []int
}

func (u *urgentReader) Read(p []byte) (int, error) {
	n, _, err := u.ReadUrgent(p)
	return n, err
}

func (u *urgentReader) ReadUrgent(p []byte) (int, int, error) {
	if len(u.chunks) == 0 {
		return 0, -1, io.EOF
	}
	n := copy(p, u.chunks[0])
	if n < len(u.chunks[0]) {
		panic("test chunk larger than the scanner's buffer")
	}
	urg := u.urgents[0]
	u.chunks, u.urgents = u.chunks[1:], u.urgents[1:]
	return n, urg, nil
}

func TestScannerUrgent(t *testing.T) {
	tests := []struct {
		name    string
		chunks  []string
		urgents []int
		want    []int // Line.Urgent of each line
	}{
		{"DM urgent", []string{"\xff\xf4\xff\xf2ABOR\r\n"}, []int{3}, []int{3}},
		{"no urgent", []string{"\xff\xf4\xff\xf2ABOR\r\n"}, []int{-1}, []int{-1}},
		{"urgent in the second line of a read", []string{"NOOP\r\n\xff\xf4\xff\xf2ABOR\r\n"}, []int{9}, []int{-1, 3}},
		{"urgent in a later read", []string{"\xff\xf4\xff", "\xf2ABOR\r\nNOOP\r\n"}, []int{-1, 0}, []int{3, -1}},
		{"line spanning reads", []string{"NOOP\r\nAB", "OR\r\n"}, []int{-1, 1}, []int{-1, 3}},
		{"one byte per read", []string{"\xff", "\xf4", "\xff", "\xf2", "A", "B", "O", "R", "\r", "\n"},
			[]int{-1, -1, -1, 0, -1, -1, -1, -1, -1, -1}, []int{3}},
		{"index past the read is ignored", []string{"NOOP\r\n"}, []int{6}, []int{-1}},
		{"urgent byte is the LF", []string{"NOOP\r\nPASV\r\n"}, []int{5}, []int{5, -1}},
	}
	for _, tt := range tests {
		s := NewCommandScanner(&urgentReader{chunks: tt.chunks, urgents: tt.urgents})
		var got []int
		for {
			l, err := s.Next()
			if err != nil {
				if err != io.EOF {
					t.Errorf("%s: %v", tt.name, err)
				}
				break
			}
			got = append(got, l.Urgent)
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: urgents %v, want %v", tt.name, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: urgents %v, want %v", tt.name, got, tt.want)
				break
			}
		}
	}
}

// zeroReader returns 0, nil forever.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestScannerNoProgress(t *testing.T) {
	if _, err := NewReplyScanner(zeroReader{}).Next(); err != io.ErrNoProgress {
		t.Errorf("got %v, want io.ErrNoProgress", err)
	}
}

func TestScannerReadError(t *testing.T) {
	boom := errors.New("boom")
	s := NewReplyScanner(io.MultiReader(strings.NewReader("200 ok\r\n200 par"), errReader{boom}))
	if l, err := s.Next(); err != nil || string(l.Text) != "200 ok" {
		t.Fatalf("first line: %q, %v", l.Text, err)
	}
	if l, err := s.Next(); err != boom || string(l.Raw) != "200 par" {
		t.Errorf("second line: %q, %v; want the partial line and the read error", l.Raw, err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestScannerLongStream reads many lines through the small internal buffer.
func TestScannerLongStream(t *testing.T) {
	var in bytes.Buffer
	for i := 0; i < 500; i++ {
		in.WriteString("211-" + strings.Repeat("x", i%97) + "\r\n")
	}
	s := NewReplyScanner(bytes.NewReader(in.Bytes()))
	var out bytes.Buffer
	n := 0
	for {
		l, err := s.Next()
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
		out.Write(l.Raw)
		n++
	}
	if n != 500 || !bytes.Equal(out.Bytes(), in.Bytes()) {
		t.Errorf("%d lines, raw equal %v", n, bytes.Equal(out.Bytes(), in.Bytes()))
	}
}

func TestScannerRest(t *testing.T) {
	// After AUTH TLS the proxy relays the rest of the stream blindly: the
	// line already returned must not be in it, the bytes behind it must.
	s := NewCommandScanner(strings.NewReader("AUTH TLS\r\n\x16\x03\x01\x02\x00"))
	if l, err := s.Next(); err != nil || string(l.Text) != "AUTH TLS" {
		t.Fatalf("first line: %q, %v", l.Text, err)
	}
	if got := string(s.Rest()); got != "\x16\x03\x01\x02\x00" {
		t.Errorf("Rest after a line: %q", got)
	}
	s = NewCommandScanner(strings.NewReader("AUTH TLS\r\n"))
	s.Next()
	if got := s.Rest(); len(got) != 0 {
		t.Errorf("Rest with nothing behind the line: %q", got)
	}
	// A partial line is pending data.
	s = NewCommandScanner(&chunkReader{chunks: [][]byte{[]byte("NOOP\r\nPA")}})
	s.Next()
	s.Next() // ErrUnexpectedEOF, "PA" pending
	if got := string(s.Rest()); got != "PA" {
		t.Errorf("Rest with a partial line: %q", got)
	}
	rr := NewReplyReader(NewReplyScanner(strings.NewReader("234 AUTH TLS OK.\r\n\x16\x03\x03")))
	if r, err := rr.Next(); err != nil || r.Code != 234 {
		t.Fatalf("reply: %v, %v", r, err)
	}
	if got := string(rr.Rest()); got != "\x16\x03\x03" {
		t.Errorf("ReplyReader.Rest: %q", got)
	}
}
