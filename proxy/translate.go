package proxy

import (
	"fmt"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// Protocol translation (RFC 2428, RFC 1639): the client's form of a
// data-channel command is what the client gets answered in; what goes to
// the server is whatever the server can do over its own address family.
//
//   - A server reached over IPv6 gets EPSV for PASV/LPSV and EPRT for PORT.
//   - A server that refuses EPSV/EPRT/LPSV/LPRT (500, 502, …, or a FEAT
//     reply without them) gets PASV/PORT instead, and the client still gets
//     the 229/200 it asked for.
//   - "EPSV n" names the family of the client's data connection, which is
//     the proxy's business, not the server's.
//   - EPSV ALL is honoured by the proxy itself, whatever the server says.
//   - FEAT lists EPSV and EPRT, which the proxy always provides, but
//     EPSV when Config.RefuseEPSV has the proxy refuse it (commands.go,
//     refuseEPSV): then FEAT never lists EPSV, whatever the server says.

// translationTo names a translation by the verb sent to the server.
func translationTo(verb string) string {
	switch verb {
	case "PASV":
		return TranslationToPASV
	case "PORT":
		return TranslationToPORT
	case "EPRT":
		return TranslationToEPRT
	}
	return TranslationToEPSV
}

// refusedCodes are replies that mean "this server does not do that
// command": fall back to the RFC 959 form.
func refused(code int) bool {
	switch code {
	case 500, 501, 502, 504, 522, 550:
		return true
	}
	return false
}

func famNumber(a netip.Addr) int {
	if a.Unmap().Is4() {
		return ftp.NetPrtIPv4
	}
	return ftp.NetPrtIPv6
}

// passiveUpstream decides what a PASV/EPSV/LPSV from the client becomes
// upstream: forwarded unchanged (both results empty), another command
// (send), or a reply of the proxy's own (local).
func (s *Session) passiveUpstream(cmd ftp.Command) (send, local string) {
	adv, _ := s.advertised()
	clientFam, serverFam := famNumber(adv), famNumber(s.serverAddr.Addr())
	noEPSV := s.noEPSV.Load()
	if cmd.Kind == ftp.KindPASV && !adv.Is4() {
		// RFC 2428 gives PASV no way to carry an IPv6 address.
		if s.cfg.RefuseEPSV {
			return "", "425 You cannot use PASV over IPv6. Use LPSV instead.\r\n"
		}
		return "", "425 You cannot use PASV over IPv6. Use EPSV instead.\r\n"
	}
	if cmd.Kind == ftp.KindEPSV {
		n := strings.TrimSpace(cmd.Arg)
		matches := n == "" || n == fmt.Sprint(clientFam)
		switch {
		case clientFam == serverFam && !noEPSV:
			return "", "" // same family: the server judges "EPSV n" itself
		case !matches && (n == "1" || n == "2"):
			return "", fmt.Sprintf("522 Network protocol not supported, use (%d).\r\n", clientFam)
		case !matches:
			return "", "501 EPSV: unknown network protocol.\r\n"
		case serverFam == ftp.NetPrtIPv4 && noEPSV:
			return "PASV", ""
		case n != "":
			return "EPSV", "" // n names the client's family, not the server's
		}
		return "", ""
	}
	if serverFam == ftp.NetPrtIPv6 {
		return "EPSV", "" // PASV cannot carry an IPv6 address
	}
	return "", ""
}

// passiveFallback answers a refused EPSV/LPSV by asking the server for
// PASV instead, if nothing else is in flight. It reports whether it took
// over the reply.
func (s *Session) passiveFallback(x *exchange, r *ftp.Reply) bool {
	sent := x.verbSent()
	if !refused(r.Code) || sent == "PASV" || s.serverAddr.Addr().Is6() {
		return false
	}
	if n := strings.TrimSpace(x.cmd.Arg); x.cmd.Kind == ftp.KindEPSV && n != "" && n != "1" {
		return false // the client asked for another family: the refusal stands
	}
	if !s.sendInternal(x, "PASV", []byte("PASV\r\n")) {
		return false
	}
	s.cfg.Observer.Translated(TranslationToPASV)
	if sent == "EPSV" {
		s.noEPSV.Store(true)
	}
	s.log.Info(MsgFallback, zap.String("refused", sent), zap.String("sending", "PASV"), zap.String("client", x.cmd.Verb),
		zap.Int("code", r.Code))
	return true
}

// activeFallback answers a refused EPRT/LPRT by sending the same address as
// PORT, when it is IPv4.
func (s *Session) activeFallback(x *exchange, r *ftp.Reply) bool {
	sent := x.verbSent()
	if !refused(r.Code) || x.offer == nil || sent == "PORT" || !x.offer.local.Addr().Unmap().Is4() {
		return false
	}
	arg := ftp.FormatPORT(x.offer.local)
	if !s.sendInternal(x, "PORT", []byte("PORT "+arg+"\r\n")) {
		return false
	}
	s.cfg.Observer.Translated(TranslationToPORT)
	if sent == "EPRT" {
		s.noEPRT.Store(true)
	}
	s.log.Info(MsgFallback, zap.String("refused", sent), zap.String("sending", "PORT"), zap.String("client", x.cmd.Verb),
		zap.Int("code", r.Code), zap.String("sent", "PORT "+arg))
	return true
}

// activeVerb picks the form of an active-mode command for the server.
func (s *Session) activeVerb(k ftp.Kind, local netip.AddrPort) (verb, arg string) {
	if s.noEPRT.Load() && local.Addr().Unmap().Is4() && k == ftp.KindEPRT {
		k = ftp.KindPORT
	}
	return activeForm(k, local)
}

// featReply adjusts the server's FEAT reply to what the client gets from
// the proxy: EPSV and EPRT are added (the proxy provides them by
// translation), EPSV is removed instead when the proxy refuses it
// (Config.RefuseEPSV), and when the proxy manages TLS it lists its own
// AUTH, PBSZ and PROT in place of the server's. It also learns what the
// server lacks.
func (s *Session) featReply(r *ftp.Reply) []byte {
	raw := r.Raw()
	feats, ok := ftp.ParseFEAT(r)
	if !ok {
		return raw
	}
	if !feats.Has("EPSV") {
		s.noEPSV.Store(true)
	}
	if !feats.Has("EPRT") {
		s.noEPRT.Store(true)
	}
	var add []string
	// Over IPv6 there is no PASV/PORT to translate to: what the server
	// lacks, the proxy cannot provide.
	if !s.serverAddr.Addr().Is6() {
		for _, f := range []string{"EPRT", "EPSV"} {
			if !feats.Has(f) && !(f == "EPSV" && s.cfg.RefuseEPSV) {
				add = append(add, f)
			}
		}
	}
	dropTLS := func(string) bool { return false }
	if s.manageTLS() {
		// The client's TLS is the proxy's: the server's own offer says
		// nothing about it.
		dropTLS = func(name string) bool { return name == "AUTH" || name == "PBSZ" || name == "PROT" || name == "CCC" }
		if s.cfg.ClientTLS != ClientTLSOff {
			add = append(add, "AUTH TLS", "PBSZ", "PROT")
		}
	}
	out := append([]byte(nil), r.Lines[0].Raw...)
	droppedTLS, droppedEPSV := false, false
	for _, l := range r.Lines[1 : len(r.Lines)-1] {
		name, _ := ftp.FeatureLine(l.Text)
		switch {
		case dropTLS(name):
			droppedTLS = true
			continue
		case name == "EPSV" && s.cfg.RefuseEPSV:
			droppedEPSV = true
			continue
		}
		out = append(out, l.Raw...)
	}
	if add == nil && !droppedTLS && !droppedEPSV {
		return raw
	}
	for _, f := range add {
		out = append(out, " "+f+"\r\n"...)
	}
	s.cfg.Observer.Translated(TranslationFEAT)
	s.log.Info("FEAT: listing what the proxy provides", zap.Strings("added", add), zap.Bool("server_tls_features_removed", droppedTLS),
		zap.Bool("epsv_removed", droppedEPSV))
	return append(out, r.Lines[len(r.Lines)-1].Raw...)
}
