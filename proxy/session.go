package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// maxPending bounds the commands in flight (pipelined) per session; a client
// that pipelines more waits until replies come back.
const maxPending = 256

// pending is a command waiting for its final reply, or a reply the proxy
// wrote itself that must wait for the replies to earlier commands.
type pending struct {
	cmd   ftp.Command
	local []byte // the proxy's own reply; the command was not forwarded
	// offer is the active-mode listener a PORT/EPRT/LPRT set up; it is
	// dropped if the server refuses the command.
	offer *dataOffer
	// authDone receives whether the server accepted AUTH (reply 234).
	authDone chan bool
	// closeAfter ends the session once the local reply is written.
	closeAfter bool
	// sent is the verb that went to the server when it is not cmd's
	// (protocol translation); its reply still answers cmd.
	sent string
}

// Session relays one client's control connection to the server and brokers
// its data connections.
type Session struct {
	srv        *Server
	id         uint64
	log        *zap.Logger
	client     net.Conn
	rawClient  net.Conn // client as accepted, for Config.Director
	server     net.Conn
	clientAddr netip.AddrPort // the client, as seen on its control connection
	clientSide netip.AddrPort // our address facing the client
	serverAddr netip.AddrPort // the server's control address
	serverSide netip.AddrPort // our address facing the server
	idle       *idleWatch
	started    time.Time

	closeOnce sync.Once
	done      chan struct{} // closed when the session is closing
	data      sync.WaitGroup

	mu    sync.Mutex
	queue []pending     // commands in flight, in order
	slots chan struct{} // bounds len(queue)
	offer *dataOffer    // the data connection announced last, not yet connected
	// active is the last active-mode offer, kept after it is connected so
	// the reply that ends its transfer can wait for the client's side.
	activeOffer *dataOffer
	conns       map[*net.TCPConn]struct{}
	epsvAll     bool
	// noEPSV and noEPRT: the server is known not to do EPSV/EPRT.
	noEPSV, noEPRT bool
	opaque         bool // the control channel turned into TLS: relay bytes only
	commands       int
}

func newSession(srv *Server, id uint64, client net.Conn, peer netip.AddrPort) *Session {
	s := &Session{
		srv:        srv,
		id:         id,
		client:     wrapControl(client),
		rawClient:  client,
		clientAddr: peer,
		clientSide: nat.AddrPortOf(client.LocalAddr()),
		done:       make(chan struct{}),
		slots:      make(chan struct{}, maxPending),
		conns:      map[*net.TCPConn]struct{}{},
		started:    time.Now(),
	}
	s.log = srv.log.With(zap.Uint64("session", id), zap.Stringer("client", peer))
	return s
}

// run relays the session until either side closes, then cleans up. It
// returns when every goroutine and data connection of the session is gone.
func (s *Session) run() {
	defer s.data.Wait()
	defer s.close()
	s.log.Info("session started", zap.Stringer("local", s.clientSide))
	if !s.dialServer() {
		return
	}
	s.idle = newIdleWatch(s.srv.cfg.IdleTimeout, s.idleTimeout)
	defer s.idle.stop()
	s.queue = append(s.queue, pending{cmd: ftp.Command{Verb: "(greeting)"}})
	s.slots <- struct{}{}

	var wg sync.WaitGroup
	wg.Go(s.replyPump)
	s.commandPump()
	s.close()
	wg.Wait()
}

func (s *Session) dialServer() bool {
	upstream := s.srv.cfg.Upstream
	if dir := s.srv.cfg.Director; dir != nil {
		ap, err := dir(s.rawClient)
		if err != nil {
			s.log.Warn("no server for this connection", zap.Error(err))
			s.writeClientNow("421 Service not available: no FTP server for this connection.\r\n")
			return false
		}
		upstream = ap.String()
	}
	var from netip.Addr
	if s.srv.cfg.UpstreamSourceClient {
		from = s.clientAddr.Addr()
	}
	c, err := s.srv.dial(s.srv.dataCtx, from, s.clientAddr.Port(), upstream)
	if err != nil {
		s.log.Warn("upstream unreachable", zap.String("upstream", upstream), zap.Error(err))
		s.writeClientNow("421 Service not available: the FTP server cannot be reached.\r\n")
		return false
	}
	s.mu.Lock()
	if s.closing() { // shut down while connecting
		s.mu.Unlock()
		c.Close()
		return false
	}
	s.server = wrapControl(c)
	s.mu.Unlock()
	s.serverAddr = nat.AddrPortOf(c.RemoteAddr())
	s.serverSide = nat.AddrPortOf(c.LocalAddr())
	s.log = s.log.With(zap.Stringer("server", s.serverAddr))
	s.log.Info("connected to server", zap.Stringer("local", s.serverSide))
	return true
}

// close ends the control connections and any announced data connection
// that has not been made. Running transfers go on until they end.
func (s *Session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.client.Close()
		s.mu.Lock()
		if s.server != nil {
			s.server.Close()
		}
		o := s.offer
		s.offer = nil
		n := s.commands
		s.mu.Unlock()
		if o != nil {
			o.close()
		}
		s.log.Info("session ended", zap.Duration("duration", time.Since(s.started)), zap.Int("commands", n))
	})
}

// shutdown closes the session and its running transfers (server shutdown
// after the grace period).
func (s *Session) shutdown() {
	s.mu.Lock()
	conns := make([]*net.TCPConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.writeClientNow("421 Service shutting down, closing control connection.\r\n")
	s.close()
	for _, c := range conns {
		c.Close()
	}
}

func (s *Session) idleTimeout() {
	s.log.Info("idle timeout", zap.Duration("timeout", s.srv.cfg.IdleTimeout))
	s.writeClientNow(fmt.Sprintf("421 Timeout: no activity for %s, closing control connection.\r\n", s.srv.cfg.IdleTimeout))
	s.close()
}

// writeClientNow writes a reply out of order, for a session that is ending.
func (s *Session) writeClientNow(reply string) {
	s.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	s.client.Write([]byte(reply))
	s.trace(ProxyToClient, []byte(reply), true)
}

func (s *Session) trace(dir Direction, line []byte, changed bool) {
	if s.srv.cfg.Trace == nil {
		return
	}
	text := strings.TrimRight(string(line), "\r\n")
	if dir == ClientToProxy || dir == ProxyToServer {
		if c := ftp.ParseCommand([]byte(text)); c.Kind == ftp.KindPASS {
			text = c.String()
		}
	}
	s.srv.cfg.Trace(TraceEvent{Session: s.id, Dir: dir, Line: text, Changed: changed})
}

// ---- client to server ----

// commandPump reads commands from the client until it closes.
func (s *Session) commandPump() {
	sc := ftp.NewCommandScanner(s.client)
	for {
		line, err := sc.Next()
		if err != nil {
			if errors.Is(err, ftp.ErrLineTooLong) {
				s.log.Warn("command line too long, closing session", zap.Int("limit", ftp.MaxLine))
				s.writeClientNow("500 Command line too long (limit 8192 bytes), closing control connection.\r\n")
			} else if !isEOF(err) && !s.closing() {
				s.log.Info("client read failed", zap.Error(err))
			}
			return
		}
		s.idle.touch()
		s.trace(ClientToProxy, line.Raw, false)
		if !line.Clean() {
			s.log.Warn("command refused: bare CR, LF or NUL", zap.ByteString("line", clipBytes(line.Raw)))
			if !s.reply(pending{local: []byte("500 Command refused: it must end with CRLF and contain no other CR, LF or NUL.\r\n")}) {
				return
			}
			continue
		}
		cmd := ftp.ParseCommand(line.Text)
		if !s.command(line, cmd) {
			return
		}
		if cmd.Kind == ftp.KindAUTH && s.isOpaque() {
			s.relayOpaque(sc)
			return
		}
	}
}

// command handles one well-formed command line; false ends the session.
func (s *Session) command(line ftp.Line, cmd ftp.Command) bool {
	s.log.Debug("command", zap.Stringer("cmd", cmd))
	s.mu.Lock()
	s.commands++
	epsvAll := s.epsvAll
	s.mu.Unlock()

	switch {
	case epsvAll && (cmd.Active() || cmd.Kind == ftp.KindPASV || cmd.Kind == ftp.KindLPSV):
		s.log.Warn("command refused after EPSV ALL", zap.String("verb", cmd.Verb))
		return s.reply(pending{cmd: cmd, local: fmt.Appendf(nil, "501 %s not allowed after EPSV ALL.\r\n", cmd.Verb)})
	case cmd.Active():
		return s.active(line, cmd)
	case cmd.Passive():
		s.dropOffer()
		s.mu.Lock()
		s.activeOffer = nil
		s.mu.Unlock()
		send, local := s.passiveUpstream(cmd)
		switch {
		case local != nil:
			return s.reply(pending{cmd: cmd, local: local})
		case send != "":
			s.log.Info("translated", zap.String("client", cmd.String()), zap.String("server", send))
			return s.forward(pending{cmd: cmd, sent: send}, append(append([]byte(nil), line.Telnet...), send+"\r\n"...), -1, true)
		}
		return s.forward(pending{cmd: cmd}, line.Raw, line.Urgent, false)
	case cmd.Kind == ftp.KindEPSVAll:
		// Honoured from the moment the client says it (RFC 2428 4): a
		// client that asked for EPSV ALL has no business sending PORT.
		s.mu.Lock()
		s.epsvAll = true
		noEPSV := s.noEPSV
		s.mu.Unlock()
		s.dropOffer()
		if noEPSV {
			// Never sent to a server without EPSV: the proxy honours it.
			return s.reply(pending{cmd: cmd, local: []byte("200 EPSV ALL command successful.\r\n")})
		}
		return s.forward(pending{cmd: cmd}, line.Raw, line.Urgent, false)
	case cmd.Kind == ftp.KindAUTH:
		done := make(chan bool, 1)
		if !s.forward(pending{cmd: cmd, authDone: done}, line.Raw, line.Urgent, false) {
			return false
		}
		// The client sends nothing more until the server has answered;
		// after a 234 the next bytes are a TLS handshake, not commands.
		select {
		case <-done:
			return true
		case <-s.done:
			return false
		}
	default:
		return s.forward(pending{cmd: cmd}, line.Raw, line.Urgent, false)
	}
}

// active validates and rewrites PORT, EPRT and LPRT.
func (s *Session) active(line ftp.Line, cmd ftp.Command) bool {
	announced, err := ftp.ParseActive(cmd)
	if err != nil {
		s.log.Warn("active-mode command refused", zap.Stringer("cmd", cmd), zap.Error(err))
		if errors.Is(err, ftp.ErrFamily) {
			return s.reply(pending{cmd: cmd, local: []byte("522 Network protocol not supported, use (1,2).\r\n")})
		}
		return s.reply(pending{cmd: cmd, local: fmt.Appendf(nil, "501 Syntax error in %s argument.\r\n", cmd.Verb)})
	}
	if err := ftp.CheckActive(announced, s.clientAddr.Addr()); err != nil {
		s.log.Warn("active-mode address refused (RFC 2577)", zap.Stringer("cmd", cmd), zap.Error(err))
		return s.reply(pending{cmd: cmd, local: fmt.Appendf(nil, "504 %s refused: data connections go only to your own address and a port above 1023.\r\n", cmd.Verb)})
	}
	s.dropOffer()
	o, err := s.openOffer(false, s.serverSide.Addr(), s.serverAddr.Addr(), announced, s.clientSide.Addr())
	if err != nil {
		s.log.Warn("cannot listen for the server's data connection", zap.Error(err))
		return s.reply(pending{cmd: cmd, local: []byte("425 Can't open data connection: no data port available.\r\n")})
	}
	verb, arg := s.activeVerb(cmd.Kind, o.local)
	out := make([]byte, 0, len(line.Telnet)+len(verb)+len(arg)+3)
	out = append(out, line.Telnet...)
	out = append(out, verb...)
	out = append(out, ' ')
	out = append(out, arg...)
	out = append(out, "\r\n"...)
	s.log.Info("active mode rewritten", zap.String("verb", cmd.Verb), zap.Stringer("client_data", announced),
		zap.String("sent", verb+" "+arg), zap.Stringer("listen", o.local))
	s.setOffer(o)
	s.mu.Lock()
	s.activeOffer = o
	s.mu.Unlock()
	return s.forward(pending{cmd: cmd, offer: o, sent: verb}, out, -1, true)
}

// activeForm returns the command announcing local to the server in the form
// the client used, or EPRT when that form cannot carry the address family.
func activeForm(k ftp.Kind, local netip.AddrPort) (verb, arg string) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	switch {
	case k == ftp.KindPORT && local.Addr().Is4():
		return "PORT", ftp.FormatPORT(local)
	case k == ftp.KindLPRT && local.Addr().Is4():
		return "LPRT", ftp.FormatLPRT(local) // falls back to PORT if refused
	default:
		return "EPRT", ftp.FormatEPRT(local)
	}
}

// forward queues p and sends raw to the server.
func (s *Session) forward(p pending, raw []byte, urgent int, changed bool) bool {
	if !s.enqueue(p) {
		return false
	}
	if changed {
		s.trace(ProxyToServer, raw, true)
	}
	if err := writeWithUrgent(s.server, raw, urgent); err != nil {
		if !s.closing() {
			s.log.Info("server write failed", zap.Error(err))
		}
		return false
	}
	return true
}

// reply queues a reply of the proxy's own; it is written once the replies
// to all earlier commands have been relayed.
func (s *Session) reply(p pending) bool {
	if !s.enqueue(p) {
		return false
	}
	s.mu.Lock()
	err := s.flushLocalLocked()
	s.mu.Unlock()
	return err == nil
}

// enqueue appends p to the queue, waiting while the queue is full.
func (s *Session) enqueue(p pending) bool {
	select {
	case s.slots <- struct{}{}:
	case <-s.done:
		return false
	}
	s.mu.Lock()
	s.queue = append(s.queue, p)
	s.mu.Unlock()
	return true
}

// popLocked removes the queue's head.
func (s *Session) popLocked() pending {
	p := s.queue[0]
	s.queue[0] = pending{}
	s.queue = s.queue[1:]
	<-s.slots
	return p
}

// flushLocalLocked writes the proxy's own replies at the head of the queue.
func (s *Session) flushLocalLocked() error {
	for len(s.queue) > 0 && s.queue[0].local != nil {
		p := s.popLocked()
		if err := s.writeClientLocked(p.local, true); err != nil {
			return err
		}
		if p.closeAfter {
			return io.EOF
		}
	}
	return nil
}

func (s *Session) writeClientLocked(b []byte, changed bool) error {
	s.trace(ProxyToClient, b, changed)
	_, err := s.client.Write(b)
	return err
}

// ---- server to client ----

// replyPump reads replies from the server until it closes.
func (s *Session) replyPump() {
	defer s.close()
	rr := ftp.NewReplyReader(ftp.NewReplyScanner(s.server))
	// A server that accepts but never greets (an overflowing accept queue,
	// a hung process) must not hold the client for the idle timeout.
	s.server.SetReadDeadline(time.Now().Add(s.srv.cfg.ConnectTimeout))
	greeted := false
	for {
		r, err := rr.Next()
		if err == nil && !greeted {
			greeted = true
			s.server.SetReadDeadline(time.Time{})
		}
		if err != nil {
			var ne net.Error
			switch {
			case !greeted && errors.As(err, &ne) && ne.Timeout():
				s.log.Warn("server sent no greeting", zap.Duration("timeout", s.srv.cfg.ConnectTimeout))
				s.writeClientNow("421 Service not available: the FTP server did not answer.\r\n")
			case errors.Is(err, ftp.ErrLineTooLong):
				s.log.Warn("reply line too long, closing session", zap.Int("limit", ftp.MaxLine))
				s.writeClientNow("421 The server sent a reply line over 8192 bytes, closing control connection.\r\n")
			case isEOF(err) || s.closing():
				if len(r.Lines) > 0 { // a partial last line: pass it on as it is
					s.client.Write(r.Raw())
				}
			default:
				s.log.Info("server read failed", zap.Error(err))
			}
			return
		}
		s.idle.touch()
		for i := range r.Lines {
			s.trace(ServerToProxy, r.Lines[i].Raw, false)
		}
		s.awaitActiveData(r)
		if err := s.handleReply(r); err != nil {
			if !s.closing() && !errors.Is(err, io.EOF) {
				s.log.Info("client write failed", zap.Error(err))
			}
			return
		}
		if s.isOpaque() {
			s.relayOpaqueReplies(rr)
			return
		}
	}
}

// awaitActiveData holds the reply that ends an active-mode transfer until
// the proxy's data connection to the client exists. The server connects to
// the proxy, sends, closes and replies 226 at once; relayed straight away,
// that 226 can reach the client before the proxy has connected to it, and
// clients that watch the control channel while waiting for the data
// connection (curl) give up. With a direct connection that cannot happen.
func (s *Session) awaitActiveData(r *ftp.Reply) {
	if !r.Whole() || r.Code/100 != 2 {
		return
	}
	s.mu.Lock()
	o := s.activeOffer
	head := ftp.Command{}
	for _, p := range s.queue {
		if p.local == nil {
			head = p.cmd
			break
		}
	}
	s.mu.Unlock()
	if o == nil || !ftp.TransferVerb(head.Verb) {
		return
	}
	t := time.NewTimer(s.srv.cfg.ConnectTimeout)
	defer t.Stop()
	select {
	case <-o.settled:
	case <-t.C:
		s.log.Warn("relaying the transfer's reply before the client's data connection is made",
			zap.Int("code", r.Code), zap.Duration("waited", s.srv.cfg.ConnectTimeout))
	case <-s.done:
	}
}

// handleReply relays one reply (or reply chunk), rewriting it when it
// answers a passive-mode request.
func (s *Session) handleReply(r *ftp.Reply) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A reply of the proxy's own may have been queued at the head and not
	// written yet; it goes first, and is not the command being answered.
	if err := s.flushLocalLocked(); err != nil {
		return err
	}
	if !r.Whole() || !r.Final() {
		// 1xx, or a long multi-line reply passed on in chunks.
		if err := s.writeClientLocked(r.Raw(), false); err != nil {
			return err
		}
		if !r.More && r.Final() && len(s.queue) > 0 {
			s.popLocked()
			return s.flushLocalLocked()
		}
		return nil
	}
	if len(s.queue) == 0 {
		s.log.Debug("unsolicited reply", zap.Int("code", r.Code))
		return s.writeClientLocked(r.Raw(), false)
	}
	s.resyncLocked(r)
	p := s.popLocked()
	var err error
	switch {
	case p.cmd.Passive() && (ftp.AddressCode(r.Code) || r.Code == 0):
		err = s.passiveReplyLocked(p.cmd, r)
	case p.cmd.Passive() && s.passiveFallbackLocked(p, r):
		return nil // the answer to the proxy's PASV answers the client
	case p.cmd.Active() && s.activeFallbackLocked(p, r):
		return nil
	case p.cmd.Kind == ftp.KindEPSVAll && r.Code/100 != 2:
		s.log.Info("server refused EPSV ALL; the proxy honours it", zap.Int("code", r.Code))
		err = s.writeClientLocked([]byte("200 EPSV ALL command successful.\r\n"), true)
	case p.cmd.Verb == "FEAT":
		out := s.featReplyLocked(r)
		err = s.writeClientLocked(out, !bytes.Equal(out, r.Raw()))
	case p.cmd.Active():
		if r.Code/100 != 2 && p.offer != nil {
			s.log.Info("server refused active mode", zap.Int("code", r.Code))
			s.dropOfferLocked(p.offer)
		}
		err = s.writeClientLocked(r.Raw(), false)
	case p.cmd.Kind == ftp.KindAUTH:
		if r.Code == 234 {
			s.log.Warn("control channel switched to TLS: commands can no longer be inspected, data connections will not be proxied")
			s.opaque = true
		}
		err = s.writeClientLocked(r.Raw(), false)
		p.authDone <- r.Code == 234
	case p.cmd.Kind == ftp.KindREIN && r.Code/100 == 2:
		s.epsvAll = false
		err = s.writeClientLocked(r.Raw(), false)
	default:
		err = s.writeClientLocked(r.Raw(), false)
	}
	if err != nil {
		return err
	}
	return s.flushLocalLocked()
}

// resyncLocked realigns replies with commands when a passive-address reply
// arrives while the head of the queue is not a passive request but a later
// entry is: a server that answered some earlier command (an ABOR) with
// fewer replies than RFC 959 prescribes would otherwise shift every later
// match by one.
func (s *Session) resyncLocked(r *ftp.Reply) {
	if !ftp.AddressCode(r.Code) || s.queue[0].cmd.Passive() {
		return
	}
	for i := 1; i < len(s.queue); i++ {
		if s.queue[i].local == nil && s.queue[i].cmd.Passive() {
			for range i {
				skipped := s.popLocked()
				if skipped.local != nil {
					s.writeClientLocked(skipped.local, true)
				}
				s.log.Warn("reply correlation resynchronized", zap.String("skipped", skipped.cmd.Verb), zap.Int("code", r.Code))
			}
			return
		}
	}
}

// passiveReplyLocked answers a PASV/EPSV/LPSV: it parses the server's data
// address, opens a listener and a pinhole on the client side, and sends the
// client a reply in the form it asked for.
func (s *Session) passiveReplyLocked(cmd ftp.Command, r *ftp.Reply) error {
	ap, _, err := ftp.ParsePassiveReply(r)
	if r.Code == 0 {
		err = errors.New("malformed reply line")
	}
	if err != nil {
		s.log.Warn("passive reply not understood, answering 425", zap.Int("code", r.Code),
			zap.ByteString("reply", clipBytes(r.Raw())), zap.Error(err))
		return s.writeClientLocked(append(r.Telnet(), "425 Can't open data connection: the server's passive-mode reply could not be parsed.\r\n"...), true)
	}
	target := s.passiveTarget(ap)
	adv, listenIP := s.advertised()
	if cmd.Kind == ftp.KindPASV && !adv.Is4() {
		s.log.Warn("PASV from a client that can only be given an IPv6 address", zap.Stringer("advertise", adv))
		return s.writeClientLocked([]byte("425 You cannot use PASV on IPv6 connections. Use EPSV instead.\r\n"), true)
	}
	if s.closing() {
		return io.EOF // close() takes s.mu after marking the session closed: no offer may start now
	}
	o, err := s.openOffer(true, listenIP, s.clientAddr.Addr(), target, s.serverSide.Addr())
	if err != nil {
		s.log.Warn("cannot listen for the client's data connection", zap.Error(err))
		return s.writeClientLocked([]byte("425 Can't open data connection: no data port available.\r\n"), true)
	}
	if old := s.offer; old != nil {
		old.close()
	}
	s.offer = o
	shown := netip.AddrPortFrom(adv, o.local.Port())
	var text string
	code := ftp.CodePASV
	switch cmd.Kind {
	case ftp.KindEPSV:
		code, text = ftp.CodeEPSV, ftp.FormatEPSV(shown.Port())
	case ftp.KindLPSV:
		code, text = ftp.CodeLPSV, ftp.FormatLPSV(shown)
	default:
		text = ftp.FormatPASV(shown)
	}
	out := fmt.Appendf(r.Telnet(), "%d %s\r\n", code, text)
	s.log.Info("passive mode rewritten", zap.String("request", cmd.Verb),
		zap.ByteString("server_reply", bytes.TrimRight(r.Lines[len(r.Lines)-1].Text, " ")),
		zap.Stringer("server_data", target), zap.String("client_reply", fmt.Sprintf("%d %s", code, text)),
		zap.Stringer("listen", o.local))
	return s.writeClientLocked(out, true)
}

// passiveTarget returns where to dial the server's data port: the control
// peer's address unless the server announced another one and the
// configuration says to trust it (and it is a usable unicast address).
func (s *Session) passiveTarget(ap netip.AddrPort) netip.AddrPort {
	announced := ap.Addr().Unmap()
	ctl := s.serverAddr.Addr()
	if !announced.IsValid() || announced == ctl {
		return netip.AddrPortFrom(ctl, ap.Port())
	}
	if s.srv.cfg.TrustPASVAddress && !announced.IsUnspecified() && !announced.IsMulticast() {
		return netip.AddrPortFrom(announced, ap.Port())
	}
	s.log.Info("server announced another address, using its control address", zap.Stringer("announced", announced),
		zap.Stringer("dialing", ctl))
	return netip.AddrPortFrom(ctl, ap.Port())
}

// ---- TLS after AUTH: blind relay ----

func (s *Session) isOpaque() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opaque
}

// relayOpaque copies the client's bytes to the server without looking at
// them, starting with what the scanner had already read.
func (s *Session) relayOpaque(sc *ftp.Scanner) {
	s.idle.stop()
	if rest := sc.Rest(); len(rest) > 0 {
		if _, err := s.server.Write(rest); err != nil {
			return
		}
	}
	io.Copy(s.server, s.client)
}

func (s *Session) relayOpaqueReplies(rr *ftp.ReplyReader) {
	if rest := rr.Rest(); len(rest) > 0 {
		if _, err := s.client.Write(rest); err != nil {
			return
		}
	}
	io.Copy(s.client, s.server)
}

func (s *Session) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

func clipBytes(b []byte) []byte {
	if len(b) > 256 {
		return b[:256]
	}
	return b
}
