package proxy

import (
	"sync"
	"time"
)

// idleWatch closes a session whose control channel has been silent for the
// idle timeout, but never while a data transfer runs: a long transfer leaves
// the control channel silent for hours, and an ALG that times it out then is
// a classic bug. It uses one timer per session and no goroutine.
type idleWatch struct {
	mu      sync.Mutex
	timeout time.Duration
	last    time.Time
	active  int
	stopped bool
	timer   *time.Timer
	fire    func()
}

// newIdleWatch starts watching; fire runs once, from the timer, when the
// session has been idle for timeout. A zero timeout disables the watch.
func newIdleWatch(timeout time.Duration, fire func()) *idleWatch {
	w := &idleWatch{timeout: timeout, last: time.Now(), fire: fire}
	if timeout > 0 {
		w.timer = time.AfterFunc(timeout, w.check)
	}
	return w
}

// touch records control-channel activity.
func (w *idleWatch) touch() {
	w.mu.Lock()
	w.last = time.Now()
	w.mu.Unlock()
}

// transferStarted and transferEnded bracket a data transfer.
func (w *idleWatch) transferStarted() {
	w.mu.Lock()
	w.active++
	w.mu.Unlock()
}

func (w *idleWatch) transferEnded() {
	w.mu.Lock()
	w.active--
	w.last = time.Now()
	w.mu.Unlock()
}

// stop disarms the watch for good.
func (w *idleWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
}

func (w *idleWatch) check() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	if w.active > 0 {
		w.timer.Reset(w.timeout)
		w.mu.Unlock()
		return
	}
	if left := w.timeout - time.Since(w.last); left > 0 {
		w.timer.Reset(left)
		w.mu.Unlock()
		return
	}
	w.stopped = true
	w.mu.Unlock()
	w.fire()
}
