// Package ftpd runs a small in-process FTP server (fclairamb/ftpserverlib
// over a directory) for `ftpalg demo`, the loopback integration tests and
// the benchmarks. It can announce a wrong address in its PASV replies, like
// a legacy server behind NAT.
package ftpd

import (
	"crypto/tls"
	"errors"
	"net"

	ftpserver "github.com/fclairamb/ftpserverlib"
	"github.com/spf13/afero"
)

// Options configure a Server.
type Options struct {
	// Dir is the directory served; uploads land there.
	Dir string
	// Listen is the control address, e.g. "127.0.0.1:0".
	Listen string
	// PublicHost is the IPv4 address announced in 227 replies; empty
	// announces the listening address.
	PublicHost string
	// DisableActive refuses PORT/EPRT.
	DisableActive bool
	// Banner is the greeting text.
	Banner string
	// PassiveLo and PassiveHi, when not zero, are the range passive
	// data ports are taken from; by default the kernel picks any port
	// (from ip_local_port_range, where a busy loopback runs short).
	PassiveLo, PassiveHi int
	// TLS, when set, is the server's TLS configuration: it offers AUTH
	// TLS (and lists it in FEAT) and PROT P.
	TLS *tls.Config
	// TLSMode is ftpserverlib's TLS requirement: ClearOrEncrypted,
	// MandatoryEncryption (control and data) or ImplicitEncryption.
	TLSMode ftpserver.TLSRequirement
}

// Server is a running FTP server.
type Server struct {
	srv  *ftpserver.FtpServer
	ln   net.Listener
	done chan error
}

// Start starts a server; any user name and password log in.
func Start(o Options) (*Server, error) {
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, err
	}
	if o.TLSMode == ftpserver.ImplicitEncryption {
		// ftpserverlib wraps only the listeners it opens itself.
		ln = tls.NewListener(ln, o.TLS)
	}
	d := &driver{tls: o.TLS, fs: afero.NewBasePathFs(afero.NewOsFs(), o.Dir), settings: &ftpserver.Settings{
		Listener:                ln,
		PublicHost:              o.PublicHost,
		Banner:                  o.Banner,
		DisableActiveMode:       o.DisableActive,
		ActiveTransferPortNon20: true,
		ConnectionTimeout:       30,
		IdleTimeout:             900,
		// The proxy dials data connections from its own address, which
		// is also its control address, so the strict check holds.
		PasvConnectionsCheck:   ftpserver.IPMatchRequired,
		ActiveConnectionsCheck: ftpserver.IPMatchRequired,
		TLSRequired:            o.TLSMode,
	}}
	if o.PassiveLo > 0 {
		d.settings.PassiveTransferPortRange = ftpserver.PortRange{Start: o.PassiveLo, End: o.PassiveHi}
	}
	s := &Server{srv: ftpserver.NewFtpServer(d), ln: ln, done: make(chan error, 1)}
	if err := s.srv.Listen(); err != nil {
		ln.Close()
		return nil, err
	}
	go func() { s.done <- s.srv.Serve() }()
	return s, nil
}

// Addr returns the control address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops accepting and waits for the accept loop to end. Sessions that
// are still open end when their clients leave.
func (s *Server) Close() error {
	err := s.srv.Stop()
	<-s.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

type driver struct {
	tls      *tls.Config
	fs       afero.Fs
	settings *ftpserver.Settings
}

func (d *driver) GetSettings() (*ftpserver.Settings, error) { return d.settings, nil }

func (d *driver) ClientConnected(ftpserver.ClientContext) (string, error) {
	if d.settings.Banner != "" {
		return d.settings.Banner, nil
	}
	return "ftpalg test server", nil
}

func (d *driver) ClientDisconnected(ftpserver.ClientContext) {}

func (d *driver) AuthUser(_ ftpserver.ClientContext, _, _ string) (ftpserver.ClientDriver, error) {
	return d.fs, nil
}

func (d *driver) GetTLSConfig() (*tls.Config, error) {
	if d.tls == nil {
		return nil, errors.New("ftpd: no TLS")
	}
	return d.tls, nil
}
