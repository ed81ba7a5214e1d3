package proxy

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pftp "github.com/ftpalg/ftpalg/proxy/ftp"
)

// scripted is a fake upstream FTP server for one control connection. It
// reads commands with the proxy's own urgent-aware reader, so a test sees
// which byte arrived as TCP urgent data, and answers ABOR the RFC 959 way
// (426, then 226), QUIT with 221, anything else with 200.
type scripted struct {
	ln    net.Listener
	lines chan tapLine
	done  chan struct{}
	mu    sync.Mutex
	conn  net.Conn
}

func startScripted(t *testing.T) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{ln: ln, lines: make(chan tapLine, 64), done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.mu.Unlock()
		<-s.done
	})
	return s
}

func (s *scripted) addr() string { return s.ln.Addr().String() }

func (s *scripted) serve() {
	defer close(s.done)
	c, err := s.ln.Accept()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	defer c.Close()
	cc, err := newControlConn(c.(*net.TCPConn))
	if err != nil {
		return
	}
	io.WriteString(cc, "220 scripted server\r\n")
	sc := pftp.NewCommandScanner(cc)
	for {
		l, err := sc.Next()
		if err != nil {
			return
		}
		select {
		case s.lines <- tapLine{raw: string(l.Raw), urgent: l.Urgent}:
		default: // the test reads only what it needs
		}
		var reply string
		switch verb := strings.ToUpper(string(l.Text)); {
		case strings.HasSuffix(verb, "ABOR"):
			reply = "426 Transfer aborted, data connection closed.\r\n226 Abort successful.\r\n"
		case verb == "QUIT":
			io.WriteString(cc, "221 Bye.\r\n")
			return
		default:
			reply = "200 OK.\r\n"
		}
		if _, err := io.WriteString(cc, reply); err != nil {
			return
		}
	}
}

// next returns the next command line the server read.
func (s *scripted) next(t *testing.T) tapLine {
	t.Helper()
	select {
	case l := <-s.lines:
		return l
	case <-time.After(ioTimeout):
		t.Fatalf("the server received no command within %s", ioTimeout)
		return tapLine{}
	}
}

const (
	telnetIAC = "\xff"
	telnetIP  = "\xf4"
	telnetDM  = "\xf2"
)

// sendBSDAbort sends ABOR as BSD ftp does: "IAC IP", then "IAC" as TCP
// urgent data (the Synch), then "DM ABOR\r\n".
func sendBSDAbort(t testing.TB, c *ctl) {
	t.Helper()
	c.sendRaw(t, []byte(telnetIAC+telnetIP))
	c.sendOOB(t, []byte(telnetIAC))
	c.sendRaw(t, []byte(telnetDM+"ABOR\r\n"))
}

// TestABORUrgentRelay checks that the urgent byte of an ABOR reaches the
// server as urgent data at the same position, with the same bytes, for a
// BSD-style client (IAC IP, urgent IAC, DM ABOR) and a Python-ftplib-style
// client (all of "ABOR\r\n" sent with MSG_OOB, so the LF is the urgent
// byte: without SO_OOBINLINE on the proxy's client socket that LF would be
// taken out of the stream and the line would never end), and that the
// server's 426 and 226 reach the client in that order.
func TestABORUrgentRelay(t *testing.T) {
	cases := []struct {
		name       string
		send       func(t testing.TB, c *ctl)
		wantRaw    string
		wantUrgent int
	}{
		{"BSD", sendBSDAbort, telnetIAC + telnetIP + telnetIAC + telnetDM + "ABOR\r\n", 2},
		// 4.4BSD ftp sends all three bytes in one MSG_OOB send: the mark
		// is on the last of them, as above.
		{"BSD-one-send", func(t testing.TB, c *ctl) {
			c.sendOOB(t, []byte(telnetIAC+telnetIP+telnetIAC))
			c.sendRaw(t, []byte(telnetDM+"ABOR\r\n"))
		}, telnetIAC + telnetIP + telnetIAC + telnetDM + "ABOR\r\n", 2},
		{"ftplib", func(t testing.TB, c *ctl) { c.sendOOB(t, []byte("ABOR\r\n")) }, "ABOR\r\n", 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startScripted(t)
			e := startProxy(t, up.addr(), 5*time.Second)
			c := dialCtl(t, e.addr, "")
			c.expect(t, 220)
			c.cmd(t, 200, "NOOP")
			if l := up.next(t); l.raw != "NOOP\r\n" || l.urgent != -1 {
				t.Fatalf("server got %q with urgent %d, want a plain NOOP", l.raw, l.urgent)
			}

			tc.send(t, c)
			c.expect(t, 426)
			c.expect(t, 226)
			l := up.next(t)
			if l.raw != tc.wantRaw || l.urgent != tc.wantUrgent {
				t.Errorf("server got %q with urgent byte at %d, want %q with urgent byte at %d",
					l.raw, l.urgent, tc.wantRaw, tc.wantUrgent)
			}

			c.cmd(t, 200, "NOOP")
			if l := up.next(t); l.raw != "NOOP\r\n" || l.urgent != -1 {
				t.Errorf("after ABOR the server got %q with urgent %d, want a plain NOOP", l.raw, l.urgent)
			}
			c.cmd(t, 221, "QUIT")
		})
	}
}

// TestABORDuringRETR aborts a download of the 100 MiB file after its first
// 64 KiB, against internal/ftpd: the ABOR reaches the server with its
// urgent byte, the client gets 426 then 226, and the session goes on.
func TestABORDuringRETR(t *testing.T) {
	bigFile(t)
	head := make([]byte, 64<<10)
	f, err := os.Open(filepath.Join(servedDir, f100))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadFull(f, head)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	e := newEnv(t)
	for _, mode := range []string{"EPSV", "PORT"} {
		t.Run(mode, func(t *testing.T) {
			c := dialCtl(t, e.addr, "")
			c.login(t, "tester")
			dc := c.open(t, mode, "RETR "+f100, 0)
			got := make([]byte, len(head))
			if _, err := io.ReadFull(dc, got); err != nil {
				t.Fatalf("reading the start of the file: %v", err)
			}
			if !bytes.Equal(got, head) {
				t.Fatal("the first 64 KiB differ from the file's")
			}

			tapMark := len(e.tap.seen())
			sendBSDAbort(t, c)
			c.expect(t, 426)
			c.expect(t, 226)
			dc.Close()
			c.cmd(t, 200, "NOOP")

			seen := e.tap.seen()[tapMark:]
			if len(seen) == 0 || seen[0].raw != telnetIAC+telnetIP+telnetIAC+telnetDM+"ABOR\r\n" || seen[0].urgent != 2 {
				t.Errorf("server received %+v, want the ABOR line with its urgent byte at 2", seen)
			}

			var buf bytes.Buffer
			c.download(t, mode, "RETR "+f4k, 0, &buf)
			if !bytes.Equal(buf.Bytes(), fixtureData[f4k]) {
				t.Errorf("RETR after ABOR: got %d bytes, want the 4 KiB file", buf.Len())
			}
		})
	}
}
