package benchkit

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
)

// Session is the session script of the session-rate measurements:
// connect, login, EPSV+LIST, EPSV+RETR of SmallFile, QUIT, all within
// timeout. buf is the read buffer.
func Session(addr string, timeout time.Duration, buf []byte) error {
	return SessionWith(benchftp.Dialer{}, addr, timeout, buf)
}

// SessionWith is Session with d's settings (FTPS: d.TLS).
func SessionWith(d benchftp.Dialer, addr string, timeout time.Duration, buf []byte) error {
	deadline := time.Now().Add(timeout)
	c, err := d.Open(addr, deadline)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := List(c, deadline, buf); err != nil {
		return err
	}
	if err := RetrSmall(c, deadline, buf); err != nil {
		return err
	}
	return c.Quit()
}

// ShortSession is the lighter script of the churn measurement: connect,
// login, one EPSV+LIST (list) or EPSV+RETR of SmallFile, QUIT.
func ShortSession(addr string, timeout time.Duration, buf []byte, list bool) error {
	deadline := time.Now().Add(timeout)
	c, err := benchftp.Open(addr, deadline)
	if err != nil {
		return err
	}
	defer c.Close()
	step := RetrSmall
	if list {
		step = List
	}
	if err := step(c, deadline, buf); err != nil {
		return err
	}
	return c.Quit()
}

// List runs EPSV+LIST and wants a listing that is not empty.
func List(c *benchftp.Client, deadline time.Time, buf []byte) error {
	n, _, err := c.Transfer("LIST", deadline, 0, buf)
	if err != nil {
		return err
	}
	if n == 0 {
		return benchftp.StepErr("LIST", errors.New("empty listing"))
	}
	return nil
}

// RetrSmall runs EPSV+RETR of SmallFile and checks its size.
func RetrSmall(c *benchftp.Client, deadline time.Time, buf []byte) error {
	n, _, err := c.Transfer("RETR "+SmallFile, deadline, 0, buf)
	if err != nil {
		return err
	}
	// ASCII mode (no TYPE I in this session) lets a server turn LF into
	// CRLF: ftpserverlib does, vsftpd does not.
	if n < SmallSize || n > 2*SmallSize {
		return benchftp.StepErr("RETR", fmt.Errorf("got %d bytes, want %d", n, SmallSize))
	}
	return nil
}

// Download logs in to addr, switches to TYPE I and downloads BigFile,
// which must have size bytes, within timeout. It returns the bytes and
// the seconds from RETR to the final reply. around, if not nil, is called
// right before the RETR, and the function it returns right after the
// final reply (or the failure): to measure CPU use over the transfer
// alone.
func Download(addr string, size int64, buf []byte, timeout time.Duration, around func() (done func())) (int64, float64, error) {
	return DownloadWith(benchftp.Dialer{}, addr, size, buf, timeout, around)
}

// DownloadWith is Download with d's settings (FTPS: d.TLS).
func DownloadWith(d benchftp.Dialer, addr string, size int64, buf []byte, timeout time.Duration, around func() (done func())) (int64, float64, error) {
	deadline := time.Now().Add(timeout)
	c, err := d.Open(addr, deadline)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Binary(); err != nil {
		return 0, 0, err
	}
	done := func() {}
	if around != nil {
		done = around()
	}
	start := time.Now()
	n, _, err := c.Transfer("RETR "+BigFile, deadline, 0, buf)
	secs := time.Since(start).Seconds()
	done()
	if err == nil && n != size {
		err = fmt.Errorf("RETR: got %d bytes, want %d", n, size)
	}
	if err != nil {
		return n, secs, err
	}
	c.Quit()
	return n, secs, nil
}

// Rate is the outcome of a session-rate run.
type Rate struct {
	Latencies []time.Duration // of the sessions that succeeded, sorted
	Secs      float64         // the run's length
	Errors    int
	ErrKinds  map[string]int // benchftp.ErrKind → count
}

// RunRate runs Session against addr from clients concurrent loops until
// duration has passed; each session may take up to timeout.
func RunRate(addr string, clients int, duration, timeout time.Duration) Rate {
	return RunRateWith(benchftp.Dialer{}, addr, clients, duration, timeout)
}

// RunRateWith is RunRate with d's settings (FTPS: d.TLS).
func RunRateWith(d benchftp.Dialer, addr string, clients int, duration, timeout time.Duration) Rate {
	return RunLoad(clients, duration, 0, func(_ int, buf []byte) error { return SessionWith(d, addr, timeout, buf) })
}

// RunLoad runs session from clients concurrent loops until duration has
// passed or, when total is above zero, total sessions have been started;
// session gets the session's number (from 0) and a 32 KiB buffer of its
// loop's own.
func RunLoad(clients int, duration time.Duration, total int, session func(i int, buf []byte) error) Rate {
	var (
		mu      sync.Mutex
		r       = Rate{ErrKinds: map[string]int{}}
		nerr    atomic.Int64
		started atomic.Int64
		wg      sync.WaitGroup
		start   = time.Now()
	)
	stopAt := start.Add(duration)
	for range clients {
		wg.Go(func() {
			buf := make([]byte, 32<<10)
			var mine []time.Duration
			for time.Now().Before(stopAt) {
				i := int(started.Add(1)) - 1
				if total > 0 && i >= total {
					break
				}
				t0 := time.Now()
				if err := session(i, buf); err != nil {
					nerr.Add(1)
					mu.Lock()
					r.ErrKinds[benchftp.ErrKind(err)]++
					mu.Unlock()
					// Back off a little so that a failing path does not
					// spin.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			r.Latencies = append(r.Latencies, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	r.Secs = time.Since(start).Seconds()
	r.Errors = int(nerr.Load())
	slices.Sort(r.Latencies)
	return r
}
