// Command bench measures the ftpalg proxy against a direct connection to
// the same FTP server, on loopback, in one run:
//
//  1. throughput of a large RETR (EPSV), direct and through the proxy;
//  2. session rate of short sessions (login, LIST, RETR of 4 KiB, QUIT)
//     from concurrent clients, direct and through the proxy;
//  3. resident memory of the proxy per idle logged-in control session;
//  4. the cost of metrics (--only metrics);
//  5. FTPS (--only ftps, not part of the default run): throughput and
//     session rate of FTPS straight to vsftpd against ftpalg with TLS on
//     both legs, TLS offload to a plain vsftpd and plain FTP (ftps.go,
//     docs/benchmarks-ftps.md).
//
// It builds ./cmd/ftpalg and runs it as a separate process so that its CPU
// time and memory can be read from /proc alone. The server is vsftpd when
// /usr/sbin/vsftpd exists (started here, on 127.0.0.1, with its own config
// in a temporary directory), else the in-process internal/ftpd; the idle
// sessions always go to internal/ftpd, in this process.
//
// It is a measurement, not a test: it prints figures and ratios and passes
// no judgement. Run it from the module root:
//
//	go run ./test/bench                       # the full run (1 GiB, 32 clients × 10 s, 5000 idle)
//	go run ./test/bench --size 64MiB --duration 2s --idle 500
//	go run ./test/bench --only rate --markdown /tmp/rate.md
//	go run ./test/bench --only ftps           # FTPS (1 GiB, 32 clients × 10 s)
//
// It needs Linux (/proc) and, for 5000 idle sessions, an open-file limit
// above 10000: it raises its own RLIMIT_NOFILE (as root also the hard
// limit), and the proxy inherits it.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

type options struct {
	benchkit.Flags
	MetricsData string // --data-ports of the proxy with metrics
	metricsPort string
	idle        int
	settle      time.Duration
	releaseWait time.Duration
	server      string
}

func main() { benchkit.Main("bench", parseFlags, run) }

func parseFlags() (*options, error) {
	o := &options{}
	o.DefineSome("32", []string{"throughput", "rate", "idle", "metrics", "ftps"}, []string{"throughput", "rate", "idle", "metrics"},
		"which measurements to run, comma-separated (ftps only when asked for)")
	flag.StringVar(&o.MetricsData, "metrics-data-ports", "31000-31999", "--data-ports of the second proxy, the one with metrics (apart from the first's)")
	flag.StringVar(&o.metricsPort, "metrics-port", "39121", "port of the second proxy's --metrics-listen on 127.0.0.1")
	flag.IntVar(&o.idle, "idle", 5000, "idle sessions held open through the proxy in the memory test")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "wait before reading memory figures")
	flag.DurationVar(&o.releaseWait, "release-wait", 300*time.Second, "after closing the idle sessions, how long to wait for the proxy's RSS to come back near the baseline")
	flag.StringVar(&o.server, "server", "auto", "server for throughput and rate: auto (vsftpd if present), vsftpd or ftpd (in-process internal/ftpd)")
	if err := o.Parse(); err != nil {
		return nil, err
	}
	switch o.server {
	case "auto", "vsftpd", "ftpd":
	default:
		return nil, fmt.Errorf("--server %q: want auto, vsftpd or ftpd", o.server)
	}
	if o.idle < 1 {
		return nil, fmt.Errorf("--idle must be positive")
	}
	return o, nil
}

type results struct {
	facts      benchkit.Facts
	background float64 // CPUs busy before the benchmark started
	serverName string
	thr        *throughputResult
	rateDirect *rateResult
	rateProxy  *rateResult
	idle       *idleResult
	metrics    *metricsResult
	ftps       *ftpsResult
}

func run(o *options) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("needs Linux (/proc), not %s", runtime.GOOS)
	}
	res := &results{facts: benchkit.MachineFacts()}
	setup, err := benchkit.NewSetup("bench", o.idle, o.Keep)
	if err != nil {
		return err
	}
	defer setup.Close()
	dir, root := setup.Dir, setup.Root
	fmt.Println(strings.Join(append(setup.Notes, res.facts.Title("ftpalg benchmark")), "\n"))
	if d, err := benchkit.Background(); err == nil {
		_, res.background = busy(d)
		note := ""
		if res.background > 0.2 {
			note = " — other work is running; the figures will be noisy"
		}
		fmt.Printf("background load before starting: %.2f of %d CPUs busy%s\n", res.background, runtime.NumCPU(), note)
	}
	bin := o.ProxyBin
	if bin == "" {
		fmt.Println("building ./cmd/ftpalg ...")
		if bin, err = benchkit.BuildProxy(dir); err != nil {
			return err
		}
	}
	needFiles := o.Only["throughput"] || o.Only["rate"] || o.Only["metrics"] || o.Only["ftps"]
	size := o.Size
	if !o.Only["throughput"] && !o.Only["metrics"] && !o.Only["ftps"] {
		size = 0
	}
	if needFiles {
		t0 := time.Now()
		if err := benchkit.MakeFiles(root, size); err != nil {
			return fmt.Errorf("writing test files: %w", err)
		}
		if size > 0 {
			fmt.Printf("wrote %s test file (1 MiB random block repeated) in %.1f s\n", benchkit.FormatSize(size), time.Since(t0).Seconds())
		}
	}

	// The children run in process groups of their own (see benchkit.Start),
	// so an interrupt at the terminal does not reach them: stop them here.
	defer benchkit.StopAll(stopGrace)
	benchkit.OnSignal("bench", "stopping the server and proxy", func() {
		benchkit.StopAll(stopGrace)
		setup.Close()
	})

	if o.Only["throughput"] || o.Only["rate"] || o.Only["metrics"] {
		useVsftpd := o.server == "vsftpd"
		if o.server == "auto" {
			_, err := os.Stat(o.Vsftpd)
			useVsftpd = err == nil
			if !useVsftpd {
				fmt.Printf("NOTE: %s not found: falling back to the in-process internal/ftpd server (it shares this process's CPU with the clients)\n", o.Vsftpd)
			}
		}
		var serverAddr string
		var vs *nstest.Proc
		if useVsftpd {
			var err error
			if vs, serverAddr, err = benchkit.StartVsftpd(o.Vsftpd, dir, root, o.ServerPasv, 100000); err != nil {
				return err
			}
			res.serverName = "vsftpd (" + o.Vsftpd + ", separate process)"
		} else {
			srv, err := ftpd.Start(ftpd.Options{Dir: root, Listen: "127.0.0.1:0"})
			if err != nil {
				return err
			}
			defer srv.Close()
			serverAddr = srv.Addr()
			res.serverName = "internal/ftpd (in the bench process)"
		}
		px, proxyAddr, err := startProxy(bin, dir, "proxy", serverAddr, o.ProxyData, 100000)
		if err != nil {
			return err
		}
		fmt.Printf("server: %s on %s; proxy pid %d on %s (--log-level warn)\n", res.serverName, serverAddr, px.PID(), proxyAddr)

		if o.Only["throughput"] {
			if res.thr, err = runThroughput(o, serverAddr, proxyAddr, px.PID()); err != nil {
				return err
			}
		}
		if o.Only["rate"] {
			fmt.Printf("\n== 2. Session rate: %d clients × %s, each session = connect, login, EPSV+LIST, EPSV+RETR 4 KiB, QUIT ==\n",
				o.Clients, o.Duration)
			res.rateDirect = runRate(o, "direct", serverAddr, 0)
			time.Sleep(time.Second)
			res.rateProxy = runRate(o, "proxy", proxyAddr, px.PID())
			d, p := res.rateDirect, res.rateProxy
			fmt.Printf("  ratio proxy/direct: rate %s, p50 latency %s, p99 latency %s\n",
				benchkit.Ratio(p.rate, d.rate, 3), benchkit.Ratio(benchkit.Ms(p.p50), benchkit.Ms(d.p50), 2), benchkit.Ratio(benchkit.Ms(p.p99), benchkit.Ms(d.p99), 2))
		}
		if o.Only["metrics"] {
			pm, pmAddr, err := startProxyWith(bin, dir, "proxy-metrics", serverAddr, o.MetricsData, 100000, "--metrics-listen", "127.0.0.1:"+o.metricsPort)
			if err != nil {
				return err
			}
			if res.metrics, err = runMetricsCost(o, serverAddr, proxyAddr, px.PID(), pmAddr, "http://127.0.0.1:"+o.metricsPort+"/metrics", pm.PID()); err != nil {
				return err
			}
			logTail(pm)
			pm.Stop(stopGrace)
		}
		logTail(px)
		px.Stop(stopGrace)
		if vs != nil {
			vs.Stop(stopGrace)
		}
	}
	if o.Only["ftps"] {
		if _, err := os.Stat(o.Vsftpd); err != nil {
			return fmt.Errorf("the FTPS measurement needs vsftpd: %w", err)
		}
		if res.ftps, err = runFTPS(o, bin, dir, root); err != nil {
			return err
		}
	}

	if o.Only["idle"] {
		fdir := dir + "/ftpd"
		if err := os.Mkdir(fdir, 0o755); err != nil {
			return err
		}
		srv, err := ftpd.Start(ftpd.Options{Dir: fdir, Listen: "127.0.0.1:0"})
		if err != nil {
			return err
		}
		defer srv.Close()
		px, proxyAddr, err := startProxy(bin, dir, "proxy-idle", srv.Addr(), o.ProxyData, o.idle+1000)
		if err != nil {
			return err
		}
		fmt.Printf("\nproxy pid %d on %s in front of internal/ftpd on %s\n", px.PID(), proxyAddr, srv.Addr())
		if res.idle, err = runIdle(o, proxyAddr, px.PID()); err != nil {
			return err
		}
		logTail(px)
	}

	table := summary(o, res)
	return o.Report(table, func() string { return markdown(o, res, table) })
}

// logTail prints how many lines the proxy logged (at --log-level warn:
// none, normally) and the last ones.
func logTail(px *nstest.Proc) {
	if log := px.Log(); log != "" {
		fmt.Printf("  proxy wrote %d log lines (warn and above); last ones:\n%s\n",
			strings.Count(log, "\n"), benchkit.Indent(nstest.Tail(log, 5)))
	}
}

// summary is the compact table printed at the end and put in the Markdown.
func summary(o *options, r *results) string {
	var b strings.Builder
	row := func(name, direct, proxy, ratio string) {
		line := fmt.Sprintf("%-38s %14s %14s %8s", name, direct, proxy, ratio)
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	if r.thr != nil || r.rateDirect != nil || r.metrics != nil || r.idle != nil {
		row("measurement", "direct", "proxy", "ratio")
	}
	if t := r.thr; t != nil {
		row(fmt.Sprintf("throughput, %s RETR, median MB/s", benchkit.FormatSize(o.Size)), benchkit.F1(t.direct), benchkit.F1(t.proxy), benchkit.Ratio(t.proxy, t.direct, 3))
		row("machine CPU s per GiB (all processes)", benchkit.F3(t.machDirect), benchkit.F3(t.machProxy), benchkit.Ratio(t.machProxy, t.machDirect, 3))
		row("proxy CPU s per GiB relayed", "", benchkit.F3(t.cpuPerGiB), "")
	}
	if d, p := r.rateDirect, r.rateProxy; d != nil && p != nil {
		row(fmt.Sprintf("sessions/s (%d clients)", o.Clients), benchkit.F1(d.rate), benchkit.F1(p.rate), benchkit.Ratio(p.rate, d.rate, 3))
		row("session latency p50, ms", benchkit.F2(benchkit.Ms(d.p50)), benchkit.F2(benchkit.Ms(p.p50)), benchkit.Ratio(benchkit.Ms(p.p50), benchkit.Ms(d.p50), 2))
		row("session latency p99, ms", benchkit.F2(benchkit.Ms(d.p99)), benchkit.F2(benchkit.Ms(p.p99)), benchkit.Ratio(benchkit.Ms(p.p99), benchkit.Ms(d.p99), 2))
		row("session errors", strconv.Itoa(d.errors), strconv.Itoa(p.errors), "")
		if d.rate > 0 && p.rate > 0 {
			md, mp := d.busy/d.rate*1000, p.busy/p.rate*1000
			row("machine CPU ms per session", benchkit.F2(md), benchkit.F2(mp), benchkit.Ratio(mp, md, 3))
		}
		row("proxy CPU ms per session", "", benchkit.F2(p.proxyCPU), "")
	}
	if m := r.metrics; m != nil {
		metricsRows(row, o, m)
	}
	if i := r.idle; i != nil {
		row(fmt.Sprintf("proxy VmRSS per idle session, KiB (%d)", i.sessions), "", benchkit.F1(i.perSession), "")
		row("proxy VmRSS before/open/closed, MiB", "", fmt.Sprintf("%.1f/%.1f/%.1f", mib(i.rssBefore), mib(i.rssAfter), mib(i.rssClosed)), "")
		row("proxy fds before/open/closed", "", fmt.Sprintf("%d/%d/%d", i.fdBefore, i.fdAfter, i.fdClosed), "")
		if i.failed > 0 {
			row("idle sessions that failed to open", "", strconv.Itoa(i.failed), "")
		}
	}
	if r.serverName != "" {
		fmt.Fprintf(&b, "server: %s\n", r.serverName)
	}
	if r.ftps != nil {
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		b.WriteString(ftpsTable(o, r.ftps))
	}
	return b.String()
}

func mib(kib int64) float64 {
	return float64(kib) / 1024
}

// markdown renders the run for docs/benchmarks.md.
func markdown(o *options, r *results, table string) string {
	var b strings.Builder
	f := r.facts
	b.WriteString(f.MarkdownHead("test/bench", ""))
	fmt.Fprintf(&b, "- background load before the run: %.2f CPUs busy\n", r.background)
	if r.serverName != "" {
		fmt.Fprintf(&b, "- server (throughput, session rate): %s; idle sessions: internal/ftpd\n", r.serverName)
	}
	if r.ftps != nil {
		fmt.Fprintf(&b, "- servers (FTPS): two %s, one requiring FTPS (require_ssl_reuse), one plain\n", o.Vsftpd)
	}
	fmt.Fprintf(&b, "\n```\n%s```\n", table)
	if t := r.thr; t != nil {
		fmt.Fprintf(&b, "\nThroughput runs (MB/s = 10^6 bytes/s; \"busy\" = CPUs of the whole machine busy during the run, of %s):\n\n", f.NProc)
		b.WriteString("| run | direct MB/s | busy | proxy MB/s | busy | proxy CPU s |\n|---|---|---|---|---|---|\n")
		for i := 0; i+1 < len(t.runs); i += 2 {
			d, p := t.runs[i], t.runs[i+1]
			fmt.Fprintf(&b, "| %d | %.1f | %.2f | %.1f | %.2f | %.2f |\n", i/2+1, d.mbps(), d.busy, p.mbps(), p.busy, p.cpu)
		}
	}
	if d, p := r.rateDirect, r.rateProxy; d != nil && p != nil {
		fmt.Fprintf(&b, "\nSession rate: direct %d sessions in %.1f s (%.2f CPUs busy), proxy %d sessions in %.1f s (%.2f CPUs busy, proxy %.2f ms CPU per session); errors direct %d, proxy %d.\n",
			d.sessions, d.secs, d.busy, p.sessions, p.secs, p.busy, p.proxyCPU, d.errors, p.errors)
		for _, x := range []struct {
			label string
			r     *rateResult
		}{{"direct", d}, {"proxy", p}} {
			for _, k := range benchkit.TopKinds(x.r.errKinds, 5) {
				fmt.Fprintf(&b, "- %s error ×%d: `%s`\n", x.label, x.r.errKinds[k], k)
			}
		}
	}
	if r.ftps != nil {
		b.WriteString(ftpsMarkdown(r.ftps, f.NProc))
	}
	if i := r.idle; i != nil {
		fmt.Fprintf(&b, "\nIdle sessions: %d opened in %.1f s (%d failed); proxy VmRSS %d → %d KiB (RssAnon %d → %d KiB, VmHWM %d KiB), fds %d → %d; "+
			"after closing all: fds %d in %.1f s, VmRSS %d KiB %.0f s after closing. Open-file limit of the proxy: %s.\n",
			i.sessions, i.openSecs, i.failed, i.rssBefore, i.rssAfter, i.anonBefore, i.anonAfter, i.hwm, i.fdBefore, i.fdAfter,
			i.fdClosed, i.closeSecs, i.rssClosed, i.releaseSecs, i.nofileProxy)
	}
	return b.String()
}
