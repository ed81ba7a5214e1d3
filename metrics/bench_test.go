package metrics

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// BenchmarkSession is the metrics work of one session of the benchmarks'
// script (test/bench: connect, login, EPSV + LIST, EPSV + RETR of 4 KiB,
// QUIT): what --metrics-listen adds to the hot path, measured alone,
// because the end-to-end comparison (test/bench --only metrics) cannot
// resolve 2 % through its run-to-run spread. Each op is a session: start,
// upstream connected, two rewrites, two pinholes opened and closed through
// the instrumented backend, two data connections and transfers, the end.
// BenchmarkSessionBare is the same backend calls without metrics, to
// subtract.
func BenchmarkSession(b *testing.B) {
	m := New()
	benchSession(b, m.Observer(), m.Backend(rulestest.NewFake()))
}

func BenchmarkSessionBare(b *testing.B) {
	benchSession(b, bare{}, rulestest.NewFake())
}

// bare observes nothing, as the proxy without metrics.
type bare struct{}

func (bare) SessionStarted()                              {}
func (bare) SessionEnded(string)                          {}
func (bare) SessionRefused(string)                        {}
func (bare) UpstreamConnected(time.Duration)              {}
func (bare) Rewritten(string)                             {}
func (bare) Translated(string)                            {}
func (bare) DataConnection(string, string, string)        {}
func (bare) Transfer(string, int64, int64, time.Duration) {}
func (bare) Violation(string)                             {}
func (bare) TLSHandshake(string, string, bool, bool)      {}

func benchSession(b *testing.B, o proxy.Observer, fw rules.Backend) {
	ctx := context.Background()
	p := rules.Pinhole{Proto: rules.ProtoTCP, Peer: netip.MustParseAddr("198.51.100.7"),
		Local: netip.MustParseAddrPort("203.0.113.7:50000"), Lifetime: time.Minute, Session: 1}
	b.ReportAllocs()
	for b.Loop() {
		o.SessionStarted()
		o.UpstreamConnected(3 * time.Millisecond)
		for range 2 {
			o.Rewritten("epsv")
			if err := fw.Open(ctx, p); err != nil {
				b.Fatal(err)
			}
			if err := fw.Close(ctx, p); err != nil {
				b.Fatal(err)
			}
			o.DataConnection("passive", "splice", proxy.OutcomeCompleted)
			o.Transfer("splice", 4096, 0, 2*time.Millisecond)
		}
		o.SessionEnded("client_closed")
	}
}
