//go:build linux

// Command gateway measures FTP through a Linux router three ways, in one
// run (issue #4):
//
//	(a) plain: plain routing, FORWARD accepts everything (the physical
//	    reference; passive mode works without any ALG);
//	(b) helper: a default-DROP FORWARD chain and the kernel's FTP
//	    conntrack helper (CT --helper ftp, nf_nat_ftp) opening the data
//	    connections;
//	(c) ftpalg: the same default-DROP router with ftpalg in transparent
//	    mode (REDIRECT or TPROXY interception), no kernel helper.
//
// Three network namespaces are created for it — client 198.51.100.10,
// router 198.51.100.1 | 203.0.113.1 (masquerading the LAN), server
// 203.0.113.10 running vsftpd — and deleted at the end. For each
// configuration it verifies the path the transfers take, then measures the
// throughput of a large RETR (EPSV) and the rate of short sessions, and
// prints the figures and the ratios helper/plain, ftpalg/plain and
// ftpalg/helper. It is a measurement, not a test: nothing passes or fails.
//
// As root, from the module root:
//
//	go run ./test/bench/gateway                          # 1 GiB × 3, 16 clients × 10 s
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
	interception  string
	firewall      string
	logLevel      string
	showRules     bool
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "--worker" {
		workerMain(os.Args[2])
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
	o.Define(16, []string{"plain", "helper", "ftpalg"}, "configurations to measure, comma-separated (always in the order plain, helper, ftpalg)")
	flag.DurationVar(&o.verifyTimeout, "verify-timeout", 2*time.Second, "how long a verification waits for a data connection (longer: it failed)")
	flag.StringVar(&o.interception, "interception", "redirect", "ftpalg --interception: redirect or tproxy")
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
	shutdownWorkers()
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
	o     *options
	t     *topo
	dir   string
	bin   string
	facts facts
	ours  []uint64 // the namespaces' inodes
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
	if e.bin == "" && o.Only["ftpalg"] {
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
	fmt.Printf("\nnamespaces %s (client %s), %s (router %s | %s), %s (server %s)\n",
		t.client.Name, clientIP, t.router.Name, lanIP, wanIP, t.server.Name, serverIP)
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
	if err := waitReady(t.router, vs, func(r result) bool { return true }, o.verifyTimeout); err != nil {
		return fmt.Errorf("vsftpd: %w", err)
	}
	fmt.Printf("  server: %s (pid %d) on %s:21, passive ports %s\n", f.vsftpd, vs.PID(), serverIP, o.ServerPasv)

	var res []*cfgResult
	for _, c := range []struct {
		key string
		fn  func(*env, *cfgResult) error
	}{{"plain", runPlain}, {"helper", runHelper}, {"ftpalg", runFtpalg}} {
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

	table := summary(o, res)
	return o.Report(table, func() string { return markdown(e, res, table) })
}

// waitReady runs verification sessions from namespace ns until one
// succeeds and ok accepts it (10 s at most).
func waitReady(ns *nstest.NS, p *nstest.Proc, ok func(result) bool, dataTimeout time.Duration) error {
	end := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(end) {
		if err := p.Alive(); err != nil {
			return err
		}
		r, err := runWorker(ns, job{Mode: "verify", Addr: serverIP + ":21", Timeout: 5 * time.Second, ConnectTimeout: dataTimeout}, 30*time.Second)
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
	return fmt.Errorf("no working FTP session to %s:21 after 10 s: %s", serverIP, last)
}

// ---- per configuration ----

type cfgResult struct {
	key       string
	checks    []string // what the verification showed
	downloads []result
	mbps      float64 // median
	machGiB   float64 // median machine CPU s per GiB
	softGiB   float64 // median softirq CPU s per GiB
	proxyGiB  float64 // ftpalg CPU s per GiB (all runs)
	rate      result
	after     ctStats
	notes     []string
	otherThr  float64 // other processes' CPU-s during the throughput runs
	stealThr  float64 // steal CPU-s during the throughput runs
	// /proc/loadavg before and after (after: raised by the benchmark's own
	// processes)
	loadBefore, loadAfter string
}

var titles = map[string]string{
	"plain":  "(a) plain routing, FORWARD accepts everything",
	"helper": "(b) kernel FTP helper (CT --helper ftp, nf_nat_ftp), FORWARD default DROP",
	"ftpalg": "(c) ftpalg transparent on the router, FORWARD default DROP, no helper",
}

func (r *cfgResult) check(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.checks = append(r.checks, s)
	fmt.Println("  ✓ " + s)
}

func (e *env) verify(active bool) (result, error) {
	return runWorker(e.t.client, job{Mode: "verify", Addr: serverIP + ":21", Timeout: 5*time.Second + 2*e.o.verifyTimeout,
		ConnectTimeout: e.o.verifyTimeout, Active: active, LocalIP: clientIP}, time.Minute)
}

func runPlain(e *env, r *cfgResult) error {
	fmt.Printf("\n== %s ==\n", titles[r.key])
	t := e.t
	if err := t.forwardOpen(); err != nil {
		return err
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	e.showRules()
	v, err := e.verify(true)
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
	ct, err := t.conntrack()
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
	fmt.Printf("\n== %s ==\n", titles[r.key])
	t := e.t
	if err := t.forwardClosed(); err != nil {
		return err
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	// Without the CT rule the data connection must not get through.
	v, err := e.verify(false)
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
	v, err = e.verify(true)
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
	ct, err := t.conntrack()
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
	if r.after, err = t.conntrack(); err != nil {
		return err
	}
	r.check("after the measurements: %d tracked TCP connections, %d control connections with helper=ftp, %d expectations left",
		r.after.total, r.after.helperFTP, r.after.expect)
	fmt.Println("  removing the helper rule:")
	return t.ipt(ruleOp("-D", helperRule)...)
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

func (e *env) ftpalgArgs(level string) []string {
	return []string{e.bin, "run",
		"--mode", "transparent",
		"--interception", e.o.interception,
		"--intercept", lanNet,
		"--listen", "0.0.0.0:" + proxyPort,
		"--data-ports", e.o.ProxyData,
		"--firewall", e.o.firewall,
		"--log-level", level,
		"--max-sessions", "100000",
		"--max-sessions-per-ip", "100000",
		"--shutdown-grace", "1s",
	}
}

// startFtpalg starts ftpalg in the router and waits until its interception
// rules exist and a session gets an EPSV port from ftpalg's range.
func (e *env) startFtpalg(name, level string) (*nstest.Proc, error) {
	args := e.ftpalgArgs(level)
	fmt.Printf("    router# %s\n", strings.Join(append([]string{"ftpalg"}, args[1:]...), " "))
	p, err := benchkit.Start(e.t.router, name, filepath.Join(e.dir, name+".log"), args...)
	if err != nil {
		return nil, err
	}
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
	if err := waitReady(e.t.client, p, func(r result) bool { return inRange(r.EPSVPort, e.o.ProxyData) }, e.o.verifyTimeout); err != nil {
		stop(p)
		return nil, fmt.Errorf("through ftpalg: %w", err)
	}
	return p, nil
}

func runFtpalg(e *env, r *cfgResult) error {
	fmt.Printf("\n== %s ==\n", titles[r.key])
	t := e.t
	if strings.Contains(t.ruleset(), "--helper") {
		return errors.New("a CT helper rule is still installed")
	}
	if err := t.forwardClosed(); err != nil {
		return err
	}
	in := proxyInputRules
	if e.o.firewall == "none" {
		in = append(in, proxyDataInputRule(e.o.ProxyData))
	}
	for _, rule := range in {
		if err := t.ipt(ruleOp("-A", rule)...); err != nil {
			return err
		}
	}
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}

	// 1. Verification, ftpalg at log level info (it logs each rewrite).
	fmt.Println("  verification run (log level info):")
	p, err := e.startFtpalg("ftpalg-verify", "info")
	if err != nil {
		return err
	}
	e.showRules()
	v, err := e.verify(true)
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
	r.check("EPSV: port %d, in ftpalg's --data-ports %s (vsftpd's are %s): the client's data connection ends at ftpalg", v.EPSVPort, e.o.ProxyData, e.o.ServerPasv)
	// With REDIRECT ftpalg dials the client from the router's LAN address;
	// with TPROXY from the server's address (transparent socket).
	want := lanIP
	if e.o.interception == "tproxy" {
		want = serverIP
	}
	if h, _, _ := net.SplitHostPort(v.ActiveFrom); h != want {
		stop(p)
		return fmt.Errorf("active data connection came from %s, want ftpalg's %s", v.ActiveFrom, want)
	}
	if want == lanIP {
		r.check("PORT works; the data connection comes from %s (ftpalg on the router), not from the server", v.ActiveFrom)
	} else {
		r.check("PORT works; the data connection comes from %s (ftpalg's transparent dial with the server's address)", v.ActiveFrom)
	}
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
	ct, err := t.conntrack()
	if err != nil {
		stop(p)
		return err
	}
	if ct.anyHelper > 0 || ct.expect > 0 {
		stop(p)
		return fmt.Errorf("conntrack shows a helper at work: %s", ct.sample)
	}
	r.check("conntrack table: %s", e.ctLine(ct))
	if err := stop(p); err != nil {
		return fmt.Errorf("ftpalg exited with %v after SIGTERM\n%s", err, nstest.Tail(p.Log(), 20))
	}
	if rs := t.ruleset(); strings.Contains(rs, "FTPALG") {
		return fmt.Errorf("ftpalg left rules behind:\n%s", rs)
	}
	r.check("ftpalg exited 0 on SIGTERM and removed its rules")

	// 2. The measurements, with a fresh ftpalg at the measurement log level.
	if err := t.flushConntrack(); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	fmt.Printf("  measurement run (log level %s):\n", e.o.logLevel)
	p, err = e.startFtpalg("ftpalg", e.o.logLevel)
	if err != nil {
		return err
	}
	fmt.Printf("  ftpalg pid %d\n", p.PID())
	merr := e.measure(r, p.PID())
	if merr == nil {
		if r.after, merr = t.conntrack(); merr == nil {
			if r.after.anyHelper > 0 || r.after.expect > 0 {
				merr = fmt.Errorf("conntrack shows a helper at work: %s", r.after.sample)
			} else {
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
	fmt.Println("  removing the INPUT rules:")
	for _, rule := range in {
		if err := t.ipt(ruleOp("-D", rule)...); err != nil {
			return err
		}
	}
	return nil
}

// ctLine describes the conntrack table in configuration (c).
func (e *env) ctLine(ct ctStats) string {
	s := fmt.Sprintf("%d control connections", ct.control)
	if e.o.interception == "redirect" {
		s += fmt.Sprintf(", %d of them answered by port %s (REDIRECT to ftpalg)", ct.redirected, proxyPort)
	}
	return s + ", none with a helper, no expectations"
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
		d, err := runWorker(e.t.client, job{Mode: "download", Addr: serverIP + ":21", Size: o.Size, BufSize: o.BufSize,
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

	fmt.Printf("  session rate: %d clients × %s (connect, login, EPSV+LIST, EPSV+RETR 4 KiB, QUIT)\n", o.Clients, o.Duration)
	time.Sleep(time.Second)
	rr, err := runWorker(e.t.client, job{Mode: "rate", Addr: serverIP + ":21", Clients: o.Clients, Duration: o.Duration,
		Timeout: o.SessionTimeout, WatchPID: watchPID, OurNetns: e.ours, OurPID: os.Getpid()}, o.Duration+o.SessionTimeout+time.Minute)
	if err != nil {
		return fmt.Errorf("session rate: %w", err)
	}
	r.rate = rr
	rate := r.sessionsPerSec()
	extra := ""
	if watchPID != 0 && rr.Sessions > 0 {
		extra = fmt.Sprintf(", ftpalg %.2f ms CPU/session", rr.WatchCPU*1000/float64(rr.Sessions))
	}
	fmt.Printf("    %d sessions in %.1f s = %.1f sessions/s  p50 %.2f ms  p99 %.2f ms  errors %d\n",
		rr.Sessions, rr.CPU.Wall, rate, benchkit.Ms(rr.P50), benchkit.Ms(rr.P99), rr.Errors)
	if rr.OtherCPU > 0 {
		extra += fmt.Sprintf("; other processes %.2f CPU-s", rr.OtherCPU)
	}
	if rr.CPU.Steal > 0 {
		extra += fmt.Sprintf("; steal %.2f CPU-s", rr.CPU.Steal)
	}
	fmt.Printf("    machine %.2f of %d CPUs busy, %.2f ms CPU/session (softirq %.2f)%s\n",
		rr.CPU.CPUs(), runtime.NumCPU(), r.machPerSession(), r.softPerSession(), extra)
	for _, k := range benchkit.TopKinds(rr.ErrKinds, 5) {
		fmt.Printf("    %6d × %s\n", rr.ErrKinds[k], k)
	}
	return nil
}

func (r *cfgResult) sessionsPerSec() float64 {
	if r.rate.CPU.Wall <= 0 {
		return 0
	}
	return float64(r.rate.Sessions) / r.rate.CPU.Wall
}

func (r *cfgResult) machPerSession() float64 {
	if r.rate.Sessions == 0 {
		return 0
	}
	return r.rate.CPU.Busy * 1000 / float64(r.rate.Sessions)
}

func (r *cfgResult) softPerSession() float64 {
	if r.rate.Sessions == 0 {
		return 0
	}
	return r.rate.CPU.Softirq * 1000 / float64(r.rate.Sessions)
}

func (r *cfgResult) proxyPerSession() float64 {
	if r.rate.Sessions == 0 {
		return 0
	}
	return r.rate.WatchCPU * 1000 / float64(r.rate.Sessions)
}

// ---- output ----

// summary is the table printed at the end: one column per configuration,
// then the ratios.
func summary(o *options, res []*cfgResult) string {
	by := map[string]*cfgResult{}
	for _, r := range res {
		by[r.key] = r
	}
	var b strings.Builder
	row := func(name string, val func(*cfgResult) float64, format func(float64) string, prec int) {
		cells := []string{}
		for _, k := range []string{"plain", "helper", "ftpalg"} {
			if r := by[k]; r != nil && val != nil {
				cells = append(cells, format(val(r)))
			} else {
				cells = append(cells, "")
			}
		}
		for _, p := range [][2]string{{"helper", "plain"}, {"ftpalg", "plain"}, {"ftpalg", "helper"}} {
			a, c := by[p[0]], by[p[1]]
			if a == nil || c == nil || prec < 0 {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, benchkit.Ratio(val(a), val(c), prec))
		}
		line := fmt.Sprintf("%-38s %9s %9s %9s %13s %13s %13s", append([]any{name}, toAny(cells)...)...)
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	b.WriteString(strings.TrimRight(fmt.Sprintf("%-38s %9s %9s %9s %13s %13s %13s", "measurement", "plain", "helper", "ftpalg",
		"helper/plain", "ftpalg/plain", "ftpalg/helper"), " ") + "\n")
	row(fmt.Sprintf("throughput, %s RETR, median MB/s", benchkit.FormatSize(o.Size)), func(r *cfgResult) float64 { return r.mbps }, benchkit.F1, 3)
	row("machine CPU s per GiB", func(r *cfgResult) float64 { return r.machGiB }, benchkit.F3, 3)
	row("  of which irq+softirq", func(r *cfgResult) float64 { return r.softGiB }, benchkit.F3, -1)
	if by["ftpalg"] != nil {
		b.WriteString(fmt.Sprintf("%-38s %9s %9s %9s\n", "ftpalg CPU s per GiB relayed", "", "", benchkit.F3(by["ftpalg"].proxyGiB)))
	}
	row(fmt.Sprintf("sessions/s (%d clients)", o.Clients), (*cfgResult).sessionsPerSec, benchkit.F1, 3)
	row("session latency p50, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate.P50) }, benchkit.F2, 2)
	row("session latency p99, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate.P99) }, benchkit.F2, 2)
	row("session errors", func(r *cfgResult) float64 { return float64(r.rate.Errors) }, func(v float64) string { return strconv.Itoa(int(v)) }, -1)
	row("machine CPU ms per session", (*cfgResult).machPerSession, benchkit.F2, 3)
	row("  of which irq+softirq", (*cfgResult).softPerSession, benchkit.F2, -1)
	row("machine CPUs busy (session rate)", func(r *cfgResult) float64 { return r.rate.CPU.CPUs() }, benchkit.F2, -1)
	if by["ftpalg"] != nil {
		b.WriteString(fmt.Sprintf("%-38s %9s %9s %9s\n", "ftpalg CPU ms per session", "", "", benchkit.F2(by["ftpalg"].proxyPerSession())))
	}
	row("other processes' CPU-s (throughput)", func(r *cfgResult) float64 { return r.otherThr }, benchkit.F2, -1)
	row("other processes' CPU-s (session rate)", func(r *cfgResult) float64 { return r.rate.OtherCPU }, benchkit.F2, -1)
	row("steal CPU-s (throughput)", func(r *cfgResult) float64 { return r.stealThr }, benchkit.F2, -1)
	row("steal CPU-s (session rate)", func(r *cfgResult) float64 { return r.rate.CPU.Steal }, benchkit.F2, -1)
	fmt.Fprintf(&b, "ftpalg: --interception %s --firewall %s --log-level %s; for reference, the aims are ftpalg/helper ≥ 0.9 (throughput) and ≥ 0.8 (session rate)\n",
		o.interception, o.firewall, o.logLevel)
	return b.String()
}

func toAny(s []string) []any {
	a := make([]any, len(s))
	for i, v := range s {
		a[i] = v
	}
	return a
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
			if r.key == "ftpalg" {
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
		fmt.Fprintf(&b, "- %s: %d sessions in %.1f s, %.2f CPUs busy, errors %d", r.key, r.rate.Sessions, r.rate.CPU.Wall, r.rate.CPU.CPUs(), r.rate.Errors)
		for _, k := range benchkit.TopKinds(r.rate.ErrKinds, 3) {
			fmt.Fprintf(&b, "; %d × `%s`", r.rate.ErrKinds[k], k)
		}
		b.WriteString("\n")
	}
	b.WriteString("\nVerification:\n")
	for _, r := range res {
		fmt.Fprintf(&b, "\n%s:\n\n", titles[r.key])
		for _, c := range r.checks {
			fmt.Fprintf(&b, "- %s\n", c)
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
	}
	return b.String()
}
