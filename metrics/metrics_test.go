package metrics

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/internal/testcert"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// The metrics tests run real sessions through a proxy on loopback, in
// front of internal/ftpd or a scripted server, and assert the exact
// changes scraped from /metrics over HTTP, one outcome per test.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ioTimeout = 20 * time.Second

// rig is one proxy with metrics, its upstream and an HTTP endpoint.
type rig struct {
	t    *testing.T
	m    *Metrics
	srv  *proxy.Server
	addr string // the proxy's control address
	web  *httptest.Server
	dir  string
}

func newRig(t *testing.T, upstream string, mod ...func(*proxy.Config)) *rig {
	t.Helper()
	r := &rig{t: t, m: New()}
	if upstream == "" {
		r.dir = t.TempDir()
		if err := os.WriteFile(filepath.Join(r.dir, "f4k"), make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		fs, err := ftpd.Start(ftpd.Options{Dir: r.dir, Listen: "127.0.0.1:0", PublicHost: "10.0.0.5"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		upstream = fs.Addr()
	}
	cfg := proxy.Config{Upstream: upstream, ConnectTimeout: 5 * time.Second, DataAcceptTimeout: 10 * time.Second,
		Firewall: r.m.Backend(rulestest.NewFake()), Observer: r.m.Observer(), Logger: zap.NewNop()}
	for _, f := range mod {
		f(&cfg)
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	r.web = httptest.NewServer(r.m.Handler([]Check{{"proxy", srv.Ready}, {"firewall", r.m.FirewallHealthy}}, nil))
	t.Cleanup(r.web.Close)
	return r
}

// scrape reads /metrics into "name{label="v",…}" → value; histograms
// appear as their _count and _sum.
func (r *rig) scrape() map[string]float64 {
	r.t.Helper()
	resp, err := http.Get(r.web.URL + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		if !strings.HasPrefix(name, Namespace+"_") {
			continue
		}
		for _, m := range f.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[strings.Replace(key, name, name+"_count", 1)] = float64(m.Histogram.GetSampleCount())
				out[strings.Replace(key, name, name+"_sum", 1)] = m.Histogram.GetSampleSum()
			}
		}
	}
	return out
}

// expectDelta waits (bounded) until every metric in want has changed by
// exactly its value since before, and fails naming the ones that did not.
func (r *rig) expectDelta(before map[string]float64, want map[string]float64) {
	r.t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		after := r.scrape()
		var wrong []string
		for k, d := range want {
			if got := after[k] - before[k]; got != d {
				wrong = append(wrong, fmt.Sprintf("%s changed by %g, want %g", k, got, d))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("metrics after %s:\n  %s", ioTimeout, strings.Join(wrong, "\n  "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client is a raw FTP client.
type client struct {
	t  *testing.T
	c  net.Conn
	tp *textproto.Conn
}

func dial(t *testing.T, addr, from string) *client {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	return &client{t: t, c: c, tp: textproto.NewConn(c)}
}

func (c *client) expect(code int) string {
	c.t.Helper()
	got, msg, err := c.tp.ReadResponse(0)
	if err != nil || got != code {
		c.t.Fatalf("want %d, got %d %s (%v)", code, got, msg, err)
	}
	return msg
}

func (c *client) cmd(code int, format string, args ...any) string {
	c.t.Helper()
	if err := c.tp.PrintfLine(format, args...); err != nil {
		c.t.Fatal(err)
	}
	return c.expect(code)
}

func (c *client) login() {
	c.t.Helper()
	c.expect(220)
	c.cmd(331, "USER u")
	c.cmd(230, "PASS p")
	c.cmd(200, "TYPE I")
}

var re229 = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)

func (c *client) epsv() string {
	c.t.Helper()
	m := re229.FindStringSubmatch(c.cmd(229, "EPSV"))
	if m == nil {
		c.t.Fatal("no port in 229")
	}
	return net.JoinHostPort("127.0.0.1", m[1])
}

// TestMetricsSessionAndTransfer: a session with a download counts a
// session, a rewrite, a completed passive data connection, its bytes, a
// transfer duration, an upstream connect and the firewall operations;
// while it runs the active gauge is 1.
func TestMetricsSessionAndTransfer(t *testing.T) {
	r := newRig(t, "")
	before := r.scrape()
	c := dial(t, r.addr, "")
	c.login()
	r.expectDelta(before, map[string]float64{"ftpalg_sessions_active": 1, "ftpalg_sessions_total": 1,
		"ftpalg_upstream_connect_duration_seconds_count": 1})
	addr := c.epsv()
	c.tp.PrintfLine("RETR f4k")
	dc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.expect(150)
	n, _ := io.Copy(io.Discard, dc)
	dc.Close()
	c.expect(226)
	if n != 4096 {
		t.Fatalf("got %d bytes", n)
	}
	c.cmd(221, "QUIT")
	r.expectDelta(before, map[string]float64{
		"ftpalg_sessions_active": 0, "ftpalg_sessions_total": 1,
		`ftpalg_sessions_ended_total{reason="server_closed"}`:                             1,
		`ftpalg_commands_rewritten_total{kind="epsv"}`:                                    1,
		`ftpalg_data_connections_total{mode="passive",outcome="completed",path="splice"}`: 1,
		`ftpalg_data_bytes_total{direction="to_client"}`:                                  4096,
		`ftpalg_data_bytes_total{direction="to_server"}`:                                  0,
		`ftpalg_transfer_duration_seconds_count{path="splice"}`:                           1,
		`ftpalg_firewall_operations_total{backend="fake",op="open",result="ok"}`:          1,
		`ftpalg_firewall_operations_total{backend="fake",op="close",result="ok"}`:         1,
		`ftpalg_firewall_operation_duration_seconds_count{backend="fake",op="open"}`:      1,
		`ftpalg_firewall_objects_active{backend="fake"}`:                                  0,
	})
}

// TestMetricsDataTimeout: an announced port nobody connects to is counted
// as timed out.
func TestMetricsDataTimeout(t *testing.T) {
	r := newRig(t, "", func(c *proxy.Config) { c.DataAcceptTimeout = 200 * time.Millisecond })
	before := r.scrape()
	c := dial(t, r.addr, "")
	c.login()
	c.epsv()
	r.expectDelta(before, map[string]float64{
		`ftpalg_data_connections_total{mode="passive",outcome="timeout",path="splice"}`: 1,
		`ftpalg_firewall_objects_active{backend="fake"}`:                                0,
	})
}

// TestMetricsForeignPeer: a data connection from another address is
// refused and counted.
func TestMetricsForeignPeer(t *testing.T) {
	r := newRig(t, "")
	before := r.scrape()
	c := dial(t, r.addr, "127.0.0.1")
	c.login()
	addr := c.epsv()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if fc, err := d.Dial("tcp", addr); err == nil {
		fc.SetReadDeadline(time.Now().Add(ioTimeout))
		fc.Read(make([]byte, 1))
		fc.Close()
	}
	r.expectDelta(before, map[string]float64{
		`ftpalg_data_connections_total{mode="passive",outcome="foreign_peer",path="splice"}`: 1,
	})
}

// TestMetricsDialFailed: the server announces a port nothing listens on;
// the proxy's connection to it fails and is counted.
func TestMetricsDialFailed(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	up := scripted(t, map[string]string{"EPSV": fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", port),
		"RETR": "150 here"})
	r := newRig(t, up)
	before := r.scrape()
	c := dial(t, r.addr, "")
	c.login()
	addr := c.epsv()
	c.tp.PrintfLine("RETR x")
	dc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err == nil {
		dc.SetReadDeadline(time.Now().Add(ioTimeout))
		dc.Read(make([]byte, 1))
		dc.Close()
	}
	r.expectDelta(before, map[string]float64{
		`ftpalg_data_connections_total{mode="passive",outcome="dial_failed",path="splice"}`: 1,
	})
}

// TestMetricsAborted: a transfer cut by the data idle timeout is counted
// as aborted.
func TestMetricsAborted(t *testing.T) {
	r := newRig(t, "", func(c *proxy.Config) { c.DataIdleTimeout = 200 * time.Millisecond })
	if err := os.WriteFile(filepath.Join(r.dir, "big"), make([]byte, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	before := r.scrape()
	c := dial(t, r.addr, "")
	c.login()
	addr := c.epsv()
	c.tp.PrintfLine("RETR big")
	dc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dc.(*net.TCPConn).SetReadBuffer(4096)
	c.expect(150)
	// Read nothing: the transfer stalls and is cut.
	r.expectDelta(before, map[string]float64{
		`ftpalg_data_connections_total{mode="passive",outcome="aborted",path="splice"}`: 1,
	})
}

// TestMetricsRefusals: the session limits and an unreachable server count
// refused sessions by reason, and readiness follows the server.
func TestMetricsRefusals(t *testing.T) {
	r := newRig(t, "", func(c *proxy.Config) { c.MaxSessions = 1 })
	before := r.scrape()
	a := dial(t, r.addr, "")
	a.login()
	b := dial(t, r.addr, "")
	b.expect(421)
	r.expectDelta(before, map[string]float64{`ftpalg_sessions_refused_total{reason="limit"}`: 1})

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close()
	r2 := newRig(t, down)
	before = r2.scrape()
	dial(t, r2.addr, "").expect(421)
	r2.expectDelta(before, map[string]float64{`ftpalg_sessions_refused_total{reason="upstream_unreachable"}`: 1})

	if code := get(t, r.web.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz %d while serving", code)
	}
	if code := get(t, r.web.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d", code)
	}
}

// TestMetricsViolations: a bounce PORT, a bad line and an over-long line
// are counted by kind.
func TestMetricsViolations(t *testing.T) {
	r := newRig(t, "")
	before := r.scrape()
	c := dial(t, r.addr, "127.0.0.1")
	c.login()
	c.cmd(504, "PORT 192,0,2,99,200,10")
	c.c.Write([]byte("NO\x00OP\r\n"))
	c.expect(500)
	c.c.Write([]byte("NOOP " + strings.Repeat("A", 9000) + "\r\n"))
	c.expect(500)
	r.expectDelta(before, map[string]float64{
		`ftpalg_protocol_violations_total{kind="bounce"}`:    1,
		`ftpalg_protocol_violations_total{kind="bad_line"}`:  1,
		`ftpalg_protocol_violations_total{kind="long_line"}`: 1,
	})
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// scripted starts an FTP server that greets, accepts any login, and
// answers each verb from replies (else 200).
func scripted(t *testing.T, replies map[string]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		stop := context.AfterFunc(t.Context(), func() { c.Close() })
		defer stop()
		fmt.Fprint(c, "220 scripted\r\n")
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			reply, ok := replies[strings.ToUpper(verb)]
			switch {
			case ok:
			case strings.EqualFold(verb, "USER"):
				reply = "331 ok"
			case strings.EqualFold(verb, "PASS"):
				reply = "230 ok"
			default:
				reply = "200 ok"
			}
			fmt.Fprint(c, reply+"\r\n")
		}
	}()
	return ln.Addr().String()
}

// TestMetricsTLS: an FTPS session (the proxy terminating the client's
// TLS) counts the control handshake, the data connection's resumed
// handshake and a transfer on the tls path.
func TestMetricsTLS(t *testing.T) {
	ca, err := testcert.NewAuthority("metrics test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf("localhost")
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, "", func(c *proxy.Config) {
		c.ClientTLS = proxy.ClientTLSRequired
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
	})
	before := r.scrape()
	c := dial(t, r.addr, "")
	c.expect(220)
	c.cmd(234, "AUTH TLS")
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(2)}
	tc := tls.Client(c.c, cfg)
	c.tp = textproto.NewConn(tc)
	c.cmd(200, "PBSZ 0")
	c.cmd(200, "PROT P")
	c.cmd(331, "USER u")
	c.cmd(230, "PASS p")
	c.cmd(200, "TYPE I")
	addr := c.epsv()
	c.tp.PrintfLine("RETR f4k")
	dc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	dtc := tls.Client(dc, cfg)
	c.expect(150)
	n, _ := io.Copy(io.Discard, dtc)
	dtc.Close()
	c.expect(226)
	if n != 4096 {
		t.Fatalf("got %d bytes", n)
	}
	c.cmd(221, "QUIT")
	r.expectDelta(before, map[string]float64{
		`ftpalg_tls_handshakes_total{leg="client",result="ok",resumed="false",version="TLS 1.3"}`:     1,
		`ftpalg_tls_handshakes_total{leg="client_data",result="ok",resumed="true",version="TLS 1.3"}`: 1,
		`ftpalg_data_connections_total{mode="passive",outcome="completed",path="tls"}`:                1,
		`ftpalg_data_bytes_total{direction="to_client"}`:                                              4096,
	})
}
