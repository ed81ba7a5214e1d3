package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules/intercept"
)

// runFlags are the flags of `ftpalg run`.
type runFlags struct {
	listen, upstream, advertise, dataPorts          string
	mode, interception, upstreamSource              string
	intercept                                       string
	interceptPort, interceptTable                   int
	interceptMark                                   uint
	divert                                          bool
	logFormat, logLevel                             string
	trustPASV                                       bool
	fw                                              firewallFlags
	connectTimeout, dataTimeout, idleTimeout, grace time.Duration
	maxSessions, maxPerIP                           int
}

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", ":21", "address to accept FTP control connections on")
	fs.StringVar(&f.upstream, "upstream", "", "the FTP server, HOST:PORT (required in reverse mode)")
	fs.StringVar(&f.mode, "mode", "reverse", "reverse: relay every client to --upstream; transparent: relay each intercepted connection to its original destination (gateway on a router)")
	fs.StringVar(&f.interception, "interception", "redirect", "transparent mode: how connections are intercepted: redirect (iptables REDIRECT, original destination from SO_ORIGINAL_DST) or tproxy (TPROXY, IP_TRANSPARENT listener)")
	fs.StringVar(&f.intercept, "intercept", "", "transparent mode: install the interception rules for these client networks or incoming interfaces (comma-separated, e.g. 198.51.100.0/24,lan0); without it ftpalg expects your own rules")
	fs.IntVar(&f.interceptPort, "intercept-port", 21, "transparent mode: the FTP control port to intercept")
	fs.IntVar(&f.interceptTable, "intercept-table", 100, "transparent mode: routing table of the divert/TPROXY policy route")
	fs.UintVar(&f.interceptMark, "intercept-mark", 1, "transparent mode: fwmark bit of TPROXY and the divert rule")
	fs.BoolVar(&f.divert, "divert", true, "transparent mode: install the divert rule and policy route that deliver data connections to ftpalg's transparent sockets")
	fs.StringVar(&f.upstreamSource, "upstream-source", "router", "transparent mode: connect to servers from the router's address (router) or from the client's (client, needs the divert routing in rules/intercept/README.md)")
	fs.StringVar(&f.advertise, "advertise", "", "address announced to clients in passive replies (default: the local address the client connected to)")
	fs.StringVar(&f.dataPorts, "data-ports", "50000-50999", "port range for data connections, LO-HI, on both sides (0: any port)")
	fs.BoolVar(&f.trustPASV, "trust-pasv-address", false, "dial the address a server announces in 227 even when it is not the server's control address (default: dial the control address, as curl and lftp do)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", proxy.DefaultConnectTimeout, "timeout for connecting to the server and to data peers")
	fs.DurationVar(&f.dataTimeout, "data-timeout", proxy.DefaultDataAcceptTimeout, "how long an announced data port waits for its connection")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close a control connection silent this long (never during a transfer); 0 uses the default, negative disables")
	fs.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "on SIGINT/SIGTERM, how long running sessions may finish before they are closed")
	fs.IntVar(&f.maxSessions, "max-sessions", proxy.DefaultMaxSessions, "most concurrent sessions; more are refused with 421 (negative: no limit)")
	fs.IntVar(&f.maxPerIP, "max-sessions-per-ip", proxy.DefaultMaxSessionsPerIP, "most concurrent sessions from one client address (negative: no limit)")
	f.fw.register(fs)
	fs.StringVar(&f.logFormat, "log-format", "console", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ftpalg run --upstream HOST:PORT [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected argument %q", fs.Arg(0))
	}
	log, err := newLogger(f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	defer log.Sync()

	cfg, err := f.config(log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fw, err := f.fw.backend(ctx, log, true)
	if err != nil {
		return err
	}
	cfg.Firewall = fw
	ln, err := f.listener(ctx, &cfg)
	if err != nil {
		return err
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	// Setup after the listen succeeded, so a failed start leaves no rules;
	// it also removes what a crashed run left behind.
	if err := fw.Setup(ctx); err != nil {
		ln.Close()
		// Remove whatever part of the setup did happen.
		tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return errors.Join(fmt.Errorf("firewall %s: %w", fw.Name(), err), fw.Teardown(tctx))
	}
	icpt, err := f.installInterception(ctx, log, ln, srv)
	if err != nil {
		ln.Close()
		fw.Teardown(context.Background())
		return err
	}
	if icpt != nil {
		// On SIGTERM the interception goes first: during the grace period
		// new FTP connections then take the router's normal path instead
		// of being redirected to a listener that no longer accepts.
		removed := make(chan struct{})
		stopRemove := context.AfterFunc(ctx, func() {
			defer close(removed)
			rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer rcancel()
			if err := icpt.Remove(rctx); err != nil {
				log.Warn("removing interception rules failed", zap.Error(err))
			}
		})
		defer func() {
			if stopRemove() { // Serve ended without a signal
				rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer rcancel()
				if err := icpt.Remove(rctx); err != nil {
					log.Warn("removing interception rules failed", zap.Error(err))
				}
				return
			}
			<-removed
		}()
	}
	serveErr := srv.Serve(ctx, ln, f.grace)
	log.Info("stopped accepting; sessions done")
	tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fw.Teardown(tctx); err != nil {
		log.Warn("firewall teardown failed", zap.String("firewall", fw.Name()), zap.Error(err))
	}
	return serveErr
}

func (f *runFlags) config(log *zap.Logger) (proxy.Config, error) {
	cfg := proxy.Config{
		Upstream:          f.upstream,
		TrustPASVAddress:  f.trustPASV,
		ConnectTimeout:    f.connectTimeout,
		DataAcceptTimeout: f.dataTimeout,
		IdleTimeout:       f.idleTimeout,
		MaxSessions:       f.maxSessions,
		MaxSessionsPerIP:  f.maxPerIP,
		Logger:            log,
	}
	switch f.mode {
	case "reverse":
		if f.upstream == "" {
			return cfg, errors.New("run: --upstream HOST:PORT is required in reverse mode")
		}
	case "transparent":
		if f.upstream != "" {
			return cfg, errors.New("run: --upstream makes no sense with --mode transparent: the server is each connection's original destination")
		}
		cfg.Transparent = true
		switch f.upstreamSource {
		case "router":
		case "client":
			cfg.UpstreamSourceClient = true
		default:
			return cfg, fmt.Errorf("run: --upstream-source %q: want router or client", f.upstreamSource)
		}
	default:
		return cfg, fmt.Errorf("run: --mode %q: want reverse or transparent", f.mode)
	}
	if f.advertise != "" {
		a, err := netip.ParseAddr(f.advertise)
		if err != nil {
			return cfg, fmt.Errorf("run: --advertise %q: want an IP address", f.advertise)
		}
		cfg.Advertise = a
	}
	r, err := nat.ParsePortRange(f.dataPorts)
	if err != nil {
		return cfg, fmt.Errorf("run: --data-ports: %w", err)
	}
	cfg.DataPorts = r
	return cfg, nil
}

// newLogger builds the zap logger. Sampling is off: zap's production
// sampling drops repeated messages, and per-session lifecycle lines are
// exactly the repeated messages an operator needs.
func newLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
		cfg.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	cfg.Sampling = nil
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build(zap.WithCaller(false))
}

// listener opens the control listener and, in transparent mode, sets the
// Director that finds each connection's original destination.
func (f *runFlags) listener(ctx context.Context, cfg *proxy.Config) (net.Listener, error) {
	if f.mode != "transparent" {
		return net.Listen("tcp", f.listen)
	}
	m, err := nat.ParseMode(f.interception)
	if err != nil {
		return nil, fmt.Errorf("run: --interception: %w", err)
	}
	var ln net.Listener
	if m == nat.ModeTProxy {
		// A transparent socket is of one family: ":PORT" means an IPv4 and
		// an IPv6 listener, merged.
		var aps []netip.AddrPort
		if strings.HasPrefix(f.listen, ":") {
			p, err := strconv.ParseUint(f.listen[1:], 10, 16)
			if err != nil {
				return nil, fmt.Errorf("run: --listen %q: want IP:PORT or :PORT", f.listen)
			}
			aps = []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p)), netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p))}
		} else {
			ap, err := netip.ParseAddrPort(f.listen)
			if err != nil {
				return nil, fmt.Errorf("run: --listen %q: want IP:PORT or :PORT", f.listen)
			}
			aps = []netip.AddrPort{ap}
		}
		var lns []net.Listener
		for _, ap := range aps {
			l, err := nat.ListenTransparent(ctx, ap)
			if err != nil {
				for _, l := range lns {
					l.Close()
				}
				return nil, err
			}
			lns = append(lns, l)
		}
		ln = mergeListeners(lns...)
	} else {
		l, err := net.Listen("tcp", f.listen) // dual-stack for ":PORT"
		if err != nil {
			return nil, err
		}
		ln = l
	}
	local, err := localAddrs()
	if err != nil {
		ln.Close()
		return nil, err
	}
	cfg.Director = func(c net.Conn) (netip.AddrPort, error) {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return netip.AddrPort{}, errors.New("not a TCP connection")
		}
		dst, err := nat.Destination(tc, m)
		if err != nil {
			return netip.AddrPort{}, err
		}
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		// A connection made to the proxy itself would be relayed to the
		// proxy again.
		if local[dst.Addr()] {
			return netip.AddrPort{}, fmt.Errorf("connection to the proxy's own address %s, not intercepted", dst)
		}
		return dst, nil
	}
	return ln, nil
}

// localAddrs returns the host's own addresses (unmapped).
func localAddrs() (map[netip.Addr]bool, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]bool{}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			m[p.Addr().Unmap()] = true
		}
	}
	return m, nil
}

// installInterception installs ftpalg's own interception and divert rules
// in transparent mode (rules/intercept), after the listener is open so no
// intercepted connection is refused. Without --intercept it reports after a
// while whether intercepted connections arrive at all.
func (f *runFlags) installInterception(ctx context.Context, log *zap.Logger, ln net.Listener, srv *proxy.Server) (*intercept.Rules, error) {
	if f.mode != "transparent" {
		return nil, nil
	}
	method, err := nat.ParseMode(f.interception)
	if err != nil {
		return nil, err
	}
	c := intercept.Config{Mode: method, Divert: f.divert, Instance: f.fw.instance, Iptables: f.fw.iptables,
		Logger: log, Table: f.interceptTable, Mark: uint32(f.interceptMark), Port: uint16(f.interceptPort),
		ListenPort: uint16(nat.AddrPortOf(ln.Addr()).Port())}
	if a := nat.AddrPortOf(ln.Addr()).Addr(); a.IsUnspecified() {
		c.OnIP = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	} else {
		c.OnIP = []netip.Addr{a}
	}
	for _, item := range strings.Split(f.intercept, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			c.Sources = append(c.Sources, p)
		} else if a, err := netip.ParseAddr(item); err == nil {
			c.Sources = append(c.Sources, netip.PrefixFrom(a, a.BitLen()))
		} else {
			c.Interfaces = append(c.Interfaces, item)
		}
	}
	if len(c.Sources) == 0 && len(c.Interfaces) == 0 {
		log.Info("no --intercept: expecting your own interception rules (see rules/intercept/README.md)")
		time.AfterFunc(30*time.Second, func() {
			if srv.Accepted() == 0 && ctx.Err() == nil {
				log.Warn("no intercepted connection has arrived in 30s: check the REDIRECT/TPROXY rules", zap.Stringer("listen", ln.Addr()))
			}
		})
	}
	r, err := intercept.Install(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("interception rules: %w", err)
	}
	log.Info("interception rules installed", zap.String("method", method.String()), zap.Int("sources", len(c.Sources)),
		zap.Strings("interfaces", c.Interfaces), zap.Bool("divert", c.Divert))
	return r, nil
}
