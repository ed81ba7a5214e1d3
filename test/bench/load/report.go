package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// summary is the compact report printed at the end: the figures of idle,
// churn and keepalive, and one line per fault.
func summary(r *results) string {
	return figures(r) + faultLines(r)
}

// figures are the summary's figures of idle, churn and keepalive (the
// Markdown's code block; its faults are a table).
func figures(r *results) string {
	var b strings.Builder
	row := func(name, value string) { fmt.Fprintf(&b, "%-46s %s\n", name, value) }
	if i := r.idle; i != nil {
		row("idle: sessions held (failed to open)", fmt.Sprintf("%d (%d)", i.sessions, i.failed))
		row("idle: proxy VmRSS per session, KiB", benchkit.F1(i.kibPerSession()))
		row("idle: proxy fds per session", benchkit.F2(i.fdsPerSession()))
		row("idle: proxy VmRSS before/with/after, MiB", fmt.Sprintf("%.1f/%.1f/%.1f", mib(i.before.RSS), mib(i.with.RSS), mib(i.closed.RSS)))
		row("idle: proxy fds before/with/after", fmt.Sprintf("%d/%d/%d", i.before.FDs, i.with.FDs, i.closed.FDs))
		row("idle: proxy threads before/with/after", fmt.Sprintf("%d/%d/%d", i.before.Threads, i.with.Threads, i.closed.Threads))
		if i.released > 0 {
			row(fmt.Sprintf("idle: proxy VmRSS %.0f s after closing, MiB", i.releaseSecs), benchkit.F1(mib(i.released)))
		}
	}
	if c := r.churn; c != nil {
		ok := len(c.rate.Latencies)
		row("churn: server", c.server)
		row(fmt.Sprintf("churn: sessions ok of %d (%d clients)", c.sessions, c.clients), fmt.Sprintf("%d, %d errors", ok, c.rate.Errors))
		for _, k := range benchkit.TopKinds(c.rate.ErrKinds, 3) {
			row("churn: error", fmt.Sprintf("%d × %s", c.rate.ErrKinds[k], k))
		}
		row("churn: sessions/s, p50/p99 ms", fmt.Sprintf("%.1f, %.2f/%.2f", float64(ok)/c.rate.Secs,
			benchkit.Ms(benchkit.Percentile(c.rate.Latencies, 50)), benchkit.Ms(benchkit.Percentile(c.rate.Latencies, 99))))
		row("churn: proxy fds before/peak/after", fmt.Sprintf("%d/%d/%d (after: %s)", c.before.FDs, c.peak.FDs, c.after.FDs, kinds(c.kindsAfter)))
		row("churn: proxy threads before/peak/after", fmt.Sprintf("%d/%d/%d", c.before.Threads, c.peak.Threads, c.after.Threads))
		row("churn: proxy VmRSS before/peak/after, MiB", fmt.Sprintf("%.1f/%.1f/%.1f", mib(c.before.RSS), mib(c.peak.RSS), mib(c.after.RSS)))
		row("churn: proxy CPU ms per session", benchkit.F2(c.cpuMs))
		row("churn: proxy log lines at warn and above", strconv.Itoa(c.warnings))
		if c.warnings > 0 {
			row("churn: their messages", c.warned)
		}
	}
	if k := r.keepalive; k != nil {
		row(fmt.Sprintf("keepalive: alive after %s idle (--tcp-keepalive %s)", k.hold, k.period), fmt.Sprintf("%d of %d (%d failed to open)", k.alive, k.sessions, k.failed))
		row("keepalive: proxy sessions ended during the hold", k.ended)
	}
	return b.String()
}

// faultLines are one line per fault, and one per unexpected outcome.
func faultLines(r *results) string {
	var b strings.Builder
	if len(r.faults) > 0 {
		b.WriteString("faults (what the client saw | what the proxy logged | when):\n")
	}
	for _, f := range r.faults {
		fmt.Fprintf(&b, "  %-13s %s | %s | %s\n", f.name, f.client, f.logged, f.after)
		for _, u := range f.unexpected {
			fmt.Fprintf(&b, "  %-13s UNEXPECTED: %s\n", "", u)
		}
	}
	return b.String()
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// markdown renders the run for docs/benchmarks-load.md.
func markdown(r *results) string {
	var b strings.Builder
	f := r.facts
	b.WriteString(f.MarkdownHead("test/bench/load", r.vsftpd))
	fmt.Fprintf(&b, "- background load before the run: %.2f CPUs busy, load average %s\n", r.background, f.LoadAvg)
	for _, n := range r.notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if f := figures(r); f != "" {
		fmt.Fprintf(&b, "\n```\n%s```\n", f)
	}
	if len(r.faults) > 0 {
		b.WriteString("\n| fault | what was done | what the client saw | what the proxy logged | when |\n|---|---|---|---|---|\n")
		cell := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
		for _, x := range r.faults {
			client := cell(x.client)
			for _, u := range x.unexpected {
				client += " **UNEXPECTED: " + cell(u) + "**"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", x.name, cell(x.did), client, cell(x.logged), cell(x.after))
		}
	}
	return b.String()
}
