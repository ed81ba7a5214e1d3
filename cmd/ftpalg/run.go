package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
)

// runFlags are the flags of `ftpalg run`.
type runFlags struct {
	listen, upstream, advertise, dataPorts          string
	logFormat, logLevel                             string
	trustPASV                                       bool
	fw                                              firewallFlags
	connectTimeout, dataTimeout, idleTimeout, grace time.Duration
	maxSessions, maxPerIP                           int
}

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", ":21", "address to accept FTP control connections on")
	fs.StringVar(&f.upstream, "upstream", "", "the FTP server, HOST:PORT (required)")
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
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	// Setup after the listen succeeded, so a failed start leaves no rules;
	// it also removes what a crashed run left behind.
	if err := fw.Setup(ctx); err != nil {
		ln.Close()
		return fmt.Errorf("firewall %s: %w", fw.Name(), err)
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
	if f.upstream == "" {
		return cfg, errors.New("run: --upstream HOST:PORT is required")
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
