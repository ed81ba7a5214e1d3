package benchkit

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/internal/testcert"
)

// TLSCerts are a run's FTPS certificates, made with internal/testcert
// (ECDSA P-256) and written as PEM files: an authority and one
// certificate it signed for 127.0.0.1 and localhost, which vsftpd and
// ftpalg both show.
type TLSCerts struct {
	CAFile, CertFile, KeyFile string
	pool                      *x509.CertPool
}

// MakeTLSCerts writes the certificates into dir.
func MakeTLSCerts(dir string) (*TLSCerts, error) {
	ca, err := testcert.NewAuthority("ftpalg benchmark CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Leaf("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	c := &TLSCerts{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile: filepath.Join(dir, "key.pem"), pool: ca.Pool()}
	for _, f := range []struct {
		path string
		pem  []byte
	}{{c.CAFile, ca.CertPEM}, {c.CertFile, leaf.CertPEM}, {c.KeyFile, leaf.KeyPEM}} {
		if err := os.WriteFile(f.path, f.pem, 0o600); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Client is a client's TLS configuration: it trusts the authority only.
// (benchftp gives each session a session cache of its own.)
func (c *TLSCerts) Client() *tls.Config {
	return &tls.Config{RootCAs: c.pool}
}

// vsftpdConfig are the lines that make vsftpd require FTPS: TLS for login
// and data (anonymous and local users), data connections resuming the
// control connection's session (require_ssl_reuse, its default, said
// explicitly). Clients here negotiate TLS 1.3, whose suites vsftpd 3.0.3's
// ssl_ciphers default (DES-CBC3-SHA, gone from OpenSSL 3) does not touch.
func (c *TLSCerts) vsftpdConfig() string {
	return fmt.Sprintf(`ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
rsa_cert_file=%s
rsa_private_key_file=%s
`, c.CertFile, c.KeyFile)
}

// StartVsftpdNamed is StartVsftpd for the instance name (its config and
// log files are named after it); with certs it requires FTPS and shows
// their certificate, without (nil) it is plain FTP.
func StartVsftpdNamed(name, bin, dir, root, pasvPorts string, maxClients int, certs *TLSCerts) (*nstest.Proc, string, error) {
	return startVsftpd(name, bin, dir, root, pasvPorts, maxClients, certs)
}
