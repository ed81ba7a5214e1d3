//go:build linux

package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// ratioPairs are the ratio columns.
var ratioPairs = [][2]string{{"n2", "n1"}, {"n3", "n1"}, {"n1", "direct1"}}

// summary is the table printed at the end: one column per configuration,
// then the ratios, then the director's cost.
func summary(e *env, res []*cfgResult) string {
	o := e.o
	by := map[string]*cfgResult{}
	for _, r := range res {
		by[r.key] = r
	}
	b := benchkit.NewTable("%-44s %14s %14s %14s %14s %7s %7s %10s", configs, ratioPairs, by)
	// row: prec < 0 leaves the ratios out.
	row := func(name string, val func(*cfgResult) float64, format func(float64) string, prec int) {
		b.Row(name, val, format, prec, nil)
	}
	text := b.Text
	count := func(v float64) string { return strconv.Itoa(int(v)) }
	row(fmt.Sprintf("throughput, %d × %s RETR, median MB/s", o.parallel, benchkit.FormatSize(o.Size)), func(r *cfgResult) float64 { return r.mbps }, benchkit.F1, 3)
	row("machine CPU s per GiB", func(r *cfgResult) float64 { return r.machGiB }, benchkit.F3, 3)
	row("  of which irq+softirq", func(r *cfgResult) float64 { return r.softGiB }, benchkit.F3, 3)
	row("  download errors", func(r *cfgResult) float64 {
		n := 0
		for _, d := range r.downloads {
			n += d.Errors
		}
		return float64(n)
	}, count, -1)
	row(fmt.Sprintf("sessions/s (%d clients)", o.Clients), func(r *cfgResult) float64 { return r.sessionsPerSec() }, benchkit.F1, 3)
	row("  session latency p50, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate.P50) }, benchkit.F2, 2)
	row("  session latency p99, ms", func(r *cfgResult) float64 { return benchkit.Ms(r.rate.P99) }, benchkit.F2, 2)
	row("  session errors", func(r *cfgResult) float64 { return float64(r.rate.Errors) }, count, -1)
	row("  machine CPU ms per session", func(r *cfgResult) float64 { return r.machPerSession() }, benchkit.F3, 3)
	row("    of which irq+softirq", func(r *cfgResult) float64 { return r.softPerSession() }, benchkit.F3, 3)
	row("  machine CPUs busy", func(r *cfgResult) float64 { return r.rate.CPU.CPUs() }, benchkit.F2, -1)
	text("  sessions per instance (conntrack)", (*cfgResult).spread)
	text("  ftpalg CPU s per instance", (*cfgResult).proxyLine)
	row("  other processes' CPU-s", func(r *cfgResult) float64 { return r.rate.OtherCPU }, benchkit.F2, -1)
	row("  steal CPU-s", func(r *cfgResult) float64 { return r.rate.CPU.Steal }, benchkit.F2, -1)
	row("other processes' CPU-s (throughput)", func(r *cfgResult) float64 {
		var s float64
		for _, d := range r.downloads {
			s += d.OtherCPU
		}
		return s
	}, benchkit.F2, -1)
	if d, n1 := by["direct1"], by["n1"]; d != nil && n1 != nil {
		fmt.Fprintf(b, "director's cost (n1 − direct1, the same instance without and with the balancer): %+.3f ms CPU per session (irq+softirq %+.3f), %+.3f CPU-s per GiB (irq+softirq %+.3f)\n",
			n1.machPerSession()-d.machPerSession(), n1.softPerSession()-d.softPerSession(), n1.machGiB-d.machGiB, n1.softGiB-d.softGiB)
	}
	fmt.Fprintf(b, "director: nftables DNAT by jhash(saddr) mod %d buckets (stand-in for IPVS, which this kernel lacks); %d client source addresses; %s CPUs shared by clients, director, instances and servers\n",
		buckets, numSources, e.facts.NProc)
	return b.String()
}

// markdown renders the run for docs/benchmarks-scaleout.md.
func markdown(e *env, res []*cfgResult, table string) string {
	var b strings.Builder
	f := e.facts
	b.WriteString(f.MarkdownHead("test/bench/scaleout", e.vsftpd))
	fmt.Fprintf(&b, "- load average before the run: %s; background load: %.2f CPUs busy\n", f.LoadAvg, e.background)
	fmt.Fprintf(&b, "\n```\n%s```\n", table)
	fmt.Fprintf(&b, "\nThroughput runs (%d downloads at once; MB/s = 10^6 bytes/s of all of them; busy = CPUs of the whole machine busy, of %s):\n\n", e.o.parallel, f.NProc)
	b.WriteString("| configuration | run | MB/s | s | busy | CPU-s/GiB | irq+softirq/GiB | errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range res {
		for i, d := range r.downloads {
			gib := float64(d.Bytes) / (1 << 30)
			fmt.Fprintf(&b, "| %s | %d | %.1f | %.2f | %.2f | %.3f | %.3f | %d |\n", r.key, i+1, float64(d.Bytes)/d.CPU.Wall/1e6, d.CPU.Wall,
				d.CPU.CPUs(), d.CPU.Busy/gib, d.CPU.Softirq/gib, d.Errors)
		}
	}
	b.WriteString("\nSession rate:\n\n")
	for _, r := range res {
		rr := r.rate
		fmt.Fprintf(&b, "- %s, %d clients: %d sessions in %.1f s, %.2f CPUs busy, errors %d", r.key, e.o.Clients, rr.Sessions, rr.CPU.Wall, rr.CPU.CPUs(), rr.Errors)
		for _, k := range benchkit.TopKinds(rr.ErrKinds, 3) {
			fmt.Fprintf(&b, "; %d × `%s`", rr.ErrKinds[k], k)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nThe director's ruleset after the last configuration:\n\n%s\n", benchkit.Indent(e.t.ruleset()))
	return b.String()
}
