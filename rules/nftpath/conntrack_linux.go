package nftpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// entry is a conntrack entry as Flow needs it.
type entry struct {
	orig, reply rules.Counter
	closed      bool
}

// event is a new connection conntrack reported: its original tuple and
// the source of its reply tuple (after DNAT: the real destination).
type event struct {
	proto         uint8
	src, dst      netip.AddrPort
	replySrc      netip.AddrPort
	replySrcValid bool
}

var (
	// errGone: conntrack holds no such connection (any more).
	errGone = errors.New("no such connection in conntrack")
	// errLost: the event socket overflowed; events were dropped.
	errLost = errors.New("conntrack events lost: the socket's receive buffer overflowed")
)

// tracker is what the data path asks conntrack: the seam a fake stands in
// at.
type tracker interface {
	// get reads the TCP connection whose original tuple is src → dst.
	get(src, dst netip.AddrPort) (entry, error)
	// events subscribes to conntrack's NEW events.
	events() (eventSource, error)
	// dump returns every TCP connection conntrack holds, to find the
	// connections whose events were lost.
	dump() ([]event, error)
	close()
}

// eventSource delivers NEW events to one reader.
type eventSource interface {
	// next blocks until an event arrives; errLost says events were lost
	// (the source goes on); any other error ends it (close).
	next() (event, error)
	// close ends the source; a next blocked in another goroutine returns.
	close()
}

// ctTracker is tracker over netlink in one network namespace:
// github.com/ti-mo/conntrack for the queries, and a socket of our own for
// the events (see ctEvents).
type ctTracker struct {
	ns int // namespace file; 0: the calling thread's
	q  *conntrack.Conn
}

// readBuffer is the event socket's receive buffer: a burst of new
// connections queues there while the watcher catches up; when it
// overflows, events are lost (and the watcher recovers, see run).
const readBuffer = 4 << 20

func dialTracker(ns int) (*ctTracker, error) {
	q, err := conntrack.Dial(config(ns))
	if err != nil {
		return nil, err
	}
	return &ctTracker{ns: ns, q: q}, nil
}

func config(ns int) *netlink.Config {
	if ns > 0 {
		return &netlink.Config{NetNS: ns}
	}
	return &netlink.Config{}
}

func (t *ctTracker) close() { t.q.Close() }

// TCP conntrack states (TCP_CONNTRACK_*) from which the connection is
// over: a FIN was seen (FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT) or a
// reset (CLOSE).
const (
	tcpFinWait = 4
	tcpClose   = 8
)

func (t *ctTracker) get(src, dst netip.AddrPort) (entry, error) {
	f, err := t.q.Get(conntrack.Flow{TupleOrig: conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: src.Addr(), DestinationAddress: dst.Addr()},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: src.Port(), DestinationPort: dst.Port()},
	}})
	if errors.Is(err, unix.ENOENT) {
		return entry{}, errGone
	}
	if err != nil {
		return entry{}, err
	}
	e := entry{
		orig:  rules.Counter{Packets: f.CountersOrig.Packets, Bytes: f.CountersOrig.Bytes},
		reply: rules.Counter{Packets: f.CountersReply.Packets, Bytes: f.CountersReply.Bytes},
	}
	if tcp := f.ProtoInfo.TCP; tcp != nil {
		e.closed = tcp.State >= tcpFinWait && tcp.State <= tcpClose
	}
	return e, nil
}

func (t *ctTracker) dump() ([]event, error) {
	fs, err := t.q.Dump(nil)
	if err != nil {
		return nil, err
	}
	var out []event
	for _, f := range fs {
		if f.TupleOrig.Proto.Protocol != unix.IPPROTO_TCP {
			continue
		}
		out = append(out, event{
			proto:         unix.IPPROTO_TCP,
			src:           netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress.Unmap(), f.TupleOrig.Proto.SourcePort),
			dst:           netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort),
			replySrc:      netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort),
			replySrcValid: true,
		})
	}
	return out, nil
}

// ctEvents reads conntrack's NEW events off a netlink socket joined to
// NFNLGRP_CONNTRACK_NEW, with one recvfrom per event into a buffer it
// reuses, and parses only the two tuples. A socket filter (eventFilter)
// keeps out the events of connections no DNAT bound, which are almost
// all of them: each that got through would wake the watcher.
type ctEvents struct {
	c   *netlink.Conn
	rc  syscall.RawConn
	buf []byte
	// rest holds the messages of a datagram not returned yet (the kernel
	// sends one per datagram; this is for the exception).
	rest []byte
}

func (t *ctTracker) events() (eventSource, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, config(t.ns))
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err == nil {
		err = c.JoinGroup(unix.NFNLGRP_CONNTRACK_NEW)
	}
	if err == nil {
		var raw []bpf.RawInstruction
		if raw, err = bpf.Assemble(eventFilter()); err == nil {
			err = c.SetBPF(raw)
		}
	}
	if err == nil {
		// As root, beyond net.core.rmem_max; else what rmem_max allows.
		var serr error
		if cerr := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, readBuffer)
		}); cerr != nil || serr != nil {
			err = c.SetReadBuffer(readBuffer)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return &ctEvents{c: c, rc: rc, buf: make([]byte, 64<<10)}, nil
}

func (e *ctEvents) close() { e.c.Close() }

func (e *ctEvents) next() (event, error) {
	for {
		for len(e.rest) >= unix.NLMSG_HDRLEN {
			n := int(binary.NativeEndian.Uint32(e.rest))
			if n < unix.NLMSG_HDRLEN || n > len(e.rest) {
				e.rest = nil
				break
			}
			m := e.rest[:n]
			e.rest = e.rest[min(len(e.rest), (n+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			typ := binary.NativeEndian.Uint16(m[4:])
			if typ != unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtNew {
				continue
			}
			if ev, ok := parseCT(m[unix.NLMSG_HDRLEN:]); ok {
				return ev, nil
			}
		}
		var (
			n    int
			rerr error
		)
		if err := e.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), e.buf, 0)
			return rerr != unix.EAGAIN && rerr != unix.EINTR
		}); err != nil {
			return event{}, err // closed
		}
		switch {
		case rerr == unix.ENOBUFS:
			return event{}, errLost
		case rerr != nil:
			return event{}, fmt.Errorf("netlink receive: %w", rerr)
		}
		e.rest = e.buf[:n]
	}
}

// ctnetlink's numbers (linux/netfilter/nfnetlink_conntrack.h), which
// golang.org/x/sys does not name.
const (
	ipctnlMsgCtNew  = 0
	ctaTupleOrig    = 1
	ctaTupleReply   = 2
	ctaTupleIP      = 1
	ctaTupleProto   = 2
	ctaIPv4Src      = 1
	ctaIPv4Dst      = 2
	ctaIPv6Src      = 3
	ctaIPv6Dst      = 4
	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3
	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER off a type.
	nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
)

// attrs calls f for each netlink attribute in b (type without flags,
// payload), until f returns false.
func attrs(b []byte, f func(typ uint16, v []byte) bool) {
	for len(b) >= unix.NLA_HDRLEN {
		n := int(binary.NativeEndian.Uint16(b))
		if n < unix.NLA_HDRLEN || n > len(b) {
			return
		}
		if !f(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[unix.NLA_HDRLEN:n]) {
			return
		}
		b = b[min(len(b), (n+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	}
}

// tuple is one conntrack tuple.
type tuple struct {
	proto    uint8
	src, dst netip.AddrPort
}

func parseTuple(b []byte) (t tuple) {
	var src, dst netip.Addr
	var sport, dport uint16
	attrs(b, func(typ uint16, v []byte) bool {
		switch typ {
		case ctaTupleIP:
			attrs(v, func(typ uint16, v []byte) bool {
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					src, _ = netip.AddrFromSlice(v)
				case ctaIPv4Dst, ctaIPv6Dst:
					dst, _ = netip.AddrFromSlice(v)
				}
				return true
			})
		case ctaTupleProto:
			attrs(v, func(typ uint16, v []byte) bool {
				switch {
				case typ == ctaProtoNum && len(v) >= 1:
					t.proto = v[0]
				case typ == ctaProtoSrcPort && len(v) >= 2:
					sport = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDstPort && len(v) >= 2:
					dport = binary.BigEndian.Uint16(v)
				}
				return true
			})
		}
		return true
	})
	t.src, t.dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return t
}

// parseCT reads a ctnetlink NEW message's body (after the netlink
// header): the nfgenmsg, then the original and reply tuples. ok is false
// for what is no TCP connection.
func parseCT(b []byte) (ev event, ok bool) {
	if len(b) < 4 {
		return ev, false
	}
	var orig, reply tuple
	attrs(b[4:], func(typ uint16, v []byte) bool {
		switch typ {
		case ctaTupleOrig:
			orig = parseTuple(v)
		case ctaTupleReply:
			reply = parseTuple(v)
			return false // the tuples come first; nothing else is needed
		}
		return true
	})
	if orig.proto != unix.IPPROTO_TCP || !orig.src.IsValid() || !orig.dst.IsValid() {
		return ev, false
	}
	return event{proto: orig.proto, src: orig.src, dst: orig.dst, replySrc: reply.src, replySrcValid: reply.src.IsValid()}, true
}

// watcher delivers conntrack's NEW events to the data path, on one
// goroutine it owns from startWatcher to stop.
type watcher struct {
	d *DataPath

	mu       sync.Mutex
	src      eventSource
	stopping bool

	quit chan struct{}
	done chan struct{}
}

// reopenWait is how long the watcher waits before subscribing again after
// its socket failed.
const reopenWait = time.Second

func (d *DataPath) startWatcher() (*watcher, error) {
	ct := d.tracker()
	src, err := ct.events()
	if err != nil {
		return nil, kerr("setup: listen to conntrack events", err)
	}
	w := &watcher{d: d, src: src, quit: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w, nil
}

// run is the watcher's goroutine: it hands each event to the data path.
// When events were lost (the socket overflowed in a burst of new
// connections), it looks for the mapped connections whose events it
// missed; when the socket fails, it subscribes again.
func (w *watcher) run() {
	defer close(w.done)
	w.mu.Lock()
	src := w.src
	w.mu.Unlock()
	lost := 0
	for {
		ev, err := src.next()
		switch {
		case err == nil:
			w.d.onEvent(ev)
			continue
		case errors.Is(err, errLost):
			lost++
			if lost == 1 || lost%100 == 0 { // bounded: a flood would repeat it
				w.d.log.Warn("conntrack events lost: looking for the mapped connections missed", zap.Int("times", lost))
			}
			w.d.recoverLost()
			continue
		}
		w.mu.Lock()
		stopping := w.stopping
		w.mu.Unlock()
		if stopping {
			return
		}
		w.d.log.Warn("conntrack events failed: subscribing again", zap.Error(err))
		if src = w.reopen(); src == nil {
			return
		}
		w.d.recoverLost()
	}
}

// reopen subscribes again, retrying until it works or the watcher stops
// (nil).
func (w *watcher) reopen() eventSource {
	for {
		w.mu.Lock()
		if w.stopping {
			w.mu.Unlock()
			return nil
		}
		var (
			src eventSource
			err = errors.New("conntrack closed")
		)
		if ct := w.d.tracker(); ct != nil {
			src, err = ct.events()
		}
		if err == nil {
			w.src = src
		}
		w.mu.Unlock()
		if err == nil {
			return src
		}
		w.d.log.Warn("subscribing to conntrack events failed: retrying", zap.Error(err), zap.Duration("every", reopenWait))
		select {
		case <-w.quit:
			return nil
		case <-time.After(reopenWait):
		}
	}
}

// stop ends the watcher and waits for its goroutine.
func (w *watcher) stop() {
	w.mu.Lock()
	w.stopping = true
	src := w.src
	w.mu.Unlock()
	close(w.quit)
	src.close()
	<-w.done
}

func (d *DataPath) tracker() tracker {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ct
}

// onEvent matches a NEW event to a live mapping: original tuple from the
// peer to the announced address and port, reply from the mapping's target
// (the connection was DNATed to it).
func (d *DataPath) onEvent(ev event) {
	if ev.proto != unix.IPPROTO_TCP || !ev.replySrcValid {
		return
	}
	k := rules.MappingKey{Peer: ev.src.Addr().Unmap(), Announced: netip.AddrPortFrom(ev.dst.Addr().Unmap(), ev.dst.Port())}
	reply := netip.AddrPortFrom(ev.replySrc.Addr().Unmap(), ev.replySrc.Port())
	d.used(k, ev.src.Port(), reply, d.now())
}

// recoverLost finds the mapped connections whose NEW events were lost:
// a live mapping whose armed element the packet path has deleted was
// used, and conntrack holds its connection.
func (d *DataPath) recoverLost() {
	d.mu.Lock()
	k, ct, n := d.k, d.ct, len(d.live)
	d.mu.Unlock()
	if k == nil || ct == nil || n == 0 {
		return
	}
	armed, err := k.armed()
	if err != nil {
		d.log.Warn("looking for missed connections: reading the armed mappings failed", zap.Error(err))
		return
	}
	gone := map[rules.MappingKey]bool{}
	d.mu.Lock()
	for key := range d.live {
		if !armed[key] {
			gone[key] = true
		}
	}
	d.mu.Unlock()
	if len(gone) == 0 {
		return
	}
	evs, err := ct.dump()
	if err != nil {
		d.log.Warn("looking for missed connections: reading conntrack failed", zap.Error(err))
		return
	}
	found := 0
	for _, ev := range evs {
		key := rules.MappingKey{Peer: ev.src.Addr(), Announced: ev.dst}
		if !gone[key] {
			continue
		}
		if d.used(key, ev.src.Port(), ev.replySrc, d.now()) {
			found++
		}
	}
	d.log.Info("missed connections found", zap.Int("found", found), zap.Int("unarmed", len(gone)))
}
