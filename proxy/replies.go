package proxy

import (
	"bytes"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// replyPump reads replies from the server until it closes, matches each to
// the command it answers, rewrites it where needed and hands the result to
// the correlator for the client writer. It is the only reader of the
// server's control connection.
func (s *Session) replyPump() {
	rr := ftp.NewReplyReader(ftp.NewLearningReplyScanner(s.server))
	// A server that accepts but never greets (an overflowing accept queue,
	// a hung process) must not hold the client for the idle timeout.
	s.server.SetReadDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	greeted := false
	for {
		// A client that does not read must not make the proxy buffer
		// what the server keeps sending.
		if room := s.corr.full(); room != nil {
			select {
			case <-room:
			case <-s.done:
				return
			}
		}
		r, err := rr.Next()
		if err == nil && !greeted {
			greeted = true
			s.server.SetReadDeadline(time.Time{})
		}
		if err != nil {
			s.replyError(r, err, greeted)
			return
		}
		s.idle.touch()
		for i := range r.Lines {
			s.trace(ServerToProxy, r.Lines[i].Raw, false)
		}
		s.awaitActiveData(r)
		s.noteTransferReply(r)
		s.handleReply(r)
		if s.opaque.Load() {
			s.relayOpaqueReplies(rr)
			return
		}
	}
}

// replyError ends the reply pump on a read error or the end of the stream.
func (s *Session) replyError(r *ftp.Reply, err error, greeted bool) {
	var ne net.Error
	switch {
	case s.closing():
	case !greeted && errors.As(err, &ne) && ne.Timeout():
		s.cfg.Observer.SessionRefused(RefusedGreeting)
		s.log.Warn("server sent no greeting", zap.Duration("timeout", s.cfg.ConnectTimeout))
		s.end(endServerError, "421 Service not available: the FTP server did not answer.\r\n")
	case errors.Is(err, ftp.ErrLineTooLong):
		s.cfg.Observer.Violation(ViolationLongLine)
		s.log.Warn("reply line too long, closing session", zap.Int("limit", ftp.MaxLine))
		s.end(endProtocol, "421 The server sent a reply line over 8192 bytes, closing control connection.\r\n")
	case isEOF(err):
		partial := len(r.Lines) > 0
		if partial { // a partial last reply: pass it on as it is
			s.corr.emit(s.corr.awaiting(), chunk{b: r.Raw()}, false)
		}
		s.serverGone(endServerClosed, !partial)
	default:
		s.log.Info("server read failed", zap.Error(err))
		s.serverGone(endServerError, true)
	}
}

// serverGone ends the session after the server closed its control
// connection: what the server said is still written to the client, and a
// command it never answered gets a 421 instead of silence (unless part of
// a reply to it was passed on, which a 421 would only garble).
func (s *Session) serverGone(why endReason, tell bool) {
	s.why.CompareAndSwap(0, uint32(why))
	var reply []byte
	if tell {
		reply = []byte("421 Service not available: the FTP server closed the control connection.\r\n")
	}
	for i, x := range s.corr.abandon(reply) {
		if i == 0 {
			s.log.Info("server closed the control connection before answering", zap.String("command", x.cmd.Verb))
		}
	}
	s.corr.stopWhenWritten()
	s.rawClient.SetWriteDeadline(time.Now().Add(goodbyeTimeout))
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
	o := s.currentActiveOffer()
	if o == nil {
		return
	}
	if x := s.corr.awaiting(); x == nil || !ftp.TransferVerb(x.cmd.Verb) {
		return
	}
	t := time.NewTimer(s.cfg.ConnectTimeout)
	defer t.Stop()
	select {
	case <-o.settled:
	case <-t.C:
		s.log.Warn("relaying the transfer's reply before the client's data connection is made",
			zap.Int("code", r.Code), zap.Duration("waited", s.cfg.ConnectTimeout))
	case <-s.done:
	}
}

// noteTransferReply tells transferEvent about the server's 1xx or final
// reply to a transfer command (before handleReply retires the command).
func (s *Session) noteTransferReply(r *ftp.Reply) {
	if r.More {
		return
	}
	if x := s.corr.awaiting(); x != nil && ftp.TransferVerb(x.cmd.Verb) && !x.local {
		s.transferEvent(r.Code/100 == 1)
	}
}

// handleReply relays one reply (or reply chunk), rewriting it when it
// answers a passive-mode request.
func (s *Session) handleReply(r *ftp.Reply) {
	if !r.Whole() || !r.Final() {
		// 1xx, or a long multi-line reply passed on in chunks.
		s.corr.emit(s.corr.awaiting(), chunk{b: r.Raw()}, !r.More && r.Final())
		return
	}
	x, skipped := s.corr.match(r.Code)
	for _, sk := range skipped {
		s.log.Warn("reply correlation resynchronized", zap.String("skipped", sk.cmd.Verb), zap.Int("code", r.Code))
	}
	if x == nil {
		s.log.Debug("unsolicited reply", zap.Int("code", r.Code))
		s.corr.emit(nil, chunk{b: r.Raw()}, true)
		return
	}
	if ftp.TransferVerb(x.cmd.Verb) {
		if refusal := s.dataRefusal(r.Code); refusal != "" {
			s.confirmTransfer(522)
			s.reply(x, refusal)
			return
		}
		s.syncKernel(r.Code)
		s.confirmTransfer(r.Code)
	}
	if (r.Code == 230 || r.Code == 232) && (x.cmd.Verb == "USER" || x.cmd.Verb == "PASS" || x.cmd.Verb == "ACCT") {
		s.loginDone()
	}
	switch {
	case x.cmd.Passive() && (ftp.AddressCode(r.Code) || r.Code == 0):
		s.passiveReply(x, r)
	case x.cmd.Passive() && s.passiveFallback(x, r):
		// The answer to the proxy's PASV answers the client.
	case x.cmd.Active() && s.activeFallback(x, r):
	case x.cmd.Kind == ftp.KindEPSVAll && (r.Code/100 != 2 || ftp.AddressCode(r.Code)):
		// Refused, or taken for a plain EPSV (a 229 announcing a port):
		// the proxy honours EPSV ALL itself, and a port the server opened
		// is offered to no one. Any other 2xx (pyftpdlib says 220) is the
		// server's acceptance and goes on as it is.
		s.cfg.Observer.Translated(TranslationEPSVAll)
		s.log.Info(MsgEPSVAllHonoured, zap.Int("code", r.Code))
		s.reply(x, "200 EPSV ALL command successful.\r\n")
	case x.cmd.Verb == "FEAT":
		out := s.featReply(r)
		s.corr.emit(x, chunk{b: out, changed: !bytes.Equal(out, r.Raw())}, true)
	case x.cmd.Active():
		if r.Code/100 != 2 && x.offer != nil {
			s.log.Info("server refused active mode", zap.Int("code", r.Code))
			s.dropOffer(x.offer)
		}
		s.relay(x, r)
	case x.cmd.Kind == ftp.KindAUTH:
		if r.Code == 234 {
			s.log.Warn("control channel switched to TLS: commands can no longer be inspected, data connections will not be proxied")
			s.opaque.Store(true)
			s.loginDone() // it happens inside TLS now; the idle timeout still applies
			s.corr.emit(x, chunk{b: r.Raw(), handover: true}, true)
		} else {
			s.relay(x, r)
		}
		x.authDone <- r.Code == 234
	case x.cmd.Kind == ftp.KindREIN && r.Code/100 == 2:
		s.epsvAll.Store(false)
		s.relay(x, r)
	default:
		s.relay(x, r)
	}
}

// relay passes r on unchanged as x's final reply.
func (s *Session) relay(x *exchange, r *ftp.Reply) { s.corr.emit(x, chunk{b: r.Raw()}, true) }

// reply gives x a final reply of the proxy's own.
func (s *Session) reply(x *exchange, text string) {
	s.corr.emit(x, chunk{b: []byte(text), changed: true}, true)
}

// clientWriter writes the replies the correlator releases, in command
// order, until the session ends. It is the only writer to the client's
// control connection (until a TLS handover passes that role to the opaque
// relay), so ordering needs no lock around a write, and a write that blocks
// on a client that does not read holds nothing but this goroutine.
func (s *Session) clientWriter() {
	handedOver := false
	defer func() {
		s.corr.writerStopped()
		if !handedOver {
			s.rawClient.Close()
			s.end(endClientClosed, "")
		}
	}()
	for {
		ch, st := s.corr.next()
		switch st {
		case stepStop:
			return
		case stepWait:
			select {
			case <-s.corr.wake:
				continue
			case <-s.done:
				// Ending: a goodbye may just have been said.
				if ch, st = s.corr.next(); st != stepLast {
					return
				}
			}
		}
		s.trace(ProxyToClient, ch.b, ch.changed)
		if _, err := s.client.Write(ch.b); err != nil {
			if !s.closing() {
				s.log.Info("client write failed", zap.Error(err))
				s.end(endClientError, "")
			}
			return
		}
		if st == stepLast {
			return
		}
		if ch.handover {
			handedOver = true
			close(s.handover)
			return
		}
		if ch.startTLS != nil && s.startClientTLS(ch.startTLS) != nil {
			return
		}
	}
}

// ---- TLS after AUTH: blind relay ----

// relayOpaque copies the client's bytes to the server without looking at
// them, starting with what the scanner had already read.
func (s *Session) relayOpaque(sc *ftp.Scanner) {
	if rest := sc.Rest(); len(rest) > 0 {
		if _, err := s.server.Write(rest); err != nil {
			s.end(endServerError, "")
			return
		}
	}
	s.copyOpaque(s.server, s.client)
	s.end(endClientClosed, "")
}

// relayOpaqueReplies copies the server's bytes to the client once the
// writer has written the 234 and handed the connection over.
func (s *Session) relayOpaqueReplies(rr *ftp.ReplyReader) {
	select {
	case <-s.handover:
	case <-s.done:
		return
	}
	if rest := rr.Rest(); len(rest) > 0 {
		if _, err := s.client.Write(rest); err != nil {
			s.end(endClientError, "")
			return
		}
	}
	s.copyOpaque(s.client, s.server)
	s.end(endServerClosed, "")
}

// copyOpaque copies src to dst until either fails, counting every read as
// activity for the idle timeout (the TLS session's own keepalives and
// commands are control traffic like any other).
func (s *Session) copyOpaque(dst, src net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.idle.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
