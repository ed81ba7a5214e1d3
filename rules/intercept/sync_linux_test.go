package intercept

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
)

// TestSyncRestores installs the interception with the divert on a
// default-DROP router with rules of its own in every table, then does
// what a firewall reload and a network manager do: iptables-restore of the
// router's ruleset saved before Install, in both families (replacing the
// filter, nat and mangle tables), and our ip rules and routes deleted. Clients
// are no longer intercepted. One Sync gives back exactly what Install
// made (iptables-save, ip rule, every routing table), clients are
// intercepted again and nat.Destination finds their destination; a second
// Sync restores nothing.
func TestSyncRestores(t *testing.T) {
	each(t, func(t *testing.T, variant string) {
		for _, m := range []nat.Mode{nat.ModeRedirect, nat.ModeTProxy} {
			t.Run(m.String(), func(t *testing.T) {
				client, router := gateway(t)
				hostRuleset(t, router, variant) // so that the saved ruleset has nat and mangle tables
				nstest.DefaultDrop(t, router, variant)
				for _, a := range fams {
					router.Run(t, a.cmd(variant), "-w", "-A", "INPUT", "-p", "tcp", "--dport", "2121", "-j", "ACCEPT")
					router.Run(t, a.cmd(variant), "-w", "-A", "INPUT", "-p", "tcp", "-m", "mark", "--mark", "0x1/0x1", "-j", "ACCEPT")
				}
				dir := t.TempDir()
				saved := map[family]string{}
				for _, a := range fams {
					saved[a.f] = filepath.Join(dir, a.f.String())
					if err := os.WriteFile(saved[a.f], []byte(router.Run(t, a.cmd(variant)+"-save")), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				c := Config{Mode: m, Divert: true, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121, Iptables: variant,
					Logger: zaptest.NewLogger(t)}
				r := install(t, router, c)
				installed := snapshot(t, router, variant)
				aps, err := c.Listen()
				if err != nil {
					t.Fatal(err)
				}
				lns := map[family]*net.TCPListener{}
				for _, ap := range aps {
					f := ipv4
					if ap.Addr().Is6() {
						f = ipv6
					}
					lns[f] = listen(t, router, ap, m == nat.ModeTProxy)
				}

				for _, a := range fams {
					router.Run(t, a.cmd(variant)+"-restore", saved[a.f])
					router.Run(t, "ip", a.ip, "rule", "del", "fwmark", "0x1/0x1", "lookup", "100")
					router.Run(t, "ip", a.ip, "route", "flush", "table", "100")
				}
				for _, a := range fams {
					notIntercepted(t, client, a.client, netip.AddrPortFrom(a.dest, 21), lns[a.f], "after the reload")
				}

				var res rules.Restored
				do(t, router, "Sync", func(ctx context.Context) (err error) { res, err = r.Sync(ctx); return err })
				t.Logf("Sync restored: %s", res)
				if res.Empty() {
					t.Error("Sync after the reload restored nothing")
				}
				if got := comparable(snapshot(t, router, variant)); got != comparable(installed) {
					t.Errorf("after Sync:\n%s\nas installed:\n%s", got, installed)
				}
				for _, a := range fams {
					t.Run(a.f.String(), func(t *testing.T) {
						want := netip.AddrPortFrom(a.dest, 21)
						cc, sc := connect(t, client, a.client, want, lns[a.f])
						if got, err := nat.Destination(sc, m); err != nil || got != want {
							t.Errorf("nat.Destination = %s, %v; want %s", got, err, want)
						}
						nstest.Exchange(t, cc, sc)
					})
				}
				do(t, router, "Sync again", func(ctx context.Context) (err error) { res, err = r.Sync(ctx); return err })
				if !res.Empty() {
					t.Errorf("a second Sync restored %s", res)
				}
			})
		}
	})
}

// comparable is a snapshot without what changes by itself and the order
// a restore changes: the kernel's own routes in the local table (IPv6
// link-local addresses come up late) are left out, and the tables of each
// iptables-save are put in order of name (iptables-nft-save prints them
// in the order nf_tables created them).
func comparable(snapshot string) string {
	var out, block []string
	var blocks [][]string
	for l := range strings.Lines(snapshot) {
		switch {
		case strings.Contains(l, " table local proto kernel "):
		case strings.HasPrefix(l, "*"):
			block = []string{l}
		case block != nil && l == "COMMIT\n":
			blocks = append(blocks, append(block, l))
			block = nil
		case block != nil:
			block = append(block, l)
		default:
			slices.SortFunc(blocks, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
			for _, b := range blocks {
				out = append(out, b...)
			}
			blocks = nil
			out = append(out, l)
		}
	}
	for _, b := range blocks {
		out = append(out, b...)
	}
	return strings.Join(out, "")
}

// BenchmarkSync measures Sync of ftpalg's default transparent setup
// (REDIRECT with the divert, both families) per iptables variant: intact,
// after an unrelated change to the ruleset (busy: the nf_tables generation
// moved), and restoring everything after a reload. ns/op is the Sync's
// wall time; cpu-µs/op its CPU time with the binaries'; cpu-s/h for a
// check every rules.DefaultWatchInterval:
// go test -run '^$' -bench Sync ./rules/intercept
func BenchmarkSync(b *testing.B) {
	for _, v := range nstest.Variants(b) {
		for _, kind := range []string{"intact", "busy", "restore"} {
			b.Run(v+"/"+kind, func(b *testing.B) {
				nstest.Require(b, nstest.Cmd("4", v), nstest.Cmd("6", v), nstest.Cmd("4", v)+"-save")
				n := nstest.New(b)
				hostRuleset(b, n, v)
				dir := b.TempDir()
				saved := map[family]string{}
				for _, a := range fams {
					saved[a.f] = filepath.Join(dir, a.f.String())
					if err := os.WriteFile(saved[a.f], []byte(n.Run(b, a.cmd(v)+"-save")), 0o600); err != nil {
						b.Fatal(err)
					}
				}
				c := Config{Mode: nat.ModeRedirect, Divert: true, Sources: []netip.Prefix{lan4, lan6}, ListenPort: 2121, Iptables: v}
				var r *Rules
				n.Do(b, func() {
					var err error
					if r, err = Install(context.Background(), c); err != nil {
						b.Fatal(err)
					}
				})
				b.Cleanup(func() { n.Do(b, func() { _ = r.Remove(context.Background()) }) })
				var cpu time.Duration
				n.Do(b, func() {
					ctx := context.Background()
					if _, err := r.Sync(ctx); err != nil {
						b.Fatal(err)
					}
					b.ResetTimer()
					for range b.N {
						b.StopTimer()
						switch kind {
						case "busy":
							n.Run(b, nstest.Cmd("4", v), "-w", "-N", "HOST-BUSY")
							n.Run(b, nstest.Cmd("4", v), "-w", "-X", "HOST-BUSY")
						case "restore":
							for _, a := range fams {
								n.Run(b, a.cmd(v)+"-restore", saved[a.f])
								n.Run(b, "ip", a.ip, "rule", "del", "fwmark", "0x1/0x1", "lookup", "100")
								n.Run(b, "ip", a.ip, "route", "flush", "table", "100")
							}
						}
						start := backendtest.CPU()
						b.StartTimer()
						res, err := r.Sync(ctx)
						b.StopTimer()
						cpu += backendtest.CPU() - start
						if err != nil {
							b.Fatal(err)
						}
						if res.Empty() != (kind != "restore") {
							b.Fatalf("%s: Sync restored %s", kind, res)
						}
						b.StartTimer()
					}
				})
				perOp := cpu / time.Duration(b.N)
				b.ReportMetric(float64(perOp)/float64(time.Microsecond), "cpu-µs/op")
				if kind != "restore" {
					b.ReportMetric(perOp.Seconds()*float64(time.Hour/rules.DefaultWatchInterval), "cpu-s/h")
				}
			})
		}
	}
}
