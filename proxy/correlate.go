package proxy

import (
	"sync"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// maxPending bounds the exchanges in flight (pipelined commands, and replies
// the client has not read yet) per session; a client that pipelines more
// waits until replies come back.
const maxPending = 256

// maxUnwritten bounds the reply bytes waiting for a client that does not
// read: the reply pump stops reading the server beyond it, so a server that
// talks and a client that does not listen hold 64 KiB, not memory without
// end.
const maxUnwritten = 64 << 10

// exchange is one command of the client's and the replies the client gets
// for it. It is created when the command is read, in the order commands
// arrive, and leaves the queue once its final reply has been written to the
// client; the client therefore sees replies in command order whatever
// happens between (a rewrite that opens a listener and a pinhole, a
// translated command, a reply of the proxy's own).
type exchange struct {
	cmd ftp.Command
	// local: the proxy answered the command itself; it never went to the
	// server and no server reply belongs to it.
	local bool
	// sent is the verb that went to the server when it is not cmd's
	// (protocol translation); the server's reply to it answers cmd.
	sent string
	// offer is the data connection an active-mode command announced to
	// the server; it is dropped if the server refuses the command.
	offer *dataOffer
	// authDone receives whether the server accepted AUTH (234).
	authDone chan bool

	out   []chunk // reply bytes for the client, not written yet
	final bool    // the final reply (or none, when skipped) is in out
}

// verbSent is the verb the server was sent for x.
func (x *exchange) verbSent() string {
	if x.sent != "" {
		return x.sent
	}
	return x.cmd.Verb
}

// chunk is a piece of reply the client is sent as one write.
type chunk struct {
	b []byte
	// changed: the proxy wrote or rewrote these bytes (for the trace).
	changed bool
	// handover: the control channel turns opaque after this chunk (TLS
	// after AUTH); the writer stops once it is written.
	handover bool
	// startTLS: the writer runs the client's TLS handshake after this
	// chunk (the proxy's 234 to AUTH) and reports on the channel.
	startTLS chan<- error
}

// correlator matches server replies to client commands and keeps the
// replies for the client in command order. It owns the queue of exchanges;
// its lock is held only to change that queue, never across I/O. Three
// goroutines use it: the command pump adds exchanges, the reply pump finds
// the exchange each server reply answers and gives it the bytes the client
// is to see, and the client writer takes those bytes in order.
type correlator struct {
	mu        sync.Mutex
	q         []*exchange
	unwritten int           // bytes in the queue's chunks
	room      chan struct{} // closed when unwritten drops below maxUnwritten
	goodbye   []byte        // a last reply that ends the session, ahead of the rest
	drain     bool          // no more replies will come: stop once the queue is written
	stopped   bool          // the writer writes nothing more

	slots chan struct{} // one token per exchange in q: bounds len(q)
	wake  chan struct{} // capacity 1: bytes are ready for the writer
}

func newCorrelator() *correlator {
	return &correlator{slots: make(chan struct{}, maxPending), wake: make(chan struct{}, 1)}
}

// add appends x at the tail, waiting while the queue is full; it returns
// false if done is closed first.
func (c *correlator) add(x *exchange, done <-chan struct{}) bool {
	if !c.reserve(done) {
		return false
	}
	c.push(x)
	return true
}

// reserve waits for room for one more exchange; false if done is closed
// first. Each successful reserve must be followed by one push.
func (c *correlator) reserve(done <-chan struct{}) bool {
	select {
	case c.slots <- struct{}{}:
		return true
	case <-done:
		return false
	}
}

// push appends x at the tail, into the room reserve made.
func (c *correlator) push(x *exchange) {
	c.mu.Lock()
	c.q = append(c.q, x)
	for _, ch := range x.out {
		c.unwritten += len(ch.b)
	}
	if len(x.out) > 0 || x.final {
		c.notifyLocked()
	}
	c.mu.Unlock()
}

// addLocal appends a reply of the proxy's own to cmd; it is written after
// the replies to all earlier commands.
func (c *correlator) addLocal(cmd ftp.Command, reply []byte, done <-chan struct{}) bool {
	return c.add(&exchange{cmd: cmd, local: true, final: true, out: []chunk{{b: reply, changed: true}}}, done)
}

// awaiting returns the exchange the next server reply answers: the first
// one sent to the server that has no final reply yet. nil means a reply now
// would be unsolicited.
func (c *correlator) awaiting() *exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.awaitingLocked()
}

func (c *correlator) awaitingLocked() *exchange {
	for _, x := range c.q {
		if !x.local && !x.final {
			return x
		}
	}
	return nil
}

// match returns the exchange a whole final reply with this code answers,
// and the exchanges it skipped to get there (already marked final, with no
// reply). It skips only to realign a passive-address reply: when such a
// reply arrives while the first awaiting exchange is not a passive request
// but a later one is, a server answered some earlier command (an ABOR) with
// fewer replies than RFC 959 prescribes, and every later match would be off
// by one. nil means the reply is unsolicited.
func (c *correlator) match(code int) (x *exchange, skipped []*exchange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first int
	for first = 0; first < len(c.q); first++ {
		if q := c.q[first]; !q.local && !q.final {
			break
		}
	}
	if first == len(c.q) {
		return nil, nil
	}
	x = c.q[first]
	if !ftp.AddressCode(code) || x.cmd.Passive() {
		return x, nil
	}
	for i := first + 1; i < len(c.q); i++ {
		if q := c.q[i]; !q.local && !q.final && q.cmd.Passive() {
			for _, s := range c.q[first:i] {
				if !s.local && !s.final {
					s.final = true
					skipped = append(skipped, s)
				}
			}
			c.notifyLocked()
			return q, skipped
		}
	}
	return x, nil
}

// alone reports whether x is the only exchange waiting for the server, so
// a command of the proxy's own sent now is answered before any other.
func (c *correlator) alone(x *exchange) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, q := range c.q {
		if q != x && !q.local && !q.final {
			return false
		}
	}
	return true
}

// resend records that the proxy sent the server another verb for x, whose
// reply answers x in its place.
func (c *correlator) resend(x *exchange, verb string) {
	c.mu.Lock()
	x.sent = verb
	c.mu.Unlock()
}

// emit gives x a piece of its reply; final marks the reply complete. An
// exchange nil is an unsolicited reply, queued behind everything.
func (c *correlator) emit(x *exchange, ch chunk, final bool) {
	c.mu.Lock()
	if x == nil {
		x = &exchange{cmd: ftp.Command{Verb: "(unsolicited)"}, local: true}
		select {
		case c.slots <- struct{}{}:
			c.q = append(c.q, x)
		default:
			// Queue full of the client's own commands: the reply
			// answers none of them and the client is not reading;
			// dropping it keeps the bound.
			c.mu.Unlock()
			return
		}
	}
	if len(ch.b) > 0 || ch.handover {
		x.out = append(x.out, ch)
		c.unwritten += len(ch.b)
	}
	if final {
		x.final = true
	}
	c.notifyLocked()
	c.mu.Unlock()
}

// finish marks x answered without adding bytes.
func (c *correlator) finish(x *exchange) { c.emit(x, chunk{}, true) }

// full returns a channel closed once the unwritten bytes are below the
// bound, or nil when they are below it now.
func (c *correlator) full() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unwritten < maxUnwritten {
		return nil
	}
	if c.room == nil {
		c.room = make(chan struct{})
	}
	return c.room
}

// sayGoodbye makes b the next and last thing the writer writes: the
// session is ending (shutdown, idle timeout). What is still queued is
// dropped. It returns false when no writer will write it (the writer has
// stopped, or handed the connection over to the opaque relay).
func (c *correlator) sayGoodbye(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	if c.goodbye == nil {
		c.goodbye = b
	}
	c.notifyLocked()
	return true
}

// takeGoodbye returns the goodbye, if one was said, for a session that
// ends before its writer starts.
func (c *correlator) takeGoodbye() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	return c.goodbye
}

// abandon ends every exchange still waiting for the server, which closed
// the control connection: the first gets reply (when not nil), the others
// nothing. It returns the abandoned exchanges, first first.
func (c *correlator) abandon(reply []byte) []*exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*exchange
	for _, x := range c.q {
		if x.local || x.final {
			continue
		}
		if len(out) == 0 && reply != nil {
			x.out = append(x.out, chunk{b: reply, changed: true})
			c.unwritten += len(reply)
		}
		x.final = true
		out = append(out, x)
	}
	c.notifyLocked()
	return out
}

// stopWhenWritten tells the writer that no reply will come any more (the
// server closed the control connection): it stops once the queue is
// written.
func (c *correlator) stopWhenWritten() {
	c.mu.Lock()
	c.drain = true
	c.notifyLocked()
	c.mu.Unlock()
}

// writerStopped records that the writer writes nothing more.
func (c *correlator) writerStopped() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
}

// step is what the client writer is to do next.
type step uint8

const (
	stepWait  step = iota // nothing is ready: wait for wake
	stepWrite             // write the chunk
	stepLast              // write the chunk (the goodbye), then stop
	stepStop              // everything is written and nothing more will come: stop
)

// next returns the writer's next step, removing exchanges whose final
// reply has been written.
func (c *correlator) next() (chunk, step) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goodbye != nil {
		return chunk{b: c.goodbye, changed: true}, stepLast
	}
	for len(c.q) > 0 {
		h := c.q[0]
		if len(h.out) > 0 {
			ch := h.out[0]
			h.out[0] = chunk{}
			h.out = h.out[1:]
			c.unwritten -= len(ch.b)
			if c.room != nil && c.unwritten < maxUnwritten {
				close(c.room)
				c.room = nil
			}
			return ch, stepWrite
		}
		if !h.final {
			return chunk{}, stepWait
		}
		c.q[0] = nil
		c.q = c.q[1:]
		<-c.slots
	}
	if c.drain {
		return chunk{}, stepStop
	}
	return chunk{}, stepWait
}

// pending returns the number of exchanges in the queue.
func (c *correlator) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.q)
}

func (c *correlator) notifyLocked() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
