package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/nat"
	pftp "github.com/ftpalg/ftpalg/proxy/ftp"
)

// legacy sits in front of internal/ftpd and makes it a server that never
// heard of RFC 2428 or RFC 1639: EPSV, EPRT, LPSV and LPRT get "500", and
// FEAT lists neither EPSV nor EPRT. It records the command lines it gets.
type legacy struct {
	ln   net.Listener
	up   string
	mu   sync.Mutex
	seen []string
	wg   sync.WaitGroup
}

func startLegacy(t *testing.T, upstream string) *legacy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &legacy{ln: ln, up: upstream}
	l.wg.Add(1)
	go l.serve()
	t.Cleanup(func() { ln.Close(); l.wg.Wait() })
	return l
}

func (l *legacy) serve() {
	defer l.wg.Done()
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", l.up, ioTimeout)
		if err != nil {
			in.Close()
			continue
		}
		var wmu sync.Mutex // replies of ours and of the server, whole lines each
		l.wg.Add(2)
		go l.commands(in, out, &wmu)
		go l.replies(in, out, &wmu)
	}
}

func (l *legacy) commands(in, out net.Conn, wmu *sync.Mutex) {
	defer l.wg.Done()
	defer out.Close()
	br := bufio.NewReader(in)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l.mu.Lock()
		l.seen = append(l.seen, strings.TrimRight(line, "\r\n"))
		l.mu.Unlock()
		switch pftp.ParseCommand([]byte(strings.TrimRight(line, "\r\n"))).Verb {
		case "EPSV", "EPRT", "LPSV", "LPRT":
			wmu.Lock()
			in.Write([]byte("500 Unknown command.\r\n"))
			wmu.Unlock()
			continue
		}
		if _, err := out.Write([]byte(line)); err != nil {
			return
		}
	}
}

func (l *legacy) replies(in, out net.Conn, wmu *sync.Mutex) {
	defer l.wg.Done()
	defer in.Close()
	br := bufio.NewReader(out)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if t := strings.TrimSpace(line); t == "EPSV" || t == "EPRT" {
			continue
		}
		wmu.Lock()
		_, err = in.Write([]byte(line))
		wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// commands returns what the server was sent, verbs only.
func (l *legacy) verbs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var v []string
	for _, s := range l.seen {
		v = append(v, pftp.ParseCommand([]byte(s)).Verb)
	}
	return v
}

func startLegacyEnv(t *testing.T) (*env, *legacy) {
	t.Helper()
	fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0", PublicHost: privateHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	l := startLegacy(t, fs.Addr())
	return startProxy(t, l.ln.Addr().String(), time.Second), l
}

// TestTranslateEPSVToPASV: a client that speaks EPSV and EPRT only gets
// 229 and 200 from a server that knows neither; the server is sent PASV and
// PORT, and the file arrives intact.
func TestTranslateEPSVToPASV(t *testing.T) {
	e, l := startLegacyEnv(t)
	want := sha256.Sum256(mustRead(t, filepath.Join(servedDir, f4k)))
	for _, mode := range []string{"EPSV", "EPRT"} {
		c := dialCtl(t, e.addr, "")
		c.login(t, "u")
		var buf bytes.Buffer
		c.download(t, mode, "RETR "+f4k, 0, &buf)
		if sha256.Sum256(buf.Bytes()) != want {
			t.Fatalf("%s: data differs", mode)
		}
		// A second transfer: the proxy now knows and asks for PASV/PORT
		// directly.
		buf.Reset()
		c.download(t, mode, "RETR "+f4k, 0, &buf)
		if sha256.Sum256(buf.Bytes()) != want {
			t.Fatalf("%s, second time: data differs", mode)
		}
		c.cmd(t, 221, "QUIT")
	}
	v := strings.Join(l.verbs(), " ")
	for _, want := range []string{"EPSV PASV", "PASV", "EPRT PORT", "PORT"} {
		if !strings.Contains(v, want) {
			t.Fatalf("server was sent %q, want %q in it", v, want)
		}
	}
	if n := strings.Count(v, "EPSV"); n != 1 {
		t.Fatalf("server was sent EPSV %d times (%q): the second EPSV should have gone as PASV", n, v)
	}
}

// TestTranslateFEATAndEPSVAll: FEAT lists EPSV and EPRT even when the server
// does not; EPSV ALL is honoured by the proxy (200) though the server
// refuses it, and PORT/PASV after it are refused by the proxy (RFC 2428 4).
func TestTranslateFEATAndEPSVAll(t *testing.T) {
	e, _ := startLegacyEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "u")
	c.send(t, "FEAT")
	code, msg, err := c.read()
	if err != nil || code != 211 || !strings.Contains(msg, "EPSV") || !strings.Contains(msg, "EPRT") {
		t.Fatalf("FEAT: %d %q, %v; want EPSV and EPRT listed", code, msg, err)
	}
	c.cmd(t, 200, "EPSV ALL")
	c.cmd(t, 501, "PORT 127,0,0,1,200,10")
	c.cmd(t, 501, "PASV")
	c.cmd(t, 229, "EPSV")
}

// TestTranslateFamilies: an IPv4 client through the proxy to an IPv6-only
// server, and an IPv6 client to an IPv4 server, in every mode the client's
// family allows, with the file intact.
func TestTranslateFamilies(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	want := sha256.Sum256(mustRead(t, filepath.Join(servedDir, f4k)))

	t.Run("v4-client-v6-server", func(t *testing.T) {
		fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "[::1]:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		tp := startTapAt(t, "[::1]:0", fs.Addr()) // the proxy reaches the server over IPv6
		e := startProxy(t, tp.addr(), time.Second)
		for _, mode := range []string{"PASV", "EPSV", "PORT", "EPRT"} {
			c := dialCtl(t, e.addr, "")
			c.login(t, "u")
			var buf bytes.Buffer
			c.download(t, mode, "RETR "+f4k, 0, &buf)
			if sha256.Sum256(buf.Bytes()) != want {
				t.Fatalf("%s: data differs", mode)
			}
			c.cmd(t, 221, "QUIT")
		}
		// LPRT from the client goes to the IPv6 server as EPRT.
		c := dialCtl(t, e.addr, "")
		c.login(t, "u")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p := ln.Addr().(*net.TCPAddr).Port
		c.cmd(t, 200, "LPRT 4,4,127,0,0,1,2,%d,%d", p>>8, p&0xff)
		seen := tp.seen()
		if last := seen[len(seen)-1].raw; !strings.HasPrefix(last, "EPRT |2|::1|") {
			t.Fatalf("LPRT went to the IPv6 server as %q, want EPRT |2|", last)
		}
		for _, l := range seen {
			verb := pftp.ParseCommand([]byte(strings.TrimRight(l.raw, "\r\n"))).Verb
			if verb == "PASV" || verb == "PORT" || verb == "LPRT" {
				t.Fatalf("the IPv6 server was sent %q", l.raw)
			}
		}
	})
	t.Run("v6-client-v4-server", func(t *testing.T) {
		e := newEnv6(t)
		for _, mode := range []string{"EPSV", "EPRT"} {
			c := dialCtl(t, e.addr, "")
			c.login(t, "u")
			var buf bytes.Buffer
			c.download6(t, mode, "RETR "+f4k, &buf)
			if sha256.Sum256(buf.Bytes()) != want {
				t.Fatalf("%s: data differs", mode)
			}
			c.cmd(t, 425, "PASV")
			c.cmd(t, 522, "EPSV 1")
			c.cmd(t, 221, "QUIT")
		}
	})
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newEnv6 is a proxy listening on [::1] in front of internal/ftpd on IPv4.
func newEnv6(t *testing.T) *env {
	t.Helper()
	fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return startProxyAt(t, "[::1]:0", fs.Addr(), time.Second)
}

// download6 downloads over an IPv6 data connection in EPSV or EPRT mode.
func (c *ctl) download6(t *testing.T, mode, cmd string, w io.Writer) {
	t.Helper()
	var dc net.Conn
	if mode == "EPSV" {
		msg := c.cmd(t, 229, "EPSV")
		p, ok := parse229(msg)
		if !ok {
			t.Fatalf("229 %q", msg)
		}
		c.send(t, "%s", cmd)
		conn, err := net.DialTimeout("tcp", net.JoinHostPort("::1", strconv.Itoa(int(p))), ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		dc = conn
		c.expectPrelim(t)
	} else {
		ln, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c.cmd(t, 200, "EPRT |2|::1|%d|", ln.Addr().(*net.TCPAddr).Port)
		c.send(t, "%s", cmd)
		c.expectPrelim(t)
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(ioTimeout))
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		dc = conn
	}
	defer dc.Close()
	dc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.Copy(w, dc); err != nil {
		t.Fatal(err)
	}
	c.expect(t, 226)
}

// TestAdvertiseFor: a client in a network with its own rule is told that
// rule's address in 227; others get the default.
func TestAdvertiseFor(t *testing.T) {
	for _, tc := range []struct {
		rules []nat.AdvertiseRule
		want  string
	}{
		{[]nat.AdvertiseRule{{Clients: netip.MustParsePrefix("127.0.0.0/8"), Addr: netip.MustParseAddr("198.51.100.9")}}, "198.51.100.9"},
		{[]nat.AdvertiseRule{{Clients: netip.MustParsePrefix("10.0.0.0/8"), Addr: netip.MustParseAddr("10.0.0.1")}}, "203.0.113.7"},
	} {
		e := newEnv(t, func(c *Config) {
			c.Advertise = netip.MustParseAddr("203.0.113.7")
			c.AdvertiseFor = tc.rules
		})
		c := dialCtl(t, e.addr, "")
		c.login(t, "tester")
		ap, ok := parse227(c.cmd(t, 227, "PASV"))
		if !ok || ap.Addr() != netip.MustParseAddr(tc.want) {
			t.Errorf("rules %v: 227 announced %v, want %s", tc.rules, ap, tc.want)
		}
	}
}
