package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// Config is what a Server needs. Zero durations and limits take the
// defaults below.
type Config struct {
	// Upstream is the FTP server, "host:port", when every client goes to
	// the same server (reverse proxy / sidecar).
	Upstream string
	// Director, when set, picks each session's server from its control
	// connection instead (transparent gateway mode: the original
	// destination of an intercepted connection). An error refuses the
	// session with 421.
	Director func(c net.Conn) (netip.AddrPort, error)
	// Transparent makes the proxy's own sockets IP_TRANSPARENT (gateway
	// mode, CAP_NET_ADMIN): a passive data port is opened on the server's
	// own address, which is also what the client is told, so clients that
	// use the address in the 227 and clients that use the control
	// connection's address (curl, ftplib, FileZilla) both reach it; the
	// router's divert rule delivers those connections to the proxy.
	Transparent bool
	// UpstreamSourceClient makes the proxy connect to servers (control and
	// data) from the client's address instead of its own (needs
	// Transparent and the router's divert rule), so servers see the real
	// client.
	UpstreamSourceClient bool
	// Advertise is the address announced to clients in passive replies;
	// zero means the local address of the client's control connection.
	Advertise netip.Addr
	// AdvertiseFor announces other addresses to the clients of some
	// networks (the longest matching prefix wins over Advertise): an
	// instance behind a load balancer tells outside clients the virtual
	// address and inside ones its own, for example.
	AdvertiseFor []nat.AdvertiseRule
	// RefuseEPSV makes the proxy answer the client's EPSV (with or
	// without an argument, and EPSV ALL) itself with a 502 (see
	// epsvRefused), never sending it to the server, and leaves EPSV out
	// of the FEAT reply. A 229 carries only a port, which the client
	// dials on the control connection's address: behind a load balancer
	// that forwards only the control port of a virtual address, while
	// each instance announces its own address (Advertise), that
	// connection goes nowhere. Refused, curl falls back to PASV, whose
	// 227 carries the announced address, and lftp, which sends EPSV over
	// IPv4 only when FEAT lists it, uses PASV from the start. IPv6
	// clients are then left with LPSV as their only passive mode (PASV
	// cannot carry an IPv6 address).
	RefuseEPSV bool
	// DataPorts is the range data connections listen on, on both sides.
	DataPorts nat.PortRange
	// TrustPASVAddress makes the proxy dial the address a server announces
	// in 227/228 even when it differs from the server's control address.
	// By default (false) it dials the control address with the announced
	// port, as curl and lftp do, since servers behind NAT announce private
	// or bogus addresses.
	TrustPASVAddress bool

	ConnectTimeout    time.Duration // dialing the server (control and data)
	DataAcceptTimeout time.Duration // waiting for the announced data connection
	IdleTimeout       time.Duration // control silence outside transfers; <0 disables
	// DataIdleTimeout aborts a transfer that has moved no byte in either
	// direction for this long (a peer that stopped reading or sending);
	// <0 disables.
	DataIdleTimeout time.Duration
	// LoginTimeout closes a session whose client has not logged in (the
	// server's 230) this long after connecting, as FTP servers do: a
	// connection that never completes a line must not hold a session slot
	// and an upstream connection for the idle timeout. <0 disables.
	LoginTimeout time.Duration
	// KeepAlive is the TCP keepalive period of every control and data
	// connection (see DefaultKeepAlive); <0 disables keepalive.
	KeepAlive time.Duration
	// MaxSessions bounds concurrent sessions; 0 takes DefaultMaxSessions
	// or what RLIMIT_NOFILE carries, whichever is smaller; <0: no limit.
	MaxSessions int
	// MaxSessionsPerIP bounds concurrent sessions from one client
	// address; 0 or <0: no limit (the default, as FTP servers have: a
	// sidecar's clients may all come from one corporate NAT address).
	MaxSessionsPerIP int

	// Firewall opens a pinhole for each announced data connection.
	Firewall rules.Backend
	// Observer, when set, is told what an operator counts (see Observer;
	// package metrics). nil counts nothing.
	Observer Observer
	// ClientTLS is what the proxy does with TLS from clients (tls.go);
	// the zero value passes AUTH through to the server.
	ClientTLS ClientTLSMode
	// TLSConfig is the proxy's TLS server configuration toward clients:
	// its certificate (GetCertificate, so a reload can replace it) and
	// versions. Needed by ClientTLSOptional, ClientTLSRequired and
	// ImplicitTLS.
	TLSConfig *tls.Config
	// ImplicitTLS, when set, tells the sessions whose control connection
	// is TLS from the first byte (an implicit FTPS listener, port 990).
	ImplicitTLS func(net.Conn) bool
	// RequireTLSReuse refuses a client's protected data connection that
	// does not resume its control connection's TLS session (as vsftpd's
	// require_ssl_reuse does): proof that the data connection is the
	// same client's.
	RequireTLSReuse bool
	// UpstreamTLS is how the proxy speaks TLS to the server.
	UpstreamTLS UpstreamTLSMode
	// UpstreamTLSConfig is the base of the proxy's TLS client
	// configuration toward servers (RootCAs, ServerName,
	// InsecureSkipVerify, a client certificate); each session clones it
	// and gives it a session cache of its own. nil: the system's roots.
	UpstreamTLSConfig *tls.Config
	// DataPath, when set, has the kernel forward data connections (see
	// rules.DataPath and kernel.go); those it cannot carry are spliced, and
	// the session logs why. nil: every data connection is spliced.
	DataPath rules.DataPath
	// Logger receives structured logs; every session line has "session".
	Logger *zap.Logger
	// Trace, when set, sees every control line the proxy reads or writes,
	// from the session's goroutines and with no lock of the session held.
	// It should be fast: it delays the line it is given.
	Trace func(TraceEvent)
}

// Defaults of Config.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultDataAcceptTimeout = 30 * time.Second
	DefaultIdleTimeout       = 15 * time.Minute
	// DefaultDataIdleTimeout is in line with servers' own data
	// connection timeouts (vsftpd data_connection_timeout 300 s,
	// pure-ftpd 5 minutes).
	DefaultDataIdleTimeout  = 5 * time.Minute
	DefaultMaxSessions      = 1024
	DefaultMaxSessionsPerIP = 0 // no limit
	DefaultLoginTimeout     = 60 * time.Second
)

// Direction of a traced control line.
type Direction uint8

const (
	ClientToProxy Direction = iota
	ProxyToServer
	ServerToProxy
	ProxyToClient
)

func (d Direction) String() string {
	return [...]string{"client→proxy", "proxy→server", "server→proxy", "proxy→client"}[d]
}

// TraceEvent is one control line seen by the proxy.
type TraceEvent struct {
	Session uint64
	Dir     Direction
	Line    string // without the line terminator; PASS arguments redacted
	// Changed is set on lines the proxy wrote that differ from what it
	// read (rewritten or answered by the proxy itself).
	Changed bool
}

// Server accepts FTP control connections and relays each to the upstream
// server as a Session.
type Server struct {
	set atomic.Pointer[settings] // the configuration new sessions get
	log *zap.Logger

	nextID atomic.Uint64
	// serving: Serve is accepting; draining: it has stopped and waits
	// for the sessions (see Ready).
	serving, draining atomic.Bool
	spare             spareFD // for refusing a client when descriptors run out
	// dataCtx outlives sessions: a transfer may finish after its control
	// connection is gone; it ends only with the server.
	dataCtx    context.Context
	dataCancel context.CancelFunc

	mu       sync.Mutex
	sessions map[*Session]struct{}
	perIP    map[netip.Addr]int
	wg       sync.WaitGroup
	idle     chan struct{} // closed when the last session ends during drain
}

// settings is one configuration of a Server, with what is built from it;
// never changed once made (Reconfigure makes a new one).
type settings struct {
	cfg   Config
	ports *nat.Ports
}

// settings returns the configuration for a session starting now.
func (s *Server) settings() *settings { return s.set.Load() }

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	set, err := newSettings(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:      set.cfg.Logger,
		sessions: map[*Session]struct{}{},
		perIP:    map[netip.Addr]int{},
	}
	s.set.Store(set)
	s.dataCtx, s.dataCancel = context.WithCancel(context.Background())
	return s, nil
}

// Reconfigure makes cfg the configuration of the sessions admitted from
// now on (a configuration reload); running sessions keep theirs to their
// end. An invalid cfg is refused and the current one stays.
func (s *Server) Reconfigure(cfg Config) error {
	set, err := newSettings(cfg)
	if err != nil {
		return err
	}
	if old := s.settings(); old.cfg.DataPorts == set.cfg.DataPorts && old.cfg.Transparent == set.cfg.Transparent {
		// The same range: keep the allocator, which knows the ports
		// reserved for the kernel path by running sessions.
		set.ports = old.ports
	}
	s.set.Store(set)
	return nil
}

// newSettings checks cfg and fills in the defaults.
func newSettings(cfg Config) (*settings, error) {
	switch {
	case cfg.Director == nil && cfg.Upstream == "":
		return nil, errors.New("proxy: no upstream server")
	case cfg.Director == nil:
		if _, _, err := net.SplitHostPort(cfg.Upstream); err != nil {
			return nil, fmt.Errorf("proxy: upstream %q: %w", cfg.Upstream, err)
		}
	case cfg.UpstreamSourceClient && !cfg.Transparent:
		return nil, errors.New("proxy: connecting from the client's address needs transparent sockets")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.DataAcceptTimeout == 0 {
		cfg.DataAcceptTimeout = DefaultDataAcceptTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.DataIdleTimeout == 0 {
		cfg.DataIdleTimeout = DefaultDataIdleTimeout
	}
	if cfg.LoginTimeout == 0 {
		cfg.LoginTimeout = DefaultLoginTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.Firewall == nil {
		cfg.Firewall = rules.None{}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if err := checkTLS(&cfg); err != nil {
		return nil, err
	}
	fitSessions(&cfg, fileLimit(), cfg.Logger)
	ports := nat.NewPorts(cfg.DataPorts)
	ports.Transparent = cfg.Transparent
	return &settings{cfg: cfg, ports: ports}, nil
}

// Serve accepts connections on ln until ctx is cancelled, then stops
// accepting, lets running sessions finish for up to grace, closes the rest
// and returns once every session and transfer has ended. ln is closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	cfg := &s.settings().cfg
	upstream := cfg.Upstream
	if cfg.Director != nil {
		upstream = "(original destination)"
	}
	var addrs []string
	for _, a := range nat.Addrs(ln) {
		addrs = append(addrs, a.String())
	}
	s.log.Info("listening", zap.Strings("addr", addrs), zap.String("upstream", upstream),
		zap.Stringer("data_ports", cfg.DataPorts), zap.String("firewall", cfg.Firewall.Name()))
	var err error
	var backoff time.Duration
	s.spare.acquire()
	defer s.spare.release()
	s.serving.Store(true)
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil && !errors.Is(aerr, net.ErrClosed) {
				var ne net.Error
				if errors.As(aerr, &ne) && ne.Timeout() {
					continue
				}
				if outOfResources(aerr) {
					// Out of descriptors or buffers for a moment: wait
					// and retry, as net/http does, instead of ending.
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					s.log.Warn(MsgAcceptFailed, zap.Error(aerr), zap.Duration("in", backoff))
					s.refuseWithSpare(ln)
					t := time.NewTimer(backoff)
					select {
					case <-t.C:
					case <-ctx.Done():
					}
					t.Stop()
					continue
				}
				err = aerr
			}
			break
		}
		backoff = 0
		s.admit(c)
	}
	s.serving.Store(false)
	s.draining.Store(true)
	ln.Close()
	s.drain(grace)
	return err
}

// Ready returns nil while Serve accepts sessions, else why not: not
// started, or stopped and draining (a load balancer's readiness check
// sends new sessions elsewhere while the running ones finish).
func (s *Server) Ready() error {
	switch {
	case s.serving.Load():
		return nil
	case s.draining.Load():
		return errors.New("draining: not accepting new sessions")
	}
	return errors.New("not accepting yet")
}

// admit applies the session limits and starts a session for c.
func (s *Server) admit(c net.Conn) {
	peer := nat.AddrPortOf(c.RemoteAddr())
	s.mu.Lock()
	cfg := &s.settings().cfg
	var refuse, limit, reason string
	var n int
	switch {
	case cfg.MaxSessions > 0 && len(s.sessions) >= cfg.MaxSessions:
		limit, n, reason = "max-sessions", cfg.MaxSessions, RefusedLimit
		refuse = fmt.Sprintf("421 Too many sessions (limit %d), try again later.\r\n", n)
	case cfg.MaxSessionsPerIP > 0 && s.perIP[peer.Addr()] >= cfg.MaxSessionsPerIP:
		limit, n, reason = "max-sessions-per-ip", cfg.MaxSessionsPerIP, RefusedPerIP
		refuse = fmt.Sprintf("421 Too many sessions from %s (limit %d), try again later.\r\n", peer.Addr(), n)
	}
	if refuse != "" {
		s.mu.Unlock()
		cfg.Observer.SessionRefused(reason)
		s.log.Warn(MsgSessionRefused, zap.Stringer("client", peer), zap.String("limit", limit), zap.Int("value", n))
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(refuse))
		c.Close()
		return
	}
	setKeepAlive(c, cfg.KeepAlive)
	sess := newSession(s, s.nextID.Add(1), c, peer)
	s.sessions[sess] = struct{}{}
	s.perIP[peer.Addr()]++
	s.wg.Add(1)
	s.mu.Unlock()
	go s.runSession(sess)
}

// runSession owns sess until it ends.
func (s *Server) runSession(sess *Session) {
	defer s.wg.Done()
	sess.cfg.Observer.SessionStarted()
	sess.run()
	sess.cfg.Observer.SessionEnded(sess.reason().label())
	s.mu.Lock()
	delete(s.sessions, sess)
	if s.perIP[sess.clientAddr.Addr()]--; s.perIP[sess.clientAddr.Addr()] <= 0 {
		delete(s.perIP, sess.clientAddr.Addr())
	}
	if len(s.sessions) == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

// drain waits up to grace for the sessions to end by themselves, then
// closes what is left and waits for it.
func (s *Server) drain(grace time.Duration) {
	s.mu.Lock()
	n := len(s.sessions)
	var idle chan struct{}
	if n > 0 {
		idle = make(chan struct{})
		s.idle = idle
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("draining sessions", zap.Int("sessions", n), zap.Duration("grace", grace))
		t := time.NewTimer(grace)
		select {
		case <-idle:
		case <-t.C:
			s.mu.Lock()
			left := make([]*Session, 0, len(s.sessions))
			for sess := range s.sessions {
				left = append(left, sess)
			}
			s.mu.Unlock()
			s.log.Info("grace period over, closing sessions", zap.Int("sessions", len(left)))
			for _, sess := range left {
				sess.shutdown()
			}
		}
		t.Stop()
	}
	s.dataCancel()
	s.wg.Wait()
}

// Sessions returns the number of sessions running now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// dial connects to the server side: from the proxy's own address, or, with
// UpstreamSourceClient, from the client's (a transparent socket).
//
// avoid, when not 0, is a source port the dial must not use: the port of
// the intercepted client connection. Dialing the same server from the
// client's address and port would repeat that connection's 4-tuple, and
// conntrack would take the SYN for the intercepted connection and redirect
// it to the proxy again.
func (s *Session) dial(ctx context.Context, from netip.Addr, avoid uint16, to string) (*net.TCPConn, error) {
	if s.cfg.Transparent && from.IsValid() {
		ap, err := netip.ParseAddrPort(to)
		if err != nil {
			return nil, err
		}
		c, err := nat.DialTransparentAvoiding(ctx, from, avoid, ap, s.cfg.ConnectTimeout)
		if err == nil {
			setKeepAlive(c, s.cfg.KeepAlive)
		}
		return c, err
	}
	d := net.Dialer{Timeout: s.cfg.ConnectTimeout, KeepAliveConfig: keepAliveConfig(s.cfg.KeepAlive)}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))
		// The port is picked at connect, for the whole 4-tuple, not at
		// bind, where TIME_WAIT sockets can make it fail.
		d.Control = nat.BindNoPort
	}
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Accepted returns the number of sessions started since the server began.
func (s *Server) Accepted() uint64 { return s.nextID.Load() }
