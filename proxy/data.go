package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// firewallTimeout bounds one call into the firewall backend.
const firewallTimeout = 5 * time.Second

// dataOffer is a data connection the proxy has announced and waits for: a
// listener that accepts exactly one connection, from exactly one address,
// within the accept timeout, behind a pinhole that lives as long as the
// listener. Passive mode: the client connects and the proxy dials the
// server's data port. Active mode: the server connects and the proxy dials
// the address the client announced.
type dataOffer struct {
	s       *Session
	passive bool
	local   netip.AddrPort // where the proxy listens, or the kernel maps
	shown   netip.AddrPort // what the peer was told (the advertised address may differ from local's)
	peer    netip.Addr     // the only address allowed to connect
	target  netip.AddrPort // where the proxy dials once it has
	from    netip.Addr     // the proxy's address to dial from
	// announced is what the far end itself announced: the server's
	// passive address, or the client's PORT/EPRT address (for the
	// diagnosis of a connection that does not come).
	announced netip.AddrPort
	pinhole   rules.Pinhole
	// clientTLS, serverTLS: the legs that are TLS (PROT P on that side),
	// so the data is copied in user space; prelimBase, finalBase: the
	// session's transferEvent counts when the offer was made.
	clientTLS, serverTLS  bool
	prelimBase, finalBase uint64
	ended                 atomic.Bool // its outcome is counted

	ln *net.TCPListener // splice path: the listener for the one connection

	// Kernel path (kernel.go): the mapping, the port reservation it holds,
	// and a channel closed when the offer is closed.
	fwd     rules.Forward
	release func()
	closed  chan struct{}

	once sync.Once
	// settled is closed once the connection to the far end is made or has
	// failed, or the offer ended unused.
	settled      chan struct{}
	settleOnce   sync.Once
	acceptedConn atomic.Bool
}

func (o *dataOffer) settle() { o.settleOnce.Do(func() { close(o.settled) }) }

// offerSpec describes a data connection to announce.
type offerSpec struct {
	passive   bool
	listenIP  netip.Addr     // where the proxy (or the kernel) takes the connection
	shownIP   netip.Addr     // the address the peer is told (advertised)
	peer      netip.Addr     // the only address allowed to connect
	target    netip.AddrPort // where the connection is carried
	from      netip.Addr     // the proxy's address toward target
	announced netip.AddrPort // what the far end announced (for diagnoses)
}

// newOffer is the dataOffer of sp at the local address local.
func (s *Session) newOffer(sp offerSpec, local netip.AddrPort) *dataOffer {
	o := &dataOffer{s: s, passive: sp.passive, local: local, shown: netip.AddrPortFrom(sp.shownIP, local.Port()),
		peer: sp.peer.Unmap(), target: sp.target, from: sp.from, announced: sp.announced, settled: make(chan struct{})}
	o.clientTLS, o.serverTLS = s.dataProtection()
	o.prelimBase, o.finalBase = s.transferMarks()
	return o
}

// dataProtection tells which legs of a data connection made now are TLS.
func (s *Session) dataProtection() (client, server bool) {
	return s.clientTLSOn() && s.clientProt.Load() == 'P', s.upstreamData != nil && s.serverProt.Load() == 'P'
}

// openOffer announces the data connection sp describes: in the kernel when
// the session may use the kernel path, else through a listener of the
// proxy's. It opens the pinhole for the peer and starts waiting for the
// connection. It takes no lock.
func (s *Session) openOffer(sp offerSpec) (*dataOffer, error) {
	if s.kernelPath(sp.listenIP, sp.peer, sp.target) {
		o, err := s.openKernelOffer(sp)
		if err == nil {
			return o, nil
		}
		s.log.Warn("kernel data path failed for this data connection, using splice", zap.Error(err))
	}
	ln, local, err := s.ports.Listen(sp.listenIP)
	if err != nil {
		return nil, err
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	o := s.newOffer(sp, local)
	o.ln = ln
	passive, target := sp.passive, sp.target
	o.pinhole = rules.Pinhole{Proto: rules.ProtoTCP, Peer: o.peer, Local: local,
		Lifetime: s.cfg.DataAcceptTimeout, Session: s.id}
	ctx, cancel := context.WithTimeout(context.Background(), firewallTimeout)
	err = s.cfg.Firewall.Open(ctx, o.pinhole)
	cancel()
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.log.Debug("data offer open", zap.Bool("passive", passive), zap.Stringer("listen", local),
		zap.Stringer("peer", o.peer), zap.Stringer("target", target))
	s.data.Add(1)
	go o.accept()
	return o, nil
}

// accept waits for the one data connection and hands it to transfer.
func (o *dataOffer) accept() {
	s := o.s
	defer s.data.Done()
	o.ln.SetDeadline(time.Now().Add(s.cfg.DataAcceptTimeout))
	for {
		c, err := o.ln.AcceptTCP()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				o.diagnoseTimeout()
			}
			o.close()
			s.clearOffer(o)
			o.settle()
			return
		}
		from := nat.AddrPortOf(c.RemoteAddr())
		if from.Addr() != o.peer {
			o.diagnoseForeign(from)
			c.SetLinger(0)
			c.Close()
			continue
		}
		o.acceptedConn.Store(true)
		o.close() // exactly one connection: listener and pinhole go now
		s.clearOffer(o)
		s.transfer(o, c)
		return
	}
}

// close stops listening (or removes the mapping) and removes the pinhole.
// Safe to call repeatedly.
func (o *dataOffer) close() {
	o.once.Do(func() {
		if !o.acceptedConn.Load() {
			defer o.settle()
			o.outcome(OutcomeCancelled) // unless the timeout counted it first
		}
		if o.fwd != nil {
			o.closeKernel()
			return
		}
		o.ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), firewallTimeout)
		defer cancel()
		if err := o.s.cfg.Firewall.Close(ctx, o.pinhole); err != nil {
			o.s.log.Warn(MsgPinholeFailed, zap.Stringer("pinhole", o.pinhole), zap.Error(err))
		}
	})
}

// transfer dials the other end of the data connection and splices the two.
func (s *Session) transfer(o *dataOffer, in *net.TCPConn) {
	s.idle.transferStarted()
	defer s.idle.transferEnded()
	t := &transfer{s: s, mode: "passive", in: in, started: time.Now()}
	if !o.passive {
		t.mode = "active"
	}
	if o.clientTLS || o.serverTLS {
		t.tls, t.tlsDone = true, make(chan struct{})
		defer t.tlsDecided("") // on every way out
	}
	s.track(t, true)
	defer s.track(t, false)

	out, err := s.dial(s.srv.dataCtx, o.from, 0, o.target.String())
	o.settle()
	if err != nil {
		o.diagnoseDial(err)
		in.SetLinger(0)
		in.Close()
		return
	}
	if !t.connected(out) { // cut while dialing
		return
	}
	client, server := in, out
	if !o.passive {
		client, server = out, in
	}
	s.log.Info(MsgDataConnected, zap.String("mode", t.mode), zap.String("path", "splice"),
		zap.Stringer("client_data", client.RemoteAddr()), zap.Stringer("server_data", server.RemoteAddr()))
	stop := t.watchIdle(s.cfg.DataIdleTimeout)
	var toServer, toClient int64
	if t.tls {
		toServer, toClient, err = s.relayTLS(o, t, client, server)
	} else {
		toServer, toClient, err = splice(tcpLeg(client), tcpLeg(server))
	}
	stop()
	t.end(toServer, toClient, err)
}

// track records a running transfer, so the control channel can confirm
// it and a server shutdown can cut it.
func (s *Session) track(t *transfer, add bool) {
	s.mu.Lock()
	if add {
		s.transfers[t] = struct{}{}
		s.unconfirmed = append(s.unconfirmed, t)
	} else {
		delete(s.transfers, t)
	}
	s.mu.Unlock()
}

// abortTransfers cuts the session's running transfers with a reset, so
// neither peer takes the cut for the end of the file.
func (s *Session) abortTransfers() {
	s.mu.Lock()
	ts := make([]*transfer, 0, len(s.transfers))
	for t := range s.transfers {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	for _, t := range ts {
		if t.fwd != nil {
			// Nothing of it passes through the proxy: the kernel
			// carries it to its end.
			s.log.Info("transfer left to the kernel, which goes on carrying it", zap.String("mode", t.mode))
			continue
		}
		t.abort(abortShutdown)
	}
}

// confirmTransfer hands the server's final reply to a transfer command to
// the oldest transfer not confirmed yet. A reply with no transfer waiting
// (the server refused before any data connection) confirms nothing.
func (s *Session) confirmTransfer(code int) {
	s.mu.Lock()
	var t *transfer
	if len(s.unconfirmed) > 0 {
		t = s.unconfirmed[0]
		s.unconfirmed = s.unconfirmed[1:]
	}
	s.mu.Unlock()
	if t != nil {
		t.confirm(code)
	}
}

// reportUnconfirmed logs the transfers the server never answered for, once
// the session has ended.
func (s *Session) reportUnconfirmed() {
	s.mu.Lock()
	ts := s.unconfirmed
	s.unconfirmed = nil
	s.mu.Unlock()
	why := "the session ended before the server answered the transfer command"
	if r := s.reason(); r == endServerClosed || r == endServerError {
		why = "the server closed the control connection without answering the transfer command"
	}
	for _, t := range ts {
		t.unconfirmed(why)
	}
}

// setOffer makes o the session's pending data offer and closes the one it
// replaces. It returns false, having closed o, when the session is ending:
// close has taken the offer already and would never see o.
func (s *Session) setOffer(o *dataOffer) bool {
	s.mu.Lock()
	if s.closing() {
		s.mu.Unlock()
		o.close()
		return false
	}
	old := s.offer
	s.offer = o
	s.mu.Unlock()
	if old != nil && old != o {
		old.close()
	}
	return true
}

// dropOffer cancels the pending data offer when it is o, or whatever it is
// when o is nil (a new PASV/PORT replaces it; the session ends). o itself
// is closed in any case.
func (s *Session) dropOffer(o *dataOffer) {
	s.mu.Lock()
	cur := s.offer
	if o == nil || cur == o {
		s.offer = nil
	}
	s.mu.Unlock()
	if o == nil {
		o = cur
	}
	if o != nil {
		o.close()
	}
}

// clearOffer forgets o once it is used or expired.
func (s *Session) clearOffer(o *dataOffer) {
	s.mu.Lock()
	if s.offer == o {
		s.offer = nil
	}
	s.mu.Unlock()
}

// setActiveOffer records the active-mode offer whose transfer's reply must
// wait for the client's data connection (nil: none).
func (s *Session) setActiveOffer(o *dataOffer) {
	s.mu.Lock()
	s.activeOffer = o
	s.mu.Unlock()
}

func (s *Session) currentActiveOffer() *dataOffer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.activeOffer
}
