package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/rules"
)

// transferOutcome is the Observer outcome of each transfer report.
var transferOutcome = map[string]string{
	MsgTransferFinished:  OutcomeCompleted,
	MsgTransferFailed:    OutcomeFailed,
	MsgTransferAborted:   OutcomeAborted,
	MsgTransferNoConfirm: OutcomeUnconfirmed,
}

// Why ftpalg cuts a running transfer.
const (
	abortShutdown = "shutdown after the grace period"
	abortDataIdle = "no data moved in either direction for the data idle timeout"
)

// transfer is one data connection carried through: the connection that
// was accepted and the one dialed for it, spliced. It is reported once,
// when both its data side has ended and the server has answered the
// transfer command on the control channel (or the session has ended
// without that answer), so a transfer is called finished only when the
// server said so.
type transfer struct {
	s       *Session
	mode    string       // passive or active
	in      *net.TCPConn // splice path: the accepted connection
	started time.Time
	tls     bool // a leg is TLS: copied in user space

	// TLS legs: tlsDone is closed once their handshakes are decided,
	// with tlsRefused set when the proxy refused the connection (what
	// the client is told instead of the server's 2xx).
	tlsDone    chan struct{}
	tlsOnce    sync.Once
	tlsRefused string
	// serverFresh: the server's data leg is TLS and did not resume the
	// control connection's session (under mu).
	serverFresh bool

	// Kernel path: the mapping that carried the connection, which end
	// was its peer (the client in passive mode), the family (for the
	// header estimate), whether conntrack counted it.
	fwd          rules.Forward
	peerIsClient bool
	v6           bool
	counted      bool

	// aborted is why ftpalg cut the transfer, nil while it has not.
	aborted atomic.Pointer[string]

	mu        sync.Mutex
	out       *net.TCPConn // the connection dialed for in, once it exists
	ended     bool         // the splice has returned
	toClient  int64
	toServer  int64
	took      time.Duration
	err       error
	code      int  // the server's final reply to the transfer command, 0: none yet
	reported  bool // logged
	confirmed bool
}

// abort cuts both connections with a reset, so neither peer can take the
// cut for the end of the file, and records why.
func (t *transfer) abort(why string) {
	if !t.aborted.CompareAndSwap(nil, &why) {
		return
	}
	for _, c := range t.conns() {
		c.SetLinger(0)
		c.Close()
	}
}

// connected records the connection dialed for the accepted one. It
// returns false, having reset out, when the transfer was aborted while it
// was being dialed.
func (t *transfer) connected(out *net.TCPConn) bool {
	t.mu.Lock()
	t.out = out
	t.mu.Unlock()
	if t.aborted.Load() != nil {
		out.SetLinger(0)
		out.Close()
		return false
	}
	return true
}

// conns returns the transfer's connections made so far.
func (t *transfer) conns() []*net.TCPConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	var cs []*net.TCPConn
	for _, c := range []*net.TCPConn{t.in, t.out} {
		if c != nil {
			cs = append(cs, c)
		}
	}
	return cs
}

// end records the data side's result (the splice's, or the kernel's
// counters) and reports the transfer if the server's answer is in already,
// or the transfer was aborted.
func (t *transfer) end(toServer, toClient int64, err error) {
	t.record(toServer, toClient, err)
	if why := t.aborted.Load(); why != nil {
		t.report(MsgTransferAborted, zap.String("reason", *why))
		return
	}
	t.mu.Lock()
	confirmed := t.confirmed
	t.mu.Unlock()
	if confirmed {
		t.reportOutcome()
	}
}

// record stores the data side's result.
func (t *transfer) record(toServer, toClient int64, err error) {
	t.mu.Lock()
	t.ended, t.toServer, t.toClient, t.took, t.err = true, toServer, toClient, time.Since(t.started), err
	t.mu.Unlock()
}

// confirm records the server's final reply to the transfer command.
func (t *transfer) confirm(code int) {
	t.mu.Lock()
	if t.confirmed {
		t.mu.Unlock()
		return
	}
	t.confirmed, t.code = true, code
	ended := t.ended
	t.mu.Unlock()
	if t.fwd != nil && !ended {
		t.s.data.Go(t.awaitKernelEnd) // its end is the server's answer, and the counters' settling
		return
	}
	if ended && t.aborted.Load() == nil {
		t.reportOutcome()
	}
}

// unconfirmed reports a transfer the server never answered for, once the
// session is over.
func (t *transfer) unconfirmed(why string) {
	t.mu.Lock()
	ended := t.ended
	t.mu.Unlock()
	if t.fwd != nil && !ended {
		// The kernel may still be carrying it: report what it counted
		// so far.
		t.record(t.kernelCounts())
		ended = true
		why += "; the kernel goes on forwarding it"
	}
	if ended {
		t.report(MsgTransferNoConfirm, zap.String("reason", why))
	}
}

func (t *transfer) reportOutcome() {
	t.mu.Lock()
	code, err := t.code, t.err
	t.mu.Unlock()
	if code/100 == 2 && err == nil {
		t.report(MsgTransferFinished, zap.Int("code", code))
		return
	}
	fields := []zap.Field{zap.Int("code", code)}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	t.report(MsgTransferFailed, fields...)
}

// report logs the transfer once, with its totals.
func (t *transfer) report(msg string, extra ...zap.Field) {
	t.mu.Lock()
	if t.reported {
		t.mu.Unlock()
		return
	}
	t.reported = true
	path := "splice"
	switch {
	case t.fwd != nil:
		path = "kernel"
	case t.tls:
		path = "tls"
	}
	fields := []zap.Field{zap.String("mode", t.mode), zap.String("path", path), zap.Int64("bytes_to_client", t.toClient),
		zap.Int64("bytes_to_server", t.toServer), zap.Duration("duration", t.took)}
	if t.serverFresh && msg != MsgTransferFinished {
		fields = append(fields, zap.String("hint", hintServerFresh))
	}
	if t.fwd != nil && !t.counted {
		fields = append(fields, zap.String("counted", "no: conntrack accounting (net.netfilter.nf_conntrack_acct) was off"))
	}
	if secs := t.took.Seconds(); secs > 0 {
		fields = append(fields, zap.Float64("mbit_per_s", float64(t.toClient+t.toServer)*8/secs/1e6))
	}
	t.mu.Unlock()
	fields = append(fields, extra...)
	t.s.cfg.Observer.DataConnection(t.mode, path, transferOutcome[msg])
	t.s.cfg.Observer.Transfer(path, t.toClient, t.toServer, t.took)
	if msg == MsgTransferFinished {
		t.s.log.Info(msg, fields...)
	} else {
		t.s.log.Warn(msg, fields...)
	}
}

// watchIdle aborts t when neither of its connections has moved a byte for
// idle. Progress is read from the kernel (TCP_INFO byte counters), so the
// connections stay bare and the splice path is kept; the check runs four
// times per idle period, a few getsockopt calls each. It returns a stop
// function.
func (t *transfer) watchIdle(idle time.Duration) (stop func()) {
	if idle <= 0 {
		return func() {}
	}
	period := max(idle/4, 10*time.Millisecond)
	last := t.progress()
	lastChange := time.Now()
	var mu sync.Mutex
	var timer *time.Timer
	stopped := false
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if p := t.progress(); p != last {
			last, lastChange = p, time.Now()
		} else if time.Since(lastChange) >= idle {
			t.s.log.Warn(MsgDataIdle, zap.Duration("data_idle_timeout", idle))
			t.abort(abortDataIdle)
			return
		}
		timer.Reset(period)
	}
	mu.Lock()
	timer = time.AfterFunc(period, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		timer.Stop()
		mu.Unlock()
	}
}

// progress sums what the kernel counts as moved on both connections:
// bytes received, and bytes the peer acknowledged.
func (t *transfer) progress() uint64 {
	var sum uint64
	for _, c := range t.conns() {
		sum += tcpBytes(c)
	}
	return sum
}
