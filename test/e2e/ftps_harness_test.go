//go:build linux

package e2e

// The FTPS pieces of the harness: certificates made in the test
// (internal/testcert, written as PEM files for the servers, ftpalg and
// the clients), each server's TLS configuration, each client's TLS
// options, ftpalg's TLS flags, a TLS control connection for ctlConn, and
// the reading of ftpalg's TLS log lines. The tests are in ftps_test.go.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/internal/testcert"
	"github.com/ftpalg/ftpalg/proxy"
)

// ---------------------------------------------------------------- certificates

// tlsLab is one test's certificates, as PEM files in a directory every
// user can read: an authority (CAFile) that signed the servers' and
// ftpalg's certificates, and another one (OtherCAFile) that signed
// nothing here.
type tlsLab struct {
	CAFile, OtherCAFile   string
	ServerCert, ServerKey string // for ServerIP4/6, 127.0.0.1, ::1 and serverTLSName
	ProxyCert, ProxyKey   string // for FrontClientIP4/6 (= HostIP4/6) and proxyTLSName
	pool                  *x509.CertPool
}

// Names in the certificates besides the addresses.
const (
	serverTLSName = "ftp.example.org"
	proxyTLSName  = "ftpalg.example.org"
)

// newTLSLab makes the authorities and certificates (ECDSA P-256: a few
// milliseconds) and writes them into a directory removed when t ends.
func newTLSLab(t testing.TB) *tlsLab {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ca, err := testcert.NewAuthority("ftpalg e2e CA")
	must(err)
	other, err := testcert.NewAuthority("someone else's CA")
	must(err)
	srv, err := ca.Leaf(serverTLSName, ServerIP4, ServerIP6, "127.0.0.1", "::1")
	must(err)
	px, err := ca.Leaf(proxyTLSName, FrontClientIP4, FrontClientIP6)
	must(err)
	dir := worldDir(t, "ftpalg-e2e-tls-")
	l := &tlsLab{pool: ca.Pool()}
	for _, f := range []struct {
		path *string
		name string
		pem  []byte
		mode os.FileMode
	}{
		{&l.CAFile, "ca.pem", ca.CertPEM, 0o644},
		{&l.OtherCAFile, "other-ca.pem", other.CertPEM, 0o644},
		{&l.ServerCert, "server.pem", srv.CertPEM, 0o644},
		{&l.ServerKey, "server-key.pem", srv.KeyPEM, 0o600},
		{&l.ProxyCert, "ftpalg.pem", px.CertPEM, 0o644},
		{&l.ProxyKey, "ftpalg-key.pem", px.KeyPEM, 0o600},
	} {
		*f.path = filepath.Join(dir, f.name)
		writeFile(t, *f.path, string(f.pem), f.mode)
	}
	return l
}

// clientConfig is a Go client's TLS configuration toward serverName: the
// lab's authority, and a session cache of its own, so data connections
// resume the control connection's session as curl and lftp do.
func (l *tlsLab) clientConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: l.pool, ServerName: serverName, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
}

// proxyFlags are ftpalg's TLS flags: clientTLS and upstreamTLS are the
// values of --client-tls and --upstream-tls; the certificate and the
// authority are the lab's where the modes need them.
func (l *tlsLab) proxyFlags(clientTLS, upstreamTLS string, extra ...string) []string {
	f := []string{"--client-tls", clientTLS, "--upstream-tls", upstreamTLS}
	if clientTLS == "optional" || clientTLS == "required" {
		f = append(f, "--tls-cert", l.ProxyCert, "--tls-key", l.ProxyKey)
	}
	if upstreamTLS != "off" {
		f = append(f, "--upstream-ca", l.CAFile)
	}
	return append(f, extra...)
}

// clientTLS is what a client of ftpalg (or of a server, direct) needs to
// trust the lab.
func (l *tlsLab) clientTLS() *ClientTLS { return &ClientTLS{CAFile: l.CAFile} }

// ---------------------------------------------------------------- servers

// ServerTLS is how a server speaks FTPS (ServerOptions.TLS). Each server
// requires TLS for login and data, as the issue asks:
//
//   - vsftpd: ssl_enable, force_local_logins_ssl, force_local_data_ssl (and
//     their anon_ twins: the tests log in anonymously), require_ssl_reuse
//     (data connections must resume the control connection's session);
//     implicit_ssl with Implicit. vsftpd 3.0.3's default ssl_ciphers
//     (DES-CBC3-SHA), which OpenSSL 3 no longer offers, is kept: every
//     client here speaks TLS 1.3, whose suites that setting does not touch.
//   - proftpd: mod_tls (proftpd-mod-crypto's mod_tls.so, loaded with
//     LoadModule), TLSRequired on; its default TLSOptions require data
//     connections to resume the session; TLSOptions UseImplicitSSL with
//     Implicit.
//   - pure-ftpd: --tls=2 (no login without TLS; data may be clear) with
//     --certfile=CERT,KEY. pure-ftpd 1.0.50 has no implicit TLS.
type ServerTLS struct {
	Lab      *tlsLab
	Implicit bool // TLS from the first byte
}

// setupTLS records o on s and returns the configuration to add for kind
// (pure-ftpd: its flags go to s.tlsArgs).
func (s *Server) setupTLS(t testing.TB, kind ServerKind, etc string, o *ServerTLS) string {
	t.Helper()
	s.TLS = o
	l := o.Lab
	switch kind {
	case Vsftpd:
		implicit := "NO"
		if o.Implicit {
			implicit = "YES"
		}
		return fmt.Sprintf(`ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
implicit_ssl=%s
rsa_cert_file=%s
rsa_private_key_file=%s
debug_ssl=YES
`, implicit, l.ServerCert, l.ServerKey)
	case Proftpd:
		mods := filepath.Join(filepath.Dir(filepath.Dir(proftpdPath())), "lib", "proftpd")
		if _, err := os.Stat(filepath.Join(mods, "mod_tls.so")); err != nil {
			nstest.Unmet(t, "proftpd's mod_tls.so (test/deps.sh unpacks proftpd-mod-crypto): %v", err)
		}
		tlsLog := filepath.Join(etc, "proftpd.tls.log")
		s.extraLogs = append(s.extraLogs, tlsLog)
		implicit := ""
		if o.Implicit {
			implicit = "TLSOptions UseImplicitSSL\n"
		}
		// The certificate is ECDSA: TLSECCertificateFile (TLSRSA... refuses it).
		return fmt.Sprintf(`ModulePath %s
LoadModule mod_tls.c
TLSEngine on
TLSLog %s
TLSRequired on
TLSECCertificateFile %s
TLSECCertificateKeyFile %s
TLSVerifyClient off
%s`, mods, tlsLog, l.ServerCert, l.ServerKey, implicit)
	case PureFTPd:
		if o.Implicit {
			t.Fatalf("pure-ftpd 1.0.50 has no implicit TLS")
		}
		s.tlsArgs = []string{"--tls=2", "--certfile=" + l.ServerCert + "," + l.ServerKey}
		return ""
	}
	t.Fatalf("no TLS for server %s", kind)
	return ""
}

// waitBanner is waitBanner for an implicit-TLS server: the handshake
// (verifying the certificate), then the 220.
func (o *ServerTLS) waitBanner(ns *nstest.NS, addr string, deadline time.Duration, alive func() error) error {
	return waitTLSBanner(ns, addr, o.Lab, deadline, alive)
}

func waitTLSBanner(ns *nstest.NS, addr string, l *tlsLab, deadline time.Duration, alive func() error) error {
	host, _, _ := net.SplitHostPort(addr)
	return waitGreeting(ns, addr, deadline, alive, "TLS, ", func(c net.Conn) (net.Conn, error) {
		tc := tls.Client(c, l.clientConfig(host))
		return tc, tc.Handshake()
	})
}

// ---------------------------------------------------------------- clients

// ClientTLS makes a client speak FTPS (Target.TLS):
//
//   - curl: --ssl-reqd (explicit AUTH TLS, PROT P) or, with ClearData,
//     --ftp-ssl-control (TLS on the control connection only); an ftps://
//     URL for implicit TLS; --cacert.
//   - lftp: ftp:ssl-force, ftp:ssl-protect-data (and -list),
//     ssl:verify-certificate with ssl:ca-file; ftps:// for implicit.
//   - python: ftplib.FTP_TLS with prot_p() and an SSLContext trusting
//     CAFile (testdata/ftpclient.py --tls, --implicit, --cafile).
type ClientTLS struct {
	CAFile    string // the authority the client trusts; verification is on
	Implicit  bool   // TLS from the first byte (ftps://)
	ClearData bool   // PROT C: data connections in clear
}

// scheme is the URL scheme for curl and lftp: ftps selects implicit TLS.
func (c *ClientTLS) scheme() string {
	if c != nil && c.Implicit {
		return "ftps"
	}
	return "ftp"
}

func (c *ClientTLS) curlArgs() []string {
	switch {
	case c == nil:
		return nil
	case c.Implicit:
		return []string{"--cacert", c.CAFile}
	case c.ClearData:
		return []string{"--ftp-ssl-control", "--cacert", c.CAFile}
	}
	return []string{"--ssl-reqd", "--cacert", c.CAFile}
}

func (c *ClientTLS) lftpSettings() []string {
	if c == nil {
		return nil
	}
	protect := "yes"
	if c.ClearData {
		protect = "no"
	}
	return []string{
		"set ftp:ssl-allow yes",
		"set ftp:ssl-force yes",
		"set ftp:ssl-protect-data " + protect,
		"set ftp:ssl-protect-list " + protect,
		"set ssl:verify-certificate yes",
		"set ssl:check-hostname yes",
		"set ssl:ca-file " + lftpQuote(c.CAFile),
	}
}

func (c *ClientTLS) pythonArgs() []string {
	if c == nil {
		return nil
	}
	a := []string{"--tls", "--cafile", c.CAFile}
	if c.Implicit {
		a = append(a, "--implicit")
	}
	if c.ClearData {
		a = append(a, "--clear-data")
	}
	return a
}

// renamed is a client under another name, so that two cases with the
// same client and mode against one server upload under different names
// (runTransferCase names uploads after the client).
type renamed struct {
	Client
	name string
}

func (r renamed) Name() string { return r.name }

// ---------------------------------------------------------------- ctlConn over TLS

// startTLS turns the control connection into TLS: AUTH TLS, the handshake
// with cfg, then PBSZ 0 and PROT prot ("P" or "C").
func (f *ctlConn) startTLS(cfg *tls.Config, prot string) error {
	if _, err := f.expect("AUTH TLS", 234); err != nil {
		return err
	}
	tc := tls.Client(f.c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), f.wait)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	f.c, f.r = tc, bufio.NewReader(tc)
	st := tc.ConnectionState()
	f.note("# TLS %s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	if _, err := f.expect("PBSZ 0", 200); err != nil {
		return err
	}
	_, err := f.expect("PROT "+prot, 200)
	return err
}

// ---------------------------------------------------------------- ftpalg's TLS log

// tlsLine is one of ftpalg's JSON log lines about TLS or a transfer.
type tlsLine struct {
	Msg     string `json:"msg"`
	Level   string `json:"level"`
	Session int    `json:"session"`
	Leg     string `json:"leg"`
	Version string `json:"version"`
	Cipher  string `json:"cipher"`
	Resumed bool   `json:"resumed"`
	Error   string `json:"error"`
	Path    string `json:"path"`
	Code    int    `json:"code"`
	Hint    string `json:"hint"`
	Raw     string `json:"-"`
}

// tlsLog is what ftpalg logged about TLS and transfers in a stretch of
// its log.
type tlsLog struct {
	established []tlsLine // MsgTLSEstablished
	failed      []tlsLine // MsgTLSFailed
	transfers   []tlsLine // MsgTransferFinished, Failed, Aborted, NoConfirm
	all         []tlsLine // every line
	started     int       // MsgSessionStarted
	ended       int       // MsgSessionEnded
}

func parseTLSLog(log string) tlsLog {
	var r tlsLog
	for _, l := range strings.Split(log, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var x tlsLine
		if json.Unmarshal([]byte(l), &x) != nil {
			continue
		}
		x.Raw = l
		r.all = append(r.all, x)
		switch x.Msg {
		case proxy.MsgTLSEstablished:
			r.established = append(r.established, x)
		case proxy.MsgTLSFailed:
			r.failed = append(r.failed, x)
		case proxy.MsgTransferFinished, proxy.MsgTransferFailed, proxy.MsgTransferAborted, proxy.MsgTransferNoConfirm:
			r.transfers = append(r.transfers, x)
		case proxy.MsgSessionStarted:
			r.started++
		case proxy.MsgSessionEnded:
			r.ended++
		}
	}
	return r
}

// legs returns the handshakes on leg, and how many of them resumed.
func (r tlsLog) legs(leg string) (n, resumed int) {
	for _, e := range r.established {
		if e.Leg == leg {
			n++
			if e.Resumed {
				resumed++
			}
		}
	}
	return n, resumed
}

// find returns the lines with message msg.
func (r tlsLog) find(msg string) []tlsLine {
	var out []tlsLine
	for _, l := range r.all {
		if l.Msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// settledLog waits (bounded) until every session that started in ftpalg's
// log after off has ended, so its last transfer lines are written, and
// returns that stretch of the log.
func settledLog(t testing.TB, p *Proxy, off int64) tlsLog {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for {
		r := parseTLSLog(p.LogSince(off))
		if r.ended >= r.started || time.Now().After(end) {
			if r.ended < r.started {
				t.Errorf("ftpalg: %d sessions started, %d ended 5 s after the client finished", r.started, r.ended)
			}
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
}
