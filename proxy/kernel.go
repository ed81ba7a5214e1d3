package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/rules"
)

// The kernel data path (Config.DataPath): instead of listening for an
// announced data connection and splicing it, the proxy reserves the port,
// opens the pinhole for the connection as the forward path sees it (peer to
// target, after DNAT) and asks the kernel for a one-connection mapping.
// The kernel then forwards the data at the IP layer; the proxy learns of
// the connection from conntrack (Forward.Used) and of its end from the
// control channel, where the server confirms the transfer, and reads the
// byte counts from conntrack then.
//
// Where the kernel cannot carry a data connection (DataPath.Supports), the
// splice path does, and the session says why once: an IPv4 client with an
// IPv6 server or the reverse (the kernel does not translate), or a target
// on this host (a server on loopback, as a sidecar's often is: DNAT to a
// local address is delivered, not forwarded, and could not be SNATed to
// the proxy's address that servers check), or a peer on this host (that
// server connecting in active mode: its SYN never passes prerouting).

// kernelPath reports whether a data connection from peer to announceIP,
// for target, goes through the kernel. The first time it does not in a
// session that could use it, it logs why.
func (s *Session) kernelPath(announceIP, peer netip.Addr, target netip.AddrPort) bool {
	if s.cfg.DataPath == nil {
		return false
	}
	if c, sv := s.dataProtection(); c || sv {
		return false // a TLS leg is copied in user space, per connection; nothing to log
	}
	// The port is not chosen yet; any will do for the question.
	err := s.cfg.DataPath.Supports(rules.Mapping{Peer: peer, Announced: netip.AddrPortFrom(announceIP, 1), Target: target})
	if err == nil {
		return true
	}
	if s.spliceNoted.CompareAndSwap(false, true) {
		s.log.Info(MsgSpliceFallback, zap.Error(err), zap.Stringer("target", target))
	}
	return false
}

// openKernelOffer reserves a port on sp.listenIP and maps it in the kernel.
func (s *Session) openKernelOffer(sp offerSpec) (*dataOffer, error) {
	ap, release, err := s.ports.Reserve(sp.listenIP)
	if err != nil {
		return nil, err
	}
	o := s.newOffer(sp, ap)
	o.release, o.closed = release, make(chan struct{})
	passive, peer, target := sp.passive, o.peer, sp.target
	m := rules.Mapping{Peer: peer, Announced: ap, Target: target, Lifetime: s.cfg.DataAcceptTimeout, Session: s.id}
	// SNAT even to the peer's own address (--upstream-source client):
	// the binding keeps the host's own source NAT (a router's MASQUERADE
	// toward the server) off the connection, and the far end must see the
	// control connection's address.
	if sp.from.IsValid() {
		m.Source = sp.from
	}
	// The forward path's filter sees the connection after DNAT: from the
	// peer to the target.
	o.pinhole = rules.Pinhole{Proto: rules.ProtoTCP, Peer: peer, Local: target, Forward: true,
		Lifetime: s.cfg.DataAcceptTimeout, Session: s.id}
	ctx, cancel := context.WithTimeout(context.Background(), firewallTimeout)
	defer cancel()
	if err := s.cfg.Firewall.Open(ctx, o.pinhole); err != nil {
		release()
		return nil, err
	}
	fwd, err := s.cfg.DataPath.Map(ctx, m)
	if err != nil {
		s.cfg.Firewall.Close(ctx, o.pinhole)
		release()
		return nil, fmt.Errorf("map %s: %w", m, err)
	}
	o.fwd = fwd
	s.mu.Lock()
	s.lastKernel = o
	s.mu.Unlock()
	s.log.Debug("data offer mapped in the kernel", zap.Bool("passive", passive), zap.Stringer("mapping", m))
	s.data.Add(1)
	go o.awaitKernel()
	return o, nil
}

// syncKernel makes sure the kernel-carried connection of a transfer is
// recorded before the server's final reply to the transfer command
// (code) is matched to it: the data does not pass the proxy, so that
// reply can come before the proxy has had conntrack's news of the
// connection. A 2xx means the connection existed: wait for the news
// (bounded). Otherwise take it only if it is in. Each kernel offer is
// waited for once.
func (s *Session) syncKernel(code int) {
	s.mu.Lock()
	o := s.lastKernel
	s.lastKernel = nil
	s.mu.Unlock()
	if o == nil {
		return
	}
	t := time.NewTimer(s.cfg.ConnectTimeout)
	defer t.Stop()
	if code/100 == 2 {
		select {
		case <-o.fwd.Used():
		case <-o.closed: // expired or dropped unused
			return
		case <-t.C:
			return
		case <-s.done:
			return
		}
	} else {
		select {
		case <-o.fwd.Used():
		default:
			return
		}
	}
	select {
	case <-o.settled:
	case <-t.C:
	case <-s.done:
	}
}

// awaitKernel waits for the mapping's connection, the accept timeout, or
// the offer's end.
func (o *dataOffer) awaitKernel() {
	s := o.s
	defer s.data.Done()
	t := time.NewTimer(s.cfg.DataAcceptTimeout)
	defer t.Stop()
	select {
	case <-o.fwd.Used():
		o.acceptedConn.Store(true)
		s.kernelTransfer(o)
		o.close() // used up: mapping, reservation and pinhole go now
		s.clearOffer(o)
		o.settle()
	case <-t.C:
		o.diagnoseTimeout()
		o.close()
		s.clearOffer(o)
	case <-o.closed:
	}
}

// closeKernel removes the mapping (if unused), the pinhole and the port
// reservation.
func (o *dataOffer) closeKernel() {
	close(o.closed)
	ctx, cancel := context.WithTimeout(context.Background(), firewallTimeout)
	defer cancel()
	if err := o.fwd.Close(ctx); err != nil {
		o.s.log.Warn("removing the kernel mapping failed", zap.Error(err))
	}
	if err := o.s.cfg.Firewall.Close(ctx, o.pinhole); err != nil {
		o.s.log.Warn(MsgPinholeFailed, zap.Stringer("pinhole", o.pinhole), zap.Error(err))
	}
	o.release()
}

// kernelTransfer records a data connection the kernel carries: it counts
// as a running transfer (the control idle timeout waits) until the server
// confirms it, when its byte counts are read from conntrack.
func (s *Session) kernelTransfer(o *dataOffer) {
	t := &transfer{s: s, mode: "passive", fwd: o.fwd, peerIsClient: o.passive, v6: o.peer.Is6(), started: time.Now()}
	if !o.passive {
		t.mode = "active"
	}
	flow, err := o.fwd.Flow(context.Background())
	if err == nil && !flow.Seen.IsZero() {
		t.started = flow.Seen
	}
	s.idle.transferStarted()
	s.track(t, true)
	client, server := flow.PeerPort, uint16(0)
	if !o.passive {
		client, server = 0, flow.PeerPort
	}
	s.log.Info(MsgDataConnected, zap.String("mode", t.mode), zap.String("path", "kernel"),
		zap.Stringer("client_data", portOr(o.peer, client, o.passive, o.target)),
		zap.Stringer("server_data", portOr(o.peer, server, !o.passive, o.target)))
}

// portOr names one end of a kernel-carried connection: the peer with its
// source port when isPeer, else the target.
func portOr(peer netip.Addr, port uint16, isPeer bool, target netip.AddrPort) netip.AddrPort {
	if isPeer {
		return netip.AddrPortFrom(peer, port)
	}
	return target
}

// kernelSettle bounds the wait, after the server confirmed a transfer,
// for conntrack to see its connection closed: the server's last data may
// still be on its way when its 226 arrives.
const (
	kernelSettle     = 5 * time.Second
	kernelSettleTick = 20 * time.Millisecond
)

// awaitKernelEnd waits until the kernel-carried connection has closed (or
// kernelSettle has passed, or the session's server shuts down), then ends
// the transfer with its final counters.
func (t *transfer) awaitKernelEnd() {
	deadline := time.NewTimer(kernelSettle)
	defer deadline.Stop()
	tick := time.NewTicker(kernelSettleTick)
	defer tick.Stop()
	for {
		if f, err := t.fwd.Flow(context.Background()); err != nil || f.Closed {
			break
		}
		select {
		case <-tick.C:
			continue
		case <-deadline.C:
		case <-t.s.srv.dataCtx.Done():
		}
		break
	}
	t.end(t.kernelCounts())
}

// kernelCounts ends a kernel transfer's part in the session (the server
// has answered its command, or the session is over) and reads what
// conntrack counted, as payload bytes each way.
func (t *transfer) kernelCounts() (toServer, toClient int64, err error) {
	flow, ferr := t.fwd.Flow(context.Background())
	if ferr == nil {
		to, from := payload(flow.ToTarget, t.v6), payload(flow.FromTarget, t.v6)
		if t.peerIsClient {
			toServer, toClient = to, from
		} else {
			toClient, toServer = to, from
		}
		t.mu.Lock()
		t.counted = flow.Counted
		t.mu.Unlock()
	}
	t.s.track(t, false)
	t.s.idle.transferEnded()
	return toServer, toClient, nil
}

// payload estimates the TCP payload in an IP-layer count: conntrack counts
// whole packets, so the headers come off. Per packet one IP and TCP header
// with the timestamp option Linux uses by default (52 bytes for IPv4, 72
// for IPv6), and for the one handshake packet each direction carries (the
// SYN one way, the SYN-ACK the other) the synOptions it has on top (MSS,
// SACK permitted and window scale). Between two Linux hosts on a clean
// path that is exact, so a kernel transfer logs the file's size as a
// spliced one does. Otherwise it is more: conntrack counts what crossed
// the host, so retransmitted segments count again (spurious ones too:
// reordering on veths between namespaces caused 0.5-3% on 10 MiB in the
// e2e tests), and a peer without timestamps or ACKs with SACK blocks are
// off by a few bytes per packet. It is never less than the payload of a
// transfer that completed.
func payload(c rules.Counter, v6 bool) int64 {
	hdr := uint64(52)
	if v6 {
		hdr = 72
	}
	headers := c.Packets * hdr
	if c.Packets > 0 {
		headers += synOptions
	}
	if c.Bytes <= headers {
		return 0
	}
	return int64(c.Bytes - headers)
}

// synOptions is how many more TCP option bytes Linux puts in a SYN or
// SYN-ACK than in a timestamped segment: MSS (4), SACK permitted (2),
// timestamps (10), NOP (1), window scale (3) make 20 against the
// segment's 12 (timestamps and two NOPs).
const synOptions = 8
