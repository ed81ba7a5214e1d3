package benchkit

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
)

// IdleSessions are logged-in control sessions held open without
// deadlines.
type IdleSessions struct {
	Clients  []*benchftp.Client // nil where the login failed
	Opened   int
	Failed   int
	ErrKinds map[string]int // benchftp.ErrKind → count
	Secs     float64        // to open them all
}

// OpenIdle logs n sessions in to addr (greeting, USER, PASS) from openers
// concurrent openers, each login within timeout, then lifts their
// deadlines.
func OpenIdle(d benchftp.Dialer, addr string, n, openers int, timeout time.Duration) *IdleSessions {
	s := &IdleSessions{Clients: make([]*benchftp.Client, n), ErrKinds: map[string]int{}}
	var (
		mu     sync.Mutex
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
		t0     = time.Now()
	)
	for range openers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := d.Open(addr, time.Now().Add(timeout))
				if err != nil {
					failed.Add(1)
					mu.Lock()
					s.ErrKinds[benchftp.ErrKind(err)]++
					mu.Unlock()
					continue
				}
				c.NoDeadline() // idle from now on, no timeout
				s.Clients[i] = c
			}
		})
	}
	wg.Wait()
	s.Secs = time.Since(t0).Seconds()
	s.Failed = int(failed.Load())
	s.Opened = n - s.Failed
	return s
}

// Close closes every session.
func (s *IdleSessions) Close() {
	for _, c := range s.Clients {
		if c != nil {
			c.Close()
		}
	}
}

// ProcSnap is what /proc says about a process at one moment.
type ProcSnap struct {
	RSS, Anon, HWM int64 // VmRSS, RssAnon, VmHWM in KiB
	FDs            int
	Threads        int
}

// Snapshot reads pid's ProcSnap.
func Snapshot(pid int) (ProcSnap, error) {
	st, err := ProcStatus(pid)
	if err != nil {
		return ProcSnap{}, err
	}
	fds, err := FDCount(pid)
	if err != nil {
		return ProcSnap{}, err
	}
	return ProcSnap{RSS: st["VmRSS"], Anon: st["RssAnon"], HWM: st["VmHWM"], FDs: fds, Threads: int(st["Threads"])}, nil
}

// WaitFDs waits up to timeout until pid has at most fds descriptors open.
// It returns the last count and the seconds it waited.
func WaitFDs(pid, fds int, timeout time.Duration) (int, float64) {
	t0 := time.Now()
	for {
		n, err := FDCount(pid)
		if err != nil || n <= fds || time.Since(t0) >= timeout {
			return n, time.Since(t0).Seconds()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitRSS waits up to timeout, looking once a second, until pid's VmRSS
// is at most near KiB, and returns the last VmRSS.
//
// The Go runtime gives freed memory back to the kernel only after a
// garbage collection, and an idle proxy allocates nothing that would start
// one before the periodic forced GC (2 minutes after the last one): after
// a load has gone, its memory comes back in minutes, not seconds.
func WaitRSS(pid int, near int64, timeout time.Duration) (int64, error) {
	t0 := time.Now()
	for {
		rss, err := RSSKiB(pid)
		if err != nil || rss <= near || time.Since(t0) >= timeout {
			return rss, err
		}
		time.Sleep(time.Second)
	}
}
