package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// miniServer is a scripted FTP server for one control connection: it
// answers a login, FEAT, TYPE, PASV/EPSV (with a real data listener), LIST
// and QUIT, ending its lines with eol. Quirks, when set, may answer a
// command line in its own way first.
type miniServer struct {
	ln     net.Listener
	eol    string
	quirks func(line string) (reply string, ok bool)
	// dieAfterData: after sending LIST's data, close the control
	// connection instead of confirming with 226 (a server that died).
	dieAfterData bool
	done         chan struct{}
}

const miniListing = "-rw-r--r-- 1 ftp ftp 4 Jan 1 00:00 a.txt\n"

func startMiniServer(t *testing.T, eol string, quirks func(string) (string, bool), mod ...func(*miniServer)) *miniServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &miniServer{ln: ln, eol: eol, quirks: quirks, done: make(chan struct{})}
	for _, m := range mod {
		m(s)
	}
	go s.serve()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *miniServer) serve() {
	defer close(s.done)
	c, err := s.ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(format string, a ...any) { fmt.Fprintf(c, format+s.eol, a...) }
	say("220 lf-only server")
	var data net.Listener
	defer func() {
		if data != nil {
			data.Close()
		}
	}()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if s.quirks != nil {
			if reply, ok := s.quirks(line); ok {
				say("%s", reply)
				continue
			}
		}
		verb, _, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "USER":
			say("331 password please")
		case "PASS":
			say("230 logged in")
		case "FEAT":
			say("211-Features:")
			say(" EPSV")
			say(" PASV")
			say("211 End")
		case "PASV", "EPSV":
			if data, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return
			}
			p := data.Addr().(*net.TCPAddr).Port
			if strings.EqualFold(verb, "EPSV") {
				say("229 Entering Extended Passive Mode (|||%d|)", p)
			} else {
				say("227 Entering Passive Mode (127,0,0,1,%d,%d)", p>>8, p&0xff)
			}
		case "LIST":
			say("150 here it comes")
			dc, err := data.Accept()
			if err != nil {
				return
			}
			io.WriteString(dc, miniListing)
			dc.Close()
			if s.dieAfterData {
				return
			}
			say("226 done")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("200 ok")
		}
	}
}

// TestLFServer: a server whose reply lines end in a bare LF works through
// the proxy, passive replies rewritten, multi-line replies whole.
func TestLFServer(t *testing.T) {
	up := startMiniServer(t, "\n", nil)
	e := startProxy(t, up.ln.Addr().String(), time.Second)
	c := dialCtl(t, e.addr, "")
	c.expect(t, 220)
	c.cmd(t, 331, "USER a")
	c.cmd(t, 230, "PASS b")
	feat := c.cmd(t, 211, "FEAT")
	if !strings.Contains(feat, "EPSV") {
		t.Errorf("FEAT %q", feat)
	}
	for _, mode := range []string{"PASV", "EPSV"} {
		var b strings.Builder
		c.download(t, mode, "LIST", 0, &b)
		if b.String() != miniListing {
			t.Errorf("%s LIST got %q", mode, b.String())
		}
	}
	if holes := e.fw.Pinholes(); len(holes) != 0 {
		t.Errorf("pinholes left open: %v", holes)
	}
	c.cmd(t, 221, "QUIT")
}

// TestEPSVAllAnsweredWith229: a server that takes EPSV ALL for a plain EPSV
// answers 229 and opens a port. The proxy honours EPSV ALL itself: the
// client gets its 200, and the port the server opened is offered to no one.
func TestEPSVAllAnsweredWith229(t *testing.T) {
	up := startMiniServer(t, "\r\n", func(line string) (string, bool) {
		if strings.EqualFold(line, "EPSV ALL") {
			return "229 Entering Extended Passive Mode (|||40001|)", true
		}
		return "", false
	})
	e := startProxy(t, up.ln.Addr().String(), time.Second)
	c := dialCtl(t, e.addr, "")
	c.expect(t, 220)
	c.cmd(t, 331, "USER a")
	c.cmd(t, 230, "PASS b")
	c.cmd(t, 200, "EPSV ALL")
	if holes := e.fw.Pinholes(); len(holes) != 0 {
		t.Fatalf("EPSV ALL opened pinholes: %v", holes)
	}
	c.cmd(t, 501, "PASV")
	var b strings.Builder
	c.download(t, "EPSV", "LIST", 0, &b)
	if b.String() != miniListing {
		t.Errorf("EPSV LIST got %q", b.String())
	}
	c.cmd(t, 221, "QUIT")
}

// TestOpaqueRelayIdle: after AUTH TLS is accepted (234) the proxy relays
// the encrypted control channel blind, and the idle timeout still ends a
// silent one.
func TestOpaqueRelayIdle(t *testing.T) {
	up := startMiniServer(t, "\r\n", func(line string) (string, bool) {
		if strings.EqualFold(line, "AUTH TLS") {
			return "234 Proceed with negotiation.", true
		}
		return "", false
	})
	e := startProxy(t, up.ln.Addr().String(), time.Second, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	c := dialCtl(t, e.addr, "")
	c.expect(t, 220)
	c.cmd(t, 234, "AUTH TLS")
	// Bytes after the 234 go through untouched both ways (here the
	// scripted server still speaks plain FTP, which is all the relay sees).
	c.cmd(t, 200, "NOT A TLS RECORD")
	if n := e.logs.FilterMessage("idle timeout").Len(); n != 0 {
		t.Fatalf("idle timeout before the client fell silent")
	}
	c.expectEOF(t) // silence: the idle timeout ends it
	eventually(t, ioTimeout, "no idle timeout logged", func() bool { return e.logs.FilterMessage("idle timeout").Len() == 1 })
}
