package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
)

// The TLS path's sockets. crypto/tls writes every record (at most 16 KiB
// of data) with a write(2) of its own and reads about a record at a
// time, so relaying protected data costs about two system calls per
// 16 KiB (a read on one leg, a write on the other); with fewer, the relay
// measurably uses less CPU and moves more (docs/benchmarks-ftps.md, "The
// TLS copy": a third to half fewer system calls, 8-28 % less CPU per GiB,
// 16-23 % more throughput on loopback). A batchConn sits between
// a data connection's socket and its TLS (or, on a plain leg of a TLS
// transfer, the copy):
//
//   - reads fill a buffer of batchSize with one read(2), from which TLS
//     takes its records;
//   - writes are collected, up to batchSize, while the data connection is
//     being relayed, and go out in one write(2) at the latest when the
//     goroutine that produced them is about to block reading its source
//     (Read flushes its peer, the connection that goroutine writes to),
//     or when the copy ends. Nothing is held back while the relay waits.
//
// The two buffers come from a pool and go back when the transfer ends
// (release).

// batchSize is the read buffer and the most writes collected.
const batchSize = 64 << 10

var batchPool = sync.Pool{New: func() any { b := make([]byte, batchSize); return &b }}

// batchConn is a data connection's socket with buffered reads and batched
// writes. It holds the connection as a net.Conn, not by embedding the
// *net.TCPConn: that would promote its ReadFrom and WriteTo, which io.Copy
// prefers, past the buffers.
type batchConn struct {
	net.Conn
	// peer is the connection the goroutine reading this one writes to:
	// its batch goes out before that goroutine blocks in a read here.
	peer *batchConn

	rbuf       *[]byte
	r, w       int   // rbuf[r:w] is read but not consumed
	rerr       error // the error behind the last bytes read (not a timeout)
	mu         sync.Mutex
	wbuf       *[]byte
	pending    int   // (*wbuf)[:pending] waits to be written
	batching   bool  // collect writes (only while relaying)
	werr       error // a failed write: every later one fails too
	releasedMu sync.Once
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, rbuf: batchPool.Get().(*[]byte), wbuf: batchPool.Get().(*[]byte)}
}

// relay links a and b (each the other's peer) and starts collecting
// writes: the handshakes are over.
func relay(a, b *batchConn) {
	a.peer, b.peer = b, a
	for _, c := range []*batchConn{a, b} {
		c.mu.Lock()
		c.batching = true
		c.mu.Unlock()
	}
}

// Read returns buffered bytes, or refills the buffer with one read(2),
// having first written out what the reading goroutine collected for its
// peer (and any bytes TLS itself queued here, a post-handshake reply).
func (c *batchConn) Read(p []byte) (int, error) {
	if c.r == c.w {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if err := c.flushBeforeRead(); err != nil {
			return 0, err
		}
		n, err := c.Conn.Read(*c.rbuf)
		c.r, c.w = 0, n
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.rerr = err // a timeout is not the end: a read after a new deadline may succeed
		}
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, (*c.rbuf)[c.r:c.w])
	c.r += n
	return n, nil
}

func (c *batchConn) flushBeforeRead() error {
	if p := c.peer; p != nil {
		p.mu.Lock()
		err := p.flushLocked()
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Our own batch is the other goroutine's; it flushes it itself. Only
	// bytes TLS queued here while reading (and nobody flushes) matter:
	// take them along when the lock is free.
	if c.mu.TryLock() {
		err := c.flushLocked()
		c.mu.Unlock()
		return err
	}
	return nil
}

// Write collects b while relaying, else writes it at once.
func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if !c.batching {
		return c.Conn.Write(b)
	}
	buf := *c.wbuf
	if c.pending+len(b) > len(buf) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) > len(buf) {
			n, err := c.Conn.Write(b)
			c.werr = err
			return n, err
		}
	}
	c.pending += copy(buf[c.pending:], b)
	return len(b), nil
}

func (c *batchConn) flushLocked() error {
	if c.werr != nil || c.pending == 0 {
		return c.werr
	}
	_, err := c.Conn.Write((*c.wbuf)[:c.pending])
	c.pending, c.werr = 0, err
	return err
}

// endBatch writes out what was collected and stops collecting: the copy
// into c is over, and what follows (close_notify, CloseWrite) goes out at
// once.
func (c *batchConn) endBatch() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.flushLocked()
}

// release returns the buffers to the pool, once no goroutine uses c any
// more (the relay has returned).
func (c *batchConn) release() {
	c.releasedMu.Do(func() {
		batchPool.Put(c.rbuf)
		batchPool.Put(c.wbuf)
		c.rbuf, c.wbuf = nil, nil
	})
}
