package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/intercept"
)

// runFlags are the flags of `ftpalg run`, as given.
type runFlags struct {
	listen                                          listFlag
	upstream, advertise, dataPorts                  string
	mode, interception, upstreamSource              string
	intercept                                       string
	interceptPort                                   int
	route                                           routeFlags
	divert                                          bool
	logFormat, logLevel                             string
	trustPASV                                       bool
	fw                                              firewallFlags
	connectTimeout, dataTimeout, idleTimeout, grace time.Duration
	dataIdleTimeout, loginTimeout, keepAlive        time.Duration
	firewallCheck                                   time.Duration
	metricsListen                                   string
	dataPath                                        string
	maxSessions, maxPerIP                           int
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

func (f *runFlags) register(fs *flag.FlagSet) {
	f.listen = listFlag{values: []string{":21"}}
	fs.Var(&f.listen, "listen", "address to accept FTP control connections on, IP:PORT or :PORT (both families); repeat it or give a comma-separated list for several (reverse mode)")
	fs.StringVar(&f.upstream, "upstream", "", "the FTP server, HOST:PORT (required in reverse mode)")
	fs.StringVar(&f.mode, "mode", "reverse", "reverse: relay every client to --upstream; transparent: relay each intercepted connection to its original destination (gateway on a router)")
	fs.StringVar(&f.interception, "interception", nat.ModeRedirect.String(), "transparent mode: how connections are intercepted: redirect (iptables REDIRECT, original destination from SO_ORIGINAL_DST) or tproxy (TPROXY, IP_TRANSPARENT listener)")
	fs.StringVar(&f.intercept, "intercept", "", "transparent mode: install the interception rules for these client networks or incoming interfaces (comma-separated, e.g. 198.51.100.0/24,lan0); without it ftpalg expects your own rules")
	fs.IntVar(&f.interceptPort, "intercept-port", intercept.DefaultPort, "transparent mode: the FTP control port to intercept")
	f.route.register(fs)
	fs.BoolVar(&f.divert, "divert", true, "transparent mode: install the divert rule and policy route that deliver data connections to ftpalg's transparent sockets")
	fs.StringVar(&f.upstreamSource, "upstream-source", "router", "transparent mode: connect to servers from the router's address (router) or from the client's (client, needs the divert routing in rules/intercept/README.md)")
	fs.StringVar(&f.advertise, "advertise", "", "address announced to clients in passive replies (default: the local address the client connected to)")
	fs.StringVar(&f.dataPorts, "data-ports", "50000-50999", "port range for data connections, LO-HI, on both sides (0: any port)")
	fs.BoolVar(&f.trustPASV, "trust-pasv-address", false, "dial the address a server announces in 227 even when it is not the server's control address (default: dial the control address, as curl and lftp do)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", proxy.DefaultConnectTimeout, "timeout for connecting to the server and to data peers")
	fs.DurationVar(&f.dataTimeout, "data-timeout", proxy.DefaultDataAcceptTimeout, "how long an announced data port waits for its connection")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close a control connection silent this long (never during a transfer); 0 uses the default, negative disables")
	fs.DurationVar(&f.dataIdleTimeout, "data-idle-timeout", proxy.DefaultDataIdleTimeout, "abort a transfer that moves no byte in either direction this long (a peer that stopped reading); negative disables")
	fs.DurationVar(&f.loginTimeout, "login-timeout", proxy.DefaultLoginTimeout, "close a session not logged in (no 230 from the server) this long after it connected; negative disables")
	fs.DurationVar(&f.keepAlive, "tcp-keepalive", proxy.DefaultKeepAlive, "TCP keepalive period of control and data connections (each one jittered by ±12.5%); negative disables")
	fs.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "on SIGINT/SIGTERM, how long running sessions may finish before they are closed")
	fs.IntVar(&f.maxSessions, "max-sessions", 0, fmt.Sprintf("most concurrent sessions; more are refused with 421 (0: %d, or fewer if RLIMIT_NOFILE cannot carry them; negative: no limit)", proxy.DefaultMaxSessions))
	fs.IntVar(&f.maxPerIP, "max-sessions-per-ip", proxy.DefaultMaxSessionsPerIP, "most concurrent sessions from one client address (0 or negative: no limit)")
	f.fw.register(fs)
	fs.DurationVar(&f.firewallCheck, "firewall-check-interval", rules.DefaultWatchInterval, "how often to check that ftpalg's firewall hooks, chains, sets and interception rules are still there, and restore them and the open pinholes after a firewall reload removed them (0: never)")
	fs.StringVar(&f.dataPath, "data-path", "auto", "how data connections are carried: kernel (nftables NAT, the data never passes through ftpalg), splice (through ftpalg's sockets, zero-copy) or auto (kernel where the host allows it, reported at start; sessions the kernel cannot serve are spliced and say why)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics), /healthz, /readyz and /log/level on this address, e.g. 127.0.0.1:9121 (default: off)")
	fs.StringVar(&f.logFormat, "log-format", "console", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
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
// alone (runFlags.config), without opening a socket or asking the kernel.
type runConfig struct {
	listen []string
	// mode is how connections are intercepted in transparent mode; zero in
	// reverse mode.
	mode nat.Mode
	// proxy lacks what only run can add: Firewall, Director and Logger.
	proxy proxy.Config
	// intercept is transparent mode's interception (nil in reverse mode).
	// It lacks what depends on the listener (ListenPort and OnIP, see
	// listeningOn) and Logger.
	intercept *intercept.Config
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
}

const runUsage = "Usage: ftpalg run --upstream HOST:PORT [flags]\n       ftpalg run --mode transparent [flags]\n\nFlags:\n"

// parseRun parses the arguments of `ftpalg run` into its configuration.
// Usage and flag errors are written to out; -h returns flag.ErrHelp.
func parseRun(args []string, out io.Writer) (runConfig, error) {
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	fs.SetOutput(out)
	var f runFlags
	f.register(fs)
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
	return f.config()
}

// config checks the flags and turns them into a runConfig. Flags of
// transparent mode are not looked at in reverse mode.
func (f *runFlags) config() (runConfig, error) {
	rc := runConfig{listen: f.listen.values, grace: f.grace, fw: f.fw, logFormat: f.logFormat, firewallCheck: f.firewallCheck,
		metricsListen: f.metricsListen, dataPath: f.dataPath}
	switch f.dataPath {
	case "auto", "kernel", rules.Splice:
	default:
		return rc, fmt.Errorf("run: --data-path %q: want kernel, splice or auto", f.dataPath)
	}
	if len(rc.listen) == 0 {
		return rc, errors.New("run: --listen: no address")
	}
	if f.firewallCheck < 0 {
		return rc, fmt.Errorf("run: --firewall-check-interval %s: want 0 (off) or more", f.firewallCheck)
	}
	switch f.logFormat {
	case "json", "console":
	default:
		return rc, fmt.Errorf("run: --log-format %q: want json or console", f.logFormat)
	}
	lvl, err := zapcore.ParseLevel(f.logLevel)
	if err != nil {
		return rc, fmt.Errorf("run: --log-level %q: %w", f.logLevel, err)
	}
	rc.logLevel = lvl
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
			return rc, errors.New("run: --upstream HOST:PORT is required in reverse mode")
		}
	case "transparent":
		if f.upstream != "" {
			return rc, errors.New("run: --upstream makes no sense with --mode transparent: the server is each connection's original destination")
		}
		if len(rc.listen) > 1 {
			return rc, fmt.Errorf("run: --listen %s: transparent mode takes one listen address (\":PORT\" listens on both families)", strings.Join(rc.listen, ","))
		}
		cfg.Transparent = true
		switch f.upstreamSource {
		case "router":
		case "client":
			cfg.UpstreamSourceClient = true
		default:
			return rc, fmt.Errorf("run: --upstream-source %q: want router or client", f.upstreamSource)
		}
		m, err := nat.ParseMode(f.interception)
		if err != nil {
			return rc, fmt.Errorf("run: --interception: %w", err)
		}
		ic, err := f.interceptConfig(m)
		if err != nil {
			return rc, err
		}
		rc.mode, rc.intercept = m, &ic
	default:
		return rc, fmt.Errorf("run: --mode %q: want reverse or transparent", f.mode)
	}
	if f.advertise != "" {
		a, err := netip.ParseAddr(f.advertise)
		if err != nil {
			return rc, fmt.Errorf("run: --advertise %q: want an IP address", f.advertise)
		}
		cfg.Advertise = a
	}
	r, err := nat.ParsePortRange(f.dataPorts)
	if err != nil {
		return rc, fmt.Errorf("run: --data-ports: %w", err)
	}
	cfg.DataPorts = r
	rc.proxy = cfg
	return rc, nil
}

// interceptConfig is the interception of transparent mode m, checked as
// far as it can be before the listener exists.
func (f *runFlags) interceptConfig(m nat.Mode) (intercept.Config, error) {
	c := intercept.Config{Mode: m, Divert: f.divert, Instance: f.fw.instance, Iptables: f.fw.iptables}
	if f.interceptPort < 1 || f.interceptPort > math.MaxUint16 {
		return c, fmt.Errorf("run: --intercept-port %d: want 1 to 65535", f.interceptPort)
	}
	c.Port = uint16(f.interceptPort)
	if err := f.route.apply(&c); err != nil {
		return c, fmt.Errorf("run: %w", err)
	}
	var err error
	if c.Sources, c.Interfaces, err = intercept.ParseSelectors(f.intercept); err != nil {
		return c, fmt.Errorf("run: --intercept: %w", err)
	}
	// A stand-in listen port, so that a bad table, mark or instance name
	// stops the start before any socket is opened.
	check := c
	check.ListenPort = 1
	if err := check.Check(); err != nil {
		return c, fmt.Errorf("run: interception: %w", err)
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
