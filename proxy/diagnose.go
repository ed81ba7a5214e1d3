package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"go.uber.org/zap"
)

// The classic FTP failure is silent: a user logs in, LIST hangs, and nobody
// can tell which port was announced to whom, or whether any SYN arrived.
// ftpalg sits where that can be answered, and says it: one Warn line per
// failed data connection, in plain words and with the facts (who was to
// connect, from where, to which address and port, what the far end had
// announced, how long ftpalg waited) and the likely cause. Each is also
// counted (Observer.DataConnection).

// path names the offer's data path.
func (o *dataOffer) path() string {
	if o.fwd != nil {
		return "kernel"
	}
	return "splice"
}

func (o *dataOffer) mode() string {
	if o.passive {
		return "passive"
	}
	return "active"
}

// outcome counts how the offer ended, once.
func (o *dataOffer) outcome(outcome string) {
	if o.ended.CompareAndSwap(false, true) {
		o.s.cfg.Observer.DataConnection(o.mode(), o.path(), outcome)
	}
}

// portsText names the data-port range for advice.
func (o *dataOffer) portsText() string {
	if r := o.s.cfg.DataPorts; r.Size() > 0 {
		return "TCP " + r.String()
	}
	return fmt.Sprintf("TCP port %d", o.shown.Port())
}

// diagnoseTimeout explains an announced data connection that never came.
func (o *dataOffer) diagnoseTimeout() {
	s := o.s
	o.outcome(OutcomeTimeout)
	wait := s.cfg.DataAcceptTimeout
	fields := []zap.Field{zap.String("mode", o.mode()), zap.String("path", o.path()),
		zap.Stringer("from", o.peer), zap.Stringer("to", o.shown), zap.Duration("waited", wait)}
	var why string
	if o.passive {
		fields = append(fields, zap.String("expected", "client"), zap.Stringer("server_announced", o.announced))
		why = fmt.Sprintf("no SYN from %s reached %s within %s: a firewall between the client and ftpalg probably blocks %s, "+
			"or the client dialled another address", o.peer, o.shown, wait, o.portsText())
		if s.cfg.Firewall.Name() == "none" {
			why += " (ftpalg opens no pinholes here, --firewall none: the data ports must be open in the host's firewall)"
		}
	} else {
		fields = append(fields, zap.String("expected", "server"), zap.Stringer("client_announced", o.announced))
		why = fmt.Sprintf("no SYN from the server %s reached %s within %s: the server may be unable to open connections to ftpalg "+
			"(a firewall or NAT in front of it), or it connects from another address than its control connection's", o.peer, o.shown, wait)
	}
	s.log.Warn(MsgDataNotMade, append(fields, zap.String("diagnosis", why))...)
}

// diagnoseForeign explains a refused connection from the wrong address.
func (o *dataOffer) diagnoseForeign(from netip.AddrPort) {
	s := o.s
	s.cfg.Observer.DataConnection(o.mode(), o.path(), OutcomeForeign)
	who := "client"
	if !o.passive {
		who = "server"
	}
	s.refusal(MsgDataForeign, zap.Stringer("from", from), zap.Stringer("allowed", o.peer), zap.Stringer("listen", o.local),
		zap.String("diagnosis", fmt.Sprintf("a data connection from %s to %s was refused: only %s, the %s of this session, may use it "+
			"(a NAT that gives the %s's data connections another address than its control connection, or someone else's connection)",
			from.Addr(), o.shown, o.peer, who, who)))
}

// diagnoseDial explains a failed connection to the far end.
func (o *dataOffer) diagnoseDial(err error) {
	s := o.s
	o.outcome(OutcomeDialFailed)
	how := "failed"
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		how = "was refused"
	case errors.As(err, &ne) && ne.Timeout():
		how = fmt.Sprintf("timed out after %s", s.cfg.ConnectTimeout)
	}
	var why string
	if o.passive {
		why = fmt.Sprintf("ftpalg's connection to the server's data port %s %s: the server announced a port it does not listen on, "+
			"or a firewall in front of the server blocks its passive range", o.target, how)
		if o.announced.Addr() != o.target.Addr() {
			why += fmt.Sprintf(" (the server announced %s; ftpalg used its control address)", o.announced)
		}
	} else {
		why = fmt.Sprintf("ftpalg's connection to the address the client announced, %s, %s: the client's firewall or NAT does not "+
			"let it in; passive mode (PASV/EPSV) avoids this", o.target, how)
	}
	s.log.Warn(MsgDataFailed, zap.String("mode", o.mode()), zap.Stringer("to", o.target), zap.Error(err), zap.String("diagnosis", why))
}
