package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// Rewriting of data-channel negotiations: the client only ever sees the
// proxy's addresses, the server only ever sees the proxy's addresses, and
// each side gets the form it asked for (translate.go decides what goes to
// the server).

// passiveReply answers a PASV/EPSV/LPSV: it parses the server's data
// address, opens a listener and a pinhole on the client side, and gives the
// client a reply in the form it asked for. It runs on the reply pump with
// no lock held; x stays at its place in the queue meanwhile, so the client
// sees the answer in order.
func (s *Session) passiveReply(x *exchange, r *ftp.Reply) {
	ap, _, err := ftp.ParsePassiveReply(r)
	if r.Code == 0 {
		err = errors.New("malformed reply line")
	}
	if err != nil {
		s.cfg.Observer.Violation(ViolationBadPassive)
		s.refusal("passive reply not understood, answering 425", zap.Int("code", r.Code),
			zap.ByteString("reply", clipBytes(r.Raw())), zap.Error(err))
		s.corr.emit(x, chunk{b: append(r.Telnet(), "425 Can't open data connection: the server's passive-mode reply could not be parsed.\r\n"...), changed: true}, true)
		return
	}
	if err := ftp.CheckPassive(ap); err != nil {
		s.cfg.Observer.Violation(ViolationPrivilegedPort)
		s.refusal("passive reply refused: the server announced a privileged port", zap.Int("code", r.Code),
			zap.Uint16("port", ap.Port()), zap.Error(err))
		s.reply(x, "425 Can't open data connection: the server announced a port below 1024.\r\n")
		return
	}
	target := s.passiveTarget(ap)
	adv, listenIP := s.advertised()
	announced := ap
	if !ap.Addr().IsValid() { // 229: the control connection's address
		announced = netip.AddrPortFrom(s.serverAddr.Addr(), ap.Port())
	}
	o, err := s.openOffer(offerSpec{passive: true, listenIP: listenIP, shownIP: adv, peer: s.clientAddr.Addr(),
		target: target, from: s.serverSide.Addr(), announced: announced})
	if err != nil {
		s.log.Warn(MsgListenFailed, zap.String("for", "client"), zap.Error(err))
		s.reply(x, "425 Can't open data connection: no data port available.\r\n")
		return
	}
	if !s.setOffer(o) {
		s.corr.finish(x) // the session is ending
		return
	}
	shown := netip.AddrPortFrom(adv, o.local.Port())
	var text string
	code := ftp.CodePASV
	switch x.cmd.Kind {
	case ftp.KindEPSV:
		code, text = ftp.CodeEPSV, ftp.FormatEPSV(shown.Port())
	case ftp.KindLPSV:
		code, text = ftp.CodeLPSV, ftp.FormatLPSV(shown)
	default:
		text = ftp.FormatPASV(shown)
	}
	out := fmt.Appendf(r.Telnet(), "%d %s\r\n", code, text)
	s.cfg.Observer.Rewritten(strings.ToLower(x.cmd.Verb))
	s.log.Info(MsgPassiveRewrite, zap.String("request", x.cmd.Verb),
		zap.ByteString("server_reply", bytes.TrimRight(r.Lines[len(r.Lines)-1].Text, " ")),
		zap.Stringer("server_data", target), zap.String("client_reply", fmt.Sprintf("%d %s", code, text)),
		zap.Stringer("listen", o.local))
	s.corr.emit(x, chunk{b: out, changed: true}, true)
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
	if s.cfg.TrustPASVAddress && !announced.IsUnspecified() && !announced.IsMulticast() {
		return netip.AddrPortFrom(announced, ap.Port())
	}
	s.log.Info("server announced another address, using its control address", zap.Stringer("announced", announced),
		zap.Stringer("dialing", ctl), zap.String("diagnosis", fmt.Sprintf("the server announced %s in its passive reply, not %s, "+
			"the address it is reached on (a private or wrong passive address: vsftpd pasv_address, ProFTPD MasqueradeAddress, "+
			"pure-ftpd -P); ftpalg connects to %s instead, and its clients never see the announced address", announced, ctl, ctl)))
	return netip.AddrPortFrom(ctl, ap.Port())
}

// advertised returns the address the client is told for passive data and
// the address the proxy listens on for it.
func (s *Session) advertised() (adv, listen netip.Addr) {
	listen = s.clientSide.Addr()
	if s.cfg.Transparent {
		// Listen on the server's own address: the client is told that
		// address, and clients that use the control connection's address
		// instead (curl, ftplib, FileZilla) land there too.
		listen = s.serverAddr.Addr()
	}
	return nat.AdvertisedFor(s.cfg.AdvertiseFor, s.clientAddr.Addr(), s.cfg.Advertise, listen), listen
}

// active validates and rewrites PORT, EPRT and LPRT: the proxy listens on
// its server-side address and announces that to the server; the server's
// connection is then carried to the address the client announced.
func (s *Session) active(line ftp.Line, cmd ftp.Command) bool {
	announced, err := ftp.ParseActive(cmd)
	if err != nil {
		s.cfg.Observer.Violation(ViolationBadArgument)
		s.refusal("active-mode command refused", zap.Stringer("cmd", cmd), zap.Error(err))
		if errors.Is(err, ftp.ErrFamily) {
			return s.answer(cmd, "522 Network protocol not supported, use (1,2).\r\n")
		}
		return s.answer(cmd, fmt.Sprintf("501 Syntax error in %s argument.\r\n", cmd.Verb))
	}
	if err := ftp.CheckActive(announced, s.clientAddr.Addr()); err != nil {
		if errors.Is(err, ftp.ErrPrivilegedPort) {
			s.cfg.Observer.Violation(ViolationPrivilegedPort)
		} else {
			s.cfg.Observer.Violation(ViolationBounce)
		}
		s.refusal("active-mode address refused (RFC 2577)", zap.Stringer("cmd", cmd), zap.Error(err))
		return s.answer(cmd, fmt.Sprintf("504 %s refused: data connections go only to your own address and a port above 1023.\r\n", cmd.Verb))
	}
	s.dropOffer(nil)
	o, err := s.openOffer(offerSpec{listenIP: s.serverSide.Addr(), shownIP: s.serverSide.Addr(), peer: s.serverAddr.Addr(),
		target: announced, from: s.clientSide.Addr(), announced: announced})
	if err != nil {
		s.log.Warn(MsgListenFailed, zap.String("for", "server"), zap.Error(err))
		return s.answer(cmd, "425 Can't open data connection: no data port available.\r\n")
	}
	if !s.setOffer(o) {
		return false
	}
	s.setActiveOffer(o)
	verb, arg := s.activeVerb(cmd.Kind, o.local)
	s.cfg.Observer.Rewritten(strings.ToLower(cmd.Verb))
	if verb != cmd.Verb {
		s.cfg.Observer.Translated(translationTo(verb))
	}
	out := make([]byte, 0, len(line.Telnet)+len(verb)+len(arg)+3)
	out = append(out, line.Telnet...)
	out = append(out, verb...)
	out = append(out, ' ')
	out = append(out, arg...)
	out = append(out, "\r\n"...)
	s.log.Info(MsgActiveRewrite, zap.String("verb", cmd.Verb), zap.Stringer("client_data", announced),
		zap.String("sent", verb+" "+arg), zap.Stringer("listen", o.local))
	return s.forward(&exchange{cmd: cmd, offer: o, sent: verb}, out, -1, true)
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
