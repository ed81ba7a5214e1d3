package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// drainTimeout bounds how long one direction of a data connection may stay
// open after the other has ended. FTP data flows one way; once one side has
// finished, the other only owes its FIN.
const drainTimeout = 30 * time.Second

// leg is one side of a data connection: conn is what is read and written
// (the TCP connection itself, or TLS over it), raw the TCP connection;
// on the TLS path buf is the batchConn between them (tlscopy.go).
type leg struct {
	conn net.Conn
	raw  *net.TCPConn
	buf  *batchConn
}

func tcpLeg(c *net.TCPConn) leg { return leg{conn: c, raw: c} }

// splice copies between a and b in both directions until both have ended,
// and closes both. Between bare TCP connections io.Copy gets the
// *net.TCPConn values themselves, so Linux moves the bytes with splice(2)
// and never through user space; a TLS leg is copied through a buffer. The
// counts come from io.Copy's return, never from a wrapper. An orderly end
// (EOF) is passed on as a half-close (after a TLS close_notify on a TLS
// leg); an error (reset) ends both directions at once.
func splice(a, b leg) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Go(func() { aToB, errAB = copyHalf(b, a) })
	wg.Go(func() { bToA, errBA = copyHalf(a, b) })
	wg.Wait()
	a.raw.Close()
	b.raw.Close()
	return aToB, bToA, errors.Join(errAB, errBA)
}

// copyHalf copies src to dst until EOF or an error.
func copyHalf(dst, src leg) (int64, error) {
	n, err := io.Copy(dst.conn, src.conn)
	if err == nil && dst.buf != nil {
		err = dst.buf.endBatch() // what is collected, before close_notify and FIN
	}
	if err != nil {
		if isClosed(err) {
			return n, nil // the other direction failed and closed both
		}
		// Abort both: a reset on one side must reach the other, and the
		// other direction's copy must end too.
		dst.raw.SetLinger(0)
		dst.raw.Close()
		src.raw.Close()
		return n, err
	}
	if tc, ok := dst.conn.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify, so the peer's TLS takes the end for orderly
	}
	dst.raw.CloseWrite()
	// The other direction, which reads from dst, now only owes its FIN.
	dst.raw.SetReadDeadline(time.Now().Add(drainTimeout))
	return n, nil
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
