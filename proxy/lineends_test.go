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

// lfServer is a scripted FTP server that ends every reply line with a bare
// LF, as some embedded and old servers do. It answers a login, TYPE,
// PASV/EPSV (with a real data listener), LIST and QUIT.
type lfServer struct {
	ln   net.Listener
	done chan struct{}
}

const lfListing = "-rw-r--r-- 1 ftp ftp 4 Jan 1 00:00 a.txt\n"

func startLFServer(t *testing.T) *lfServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &lfServer{ln: ln, done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *lfServer) serve() {
	defer close(s.done)
	c, err := s.ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(format string, a ...any) { fmt.Fprintf(c, format+"\n", a...) }
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
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
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
			io.WriteString(dc, lfListing)
			dc.Close()
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
	up := startLFServer(t)
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
		if b.String() != lfListing {
			t.Errorf("%s LIST got %q", mode, b.String())
		}
	}
	if holes := e.fw.Pinholes(); len(holes) != 0 {
		t.Errorf("pinholes left open: %v", holes)
	}
	c.cmd(t, 221, "QUIT")
}
