package proxy

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Descriptors a session holds: its two control connections when idle; a
// transfer adds the two data connections and, for splice(2), one pipe (two
// descriptors) per direction; an announced data port adds its listener
// while it waits. descriptorsPerSession is the worst case, the one to size
// for; descriptorsReserved is what the process needs besides sessions
// (listeners, log, netlink and iptables sockets, the runtime's).
const (
	descriptorsPerSession = 8
	descriptorsReserved   = 64
)

// sessionsFor returns how many sessions nofile descriptors carry in the
// worst case.
func sessionsFor(nofile uint64) int {
	if nofile <= descriptorsReserved+descriptorsPerSession {
		return 1
	}
	return int(min((nofile-descriptorsReserved)/descriptorsPerSession, 1<<30))
}

// fitSessions applies the descriptor limit to cfg.MaxSessions: left zero,
// it becomes DefaultMaxSessions or what the limit carries, whichever is
// smaller; set explicitly beyond what the limit carries, it stays but is
// warned about at start. nofile 0 means unknown.
func fitSessions(cfg *Config, nofile uint64, log *zap.Logger) {
	fit := DefaultMaxSessions
	if nofile > 0 {
		fit = sessionsFor(nofile)
	}
	switch {
	case cfg.MaxSessions == 0:
		cfg.MaxSessions = min(DefaultMaxSessions, fit)
		if cfg.MaxSessions < DefaultMaxSessions {
			log.Warn(MsgFDLimitFitted,
				zap.Int("max_sessions", cfg.MaxSessions), zap.Uint64("rlimit_nofile", nofile),
				zap.Int("descriptors_per_session", descriptorsPerSession),
				zap.String("fix", "raise LimitNOFILE (systemd) or ulimit -n"))
		}
	case nofile > 0 && (cfg.MaxSessions < 0 || cfg.MaxSessions > fit):
		log.Warn(MsgFDLimitLow,
			zap.Int("max_sessions", cfg.MaxSessions), zap.Int("sessions_that_fit", fit),
			zap.Uint64("rlimit_nofile", nofile), zap.Int("descriptors_per_session", descriptorsPerSession),
			zap.String("fix", "raise LimitNOFILE (systemd) or ulimit -n, or lower --max-sessions"))
	}
}

// outOfResources reports whether err is the process or the system running
// out of descriptors or memory: a local condition, not the peer's fault.
func outOfResources(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// Keepalive of every control and data connection. Go's default (probes
// after 15 s idle, every 15 s) is meant for short connections; an FTP
// control connection sits idle for minutes between transfers, and the
// middleboxes it crosses forget idle TCP flows after 4 (Azure load
// balancer) to 60 minutes (most stateful firewalls), and after 350 s (AWS
// NLB). A probe every keepalive period (default 2 minutes) keeps such
// state alive and finds dead peers; its exact idle time is spread by
// ±12.5% per connection, so sessions opened together do not probe
// together (10,000 synchronized probes overflowed the loopback backlog).
const (
	DefaultKeepAlive  = 2 * time.Minute
	keepAliveProbes   = 4
	keepAliveInterval = 30 * time.Second
)

// keepAliveConfig returns the keepalive for one connection.
func keepAliveConfig(period time.Duration) net.KeepAliveConfig {
	if period <= 0 {
		return net.KeepAliveConfig{Enable: false}
	}
	jitter := time.Duration(rand.Int64N(int64(period/4)+1)) - period/8
	return net.KeepAliveConfig{Enable: true, Idle: max(period+jitter, time.Second),
		Interval: min(keepAliveInterval, max(period/4, time.Second)), Count: keepAliveProbes}
}

// setKeepAlive applies the keepalive period to c, when it is TCP.
func setKeepAlive(c net.Conn, period time.Duration) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(keepAliveConfig(period))
	}
}

// warnLimit is how many warnings about refused input (bad command lines,
// refused addresses, foreign data connections) a session logs in full;
// later ones are only counted, and the count is logged once at the
// session's end. 200 connections sending garbage for 30 s once wrote a
// 106 MB log.
const warnLimit = 5

// refusal logs a warning about refused input within the session's limit.
func (s *Session) refusal(msg string, fields ...zap.Field) {
	n := s.refused.Add(1)
	switch {
	case n < warnLimit:
		s.log.Warn(msg, fields...)
	case n == warnLimit:
		s.log.Warn(msg, append(fields, zap.String("note", "further refused input of this session is counted, not logged"))...)
	}
}

// refusalSummary logs how many refusals were not logged, at the end.
func (s *Session) refusalSummary() {
	if n := s.refused.Load(); n > warnLimit {
		s.log.Warn(MsgRefusedOmitted, zap.Int64("count", n-warnLimit), zap.Int64("refused", n))
	}
}

// spareFD is a descriptor held in reserve (the "reserve fd" of nginx and
// HAProxy): when accept fails for want of descriptors, the server gives
// it up, accepts one waiting client, tells it 421 and closes it, and takes
// the spare back. Without it the client waits in the listen queue with no
// answer for as long as the shortage lasts.
type spareFD struct {
	mu sync.Mutex
	f  *os.File
}

// acquire opens the spare if it is not held; false if it cannot.
func (sp *spareFD) acquire() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f == nil {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return false
		}
		sp.f = f
	}
	return true
}

// release closes the spare; false if none was held.
func (sp *spareFD) release() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f == nil {
		return false
	}
	sp.f.Close()
	sp.f = nil
	return true
}

// spareAcceptWait bounds the accept made with the spare descriptor: the
// client that caused the EMFILE is normally still queued.
const spareAcceptWait = 100 * time.Millisecond

// refuseWithSpare answers one client queued on ln with a 421, using the
// spare descriptor, after accept failed for want of descriptors.
func (s *Server) refuseWithSpare(ln net.Listener) {
	dl, ok := ln.(interface{ SetDeadline(time.Time) error })
	if !ok || !s.spare.release() {
		return
	}
	defer s.spare.acquire()
	dl.SetDeadline(time.Now().Add(spareAcceptWait))
	c, err := ln.Accept()
	dl.SetDeadline(time.Time{})
	if err != nil {
		return
	}
	cfg := &s.settings().cfg
	cfg.Observer.SessionRefused(RefusedResources)
	s.log.Warn(MsgOutOfFDsSpare, zap.Stringer("client", c.RemoteAddr()), zap.Uint64("rlimit_nofile", fileLimit()))
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write([]byte("421 Too many connections: the proxy is out of file descriptors, try again later.\r\n"))
	c.Close()
}
