package proxy

// FTPS through the proxy on loopback: internal/ftpd with TLS (explicit,
// implicit) or without, the proxy terminating the client's TLS and
// re-originating the server's, and a raw client (ctl) that speaks TLS on
// the control and data connections. Certificates are made in the test.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ftpserver "github.com/fclairamb/ftpserverlib"
	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/internal/testcert"
)

// tlsLab is the tests' authority and the certificates it signed: the
// proxy's and the server's, both for localhost and 127.0.0.1.
type tlsLab struct {
	ca, other           *testcert.Authority // other signed nothing here
	proxyCert, ftpdCert *testcert.Leaf
}

var lab = sync.OnceValue(func() *tlsLab {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	l := &tlsLab{}
	var err error
	l.ca, err = testcert.NewAuthority("ftpalg test CA")
	must(err)
	l.other, err = testcert.NewAuthority("someone else's CA")
	must(err)
	l.proxyCert, err = l.ca.Leaf("localhost", "127.0.0.1")
	must(err)
	l.ftpdCert, err = l.ca.Leaf("localhost", "127.0.0.1")
	must(err)
	return l
})

// clientTLS is a client's TLS configuration: it trusts the lab's
// authority and caches sessions, so data connections resume the control
// connection's session (as lftp and curl do).
func clientTLS() *tls.Config {
	return &tls.Config{RootCAs: lab().ca.Pool(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

// startFTPS starts internal/ftpd serving dir: tls is off (no TLS at all),
// explicit (AUTH TLS offered, FEAT lists it), required (no login or
// transfer without TLS) or implicit.
func startFTPS(t *testing.T, dir, tlsMode string) *ftpd.Server {
	t.Helper()
	o := ftpd.Options{Dir: dir, Listen: "127.0.0.1:0"}
	if tlsMode != "off" {
		o.TLS = &tls.Config{Certificates: []tls.Certificate{lab().ftpdCert.TLS}}
		o.TLSMode = map[string]ftpserver.TLSRequirement{"explicit": ftpserver.ClearOrEncrypted,
			"required": ftpserver.MandatoryEncryption, "implicit": ftpserver.ImplicitEncryption}[tlsMode]
	}
	fs, err := ftpd.Start(o)
	if err != nil {
		t.Fatalf("ftpd: %v", err)
	}
	t.Cleanup(func() { fs.Close() })
	return fs
}

// withTLS configures the proxy's two legs: toward clients (implicit: every
// connection is implicit FTPS) and toward the server.
func withTLS(client ClientTLSMode, implicit bool, upstream UpstreamTLSMode) func(*Config) {
	return func(c *Config) {
		c.ClientTLS = client
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{lab().proxyCert.TLS}}
		if implicit {
			c.ImplicitTLS = func(net.Conn) bool { return true }
		}
		c.UpstreamTLS = upstream
		c.UpstreamTLSConfig = &tls.Config{RootCAs: lab().ca.Pool()}
	}
}

// dialFTPS connects to addr and logs in: plain, explicit (AUTH TLS, PBSZ 0,
// PROT prot) or implicit (TLS at once, then PBSZ 0 and PROT prot).
func dialFTPS(t testing.TB, addr, how, prot string, cfg *tls.Config) *ctl {
	t.Helper()
	c := dialCtl(t, addr, "")
	if how == "implicit" {
		c.handshake(t, cfg)
	}
	c.expect(t, 220)
	if how == "explicit" {
		c.cmd(t, 234, "AUTH TLS")
		c.handshake(t, cfg)
	}
	if how != "plain" {
		c.cmd(t, 200, "PBSZ 0")
		c.cmd(t, 200, "PROT %s", prot)
		if prot == "P" {
			c.dataTLS = cfg
		}
	}
	c.cmd(t, 331, "USER tester")
	c.cmd(t, 230, "PASS secret")
	c.cmd(t, 200, "TYPE I")
	return c
}

// handshake makes c's control connection TLS.
func (c *ctl) handshake(t testing.TB, cfg *tls.Config) {
	t.Helper()
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	tc := tls.Client(c.c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the proxy: %v", err)
	}
	c.tp = textproto.NewConn(tc)
}

// secure makes a data connection TLS when the control connection asked
// for protected data (PROT P): the client is the TLS client in both
// directions of connection (RFC 4217, section 7).
func (c *ctl) secure(t testing.TB, dc *net.TCPConn) net.Conn {
	t.Helper()
	if c.dataTLS == nil {
		return dc
	}
	tc := tls.Client(dc, c.dataTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake on the data connection: %v", err)
	}
	return tc
}

// roundTrip stores content as name in mode, reads it back and lists it.
func roundTrip(t *testing.T, c *ctl, mode, name string, content []byte) {
	t.Helper()
	c.upload(t, mode, "STOR "+name, bytes.NewReader(content))
	var got bytes.Buffer
	c.download(t, mode, "RETR "+name, 0, &got)
	if sha256.Sum256(got.Bytes()) != sha256.Sum256(content) {
		t.Fatalf("%s: RETR returned %d bytes that differ from the %d stored", mode, got.Len(), len(content))
	}
	var list bytes.Buffer
	c.download(t, mode, "LIST", 0, &list)
	if !strings.Contains(list.String(), name) {
		t.Fatalf("%s: LIST lacks %s:\n%s", mode, name, list.String())
	}
}

// tlsLegs counts the proxy's "TLS established" lines by leg, and the
// resumed ones.
func tlsLegs(e *env) (legs, resumed map[string]int) {
	legs, resumed = map[string]int{}, map[string]int{}
	for _, l := range e.logs.FilterMessage(MsgTLSEstablished).All() {
		m := l.ContextMap()
		leg, _ := m["leg"].(string)
		legs[leg]++
		if r, _ := m["resumed"].(bool); r {
			resumed[leg]++
		}
	}
	return legs, resumed
}

// TestTLSCombinations: every mix of the client's leg (plain, explicit,
// implicit FTPS) and the server's (off, explicit, implicit, auto) carries
// STOR, RETR and LIST in PASV, EPSV, PORT and EPRT with PROT P; the logs
// show a TLS handshake on exactly the legs that are TLS, and every data
// connection toward a TLS server resumed the control connection's session.
func TestTLSCombinations(t *testing.T) {
	content := make([]byte, 200<<10)
	rand.Read(content)
	for _, server := range []string{"off", "explicit", "implicit", "auto"} {
		dir := t.TempDir()
		ftpdMode := server
		if server == "auto" {
			ftpdMode = "explicit"
		}
		upstream, err := ParseUpstreamTLS(server)
		if err != nil {
			t.Fatal(err)
		}
		fs := startFTPS(t, dir, ftpdMode)
		for _, client := range []string{"plain", "explicit", "implicit"} {
			t.Run(client+"-to-"+server, func(t *testing.T) {
				e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, client == "implicit", upstream))
				c := dialFTPS(t, e.addr, client, "P", clientTLS())
				for _, mode := range dataModes {
					roundTrip(t, c, mode, fmt.Sprintf("%s-%s-%s.bin", client, server, mode), content)
				}
				c.cmd(t, 221, "QUIT")
				e.stop()

				legs, resumed := tlsLegs(e)
				transfers := 3 * len(dataModes)
				want := map[string]int{}
				if client != "plain" {
					want["client"], want["client_data"] = 1, transfers
				}
				if server != "off" {
					want["server"], want["server_data"] = 1, transfers
				}
				if !mapsEqual(legs, want) {
					t.Errorf("TLS handshakes by leg %v, want %v", legs, want)
				}
				if resumed["server_data"] != want["server_data"] {
					t.Errorf("%d of %d data connections to the server resumed the control session", resumed["server_data"], want["server_data"])
				}
				if resumed["client_data"] != want["client_data"] {
					t.Errorf("%d of %d data connections from the client resumed its session", resumed["client_data"], want["client_data"])
				}
				paths := map[string]int{}
				for _, l := range e.logs.FilterMessage(MsgTransferFinished).All() {
					p, _ := l.ContextMap()["path"].(string)
					paths[p]++
				}
				wantPath := "splice"
				if client != "plain" || server != "off" {
					wantPath = "tls"
				}
				if paths[wantPath] != transfers {
					t.Errorf("finished transfers by path %v, want %d on %s", paths, transfers, wantPath)
				}
			})
		}
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestTLSProtClear: PROT C on a TLS control connection keeps the client's
// data connections clear (spliced toward a plain server, copied toward a
// TLS one), and PROT P afterwards protects them again.
func TestTLSProtClear(t *testing.T) {
	content := []byte("clear data on a protected session\n")
	for _, server := range []string{"off", "explicit"} {
		t.Run(server, func(t *testing.T) {
			fs := startFTPS(t, t.TempDir(), server)
			upstream, _ := ParseUpstreamTLS(server)
			e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, upstream))
			c := dialFTPS(t, e.addr, "explicit", "C", clientTLS())
			roundTrip(t, c, "EPSV", "clear.bin", content)
			c.cmd(t, 200, "PROT P")
			c.dataTLS = clientTLS()
			roundTrip(t, c, "PORT", "private.bin", content)
			c.cmd(t, 221, "QUIT")
			e.stop()
			legs, _ := tlsLegs(e)
			if legs["client_data"] != 3 {
				t.Errorf("%d protected client data connections, want 3 (the PROT P round trip)", legs["client_data"])
			}
		})
	}
}

// TestTLSSizes: 0 bytes and 100 MiB, both legs TLS, checksums compared.
func TestTLSSizes(t *testing.T) {
	dir := t.TempDir()
	fs := startFTPS(t, dir, "explicit")
	e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSRequired, false, UpstreamTLSExplicit))
	c := dialFTPS(t, e.addr, "explicit", "P", clientTLS())
	roundTrip(t, c, "PASV", "empty.bin", nil)
	if testing.Short() || raceEnabled {
		t.Log("100 MiB skipped under -short or -race")
		return
	}
	f, err := os.Create(filepath.Join(dir, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, bigSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var got countingHash
	got.h = sha256.New()
	start := time.Now()
	c.download(t, "EPSV", "RETR big.bin", 0, &got)
	if got.n != bigSize || !bytes.Equal(got.h.Sum(nil), h.Sum(nil)) {
		t.Fatalf("RETR of 100 MiB: %d bytes, checksum differs: %v", got.n, !bytes.Equal(got.h.Sum(nil), h.Sum(nil)))
	}
	t.Logf("100 MiB over TLS on both legs in %v (a figure, not a check; see the benchmark)", time.Since(start).Round(time.Millisecond))
	up := io.TeeReader(io.LimitReader(rand.Reader, bigSize), h)
	h.Reset()
	c.upload(t, "EPRT", "STOR up.bin", up)
	stored, err := os.ReadFile(filepath.Join(dir, "up.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(stored); !bytes.Equal(sum[:], h.Sum(nil)) {
		t.Fatalf("STOR of 100 MiB: the server stored %d bytes that differ", len(stored))
	}
}

type countingHash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n += len(b)
	return c.h.Write(b)
}

// TestTLSReuseRequired: with RequireTLSReuse, a client whose data
// connection does not resume its control connection's TLS session is
// refused as vsftpd's require_ssl_reuse does: the data connection carries
// nothing and ends in good order (close_notify, then EOF: a client that
// shuts its TLS down, as python's ftplib does, must still get to read
// the reply), the transfer's reply is the proxy's 522, and the log says
// why; one that resumes passes.
func TestTLSReuseRequired(t *testing.T) {
	fs := startFTPS(t, t.TempDir(), "off")
	e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSOff), func(c *Config) { c.RequireTLSReuse = true })

	good := dialFTPS(t, e.addr, "explicit", "P", clientTLS())
	roundTrip(t, good, "EPSV", "reused.bin", []byte("resumed"))

	noCache := clientTLS()
	noCache.ClientSessionCache = nil
	bad := dialFTPS(t, e.addr, "explicit", "P", noCache)
	dc := bad.open(t, "EPSV", "LIST", 0)
	tc := tls.Client(dc, noCache)
	// The handshake completes (the proxy learns only then that it was
	// not resumed); the orderly close follows.
	if err := tc.Handshake(); err != nil {
		t.Fatalf("data connection handshake: %v", err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	got, rerr := io.ReadAll(tc)
	if len(got) > 0 || rerr != nil {
		t.Fatalf("refused data connection: read %d bytes, %v; want nothing and a clean end (close_notify)", len(got), rerr)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Errorf("client close_notify after the proxy's: %v", err)
	}
	code, msg, err := bad.read()
	if err != nil || code != 522 {
		t.Fatalf("the transfer's reply: %d %s, %v; want the proxy's 522", code, msg, err)
	}
	if n := e.logs.FilterMessageSnippet("did not resume").Len(); n != 1 {
		t.Errorf("%d log lines on the refused resumption, want 1", n)
	}
}

// TestTLSPolicy: what the proxy answers for itself when it manages TLS.
func TestTLSPolicy(t *testing.T) {
	fs := startFTPS(t, t.TempDir(), "off")
	t.Run("required", func(t *testing.T) {
		e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSRequired, false, UpstreamTLSOff))
		c := dialCtl(t, e.addr, "")
		c.expect(t, 220)
		c.cmd(t, 530, "USER tester")
		c.cmd(t, 530, "PASS secret")
		c.cmd(t, 503, "PBSZ 0")
		c.cmd(t, 503, "PROT P")
		feat := c.cmd(t, 211, "FEAT")
		for _, f := range []string{"AUTH TLS", "PBSZ", "PROT"} {
			if !strings.Contains(feat, "\n "+f) {
				t.Errorf("FEAT lacks %q:\n%s", f, feat)
			}
		}
		c.cmd(t, 504, "AUTH KERBEROS_V4")
		c.cmd(t, 234, "AUTH SSL") // what old clients send
		c.handshake(t, clientTLS())
		c.cmd(t, 503, "AUTH TLS")
		c.cmd(t, 503, "PROT P")
		c.cmd(t, 501, "PBSZ x")
		c.cmd(t, 200, "PBSZ 0")
		c.cmd(t, 536, "PROT S")
		c.cmd(t, 504, "PROT Q")
		c.cmd(t, 200, "PROT P")
		c.cmd(t, 534, "CCC")
		c.cmd(t, 331, "USER tester")
		c.cmd(t, 230, "PASS secret")
	})
	t.Run("off", func(t *testing.T) {
		e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOff, false, UpstreamTLSOff))
		c := dialCtl(t, e.addr, "")
		c.expect(t, 220)
		c.cmd(t, 502, "AUTH TLS")
		feat := c.cmd(t, 211, "FEAT")
		if strings.Contains(feat, "AUTH") {
			t.Errorf("FEAT offers AUTH with client TLS off:\n%s", feat)
		}
		c.login2(t)
	})
	t.Run("injection", func(t *testing.T) {
		// Plain text sent behind AUTH TLS (CVE-2011-0411 style) must
		// never run as a command: it is the start of the TLS handshake,
		// which it breaks.
		e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSOff))
		c := dialCtl(t, e.addr, "")
		c.expect(t, 220)
		c.sendRaw(t, []byte("AUTH TLS\r\nUSER injected\r\n"))
		c.expect(t, 234)
		c.expectEOF(t)
		e.stop()
		for _, l := range e.tr.since(0) {
			if l.Dir == ProxyToServer && strings.Contains(l.Line, "injected") {
				t.Fatalf("the injected command reached the server: %q", l.Line)
			}
		}
	})
}

// login2 logs in after the greeting.
func (c *ctl) login2(t testing.TB) {
	t.Helper()
	c.cmd(t, 331, "USER tester")
	c.cmd(t, 230, "PASS secret")
}

// TestTLSUpstreamVerify: a server certificate that does not verify ends
// the session with a 421 that names the problem, and a log line; the
// session never reaches the login.
func TestTLSUpstreamVerify(t *testing.T) {
	fs := startFTPS(t, t.TempDir(), "explicit")
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"unknown-authority", &tls.Config{RootCAs: lab().other.Pool()}, "not trusted"},
		{"wrong-name", &tls.Config{RootCAs: lab().ca.Pool(), ServerName: "ftp.example"}, "another name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSExplicit),
				func(c *Config) { c.UpstreamTLSConfig = tc.cfg })
			c := dialCtl(t, e.addr, "")
			msg := c.expect(t, 421)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("421 %q does not say %q", msg, tc.want)
			}
			e.stop()
			if e.logs.FilterMessage(MsgTLSFailed).FilterField(zap.String("leg", "server")).Len() != 1 {
				t.Errorf("no log line for the failed handshake with the server")
			}
		})
	}
	t.Run("plain-server", func(t *testing.T) {
		plain := startFTPS(t, t.TempDir(), "off")
		e := startProxy(t, plain.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSExplicit))
		c := dialCtl(t, e.addr, "")
		msg := c.expect(t, 421)
		if !strings.Contains(msg, "refused TLS") {
			t.Errorf("421 %q does not say the server refused TLS", msg)
		}
		// auto falls back to plain with such a server.
		e2 := startProxy(t, plain.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSAuto))
		c2 := dialFTPS(t, e2.addr, "explicit", "P", clientTLS())
		roundTrip(t, c2, "EPSV", "auto.bin", []byte("auto"))
	})
}

// TestTLSLegsLogged: which legs are TLS, with version and cipher, is in
// the log of each handshake.
func TestTLSLegsLogged(t *testing.T) {
	fs := startFTPS(t, t.TempDir(), "explicit")
	e := startProxy(t, fs.Addr(), 5*time.Second, withTLS(ClientTLSOptional, false, UpstreamTLSExplicit))
	c := dialFTPS(t, e.addr, "explicit", "P", clientTLS())
	c.cmd(t, 221, "QUIT")
	e.stop()
	var legs []string
	for _, l := range e.logs.FilterMessage(MsgTLSEstablished).All() {
		m := l.ContextMap()
		if m["version"] == "" || m["cipher"] == "" {
			t.Errorf("TLS established without version or cipher: %v", m)
		}
		legs = append(legs, m["leg"].(string))
	}
	slices.Sort(legs)
	if !slices.Equal(legs, []string{"client", "server"}) {
		t.Errorf("legs %v, want client and server", legs)
	}
}
