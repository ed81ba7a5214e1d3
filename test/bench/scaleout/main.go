//go:build linux

// Command scaleout measures ftpalg scaled out behind a kernel L4
// balancer, the deployment of issue 13 (several instances behind
// IPVS/keepalived), in one run: sessions/s and the aggregate throughput of
// parallel downloads with one instance reached directly, then with one,
// two and three instances behind the director, and the director's own
// cost.
//
// The director is nftables, not IPVS: this kernel has no IPVS (ipvsadm
// says "Protocol not available", there is no ip_vs module), so it cannot
// run here. nftables DNAT by a bucket map is another in-kernel L4
// balancer doing the same work per packet (connection tracking, NAT, a
// lookup on each new connection) with the persistence FTP needs, exactly
// as test/e2e's TestScaleOut (pattern 1) uses it: the director holds the
// VIP 203.0.113.10 and DNATs tcp dport {21, the data ports} by
// `meta mark set jhash ip saddr mod 12` and `dnat to meta mark map
// @buckets`, so a client's control and data connections land on one
// instance; bucket b names instance b mod N. Each instance, alone in a
// namespace, runs vsftpd on 127.0.0.1 and ftpalg --advertise VIP
// --data-path splice --firewall none; its default route is the director.
//
// The configurations, in order:
//
//	direct1  clients connect to instance 1's own address; the director
//	         only routes (no ruleset, so no connection tracking): the
//	         reference
//	n1       one instance behind the director (all 12 buckets on it)
//	n2, n3   two, three instances behind it (6 or 4 buckets each)
//
// For each: the session rate of --clients concurrent clients (connect,
// login, EPSV+LIST, EPSV+RETR 4 KiB, QUIT), each session from the next of
// 16 client source addresses, and the aggregate throughput of --parallel
// downloads of a --size file started together (each from its own source
// address), the median of --runs; machine CPU per session and per GiB.
// The director's softirq work cannot be told apart per namespace, so its
// cost is the difference direct1 → n1: the same instance, without and
// with the balancer in the path.
//
// On a two-core machine every instance, the director, vsftpd and the
// clients share the same two CPUs: more instances cannot add CPU, so the
// figures show what scaling out costs, not what it gains
// (docs/benchmarks-scaleout.md). It is a measurement, not a test.
//
// As root, from the module root:
//
//	go run ./test/bench/scaleout
//	go run ./test/bench/scaleout --duration 1s --size 8MiB --runs 1 --clients 8 --parallel 4
//
// The clients run as separate processes of this program in the client
// namespace (--worker, internal).
package main

import (
	"flag"
	"fmt"
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
	parallel int
	logLevel string
}

// configs are the configurations, in the order they run.
var configs = []string{"direct1", "n1", "n2", "n3"}

// instances is how many instances configuration key balances over (0:
// none, direct1).
func instances(key string) int {
	if n, err := strconv.Atoi(strings.TrimPrefix(key, "n")); err == nil {
		return n
	}
	return 0
}

func main() {
	if arg, ok := benchkit.WorkerJob(); ok {
		workerMain(arg)
		return
	}
	benchkit.Main("scaleout", parseFlags, func(o *options) error {
		err := run(o)
		cleanup()
		return err
	})
}

func parseFlags() (*options, error) {
	o := &options{}
	o.Define("32", configs, "configurations to measure, comma-separated (always in the order direct1, n1, n2, n3)")
	// Each of the parallel downloads fetches the whole file: 16 × 256 MiB
	// a run.
	size := flag.Lookup("size")
	size.DefValue = "256MiB"
	size.Value.Set(size.DefValue)
	flag.IntVar(&o.parallel, "parallel", 16, "concurrent downloads of the throughput test, each from the next client source address")
	flag.StringVar(&o.logLevel, "ftpalg-log-level", "warn", "the instances' ftpalg --log-level")
	if err := o.Parse(); err != nil {
		return nil, err
	}
	if o.parallel < 1 {
		return nil, fmt.Errorf("--parallel %d: want at least 1", o.parallel)
	}
	return o, nil
}

// ---- cleanup, also on a signal ----

var (
	cleanMu sync.Mutex
	cleanT  = &topo{}
	cleanFn []func()
	cleaned bool
)

// cleanup stops the clients and every process started (by PID), deletes
// the namespaces and the temporary directory. Safe to call twice.
func cleanup() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	if cleaned {
		return
	}
	cleaned = true
	benchkit.StopWorkers()
	benchkit.StopAll(10 * time.Second)
	cleanT.destroy()
	for _, f := range cleanFn {
		f()
	}
}

// ---- the run ----

type env struct {
	o          *options
	t          *topo
	dir        string
	facts      benchkit.Facts
	vsftpd     string
	background float64
	ours       []uint64
	proxies    []*nstest.Proc // ftpalg per instance
	servers    []*nstest.Proc // vsftpd per instance
}

// cfgResult is one configuration's figures.
type cfgResult struct {
	key       string
	downloads []result
	mbps      float64 // median aggregate MB/s
	machGiB   float64 // median machine CPU s per GiB
	softGiB   float64 // median irq+softirq CPU s per GiB
	rate      result
	perInst   []int     // control connections per instance (director's conntrack; direct1: none)
	proxyCPU  []float64 // each instance's ftpalg CPU s during the rate run
}

func run(o *options) error {
	if missing := nstest.Missing("ip", "nft", "sysctl", o.Vsftpd); len(missing) > 0 {
		return fmt.Errorf("needs %s", strings.Join(missing, ", "))
	}
	benchkit.OnSignal("scaleout", "stopping the processes and deleting the namespaces", cleanup)
	e := &env{o: o, facts: benchkit.MachineFacts(), vsftpd: benchkit.Output("sh", "-c", o.Vsftpd+" -v 0>&1")}
	fmt.Println(e.facts.Title("ftpalg scale-out benchmark (nftables director standing in for IPVS)"))
	fmt.Printf("load average %s", e.facts.LoadAvg)
	if d, err := benchkit.Background(); err == nil {
		e.background = d.CPUs()
		fmt.Printf("; background load: %.2f of %d CPUs busy", e.background, runtime.NumCPU())
		if e.background > 0.2 {
			fmt.Print(" — other work is running; the figures will be noisy")
		}
	}
	fmt.Println()

	dir, root, err := benchkit.Workdir("scaleout")
	if err != nil {
		return err
	}
	e.dir = dir
	cleanMu.Lock()
	if !o.Keep {
		cleanFn = append(cleanFn, func() { os.RemoveAll(dir) })
	} else {
		fmt.Println("temporary directory (kept):", dir)
	}
	cleanMu.Unlock()
	bin := o.ProxyBin
	if bin == "" {
		fmt.Println("building ./cmd/ftpalg ...")
		if bin, err = benchkit.BuildProxy(dir); err != nil {
			return err
		}
	}
	if err := benchkit.MakeFiles(root, o.Size); err != nil {
		return fmt.Errorf("writing test files: %w", err)
	}

	cleanMu.Lock()
	e.t = cleanT
	err = newTopo(e.t)
	cleanMu.Unlock()
	if err != nil {
		return err
	}
	if e.ours, err = e.t.inodes(); err != nil {
		return err
	}
	fmt.Printf("namespaces %s (client, %d source addresses %s ...), %s (director, VIP %s), %s ... (instances %s ...)\n",
		e.t.client.Name, numSources, source(0), e.t.director.Name, vip, e.t.inst[0].Name, instAddr(0))
	if err := e.startInstances(bin, root); err != nil {
		return err
	}

	var res []*cfgResult
	for _, key := range configs {
		if !o.Only[key] {
			continue
		}
		r, err := e.measure(key)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		res = append(res, r)
	}
	table := summary(e, res)
	return o.Report(table, func() string { return markdown(e, res, table) })
}

// startInstances starts vsftpd and ftpalg in every instance namespace and
// waits until a session through each works (from the client, to the
// instance's own address).
func (e *env) startInstances(bin, root string) error {
	empty := filepath.Join(e.dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		return err
	}
	conf, err := benchkit.Vsftpd{Addr: "127.0.0.1", Port: 21, Root: root, Empty: empty, PasvPorts: e.o.ServerPasv, MaxClients: 100000}.Config()
	if err != nil {
		return err
	}
	confPath := filepath.Join(e.dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	var addrs []string
	for i, n := range e.t.inst {
		name := "inst" + strconv.Itoa(i)
		vs, err := benchkit.Start(n, name+"-vsftpd", filepath.Join(e.dir, name+"-vsftpd.log"), e.o.Vsftpd, confPath)
		if err != nil {
			return err
		}
		args := []string{bin, "run",
			"--listen", instAddr(i) + ":21", "--upstream", "127.0.0.1:21",
			"--advertise", vip, "--data-ports", e.o.ProxyData,
			"--data-path", "splice", "--firewall", "none",
			"--log-level", e.o.logLevel, "--max-sessions", "-1", "--shutdown-grace", "1s"}
		if i == 0 {
			fmt.Printf("  instance# %s\n", strings.Join(append([]string{"ftpalg"}, args[2:]...), " "))
		}
		p, err := benchkit.Start(n, name+"-ftpalg", filepath.Join(e.dir, name+"-ftpalg.log"), args...)
		if err != nil {
			return err
		}
		e.servers, e.proxies = append(e.servers, vs), append(e.proxies, p)
		addrs = append(addrs, instAddr(i)+":21")
	}
	var r result
	if err := e.worker(job{Mode: "ready", Addrs: addrs, Timeout: 15 * time.Second}, &r, time.Minute); err != nil {
		return fmt.Errorf("%w\n%s", err, e.aliveErr())
	}
	fmt.Printf("  %d instances up: %s (pid %d ...), ftpalg --data-ports %s, vsftpd passive ports %s\n",
		numInst, e.vsftpd, e.servers[0].PID(), e.o.ProxyData, e.o.ServerPasv)
	return nil
}

// aliveErr describes the instances' processes that exited.
func (e *env) aliveErr() string {
	var b strings.Builder
	for _, p := range append(append([]*nstest.Proc{}, e.proxies...), e.servers...) {
		if err := p.Alive(); err != nil {
			fmt.Fprintln(&b, err)
		}
	}
	return b.String()
}

// worker runs a client job in the client namespace; the job's own error
// is an error too.
func (e *env) worker(j job, r *result, limit time.Duration) error {
	j.OurNetns, j.OurPID = e.ours, os.Getpid()
	for i := range numSources {
		j.Sources = append(j.Sources, source(i))
	}
	if err := benchkit.RunWorker(e.t.client, j, r, limit); err != nil {
		return fmt.Errorf("client %s: %w", j.Mode, err)
	}
	if r.Err != "" {
		return fmt.Errorf("client %s: %s", j.Mode, r.Err)
	}
	return nil
}

// addr is where the clients connect in configuration key.
func addr(key string) string {
	if key == "direct1" {
		return instAddr(0) + ":21"
	}
	return vip + ":21"
}

// measure sets configuration key up and runs its measurements.
func (e *env) measure(key string) (*cfgResult, error) {
	o, r := e.o, &cfgResult{key: key}
	n := instances(key)
	if n == 0 {
		fmt.Printf("\n== %s: clients to instance 1 at %s, the director only routes ==\n", key, addr(key))
	} else {
		fmt.Printf("\n== %s: %d instance(s) behind the director at %s ==\n", key, n, addr(key))
		if err := e.t.balance(e.dir, n, o.ProxyData); err != nil {
			return nil, err
		}
	}
	if err := e.t.flushConntrack(); err != nil {
		return nil, fmt.Errorf("flushing the director's conntrack table: %w", err)
	}
	var ready result
	if err := e.worker(job{Mode: "ready", Addrs: []string{addr(key)}, Timeout: 10 * time.Second}, &ready, time.Minute); err != nil {
		return nil, err
	}

	fmt.Printf("  throughput: %d × RETR of %s at once (EPSV, TYPE I), %d runs\n", o.parallel, benchkit.FormatSize(o.Size), o.Runs)
	var mb, mach, soft []float64
	for i := range o.Runs {
		var d result
		if err := e.worker(job{Mode: "download", Addrs: []string{addr(key)}, Clients: o.parallel, Size: o.Size,
			BufSize: o.BufSize, Timeout: o.XferTimeout}, &d, o.XferTimeout+time.Minute); err != nil {
			return nil, fmt.Errorf("throughput run %d: %w", i+1, err)
		}
		r.downloads = append(r.downloads, d)
		gib := float64(d.Bytes) / (1 << 30)
		mbps := float64(d.Bytes) / d.CPU.Wall / 1e6
		mb, mach, soft = append(mb, mbps), append(mach, d.CPU.Busy/gib), append(soft, d.CPU.Softirq/gib)
		fmt.Printf("    run %d %9.1f MB/s  (%.2f s; machine %.2f of %d CPUs busy, %.2f CPU-s/GiB, softirq %.2f; errors %d%s)\n",
			i+1, mbps, d.CPU.Wall, d.CPU.CPUs(), runtime.NumCPU(), d.CPU.Busy/gib, d.CPU.Softirq/gib, d.Errors, interference(d))
		printErrs(d)
		time.Sleep(500 * time.Millisecond)
	}
	r.mbps, r.machGiB, r.softGiB = benchkit.Median(mb), benchkit.Median(mach), benchkit.Median(soft)

	fmt.Printf("  session rate: %d clients × %s (connect, login, EPSV+LIST, EPSV+RETR 4 KiB, QUIT); load average %s\n",
		o.Clients, o.Duration, benchkit.LoadAvg())
	if err := e.t.flushConntrack(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	cpu0 := e.proxyCPU()
	if err := e.worker(job{Mode: "rate", Addrs: []string{addr(key)}, Clients: o.Clients, Duration: o.Duration,
		Timeout: o.SessionTimeout}, &r.rate, o.Duration+o.SessionTimeout+time.Minute); err != nil {
		return nil, err
	}
	for i, c := range e.proxyCPU() {
		r.proxyCPU = append(r.proxyCPU, c-cpu0[i])
	}
	if n > 0 {
		var err error
		if r.perInst, err = e.t.controlPerInstance(); err != nil {
			return nil, fmt.Errorf("reading the director's conntrack table: %w", err)
		}
	}
	rr := r.rate
	fmt.Printf("    %d sessions in %.1f s = %.1f sessions/s  p50 %.2f ms  p99 %.2f ms  errors %d\n",
		rr.Sessions, rr.CPU.Wall, r.sessionsPerSec(), benchkit.Ms(rr.P50), benchkit.Ms(rr.P99), rr.Errors)
	fmt.Printf("    machine %.2f of %d CPUs busy, %.2f ms CPU/session (softirq %.2f)%s\n",
		rr.CPU.CPUs(), runtime.NumCPU(), r.machPerSession(), r.softPerSession(), interference(rr))
	fmt.Printf("    ftpalg CPU s per instance %s; sessions per instance %s\n", r.proxyLine(), r.spread())
	printErrs(rr)
	if s := e.aliveErr(); s != "" {
		return nil, fmt.Errorf("an instance died:\n%s", s)
	}
	return r, nil
}

// proxyCPU is each instance's ftpalg CPU seconds so far.
func (e *env) proxyCPU() []float64 {
	var out []float64
	for _, p := range e.proxies {
		c, _ := benchkit.CPUSeconds(p.PID())
		out = append(out, c)
	}
	return out
}

func interference(r result) string {
	s := ""
	if r.OtherCPU > 0 {
		s += fmt.Sprintf("; other processes %.2f CPU-s", r.OtherCPU)
	}
	if r.CPU.Steal > 0 {
		s += fmt.Sprintf("; steal %.2f CPU-s", r.CPU.Steal)
	}
	return s
}

func printErrs(r result) {
	for _, k := range benchkit.TopKinds(r.ErrKinds, 5) {
		fmt.Printf("    %6d × %s\n", r.ErrKinds[k], k)
	}
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

// proxyLine is the instances' ftpalg CPU seconds, "0.41/0.02/0.02".
func (r *cfgResult) proxyLine() string {
	var s []string
	for _, c := range r.proxyCPU {
		s = append(s, benchkit.F2(c))
	}
	return strings.Join(s, "/")
}

// spread is the control connections per instance the director's
// conntrack table counted, "412/398/-" ("-": not balanced to; direct1,
// which the director does not balance: "-").
func (r *cfgResult) spread() string {
	if r.perInst == nil {
		return "-"
	}
	n := instances(r.key)
	var s []string
	for i, c := range r.perInst {
		if i < n {
			s = append(s, strconv.Itoa(c))
		} else {
			s = append(s, "-")
		}
	}
	return strings.Join(s, "/")
}
