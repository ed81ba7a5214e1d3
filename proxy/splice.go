package proxy

import (
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

// splice copies between a and b in both directions until both have ended,
// and closes both. It hands io.Copy the bare *net.TCPConn values so Linux
// moves the bytes with splice(2) and never through user space; the counts
// come from io.Copy's return, never from a wrapper. An orderly end (EOF) is
// passed on as a half-close; an error (reset) ends both directions at once.
func splice(a, b *net.TCPConn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Go(func() { aToB, errAB = copyHalf(b, a) })
	wg.Go(func() { bToA, errBA = copyHalf(a, b) })
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(errAB, errBA)
}

// copyHalf copies src to dst until EOF or an error.
func copyHalf(dst, src *net.TCPConn) (int64, error) {
	n, err := io.Copy(dst, src)
	if err != nil {
		if isClosed(err) {
			return n, nil // the other direction failed and closed both
		}
		// Abort both: a reset on one side must reach the other, and the
		// other direction's copy must end too.
		dst.SetLinger(0)
		dst.Close()
		src.Close()
		return n, err
	}
	dst.CloseWrite()
	// The other direction, which reads from dst, now only owes its FIN.
	dst.SetReadDeadline(time.Now().Add(drainTimeout))
	return n, nil
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
