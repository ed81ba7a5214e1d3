package proxy

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// commandPump reads commands from the client until it closes, and forwards,
// rewrites or answers each. It is the only reader of the client's control
// connection.
func (s *Session) commandPump() {
	sc := ftp.NewCommandScanner(s.client)
	for {
		line, err := sc.Next()
		if err != nil {
			switch {
			case errors.Is(err, ftp.ErrLineTooLong):
				s.cfg.Observer.Violation(ViolationLongLine)
				s.log.Warn("command line too long, closing session", zap.Int("limit", ftp.MaxLine))
				s.end(endProtocol, "500 Command line too long (limit 8192 bytes), closing control connection.\r\n")
			case isEOF(err) || s.closing():
				s.end(endClientClosed, "")
			default:
				s.log.Info("client read failed", zap.Error(err))
				s.end(endClientError, "")
			}
			return
		}
		s.idle.touch()
		s.trace(ClientToProxy, line.Raw, false)
		if !line.Clean() {
			s.cfg.Observer.Violation(ViolationBadLine)
			s.refusal(MsgBadLine, zap.ByteString("line", clipBytes(line.Raw)))
			if !s.answer(ftp.Command{}, "500 Command refused: it must end with CRLF and contain no other CR, LF or NUL.\r\n") {
				return
			}
			continue
		}
		cmd := ftp.ParseCommand(line.Text)
		if cmd.Kind == ftp.KindAUTH {
			s.authRest = sc.Rest()
		}
		before := s.client
		if !s.command(line, cmd) {
			return
		}
		if s.client != before { // TLS now (tls.go): read through it
			sc = ftp.NewCommandScanner(s.client)
		}
		if cmd.Kind == ftp.KindAUTH && s.opaque.Load() {
			s.relayOpaque(sc)
			return
		}
	}
}

// command handles one well-formed command line; false ends the pump.
func (s *Session) command(line ftp.Line, cmd ftp.Command) bool {
	s.log.Debug("command", zap.Stringer("cmd", cmd))
	s.commands.Add(1)
	if s.manageTLS() {
		if handled, ok, _ := s.tlsCommand(cmd); handled {
			return ok
		}
	}

	switch {
	case s.cfg.RefuseEPSV && (cmd.Kind == ftp.KindEPSV || cmd.Kind == ftp.KindEPSVAll):
		return s.refuseEPSV(cmd)
	case s.epsvAll.Load() && (cmd.Active() || cmd.Kind == ftp.KindPASV || cmd.Kind == ftp.KindLPSV):
		s.cfg.Observer.Violation(ViolationAfterEPSVAll)
		s.refusal(MsgEPSVAllRefused, zap.String("verb", cmd.Verb))
		return s.answer(cmd, fmt.Sprintf("501 %s not allowed after EPSV ALL.\r\n", cmd.Verb))
	case cmd.Active():
		return s.active(line, cmd)
	case cmd.Passive():
		s.dropOffer(nil)
		s.setActiveOffer(nil)
		send, local := s.passiveUpstream(cmd)
		switch {
		case local != "":
			s.cfg.Observer.Translated(TranslationLocalAnswer)
			return s.answer(cmd, local)
		case send != "":
			s.cfg.Observer.Translated(translationTo(send))
			s.log.Info(MsgTranslated, zap.String("client", cmd.String()), zap.String("server", send))
			out := append(append([]byte(nil), line.Telnet...), send+"\r\n"...)
			return s.forward(&exchange{cmd: cmd, sent: send}, out, -1, true)
		}
		return s.forward(&exchange{cmd: cmd}, line.Raw, line.Urgent, false)
	case cmd.Kind == ftp.KindEPSVAll:
		// Honoured from the moment the client says it (RFC 2428 4): a
		// client that asked for EPSV ALL has no business sending PORT.
		s.epsvAll.Store(true)
		s.dropOffer(nil)
		if s.noEPSV.Load() {
			// Never sent to a server without EPSV: the proxy honours it.
			s.cfg.Observer.Translated(TranslationEPSVAll)
			return s.answer(cmd, "200 EPSV ALL command successful.\r\n")
		}
		return s.forward(&exchange{cmd: cmd}, line.Raw, line.Urgent, false)
	case cmd.Kind == ftp.KindAUTH:
		done := make(chan bool, 1)
		if !s.forward(&exchange{cmd: cmd, authDone: done}, line.Raw, line.Urgent, false) {
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
		return s.forward(&exchange{cmd: cmd}, line.Raw, line.Urgent, false)
	}
}

// epsvRefused is the proxy's answer to EPSV and EPSV ALL with
// Config.RefuseEPSV. 502 (command not implemented) says "no EPSV here":
// curl moves on to PASV after any reply to EPSV but a 229 (lib/ftp.c,
// ftp_state_pasv_resp → ftp_epsv_disable; over IPv6 it gives up instead),
// and 500 and 502 are lftp's "command unsupported" (ftpclass.cc,
// cmd_unsupported). lftp sends EPSV over IPv4 only when FEAT lists it
// (and ftp:prefer-epsv is set), which is why featReply leaves it out.
const epsvRefused = "502 EPSV is not available through this gateway; use PASV.\r\n"

// refuseEPSV answers cmd, an EPSV or EPSV ALL, with epsvRefused; the
// server never sees it. The first refusal of a session is logged.
func (s *Session) refuseEPSV(cmd ftp.Command) bool {
	s.cfg.Observer.Translated(TranslationEPSVRefused)
	if s.epsvRefusedLogged.CompareAndSwap(false, true) {
		s.log.Info(MsgEPSVRefused, zap.String("command", cmd.String()))
	}
	return s.answer(cmd, epsvRefused)
}

// forward queues x and sends raw to the server; false ends the pump.
// urgent is the index of the byte to send as TCP urgent data, or -1.
func (s *Session) forward(x *exchange, raw []byte, urgent int, changed bool) bool {
	if !s.corr.reserve(s.done) {
		return false
	}
	if changed {
		s.trace(ProxyToServer, raw, true)
	}
	s.toServer.Lock()
	s.corr.push(x)
	err := writeWithUrgent(s.server, raw, urgent)
	s.toServer.Unlock()
	if err != nil {
		if !s.closing() {
			s.log.Info("server write failed", zap.Error(err))
		}
		s.end(endServerError, "")
		return false
	}
	return true
}

// sendInternal sends the server a command of the proxy's own whose reply
// answers x in place of the reply x got (translation). It does so only when
// no other command is waiting for the server, so that reply comes next.
func (s *Session) sendInternal(x *exchange, verb string, line []byte) bool {
	s.toServer.Lock()
	defer s.toServer.Unlock()
	if !s.corr.alone(x) {
		return false
	}
	s.corr.resend(x, verb)
	s.trace(ProxyToServer, line, true)
	if _, err := s.server.Write(line); err != nil {
		s.end(endServerError, "")
		return false
	}
	return true
}

// answer queues a reply of the proxy's own to cmd; the writer sends it once
// the replies to all earlier commands are out. False ends the pump.
func (s *Session) answer(cmd ftp.Command, reply string) bool {
	return s.corr.addLocal(cmd, []byte(reply), s.done)
}
