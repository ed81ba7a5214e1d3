package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/intercept"
)

// The settings of `ftpalg run` come in two scopes: the process's own
// (globalFlags) and each front end's (frontendFlags). The flags are the
// schema: every flag is a key of the configuration file (configfile.go)
// with the same name, in the scope of the struct that registers it, and
// no key exists without its flag.

// globalFlags are the settings of the whole process: the flags that are
// not per front end, and the keys at the top level of a configuration
// file.
type globalFlags struct {
	logFormat, logLevel string
	fw                  firewallFlags
	firewallCheck       time.Duration
	grace               time.Duration
	metricsListen       string
	dataPath            string
}

// frontendFlags are the settings of one front end: where it listens, the
// server it relays to, its data ports, limits and timeouts, and in
// transparent mode its interception. In a configuration file they are the
// keys of an entry of `frontends` (or, as defaults for every front end,
// of the top level).
type frontendFlags struct {
	listen                                   listFlag
	upstream, advertise, dataPorts           string
	epsv                                     string
	mode, interception, upstreamSource       string
	intercept                                listFlag
	interceptPort                            int
	route                                    routeFlags
	divert                                   bool
	trustPASV                                bool
	connectTimeout, dataTimeout, idleTimeout time.Duration
	dataIdleTimeout, loginTimeout, keepAlive time.Duration
	maxSessions, maxPerIP                    int
	tls                                      tlsFlags
}

// listFlag is a flag that may be given several times, each time with one
// value or a comma-separated list; the first use replaces the default.
type listFlag struct {
	values []string
	set    bool
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(s string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			l.values = append(l.values, v)
		}
	}
	return nil
}

// Get returns the values (flag.Getter).
func (l *listFlag) Get() any { return l.values }

// reset makes the next Set replace the values again: a key of the
// configuration file replaces what an outer level set.
func (l *listFlag) reset() { l.set = false }

func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&g.grace, "shutdown-grace", 30*time.Second, "on SIGINT/SIGTERM, how long running sessions may finish before they are closed")
	g.fw.register(fs)
	fs.DurationVar(&g.firewallCheck, "firewall-check-interval", rules.DefaultWatchInterval, "how often to check that ftpalg's firewall hooks, chains, sets and interception rules are still there, and restore them and the open pinholes after a firewall reload removed them (0: never)")
	fs.StringVar(&g.dataPath, "data-path", "auto", "how data connections are carried: kernel (nftables NAT, the data never passes through ftpalg), splice (through ftpalg's sockets, zero-copy) or auto (kernel where the host allows it, reported at start; sessions the kernel cannot serve are spliced and say why)")
	fs.StringVar(&g.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics), /healthz, /readyz and /log/level on this address, e.g. 127.0.0.1:9121 (default: off)")
	fs.StringVar(&g.logFormat, "log-format", "console", "log format: json or console")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error (a reload with --config applies a changed one)")
}

func (f *frontendFlags) register(fs *flag.FlagSet) {
	f.listen = listFlag{values: []string{":21"}}
	fs.Var(&f.listen, "listen", "address to accept FTP control connections on, IP:PORT or :PORT (both families); repeat it or give a comma-separated list for several (reverse mode)")
	fs.StringVar(&f.upstream, "upstream", "", "the FTP server, HOST:PORT (required in reverse mode)")
	fs.StringVar(&f.mode, "mode", "reverse", "reverse: relay every client to --upstream; transparent: relay each intercepted connection to its original destination (gateway on a router)")
	fs.StringVar(&f.interception, "interception", nat.ModeRedirect.String(), "transparent mode: how connections are intercepted: redirect (iptables REDIRECT, original destination from SO_ORIGINAL_DST) or tproxy (TPROXY, IP_TRANSPARENT listener)")
	fs.Var(&f.intercept, "intercept", "transparent mode: install the interception rules for these client networks or incoming interfaces (comma-separated, e.g. 198.51.100.0/24,lan0); without it ftpalg expects your own rules")
	fs.IntVar(&f.interceptPort, "intercept-port", intercept.DefaultPort, "transparent mode: the FTP control port to intercept")
	f.route.register(fs)
	fs.BoolVar(&f.divert, "divert", true, "transparent mode: install the divert rule and policy route that deliver data connections to ftpalg's transparent sockets")
	fs.StringVar(&f.upstreamSource, "upstream-source", "router", "transparent mode: connect to servers from the router's address (router) or from the client's (client, needs the divert routing in rules/intercept/README.md)")
	fs.StringVar(&f.advertise, "advertise", "", "address announced to clients in passive replies (default: the local address the client connected to); PREFIX=ADDRESS entries, comma-separated, announce ADDRESS to the clients in PREFIX instead (the longest prefix wins), e.g. 203.0.113.7,10.0.0.0/8=10.0.0.11")
	fs.StringVar(&f.epsv, "epsv", "on", "on: relay EPSV (translated where the server lacks it); refuse: answer the client's EPSV and EPSV ALL with 502 and leave EPSV out of FEAT, so that clients use PASV, whose reply carries the --advertise address (a load balancer that forwards only the control port of a virtual address: a 229 has only a port, which clients dial on the virtual address); IPv6 clients are then left with LPSV as their only passive mode")
	fs.StringVar(&f.dataPorts, "data-ports", "50000-50999", "port range for data connections, LO-HI, on both sides (0: any port)")
	fs.BoolVar(&f.trustPASV, "trust-pasv-address", false, "dial the address a server announces in 227 even when it is not the server's control address (default: dial the control address, as curl and lftp do)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", proxy.DefaultConnectTimeout, "timeout for connecting to the server and to data peers")
	fs.DurationVar(&f.dataTimeout, "data-timeout", proxy.DefaultDataAcceptTimeout, "how long an announced data port waits for its connection")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close a control connection silent this long (never during a transfer); 0 uses the default, negative disables")
	fs.DurationVar(&f.dataIdleTimeout, "data-idle-timeout", proxy.DefaultDataIdleTimeout, "abort a transfer that moves no byte in either direction this long (a peer that stopped reading); negative disables")
	fs.DurationVar(&f.loginTimeout, "login-timeout", proxy.DefaultLoginTimeout, "close a session not logged in (no 230 from the server) this long after it connected; negative disables")
	fs.DurationVar(&f.keepAlive, "tcp-keepalive", proxy.DefaultKeepAlive, "TCP keepalive period of control and data connections (each one jittered by ±12.5%); negative disables")
	fs.IntVar(&f.maxSessions, "max-sessions", 0, fmt.Sprintf("most concurrent sessions; more are refused with 421 (0: %d, or fewer if RLIMIT_NOFILE cannot carry them; negative: no limit)", proxy.DefaultMaxSessions))
	fs.IntVar(&f.maxPerIP, "max-sessions-per-ip", proxy.DefaultMaxSessionsPerIP, "most concurrent sessions from one client address (0 or negative: no limit)")
	f.tls.register(fs)
}

// runFlagSet is the flag set of `ftpalg run` (and `check-config`): g's
// and f's flags, and --config.
func runFlagSet(name string, out io.Writer, g *globalFlags, f *frontendFlags, file *string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	g.register(fs)
	f.register(fs)
	fs.StringVar(file, "config", "", "read the settings from this YAML file (see deploy/ftpalg.yaml); flags given as well override it, and SIGHUP reads it again")
	return fs
}

// routeFlags name the policy routing of transparent mode. `run` and
// `rules` share them, so that `rules cleanup` finds the route of a run
// that used another table.
type routeFlags struct {
	table int
	mark  uint
}

func (f *routeFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.table, "intercept-table", intercept.DefaultTable, "transparent mode: routing table of the divert/TPROXY policy route")
	fs.UintVar(&f.mark, "intercept-mark", intercept.DefaultMark, "transparent mode: fwmark bit of TPROXY and the divert rule")
}

// apply sets c's Table and Mark.
func (f routeFlags) apply(c *intercept.Config) error {
	if f.mark > math.MaxUint32 {
		return fmt.Errorf("--intercept-mark 0x%x: a mark has 32 bits", f.mark)
	}
	c.Table, c.Mark = f.table, uint32(f.mark)
	return nil
}

// runConfig is everything `ftpalg run` starts, derived from the flags
// and the configuration file (parseRun, loadConfig) without opening a
// socket or asking the kernel.
// ownsKernelObjects reports whether the process will own firewall,
// data path or interception objects (and so needs its instance claimed).
func (rc runConfig) ownsKernelObjects() bool {
	if rc.fw.name != "none" || rc.dataPath != rules.Splice {
		return true
	}
	for _, fe := range rc.frontends {
		if fe.intercept != nil {
			return true
		}
	}
	return false
}

type runConfig struct {
	// frontends are the front ends to run, at least one; their names are
	// unique, their listen addresses and data ports apart, and at most
	// one is transparent.
	frontends []frontend
	grace     time.Duration
	fw        firewallFlags
	// firewallCheck is the interval of rules.Watch; 0: no watch.
	firewallCheck time.Duration
	// metricsListen is where /metrics and the health endpoints are
	// served; empty: nowhere.
	metricsListen string
	// dataPath is --data-path: "auto", "splice" or a registered kernel
	// data path ("nftables").
	dataPath  string
	logFormat string
	logLevel  zapcore.Level
	// settings is the value of every global key, as text (for reload
	// and check-config).
	settings map[string]string

	// file is --config, which a reload reads again; empty: flags only.
	file string
	// overrides are the flags given on the command line with --config;
	// every load applies them over the file.
	overrides []flagValue
}

// frontend is one front end: a proxy.Server with its listeners.
type frontend struct {
	// name identifies it across reloads and in logs; empty when the
	// flags alone configure the process.
	name string
	// line is where it starts in the configuration file (0: not there).
	line int
	// listen are the addresses to listen on, implicit FTPS ones
	// included; implicit lists those (--listen-implicit).
	listen   []string
	implicit []string
	// mode is how connections are intercepted in transparent mode; zero in
	// reverse mode.
	mode nat.Mode
	// proxy lacks what only run can add: Firewall, Director, Observer,
	// DataPath and Logger.
	proxy proxy.Config
	// intercept is transparent mode's interception (nil in reverse mode).
	// It lacks what depends on the listener (ListenPort and OnIP, see
	// listeningOn) and Logger.
	intercept *intercept.Config
	// settings is the value of every front-end key, as text.
	settings map[string]string
	// tls is the front end's TLS material (nil: none); run turns it
	// into proxy.Config's TLS configurations (applyTLS).
	tls *tlsFiles
}

// plainListen is fe's listen addresses but the implicit FTPS ones.
func (fe frontend) plainListen() []string {
	var out []string
	for _, a := range fe.listen {
		if !slices.Contains(fe.implicit, a) {
			out = append(out, a)
		}
	}
	return out
}

// flagValue is a flag given on the command line.
type flagValue struct{ name, value string }

const runUsage = "Usage: ftpalg run --upstream HOST:PORT [flags]\n       ftpalg run --mode transparent [flags]\n       ftpalg run --config FILE [flags]\n\nFlags:\n"

// parseRun parses the arguments of `ftpalg run` into its configuration:
// from the flags alone, or with --config from the file and the flags
// given, which override it. Usage and flag errors are written to out; -h
// returns flag.ErrHelp.
func parseRun(args []string, out io.Writer) (runConfig, error) {
	var (
		g    globalFlags
		f    frontendFlags
		file string
	)
	fs := runFlagSet("ftpalg run", out, &g, &f, &file)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), runUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return runConfig{}, err
	}
	if fs.NArg() > 0 {
		return runConfig{}, fmt.Errorf("run: unexpected argument %q", fs.Arg(0))
	}
	if file != "" {
		return loadConfig(file, given(fs))
	}
	rc, err := g.config()
	if err != nil {
		return rc, fmt.Errorf("run: %w", err)
	}
	fe, err := f.config(rc.fw)
	if err != nil {
		return rc, fmt.Errorf("run: %w", err)
	}
	rc.settings, fe.settings = values(fs, globalKeys), values(fs, frontendKeys)
	rc.frontends = []frontend{fe}
	return rc, nil
}

// given lists the flags set on fs's command line, but --config.
func given(fs *flag.FlagSet) []flagValue {
	var out []flagValue
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "config" {
			out = append(out, flagValue{f.Name, f.Value.String()})
		}
	})
	return out
}

// values returns the value of each of fs's flags in scope, as text.
func values(fs *flag.FlagSet, scope map[string]bool) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if scope[f.Name] {
			m[f.Name] = f.Value.String()
		}
	})
	return m
}

// globalKeys and frontendKeys are the names of the global and the
// front-end flags: the keys of each scope of the configuration file.
var globalKeys, frontendKeys = func() (map[string]bool, map[string]bool) {
	names := func(register func(*flag.FlagSet)) map[string]bool {
		fs := flag.NewFlagSet("", flag.ContinueOnError)
		register(fs)
		m := map[string]bool{}
		fs.VisitAll(func(f *flag.Flag) { m[f.Name] = true })
		return m
	}
	return names(new(globalFlags).register), names(new(frontendFlags).register)
}()

// config checks the global flags and turns them into a runConfig without
// front ends.
func (g *globalFlags) config() (runConfig, error) {
	rc := runConfig{grace: g.grace, fw: g.fw, logFormat: g.logFormat, firewallCheck: g.firewallCheck,
		metricsListen: g.metricsListen, dataPath: g.dataPath}
	switch g.dataPath {
	case "auto", "kernel", rules.Splice:
	default:
		return rc, fmt.Errorf("--data-path %q: want kernel, splice or auto", g.dataPath)
	}
	if g.fw.name != "auto" && !slices.Contains(rules.Names(), g.fw.name) {
		return rc, fmt.Errorf("--firewall %q: want auto, %s", g.fw.name, strings.Join(rules.Names(), ", "))
	}
	if g.firewallCheck < 0 {
		return rc, fmt.Errorf("--firewall-check-interval %s: want 0 (off) or more", g.firewallCheck)
	}
	switch g.logFormat {
	case "json", "console":
	default:
		return rc, fmt.Errorf("--log-format %q: want json or console", g.logFormat)
	}
	lvl, err := zapcore.ParseLevel(g.logLevel)
	if err != nil {
		return rc, fmt.Errorf("--log-level %q: %w", g.logLevel, err)
	}
	rc.logLevel = lvl
	return rc, nil
}

// config checks a front end's flags and turns them into a frontend (with
// the firewall's instance and iptables variant for its interception).
// Flags of transparent mode are not looked at in reverse mode.
func (f *frontendFlags) config(fw firewallFlags) (frontend, error) {
	fe := frontend{listen: f.listen.values}
	if len(fe.listen) == 0 {
		return fe, errors.New("--listen: no address")
	}
	cfg := proxy.Config{
		Upstream:          f.upstream,
		TrustPASVAddress:  f.trustPASV,
		ConnectTimeout:    f.connectTimeout,
		DataAcceptTimeout: f.dataTimeout,
		IdleTimeout:       f.idleTimeout,
		DataIdleTimeout:   f.dataIdleTimeout,
		LoginTimeout:      f.loginTimeout,
		KeepAlive:         f.keepAlive,
		MaxSessions:       f.maxSessions,
		MaxSessionsPerIP:  f.maxPerIP,
	}
	switch f.mode {
	case "reverse":
		if f.upstream == "" {
			return fe, errors.New("--upstream HOST:PORT is required in reverse mode")
		}
		if _, _, err := net.SplitHostPort(f.upstream); err != nil {
			return fe, fmt.Errorf("--upstream %q: want HOST:PORT", f.upstream)
		}
	case "transparent":
		if f.upstream != "" {
			return fe, errors.New("--upstream makes no sense with --mode transparent: the server is each connection's original destination")
		}
		if len(fe.listen) > 1 {
			return fe, fmt.Errorf("--listen %s: transparent mode takes one listen address (\":PORT\" listens on both families)", strings.Join(fe.listen, ","))
		}
		cfg.Transparent = true
		switch f.upstreamSource {
		case "router":
		case "client":
			cfg.UpstreamSourceClient = true
		default:
			return fe, fmt.Errorf("--upstream-source %q: want router or client", f.upstreamSource)
		}
		m, err := nat.ParseMode(f.interception)
		if err != nil {
			return fe, fmt.Errorf("--interception: %w", err)
		}
		ic, err := f.interceptConfig(m, fw)
		if err != nil {
			return fe, err
		}
		fe.mode, fe.intercept = m, &ic
	default:
		return fe, fmt.Errorf("--mode %q: want reverse or transparent", f.mode)
	}
	tlsFiles, err := f.tls.config(&cfg)
	if err != nil {
		return fe, err
	}
	if cfg.Transparent && (tlsFiles != nil || cfg.ClientTLS != proxy.ClientTLSPassthrough && cfg.ClientTLS != proxy.ClientTLSOff) {
		return fe, errors.New("transparent mode relays FTPS as it is (--client-tls passthrough or off): terminating TLS there would show clients ftpalg's certificate for every server")
	}
	fe.tls = tlsFiles
	for _, a := range f.tls.listenImplicit.values {
		if slices.Contains(fe.listen, a) {
			return fe, fmt.Errorf("--listen-implicit %s: also in --listen; an address is either plain/explicit FTPS or implicit FTPS", a)
		}
		fe.implicit = append(fe.implicit, a)
	}
	fe.listen = append(slices.Clip(fe.listen), fe.implicit...)
	if f.advertise != "" {
		def, rules, err := nat.ParseAdvertise(f.advertise)
		if err != nil {
			return fe, fmt.Errorf("--advertise %s", err)
		}
		cfg.Advertise, cfg.AdvertiseFor = def, rules
	}
	switch f.epsv {
	case "on":
	case "refuse":
		cfg.RefuseEPSV = true
	default:
		return fe, fmt.Errorf("--epsv %q: want on or refuse", f.epsv)
	}
	r, err := nat.ParsePortRange(f.dataPorts)
	if err != nil {
		return fe, fmt.Errorf("--data-ports: %w", err)
	}
	cfg.DataPorts = r
	fe.proxy = cfg
	return fe, nil
}

// interceptConfig is the interception of transparent mode m, checked as
// far as it can be before the listener exists.
func (f *frontendFlags) interceptConfig(m nat.Mode, fw firewallFlags) (intercept.Config, error) {
	c := intercept.Config{Mode: m, Divert: f.divert, Instance: fw.instance, Iptables: fw.iptables}
	if f.interceptPort < 1 || f.interceptPort > math.MaxUint16 {
		return c, fmt.Errorf("--intercept-port %d: want 1 to 65535", f.interceptPort)
	}
	c.Port = uint16(f.interceptPort)
	if err := f.route.apply(&c); err != nil {
		return c, err
	}
	var err error
	if c.Sources, c.Interfaces, err = intercept.ParseSelectors(f.intercept.String()); err != nil {
		return c, fmt.Errorf("--intercept: %w", err)
	}
	// A stand-in listen port, so that a bad table, mark or instance name
	// stops the start before any socket is opened.
	check := c
	check.ListenPort = 1
	if err := check.Check(); err != nil {
		return c, fmt.Errorf("interception: %w", err)
	}
	return c, nil
}

// listeningOn completes an interception config with where its listener
// ended up: REDIRECT --to-ports and TPROXY --on-port are the listener's
// port, TPROXY --on-ip its address (a wildcard listener: the wildcard of
// both families).
func listeningOn(c intercept.Config, at netip.AddrPort) intercept.Config {
	c.ListenPort = at.Port()
	if a := at.Addr().Unmap(); a.IsUnspecified() {
		c.OnIP = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	} else {
		c.OnIP = []netip.Addr{a}
	}
	return c
}
