package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, log, level, rc, hup)
}

// run starts what rc describes, reloads the configuration file on each
// signal from hup (reload.go says what a reload changes), and, when ctx
// ends, shuts down in order: the firewall watch first (so it cannot put
// back what shutdown removes), then the interception rules (new
// connections take the router's normal path again), then the listeners of
// every front end, then their sessions after rc.grace, then the firewall
// backend's objects. A failed start removes what it had set up.
func run(ctx context.Context, log *zap.Logger, level zap.AtomicLevel, rc runConfig, hup <-chan os.Signal) error {
	// One process per set of kernel object names in a network namespace
	// (a process that owns none needs no claim).
	if rc.ownsKernelObjects() {
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
	fes := &frontends{log: log, grace: rc.grace, failed: make(chan error, 1)}
	fes.base.Logger, fes.base.Firewall = log, fw
	if m != nil {
		fes.base.Observer = m.Observer()
	}
	// Every listener first, so a failed start leaves no rules.
	for _, fe := range rc.frontends {
		fr, err := fes.listen(ctx, fe)
		if err != nil {
			fes.closeAll()
			return err
		}
		fes.list = append(fes.list, fr)
	}
	// Setup after the listen succeeded, so a failed start leaves no rules;
	// it also removes what a crashed run left behind.
	if err := fw.Setup(ctx); err != nil {
		fes.closeAll()
		// Remove whatever part of the setup did happen.
		return errors.Join(fmt.Errorf("firewall %s: %w", fw.Name(), err), teardown(fw))
	}
	// The data path after the firewall: its check of the forward chains
	// that would drop the forwarded data, and --data-path auto's probe,
	// must see the pinhole backend's FORWARD hook, which admits each
	// mapped connection (before it, a default-DROP router was warned
	// about, and auto spliced, although the hook was about to be there).
	dp, err := startDataPath(ctx, log, rc)
	if err != nil {
		fes.closeAll()
		return errors.Join(err, teardown(fw))
	}
	if dp != nil {
		defer func() {
			if err := teardown(dp); err != nil {
				log.Warn("data path teardown failed", zap.String("data_path", dp.Name()), zap.Error(err))
			}
		}()
		fes.base.DataPath = dp
		if m != nil {
			fes.base.DataPath = m.DataPath(dp)
		}
	}
	// The servers once the data path is known: each takes it into its
	// configuration.
	for _, fr := range fes.list {
		if err := fes.newServer(fr); err != nil {
			fes.closeAll()
			return errors.Join(err, teardown(fw))
		}
	}
	if m != nil {
		stopMetrics, err := serveMetrics(ctx, log, level, rc.metricsListen, m, fes.ready)
		if err != nil {
			fes.closeAll()
			return errors.Join(err, teardown(fw))
		}
		defer stopMetrics()
	}
	tp := fes.transparent()
	if tp != nil && len(tp.fe.intercept.Sources) == 0 && len(tp.fe.intercept.Interfaces) == 0 {
		log.Info("no --intercept: expecting your own interception rules (see rules/intercept/README.md)")
		t := time.AfterFunc(noInterceptionWarnAfter, func() {
			if tp.srv.Accepted() == 0 && ctx.Err() == nil {
				log.Warn("no intercepted connection has arrived in 30s: check the REDIRECT/TPROXY rules", zap.Stringer("listen", tp.ln.Addr()))
			}
		})
		defer t.Stop()
	}
	icpt, err := installInterception(ctx, log, tp)
	if err != nil {
		fes.closeAll()
		return errors.Join(err, teardown(fw))
	}
	// A firewall reload removes hooks, chains, sets and interception
	// rules; the watch puts them back, with the open pinholes.
	stopWatch := rules.StartWatch(ctx, rc.firewallCheck, log, watched(fw, icpt, dp)...)
	defer stopWatch()
	// runCtx ends with ctx, or when a front end fails.
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
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
		stopRemove := context.AfterFunc(runCtx, func() {
			defer close(removed)
			remove()
		})
		defer func() {
			if stopRemove() { // never started
				remove()
				return
			}
			<-removed
		}()
	}
	for _, fr := range fes.list {
		fes.start(runCtx, fr)
	}
	serveErr := fes.serve(runCtx, level, rc, hup)
	cancelRun()
	fes.wg.Wait()
	log.Info("stopped accepting; sessions done")
	stopWatch()
	if err := teardown(fw); err != nil {
		log.Warn("firewall teardown failed", zap.String("firewall", fw.Name()), zap.Error(err))
	}
	return serveErr
}

// Messages of a reload, which operators and tests match on.
const (
	msgReloaded       = "configuration reloaded"
	msgReloadRejected = "configuration reload rejected, the running configuration stays"
	msgNoReload       = "SIGHUP ignored: no --config file to reload"
)

// frontends are the running front ends: one proxy.Server each, serving
// the front end's listeners. Only run's goroutine changes them; /readyz
// reads them.
type frontends struct {
	log *zap.Logger
	// base has what run adds to every front end's proxy.Config: Logger,
	// Firewall, Observer and DataPath.
	base  proxy.Config
	grace time.Duration
	// failed receives the error of a front end that stopped serving
	// without being asked to.
	failed chan error
	// wg counts every front end's Serve, removed ones' included.
	wg sync.WaitGroup

	mu   sync.Mutex // guards list
	list []*frontendRun
}

// frontendRun is one running front end.
type frontendRun struct {
	name string // fe.name, which never changes (/readyz reads it)
	// fe is the configuration it runs; only run's goroutine reads it.
	fe  frontend
	srv *proxy.Server
	// ln is what srv accepts from: in reverse mode sw, a switch over lns
	// (one listener per listen address), so that a reload can open and
	// close addresses; in transparent mode the intercepting listener.
	ln       net.Listener
	sw       *nat.Switch
	lns      map[string]net.Listener
	director func(net.Conn) (netip.AddrPort, error)
	// implicit holds the listeners of fe.implicit: their sessions start
	// with a TLS handshake.
	implicit nat.ListenSet
	cancel   context.CancelFunc
	removed  atomic.Bool
}

// proxyConfig is fe's proxy.Config, for fr, with what run adds.
func (fes *frontends) proxyConfig(fe frontend, fr *frontendRun) (proxy.Config, error) {
	cfg := fe.proxy
	cfg.Logger, cfg.Firewall, cfg.Observer, cfg.DataPath = fes.base.Logger, fes.base.Firewall, fes.base.Observer, fes.base.DataPath
	if fe.name != "" {
		cfg.Logger = cfg.Logger.With(zap.String("frontend", fe.name))
	}
	cfg.Director = fr.director
	if fe.tls != nil && fe.tls.certPEM != nil {
		// Which addresses are implicit FTPS may change with a reload
		// that changes nothing else: the set is read per connection.
		cfg.ImplicitTLS = fr.implicit.Has
	}
	return cfg, applyTLS(fes.log, fe, &cfg)
}

// setImplicit points fr.implicit at the listeners of fe's implicit FTPS
// addresses.
func (fr *frontendRun) setImplicit(fe frontend) {
	var lns []net.Listener
	for _, a := range fe.implicit {
		if ln, ok := fr.lns[a]; ok {
			lns = append(lns, ln)
		}
	}
	fr.implicit.Set(lns...)
}

// open opens fe's listeners and makes its server, not yet serving.
func (fes *frontends) open(ctx context.Context, fe frontend) (*frontendRun, error) {
	fr, err := fes.listen(ctx, fe)
	if err != nil {
		return nil, err
	}
	if err := fes.newServer(fr); err != nil {
		return nil, err
	}
	return fr, nil
}

// listen opens fe's listeners; its server is made by newServer.
func (fes *frontends) listen(ctx context.Context, fe frontend) (*frontendRun, error) {
	fr := &frontendRun{name: fe.name, fe: fe}
	if fe.mode == 0 {
		lns, err := listenEach(ctx, fe.listen)
		if err != nil {
			return nil, fes.wrap(fe.name, err)
		}
		fr.lns = lns
		fr.setImplicit(fe)
		fr.sw = nat.NewSwitch(inOrder(lns, fe.listen)...)
		fr.ln = fr.sw
	} else {
		ln, err := nat.ListenIntercepted(ctx, fe.mode, fe.listen[0])
		if err != nil {
			return nil, fes.wrap(fe.name, err)
		}
		dir, err := nat.Director(fe.mode)
		if err != nil {
			ln.Close()
			return nil, fes.wrap(fe.name, err)
		}
		fr.ln, fr.director = ln, dir
	}
	return fr, nil
}

// newServer makes fr's server with what run adds to its configuration
// now (fes.base); on failure it closes fr's listeners.
func (fes *frontends) newServer(fr *frontendRun) error {
	cfg, err := fes.proxyConfig(fr.fe, fr)
	if err == nil {
		fr.srv, err = proxy.NewServer(cfg)
	}
	if err != nil {
		fr.ln.Close()
		return fes.wrap(fr.fe.name, err)
	}
	return nil
}

// wrap says which front end err is about.
func (fes *frontends) wrap(name string, err error) error {
	if name == "" {
		return fmt.Errorf("run: %w", err)
	}
	return fmt.Errorf("run: frontend %q: %w", name, err)
}

// listenEach opens a listener on each address (nat.Listen); a failure
// closes what it opened.
func listenEach(ctx context.Context, addrs []string) (map[string]net.Listener, error) {
	lns := map[string]net.Listener{}
	for _, a := range addrs {
		ln, err := nat.Listen(ctx, []string{a})
		if err != nil {
			closeListeners(lns)
			return nil, err
		}
		lns[a] = ln
	}
	return lns, nil
}

func closeListeners(lns map[string]net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// inOrder lists lns in the order of addrs.
func inOrder(lns map[string]net.Listener, addrs []string) []net.Listener {
	out := make([]net.Listener, 0, len(addrs))
	for _, a := range addrs {
		if ln, ok := lns[a]; ok {
			out = append(out, ln)
		}
	}
	return out
}

// closeAll closes the listeners of front ends that never served (a
// failed start).
func (fes *frontends) closeAll() {
	for _, fr := range fes.list {
		fr.ln.Close()
	}
}

// transparent returns the transparent front end, or nil.
func (fes *frontends) transparent() *frontendRun {
	for _, fr := range fes.list {
		if fr.fe.proxy.Transparent {
			return fr
		}
	}
	return nil
}

// start serves fr until ctx ends or fr is removed.
func (fes *frontends) start(ctx context.Context, fr *frontendRun) {
	fctx, cancel := context.WithCancel(ctx)
	fr.cancel = cancel
	fes.wg.Go(func() {
		defer cancel()
		err := fr.srv.Serve(fctx, fr.ln, fes.grace)
		switch {
		case fr.removed.Load():
			fes.log.Info("front end removed: sessions done", zap.String("frontend", fr.name), zap.Error(err))
		case fctx.Err() == nil || err != nil:
			if err == nil {
				err = errors.New("stopped accepting")
			}
			select {
			case fes.failed <- fes.wrap(fr.name, err):
			default: // one failure is enough to end the run
			}
		}
	})
}

// ready is nil when every front end accepts sessions (/readyz).
func (fes *frontends) ready() error {
	fes.mu.Lock()
	defer fes.mu.Unlock()
	var errs []error
	for _, fr := range fes.list {
		if err := fr.srv.Ready(); err != nil {
			if fr.name != "" {
				err = fmt.Errorf("frontend %q: %w", fr.name, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// serve waits for ctx to end or a front end to fail, reloading the
// configuration on each signal from hup. It returns the failure.
func (fes *frontends) serve(ctx context.Context, level zap.AtomicLevel, rc runConfig, hup <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-fes.failed:
			return err
		case <-hup:
		}
		if rc.file == "" {
			fes.log.Warn(msgNoReload)
			continue
		}
		next, err := loadConfig(rc.file, rc.overrides)
		if err == nil {
			err = fes.reload(ctx, level, rc, next)
		}
		if err != nil {
			fes.log.Error(msgReloadRejected, zap.String("config", rc.file), zap.Error(err))
			continue
		}
		rc = next
	}
}

// reload goes from the running configuration old to next, all of it or
// nothing (see reload.go): it opens the new listeners and makes the new
// front ends' servers first, and changes nothing if one fails.
func (fes *frontends) reload(ctx context.Context, level zap.AtomicLevel, old, next runConfig) error {
	p, err := planReload(old, next)
	if err != nil {
		return err
	}
	opened := map[string]map[string]net.Listener{}
	var added []*frontendRun
	undo := func(err error) error {
		for _, lns := range opened {
			closeListeners(lns)
		}
		for _, fr := range added {
			fr.ln.Close()
		}
		return err
	}
	for _, c := range p.change {
		lns, err := listenEach(ctx, c.open)
		if err != nil {
			return undo(fmt.Errorf("frontend %q: %w", c.fe.name, err))
		}
		opened[c.fe.name] = lns
	}
	for _, fe := range p.add {
		fr, err := fes.open(ctx, fe)
		if err != nil {
			return undo(err)
		}
		added = append(added, fr)
	}
	// Nothing can fail from here on.
	if p.level != nil {
		level.SetLevel(*p.level)
	}
	byName := map[string]*frontendRun{}
	for _, fr := range fes.list {
		byName[fr.name] = fr
	}
	for _, c := range p.change {
		fr := byName[c.fe.name]
		if c.reconfigure {
			cfg, err := fes.proxyConfig(c.fe, fr)
			if err == nil {
				err = fr.srv.Reconfigure(cfg)
			}
			if err != nil {
				// The configuration was checked as NewServer checks it.
				fes.log.Error("front end keeps its settings", zap.String("frontend", c.fe.name), zap.Error(err))
			}
		}
		if fr.sw != nil {
			for _, a := range c.close {
				delete(fr.lns, a) // Set closes it
			}
			maps.Copy(fr.lns, opened[c.fe.name])
			// Implicit first: a connection on a new implicit address
			// must not start as plain FTP.
			fr.setImplicit(c.fe)
			if len(c.open) > 0 || len(c.close) > 0 {
				fr.sw.Set(inOrder(fr.lns, c.fe.listen)...)
			}
		}
		fr.fe = c.fe
	}
	for _, name := range p.remove {
		fr := byName[name]
		fr.removed.Store(true)
		fr.cancel()
		delete(byName, name)
	}
	for _, fr := range added {
		fes.start(ctx, fr)
		byName[fr.name] = fr
	}
	list := make([]*frontendRun, 0, len(next.frontends))
	for _, fe := range next.frontends {
		list = append(list, byName[fe.name])
	}
	fes.mu.Lock()
	fes.list = list
	fes.mu.Unlock()
	if len(p.summary) == 0 {
		p.summary = []string{"nothing"}
	}
	fes.log.Info(msgReloaded, zap.String("config", next.file), zap.Strings("changes", p.summary))
	return nil
}

// serveMetrics serves /metrics, /healthz, /readyz (every front end
// accepting and the firewall's last check fine) and /log/level (GET
// shows, PUT {"level":"debug"} sets the log level) on addr, until stop:
// after the sessions have drained, so the drain shows as not ready.
func serveMetrics(ctx context.Context, log *zap.Logger, level zap.AtomicLevel, addr string, m *metrics.Metrics, ready func() error) (stop func(), err error) {
	ln, err := metrics.Listen(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("run: --metrics-listen: %w", err)
	}
	h := m.Handler([]metrics.Check{{Name: "proxy", Func: ready}, {Name: "firewall", Func: m.FirewallHealthy}},
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

// installInterception installs ftpalg's own interception and divert rules
// in transparent mode (rules/intercept), after the listener is open so no
// intercepted connection is refused. It returns nil without a transparent
// front end.
func installInterception(ctx context.Context, log *zap.Logger, fr *frontendRun) (*intercept.Rules, error) {
	if fr == nil || fr.fe.intercept == nil {
		return nil, nil
	}
	c := listeningOn(*fr.fe.intercept, nat.AddrPortOf(fr.ln.Addr()))
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
// exactly the repeated messages an operator needs. Error lines carry no
// stack trace: they report the world (a rejected reload), not a bug.
func newLogger(format string, level zap.AtomicLevel) (*zap.Logger, error) {
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.DisableStacktrace = true
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
