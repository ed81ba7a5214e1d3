package proxy

import (
	"bytes"
	"crypto/sha256"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	pftp "github.com/ftpalg/ftpalg/proxy/ftp"
)

func refuseEPSV(c *Config) { c.RefuseEPSV = true }

// featNames returns the feature names of a FEAT reply as ctl.read gives
// it (lines joined with "\n", the first and last without their code).
func featNames(msg string) []string {
	lines := strings.Split(msg, "\n")
	var names []string
	for _, l := range lines[1 : len(lines)-1] {
		name, _ := pftp.FeatureLine([]byte(l))
		names = append(names, name)
	}
	return names
}

// hasFeat reports whether names has name.
func hasFeat(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// TestRefuseEPSV: with RefuseEPSV the proxy answers EPSV, "EPSV n" and
// EPSV ALL itself with 502 and never sends them to the server; FEAT lists
// no EPSV, whether the server lists it (removed) or not (not added); EPSV
// ALL refused leaves PASV and PORT allowed, and they work; LPSV is
// unaffected; the refusal is logged once per session.
func TestRefuseEPSV(t *testing.T) {
	want := sha256.Sum256(mustRead(t, filepath.Join(servedDir, f4k)))
	check := func(t *testing.T, e *env, serverVerbs func() []string, serverListsEPSV bool) {
		c := dialCtl(t, e.addr, "")
		c.login(t, "u")
		mark := e.tr.mark()
		c.send(t, "FEAT")
		code, msg, err := c.read()
		if err != nil || code != 211 {
			t.Fatalf("FEAT: %d %q, %v", code, msg, err)
		}
		names := featNames(msg)
		if hasFeat(names, "EPSV") || !hasFeat(names, "EPRT") {
			t.Fatalf("FEAT lists %q: want EPRT and no EPSV", names)
		}
		var fromServer []string
		for _, ev := range linesOf(e.tr.since(mark), ServerToProxy) {
			name, _ := pftp.FeatureLine([]byte(ev.Line))
			fromServer = append(fromServer, name)
		}
		if hasFeat(fromServer, "EPSV") != serverListsEPSV {
			t.Fatalf("the server's FEAT lists %q: EPSV in it should be %v", fromServer, serverListsEPSV)
		}

		for _, cmd := range []string{"EPSV", "EPSV 1", "EPSV 2", "EPSV ALL", "epsv all"} {
			if msg := c.cmd(t, 502, "%s", cmd); !strings.Contains(msg, "PASV") {
				t.Fatalf("%s: 502 %q does not point to PASV", cmd, msg)
			}
		}
		for _, mode := range []string{"PASV", "PORT"} { // no EPSV ALL in force
			var buf bytes.Buffer
			c.download(t, mode, "RETR "+f4k, 0, &buf)
			if sha256.Sum256(buf.Bytes()) != want {
				t.Fatalf("%s after the refused EPSVs: data differs", mode)
			}
		}
		c.cmd(t, 228, "LPSV")
		c.cmd(t, 221, "QUIT")

		for _, v := range serverVerbs() {
			if v == "EPSV" {
				t.Fatalf("the server was sent EPSV: %q", serverVerbs())
			}
		}
		logged := e.logs.FilterMessage(MsgEPSVRefused).All()
		if len(logged) != 1 || logged[0].ContextMap()["command"] != "EPSV" {
			t.Fatalf("%q logged %d times (%v), want once, for the first EPSV", MsgEPSVRefused, len(logged), logged)
		}
	}

	t.Run("server-lists-epsv", func(t *testing.T) {
		e := newEnv(t, refuseEPSV)
		check(t, e, func() []string {
			var v []string
			for _, l := range e.tap.seen() {
				v = append(v, pftp.ParseCommand([]byte(strings.TrimRight(l.raw, "\r\n"))).Verb)
			}
			return v
		}, true)
	})
	t.Run("server-without-epsv", func(t *testing.T) {
		fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0", PublicHost: privateHost})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		l := startLegacy(t, fs.Addr())
		e := startProxy(t, l.ln.Addr().String(), time.Second, refuseEPSV)
		check(t, e, l.verbs, false)
	})
}

// TestEPSVDefault: without RefuseEPSV, EPSV goes to the server as before,
// FEAT lists it, and nothing is refused.
func TestEPSVDefault(t *testing.T) {
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "u")
	c.send(t, "FEAT")
	code, msg, err := c.read()
	if err != nil || code != 211 || !hasFeat(featNames(msg), "EPSV") {
		t.Fatalf("FEAT: %d %q, %v; want EPSV listed", code, msg, err)
	}
	var buf bytes.Buffer
	c.download(t, "EPSV", "RETR "+f4k, 0, &buf)
	if buf.Len() != 4096 {
		t.Fatalf("EPSV: %d bytes", buf.Len())
	}
	c.cmd(t, 200, "EPSV ALL")
	c.cmd(t, 221, "QUIT")
	sent := 0
	for _, l := range e.tap.seen() {
		if pftp.ParseCommand([]byte(strings.TrimRight(l.raw, "\r\n"))).Verb == "EPSV" {
			sent++
		}
	}
	if sent != 2 {
		t.Fatalf("the server was sent EPSV %d times, want 2 (EPSV, EPSV ALL)", sent)
	}
	if n := e.logs.FilterMessage(MsgEPSVRefused).Len(); n != 0 {
		t.Fatalf("%q logged %d times by default", MsgEPSVRefused, n)
	}
}

// TestRefuseEPSVIPv6Client: an IPv6 client of a proxy that refuses EPSV
// has LPSV: PASV gets 425 pointing to it, and an LPSV download works.
func TestRefuseEPSVIPv6Client(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	e := startProxyAt(t, "[::1]:0", fs.Addr(), time.Second, refuseEPSV)
	c := dialCtl(t, e.addr, "")
	c.login(t, "u")
	c.cmd(t, 502, "EPSV")
	if msg := c.cmd(t, 425, "PASV"); !strings.Contains(msg, "LPSV") {
		t.Fatalf("PASV over IPv6: 425 %q does not point to LPSV", msg)
	}
	msg := c.cmd(t, 228, "LPSV")
	ap, err := pftp.ParseLPSV(msg)
	if err != nil || ap.Addr().String() != "::1" {
		t.Fatalf("228 %q: %v, %v; want an address on ::1", msg, ap, err)
	}
	c.send(t, "RETR %s", f4k)
	dc, err := net.DialTimeout("tcp", ap.String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	c.expectPrelim(t)
	dc.SetDeadline(time.Now().Add(ioTimeout))
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(dc); err != nil || buf.Len() != 4096 {
		t.Fatalf("LPSV download: %d bytes, %v", buf.Len(), err)
	}
	c.expect(t, 226)
	c.cmd(t, 221, "QUIT")
}
