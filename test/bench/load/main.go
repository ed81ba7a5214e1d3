// Command load puts ftpalg under load and faults, on loopback, and prints
// what it measured and what the clients saw:
//
//   - idle: N concurrent logged-in idle sessions; the proxy's memory and
//     descriptors before, with and after them, per session;
//   - churn: M short sessions (login, EPSV+LIST or EPSV+RETR of 4 KiB,
//     QUIT) from C concurrent clients; errors by kind, the proxy's
//     descriptors, threads and memory before, at the peak and after;
//   - faults: SIGTERM mid-transfer, a server that dies before its 226, a
//     client that stops reading, slowloris and other pre-login
//     connections, garbage floods, a proxy out of descriptors: for each,
//     what was done, what the client saw, what the proxy logged and when;
//   - keepalive (opt-in, it takes minutes): N idle sessions opened
//     together and held for a while; how many are still alive.
//
// The proxy is the built ftpalg binary, a separate process with the flags
// each scenario needs, in front of vsftpd (started here on 127.0.0.1) for
// the faults, internal/ftpd for the churn (--churn-server vsftpd for
// vsftpd, which forks per session and is the bottleneck on a small
// machine), and a small scripted server inside this program for idle
// sessions (no process and no keepalive of its own) and for a server that
// misbehaves on cue. It is a measurement, not a test: nothing passes or
// fails, but what a scenario did not expect is printed as UNEXPECTED. Run
// it as root from the module root:
//
//	go run ./test/bench/load                      # idle, faults, churn (about 4 minutes)
//	go run ./test/bench/load --idle 500 --sessions 2000 --slowloris 12 --garbage-conns 20 --garbage-for 3s   # smoke, about a minute
//	go run ./test/bench/load --only keepalive --keepalive-hold 4m
//
// docs/benchmarks-load.md has the method and the figures.
package main

import (
	"errors"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL.
const stopGrace = 5 * time.Second

var (
	scenarios = []string{"idle", "churn", "faults", "keepalive"}
	faultList = []string{"sigterm", "server-gone", "server-killed", "client-stalls", "slowloris", "garbage", "nofile"}
)

type options struct {
	benchkit.Flags
	faults map[string]bool

	idle        int
	settle      time.Duration
	releaseWait time.Duration

	sessions    int
	churnServer string

	faultSize    int64
	readRate     int64
	grace        time.Duration
	dataIdle     time.Duration
	loginTimeout time.Duration
	slowloris    int
	garbageConns int
	garbageFor   time.Duration
	fdLimit      int

	kaSessions int
	kaHold     time.Duration
	kaPeriod   string

	faultSizeFlag, readRateFlag, faultsFlag string
}

func main() { benchkit.Main("load", parseFlags, run) }

func parseFlags() (*options, error) {
	o := &options{}
	o.DefineCommon("32", scenarios, scenarios[:3], "scenarios to run, comma-separated (keepalive is opt-in: it takes minutes)")
	flag.IntVar(&o.idle, "idle", 10000, "idle: concurrent logged-in idle sessions")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "idle, churn: wait before reading the proxy's figures")
	flag.DurationVar(&o.releaseWait, "release-wait", 0, "idle: after closing, wait up to this long for the proxy's RSS to come back near the baseline (the Go runtime's forced GC comes 2 minutes after the last: 3m to see it)")
	flag.IntVar(&o.sessions, "sessions", 100000, "churn: short sessions in all (from --clients concurrent clients)")
	flag.StringVar(&o.churnServer, "churn-server", "ftpd", "churn: the server, ftpd (internal/ftpd in this process) or vsftpd (two processes per session: slower on a small machine)")
	flag.StringVar(&o.faultSizeFlag, "fault-size", "64MiB", "faults: size of the file downloaded in the transfer faults")
	flag.StringVar(&o.readRateFlag, "read-rate", "4MiB", "faults: the paced client's read rate per second (the transfer must outlast the fault)")
	flag.StringVar(&o.faultsFlag, "faults", strings.Join(faultList, ","), "faults: which, comma-separated")
	flag.DurationVar(&o.grace, "grace", 2*time.Second, "faults sigterm: the proxy's --shutdown-grace")
	flag.DurationVar(&o.dataIdle, "data-idle", 3*time.Second, "faults client-stalls: the proxy's --data-idle-timeout")
	flag.DurationVar(&o.loginTimeout, "login-timeout", 3*time.Second, "faults slowloris: the proxy's --login-timeout")
	flag.IntVar(&o.slowloris, "slowloris", 60, "faults slowloris: connections that never log in")
	flag.IntVar(&o.garbageConns, "garbage-conns", 200, "faults garbage: connections sending refused lines")
	flag.DurationVar(&o.garbageFor, "garbage-for", 30*time.Second, "faults garbage: how long they send")
	flag.IntVar(&o.fdLimit, "fd-limit", 100, "faults nofile: RLIMIT_NOFILE of the proxy (run also with one more, for the other parity)")
	flag.IntVar(&o.kaSessions, "keepalive-sessions", 9900, "keepalive: idle sessions opened together")
	flag.DurationVar(&o.kaHold, "keepalive-hold", 3*time.Minute, "keepalive: how long they are held before each is asked a NOOP")
	flag.StringVar(&o.kaPeriod, "keepalive-period", "", "keepalive: the proxy's --tcp-keepalive (default: the proxy's own default)")
	if err := o.Parse(); err != nil {
		return nil, err
	}
	var err error
	if o.faultSize, err = benchkit.ParseSize(o.faultSizeFlag); err != nil || o.faultSize < 8<<20 {
		return nil, fmt.Errorf("--fault-size %q: want at least 8MiB", o.faultSizeFlag)
	}
	if o.readRate, err = benchkit.ParseSize(o.readRateFlag); err != nil || o.readRate < 64<<10 {
		return nil, fmt.Errorf("--read-rate %q: want at least 64KiB", o.readRateFlag)
	}
	o.faults = map[string]bool{}
	for _, f := range strings.Split(o.faultsFlag, ",") {
		switch f = strings.TrimSpace(f); {
		case slices.Contains(faultList, f):
			o.faults[f] = true
		case f != "":
			return nil, fmt.Errorf("--faults: unknown %q (want %s)", f, strings.Join(faultList, ", "))
		}
	}
	if o.churnServer != "vsftpd" && o.churnServer != "ftpd" {
		return nil, fmt.Errorf("--churn-server %q: want vsftpd or ftpd", o.churnServer)
	}
	if o.idle < 1 || o.sessions < 1 || o.slowloris < 1 || o.garbageConns < 1 || o.kaSessions < 1 || o.fdLimit < 16 {
		return nil, errors.New("--idle, --sessions, --slowloris, --garbage-conns and --keepalive-sessions must be positive, --fd-limit at least 16")
	}
	return o, nil
}

// env is what the scenarios share.
type env struct {
	o      *options
	dir    string // temporary directory: configs, logs
	root   string // the served files
	bin    string // ftpalg
	vsftpd string // its address, "" if not started
	// vsftpdPID is vsftpd's listening process, the parent of its
	// session processes.
	vsftpdPID int
	res       *results
}

type results struct {
	facts      benchkit.Facts
	background float64 // CPUs busy before the run
	vsftpd     string  // its version
	notes      []string
	idle       *idleResult
	churn      *churnResult
	faults     []faultResult
	keepalive  *keepaliveResult
}

func run(o *options) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("needs Linux (/proc), not %s", runtime.GOOS)
	}
	res := &results{facts: benchkit.MachineFacts()}
	need := 0
	if o.Only["idle"] {
		need = o.idle
	}
	if o.Only["keepalive"] {
		need = max(need, o.kaSessions)
	}
	// Both ends of every idle session are in this process (the client
	// and the scripted server), and the proxy inherits the limit.
	setup, err := benchkit.NewSetup("load", need, o.Keep)
	if err != nil {
		return err
	}
	defer setup.Close()
	// Fewer idle sessions than asked for where the limit is lower (and
	// said so in the notes): past it the figures would measure the
	// benchmark's own lack of descriptors.
	o.idle, o.kaSessions = setup.IdleFit(o.idle), setup.IdleFit(o.kaSessions)
	res.notes = setup.Notes
	dir, root := setup.Dir, setup.Root
	// vsftpd -v writes its version to file descriptor 0.
	res.vsftpd = benchkit.Output("sh", "-c", o.Vsftpd+" -v 0>&1")
	fmt.Println(strings.Join(append(setup.Notes, res.facts.Title("ftpalg load and fault benchmark")), "\n"))
	if d, err := benchkit.Background(); err == nil {
		res.background = d.CPUs()
		note := ""
		if res.background > 0.2 {
			note = " — other work is running; the figures will be noisy"
		}
		fmt.Printf("background load before starting: %.2f of %d CPUs busy (load average %s)%s\n", res.background, runtime.NumCPU(), res.facts.LoadAvg, note)
	}
	e := &env{o: o, dir: dir, root: root, bin: o.ProxyBin, res: res}
	if e.bin == "" {
		fmt.Println("building ./cmd/ftpalg ...")
		if e.bin, err = benchkit.BuildProxy(dir); err != nil {
			return err
		}
	}
	defer benchkit.StopAll(stopGrace)
	benchkit.OnSignal("load", "stopping the server and proxies", func() {
		benchkit.StopAll(stopGrace)
		setup.Close()
	})
	if o.Only["churn"] || o.Only["faults"] {
		if err := benchkit.MakeFiles(root, o.faultSize); err != nil {
			return fmt.Errorf("writing test files: %w", err)
		}
	}
	if o.Only["faults"] || o.Only["churn"] && o.churnServer == "vsftpd" {
		vs, addr, err := benchkit.StartVsftpd(o.Vsftpd, dir, root, o.ServerPasv, 100000)
		if err != nil {
			return err
		}
		e.vsftpd, e.vsftpdPID = addr, vs.PID()
		fmt.Printf("server: %s (pid %d) on %s\n", res.vsftpd, vs.PID(), addr)
	}
	for _, sc := range []struct {
		name string
		run  func() error
	}{
		// The faults before the churn, whose TIME_WAITs linger for a
		// minute.
		{"idle", func() (err error) { res.idle, err = e.runIdle(); return err }},
		{"faults", func() (err error) { res.faults = e.runFaults(); return nil }},
		{"churn", func() (err error) { res.churn, err = e.runChurn(); return err }},
		{"keepalive", func() (err error) { res.keepalive, err = e.runKeepalive(); return err }},
	} {
		if o.Only[sc.name] {
			if err := sc.run(); err != nil {
				return fmt.Errorf("%s: %w", sc.name, err)
			}
		}
	}
	table := summary(res)
	return o.Report(table, func() string { return markdown(res) })
}

// proxy starts an ftpalg in front of upstream with the benchmark's base
// flags (JSON log at info, no firewall backend: this host's ruleset is
// left alone, and pinholes are not what is measured) and then args, which
// override them.
func (e *env) proxy(name, upstream string, wrapper []string, args ...string) (*nstest.Proc, string, error) {
	base := []string{"--firewall", "none", "--log-format", "json", "--log-level", "info", "--shutdown-grace", "1s"}
	px, addr, err := benchkit.Proxy{Bin: e.bin, Dir: e.dir, Name: name, Upstream: upstream, DataPorts: e.o.ProxyData,
		Args: append(base, args...), Wrapper: wrapper}.Start()
	if err == nil && !slices.Contains(args, "--log-level") {
		// The start-up check's session ends before the scenario's begin,
		// so that the log from here on is the scenario's alone.
		waitLog(px, 0, 2*time.Second, isMsg(proxy.MsgSessionEnded))
	}
	return px, addr, err
}
