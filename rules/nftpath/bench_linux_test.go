package nftpath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
)

// The benchmarks measure; they are not tests (`go test` without -bench
// does not run them). rules/README.md has the figures and how to run
// them.

// benchN is the number of mappings a round uses: FTPALG_BENCH_N, or def.
func benchN(def int) int {
	if n, err := strconv.Atoi(os.Getenv("FTPALG_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return def
}

func percentiles(d []time.Duration) (median, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}

func µs(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// benchMapping is the i-th of n distinct mappings (IPv4, with SNAT).
func benchMapping(i int) rules.Mapping {
	return rules.Mapping{Peer: peer, Announced: netip.AddrPortFrom(annc.Addr(), uint16(10000+i)),
		Target: netip.AddrPortFrom(target.Addr(), uint16(30000+i)), Source: source, Lifetime: time.Minute, Session: uint64(i)}
}

// BenchmarkMapClose: each round maps n mappings one at a time (so the
// kernel holds up to n), closes them all (unused: three element deletes
// each), then runs n Map+Close pairs. It reports the medians and 99th
// percentiles of Map, Close and the pair (map-median-µs, …).
func BenchmarkMapClose(b *testing.B) {
	n := benchN(2000)
	ns := newNS(b)
	d := setUp(b, ns, rules.Options{Logger: zap.NewNop()})
	ms := make([]rules.Mapping, n)
	for i := range ms {
		ms[i] = benchMapping(i)
	}
	var maps, closes, pairs []time.Duration
	ctx := context.Background()
	for b.Loop() {
		fs := make([]rules.Forward, n)
		for i, m := range ms {
			start := time.Now()
			f, err := d.Map(ctx, m)
			if err != nil {
				b.Fatal(err)
			}
			maps = append(maps, time.Since(start))
			fs[i] = f
		}
		for _, f := range fs {
			start := time.Now()
			if err := f.Close(ctx); err != nil {
				b.Fatal(err)
			}
			closes = append(closes, time.Since(start))
		}
		for _, m := range ms {
			start := time.Now()
			f, err := d.Map(ctx, m)
			if err != nil {
				b.Fatal(err)
			}
			if err := f.Close(ctx); err != nil {
				b.Fatal(err)
			}
			pairs = append(pairs, time.Since(start))
		}
	}
	report := func(name string, ds []time.Duration) string {
		med, p99 := percentiles(ds)
		b.ReportMetric(µs(med), name+"-median-µs")
		b.ReportMetric(µs(p99), name+"-p99-µs")
		return fmt.Sprintf("%s median %s p99 %s", name, med, p99)
	}
	b.Logf("%d mappings: %s; %s; %s", n, report("map", maps), report("close", closes), report("map+close", pairs))
}

// BenchmarkUsed: per round, a mapping, a client's connection through the
// router, Used, then a Flow: the latency from the connect call to Used
// closing (the handshake through the router, conntrack's event, the
// watcher), the part of it after the connect returned, and the latency
// of Flow (one conntrack query).
func BenchmarkUsed(b *testing.B) {
	require(b)
	ch := nstest.NewChain(b, nstest.ChainOptions{Forwarding: true})
	ch.Router.Sysctl(b, "net.netfilter.nf_conntrack_acct", "1")
	d := setUp(b, ch.Router, rules.Options{Logger: zap.NewNop()})
	f := nstest.V4
	ln := ch.Server.Listen(b, netip.AddrPortFrom(f.Server, 0))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tgt := ln.Addr().(*net.TCPAddr).AddrPort()
	ctx := context.Background()
	var used, after, flows []time.Duration
	i := 0
	for b.Loop() {
		i++
		m := rules.Mapping{Peer: f.Client, Announced: netip.AddrPortFrom(f.RouterClient, uint16(10000+i%50000)),
			Target: tgt, Source: f.RouterServer, Lifetime: time.Minute, Session: uint64(i)}
		fwd, err := d.Map(ctx, m)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		c, err := ch.Client.Dial(f.Client, m.Announced, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		connected := time.Now()
		select {
		case <-fwd.Used():
		case <-time.After(5 * time.Second):
			b.Fatal("Used did not close within 5 s")
		}
		used = append(used, time.Since(start))
		after = append(after, time.Since(connected))
		start = time.Now()
		if _, err := fwd.Flow(ctx); err != nil {
			b.Fatal(err)
		}
		flows = append(flows, time.Since(start))
		c.Close()
		fwd.Close(ctx)
	}
	med, p99 := percentiles(used)
	amed, ap99 := percentiles(after)
	fmed, fp99 := percentiles(flows)
	b.ReportMetric(µs(med), "used-median-µs")
	b.ReportMetric(µs(p99), "used-p99-µs")
	b.ReportMetric(µs(amed), "used-after-connect-median-µs")
	b.ReportMetric(µs(fmed), "flow-median-µs")
	b.ReportMetric(µs(fp99), "flow-p99-µs")
	b.Logf("%d rounds: connect call→Used median %s p99 %s (after the connect returned: median %s p99 %s); Flow median %s p99 %s",
		len(used), med, p99, amed, ap99, fmed, fp99)
}

// eventServer is a python3 program that accepts connections on ADDR PORT
// and closes them, until killed.
const eventServer = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
while True:
    c, _ = s.accept()
    c.close()
`

// eventLoad is a python3 program that opens and closes n connections to
// ADDR PORT, one after another, and reports when done.
const eventLoad = `
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.create_connection((host, port))
    s.close()
print("done")
`

// BenchmarkEvents: what the conntrack watcher costs this process for new
// connections that are not ours: child processes (python3, so that their
// CPU is not ours) open n connections from the client through the
// router to a server, once with the watcher listening and once without;
// the difference in this process's CPU time, per 1000 connections, is
// the watcher's (cpu-ms/1000-conns), the rest the Go runtime idling.
// "plain": connections no NAT touches, which the event socket's filter
// drops in the kernel; "dnat": connections a host rule DNATs (a port
// forward, a transparent interception), which reach the watcher.
func BenchmarkEvents(b *testing.B) {
	for _, kind := range []string{"plain", "dnat"} {
		b.Run(kind, func(b *testing.B) { benchEvents(b, kind) })
	}
}

func benchEvents(b *testing.B, kind string) {
	nstest.Require(b, "python3")
	n := benchN(5000)
	require(b)
	ch := nstest.NewChain(b, nstest.ChainOptions{Forwarding: true,
		ClientRoutes: []netip.Prefix{nstest.V4.ServerNet}, ServerRoutes: []netip.Prefix{nstest.V4.ClientNet}})
	f := nstest.V4
	const port = "4000"
	ctx, cancel := context.WithCancel(context.Background())
	srv := ch.Server.Command(ctx, "python3", "-c", eventServer, f.Server.String(), port)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); srv.Wait() })
	to, toPort := f.Server.String(), port
	if kind == "dnat" {
		ch.Router.Run(b, "nft", "add table ip hostnat")
		ch.Router.Run(b, "nft", "add chain ip hostnat pre { type nat hook prerouting priority dstnat; }")
		ch.Router.Run(b, "nft", "add rule ip hostnat pre tcp dport 5000 dnat to "+f.Server.String()+":"+port)
		to, toPort = f.RouterClient.String(), "5000"
	}
	d := setUp(b, ch.Router, rules.Options{Logger: zap.NewNop()})
	time.Sleep(300 * time.Millisecond) // the server listens
	load := func() time.Duration {
		start := selfCPU()
		out, err := ch.Client.Command(context.Background(), "python3", "-c", eventLoad, to, toPort, strconv.Itoa(n)).CombinedOutput()
		if err != nil {
			b.Fatalf("load: %v: %s", err, out)
		}
		// the watcher's goroutine may still be draining its queue
		time.Sleep(200 * time.Millisecond)
		return selfCPU() - start
	}
	var with, without time.Duration
	rounds := 0
	for b.Loop() {
		with += load()
		d.syncMu.Lock()
		d.stop()
		d.syncMu.Unlock()
		without += load()
		w, err := d.startWatcher()
		if err != nil {
			b.Fatal(err)
		}
		d.mu.Lock()
		d.w, d.ready = w, true
		d.mu.Unlock()
		rounds++
	}
	per := func(d time.Duration) float64 {
		return float64(d) / float64(time.Millisecond) / float64(rounds) * 1000 / float64(n)
	}
	b.ReportMetric(per(with), "cpu-ms/1000-conns-watching")
	b.ReportMetric(per(without), "cpu-ms/1000-conns-idle")
	b.ReportMetric(per(with-without), "cpu-ms/1000-conns")
	b.Logf("%s: %d connections × %d rounds: this process's CPU with the watcher %.2f ms per 1000, without %.2f ms: the watcher %.2f ms per 1000 connections",
		kind, n, rounds, per(with), per(without), per(with-without))
}

// selfCPU is this process's CPU time, without its children's (the load).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSync: one Sync with 100 mappings live: "intact" (nothing
// changed since the last: one generation read), "busy" (a Map and a
// Close since, untimed: the rules and armed elements are read), and
// "restore" (after `nft flush ruleset`, untimed: the table and the 100
// mappings are put back). Reports cpu-µs/op and, for intact and busy,
// what a check every rules.DefaultWatchInterval costs per hour (cpu-s/h).
func BenchmarkSync(b *testing.B) {
	for _, kind := range []string{"intact", "busy", "restore"} {
		b.Run(kind, func(b *testing.B) {
			ns := newNS(b)
			d := setUp(b, ns, rules.Options{Logger: zap.NewNop()})
			ctx := context.Background()
			const live = 100
			for i := range live {
				if _, err := d.Map(ctx, benchMapping(i)); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := d.Sync(ctx); err != nil {
				b.Fatal(err)
			}
			extra := benchMapping(live)
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				switch kind {
				case "busy":
					f, err := d.Map(ctx, extra)
					if err != nil {
						b.Fatal(err)
					}
					f.Close(ctx)
				case "restore":
					ns.Run(b, "nft", "flush", "ruleset")
				}
				start := backendtest.CPU()
				b.StartTimer()
				r, err := d.Sync(ctx)
				b.StopTimer()
				cpu += backendtest.CPU() - start
				if err != nil {
					b.Fatal(err)
				}
				if kind == "restore" && r.Mappings != live || kind != "restore" && !r.Empty() {
					b.Fatalf("%s: Sync restored %s", kind, r)
				}
				b.StartTimer()
			}
			perOp := cpu / time.Duration(b.N)
			b.ReportMetric(µs(perOp), "cpu-µs/op")
			if kind != "restore" {
				b.ReportMetric(perOp.Seconds()*float64(time.Hour/rules.DefaultWatchInterval), "cpu-s/h")
			}
		})
	}
}
