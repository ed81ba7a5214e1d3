//go:build linux

// Command gateway measures FTP through a Linux router four ways, in one
// run (issues #4 and #10):
//
//	(a) plain: plain routing, FORWARD accepts everything (the physical
//	    reference; passive mode works without any ALG);
//	(b) helper: a default-DROP FORWARD chain and the kernel's FTP
//	    conntrack helper (CT --helper ftp, nf_nat_ftp) opening the data
//	    connections;
//	(c) ftpalg: the same default-DROP router with ftpalg, no kernel
//	    helper, relaying every data connection through its sockets
//	    (--data-path splice);
//	(d) kernel: the same, with ftpalg's kernel data path (--data-path
//	    kernel): ftpalg keeps the control channel and maps each data
//	    connection in nftables, the kernel forwards it.
//
// Three network namespaces are created for it — client 198.51.100.10,
// router 198.51.100.1 | 203.0.113.1 (masquerading the LAN), server
// 203.0.113.10 running vsftpd — and deleted at the end. With --topology
// gateway (the default) ftpalg runs transparent on the router (REDIRECT or
// TPROXY interception) and the clients connect to the server's address;
// with --topology reverse the router is the server's front: the helper
// configuration DNATs the router's port 21 to the server, ftpalg runs in
// reverse mode on it, and the clients connect to the router (plain
// routing stays the direct path). For each configuration it verifies the
// path the transfers take, then measures the throughput of a large RETR
// (EPSV) and the rate of short sessions with each --clients count, and
// prints the figures and the ratios to the kernel helper. Last it runs
// rules/nftpath's BenchmarkMapClose for the cost of one mapping. It is a
// measurement, not a test: nothing passes or fails.
//
// As root, from the module root:
//
//	go run ./test/bench/gateway                          # 1 GiB × 3, 16 and 64 clients × 10 s
//	go run ./test/bench/gateway --topology reverse
//	go run ./test/bench/gateway --size 128MiB --duration 3s
//
// The clients run as separate processes of this program in the client
// namespace (--worker, internal).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

type options struct {
	benchkit.Flags
	verifyTimeout time.Duration
	topology      string
	interception  string
	firewall      string
	logLevel      string
	showRules     bool
	mappingN      int
}

// configs are the configurations, in the order they run.
var configs = []string{"plain", "helper", "ftpalg", "kernel"}

func main() {
	if arg, ok := benchkit.WorkerJob(); ok {
		workerMain(arg)
		return
	}
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	err = run(o)
	cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func parseFlags() (*options, error) {
	o := &options{}
	o.MultiClients = true
	o.Define("16,64", configs, "configurations to measure, comma-separated (always in the order plain, helper, ftpalg, kernel)")
	flag.DurationVar(&o.verifyTimeout, "verify-timeout", 2*time.Second, "how long a verification waits for a data connection (longer: it failed)")
	flag.StringVar(&o.topology, "topology", "gateway", "gateway: ftpalg transparent on the router, clients connect to the server's address; reverse: the router fronts the server (helper: DNAT of its port 21; ftpalg: reverse mode), clients connect to the router")
	flag.IntVar(&o.mappingN, "mapping-n", 2000, "mappings per round of rules/nftpath's BenchmarkMapClose, for the cost of one mapping (0: skip)")
	flag.StringVar(&o.interception, "interception", "redirect", "ftpalg --interception in the gateway topology: redirect or tproxy")
	flag.StringVar(&o.firewall, "firewall", "ipset", "ftpalg --firewall: ipset (pinholes) or none")
	flag.StringVar(&o.logLevel, "ftpalg-log-level", "warn", "ftpalg --log-level during the measurements (the verification runs at info)")
	flag.BoolVar(&o.showRules, "show-rules", false, "print the router's iptables-save in each configuration")
	if err := o.Parse(); err != nil {
		return nil, err
	}
	if o.interception != "redirect" && o.interception != "tproxy" {
		return nil, fmt.Errorf("--interception %q: want redirect or tproxy", o.interception)
	}
	if o.firewall != "ipset" && o.firewall != "none" {
		return nil, fmt.Errorf("--firewall %q: want ipset or none", o.firewall)
	}
	if o.topology != "gateway" && o.topology != "reverse" {
		return nil, fmt.Errorf("--topology %q: want gateway or reverse", o.topology)
	}
	if o.mappingN < 0 {
		return nil, errors.New("--mapping-n must not be negative")
	}
	return o, nil
}

// inRange reports whether port is in the range "LO-HI".
func inRange(port int, r string) bool {
	lo, hi, _ := benchkit.ParseRange(r)
	return port >= lo && port <= hi
}

// ---- cleanup, also on a signal ----

var (
	cleanMu   sync.Mutex
	cleanTopo *topo
	cleanDir  string
	keepDir   bool
	cleaned   bool
)

// cleanup stops every process the benchmark started (by PID), deletes the
// namespaces and the temporary directory. Safe to call more than once.
func cleanup() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	if cleaned {
		return
	}
	cleaned = true
	benchkit.StopWorkers()
	benchkit.StopAll(stopGrace)
	cleanTopo.destroy()
	if cleanDir != "" && !keepDir {
		os.RemoveAll(cleanDir)
	}
}

// ---- the run ----

// facts describe the machine and the server.
type facts struct {
	benchkit.Facts
	vsftpd     string  // its version
	background float64 // CPUs busy before the run
}

// env is the state of one run.
type env struct {
	o       *options
	t       *topo
	dir     string
	bin     string
	facts   facts
	ours    []uint64 // the namespaces' inodes
	mapping *benchkit.MappingCost
}

// addr is where the clients connect in configuration key: the server's
// address, except in the reverse topology, where every configuration but
// plain routing is reached at the router's.
func (e *env) addr(key string) string {
	if e.o.topology == "reverse" && key != "plain" {
		return lanIP + ":21"
	}
	return serverIP + ":21"
}

func run(o *options) error {
	if missing := nstest.Missing("iptables", "iptables-save", "sysctl", o.Vsftpd); len(missing) > 0 {
		return fmt.Errorf("needs %s", strings.Join(missing, ", "))
	}
	benchkit.OnSignal("gateway", "stopping the processes and deleting the namespaces", cleanup)

	// vsftpd -v writes its version to file descriptor 0.
	e := &env{o: o, facts: facts{Facts: benchkit.MachineFacts(), vsftpd: benchkit.Output("sh", "-c", o.Vsftpd+" -v 0>&1")}}
	f := &e.facts
	fmt.Println(f.Facts.Title("ftpalg gateway benchmark"))
	fmt.Printf("load average %s", f.LoadAvg)
	if d, err := benchkit.Background(); err == nil {
		f.background = d.CPUs()
		fmt.Printf("; background load: %.2f of %d CPUs busy", f.background, runtime.NumCPU())
		if f.background > 0.2 {
			fmt.Print(" — other work is running; the figures will be noisy")
		}
	}
	fmt.Println()

	dir, root, err := benchkit.Workdir("gwbench")
	if err != nil {
		return err
	}
	cleanMu.Lock()
	cleanDir, keepDir = dir, o.Keep
	cleanMu.Unlock()
	e.dir = dir
	if o.Keep {
		fmt.Println("temporary directory (kept):", dir)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		return err
	}
	e.bin = o.ProxyBin
	if e.bin == "" && (o.Only["ftpalg"] || o.Only["kernel"]) {
		fmt.Println("building ./cmd/ftpalg ...")
		if e.bin, err = benchkit.BuildProxy(dir); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if err := benchkit.MakeFiles(root, o.Size); err != nil {
		return fmt.Errorf("writing test files: %w", err)
	}
	fmt.Printf("wrote the %s test file (1 MiB random block repeated) in %.1f s\n", benchkit.FormatSize(o.Size), time.Since(t0).Seconds())

	t, err := newTopo()
	cleanMu.Lock()
	cleanTopo = t
	cleanMu.Unlock()
	if err != nil {
		return err
	}
	e.t = t
	fmt.Printf("\nnamespaces %s (client %s), %s (router %s | %s), %s (server %s); topology %s\n",
		t.client.Name, clientIP, t.router.Name, lanIP, wanIP, t.server.Name, serverIP, o.topology)
	if err := t.setup(); err != nil {
		return err
	}
	if e.ours, err = t.inodes(); err != nil {
		return err
	}
	fmt.Println("  router base firewall (all configurations):")
	if err := t.baseFirewall(); err != nil {
		return err
	}
	// Active mode allowed, for the verification.
	conf, err := benchkit.Vsftpd{Addr: serverIP, Port: 21, Root: root, Empty: empty, PasvPorts: o.ServerPasv,
		Active: true, MaxClients: 100000}.Config()
	if err != nil {
		return err
	}
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	vs, err := benchkit.Start(t.server, "vsftpd", filepath.Join(dir, "vsftpd.log"), o.Vsftpd, confPath)
	if err != nil {
		return err
	}
	// Ready when the router itself can fetch a file.
	if err := waitReady(t.router, vs, serverIP+":21", func(r result) bool { return true }, o.verifyTimeout); err != nil {
		return fmt.Errorf("vsftpd: %w", err)
	}
	fmt.Printf("  server: %s (pid %d) on %s:21, passive ports %s\n", f.vsftpd, vs.PID(), serverIP, o.ServerPasv)

	var res []*cfgResult
	for _, c := range []struct {
		key string
		fn  func(*env, *cfgResult) error
	}{{"plain", runPlain}, {"helper", runHelper}, {"ftpalg", runFtpalg}, {"kernel", runKernel}} {
		if !o.Only[c.key] {
			continue
		}
		r := &cfgResult{key: c.key, loadBefore: benchkit.LoadAvg()}
		if err := c.fn(e, r); err != nil {
			return fmt.Errorf("%s: %w", c.key, err)
		}
		r.loadAfter = benchkit.LoadAvg()
		fmt.Printf("  load average before %s, after %s\n", r.loadBefore, r.loadAfter)
		res = append(res, r)
		if err := vs.Alive(); err != nil {
			return err
		}
	}

	if o.mappingN > 0 {
		fmt.Printf("\n== the cost of one mapping of the kernel data path (rules/nftpath BenchmarkMapClose, %d mappings) ==\n", o.mappingN)
		fmt.Printf("  load average before: %s\n", benchkit.LoadAvg())
		m, err := benchkit.MeasureMapping(o.mappingN)
		if err != nil {
			return err
		}
		e.mapping = &m
		fmt.Printf("  %s\n  %s\n", m, m.Line)
	}

	table := summary(e, res)
	return o.Report(table, func() string { return markdown(e, res, table) })
}

// waitReady runs verification sessions from namespace ns to addr until
// one succeeds and ok accepts it (10 s at most).
func waitReady(ns *nstest.NS, p *nstest.Proc, addr string, ok func(result) bool, dataTimeout time.Duration) error {
	end := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(end) {
		if err := p.Alive(); err != nil {
			return err
		}
		r, err := runWorker(ns, job{Mode: "verify", Addr: addr, Timeout: 5 * time.Second, ConnectTimeout: dataTimeout}, 30*time.Second)
		switch {
		case err != nil:
			last = err.Error()
		case r.PassiveErr != "":
			last = r.PassiveErr
		case ok(r):
			return nil
		default:
			last = fmt.Sprintf("EPSV port %d", r.EPSVPort)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no working FTP session to %s after 10 s: %s", addr, last)
}

// ---- per configuration ----

type cfgResult struct {
	key       string
	checks    []string // what the verification showed
	downloads []result
	mbps      float64  // median
	machGiB   float64  // median machine CPU s per GiB
	softGiB   float64  // median softirq CPU s per GiB
	proxyGiB  float64  // ftpalg CPU s per GiB (all runs)
	rates     []result // one session-rate run per --clients count
	after     ctStats
	notes     []string
	otherThr  float64 // other processes' CPU-s during the throughput runs
	stealThr  float64 // steal CPU-s during the throughput runs
	// /proc/loadavg before and after (after: raised by the benchmark's own
	// processes)
	loadBefore, loadAfter string
}

// title names configuration key in the run's topology.
func (e *env) title(key string) string {
	rev := e.o.topology == "reverse"
	switch key {
	case "plain":
		return "(a) plain routing, FORWARD accepts everything"
	case "helper":
		if rev {
			return "(b) kernel FTP helper (DNAT of the router's port 21 to the server, CT --helper ftp, nf_nat_ftp), FORWARD default DROP"
		}
		return "(b) kernel FTP helper (CT --helper ftp, nf_nat_ftp), FORWARD default DROP"
	case "ftpalg":
		if rev {
			return "(c) ftpalg in reverse mode on the router (--data-path splice), FORWARD default DROP, no helper"
		}
		return "(c) ftpalg transparent on the router (--data-path splice), FORWARD default DROP, no helper"
	case "kernel":
		if rev {
			return "(d) ftpalg in reverse mode on the router with the kernel data path (--data-path kernel), FORWARD default DROP, no helper"
		}
		return "(d) ftpalg transparent on the router with the kernel data path (--data-path kernel), FORWARD default DROP, no helper"
	}
	return key
}

func (r *cfgResult) check(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.checks = append(r.checks, s)
	fmt.Println("  ✓ " + s)
}

func (e *env) verify(key string, active bool) (result, error) {
	return runWorker(e.t.client, job{Mode: "verify", Addr: e.addr(key), Timeout: 5*time.Second + 2*e.o.verifyTimeout,
		ConnectTimeout: e.o.verifyTimeout, Active: active, LocalIP: clientIP}, time.Minute)
}

func runPlain(e *env, r *cfgResult) error {
	fmt.Printf("\n== %s ==\n", e.title(r.key))
	t := e.t
	if err := t.forwardOpen(); err != nil {
		return err
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	e.showRules()
	v, err := e.verify(r.key, true)
	if err != nil {
		return err
	}
	if v.PassiveErr != "" {
		return fmt.Errorf("passive transfer failed on the open router: %s", v.PassiveErr)
	}
	if !inRange(v.EPSVPort, e.o.ServerPasv) {
		return fmt.Errorf("EPSV port %d is not in vsftpd's range %s: something else answered", v.EPSVPort, e.o.ServerPasv)
	}
	r.check("EPSV: port %d, in vsftpd's passive range %s: the client talks to the server itself", v.EPSVPort, e.o.ServerPasv)
	if v.ActiveErr != "" {
		r.check("PORT fails without an ALG (%s): vsftpd sees the masqueraded control connection from %s and refuses the client's own address", v.ActiveErr, wanIP)
	} else {
		r.check("PORT worked (data connection from %s)", v.ActiveFrom)
	}
	if err := e.measure(r, 0); err != nil {
		return err
	}
	ct, err := t.conntrack(e.o.ProxyData)
	if err != nil {
		return err
	}
	r.after = ct
	if ct.anyHelper > 0 || ct.expect > 0 {
		return fmt.Errorf("conntrack shows a helper at work (%d entries with a helper, %d expectations): %s", ct.anyHelper, ct.expect, ct.sample)
	}
	r.check("after the measurements: %d tracked TCP connections (%d control), none with a helper, no expectations", ct.total, ct.control)
	return nil
}

func runHelper(e *env, r *cfgResult) error {
	fmt.Printf("\n== %s ==\n", e.title(r.key))
	t := e.t
	if err := t.forwardClosed(); err != nil {
		return err
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	if e.o.topology == "reverse" {
		if err := t.ipt(ruleOp("-A", helperDNATRule)...); err != nil {
			return err
		}
	}
	// Without the CT rule the data connection must not get through.
	v, err := e.verify(r.key, false)
	if err != nil {
		return err
	}
	if v.PassiveErr == "" {
		return errors.New("without the CT rule the passive transfer worked: the router's FORWARD chain, or an automatic helper, lets data connections through")
	}
	r.check("without the CT rule: EPSV port %d, data connection fails (%s): FORWARD drops it, nothing assigns the helper automatically", v.EPSVPort, v.PassiveErr)
	if err := t.ipt(ruleOp("-A", helperRule)...); err != nil {
		return err
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	e.showRules()
	r.check("nf_nat_ftp: %s", natFTP())
	v, err = e.verify(r.key, true)
	if err != nil {
		return err
	}
	if v.PassiveErr != "" {
		return fmt.Errorf("passive transfer failed with the helper: %s", v.PassiveErr)
	}
	if !inRange(v.EPSVPort, e.o.ServerPasv) {
		return fmt.Errorf("EPSV port %d is not in vsftpd's range %s", v.EPSVPort, e.o.ServerPasv)
	}
	r.check("EPSV: port %d (vsftpd's range), data connection through the DROP FORWARD chain as RELATED", v.EPSVPort)
	if v.ActiveErr != "" {
		return fmt.Errorf("active transfer failed with the helper (nf_nat_ftp did not rewrite PORT?): %s", v.ActiveErr)
	}
	r.check("PORT works: vsftpd accepts only the control peer's address (%s), so nf_nat_ftp rewrote %s in PORT; data connection from %s", wanIP, clientIP, v.ActiveFrom)
	ct, err := t.conntrack(e.o.ProxyData)
	if err != nil {
		return err
	}
	if ct.helperFTP == 0 {
		return errors.New("no conntrack entry with helper=ftp after a working transfer")
	}
	r.check("conntrack table: %d of %d control connections with helper=ftp, e.g. %s", ct.helperFTP, ct.control, ct.sample)
	if err := e.measure(r, 0); err != nil {
		return err
	}
	if r.after, err = t.conntrack(e.o.ProxyData); err != nil {
		return err
	}
	r.check("after the measurements: %d tracked TCP connections, %d control connections with helper=ftp, %d expectations left",
		r.after.total, r.after.helperFTP, r.after.expect)
	fmt.Println("  removing the helper rule:")
	if err := t.ipt(ruleOp("-D", helperRule)...); err != nil {
		return err
	}
	if e.o.topology == "reverse" {
		return t.ipt(ruleOp("-D", helperDNATRule)...)
	}
	return nil
}

// natFTP tells whether nf_nat_ftp is a loaded module or built in.
func natFTP() string {
	if b, err := os.ReadFile("/proc/modules"); err == nil && strings.Contains(string(b), "nf_nat_ftp ") {
		return "loaded module (/proc/modules)"
	}
	if b, err := os.ReadFile("/proc/kallsyms"); err == nil && strings.Contains(string(b), " nf_nat_ftp\n") {
		return "built into the kernel (/proc/kallsyms)"
	}
	return "not found in /proc/modules or /proc/kallsyms (the PORT check below shows whether it works)"
}

// dataPath is ftpalg's --data-path in configuration key.
func dataPath(key string) string {
	if key == "kernel" {
		return "kernel"
	}
	return "splice"
}

func (e *env) ftpalgArgs(key, level string) []string {
	args := []string{e.bin, "run"}
	if e.o.topology == "reverse" {
		args = append(args,
			"--listen", lanIP+":21",
			"--upstream", serverIP+":21",
			"--advertise", lanIP)
	} else {
		args = append(args,
			"--mode", "transparent",
			"--interception", e.o.interception,
			"--intercept", lanNet,
			"--listen", "0.0.0.0:"+proxyPort)
	}
	return append(args,
		"--data-ports", e.o.ProxyData,
		"--firewall", e.o.firewall,
		"--data-path", dataPath(key),
		"--log-level", level,
		"--max-sessions", "100000",
		"--max-sessions-per-ip", "100000",
		"--shutdown-grace", "1s",
	)
}

// proxyRules are the router's rules for ftpalg in configuration key,
// added after forwardClosed and removed again: what lets its control and
// data connections in (rules/intercept/README.md, "Your INPUT chain", in
// the gateway topology), and without pinholes (--firewall none) the
// static openings they would replace, among them, for the kernel data
// path, the FORWARD accept of DNATed connections ftpalg's start warns
// about.
func (e *env) proxyRules(key string) [][]string {
	var rs [][]string
	if e.o.topology == "reverse" {
		rs = append(rs, reverseInputRule)
	} else {
		rs = append(rs, proxyInputRules...)
	}
	if e.o.firewall == "none" {
		rs = append(rs, proxyDataInputRule(wanDev, e.o.ProxyData))
		if e.o.topology == "reverse" {
			rs = append(rs, proxyDataInputRule(lanDev, e.o.ProxyData))
		}
		if key == "kernel" {
			rs = append(rs, forwardDNATRule)
		}
	}
	return rs
}

// startFtpalg starts ftpalg in the router for configuration key and waits
// until its interception rules exist (gateway topology) and a session
// gets an EPSV port from ftpalg's range.
func (e *env) startFtpalg(key, name, level string) (*nstest.Proc, error) {
	args := e.ftpalgArgs(key, level)
	fmt.Printf("    router# %s\n", strings.Join(append([]string{"ftpalg"}, args[1:]...), " "))
	p, err := benchkit.Start(e.t.router, name, filepath.Join(e.dir, name+".log"), args...)
	if err != nil {
		return nil, err
	}
	if e.o.topology == "gateway" {
		hook := "FTPALG-REDIRECT"
		if e.o.interception == "tproxy" {
			hook = "FTPALG-TPROXY"
		}
		end := time.Now().Add(15 * time.Second)
		for !strings.Contains(e.t.ruleset(), "-j "+hook) {
			if err := p.Alive(); err != nil {
				return nil, err
			}
			if time.Now().After(end) {
				stop(p)
				return nil, fmt.Errorf("ftpalg installed no %s hook in 15 s\n%s", hook, nstest.Tail(p.Log(), 20))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := waitReady(e.t.client, p, e.addr(key), func(r result) bool { return inRange(r.EPSVPort, e.o.ProxyData) }, e.o.verifyTimeout); err != nil {
		stop(p)
		return nil, fmt.Errorf("through ftpalg: %w", err)
	}
	return p, nil
}

func runFtpalg(e *env, r *cfgResult) error { return runProxy(e, r) }

// runKernel is runFtpalg with --data-path kernel, and conntrack
// accounting on in the router while it runs (ftpalg's start check asks
// for it: the transfer lines' byte counts come from it; it counts every
// packet of the connections that start meanwhile).
func runKernel(e *env, r *cfgResult) error {
	fmt.Println("    router# sysctl -w net.netfilter.nf_conntrack_acct=1")
	if _, err := e.t.router.Try("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"); err != nil {
		return err
	}
	err := runProxy(e, r)
	if _, serr := e.t.router.Try("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0"); err == nil {
		err = serr
	}
	return err
}

// pathRE matches ftpalg's data-connection log lines (console format) and
// their path.
var pathRE = regexp.MustCompile(`data connection established.*"path": ?"(\w+)"`)

// runProxy runs configuration (c) or (d): ftpalg on the default-DROP
// router, first at log level info to verify the path the data takes,
// then, fresh, at the measurement's log level.
func runProxy(e *env, r *cfgResult) error {
	fmt.Printf("\n== %s ==\n", e.title(r.key))
	t := e.t
	if strings.Contains(t.ruleset(), "--helper") {
		return errors.New("a CT helper rule is still installed")
	}
	if err := t.forwardClosed(); err != nil {
		return err
	}
	rules := e.proxyRules(r.key)
	for _, rule := range rules {
		if err := t.ipt(ruleOp("-A", rule)...); err != nil {
			return err
		}
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}

	// 1. Verification, ftpalg at log level info (it logs each rewrite).
	fmt.Println("  verification run (log level info):")
	p, err := e.startFtpalg(r.key, r.key+"-verify", "info")
	if err != nil {
		return err
	}
	e.showRules()
	v, err := e.verify(r.key, true)
	if err != nil {
		stop(p)
		return err
	}
	if v.PassiveErr != "" || v.ActiveErr != "" {
		stop(p)
		return fmt.Errorf("through ftpalg: passive %q, active %q\n%s", v.PassiveErr, v.ActiveErr, nstest.Tail(p.Log(), 20))
	}
	if !inRange(v.EPSVPort, e.o.ProxyData) {
		stop(p)
		return fmt.Errorf("EPSV port %d is not in ftpalg's range %s", v.EPSVPort, e.o.ProxyData)
	}
	if r.key == "kernel" {
		r.check("EPSV: port %d, in ftpalg's --data-ports %s (vsftpd's are %s): announced by ftpalg, mapped in the kernel", v.EPSVPort, e.o.ProxyData, e.o.ServerPasv)
	} else {
		r.check("EPSV: port %d, in ftpalg's --data-ports %s (vsftpd's are %s): the client's data connection ends at ftpalg", v.EPSVPort, e.o.ProxyData, e.o.ServerPasv)
	}
	// ftpalg (or its mapping's SNAT) dials the client from the router's
	// LAN address; with TPROXY from the server's address.
	want := lanIP
	if e.o.topology == "gateway" && e.o.interception == "tproxy" {
		want = serverIP
	}
	if h, _, _ := net.SplitHostPort(v.ActiveFrom); h != want {
		stop(p)
		return fmt.Errorf("active data connection came from %s, want ftpalg's %s", v.ActiveFrom, want)
	}
	r.check("PORT works; the data connection comes from %s (ftpalg's address), not from the server's %s", v.ActiveFrom, serverIP)
	log := p.Log()
	for _, msg := range []string{"passive mode rewritten", "active mode rewritten"} {
		line := ""
		for l := range strings.SplitSeq(log, "\n") {
			if strings.Contains(l, msg) {
				line = l
				break
			}
		}
		if line == "" {
			stop(p)
			return fmt.Errorf("ftpalg logged no %q:\n%s", msg, nstest.Tail(p.Log(), 30))
		}
		r.check("ftpalg log: %s", strings.Join(strings.Fields(line), " "))
	}
	paths := map[string]int{}
	for _, m := range pathRE.FindAllStringSubmatch(log, -1) {
		paths[m[1]]++
	}
	if want := dataPath(r.key); paths[want] < 2 || len(paths) != 1 {
		stop(p)
		return fmt.Errorf("ftpalg's data connections went on paths %v, want only %s:\n%s", paths, want, nstest.Tail(p.Log(), 30))
	}
	r.check("ftpalg log: %d data connections established, all on path=%s", paths[dataPath(r.key)], dataPath(r.key))
	ct, err := t.conntrack(e.o.ProxyData)
	if err != nil {
		stop(p)
		return err
	}
	if ct.anyHelper > 0 || ct.expect > 0 {
		stop(p)
		return fmt.Errorf("conntrack shows a helper at work: %s", ct.sample)
	}
	if (r.key == "kernel") != (ct.dnatData > 0) {
		stop(p)
		return fmt.Errorf("conntrack holds %d DNATed connections to ftpalg's data ports in configuration %s", ct.dnatData, r.key)
	}
	r.check("conntrack table: %s", e.ctLine(ct))
	if err := stop(p); err != nil {
		return fmt.Errorf("ftpalg exited with %v after SIGTERM\n%s", err, nstest.Tail(p.Log(), 20))
	}
	if rs := t.ruleset(); strings.Contains(rs, "FTPALG") {
		return fmt.Errorf("ftpalg left rules behind:\n%s", rs)
	}
	if nft, _ := t.router.Try("nft", "list", "tables"); strings.Contains(nft, "ftpalg") {
		return fmt.Errorf("ftpalg left its nftables table behind:\n%s", nft)
	}
	r.check("ftpalg exited 0 on SIGTERM and removed its rules")

	// 2. The measurements, with a fresh ftpalg at the measurement log level.
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	fmt.Printf("  measurement run (log level %s):\n", e.o.logLevel)
	p, err = e.startFtpalg(r.key, r.key, e.o.logLevel)
	if err != nil {
		return err
	}
	fmt.Printf("  ftpalg pid %d\n", p.PID())
	merr := e.measure(r, p.PID())
	if merr == nil {
		if r.after, merr = t.conntrack(e.o.ProxyData); merr == nil {
			switch {
			case r.after.anyHelper > 0 || r.after.expect > 0:
				merr = fmt.Errorf("conntrack shows a helper at work: %s", r.after.sample)
			case (r.key == "kernel") != (r.after.dnatData > 0):
				merr = fmt.Errorf("conntrack holds %d DNATed connections to ftpalg's data ports after measuring %s", r.after.dnatData, r.key)
			default:
				r.check("after the measurements: %s", e.ctLine(r.after))
			}
		}
	}
	if log := strings.TrimSpace(p.Log()); log != "" {
		n := strings.Count(log, "\n") + 1
		r.notes = append(r.notes, fmt.Sprintf("ftpalg wrote %d log lines at level %s; the last ones:\n%s\n", n, e.o.logLevel, benchkit.Indent(nstest.Tail(p.Log(), 5))))
		fmt.Printf("  ftpalg wrote %d log lines at level %s; last ones:\n%s\n\n", n, e.o.logLevel, benchkit.Indent(nstest.Tail(p.Log(), 5)))
	}
	if err := stop(p); err != nil && merr == nil {
		merr = fmt.Errorf("ftpalg exited with %v after SIGTERM\n%s", err, nstest.Tail(p.Log(), 20))
	}
	if merr != nil {
		return merr
	}
	fmt.Println("  removing ftpalg's INPUT (and FORWARD) rules:")
	for _, rule := range rules {
		if err := t.ipt(ruleOp("-D", rule)...); err != nil {
			return err
		}
	}
	return nil
}

// ctLine describes the conntrack table in configurations (c) and (d).
func (e *env) ctLine(ct ctStats) string {
	s := fmt.Sprintf("%d control connections", ct.control)
	if e.o.topology == "gateway" && e.o.interception == "redirect" {
		s += fmt.Sprintf(", %d of them answered by port %s (REDIRECT to ftpalg)", ct.redirected, proxyPort)
	}
	s += fmt.Sprintf("; %d data connections to ftpalg's ports DNATed by the kernel data path", ct.dnatData)
	return s + "; none with a helper, no expectations"
}

func (e *env) showRules() {
	if e.o.showRules {
		fmt.Printf("  router iptables-save:\n%s\n", benchkit.Indent(e.t.ruleset()))
	}
}

// measure runs the throughput runs and the session-rate run from the
// client namespace; watchPID (ftpalg) has its CPU time measured.
func (e *env) measure(r *cfgResult, watchPID int) error {
	o := e.o
	fmt.Printf("  throughput: RETR of %s (EPSV, TYPE I), %d runs\n", benchkit.FormatSize(o.Size), o.Runs)
	var mb, mach, soft []float64
	var watch float64
	for i := range o.Runs {
		d, err := runWorker(e.t.client, job{Mode: "download", Addr: e.addr(r.key), Size: o.Size, BufSize: o.BufSize,
			Timeout: o.XferTimeout, WatchPID: watchPID, OurNetns: e.ours, OurPID: os.Getpid()}, o.XferTimeout+time.Minute)
		if err != nil {
			return fmt.Errorf("throughput run %d: %w", i+1, err)
		}
		r.downloads = append(r.downloads, d)
		gib := float64(d.Bytes) / (1 << 30)
		mbps := float64(d.Bytes) / d.Secs / 1e6
		mb, mach, soft = append(mb, mbps), append(mach, d.CPU.Busy/gib), append(soft, d.CPU.Softirq/gib)
		watch += d.WatchCPU
		r.otherThr += d.OtherCPU
		extra := ""
		if watchPID != 0 {
			extra = fmt.Sprintf(", ftpalg CPU %.2f s", d.WatchCPU)
		}
		if d.OtherCPU > 0 {
			extra += fmt.Sprintf(", other processes %.2f CPU-s", d.OtherCPU)
		}
		if d.CPU.Steal > 0 {
			extra += fmt.Sprintf(", steal %.2f CPU-s", d.CPU.Steal)
		}
		r.stealThr += d.CPU.Steal
		fmt.Printf("    run %d %9.1f MB/s  (%.2f s; machine %.2f of %d CPUs busy, %.2f CPU-s/GiB, softirq %.2f%s)\n",
			i+1, mbps, d.Secs, d.CPU.CPUs(), runtime.NumCPU(), d.CPU.Busy/gib, d.CPU.Softirq/gib, extra)
		time.Sleep(500 * time.Millisecond)
	}
	r.mbps, r.machGiB, r.softGiB = benchkit.Median(mb), benchkit.Median(mach), benchkit.Median(soft)
	if watchPID != 0 {
		r.proxyGiB = watch / (float64(o.Size) * float64(o.Runs) / (1 << 30))
	}
	fmt.Printf("    median %.1f MB/s, machine %.2f CPU-s per GiB\n", r.mbps, r.machGiB)

	for _, n := range o.ClientCounts {
		fmt.Printf("  session rate: %d clients × %s (connect, login, EPSV+LIST, EPSV+RETR 4 KiB, QUIT); load average %s\n", n, o.Duration, benchkit.LoadAvg())
		time.Sleep(time.Second)
		rr, err := runWorker(e.t.client, job{Mode: "rate", Addr: e.addr(r.key), Clients: n, Duration: o.Duration,
			Timeout: o.SessionTimeout, WatchPID: watchPID, OurNetns: e.ours, OurPID: os.Getpid()}, o.Duration+o.SessionTimeout+time.Minute)
		if err != nil {
			return fmt.Errorf("session rate with %d clients: %w", n, err)
		}
		r.rates = append(r.rates, rr)
		i := len(r.rates) - 1
		extra := ""
		if watchPID != 0 && rr.Sessions > 0 {
			extra = fmt.Sprintf(", ftpalg %.2f ms CPU/session", r.proxyPerSession(i))
		}
		fmt.Printf("    %d sessions in %.1f s = %.1f sessions/s  p50 %.2f ms  p99 %.2f ms  errors %d\n",
			rr.Sessions, rr.CPU.Wall, r.sessionsPerSec(i), benchkit.Ms(rr.P50), benchkit.Ms(rr.P99), rr.Errors)
		if rr.OtherCPU > 0 {
			extra += fmt.Sprintf("; other processes %.2f CPU-s", rr.OtherCPU)
		}
		if rr.CPU.Steal > 0 {
			extra += fmt.Sprintf("; steal %.2f CPU-s", rr.CPU.Steal)
		}
		fmt.Printf("    machine %.2f of %d CPUs busy, %.2f ms CPU/session (softirq %.2f)%s\n",
			rr.CPU.CPUs(), runtime.NumCPU(), r.machPerSession(i), r.softPerSession(i), extra)
		for _, k := range benchkit.TopKinds(rr.ErrKinds, 5) {
			fmt.Printf("    %6d × %s\n", rr.ErrKinds[k], k)
		}
	}
	return nil
}

// The session-rate figures of run i (the i-th --clients count).

func (r *cfgResult) sessionsPerSec(i int) float64 {
	if i >= len(r.rates) || r.rates[i].CPU.Wall <= 0 {
		return 0
	}
	return float64(r.rates[i].Sessions) / r.rates[i].CPU.Wall
}

func (r *cfgResult) machPerSession(i int) float64 {
	if i >= len(r.rates) || r.rates[i].Sessions == 0 {
		return 0
	}
	return r.rates[i].CPU.Busy * 1000 / float64(r.rates[i].Sessions)
}

func (r *cfgResult) softPerSession(i int) float64 {
	if i >= len(r.rates) || r.rates[i].Sessions == 0 {
		return 0
	}
	return r.rates[i].CPU.Softirq * 1000 / float64(r.rates[i].Sessions)
}

func (r *cfgResult) proxyPerSession(i int) float64 {
	if i >= len(r.rates) || r.rates[i].Sessions == 0 {
		return 0
	}
	return r.rates[i].WatchCPU * 1000 / float64(r.rates[i].Sessions)
}

func (r *cfgResult) rate(i int) result {
	if i >= len(r.rates) {
		return result{}
	}
	return r.rates[i]
}

// ---- output ----

// ratioPairs are the ratio columns: each configuration against the
// kernel helper (and the helper against plain routing).
var ratioPairs = [][2]string{{"helper", "plain"}, {"ftpalg", "helper"}, {"kernel", "helper"}}

// summary is the table printed at the end: one column per configuration,
// then the ratios.
func summary(e *env, res []*cfgResult) string {
	o := e.o
	by := map[string]*cfgResult{}
	for _, r := range res {
		by[r.key] = r
	}
	b := benchkit.NewTable("%-40s %9s %9s %9s %9s %13s %13s %13s", configs, ratioPairs, by)
	row := func(name string, val func(*cfgResult) float64, format func(float64) string, prec int) {
		b.Row(name, val, format, prec, nil)
	}
	only := func(name string, val func(*cfgResult) float64, format func(float64) string) {
		b.Row(name, val, format, -1, func(k string) bool { return k == "ftpalg" || k == "kernel" })
	}
	row(fmt.Sprintf("throughput, %s RETR, median MB/s", benchkit.FormatSize(o.Size)), func(r *cfgResult) float64 { return r.mbps }, benchkit.F1, 3)
	row("machine CPU s per GiB", func(r *cfgResult) float64 { return r.machGiB }, benchkit.F3, 3)
	row("  of which irq+softirq", func(r *cfgResult) float64 { return r.softGiB }, benchkit.F3, -1)
	only("ftpalg CPU s per GiB", func(r *cfgResult) float64 { return r.proxyGiB }, benchkit.F3)
	for i, n := range o.ClientCounts {
		row(fmt.Sprintf("sessions/s (%d clients)", n), func(r *cfgResult) float64 { return r.sessionsPerSec(i) }, benchkit.F1, 3)
		row("  session latency p50, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate(i).P50) }, benchkit.F2, 2)
		row("  session latency p99, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate(i).P99) }, benchkit.F2, 2)
		row("  session errors", func(r *cfgResult) float64 { return float64(r.rate(i).Errors) }, func(v float64) string { return strconv.Itoa(int(v)) }, -1)
		row("  machine CPU ms per session", func(r *cfgResult) float64 { return r.machPerSession(i) }, benchkit.F2, 3)
		row("    of which irq+softirq", func(r *cfgResult) float64 { return r.softPerSession(i) }, benchkit.F2, -1)
		row("  machine CPUs busy", func(r *cfgResult) float64 { return r.rate(i).CPU.CPUs() }, benchkit.F2, -1)
		only("  ftpalg CPU ms per session", func(r *cfgResult) float64 { return r.proxyPerSession(i) }, benchkit.F2)
		row("  other processes' CPU-s", func(r *cfgResult) float64 { return r.rate(i).OtherCPU }, benchkit.F2, -1)
		row("  steal CPU-s", func(r *cfgResult) float64 { return r.rate(i).CPU.Steal }, benchkit.F2, -1)
	}
	row("other processes' CPU-s (throughput)", func(r *cfgResult) float64 { return r.otherThr }, benchkit.F2, -1)
	row("steal CPU-s (throughput)", func(r *cfgResult) float64 { return r.stealThr }, benchkit.F2, -1)
	if m := e.mapping; m != nil {
		fmt.Fprintf(b, "kernel data path, one mapping (rules/nftpath BenchmarkMapClose, %d mappings): map+close median %.1f µs, p99 %.0f µs (map %.1f / %.0f, close %.1f / %.0f)\n",
			m.N, m.PairMedian, m.PairP99, m.MapMedian, m.MapP99, m.CloseMedian, m.CloseP99)
	}
	top := "--interception " + o.interception
	if o.topology == "reverse" {
		top = "reverse mode"
	}
	fmt.Fprintf(b, "topology %s; ftpalg: %s --firewall %s --log-level %s; aims (issue #10): kernel/helper ≥ 0.95 (throughput) and ≥ 0.9 (session rate), map+close < 100 µs median\n",
		o.topology, top, o.firewall, o.logLevel)
	return b.String()
}

// markdown renders the run for docs/benchmarks-gateway.md.
func markdown(e *env, res []*cfgResult, table string) string {
	var b strings.Builder
	f := e.facts
	b.WriteString(f.MarkdownHead("test/bench/gateway", f.vsftpd))
	fmt.Fprintf(&b, "- load average before the run: %s; background load: %.2f CPUs busy\n", f.LoadAvg, f.background)
	fmt.Fprintf(&b, "\n```\n%s```\n", table)
	fmt.Fprintf(&b, "\nThroughput runs (MB/s = 10^6 bytes/s; busy = CPUs of the whole machine busy during the run, of %s):\n\n", f.NProc)
	b.WriteString("| configuration | run | MB/s | s | busy | CPU-s/GiB | ftpalg CPU s |\n|---|---|---|---|---|---|---|\n")
	for _, r := range res {
		for i, d := range r.downloads {
			pc := ""
			if r.key == "ftpalg" || r.key == "kernel" {
				pc = benchkit.F2(d.WatchCPU)
			}
			fmt.Fprintf(&b, "| %s | %d | %.1f | %.2f | %.2f | %.2f | %s |\n", r.key, i+1, float64(d.Bytes)/d.Secs/1e6, d.Secs,
				d.CPU.CPUs(), d.CPU.Busy/(float64(d.Bytes)/(1<<30)), pc)
		}
	}
	b.WriteString("\nLoad average (1, 5, 15 min) before and after each configuration (the figures after include the benchmark's own processes: clients, vsftpd's session processes, ftpalg):\n\n")
	for _, r := range res {
		fmt.Fprintf(&b, "- %s: %s → %s\n", r.key, r.loadBefore, r.loadAfter)
	}
	b.WriteString("\nSession rate:\n\n")
	for _, r := range res {
		for i, n := range e.o.ClientCounts {
			rr := r.rate(i)
			fmt.Fprintf(&b, "- %s, %d clients: %d sessions in %.1f s, %.2f CPUs busy, errors %d", r.key, n, rr.Sessions, rr.CPU.Wall, rr.CPU.CPUs(), rr.Errors)
			for _, k := range benchkit.TopKinds(rr.ErrKinds, 3) {
				fmt.Fprintf(&b, "; %d × `%s`", rr.ErrKinds[k], k)
			}
			b.WriteString("\n")
		}
	}
	if m := e.mapping; m != nil {
		fmt.Fprintf(&b, "\nOne mapping of the kernel data path: %s\n\n    %s\n", m, m.Line)
	}
	b.WriteString("\nVerification:\n")
	for _, r := range res {
		fmt.Fprintf(&b, "\n%s:\n\n", e.title(r.key))
		for _, c := range r.checks {
			fmt.Fprintf(&b, "- %s\n", c)
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
	}
	return b.String()
}
