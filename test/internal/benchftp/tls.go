package benchftp

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/textproto"
	"time"
)

// FTPS (RFC 4217), explicit: the session's TLS configuration is cfg with
// a session cache of its own (one per control connection, never shared,
// as curl and lftp keep it) and the control connection's host as server
// name, so that data connections, which go to other ports, find and
// resume the control connection's session, as vsftpd's require_ssl_reuse
// insists. Passive downloads (Transfer) only.

// startTLS sends AUTH TLS, runs the handshake, then PBSZ 0 and PROT P.
func (c *Client) startTLS(cfg *tls.Config, deadline time.Time) error {
	if _, _, err := c.Cmd(2, "AUTH TLS"); err != nil {
		return StepErr("AUTH", err)
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = c.host
	}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	tc := tls.Client(c.conn, cfg)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return StepErr("TLS handshake", err)
	}
	c.conn, c.tp, c.dataTLS = tc, textproto.NewConn(tc), cfg
	if _, _, err := c.Cmd(2, "PBSZ 0"); err != nil {
		return StepErr("PBSZ", err)
	}
	if _, _, err := c.Cmd(2, "PROT P"); err != nil {
		return StepErr("PROT", err)
	}
	return nil
}

// data is what a transfer reads: dc itself, or in an FTPS session TLS
// over it, whose handshake starts at the first read (after the 150, as
// RFC 4217 has it).
func (c *Client) data(dc net.Conn) io.Reader {
	if c.dataTLS == nil {
		return dc
	}
	return tls.Client(dc, c.dataTLS)
}

// TLSState is the control connection's TLS state (false: plain FTP).
func (c *Client) TLSState() (tls.ConnectionState, bool) {
	if tc, ok := c.conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}
