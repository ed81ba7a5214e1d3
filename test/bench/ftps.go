package main

import (
	"crypto/tls"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// ---- 5. FTPS ----

// The FTPS measurement (issue 12) compares four paths of the same Go
// client, in one run, each against the first:
//
//	direct   client ══TLS══ vsftpd-tls                      (the reference: FTPS without ftpalg)
//	tls      client ══TLS══ ftpalg ══TLS══ vsftpd-tls       (--client-tls required --upstream-tls explicit)
//	offload  client ══TLS══ ftpalg ──plain── vsftpd-plain   (--client-tls required --upstream-tls off)
//	plain    client ──plain── ftpalg ──plain── vsftpd-plain (no TLS at all: test 1's proxy path)
//
// vsftpd-tls forces TLS on login and data and requires data connections
// to resume the control connection's session (require_ssl_reuse). TLS
// sessions are TLS 1.3 (the suite is printed); the client's data
// connections resume its control connection's session, and so do
// ftpalg's toward vsftpd-tls.
//
// Throughput runs alternate between the four paths; then a session-rate
// run of each, the session script of test 2 (over FTPS: AUTH TLS, PBSZ 0,
// PROT P after the greeting, so three TLS handshakes per session, the
// control connection's full one and two resumed ones).

// ftpsPath is one of the compared paths.
type ftpsPath struct {
	name  string
	label string // for the column of ratios against direct
	tls   bool   // the client speaks FTPS
}

var ftpsPaths = []ftpsPath{
	{"direct", "", true},
	{"tls", "tls/dir", true},
	{"offload", "off/dir", true},
	{"plain", "plain/dir", false},
}

type ftpsResult struct {
	tlsInfo  string               // "TLS 1.3 TLS_AES_128_GCM_SHA256": the client's control connection to vsftpd
	runs     map[string][]xferRun // path → throughput runs, in order
	mbps     map[string]float64   // median
	machGiB  map[string]float64   // median machine CPU s per GiB
	proxyGiB map[string]float64   // ftpalg CPU s per GiB relayed (not direct)
	sysMiB   map[string]float64   // ftpalg read/write system calls per MiB relayed
	rate     map[string]*rateResult
}

func runFTPS(o *options, bin, dir, root string) (*ftpsResult, error) {
	res := &ftpsResult{runs: map[string][]xferRun{}, mbps: map[string]float64{},
		machGiB: map[string]float64{}, proxyGiB: map[string]float64{}, sysMiB: map[string]float64{}, rate: map[string]*rateResult{}}
	fmt.Printf("\n== 5. FTPS: direct (client TLS to vsftpd) against ftpalg with TLS on both legs, TLS offload to a plain vsftpd, and plain FTP ==\n")
	certs, err := benchkit.MakeTLSCerts(dir)
	if err != nil {
		return nil, err
	}
	pasv, err := splitRange(o.ServerPasv, 2)
	if err != nil {
		return nil, fmt.Errorf("--server-pasv-ports: %w", err)
	}
	data, err := splitRange(o.ProxyData, 3)
	if err != nil {
		return nil, fmt.Errorf("--proxy-data-ports: %w", err)
	}
	var procs []*nstest.Proc
	defer func() {
		for _, p := range procs {
			p.Stop(stopGrace)
		}
	}()
	vsTLS, tlsAddr, err := benchkit.StartVsftpdNamed("vsftpd-tls", o.Vsftpd, dir, root, pasv[0], 100000, certs)
	if err != nil {
		return nil, err
	}
	procs = append(procs, vsTLS)
	vsPlain, plainAddr, err := benchkit.StartVsftpdNamed("vsftpd-plain", o.Vsftpd, dir, root, pasv[1], 100000, nil)
	if err != nil {
		return nil, err
	}
	procs = append(procs, vsPlain)

	dialers := map[bool]benchftp.Dialer{true: {TLS: certs.Client()}, false: {}}
	proxy := func(name, upstream, dataPorts string, clientTLS bool, extra ...string) (*nstest.Proc, string, error) {
		args := []string{"--log-level", "warn", "--max-sessions", "100000", "--max-sessions-per-ip", "100000", "--shutdown-grace", "1s"}
		if clientTLS {
			args = append(args, "--client-tls", "required", "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile)
		}
		return benchkit.Proxy{Bin: bin, Dir: dir, Name: name, Upstream: upstream, DataPorts: dataPorts,
			Dialer: dialers[clientTLS], Args: append(args, extra...)}.Start()
	}
	addrs := map[string]string{"direct": tlsAddr}
	pids := map[string]int{}
	for i, p := range []struct {
		path, upstream string
		clientTLS      bool
		extra          []string
	}{
		{"tls", tlsAddr, true, []string{"--upstream-tls", "explicit", "--upstream-ca", certs.CAFile}},
		{"offload", plainAddr, true, []string{"--upstream-tls", "off"}},
		{"plain", plainAddr, false, nil},
	} {
		px, addr, err := proxy("proxy-"+p.path, p.upstream, data[i], p.clientTLS, p.extra...)
		if err != nil {
			return nil, err
		}
		procs = append(procs, px)
		addrs[p.path], pids[p.path] = addr, px.PID()
	}
	fmt.Printf("  vsftpd-tls on %s, vsftpd-plain on %s; ftpalg: tls pid %d on %s, offload pid %d on %s, plain pid %d on %s\n",
		tlsAddr, plainAddr, pids["tls"], addrs["tls"], pids["offload"], addrs["offload"], pids["plain"], addrs["plain"])
	for _, p := range ftpsPaths {
		c, err := dialers[p.tls].Open(addrs[p.name], time.Now().Add(o.SessionTimeout))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		if st, ok := c.TLSState(); ok && p.name == "direct" {
			res.tlsInfo = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
		}
		c.Quit()
		c.Close()
	}
	fmt.Printf("  client's TLS: %s\n", res.tlsInfo)

	fmt.Printf("  throughput: RETR of %s (EPSV, TYPE I; PROT P where TLS), %d runs each, alternating\n", benchkit.FormatSize(o.Size), o.Runs)
	proxyCPU := map[string]float64{}
	proxyBytes := map[string]int64{}
	proxySys := map[string]int64{}
	for i := range o.Runs {
		for _, p := range ftpsPaths {
			pid := pids[p.name]
			sys0, _ := benchkit.Syscalls(pid)
			cpu0, _ := benchkit.CPUSeconds(pid)
			m0, _ := benchkit.MachineCPU()
			n, secs, err := benchkit.DownloadWith(dialers[p.tls], addrs[p.name], o.Size, make([]byte, o.BufSize), o.XferTimeout, nil)
			m1, _ := benchkit.MachineCPU()
			cpu1, _ := benchkit.CPUSeconds(pid)
			sys1, _ := benchkit.Syscalls(pid)
			if err != nil {
				return nil, fmt.Errorf("FTPS run %d %s: %w", i+1, p.name, err)
			}
			r := xferRun{via: p.name, bytes: n, secs: secs}
			r.mach, r.busy = busy(m1.Sub(m0))
			extra := ""
			if pid != 0 {
				r.cpu = cpu1 - cpu0
				proxyCPU[p.name] += r.cpu
				proxyBytes[p.name] += n
				proxySys[p.name] += sys1 - sys0
				extra = fmt.Sprintf("  proxy CPU %.2f s, %.1f syscalls/MiB", r.cpu, float64(sys1-sys0)/(float64(n)/(1<<20)))
			}
			res.runs[p.name] = append(res.runs[p.name], r)
			fmt.Printf("  run %d %-8s %9.1f MB/s  (%.2f s, machine %.2f of %d CPUs busy)%s\n",
				i+1, p.name, r.mbps(), secs, r.busy, runtime.NumCPU(), extra)
		}
	}
	var medians []string
	for _, p := range ftpsPaths {
		var mb, mg []float64
		for _, r := range res.runs[p.name] {
			mb = append(mb, r.mbps())
			mg = append(mg, r.mach/(float64(r.bytes)/(1<<30)))
		}
		res.mbps[p.name], res.machGiB[p.name] = benchkit.Median(mb), benchkit.Median(mg)
		if proxyBytes[p.name] > 0 {
			res.proxyGiB[p.name] = proxyCPU[p.name] / (float64(proxyBytes[p.name]) / (1 << 30))
			res.sysMiB[p.name] = float64(proxySys[p.name]) / (float64(proxyBytes[p.name]) / (1 << 20))
		}
		m := fmt.Sprintf("%s %.1f", p.name, res.mbps[p.name])
		if p.name != "direct" {
			m += " (" + benchkit.Ratio(res.mbps[p.name], res.mbps["direct"], 3) + ")"
		}
		medians = append(medians, m)
	}
	fmt.Printf("  median MB/s (ratio to direct): %s\n", strings.Join(medians, ", "))
	fmt.Printf("  ftpalg CPU s per GiB relayed: tls %.3f, offload %.3f, plain %.3f; read/write system calls per MiB: tls %.1f, offload %.1f, plain %.1f\n",
		res.proxyGiB["tls"], res.proxyGiB["offload"], res.proxyGiB["plain"], res.sysMiB["tls"], res.sysMiB["offload"], res.sysMiB["plain"])

	fmt.Printf("  session rate: %d clients × %s, each session = connect, [AUTH TLS,] login, [PBSZ 0, PROT P,] EPSV+LIST, EPSV+RETR 4 KiB, QUIT\n",
		o.Clients, o.Duration)
	for i, p := range ftpsPaths {
		if i > 0 {
			time.Sleep(time.Second)
		}
		res.rate[p.name] = runRateWith(o, dialers[p.tls], p.name, addrs[p.name], pids[p.name])
	}
	for _, px := range procs[2:] {
		logTail(px)
	}
	return res, nil
}

// runRateWith is runRate with d's settings (FTPS: d.TLS).
func runRateWith(o *options, d benchftp.Dialer, label, addr string, proxyPID int) *rateResult {
	m0, _ := benchkit.MachineCPU()
	cpu0, _ := benchkit.CPUSeconds(proxyPID)
	rr := benchkit.RunRateWith(d, addr, o.Clients, o.Duration, o.SessionTimeout)
	m1, _ := benchkit.MachineCPU()
	r := &rateResult{sessions: len(rr.Latencies), secs: rr.Secs, rate: float64(len(rr.Latencies)) / rr.Secs,
		p50: benchkit.Percentile(rr.Latencies, 50), p99: benchkit.Percentile(rr.Latencies, 99), errors: rr.Errors, errKinds: rr.ErrKinds}
	_, r.busy = busy(m1.Sub(m0))
	extra := ""
	if proxyPID != 0 && r.sessions > 0 {
		cpu1, _ := benchkit.CPUSeconds(proxyPID)
		r.proxyCPU = (cpu1 - cpu0) * 1000 / float64(r.sessions)
		extra = fmt.Sprintf(", proxy CPU %.2f ms/session", r.proxyCPU)
	}
	fmt.Printf("  %-8s %7d sessions in %.1f s = %8.1f sessions/s  p50 %7.2f ms  p99 %7.2f ms  errors %d\n",
		label, r.sessions, r.secs, r.rate, benchkit.Ms(r.p50), benchkit.Ms(r.p99), r.errors)
	fmt.Printf("           machine %.2f of %d CPUs busy%s\n", r.busy, runtime.NumCPU(), extra)
	for _, k := range benchkit.TopKinds(rr.ErrKinds, 5) {
		fmt.Printf("           %6d × %s\n", rr.ErrKinds[k], k)
	}
	return r
}

// splitRange splits the port range LO-HI into n consecutive ranges.
func splitRange(r string, n int) ([]string, error) {
	lo, hi, err := benchkit.ParseRange(r)
	if err != nil {
		return nil, err
	}
	per := (hi - lo + 1) / n
	if per < 2 {
		return nil, fmt.Errorf("%s: too small to split in %d", r, n)
	}
	var out []string
	for i := range n {
		end := lo + per - 1
		if i == n-1 {
			end = hi
		}
		out = append(out, fmt.Sprintf("%d-%d", lo, end))
		lo = end + 1
	}
	return out, nil
}

// ftpsTable is the FTPS part of the summary: a column per path, then the
// ratios of each proxied path to direct.
func ftpsTable(o *options, f *ftpsResult) string {
	var b strings.Builder
	row := func(cells ...string) {
		line := fmt.Sprintf("%-38s", cells[0])
		for _, c := range cells[1:] {
			line += fmt.Sprintf(" %9s", c)
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	// ratios is a row of figures and their ratios to direct, with prec
	// digits; prec < 0: no ratios. proxiedOnly leaves direct's cell empty
	// (a figure of ftpalg's own).
	ratios := func(name string, v map[string]float64, format func(float64) string, prec int, proxiedOnly bool) {
		cells := []string{name}
		for _, p := range ftpsPaths {
			if proxiedOnly && p.name == "direct" {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, format(v[p.name]))
		}
		if prec >= 0 {
			for _, p := range ftpsPaths[1:] {
				cells = append(cells, benchkit.Ratio(v[p.name], v["direct"], prec))
			}
		}
		row(cells...)
	}
	head := []string{"FTPS (" + f.tlsInfo + ")"}
	for _, p := range ftpsPaths {
		head = append(head, p.name)
	}
	for _, p := range ftpsPaths[1:] {
		head = append(head, p.label)
	}
	row(head...)
	ratios(fmt.Sprintf("throughput, %s RETR, median MB/s", benchkit.FormatSize(o.Size)), f.mbps, benchkit.F1, 3, false)
	ratios("machine CPU s per GiB (all processes)", f.machGiB, benchkit.F3, 3, false)
	ratios("proxy CPU s per GiB relayed", f.proxyGiB, benchkit.F3, -1, true)
	ratios("proxy read/write syscalls per MiB", f.sysMiB, benchkit.F1, -1, true)
	if len(f.rate) == len(ftpsPaths) {
		get := func(fn func(*rateResult) float64) map[string]float64 {
			m := map[string]float64{}
			for p, r := range f.rate {
				m[p] = fn(r)
			}
			return m
		}
		ratios(fmt.Sprintf("sessions/s (%d clients)", o.Clients), get(func(r *rateResult) float64 { return r.rate }), benchkit.F1, 3, false)
		ratios("session latency p50, ms", get(func(r *rateResult) float64 { return benchkit.Ms(r.p50) }), benchkit.F2, 2, false)
		ratios("session latency p99, ms", get(func(r *rateResult) float64 { return benchkit.Ms(r.p99) }), benchkit.F2, 2, false)
		ratios("session errors", get(func(r *rateResult) float64 { return float64(r.errors) }), func(v float64) string { return strconv.Itoa(int(v)) }, -1, false)
		ratios("machine CPU ms per session", get(func(r *rateResult) float64 {
			if r.rate == 0 {
				return 0
			}
			return r.busy / r.rate * 1000
		}), benchkit.F2, 3, false)
		ratios("proxy CPU ms per session", get(func(r *rateResult) float64 { return r.proxyCPU }), benchkit.F2, -1, true)
	}
	return b.String()
}

// ftpsMarkdown is the FTPS part of the Markdown: the runs.
func ftpsMarkdown(f *ftpsResult, nproc string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nFTPS throughput runs (TLS: %s; MB/s = 10^6 bytes/s; \"busy\" = CPUs of the whole machine busy during the run, of %s; \"CPU\" = ftpalg's CPU seconds):\n\n", f.tlsInfo, nproc)
	b.WriteString("| run | direct MB/s | busy | tls MB/s | busy | CPU | offload MB/s | busy | CPU | plain MB/s | busy | CPU |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range f.runs["direct"] {
		fmt.Fprintf(&b, "| %d ", i+1)
		for _, p := range ftpsPaths {
			r := f.runs[p.name][i]
			fmt.Fprintf(&b, "| %.1f | %.2f ", r.mbps(), r.busy)
			if p.name != "direct" {
				fmt.Fprintf(&b, "| %.2f ", r.cpu)
			}
		}
		b.WriteString("|\n")
	}
	if len(f.rate) == len(ftpsPaths) {
		b.WriteString("\nFTPS session rate:")
		for _, p := range ftpsPaths {
			r := f.rate[p.name]
			fmt.Fprintf(&b, " %s %d sessions in %.1f s (%.2f CPUs busy, %d errors);", p.name, r.sessions, r.secs, r.busy, r.errors)
		}
		b.WriteString("\n")
		for _, p := range ftpsPaths {
			for _, k := range benchkit.TopKinds(f.rate[p.name].errKinds, 5) {
				fmt.Fprintf(&b, "- %s error ×%d: `%s`\n", p.name, f.rate[p.name].errKinds[k], k)
			}
		}
	}
	return b.String()
}
