package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// FTP over TLS (RFC 4217). The proxy terminates TLS on each leg on its own
// terms: toward the client it is a TLS server (its certificate), toward
// the server a TLS client (verifying the server's). So it still sees every
// command and reply in clear, rewrites PASV/EPSV/PORT/EPRT, opens pinholes
// and keeps the one-connection rule exactly as for plain FTP; either leg
// may be plain while the other is TLS (TLS offload of a legacy server, or
// a plain client to a TLS-only server).
//
//   - The client leg: AUTH TLS (or SSL) is answered by the proxy (234), and
//     the client writer, right after writing the 234, runs the TLS server
//     handshake and hands the command pump the TLS connection. PBSZ and
//     PROT are the proxy's business too: PROT P makes the client's data
//     connections TLS, the proxy as their TLS server. An implicit-TLS
//     listener (ImplicitTLS) handshakes before the greeting.
//   - The server leg: after the server's greeting the proxy sends AUTH TLS,
//     PBSZ 0 and PROT P itself (UpstreamTLSExplicit, or UpstreamTLSAuto
//     when FEAT lists AUTH TLS), or handshakes at once (implicit), and the
//     client's greeting is the server's. Each data connection to the
//     server resumes the control connection's TLS session (one session
//     cache per control session, never shared), as vsftpd's
//     require_ssl_reuse, ProFTPD and FileZilla Server insist; Go resumes
//     with session tickets only, so the server must issue them (TLS 1.3
//     does), and its handshake starts only after the server's 150/125 —
//     a 550 means no data connection is coming.
//   - Protected data passes through user space (a *tls.Conn cannot be
//     spliced); plain data keeps the splice and, where it applies, the
//     kernel path.

// ClientTLSMode is what the proxy does with TLS from clients.
type ClientTLSMode uint8

const (
	// ClientTLSPassthrough: AUTH goes to the server, and after its 234 the
	// control channel is relayed blind: the proxy can no longer see or
	// rewrite data-channel negotiations (a warning is logged). For
	// operators who hold no certificate.
	ClientTLSPassthrough ClientTLSMode = iota
	// ClientTLSOff: AUTH is refused (502).
	ClientTLSOff
	// ClientTLSOptional: the proxy terminates TLS (Config.TLSConfig);
	// plain sessions are allowed too.
	ClientTLSOptional
	// ClientTLSRequired: as Optional, and USER/PASS before AUTH get 530.
	ClientTLSRequired
)

// ParseClientTLS parses off, optional, required or passthrough.
func ParseClientTLS(s string) (ClientTLSMode, error) {
	switch s {
	case "passthrough":
		return ClientTLSPassthrough, nil
	case "off":
		return ClientTLSOff, nil
	case "optional":
		return ClientTLSOptional, nil
	case "required":
		return ClientTLSRequired, nil
	}
	return 0, fmt.Errorf("client TLS %q: want off, optional, required or passthrough", s)
}

func (m ClientTLSMode) String() string {
	return [...]string{"passthrough", "off", "optional", "required"}[m]
}

// UpstreamTLSMode is how the proxy speaks TLS to the server.
type UpstreamTLSMode uint8

const (
	UpstreamTLSOff      UpstreamTLSMode = iota
	UpstreamTLSExplicit                 // AUTH TLS after the greeting
	UpstreamTLSImplicit                 // TLS from the first byte (port 990)
	UpstreamTLSAuto                     // AUTH TLS when the server's FEAT lists it, else plain
)

// ParseUpstreamTLS parses off, explicit, implicit or auto.
func ParseUpstreamTLS(s string) (UpstreamTLSMode, error) {
	switch s {
	case "off":
		return UpstreamTLSOff, nil
	case "explicit":
		return UpstreamTLSExplicit, nil
	case "implicit":
		return UpstreamTLSImplicit, nil
	case "auto":
		return UpstreamTLSAuto, nil
	}
	return 0, fmt.Errorf("upstream TLS %q: want off, explicit, implicit or auto", s)
}

func (m UpstreamTLSMode) String() string {
	return [...]string{"off", "explicit", "implicit", "auto"}[m]
}

// tlsHandshakeTimeout bounds one TLS handshake, control or data.
const tlsHandshakeTimeout = 15 * time.Second

// checkTLS validates the TLS settings of cfg.
func checkTLS(cfg *Config) error {
	needCert := cfg.ClientTLS == ClientTLSOptional || cfg.ClientTLS == ClientTLSRequired || cfg.ImplicitTLS != nil
	switch {
	case needCert && (cfg.TLSConfig == nil || cfg.TLSConfig.GetCertificate == nil && len(cfg.TLSConfig.Certificates) == 0):
		return errors.New("proxy: TLS toward clients needs a certificate (TLSConfig)")
	case cfg.ClientTLS == ClientTLSPassthrough && cfg.UpstreamTLS != UpstreamTLSOff:
		return errors.New("proxy: client TLS passthrough relays the client's own TLS to the server; it cannot be combined with TLS toward the server")
	case cfg.ImplicitTLS != nil && cfg.ClientTLS == ClientTLSPassthrough:
		return errors.New("proxy: implicit TLS toward clients needs client TLS optional or required, not passthrough")
	}
	return nil
}

// manageTLS reports whether the proxy handles AUTH, PBSZ, PROT and CCC
// itself (any mode but passthrough): they never reach the server, whose
// leg the proxy negotiates on its own.
func (s *Session) manageTLS() bool { return s.cfg.ClientTLS != ClientTLSPassthrough }

// clientTLSOn reports whether the client's control connection is TLS.
func (s *Session) clientTLSOn() bool { return s.clientTLS.Load() != nil }

// tlsCommand answers AUTH, PBSZ, PROT and CCC when the proxy manages TLS,
// and refuses USER/PASS before AUTH when TLS is required. handled is false
// for the commands it leaves alone. On a successful AUTH it returns after
// the handshake, with startTLS set: the pump must read from s.client anew.
func (s *Session) tlsCommand(cmd ftp.Command) (handled, ok, startTLS bool) {
	switch cmd.Kind {
	case ftp.KindAUTH:
		return true, s.auth(cmd), s.clientTLSOn()
	case ftp.KindPBSZ:
		if !s.clientTLSOn() {
			return true, s.answer(cmd, "503 PBSZ needs AUTH first.\r\n"), false
		}
		if _, err := ftp.ParsePBSZ(cmd.Arg); err != nil {
			return true, s.answer(cmd, "501 PBSZ needs a decimal size.\r\n"), false
		}
		s.pbsz.Store(true)
		return true, s.answer(cmd, "200 PBSZ=0\r\n"), false
	case ftp.KindPROT:
		switch level, err := ftp.ParsePROT(cmd.Arg); {
		case !s.clientTLSOn():
			return true, s.answer(cmd, "503 PROT needs AUTH first.\r\n"), false
		case !s.pbsz.Load():
			return true, s.answer(cmd, "503 PROT needs PBSZ first.\r\n"), false
		case err != nil && (level == 'S' || level == 'E'):
			return true, s.answer(cmd, "536 PROT "+string(level)+" is not supported, use C or P.\r\n"), false
		case err != nil:
			return true, s.answer(cmd, "504 PROT takes C or P.\r\n"), false
		default:
			s.clientProt.Store(uint32(level))
			word := "Private"
			if level == 'C' {
				word = "Clear"
			}
			return true, s.answer(cmd, "200 Protection level set to "+word+".\r\n"), false
		}
	case ftp.KindCCC:
		return true, s.answer(cmd, "534 CCC refused: this proxy keeps the control channel protected.\r\n"), false
	case ftp.KindUSER, ftp.KindPASS:
		if s.cfg.ClientTLS == ClientTLSRequired && !s.clientTLSOn() {
			s.refusal("login refused before TLS", zap.String("verb", cmd.Verb))
			return true, s.answer(cmd, "530 TLS required: send AUTH TLS first.\r\n"), false
		}
	}
	return false, true, false
}

// auth answers AUTH: 234 and the handshake when the proxy terminates TLS.
func (s *Session) auth(cmd ftp.Command) bool {
	switch {
	case s.cfg.ClientTLS == ClientTLSOff:
		return s.answer(cmd, "502 AUTH not available: this proxy offers no TLS.\r\n")
	case s.clientTLSOn():
		return s.answer(cmd, "503 Already using TLS.\r\n")
	}
	mech, err := ftp.ParseAUTH(cmd.Arg)
	if err != nil {
		return s.answer(cmd, "504 AUTH: only TLS and SSL.\r\n")
	}
	done := make(chan error, 1)
	x := &exchange{cmd: cmd, local: true, final: true,
		out: []chunk{{b: []byte("234 AUTH " + mech + " successful.\r\n"), changed: true, startTLS: done}}}
	if !s.corr.add(x, s.done) {
		return false
	}
	select {
	case err := <-done:
		return err == nil
	case <-s.done:
		return false
	}
}

// startClientTLS runs on the client writer after it has written the 234:
// the TLS server handshake on the client's connection, which becomes
// s.client. The command pump waits on done meanwhile; nothing else reads
// or writes the connection.
func (s *Session) startClientTLS(done chan<- error) error {
	var c net.Conn = s.client
	if len(s.authRest) > 0 {
		// The client sent the start of its handshake right behind AUTH,
		// and the command scanner had read it already.
		c = &prefixConn{Conn: c, prefix: s.authRest}
	}
	tc := tls.Server(c, s.clientTLSConfig())
	err := s.handshake(s.ctx, tc, "client")
	if err == nil {
		s.client = tc
		s.clientTLS.Store(tc)
	} else {
		s.end(endProtocol, "")
	}
	done <- err
	return err
}

// handshake runs a TLS handshake, bounded, and logs its outcome.
func (s *Session) handshake(ctx context.Context, tc *tls.Conn, leg string) error {
	ctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		s.log.Warn(MsgTLSFailed, zap.String("leg", leg), zap.Error(err))
		s.cfg.Observer.TLSHandshake(leg, "", false, false)
		return err
	}
	st := tc.ConnectionState()
	s.log.Info(MsgTLSEstablished, zap.String("leg", leg), zap.String("version", tls.VersionName(st.Version)),
		zap.String("cipher", tls.CipherSuiteName(st.CipherSuite)), zap.Bool("resumed", st.DidResume))
	s.cfg.Observer.TLSHandshake(leg, tls.VersionName(st.Version), st.DidResume, true)
	return nil
}

// clientTLSConfig is the session's TLS server configuration toward the
// client: the proxy's certificate, and tickets bound to this session, so
// that a data connection resumes this control connection's session and no
// other's (RequireTLSReuse checks it).
func (s *Session) clientTLSConfig() *tls.Config {
	s.tlsOnce.Do(func() {
		cfg := s.cfg.TLSConfig.Clone()
		tag := []byte(fmt.Sprintf("ftpalg-session-%d-%d", s.started.UnixNano(), s.id))
		cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			ss.Extra = append(ss.Extra, tag)
			return cfg.EncryptTicket(cs, ss)
		}
		cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			ss, err := cfg.DecryptTicket(identity, cs)
			if err != nil || ss == nil {
				return nil, nil // not resumable: a full handshake
			}
			for _, e := range ss.Extra {
				if bytes.Equal(e, tag) {
					return ss, nil
				}
			}
			return nil, nil // another session's ticket
		}
		s.tlsServer = cfg
	})
	return s.tlsServer
}

// upstreamTLSConfig is the session's TLS client configuration toward the
// server, with a session cache of its own (never shared between sessions)
// and the server name set, so that data connections, which go to other
// ports, find the control connection's session under the same key.
func (s *Session) upstreamTLSConfig(host string) *tls.Config {
	cfg := &tls.Config{}
	if s.cfg.UpstreamTLSConfig != nil {
		cfg = s.cfg.UpstreamTLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	return cfg
}

// upstreamPrelude speaks to the server before the client's commands: for
// implicit TLS it handshakes first; it reads the greeting; for explicit (or
// auto, when FEAT offers it) TLS it sends AUTH TLS and handshakes; then it
// sets PBSZ 0 and PROT P (implicit servers too: curl does so, and some
// servers protect data only then). It returns the
// connection to use (TLS or the plain one) and the greeting's bytes, which
// the client gets as the server's. An error has been logged; msg is the
// 421 text for the client.
func (s *Session) upstreamPrelude(c net.Conn, host string) (ctl net.Conn, greeting []byte, msg string, err error) {
	c.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout + tlsHandshakeTimeout))
	defer c.SetDeadline(time.Time{})
	mode := s.cfg.UpstreamTLS
	if mode == UpstreamTLSImplicit {
		s.upstreamData = s.upstreamTLSConfig(host)
		tc := tls.Client(c, s.upstreamData)
		if err := s.handshake(s.ctx, tc, "server"); err != nil {
			return nil, nil, "421 Service not available: TLS with the FTP server failed: " + tlsReason(err) + ".\r\n", err
		}
		c = tc
	}
	rr := ftp.NewReplyReader(ftp.NewLearningReplyScanner(c))
	read := func() (*ftp.Reply, error) {
		var whole *ftp.Reply
		for {
			r, err := rr.Next()
			if err != nil {
				return nil, err
			}
			for i := range r.Lines {
				s.trace(ServerToProxy, r.Lines[i].Raw, false)
			}
			if whole == nil {
				whole = r
			} else {
				whole.Lines = append(whole.Lines, r.Lines...)
			}
			if !r.More && r.Final() {
				whole.More, whole.Continued = false, false
				return whole, nil
			}
		}
	}
	send := func(line string) error {
		s.trace(ProxyToServer, []byte(line), true)
		_, err := io.WriteString(c, line+"\r\n")
		return err
	}
	g, err := read()
	if err != nil {
		s.log.Warn("server sent no greeting", zap.Error(err))
		return nil, nil, "421 Service not available: the FTP server did not answer.\r\n", err
	}
	greeting = g.Raw()
	if g.Code/100 != 2 {
		return c, greeting, "", nil // the server refuses: the client hears it
	}
	if mode == UpstreamTLSAuto {
		if err := send("FEAT"); err != nil {
			return nil, nil, "421 Service not available: the FTP server closed the connection.\r\n", err
		}
		r, err := read()
		if err != nil {
			return nil, nil, "421 Service not available: the FTP server closed the connection.\r\n", err
		}
		if f, ok := ftp.ParseFEAT(r); !ok || !f.HasAUTH(ftp.AuthTLS) {
			s.log.Info(MsgTLSUpstreamPlain, zap.Int("feat_code", r.Code))
			return c, greeting, "", nil
		}
	}
	if mode != UpstreamTLSImplicit {
		if err := send("AUTH TLS"); err != nil {
			return nil, nil, "421 Service not available: the FTP server closed the connection.\r\n", err
		}
		r, err := read()
		if err != nil || r.Code != 234 {
			text := "no reply"
			if r != nil {
				text = strings.TrimSpace(string(r.Raw()))
			}
			s.log.Warn(MsgTLSRefused, zap.String("reply", text), zap.Error(err))
			return nil, nil, "421 Service not available: the FTP server refused TLS (" + text + ").\r\n", errors.New("AUTH TLS refused")
		}
		s.upstreamData = s.upstreamTLSConfig(host)
		tc := tls.Client(c, s.upstreamData)
		if err := s.handshake(s.ctx, tc, "server"); err != nil {
			return nil, nil, "421 Service not available: TLS with the FTP server failed: " + tlsReason(err) + ".\r\n", err
		}
		c = tc
		rr = ftp.NewReplyReader(ftp.NewLearningReplyScanner(c))
	}
	for _, cmd := range []string{"PBSZ 0", "PROT P"} {
		if err := send(cmd); err != nil {
			return nil, nil, "421 Service not available: the FTP server closed the connection.\r\n", err
		}
		r, err := read()
		if err != nil {
			return nil, nil, "421 Service not available: the FTP server closed the connection.\r\n", err
		}
		if r.Code/100 != 2 {
			// Data to this server stays clear; its control channel
			// is protected all the same.
			s.log.Warn("the server refused "+cmd, zap.Int("code", r.Code))
			if cmd == "PROT P" {
				return c, greeting, "", nil
			}
		}
	}
	s.serverProt.Store('P')
	return c, greeting, "", nil
}

// tlsReason names a TLS failure for the client in a few words.
func tlsReason(err error) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return "its certificate is signed by an authority not trusted here"
	case errors.As(err, &he):
		return "its certificate is for another name"
	case errors.As(err, &ci):
		return "its certificate is not valid (" + ci.Error() + ")"
	}
	return "handshake failed"
}

// relayTLS carries a data connection with a TLS leg: the handshakes, then
// the copy. When a handshake fails (or the client's did not resume its
// session where that is required), nothing has been relayed yet: the
// server's connection is reset, and the client's too, unless its TLS
// handshake completed: then it is closed in good order (closeRefused), as
// vsftpd does, so that the client reads an empty connection and then the
// reply that says why (a reset makes some clients, python's ftplib among
// them, fail before they read the reply).
//
// Both sockets are read and written through batchConns (tlscopy.go),
// which save most of the system calls crypto/tls would make.
func (s *Session) relayTLS(o *dataOffer, t *transfer, client, server *net.TCPConn) (toServer, toClient int64, err error) {
	bc, bs := newBatchConn(client), newBatchConn(server)
	defer bc.release()
	defer bs.release()
	cl, sv, refusal, err := s.dataTLS(o, bc, bs)
	t.tlsDecided(refusal)
	if err != nil {
		server.SetLinger(0)
		server.Close()
		if tc, ok := cl.(*tls.Conn); ok && tc.ConnectionState().HandshakeComplete {
			closeRefused(tc, client)
		} else {
			client.SetLinger(0)
			client.Close()
		}
		return 0, 0, fmt.Errorf("data connection TLS: %w", err)
	}
	if tc, ok := sv.(*tls.Conn); ok && !tc.ConnectionState().DidResume {
		t.mu.Lock()
		t.serverFresh = true
		t.mu.Unlock()
	}
	relay(bc, bs)
	return splice(leg{conn: cl, raw: client, buf: bc}, leg{conn: sv, raw: server, buf: bs})
}

// hintServerFresh is added to the report of a failed transfer whose data
// connection to the server did not resume the control connection's TLS
// session: the likely cause when the server insists on reuse.
const hintServerFresh = "the data connection to the server did not resume ftpalg's TLS session with it " +
	"(ftpalg resumes with session tickets only): a server that requires session reuse refuses it; " +
	"let the server issue tickets (TLS 1.3; proftpd: TLSSessionTickets on) or stop requiring reuse"

// refusedLinger bounds how long a refused TLS data connection waits for
// the client's close_notify and FIN.
const refusedLinger = 5 * time.Second

// closeRefused ends a client's TLS data connection that carried nothing:
// close_notify and FIN, then (bounded) the client's own close_notify and
// FIN, so that its TLS shutdown finds the connection still there.
func closeRefused(tc *tls.Conn, raw *net.TCPConn) {
	deadline := time.Now().Add(refusedLinger)
	raw.SetDeadline(deadline)
	tc.CloseWrite()
	raw.CloseWrite()
	io.Copy(io.Discard, tc)
	raw.Close()
}

// dataTLS makes the legs of a data connection TLS where its offer says:
// the proxy is the TLS server of the client's leg and the TLS client of
// the server's, whose handshake waits for the server's 150/125. Both run
// at once: either peer may wait for the other. The raw connections stay
// the caller's to close.
func (s *Session) dataTLS(o *dataOffer, client, server net.Conn) (cl, sv net.Conn, refusal string, err error) {
	cl, sv = client, server
	errs := make(chan error, 2)
	if o.clientTLS {
		go func() {
			tc := tls.Server(client, s.clientTLSConfig())
			err := s.handshake(s.srv.dataCtx, tc, "client_data")
			switch {
			case err != nil:
				refusal = "522 Data connection refused: its TLS handshake failed.\r\n"
			case s.cfg.RequireTLSReuse && !tc.ConnectionState().DidResume:
				s.refusal(MsgTLSNotResumed)
				err = errors.New("TLS session not resumed")
				refusal = "522 Data connection refused: TLS session reuse required (resume the control connection's session).\r\n"
			}
			cl = tc
			errs <- err
		}()
	} else {
		errs <- nil
	}
	if o.serverTLS {
		go func() {
			if err := s.awaitTransferStart(o); err != nil {
				errs <- err
				return
			}
			tc := tls.Client(server, s.upstreamData)
			err := s.handshake(s.srv.dataCtx, tc, "server_data")
			sv = tc
			errs <- err
		}()
	} else {
		errs <- nil
	}
	err = errors.Join(<-errs, <-errs)
	return cl, sv, refusal, err
}

// tlsDecided records the outcome of the data connection's TLS handshakes
// (refusal: the proxy's reply for the client, or empty) for dataRefusal;
// only the first call counts.
func (t *transfer) tlsDecided(refusal string) {
	t.tlsOnce.Do(func() {
		t.tlsRefused = refusal
		close(t.tlsDone)
	})
}

// dataRefusal is called with the server's final reply to a transfer
// command. When the server says it succeeded, it waits for the TLS
// handshakes of that transfer's data connection and returns the proxy's
// own reply if the proxy refused the connection: the server, which may
// have sent a short listing into the socket before the reset, would call
// it a success. vsftpd answers 522 in the same case. A failure reply
// (the server's 426 after the reset) is replaced too when the proxy has
// refused the connection by then, since the refusal is the cause.
func (s *Session) dataRefusal(code int) string {
	s.mu.Lock()
	var t *transfer
	if len(s.unconfirmed) > 0 {
		t = s.unconfirmed[0]
	}
	s.mu.Unlock()
	if t == nil || t.tlsDone == nil {
		return ""
	}
	if code/100 != 2 {
		select {
		case <-t.tlsDone:
			return t.tlsRefused
		default:
			return ""
		}
	}
	timer := time.NewTimer(2 * tlsHandshakeTimeout)
	defer timer.Stop()
	select {
	case <-t.tlsDone:
		return t.tlsRefused
	case <-timer.C:
	case <-s.done:
	}
	return ""
}

// prefixConn is a connection whose first reads return prefix.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// transferEvent records the server's answer to a transfer command: a
// preliminary 1xx (the data connection is coming: its TLS handshake may
// start) or a final reply; data connections waiting in
// awaitTransferStart see it.
func (s *Session) transferEvent(prelim bool) {
	s.mu.Lock()
	if prelim {
		s.prelims++
	} else {
		s.finals++
	}
	close(s.xferChanged)
	s.xferChanged = make(chan struct{})
	s.mu.Unlock()
}

// transferMarks returns the counts transferEvent keeps, for an offer to
// compare with later.
func (s *Session) transferMarks() (prelims, finals uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prelims, s.finals
}

// awaitTransferStart waits until the server has sent the 150/125 of the
// transfer o's connection belongs to. A final reply without one (the
// server refused: no data connection is coming), the connect timeout or
// the session's end is an error.
func (s *Session) awaitTransferStart(o *dataOffer) error {
	t := time.NewTimer(s.cfg.ConnectTimeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		prelims, finals, changed := s.prelims, s.finals, s.xferChanged
		s.mu.Unlock()
		switch {
		case prelims > o.prelimBase:
			return nil
		case finals > o.finalBase:
			return errors.New("the server answered the transfer command without a 150: no data connection")
		}
		select {
		case <-changed:
		case <-t.C:
			return fmt.Errorf("no 150 from the server within %s", s.cfg.ConnectTimeout)
		case <-s.srv.dataCtx.Done():
			return errors.New("shutting down")
		}
	}
}
