package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// fakeFTP is a scripted FTP server on loopback. Each handler returns the
// reply lines (CRLF added) to a command; nil handlers have the healthy
// defaults of a vsftpd-like server.
type fakeFTP struct {
	t    *testing.T
	ln   net.Listener
	Addr netip.AddrPort

	Greeting string
	User     func(arg string) string
	Pass     func(arg string) string
	Feat     string
	// EPSV and PASV: the default opens a data listener on 127.0.0.1 and
	// announces it (229, or 227 with 127.0.0.1).
	EPSV, PASV func(s *fakeSession) string
	// EPRT and PORT: the default records the address and replies 200.
	EPRT, PORT func(s *fakeSession, arg string) string
	// List: the default opens the data connection (accepts it, or dials
	// the active address), replies 150, sends Listing, closes, 226.
	List    func(s *fakeSession)
	Listing string

	mu   sync.Mutex
	cmds []string // every command line received, PASS included
	wg   sync.WaitGroup
}

// fakeSession is one control connection of a fakeFTP.
type fakeSession struct {
	f      *fakeFTP
	conn   net.Conn
	dataLn net.Listener   // the passive listener, if any
	active netip.AddrPort // the address of the last PORT/EPRT
}

const fakeListing = "-rw-r--r--    1 0        0            4096 Jan 01 00:00 small.bin\r\n" +
	"-rw-r--r--    1 0        0               0 Jan 01 00:00 empty.bin\r\n"

func newFake(t *testing.T) *fakeFTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFTP{t: t, ln: ln, Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Listing: fakeListing,
		Greeting: "220 (fakeFTPd 1.0)",
		Feat:     "211-Features:\r\n EPRT\r\n EPSV\r\n PASV\r\n REST STREAM\r\n211 End"}
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

// start serves; call it after setting the handlers.
func (f *fakeFTP) start() *fakeFTP {
	f.wg.Go(f.serve)
	return f
}

func (f *fakeFTP) URL() string { return "ftp://" + f.Addr.String() + "/" }

func (f *fakeFTP) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.session(c) })
	}
}

// Lines returns the command lines received, in order.
func (f *fakeFTP) Lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cmds)
}

// Commands returns the verbs received, in order.
func (f *fakeFTP) Commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var v []string
	for _, c := range f.cmds {
		v = append(v, ftp.ParseCommand([]byte(c)).Verb)
	}
	return v
}

func (f *fakeFTP) session(c net.Conn) {
	s := &fakeSession{f: f, conn: c}
	defer c.Close()
	defer func() {
		if s.dataLn != nil {
			s.dataLn.Close()
		}
	}()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	s.send(f.Greeting)
	sc := ftp.NewCommandScanner(c)
	for {
		l, err := sc.Next()
		if err != nil {
			return
		}
		cmd := ftp.ParseCommand(l.Text)
		f.mu.Lock()
		f.cmds = append(f.cmds, string(l.Text))
		f.mu.Unlock()
		switch cmd.Verb {
		case "USER":
			s.send(call1(f.User, cmd.Arg, "331 Please specify the password."))
		case "PASS":
			s.send(call1(f.Pass, cmd.Arg, "230 Login successful."))
		case "FEAT":
			s.send(f.Feat)
		case "EPSV":
			if f.EPSV != nil {
				s.send(f.EPSV(s))
				continue
			}
			p := s.listen()
			s.send(fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", p))
		case "PASV":
			if f.PASV != nil {
				s.send(f.PASV(s))
				continue
			}
			p := s.listen()
			s.send("227 Entering Passive Mode (" + ftp.FormatPORT(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p)) + ").")
		case "EPRT", "PORT":
			h := f.EPRT
			if cmd.Verb == "PORT" {
				h = f.PORT
			}
			if h != nil {
				s.send(h(s, cmd.Arg))
				continue
			}
			ap, err := ftp.ParseActive(cmd)
			if err != nil {
				s.send("501 Illegal " + cmd.Verb + " command.")
				continue
			}
			s.active = ap
			s.send("200 " + cmd.Verb + " command successful.")
		case "LIST":
			if f.List != nil {
				f.List(s)
				continue
			}
			s.list()
		case "QUIT":
			s.send("221 Goodbye.")
			return
		default:
			s.send("500 Unknown command.")
		}
	}
}

func call1(h func(string) string, arg, def string) string {
	if h == nil {
		return def
	}
	return h(arg)
}

// send writes reply lines, each ended by CRLF.
func (s *fakeSession) send(reply string) {
	var b strings.Builder
	for l := range strings.SplitSeq(reply, "\r\n") {
		b.WriteString(l + "\r\n")
	}
	_, _ = io.WriteString(s.conn, b.String())
}

// listen opens a new passive listener (closing the old one) and returns
// its port.
func (s *fakeSession) listen() uint16 {
	if s.dataLn != nil {
		s.dataLn.Close()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.f.t.Errorf("fake: %v", err)
		return 0
	}
	s.dataLn = ln
	s.active = netip.AddrPort{}
	return ln.Addr().(*net.TCPAddr).AddrPort().Port()
}

// data opens the data connection: accepts on the passive listener, or
// dials the active address.
func (s *fakeSession) data() (net.Conn, error) {
	if s.active.IsValid() {
		return net.DialTimeout("tcp", s.active.String(), 2*time.Second)
	}
	if s.dataLn == nil {
		return nil, errors.New("no PASV/PORT")
	}
	s.dataLn.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	c, err := s.dataLn.Accept()
	s.dataLn.Close()
	s.dataLn = nil
	return c, err
}

// list is the default LIST.
func (s *fakeSession) list() {
	c, err := s.data()
	if err != nil {
		s.send("425 Failed to establish connection.")
		return
	}
	s.send("150 Here comes the directory listing.")
	_, _ = io.WriteString(c, s.f.Listing)
	c.Close()
	s.send("226 Directory send OK.")
}

// freePort returns a loopback port nothing listens on (a SYN there gets
// a RST).
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	return p
}

// dialer is the real dialer with some addresses answered otherwise:
// hosts maps an IP to "unreachable" (ENETUNREACH at once) or "drop"
// (block until the context ends, as a SYN dropped by a firewall does);
// ports maps a loopback port the same way.
type dialer struct {
	hosts map[string]string
	ports map[uint16]string
}

func (d dialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err == nil {
		what := d.hosts[ap.Addr().String()]
		if what == "" && ap.Addr().IsLoopback() {
			what = d.ports[ap.Port()]
		}
		switch what {
		case "unreachable":
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}
		case "drop":
			<-ctx.Done()
			return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
		}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}
