package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/proxy"
)

// tlsFlags are a front end's FTPS settings (proxy/tls.go says what each
// mode does).
type tlsFlags struct {
	listenImplicit   listFlag
	clientTLS        string
	cert, key        string
	requireReuse     bool
	upstreamTLS      string
	upstreamCA       string
	upstreamName     string
	upstreamInsecure bool
	upstreamCert     string
	upstreamKey      string
}

func (f *tlsFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.listenImplicit, "listen-implicit", "also accept implicit FTPS (TLS from the first byte, usually :990) on these addresses (reverse mode; needs --tls-cert)")
	fs.StringVar(&f.clientTLS, "client-tls", "", "TLS toward clients: off (AUTH refused), optional, required (USER before AUTH TLS gets 530) or passthrough (AUTH relayed to the server and the session relayed blind, data connections not proxied); default: optional with --tls-cert, else passthrough")
	fs.StringVar(&f.cert, "tls-cert", "", "certificate (PEM, chain included) ftpalg shows FTPS clients; read again on reload")
	fs.StringVar(&f.key, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.BoolVar(&f.requireReuse, "require-tls-reuse", false, "refuse a client's protected data connection that does not resume its control connection's TLS session (as vsftpd's require_ssl_reuse)")
	fs.StringVar(&f.upstreamTLS, "upstream-tls", "off", "TLS toward the server: off, explicit (AUTH TLS), implicit (TLS from the first byte) or auto (AUTH TLS when the server's FEAT lists it)")
	fs.StringVar(&f.upstreamCA, "upstream-ca", "", "CA certificates (PEM) that sign the server's certificate (default: the system's)")
	fs.StringVar(&f.upstreamName, "upstream-server-name", "", "name the server's certificate must carry (default: the host of --upstream)")
	fs.BoolVar(&f.upstreamInsecure, "upstream-insecure", false, "do not verify the server's certificate (anyone between ftpalg and the server can read and change the session)")
	fs.StringVar(&f.upstreamCert, "upstream-client-cert", "", "client certificate (PEM) ftpalg shows the server")
	fs.StringVar(&f.upstreamKey, "upstream-client-key", "", "private key (PEM) of --upstream-client-cert")
}

// tlsFiles is a front end's TLS material as read from its files: plain
// bytes, so configurations compare with reflect.DeepEqual and a reload
// sees a renewed certificate behind an unchanged file name.
type tlsFiles struct {
	certPEM, keyPEM             []byte
	caPEM                       []byte
	clientCertPEM, clientKeyPEM []byte
	serverName                  string
	insecure                    bool
}

// config checks the TLS flags, sets cfg's modes and returns the material
// (nil when there is none).
func (f *tlsFlags) config(cfg *proxy.Config) (*tlsFiles, error) {
	var err error
	mode := f.clientTLS
	if mode == "" {
		mode = "passthrough"
		if f.cert != "" {
			mode = "optional"
		}
	}
	if cfg.ClientTLS, err = proxy.ParseClientTLS(mode); err != nil {
		return nil, fmt.Errorf("--client-tls: %w", err)
	}
	if cfg.UpstreamTLS, err = proxy.ParseUpstreamTLS(f.upstreamTLS); err != nil {
		return nil, fmt.Errorf("--upstream-tls: %w", err)
	}
	cfg.RequireTLSReuse = f.requireReuse
	terminates := cfg.ClientTLS == proxy.ClientTLSOptional || cfg.ClientTLS == proxy.ClientTLSRequired
	switch {
	case (f.cert == "") != (f.key == ""):
		return nil, errors.New("--tls-cert and --tls-key go together")
	case (f.upstreamCert == "") != (f.upstreamKey == ""):
		return nil, errors.New("--upstream-client-cert and --upstream-client-key go together")
	case terminates && f.cert == "":
		return nil, fmt.Errorf("--client-tls %s needs --tls-cert and --tls-key", mode)
	case len(f.listenImplicit.values) > 0 && !terminates:
		return nil, fmt.Errorf("--listen-implicit needs --client-tls optional or required (now %s)", mode)
	case cfg.ClientTLS == proxy.ClientTLSPassthrough && cfg.UpstreamTLS != proxy.UpstreamTLSOff:
		return nil, errors.New("--upstream-tls needs ftpalg to terminate the client's TLS too: --client-tls off, optional or required (passthrough relays the client's own TLS)")
	case f.requireReuse && !terminates:
		return nil, errors.New("--require-tls-reuse needs --client-tls optional or required")
	case cfg.UpstreamTLS == proxy.UpstreamTLSOff && (f.upstreamCA != "" || f.upstreamName != "" || f.upstreamInsecure || f.upstreamCert != ""):
		return nil, errors.New("--upstream-ca, --upstream-server-name, --upstream-insecure and --upstream-client-cert need --upstream-tls")
	}
	if f.cert == "" && cfg.UpstreamTLS == proxy.UpstreamTLSOff {
		return nil, nil
	}
	m := &tlsFiles{serverName: f.upstreamName, insecure: f.upstreamInsecure}
	for _, r := range []struct {
		flag, path string
		into       *[]byte
	}{
		{"tls-cert", f.cert, &m.certPEM}, {"tls-key", f.key, &m.keyPEM}, {"upstream-ca", f.upstreamCA, &m.caPEM},
		{"upstream-client-cert", f.upstreamCert, &m.clientCertPEM}, {"upstream-client-key", f.upstreamKey, &m.clientKeyPEM},
	} {
		if r.path == "" {
			continue
		}
		b, err := os.ReadFile(r.path)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", r.flag, err)
		}
		*r.into = b
	}
	if _, _, err := m.build(); err != nil {
		return nil, err
	}
	return m, nil
}

// build makes the proxy's TLS configurations from the material: toward
// clients (nil without a certificate) and toward the server.
func (m *tlsFiles) build() (server, upstream *tls.Config, err error) {
	if m.certPEM != nil {
		cert, err := tls.X509KeyPair(m.certPEM, m.keyPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		server = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	upstream = &tls.Config{ServerName: m.serverName, InsecureSkipVerify: m.insecure, MinVersion: tls.VersionTLS12}
	if m.caPEM != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(m.caPEM) {
			return nil, nil, errors.New("--upstream-ca: no PEM certificate in the file")
		}
		upstream.RootCAs = pool
	}
	if m.clientCertPEM != nil {
		cert, err := tls.X509KeyPair(m.clientCertPEM, m.clientKeyPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("--upstream-client-cert/--upstream-client-key: %w", err)
		}
		upstream.Certificates = []tls.Certificate{cert}
	}
	return server, upstream, nil
}

// certExpiryWarning is how close to its end a certificate is reported.
const certExpiryWarning = 14 * 24 * time.Hour

// applyTLS adds fe's TLS configurations to cfg, and warns of a
// certificate that has expired or soon will.
func applyTLS(log *zap.Logger, fe frontend, cfg *proxy.Config) error {
	if fe.tls == nil {
		return nil
	}
	server, upstream, err := fe.tls.build()
	if err != nil {
		return err
	}
	cfg.TLSConfig, cfg.UpstreamTLSConfig = server, upstream
	if server != nil {
		if leaf := server.Certificates[0].Leaf; leaf != nil {
			if left := time.Until(leaf.NotAfter); left < certExpiryWarning {
				log.Warn("the TLS certificate for clients expires soon or has expired", zap.String("frontend", fe.name),
					zap.Strings("names", leaf.DNSNames), zap.Time("not_after", leaf.NotAfter), zap.Duration("left", left.Round(time.Hour)))
			}
		}
	}
	return nil
}
