package nftpath

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// entry is a conntrack entry as Flow needs it.
type entry struct {
	orig, reply rules.Counter
	closed      bool
}

// errGone: conntrack holds no such connection (any more).
var errGone = errors.New("no such connection in conntrack")

// tracker is what the data path asks conntrack: the seam a fake stands in
// at.
type tracker interface {
	// get reads the TCP connection whose original tuple is src → dst.
	get(src, dst netip.AddrPort) (entry, error)
	// listen delivers the NEW events to out until stop, which returns
	// once nothing is sent any more (the caller keeps receiving from out
	// meanwhile). errs reports the end of the delivery on its own (the
	// socket overflowed); listen may be called again then.
	listen(out chan<- conntrack.Event) (errs <-chan error, stop func(), err error)
	// dump returns every TCP connection conntrack holds, as NEW events,
	// to find the connections whose events were lost.
	dump() ([]conntrack.Event, error)
	close()
}

// ctTracker is tracker over netlink (github.com/ti-mo/conntrack), in one
// network namespace.
type ctTracker struct {
	ns int // namespace file; 0: the calling thread's
	q  *conntrack.Conn
}

// readBuffer is the event socket's receive buffer: a burst of new
// connections queues there while the watcher catches up; when it
// overflows, events are lost (and recovered, see watcher).
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
	return nil
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

func (t *ctTracker) listen(out chan<- conntrack.Event) (<-chan error, func(), error) {
	c, err := conntrack.Dial(config(t.ns))
	if err != nil {
		return nil, nil, err
	}
	if err := c.SetReadBuffer(readBuffer); err != nil {
		c.Close()
		return nil, nil, err
	}
	errs, err := c.Listen(out, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return errs, func() { c.Close() }, nil
}

func (t *ctTracker) dump() ([]conntrack.Event, error) {
	fs, err := t.q.Dump(nil)
	if err != nil {
		return nil, err
	}
	var out []conntrack.Event
	for i := range fs {
		if fs[i].TupleOrig.Proto.Protocol == unix.IPPROTO_TCP {
			out = append(out, conntrack.Event{Type: conntrack.EventNew, Flow: &fs[i]})
		}
	}
	return out, nil
}

// watcher delivers conntrack's NEW events to the data path, on one
// goroutine it owns from startWatcher to stop.
type watcher struct {
	d      *DataPath
	events chan conntrack.Event

	mu         sync.Mutex
	errs       <-chan error
	stopListen func()

	quit chan struct{}
	done chan struct{}
}

// eventQueue is how many events wait between the socket's reader and the
// watcher's goroutine.
const eventQueue = 1024

// relistenWait is how long the watcher waits before listening again after
// a failure to.
const relistenWait = time.Second

func (d *DataPath) startWatcher() (*watcher, error) {
	d.mu.Lock()
	ct := d.ct
	d.mu.Unlock()
	w := &watcher{d: d, events: make(chan conntrack.Event, eventQueue), quit: make(chan struct{}), done: make(chan struct{})}
	errs, stop, err := ct.listen(w.events)
	if err != nil {
		return nil, kerr("setup: listen to conntrack events", err)
	}
	w.errs, w.stopListen = errs, stop
	go w.run()
	return w, nil
}

// run is the watcher's goroutine: it hands each event to the data path,
// and when the socket's reader gives up (the socket overflowed in a
// burst of new connections, so events were lost) it listens again and
// looks for the mapped connections whose events it missed.
func (w *watcher) run() {
	defer close(w.done)
	for {
		w.mu.Lock()
		errs := w.errs
		w.mu.Unlock()
		select {
		case ev := <-w.events:
			w.d.onEvent(ev)
		case err := <-errs:
			w.d.log.Warn("conntrack events lost: listening again, and looking for the mapped connections missed",
				zap.Error(err))
			if !w.relisten() {
				return
			}
			w.d.recoverLost()
		case <-w.quit:
			return
		}
	}
}

// relisten opens a new event socket, retrying until it works or the
// watcher stops; false when it stopped.
func (w *watcher) relisten() bool {
	for {
		w.mu.Lock()
		ct := w.d.tracker()
		var err error
		if ct != nil {
			var (
				errs <-chan error
				stop func()
			)
			errs, stop, err = ct.listen(w.events)
			if err == nil {
				w.errs, w.stopListen = errs, stop
			}
		}
		w.mu.Unlock()
		if ct != nil && err == nil {
			return true
		}
		w.d.log.Warn("listening to conntrack events failed: retrying", zap.Error(err), zap.Duration("every", relistenWait))
		select {
		case <-w.quit:
			return false
		case <-time.After(relistenWait):
		}
	}
}

// stop ends the watcher: it closes the event socket while the goroutine
// keeps taking events (the socket's reader may be blocked handing one
// over), then ends the goroutine and waits for it.
func (w *watcher) stop() {
	w.mu.Lock()
	stop := w.stopListen
	w.stopListen = nil
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
	close(w.quit)
	<-w.done
	w.mu.Lock()
	if w.stopListen != nil { // a relisten raced the stop
		w.stopListen()
	}
	w.mu.Unlock()
}

func (d *DataPath) tracker() tracker {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ct
}

// onEvent matches a NEW event to a live mapping: original tuple from the
// peer to the announced address and port, reply from the mapping's target
// (the connection was DNATed to it).
func (d *DataPath) onEvent(ev conntrack.Event) {
	f := ev.Flow
	if ev.Type != conntrack.EventNew || f == nil || f.TupleOrig.Proto.Protocol != unix.IPPROTO_TCP {
		return
	}
	k := rules.MappingKey{
		Peer:      f.TupleOrig.IP.SourceAddress.Unmap(),
		Announced: netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort),
	}
	reply := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
	d.used(k, f.TupleOrig.Proto.SourcePort, reply, d.now())
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
		f := ev.Flow
		key := rules.MappingKey{
			Peer:      f.TupleOrig.IP.SourceAddress.Unmap(),
			Announced: netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort),
		}
		if !gone[key] {
			continue
		}
		reply := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
		if d.used(key, f.TupleOrig.Proto.SourcePort, reply, d.now()) {
			found++
		}
	}
	d.log.Info("missed connections found", zap.Int("found", found), zap.Int("unarmed", len(gone)))
}
