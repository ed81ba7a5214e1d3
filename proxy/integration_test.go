package proxy

// Loopback integration tests: internal/ftpd announces 10.0.0.5 in its 227
// replies, the proxy sits in front of it on 127.0.0.1, and clients (the
// jlaffaye/ftp library for passive modes, a raw textproto client for active
// modes) transfer through the proxy.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

var dataModes = []string{"PASV", "EPSV", "PORT", "EPRT"}

// xfer is an FTP client that opens its data connections in one mode.
type xfer interface {
	list(t *testing.T) []string
	nlst(t *testing.T) []string
	retr(t *testing.T, name string, offset int64, w io.Writer)
	stor(t *testing.T, name string, r io.Reader)
	appe(t *testing.T, name string, r io.Reader)
	// lastDial is where the client last connected for data (passive
	// modes), "" when the client does not connect.
	lastDial() string
}

// libClient is jlaffaye/ftp in PASV or EPSV mode.
type libClient struct {
	c     *ftp.ServerConn
	dials *dialLog
}

func (l libClient) list(t *testing.T) []string {
	t.Helper()
	entries, err := l.c.List("/")
	if err != nil {
		t.Fatalf("LIST: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	return names
}

func (l libClient) nlst(t *testing.T) []string {
	t.Helper()
	names, err := l.c.NameList("/")
	if err != nil {
		t.Fatalf("NLST: %v", err)
	}
	return names
}

func (l libClient) retr(t *testing.T, name string, offset int64, w io.Writer) {
	t.Helper()
	r, err := l.c.RetrFrom(name, uint64(offset))
	if err != nil {
		t.Fatalf("RETR %s from %d: %v", name, offset, err)
	}
	_, err = io.Copy(w, r)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("RETR %s: %v", name, err)
	}
}

func (l libClient) stor(t *testing.T, name string, r io.Reader) {
	t.Helper()
	if err := l.c.Stor(name, r); err != nil {
		t.Fatalf("STOR %s: %v", name, err)
	}
}

func (l libClient) appe(t *testing.T, name string, r io.Reader) {
	t.Helper()
	if err := l.c.Append(name, r); err != nil {
		t.Fatalf("APPE %s: %v", name, err)
	}
}

func (l libClient) lastDial() string { return l.dials.last() }

// rawClient is the textproto client, in any mode (used for PORT and EPRT).
type rawClient struct {
	c    *ctl
	mode string
}

func (r rawClient) list(t *testing.T) []string {
	t.Helper()
	var buf bytes.Buffer
	r.c.download(t, r.mode, "LIST", 0, &buf)
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[len(f)-1])
		}
	}
	return names
}

func (r rawClient) nlst(t *testing.T) []string {
	t.Helper()
	var buf bytes.Buffer
	r.c.download(t, r.mode, "NLST", 0, &buf)
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		names = append(names, strings.TrimSpace(line))
	}
	return names
}

func (r rawClient) retr(t *testing.T, name string, offset int64, w io.Writer) {
	t.Helper()
	r.c.download(t, r.mode, "RETR "+name, offset, w)
}

func (r rawClient) stor(t *testing.T, name string, src io.Reader) {
	t.Helper()
	r.c.upload(t, r.mode, "STOR "+name, src)
}

func (r rawClient) appe(t *testing.T, name string, src io.Reader) {
	t.Helper()
	r.c.upload(t, r.mode, "APPE "+name, src)
}

func (r rawClient) lastDial() string { return "" }

// newXfer logs in through e's proxy with a client for mode.
func newXfer(t *testing.T, e *env, mode string) xfer {
	t.Helper()
	switch mode {
	case "PASV", "EPSV":
		c, dials := dialFTP(t, e.addr, mode == "EPSV")
		return libClient{c: c, dials: dials}
	}
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	return rawClient{c: c, mode: mode}
}

var reEPRT = regexp.MustCompile(`^EPRT \|1\|([0-9.]+)\|(\d+)\|$`)

// parseActive returns the address of a PORT or EPRT line.
func parseActive(line string) (netip.AddrPort, bool) {
	if arg, ok := strings.CutPrefix(line, "PORT "); ok {
		return parse227("(" + arg + ")")
	}
	m := reEPRT.FindStringSubmatch(line)
	if m == nil {
		return netip.AddrPort{}, false
	}
	a, err1 := netip.ParseAddr(m[1])
	p, err2 := strconv.ParseUint(m[2], 10, 16)
	if err1 != nil || err2 != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(p)), true
}

// hasVerb reports whether line is the command verb, with or without argument.
func hasVerb(line, verb string) bool {
	return line == verb || strings.HasPrefix(line, verb+" ")
}

// checkMode checks, from the proxy's trace since mark and the server's view
// since tapMark, that the one data connection of an operation was made in
// mode and that the proxy rewrote the address on the way: in passive modes
// the client was given the proxy's data port on 127.0.0.1 (never the
// server's 10.0.0.5 or its port) and connected there; in active modes the
// server was given the proxy's port, never the client's.
func checkMode(t *testing.T, e *env, mark, tapMark int, mode, dialed string) {
	t.Helper()
	evs := e.tr.since(mark)
	var modeCmds []TraceEvent
	for _, ev := range linesOf(evs, ClientToProxy) {
		for _, m := range dataModes {
			if hasVerb(ev.Line, m) {
				if m != mode {
					t.Errorf("%s operation: the client sent %q", mode, ev.Line)
				}
				modeCmds = append(modeCmds, ev)
			}
		}
	}
	if len(modeCmds) != 1 {
		t.Fatalf("%s operation: want one %s command, got %v", mode, mode, modeCmds)
	}
	switch mode {
	case "PASV", "EPSV":
		code := "227 "
		if mode == "EPSV" {
			code = "229 "
		}
		var serverPort uint16
		for _, ev := range linesOf(evs, ServerToProxy) {
			if !strings.HasPrefix(ev.Line, code) {
				continue
			}
			if mode == "PASV" {
				ap, ok := parse227(ev.Line)
				if !ok || ap.Addr() != netip.MustParseAddr(privateHost) {
					t.Fatalf("server's reply %q: want the server to announce %s", ev.Line, privateHost)
				}
				serverPort = ap.Port()
			} else {
				serverPort, _ = parse229(ev.Line)
			}
		}
		if serverPort == 0 {
			t.Fatalf("no %s reply from the server in %v", code, evs)
		}
		var shown netip.AddrPort
		for _, ev := range linesOf(evs, ProxyToClient) {
			if strings.Contains(ev.Line, "10,0,0,5") || strings.Contains(ev.Line, privateHost) {
				t.Errorf("the client was shown the server's private address: %q", ev.Line)
			}
			if !strings.HasPrefix(ev.Line, code) {
				continue
			}
			if !ev.Changed {
				t.Errorf("reply %q not marked as rewritten", ev.Line)
			}
			if mode == "PASV" {
				shown, _ = parse227(ev.Line)
			} else {
				p, _ := parse229(ev.Line)
				shown = netip.AddrPortFrom(loopback, p)
			}
		}
		if shown.Addr() != loopback || shown.Port() == 0 {
			t.Fatalf("client was not given a data address on %s: %v", loopback, shown)
		}
		if shown.Port() == serverPort {
			t.Errorf("client was given the server's own data port %d", serverPort)
		}
		if dialed != shown.String() {
			t.Errorf("client connected to %q for data, want the announced %s", dialed, shown)
		}
	case "PORT", "EPRT":
		client, ok := parseActive(modeCmds[0].Line)
		if !ok {
			t.Fatalf("cannot parse the client's %q", modeCmds[0].Line)
		}
		toServer := linesOf(evs, ProxyToServer)
		if len(toServer) != 1 || !hasVerb(toServer[0].Line, mode) || !toServer[0].Changed {
			t.Fatalf("want one rewritten %s sent to the server, got %v", mode, toServer)
		}
		sent, ok := parseActive(toServer[0].Line)
		if !ok || sent.Addr() != loopback || sent.Port() == client.Port() {
			t.Fatalf("server was sent %q: want the proxy's own port on %s, not the client's %s",
				toServer[0].Line, loopback, client)
		}
		var got []string
		for _, l := range e.tap.seen()[tapMark:] {
			if hasVerb(strings.TrimRight(l.raw, "\r\n"), mode) {
				got = append(got, l.raw)
			}
		}
		if len(got) != 1 || got[0] != toServer[0].Line+"\r\n" {
			t.Fatalf("server received %q, want exactly %q", got, toServer[0].Line+"\r\n")
		}
	}
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

// TestTransfers runs LIST, NLST, RETR, STOR, APPE and REST+RETR through the
// proxy in each of PASV, EPSV, PORT and EPRT, with files of 0 B, 1 B,
// 4 KiB and 100 MiB, comparing SHA-256 sums (uploads on disk), and checks
// from the trace that each operation used the mode it should and that the
// proxy's address, never the server's, was handed out.
func TestTransfers(t *testing.T) {
	e := newEnv(t)
	sizes := []struct {
		label, file string
		big         bool
	}{{"0B", f0, false}, {"1B", f1, false}, {"4KiB", f4k, false}, {"100MiB", f100, true}}

	for _, mode := range dataModes {
		t.Run(mode, func(t *testing.T) {
			cl := newXfer(t, e, mode)
			// op runs f, which must make exactly one data connection.
			op := func(t *testing.T, f func()) {
				t.Helper()
				mark, tapMark := e.tr.mark(), len(e.tap.seen())
				f()
				checkMode(t, e, mark, tapMark, mode, cl.lastDial())
			}
			wantNames := []string{f0, f1, f4k}
			checkNames := func(t *testing.T, got []string) {
				t.Helper()
				have := map[string]bool{}
				for _, n := range got {
					have[path.Base(n)] = true
				}
				for _, n := range wantNames {
					if !have[n] {
						t.Errorf("listing %q lacks %s", got, n)
					}
				}
			}
			t.Run("LIST", func(t *testing.T) { op(t, func() { checkNames(t, cl.list(t)) }) })
			t.Run("NLST", func(t *testing.T) { op(t, func() { checkNames(t, cl.nlst(t)) }) })

			for _, sz := range sizes {
				t.Run("RETR/"+sz.label, func(t *testing.T) {
					var want [32]byte
					if sz.big {
						needBig(t)
						want = bigFile(t)
					} else {
						want = sha256Of(fixtureData[sz.file])
					}
					h := sha256.New()
					op(t, func() { cl.retr(t, sz.file, 0, h) })
					if got := [32]byte(h.Sum(nil)); got != want {
						t.Errorf("RETR %s: sha256 %x, want %x", sz.file, got, want)
					}
				})
				t.Run("STOR/"+sz.label, func(t *testing.T) {
					name := fmt.Sprintf("up-%s-%s.bin", mode, sz.label)
					removeServed(t, name)
					var src io.Reader
					var want [32]byte
					if sz.big {
						needBig(t)
						want = bigFile(t)
						f, err := os.Open(filepath.Join(servedDir, f100))
						if err != nil {
							t.Fatal(err)
						}
						defer f.Close()
						src = f
					} else {
						want = sha256Of(fixtureData[sz.file])
						src = bytes.NewReader(fixtureData[sz.file])
					}
					op(t, func() { cl.stor(t, name, src) })
					if got := fileSum(t, name); got != want {
						t.Errorf("STOR %s: on disk sha256 %x, want %x", name, got, want)
					}
				})
			}

			t.Run("APPE", func(t *testing.T) {
				name := fmt.Sprintf("appe-%s.bin", mode)
				removeServed(t, name)
				first, second := fixtureData[f4k], []byte("appended by APPE\n")
				op(t, func() { cl.appe(t, name, bytes.NewReader(first)) }) // creates
				op(t, func() { cl.appe(t, name, bytes.NewReader(second)) })
				want := sha256Of(append(append([]byte(nil), first...), second...))
				if got := fileSum(t, name); got != want {
					t.Errorf("APPE %s: on disk sha256 %x, want %x", name, got, want)
				}
			})

			t.Run("REST", func(t *testing.T) {
				const offset = 1000
				var buf bytes.Buffer
				op(t, func() { cl.retr(t, f4k, offset, &buf) })
				if got, want := sha256Of(buf.Bytes()), sha256Of(fixtureData[f4k][offset:]); got != want {
					t.Errorf("REST %d + RETR: %d bytes with sha256 %x, want %d bytes with %x",
						offset, buf.Len(), got, len(fixtureData[f4k])-offset, want)
				}
			})
		})
	}
}

// TestActiveBounceRefused checks RFC 2577 on PORT and EPRT: a third-party
// address and a privileged port are refused by the proxy with 504, never
// reach the server, and the session goes on.
func TestActiveBounceRefused(t *testing.T) {
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	mark, tapMark := e.tr.mark(), len(e.tap.seen())
	for _, cmd := range []string{
		"PORT 192,0,2,99,195,80",      // third party, port 50000
		"EPRT |1|192.0.2.99|50000|",   // third party
		"PORT 127,0,0,1,0,21",         // the client's own address, port 21
		"EPRT |1|127.0.0.1|21|",       // the same
		"PORT 127,0,0,1,3,255",        // port 1023
		"EPRT |1|127.0.0.2|50000|",    // another loopback address is another host
		"PORT 255,255,255,255,195,80", // broadcast
	} {
		msg := c.cmd(t, 504, "%s", cmd)
		if !strings.Contains(msg, "refused") {
			t.Errorf("%s: 504 %s", cmd, msg)
		}
	}
	c.cmd(t, 200, "NOOP")

	for _, ev := range e.tr.since(mark) {
		if ev.Dir == ProxyToServer {
			t.Errorf("the proxy sent the server %q", ev.Line)
		}
		if ev.Dir == ProxyToClient && strings.HasPrefix(ev.Line, "504 ") && !ev.Changed {
			t.Errorf("504 not marked as the proxy's own reply: %q", ev.Line)
		}
	}
	// The server saw the NOOP and nothing before it: the refused commands
	// never left the proxy.
	var seen []string
	for _, l := range e.tap.seen()[tapMark:] {
		seen = append(seen, l.raw)
	}
	if len(seen) != 1 || seen[0] != "NOOP\r\n" {
		t.Errorf("server received %q, want only the NOOP", seen)
	}
	if opened, _ := e.fw.Counts(); opened != 0 {
		t.Errorf("%d pinholes opened for refused commands", opened)
	}

	// A proper active transfer works on the same session.
	for _, mode := range []string{"PORT", "EPRT"} {
		var buf bytes.Buffer
		mark, tapMark := e.tr.mark(), len(e.tap.seen())
		c.download(t, mode, "RETR "+f4k, 0, &buf)
		checkMode(t, e, mark, tapMark, mode, "")
		if !bytes.Equal(buf.Bytes(), fixtureData[f4k]) {
			t.Errorf("%s RETR after refusals: got %d bytes, want the 4 KiB file", mode, buf.Len())
		}
	}
}

// TestPassiveForeignPeerRefused connects to an announced passive port from
// 127.0.0.2 while the server waits to send a file: the proxy must close
// that connection without passing it a byte, and the client's own
// connection from 127.0.0.1 must then get the file.
func TestPassiveForeignPeerRefused(t *testing.T) {
	e := newEnv(t)
	for _, mode := range []string{"PASV", "EPSV"} {
		t.Run(mode, func(t *testing.T) {
			c := dialCtl(t, e.addr, "")
			c.login(t, "tester")
			port := c.passive(t, mode)
			target := netip.AddrPortFrom(loopback, port).String()
			c.send(t, "RETR %s", f4k)

			d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			fc, err := d.Dial("tcp", target)
			switch {
			case errors.Is(err, syscall.ECONNRESET):
				// Reset before connect(2) returned: refused just as well.
			case err != nil:
				t.Fatalf("connecting from 127.0.0.2: %v", err)
			default:
				defer fc.Close()
				fc.Write([]byte("data from a stranger\r\n"))
				fc.SetReadDeadline(time.Now().Add(ioTimeout))
				n, err := io.Copy(io.Discard, fc)
				if n != 0 {
					t.Errorf("the foreign connection received %d bytes", n)
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the proxy did not close the foreign connection within %s", ioTimeout)
				}
				if err != nil && !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("foreign connection: want EOF or reset, got %v", err)
				}
			}

			dc, err := net.DialTimeout("tcp", target, ioTimeout)
			if err != nil {
				t.Fatalf("the client's own data connection: %v", err)
			}
			defer dc.Close()
			c.expectPrelim(t)
			dc.SetDeadline(time.Now().Add(ioTimeout))
			got, err := io.ReadAll(dc)
			if err != nil {
				t.Fatal(err)
			}
			c.expect(t, 226)
			if sha256Of(got) != sha256Of(fixtureData[f4k]) {
				t.Errorf("got %d bytes, want the 4 KiB file", len(got))
			}
		})
	}
}

// pinholeAt returns the pinholes open for local, Session ignored.
func pinholeAt(open []rules.Pinhole, local netip.AddrPort) []rules.Pinhole {
	var out []rules.Pinhole
	for _, p := range open {
		if p.Local == local {
			out = append(out, p)
		}
	}
	return out
}

// TestPinholesPassive checks that the pinhole for the client's data
// connection is open when the client reads the rewritten 227/229, lets in
// only the client's address on the announced port, and is gone once the
// proxy has accepted the connection.
func TestPinholesPassive(t *testing.T) {
	e := newEnv(t)
	for _, mode := range []string{"PASV", "EPSV"} {
		t.Run(mode, func(t *testing.T) {
			c := dialCtl(t, e.addr, "")
			c.login(t, "pin-"+mode)
			sess := e.tr.sessionOf(t, "USER pin-"+mode)
			opened0, closed0 := e.fw.Counts()
			port := c.passive(t, mode)
			local := netip.AddrPortFrom(loopback, port)
			want := rules.Pinhole{Proto: rules.ProtoTCP, Peer: loopback, Local: local,
				Lifetime: e.cfg.DataAcceptTimeout, Session: sess}
			if open := e.fw.Pinholes(); len(open) != 1 || open[0] != want {
				t.Fatalf("when the client got the %s reply: pinholes %v, want [%v]", mode, open, want)
			}
			c.send(t, "RETR %s", f4k)
			dc, err := net.DialTimeout("tcp", local.String(), ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer dc.Close()
			// The server's 150 follows its accepting the proxy's
			// connection, which the proxy makes after accepting ours and
			// closing the pinhole.
			c.expectPrelim(t)
			if open := e.fw.Pinholes(); len(open) != 0 {
				t.Errorf("after the data connection was accepted: pinholes %v still open", open)
			}
			dc.SetDeadline(time.Now().Add(ioTimeout))
			got, err := io.ReadAll(dc)
			if err != nil {
				t.Fatal(err)
			}
			c.expect(t, 226)
			if !bytes.Equal(got, fixtureData[f4k]) {
				t.Errorf("got %d bytes, want the 4 KiB file", len(got))
			}
			opened, closed := e.fw.Counts()
			if opened-opened0 != 1 || closed-closed0 != 1 {
				t.Errorf("pinholes opened %d, closed %d; want 1 and 1", opened-opened0, closed-closed0)
			}
		})
	}
}

// TestPinholesActive checks that when the server receives the rewritten
// PORT/EPRT the pinhole for its data connection (from the server's address
// to the announced port) is open, and that it is gone once the proxy has
// accepted the server's connection.
func TestPinholesActive(t *testing.T) {
	e := newEnv(t)
	for _, mode := range []string{"PORT", "EPRT"} {
		t.Run(mode, func(t *testing.T) {
			var (
				mu        sync.Mutex
				announced netip.AddrPort
				atServer  []rules.Pinhole
			)
			e.tap.setHook(func(l tapLine) {
				if ap, ok := parseActive(strings.TrimRight(l.raw, "\r\n")); ok {
					mu.Lock()
					announced, atServer = ap, e.fw.Pinholes()
					mu.Unlock()
				}
			})
			defer e.tap.setHook(nil)
			c := dialCtl(t, e.addr, "")
			c.login(t, "pin-"+mode)
			sess := e.tr.sessionOf(t, "USER pin-"+mode)
			ln := c.announce(t, mode) // returns after the server's 200
			mu.Lock()
			want := rules.Pinhole{Proto: rules.ProtoTCP, Peer: loopback, Local: announced,
				Lifetime: e.cfg.DataAcceptTimeout, Session: sess}
			if len(atServer) != 1 || atServer[0] != want {
				t.Errorf("when the server got %s: pinholes %v, want [%v]", mode, atServer, want)
			}
			mu.Unlock()

			c.send(t, "RETR %s", f4k)
			c.expectPrelim(t)
			ln.SetDeadline(time.Now().Add(ioTimeout))
			dc, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer dc.Close()
			// The proxy connects to us after accepting the server's
			// connection and closing the pinhole.
			if open := e.fw.Pinholes(); len(open) != 0 {
				t.Errorf("after the server's data connection was accepted: pinholes %v still open", open)
			}
			dc.SetDeadline(time.Now().Add(ioTimeout))
			got, err := io.ReadAll(dc)
			if err != nil {
				t.Fatal(err)
			}
			c.expect(t, 226)
			if !bytes.Equal(got, fixtureData[f4k]) {
				t.Errorf("got %d bytes, want the 4 KiB file", len(got))
			}
		})
	}
}

// TestPinholeExpires checks that an announced data port nobody connects to
// is closed, pinhole and listener, after DataAcceptTimeout, in passive and
// active mode, and that the session is unaffected.
func TestPinholeExpires(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DataAcceptTimeout = 300 * time.Millisecond })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	refused := func(t *testing.T, ap netip.AddrPort) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", ap.String(), ioTimeout)
		if err == nil {
			conn.Close()
			t.Errorf("%s still accepts connections after its offer expired", ap)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: want connection refused, got %v", ap, err)
		}
	}
	for _, mode := range []string{"PASV", "EPSV"} {
		port := c.passive(t, mode)
		local := netip.AddrPortFrom(loopback, port)
		if open := pinholeAt(e.fw.Pinholes(), local); len(open) != 1 {
			t.Fatalf("%s: pinholes for %s: %v, want one", mode, local, open)
		}
		eventually(t, 10*time.Second, mode+": unused pinhole not closed", func() bool { return len(e.fw.Pinholes()) == 0 })
		refused(t, local)
	}
	for _, mode := range []string{"PORT", "EPRT"} {
		mark := e.tr.mark()
		c.announce(t, mode)
		var sent netip.AddrPort
		for _, ev := range linesOf(e.tr.since(mark), ProxyToServer) {
			sent, _ = parseActive(ev.Line)
		}
		if open := pinholeAt(e.fw.Pinholes(), sent); len(open) != 1 {
			t.Fatalf("%s: pinholes for %s: %v, want one", mode, sent, open)
		}
		eventually(t, 10*time.Second, mode+": unused pinhole not closed", func() bool { return len(e.fw.Pinholes()) == 0 })
		refused(t, sent)
	}
	c.cmd(t, 200, "NOOP")
	var buf bytes.Buffer
	c.download(t, "EPSV", "RETR "+f4k, 0, &buf)
	if !bytes.Equal(buf.Bytes(), fixtureData[f4k]) {
		t.Errorf("RETR after expired offers: got %d bytes", buf.Len())
	}
	if opened, closed := e.fw.Counts(); opened != closed {
		t.Errorf("pinholes opened %d, closed %d", opened, closed)
	}
}

// TestPinholeOpenFails makes the firewall refuse every pinhole: the client
// gets 425 in every mode, nothing stays open (no pinhole, no listener of
// the proxy), active-mode commands never reach the server, and the session
// goes on.
func TestPinholeOpenFails(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Firewall.(*rulestest.Fake).FailOpen = errors.New("fake firewall: no") })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	for _, mode := range dataModes {
		t.Run(mode, func(t *testing.T) {
			var ln *net.TCPListener
			if mode == "PORT" || mode == "EPRT" {
				l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				ln = l
			}
			before := ownListeners(t)
			mark, tapMark := e.tr.mark(), len(e.tap.seen())
			switch mode {
			case "PASV", "EPSV":
				c.cmd(t, 425, "%s", mode)
			case "PORT":
				p := ln.Addr().(*net.TCPAddr).Port
				c.cmd(t, 425, "PORT 127,0,0,1,%d,%d", p>>8, p&0xff)
			case "EPRT":
				c.cmd(t, 425, "EPRT |1|127.0.0.1|%d|", ln.Addr().(*net.TCPAddr).Port)
			}
			// New listeners may only be the server's own passive port.
			allowed := map[uint16]bool{}
			for _, ev := range linesOf(e.tr.since(mark), ServerToProxy) {
				if ap, ok := parse227(ev.Line); ok {
					allowed[ap.Port()] = true
				}
				if p, ok := parse229(ev.Line); ok {
					allowed[p] = true
				}
			}
			for p := range ownListeners(t) {
				if !before[p] && !allowed[p] {
					t.Errorf("a listener on port %d was left open", p)
				}
			}
			if open := e.fw.Pinholes(); len(open) != 0 {
				t.Errorf("pinholes open: %v", open)
			}
			if mode == "PORT" || mode == "EPRT" {
				for _, l := range e.tap.seen()[tapMark:] {
					t.Errorf("server received %q", l.raw)
				}
			}
			c.cmd(t, 200, "NOOP")
		})
	}
	if opened, _ := e.fw.Counts(); opened != 0 {
		t.Errorf("%d pinholes opened", opened)
	}
}

// TestBadCommandLines checks that command lines with a bare LF, a bare CR
// or a NUL are answered 500 and never forwarded, and that a line over 8192
// bytes is answered 500 and ends the session.
func TestBadCommandLines(t *testing.T) {
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	tapMark := len(e.tap.seen())
	for _, raw := range []string{"NOOP\n\r\n", "NO\x00OP\r\n", "NOOP\x00\r\n", "NO\rOP\r\n"} {
		c.sendRaw(t, []byte(raw))
		c.expect(t, 500)
	}
	// A command smuggled behind a bare LF: only CRLF ends a command line,
	// so the whole line up to it is refused with one 500, and nothing of
	// it reaches the server.
	c.sendRaw(t, []byte("DELE "+f4k+"\nNOOP\r\n"))
	c.expect(t, 500)
	c.cmd(t, 200, "NOOP")
	var seen []string
	for _, l := range e.tap.seen()[tapMark:] {
		seen = append(seen, l.raw)
	}
	if len(seen) != 1 || seen[0] != "NOOP\r\n" {
		t.Errorf("server received %q, want only the one proper NOOP", seen)
	}
	if _, err := os.Stat(filepath.Join(servedDir, f4k)); err != nil {
		t.Errorf("the smuggled DELE reached the server: %v", err)
	}

	c2 := dialCtl(t, e.addr, "")
	c2.login(t, "tester")
	tapMark = len(e.tap.seen())
	c2.sendRaw(t, []byte("NOOP "+strings.Repeat("A", 8200)+"\r\n"))
	r := bufio.NewReader(c2.c)
	c2.c.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "500 ") {
		t.Fatalf("over-long line: got %q, %v; want a 500 reply", line, err)
	}
	rest, err := io.ReadAll(r)
	if len(rest) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("after the 500: got %q, %v; want the connection closed", rest, err)
	}
	for _, l := range e.tap.seen()[tapMark:] {
		if strings.HasPrefix(l.raw, "NOOP A") {
			t.Errorf("server received the over-long line (%d bytes)", len(l.raw))
		}
	}
}

// TestPinholeReplaced checks that a new PASV/EPSV/PORT cancels the data
// offer the previous one left unused: its pinhole and port are closed at
// once, and the new offer works.
func TestPinholeReplaced(t *testing.T) {
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	first := netip.AddrPortFrom(loopback, c.passive(t, "PASV"))
	second := netip.AddrPortFrom(loopback, c.passive(t, "EPSV"))
	open := e.fw.Pinholes()
	if len(open) != 1 || open[0].Local != second {
		t.Fatalf("after PASV then EPSV: pinholes %v, want only the one for %s", open, second)
	}
	// (With no port range the kernel may give the second offer the port
	// the first one just freed; then there is nothing to check.)
	if first != second {
		if conn, err := net.DialTimeout("tcp", first.String(), ioTimeout); err == nil {
			conn.Close()
			t.Errorf("the replaced offer's port %s still accepts connections", first)
		}
	}

	mark := e.tr.mark()
	ln := c.announce(t, "PORT") // replaces the EPSV offer
	var sent netip.AddrPort
	for _, ev := range linesOf(e.tr.since(mark), ProxyToServer) {
		sent, _ = parseActive(ev.Line)
	}
	if open := e.fw.Pinholes(); len(open) != 1 || open[0].Local != sent {
		t.Fatalf("after EPSV then PORT: pinholes %v, want only the one for %s", open, sent)
	}
	c.send(t, "RETR %s", f4k)
	c.expectPrelim(t)
	ln.SetDeadline(time.Now().Add(ioTimeout))
	dc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dc.SetDeadline(time.Now().Add(ioTimeout))
	got, err := io.ReadAll(dc)
	if err != nil {
		t.Fatal(err)
	}
	c.expect(t, 226)
	if !bytes.Equal(got, fixtureData[f4k]) {
		t.Errorf("got %d bytes, want the 4 KiB file", len(got))
	}
	if opened, closed := e.fw.Counts(); opened != 3 || closed != 3 {
		t.Errorf("pinholes opened %d, closed %d; want 3 and 3", opened, closed)
	}
}
