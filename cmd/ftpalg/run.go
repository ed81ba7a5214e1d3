package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/intercept"
)

// teardownTimeout bounds each removal of kernel objects at exit or after
// a failed start (firewall teardown, interception removal).
const teardownTimeout = 30 * time.Second

// noInterceptionWarnAfter is how long transparent mode without
// --intercept waits for a first intercepted connection before it warns.
const noInterceptionWarnAfter = 30 * time.Second

func runCmd(args []string) error {
	rc, err := parseRun(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	level := zap.NewAtomicLevelAt(rc.logLevel)
	log, err := newLogger(rc.logFormat, level)
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return run(ctx, log, level, rc)
}

// run starts what rc describes and, when ctx ends, shuts it down in order:
// the firewall watch first (so it cannot put back what shutdown removes),
// then the interception rules (new connections take the router's normal
// path again), then the listener, then the sessions after rc.grace, then
// the firewall backend's objects. A failed start removes what it had set
// up.
func run(ctx context.Context, log *zap.Logger, level zap.AtomicLevel, rc runConfig) error {
	// One process per set of kernel object names in a network namespace
	// (a process that owns none needs no claim).
	if rc.fw.name != "none" || rc.dataPath != rules.Splice || rc.intercept != nil {
		release, err := rules.Claim(rc.fw.instance)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer release()
	}
	fw, err := rc.fw.backend(ctx, log, true)
	if err != nil {
		return err
	}
	var m *metrics.Metrics
	if rc.metricsListen != "" {
		m = metrics.New()
		fw = m.Backend(fw)
	}
	cfg := rc.proxy
	cfg.Logger, cfg.Firewall = log, fw
	if m != nil {
		cfg.Observer = m.Observer()
	}
	dp, err := startDataPath(ctx, log, rc)
	if err != nil {
		return err
	}
	if dp != nil {
		defer func() {
			if err := teardown(dp); err != nil {
				log.Warn("data path teardown failed", zap.String("data_path", dp.Name()), zap.Error(err))
			}
		}()
		cfg.DataPath = dp
		if m != nil {
			cfg.DataPath = m.DataPath(dp)
		}
	}
	ln, err := listen(ctx, rc, &cfg)
	if err != nil {
		return err
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	if m != nil {
		stopMetrics, err := serveMetrics(ctx, log, level, rc.metricsListen, m, srv)
		if err != nil {
			ln.Close()
			return err
		}
		defer stopMetrics()
	}
	// Setup after the listen succeeded, so a failed start leaves no rules;
	// it also removes what a crashed run left behind.
	if err := fw.Setup(ctx); err != nil {
		ln.Close()
		// Remove whatever part of the setup did happen.
		return errors.Join(fmt.Errorf("firewall %s: %w", fw.Name(), err), teardown(fw))
	}
	if rc.intercept != nil && len(rc.intercept.Sources) == 0 && len(rc.intercept.Interfaces) == 0 {
		log.Info("no --intercept: expecting your own interception rules (see rules/intercept/README.md)")
		t := time.AfterFunc(noInterceptionWarnAfter, func() {
			if srv.Accepted() == 0 && ctx.Err() == nil {
				log.Warn("no intercepted connection has arrived in 30s: check the REDIRECT/TPROXY rules", zap.Stringer("listen", ln.Addr()))
			}
		})
		defer t.Stop()
	}
	icpt, err := installInterception(ctx, log, rc, ln)
	if err != nil {
		ln.Close()
		return errors.Join(err, teardown(fw))
	}
	// A firewall reload removes hooks, chains, sets and interception
	// rules; the watch puts them back, with the open pinholes.
	stopWatch := rules.StartWatch(ctx, rc.firewallCheck, log, watched(fw, icpt, dp)...)
	defer stopWatch()
	if icpt != nil {
		remove := func() {
			stopWatch()
			rctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
			defer cancel()
			if err := icpt.Remove(rctx); err != nil {
				log.Warn("removing interception rules failed", zap.Error(err))
			}
		}
		// On SIGTERM the interception goes first: during the grace period
		// new FTP connections then take the router's normal path instead
		// of being redirected to a listener that no longer accepts.
		removed := make(chan struct{})
		stopRemove := context.AfterFunc(ctx, func() {
			defer close(removed)
			remove()
		})
		defer func() {
			if stopRemove() { // Serve ended without a signal
				remove()
				return
			}
			<-removed
		}()
	}
	serveErr := srv.Serve(ctx, ln, rc.grace)
	log.Info("stopped accepting; sessions done")
	stopWatch()
	if err := teardown(fw); err != nil {
		log.Warn("firewall teardown failed", zap.String("firewall", fw.Name()), zap.Error(err))
	}
	return serveErr
}

// serveMetrics serves /metrics, /healthz, /readyz (the proxy accepting
// and the firewall's last check fine) and /log/level (GET shows, PUT
// {"level":"debug"} sets the log level) on addr, until stop: after the
// sessions have drained, so the drain shows as not ready.
func serveMetrics(ctx context.Context, log *zap.Logger, level zap.AtomicLevel, addr string, m *metrics.Metrics, srv *proxy.Server) (stop func(), err error) {
	ln, err := metrics.Listen(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("run: --metrics-listen: %w", err)
	}
	h := m.Handler([]metrics.Check{{Name: "proxy", Func: srv.Ready}, {Name: "firewall", Func: m.FirewallHealthy}},
		map[string]http.Handler{"/log/level": level})
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := metrics.Serve(mctx, ln, h, log); err != nil {
			log.Warn("metrics server failed", zap.Error(err))
		}
	}()
	return func() { cancel(); <-done }, nil
}

// watched lists what the firewall watch keeps in place: the backend, unless
// it is "none", and the interception rules, when installed.
func watched(fw rules.Backend, icpt *intercept.Rules, dp rules.DataPath) []rules.Syncer {
	var ss []rules.Syncer
	if fw.Name() != "none" {
		ss = append(ss, fw)
	}
	if s, ok := dp.(rules.Syncer); ok && dp != nil {
		ss = append(ss, s)
	}
	if icpt != nil {
		ss = append(ss, icpt)
	}
	return ss
}

// startDataPath sets up the kernel data path --data-path asks for: auto
// takes the best one that works here (and splice when none does, with the
// reason logged), kernel the nftables one or fails with what to fix,
// splice none. nil means splice.
func startDataPath(ctx context.Context, log *zap.Logger, rc runConfig) (rules.DataPath, error) {
	opts := rc.fw.options(log)
	name := rc.dataPath
	switch name {
	case rules.Splice:
		log.Info("data path", zap.String("data_path", rules.Splice), zap.String("reason", "--data-path splice"))
		return nil, nil
	case "auto":
		name, _ = rules.DetectDataPath(ctx, opts) // logs its choice and reason
		if name == rules.Splice {
			return nil, nil
		}
	case "kernel":
		names := rules.DataPathNames()
		if len(names) < 2 { // Splice only
			return nil, errors.New("run: --data-path kernel: this build has no kernel data path")
		}
		name = names[0]
	}
	dp, err := rules.NewDataPath(name, opts)
	if err != nil {
		return nil, fmt.Errorf("run: --data-path: %w", err)
	}
	if err := dp.Setup(ctx); err != nil {
		err = errors.Join(fmt.Errorf("data path %s: %w", name, err), teardown(dp))
		if rc.dataPath == "auto" {
			log.Warn("data path", zap.String("data_path", rules.Splice), zap.String("reason", "the kernel data path could not be set up: "+err.Error()))
			return nil, nil
		}
		return nil, err
	}
	log.Info("data path", zap.String("data_path", name))
	return dp, nil
}

// tearable is what teardown removes: a firewall backend or a data path.
type tearable interface{ Teardown(context.Context) error }

// teardown removes the firewall backend's kernel objects, within
// teardownTimeout.
func teardown(fw tearable) error {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	return fw.Teardown(ctx)
}

// listen opens the control listener: an ordinary one in reverse mode, the
// intercepting one (nat.ListenIntercepted) in transparent mode, where it
// also sets cfg.Director to find each connection's original destination.
func listen(ctx context.Context, rc runConfig, cfg *proxy.Config) (net.Listener, error) {
	if rc.mode == 0 {
		ln, err := nat.Listen(ctx, rc.listen)
		if err != nil {
			return nil, fmt.Errorf("run: %w", err)
		}
		return ln, nil
	}
	ln, err := nat.ListenIntercepted(ctx, rc.mode, rc.listen[0])
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	dir, err := nat.Director(rc.mode)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("run: %w", err)
	}
	cfg.Director = dir
	return ln, nil
}

// installInterception installs ftpalg's own interception and divert rules
// in transparent mode (rules/intercept), after the listener is open so no
// intercepted connection is refused. It returns nil in reverse mode.
func installInterception(ctx context.Context, log *zap.Logger, rc runConfig, ln net.Listener) (*intercept.Rules, error) {
	if rc.intercept == nil {
		return nil, nil
	}
	c := listeningOn(*rc.intercept, nat.AddrPortOf(ln.Addr()))
	c.Logger = log
	r, err := intercept.Install(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("interception rules: %w", err)
	}
	log.Info("interception rules installed", zap.String("method", c.Mode.String()), zap.Int("sources", len(c.Sources)),
		zap.Strings("interfaces", c.Interfaces), zap.Bool("divert", c.Divert))
	return r, nil
}

// newLogger builds the zap logger. Sampling is off: zap's production
// sampling drops repeated messages, and per-session lifecycle lines are
// exactly the repeated messages an operator needs.
func newLogger(format string, level zap.AtomicLevel) (*zap.Logger, error) {
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
	cfg.Level = level
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build(zap.WithCaller(false))
}
