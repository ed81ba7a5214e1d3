package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// goodbyeTimeout bounds the last reply to a client that is being
// disconnected (shutdown, idle timeout): a client that does not read gets
// this long, not the idle timeout.
const goodbyeTimeout = 2 * time.Second

// Why a session ended, for its last log line and for what happens to its
// transfers.
type endReason uint8

const (
	endClientClosed endReason = iota + 1
	endServerClosed
	endClientError
	endServerError
	endIdle
	endShutdown
	endProtocol
	endRefused
	endLoginTimeout
)

// label is the reason as a metric label value: "client_closed".
func (r endReason) label() string { return strings.ReplaceAll(r.String(), " ", "_") }

func (r endReason) String() string {
	switch r {
	case endClientClosed:
		return "client closed"
	case endServerClosed:
		return "server closed"
	case endClientError:
		return "client connection failed"
	case endServerError:
		return "server connection failed"
	case endIdle:
		return "idle timeout"
	case endShutdown:
		return "shutdown"
	case endProtocol:
		return "protocol violation"
	case endRefused:
		return "refused"
	case endLoginTimeout:
		return "login timeout"
	}
	return "unknown"
}

// Session relays one client's control connection to the server and brokers
// its data connections. See doc.go for its goroutines and its lock.
type Session struct {
	srv *Server
	// cfg and ports are the server's configuration when the session
	// began: a reload (Server.Reconfigure) applies to later sessions.
	cfg     *Config
	ports   *nat.Ports
	id      uint64
	started time.Time

	// ctx ends when the session ends, for whatever reason; done is its
	// Done channel.
	ctx    context.Context
	cancel context.CancelFunc
	done   <-chan struct{}
	why    atomic.Uint32 // the first endReason given to end

	// Set before the session's goroutines start and never changed after
	// (the server's side by dialServer, before the pumps).
	log        *zap.Logger
	client     net.Conn // urgent-aware control connection to the client
	rawClient  net.Conn // as accepted: for Config.Director, deadlines and Close from any goroutine
	server     net.Conn
	clientAddr netip.AddrPort // the client, as seen on its control connection
	clientSide netip.AddrPort // our address facing the client
	serverAddr netip.AddrPort // the server's control address
	serverSide netip.AddrPort // our address facing the server
	idle       *idleWatch

	corr *correlator
	// handover is closed when the writer has written the 234 to AUTH and
	// hands the client connection to the opaque relay.
	handover chan struct{}
	// toServer makes "queue an exchange, write its command" one step, so
	// commands reach the server in queue order when the reply pump sends
	// one of its own (translation). Lock order: toServer, then corr.mu.
	toServer sync.Mutex

	// Protocol state, shared by the command and reply pumps.
	epsvAll        atomic.Bool // the client said EPSV ALL
	noEPSV, noEPRT atomic.Bool // the server is known not to do EPSV/EPRT
	opaque         atomic.Bool // the control channel turned into TLS: relay bytes only
	commands       atomic.Int64
	// epsvRefusedLogged: a refused EPSV (Config.RefuseEPSV) is logged.
	epsvRefusedLogged atomic.Bool

	// TLS (tls.go). clientTLS is the client's control connection once it
	// is TLS; pbsz and clientProt are what the client asked for (PROT P:
	// its data connections are TLS); serverProt is 'P' when the proxy
	// set PROT P with a TLS server. tlsServer and upstreamData are the
	// session's TLS configurations toward the client and the server.
	clientTLS    atomic.Pointer[tls.Conn]
	pbsz         atomic.Bool
	clientProt   atomic.Uint32
	serverProt   atomic.Uint32
	tlsOnce      sync.Once
	tlsServer    *tls.Config
	upstreamData *tls.Config
	authRest     []byte       // bytes the command scanner had read past AUTH
	rawServer    net.Conn     // the server's TCP connection, for Close from any goroutine
	greeting     []byte       // the server's greeting, when the TLS prelude read it
	refused      atomic.Int64 // refused input, for the warning limit
	spliceNoted  atomic.Bool  // the reason the kernel path is not used is logged
	loggedIn     atomic.Bool  // the server accepted the login (230/232)
	login        *time.Timer  // LoginTimeout, until loggedIn

	data sync.WaitGroup // data offers and transfers

	// mu guards the data-connection bookkeeping below and nothing else.
	// It is never held across network, firewall or hook I/O.
	mu    sync.Mutex
	offer *dataOffer // the data connection announced last, not yet connected
	// activeOffer is the last active-mode offer, kept after it is
	// connected so the reply that ends its transfer can wait for the
	// client's side.
	activeOffer *dataOffer
	lastKernel  *dataOffer             // the last offer mapped in the kernel (see syncKernel)
	transfers   map[*transfer]struct{} // running, for a shutdown to cut
	// The server's answers to transfer commands (transferEvent): data
	// connections whose TLS handshake waits for the 150 watch them.
	prelims, finals uint64
	xferChanged     chan struct{}
	unconfirmed     []*transfer // waiting for the server's answer to their command, oldest first
}

func newSession(srv *Server, id uint64, client net.Conn, peer netip.AddrPort) *Session {
	set := srv.settings()
	s := &Session{
		srv:         srv,
		cfg:         &set.cfg,
		ports:       set.ports,
		id:          id,
		started:     time.Now(),
		client:      wrapControl(client),
		rawClient:   client,
		clientAddr:  peer,
		clientSide:  nat.AddrPortOf(client.LocalAddr()),
		corr:        newCorrelator(),
		handover:    make(chan struct{}),
		transfers:   map[*transfer]struct{}{},
		xferChanged: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.done = s.ctx.Done()
	s.log = set.cfg.Logger.With(zap.Uint64("session", id), zap.Stringer("client", peer))
	return s
}

// run relays the session until it ends, then cleans up. It returns when
// every goroutine and data connection of the session is gone.
func (s *Session) run() {
	s.log.Info(MsgSessionStarted, zap.Stringer("local", s.clientSide))
	// The login timeout counts from the client's connect, the server's
	// connect time included.
	if d := s.cfg.LoginTimeout; d > 0 {
		// It may fire while dialServer still sets up the session's
		// logger: it logs with the one of now.
		log := s.log
		s.login = time.AfterFunc(d, func() { s.loginTimeout(log) })
	}
	if !s.implicitTLS() || !s.dialServer() {
		s.stopLoginTimer()
		s.rawClient.Close()
		s.cancel()
		s.ended()
		return
	}
	torn := make(chan struct{})
	context.AfterFunc(s.ctx, func() {
		defer close(torn)
		s.teardown()
	})
	s.idle = newIdleWatch(s.cfg.IdleTimeout, s.idleTimeout)
	if s.greeting != nil { // read by the TLS prelude
		s.corr.add(&exchange{cmd: ftp.Command{Verb: "(greeting)"}, local: true, final: true, out: []chunk{{b: s.greeting}}}, s.done)
	} else {
		s.corr.add(&exchange{cmd: ftp.Command{Verb: "(greeting)"}}, s.done) // the queue is empty: never waits
	}

	var wg sync.WaitGroup
	wg.Go(s.replyPump)
	wg.Go(s.clientWriter)
	s.commandPump()
	wg.Wait()
	s.cancel()
	<-torn
	s.idle.stop()
	s.stopLoginTimer()
	s.refusalSummary()
	s.ended(zap.Int64("commands", s.commands.Load()), zap.Int64("refused", s.refused.Load()))
}

// ended waits for the session's data goroutines (a kernel-carried
// transfer is reported once conntrack saw its end, after the server's
// reply), reports the transfers the server never answered, and then logs
// the session's end: its last line, so that a reader that saw it has all
// of the session's lines. The duration is the session's own, without
// that wait.
func (s *Session) ended(fields ...zap.Field) {
	took := time.Since(s.started)
	s.data.Wait()
	s.reportUnconfirmed()
	s.log.Info(MsgSessionEnded, append([]zap.Field{zap.Stringer("reason", s.reason()), zap.Duration("duration", took)}, fields...)...)
}

// dialServer connects to the server. On failure the client has been told
// why (the writer is not running yet, so it writes directly).
func (s *Session) dialServer() bool {
	upstream := s.cfg.Upstream
	if dir := s.cfg.Director; dir != nil {
		ap, err := dir(s.rawClient)
		if err != nil {
			s.cfg.Observer.SessionRefused(RefusedNoServer)
			s.log.Warn("no server for this connection", zap.Error(err))
			s.refuse("421 Service not available: no FTP server for this connection.\r\n")
			return false
		}
		upstream = ap.String()
	}
	var from netip.Addr
	if s.cfg.UpstreamSourceClient {
		from = s.clientAddr.Addr()
	}
	dialStart := time.Now()
	c, err := s.dial(s.ctx, from, s.clientAddr.Port(), upstream)
	if err != nil {
		if s.ctx.Err() != nil { // ended while connecting (shutdown)
			if b := s.corr.takeGoodbye(); b != nil {
				s.writeDirect(b)
			}
			return false
		}
		if outOfResources(err) {
			s.cfg.Observer.SessionRefused(RefusedResources)
			// The server is fine: the proxy has no descriptor (or
			// buffer) left to reach it.
			s.log.Warn(MsgOutOfFDs, zap.String("upstream", upstream),
				zap.Error(err), zap.Uint64("rlimit_nofile", fileLimit()), zap.Int("max_sessions", s.cfg.MaxSessions))
			s.refuse("421 Too many connections: the proxy is out of resources, try again later.\r\n")
			return false
		}
		s.cfg.Observer.SessionRefused(RefusedUpstream)
		s.log.Warn(MsgUpstreamDown, zap.String("upstream", upstream), zap.Error(err))
		s.refuse("421 Service not available: the FTP server cannot be reached.\r\n")
		return false
	}
	s.cfg.Observer.UpstreamConnected(time.Since(dialStart))
	s.rawServer = c
	s.server = wrapControl(c)
	s.serverAddr = nat.AddrPortOf(c.RemoteAddr())
	s.serverSide = nat.AddrPortOf(c.LocalAddr())
	s.log = s.log.With(zap.Stringer("server", s.serverAddr))
	s.log.Info(MsgConnected, zap.Stringer("local", s.serverSide))
	host, _, _ := net.SplitHostPort(upstream)
	switch s.cfg.UpstreamTLS {
	case UpstreamTLSImplicit, UpstreamTLSExplicit, UpstreamTLSAuto:
		ctl, greeting, msg, err := s.upstreamPrelude(c, host)
		if err != nil {
			c.Close()
			s.refuse(msg)
			return false
		}
		if ctl != c {
			s.server = ctl
		}
		s.greeting = greeting
	}
	return true
}

// implicitTLS runs the TLS server handshake first for a session of an
// implicit-FTPS listener; false ends the session.
func (s *Session) implicitTLS() bool {
	if s.cfg.ImplicitTLS == nil || !s.cfg.ImplicitTLS(s.rawClient) {
		return true
	}
	tc := tls.Server(s.client, s.clientTLSConfig())
	if err := s.handshake(s.ctx, tc, "client"); err != nil {
		s.why.CompareAndSwap(0, uint32(endProtocol))
		return false
	}
	s.client = tc
	s.clientTLS.Store(tc)
	s.pbsz.Store(true)
	s.clientProt.Store('P') // implicit FTPS protects data by default
	return true
}

// refuse tells the client why the session cannot start; only before the
// writer runs.
func (s *Session) refuse(reply string) {
	s.why.CompareAndSwap(0, uint32(endRefused))
	s.writeDirect([]byte(reply))
}

// writeDirect writes to the client before the writer starts.
func (s *Session) writeDirect(b []byte) {
	s.trace(ProxyToClient, b, true)
	s.rawClient.SetWriteDeadline(time.Now().Add(goodbyeTimeout))
	s.client.Write(b)
}

// end ends the session for why; goodbye, when not empty, is the last reply
// the client gets. It may be called from any goroutine, any number of
// times (the first reason counts), and returns at once: it closes
// connections rather than waiting for the goroutines blocked on them.
func (s *Session) end(why endReason, goodbye string) {
	s.why.CompareAndSwap(0, uint32(why))
	if goodbye != "" && !s.opaque.Load() && s.corr.sayGoodbye([]byte(goodbye)) {
		// The writer says goodbye and closes the connection; the
		// deadline bounds that for a client that does not read, and
		// ends a write already stuck on such a client.
		s.rawClient.SetWriteDeadline(time.Now().Add(goodbyeTimeout))
	} else {
		s.rawClient.Close()
	}
	s.cancel()
}

func (s *Session) reason() endReason { return endReason(s.why.Load()) }

// teardown runs once the session's context ends: it closes the server's
// control connection and any announced data connection not made yet. At
// a shutdown it also cuts the running transfers; otherwise they go on
// until they end by themselves.
func (s *Session) teardown() {
	s.rawServer.Close()
	s.dropOffer(nil)
	if s.reason() == endShutdown {
		s.abortTransfers()
	}
}

// shutdown ends the session for a server shutdown after the grace period.
func (s *Session) shutdown() {
	s.end(endShutdown, "421 Service shutting down, closing control connection.\r\n")
}

// loginTimeout ends a session whose client has not logged in within
// LoginTimeout.
func (s *Session) loginTimeout(log *zap.Logger) {
	if s.loggedIn.Load() {
		return
	}
	log.Info(MsgLoginTimeout, zap.Duration("timeout", s.cfg.LoginTimeout))
	s.end(endLoginTimeout, "421 Login timeout: not logged in within "+s.cfg.LoginTimeout.String()+", closing control connection.\r\n")
}

// loginDone records a successful login (or a control channel turned
// opaque, where it can no longer be seen) and stops the login timer.
func (s *Session) loginDone() {
	s.loggedIn.Store(true)
	s.stopLoginTimer()
}

func (s *Session) stopLoginTimer() {
	if s.login != nil {
		s.login.Stop()
	}
}

func (s *Session) idleTimeout() {
	s.log.Info("idle timeout", zap.Duration("timeout", s.cfg.IdleTimeout))
	s.end(endIdle, "421 Timeout: no activity for "+s.cfg.IdleTimeout.String()+", closing control connection.\r\n")
}

func (s *Session) trace(dir Direction, line []byte, changed bool) {
	if s.cfg.Trace == nil {
		return
	}
	text := strings.TrimRight(string(line), "\r\n")
	if dir == ClientToProxy || dir == ProxyToServer {
		if c := ftp.ParseCommand([]byte(text)); c.Kind == ftp.KindPASS {
			text = c.String()
		}
	}
	s.cfg.Trace(TraceEvent{Session: s.id, Dir: dir, Line: text, Changed: changed})
}

func (s *Session) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

func clipBytes(b []byte) []byte {
	if len(b) > 256 {
		return b[:256]
	}
	return b
}
