package nat

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// Backoff of an accept loop after an error (out of descriptors, say), as
// net/http does it: the first retry after acceptBackoffMin, each next one
// after twice as long, never more than acceptBackoffMax.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// merged accepts from several listeners as one: the IPv4 and the IPv6
// transparent listener of one port (a transparent socket is of one
// family).
//
// One goroutine per listener (acceptLoop) accepts and hands each result,
// connection or error, to Accept through an unbuffered channel, so nothing
// is accepted ahead of the caller. An error is passed on, and that loop
// then waits before it accepts again (acceptBackoffMin doubling up to
// acceptBackoffMax, reset by a success), so a listener that keeps failing
// costs at most one Accept a second whatever the caller does; a
// SetDeadline cuts the waits short (the caller has just freed a
// descriptor and wants one more try at once). Close stops the loops,
// closes a connection accepted but not yet handed over, and returns once
// every loop has ended.
type merged struct {
	mu       sync.Mutex // guards lns, deadline, retry
	lns      []net.Listener
	deadline time.Time
	retry    chan struct{} // closed (and replaced) to end the loops' backoff waits
	results  chan acceptResult
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

type acceptResult struct {
	c   net.Conn
	err error
}

// mergeListeners returns one listener accepting from all of lns (lns[0]
// alone when there is one); closing it closes them all. Its Addr is
// lns[0]'s.
func mergeListeners(lns ...net.Listener) net.Listener {
	if len(lns) == 1 {
		return lns[0]
	}
	return NewSwitch(lns...)
}

// Switch is a merged listener whose listeners can be replaced while a
// server accepts from it: a configuration reload opens the new addresses
// and closes the ones no longer wanted, and the server's accept loop goes
// on as it was. It behaves as mergeListeners describes.
type Switch = merged

// NewSwitch returns a Switch accepting from lns.
func NewSwitch(lns ...net.Listener) *Switch {
	m := &merged{results: make(chan acceptResult), done: make(chan struct{}), retry: make(chan struct{})}
	m.Set(lns...)
	return m
}

// Set makes lns the listeners accepted from: those new to it start being
// accepted from, those no longer in it are closed (connections already
// accepted from them are not touched). After Close it closes lns.
func (m *merged) Set(lns ...net.Listener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		for _, ln := range lns {
			ln.Close()
		}
		return
	default:
	}
	keep := map[net.Listener]bool{}
	for _, ln := range lns {
		keep[ln] = true
	}
	for _, ln := range m.lns {
		if !keep[ln] {
			ln.Close()
		}
	}
	had := map[net.Listener]bool{}
	for _, ln := range m.lns {
		had[ln] = true
	}
	for _, ln := range lns {
		if !had[ln] {
			m.wg.Go(func() { m.acceptLoop(ln) })
		}
	}
	m.lns = append([]net.Listener(nil), lns...)
}

// acceptLoop hands ln's connections and errors to Accept until ln or m is
// closed.
func (m *merged) acceptLoop(ln net.Listener) {
	var (
		backoff time.Duration
		timer   *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case m.results <- acceptResult{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err == nil {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
		if timer == nil {
			timer = time.NewTimer(backoff)
		} else {
			timer.Reset(backoff)
		}
		m.mu.Lock()
		retry := m.retry
		m.mu.Unlock()
		select {
		case <-timer.C:
		case <-retry:
		case <-m.done:
			return
		}
	}
}

// Accept returns the next connection from any of the listeners, or the
// error one of them returned (the caller decides whether to go on), or an
// error matching net.ErrClosed once m is closed.
func (m *merged) Accept() (net.Conn, error) {
	select {
	case <-m.done:
		return nil, m.closedErr()
	default:
	}
	m.mu.Lock()
	dl := m.deadline
	m.mu.Unlock()
	var expired <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		expired = t.C
	}
	select {
	case r := <-m.results:
		return r.c, r.err
	case <-m.done:
		return nil, m.closedErr()
	case <-expired:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: m.Addr(), Err: os.ErrDeadlineExceeded}
	}
}

// SetDeadline bounds the Accept calls that start after it (zero: no
// bound), and ends the accept loops' backoff waits, so that a caller that
// has freed a descriptor gets the next connection at once.
func (m *merged) SetDeadline(t time.Time) error {
	m.mu.Lock()
	m.deadline = t
	if !t.IsZero() {
		close(m.retry)
		m.retry = make(chan struct{})
	}
	m.mu.Unlock()
	return nil
}

func (m *merged) closedErr() error {
	return &net.OpError{Op: "accept", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed}
}

// Close closes every listener and waits for the accept loops to end. The
// first call returns the listeners' Close errors, joined; later calls
// return nil.
func (m *merged) Close() error {
	var errs []error
	m.once.Do(func() {
		m.mu.Lock()
		close(m.done)
		for _, ln := range m.lns {
			errs = append(errs, ln.Close())
		}
		m.mu.Unlock()
		m.wg.Wait()
	})
	return errors.Join(errs...)
}

// Addr is the first listener's address (the IPv4 one of a :PORT pair).
func (m *merged) Addr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.lns) == 0 {
		return &net.TCPAddr{}
	}
	return m.lns[0].Addr()
}

// Addrs returns every listener's address.
func (m *merged) Addrs() []net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]net.Addr, len(m.lns))
	for i, ln := range m.lns {
		out[i] = ln.Addr()
	}
	return out
}

// Addrs returns the addresses ln accepts on: all of a merged listener's,
// or ln's own.
func Addrs(ln net.Listener) []net.Addr {
	if m, ok := ln.(interface{ Addrs() []net.Addr }); ok {
		return m.Addrs()
	}
	return []net.Addr{ln.Addr()}
}
