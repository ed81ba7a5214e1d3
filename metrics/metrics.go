package metrics

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
)

// Namespace prefixes every metric.
const Namespace = "ftpalg"

// Buckets of the duration histograms, in seconds. Transfers run from
// milliseconds (a listing) to hours; connects and firewall operations from
// microseconds (ipset) to seconds (a slow server, iptables-legacy).
var (
	transferBuckets = prometheus.ExponentialBuckets(0.001, 4, 12)    // 1 ms … ~70 min
	connectBuckets  = prometheus.ExponentialBuckets(0.0005, 2, 16)   // 0.5 ms … ~16 s
	firewallBuckets = prometheus.ExponentialBuckets(0.000005, 4, 12) // 5 µs … ~21 s
)

// Metrics holds ftpalg's metrics in a registry of its own (with the Go
// runtime and process collectors). Its Observer is the proxy's
// proxy.Observer; Backend and DataPath wrap the firewall and the kernel data
// path to count their operations. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	sessionsActive   prometheus.Gauge
	sessionsTotal    prometheus.Counter
	sessionsEnded    *prometheus.CounterVec
	sessionsRefused  *prometheus.CounterVec
	upstreamConnect  prometheus.Histogram
	rewritten        *prometheus.CounterVec
	translated       *prometheus.CounterVec
	dataConnections  *prometheus.CounterVec
	dataBytes        *prometheus.CounterVec
	transferDuration *prometheus.HistogramVec
	violations       *prometheus.CounterVec
	tlsHandshakes    *prometheus.CounterVec
	fwOps            *prometheus.CounterVec
	fwDuration       *prometheus.HistogramVec
	fwActive         *prometheus.GaugeVec
	fwRestored       *prometheus.CounterVec

	// The bound children of the busiest vectors, so the hot path does no
	// label lookup.
	toClient, toServer prometheus.Counter

	// fwHealth is the last Sync's error per backend name, for /readyz.
	fwHealth atomic.Pointer[map[string]error]
}

// New returns the metrics, registered.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := promFactory{m.reg}
	m.sessionsActive = f.gauge("sessions_active", "Sessions running now.")
	m.sessionsTotal = f.counter("sessions_total", "Sessions admitted.")
	m.sessionsEnded = f.counterVec("sessions_ended_total", "Sessions ended, by why.", "reason")
	m.sessionsRefused = f.counterVec("sessions_refused_total",
		"Connections refused with 421 before or at the start of a session, by reason (limit, per_ip_limit, upstream_unreachable, greeting_timeout, out_of_resources, no_server).", "reason")
	m.upstreamConnect = f.histogram("upstream_connect_duration_seconds", "Time to connect the control connection to the FTP server.", connectBuckets)
	m.rewritten = f.counterVec("commands_rewritten_total", "Data-channel negotiations rewritten, by kind (pasv, epsv, lpsv, port, eprt, lprt).", "kind")
	m.translated = f.counterVec("commands_translated_total",
		"Commands sent to the server in another form, or answered by ftpalg, by kind (to_pasv, to_port, to_epsv, to_eprt, epsv_all, feat, local_answer, epsv_refused).", "kind")
	m.dataConnections = f.counterVec("data_connections_total",
		"Announced data connections by mode (passive, active), path (splice, kernel, tls) and outcome (completed, failed, unconfirmed, aborted, timeout, foreign_peer, dial_failed, cancelled).",
		"mode", "path", "outcome")
	m.dataBytes = f.counterVec("data_bytes_total", "Data bytes carried, by direction (to_client, to_server).", "direction")
	m.transferDuration = f.histogramVec("transfer_duration_seconds", "Duration of transfers, by path.", transferBuckets, "path")
	m.violations = f.counterVec("protocol_violations_total",
		"Input refused, by kind (bad_line, long_line, bounce, privileged_port, bad_argument, after_epsv_all, bad_passive_reply).", "kind")
	m.tlsHandshakes = f.counterVec("tls_handshakes_total",
		"TLS handshakes, by leg (client, server, client_data, server_data), version (TLS 1.2, TLS 1.3; empty when failed), resumed (true, false) and result (ok, error).",
		"leg", "version", "resumed", "result")
	m.fwOps = f.counterVec("firewall_operations_total",
		"Firewall and kernel data path operations, by backend, operation (open, close, sync, map, unmap) and result (ok, error).", "backend", "op", "result")
	m.fwDuration = f.histogramVec("firewall_operation_duration_seconds", "Duration of firewall and kernel data path operations.", firewallBuckets, "backend", "op")
	m.fwActive = f.gaugeVec("firewall_objects_active", "Pinholes and kernel mappings ftpalg holds open now, by backend.", "backend")
	m.fwRestored = f.counterVec("firewall_restores_total", "Times ftpalg found its firewall objects removed behind its back and restored them.", "backend")
	m.toClient = m.dataBytes.WithLabelValues("to_client")
	m.toServer = m.dataBytes.WithLabelValues("to_server")
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	empty := map[string]error{}
	m.fwHealth.Store(&empty)
	return m
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// promFactory makes metrics with the ftpalg_ prefix and registers them.
type promFactory struct{ reg *prometheus.Registry }

func (f promFactory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f promFactory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f promFactory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f promFactory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f promFactory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}

func (f promFactory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}

// Observer returns the proxy.Observer that feeds m.
func (m *Metrics) Observer() proxy.Observer { return observer{m} }

type observer struct{ m *Metrics }

func (o observer) SessionStarted() {
	o.m.sessionsActive.Inc()
	o.m.sessionsTotal.Inc()
}

func (o observer) SessionEnded(reason string) {
	o.m.sessionsActive.Dec()
	o.m.sessionsEnded.WithLabelValues(reason).Inc()
}

func (o observer) SessionRefused(reason string) { o.m.sessionsRefused.WithLabelValues(reason).Inc() }

func (o observer) UpstreamConnected(took time.Duration) { o.m.upstreamConnect.Observe(took.Seconds()) }

func (o observer) Rewritten(kind string)  { o.m.rewritten.WithLabelValues(kind).Inc() }
func (o observer) Translated(kind string) { o.m.translated.WithLabelValues(kind).Inc() }
func (o observer) Violation(kind string)  { o.m.violations.WithLabelValues(kind).Inc() }
func (o observer) TLSHandshake(leg, version string, resumed, ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	o.m.tlsHandshakes.WithLabelValues(leg, version, strconv.FormatBool(resumed), result).Inc()
}
func (o observer) DataConnection(mode, path, outcome string) {
	o.m.dataConnections.WithLabelValues(mode, path, outcome).Inc()
}

func (o observer) Transfer(path string, toClient, toServer int64, took time.Duration) {
	o.m.toClient.Add(float64(toClient))
	o.m.toServer.Add(float64(toServer))
	o.m.transferDuration.WithLabelValues(path).Observe(took.Seconds())
}

// op counts and times one firewall operation.
func (m *Metrics) op(backend, op string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.fwOps.WithLabelValues(backend, op, result).Inc()
	m.fwDuration.WithLabelValues(backend, op).Observe(time.Since(start).Seconds())
}

// synced records a backend's last Sync, for readiness and restores.
func (m *Metrics) synced(backend string, r rules.Restored, err error) {
	if err == nil && !r.Empty() {
		m.fwRestored.WithLabelValues(backend).Inc()
	}
	for {
		old := m.fwHealth.Load()
		next := make(map[string]error, len(*old)+1)
		for k, v := range *old {
			next[k] = v
		}
		next[backend] = err
		if m.fwHealth.CompareAndSwap(old, &next) {
			return
		}
	}
}

// FirewallHealthy returns nil when no backend's last Sync failed, else
// their errors.
func (m *Metrics) FirewallHealthy() error {
	var errs []error
	for name, err := range *m.fwHealth.Load() {
		if err != nil {
			errs = append(errs, errors.New(name+": "+err.Error()))
		}
	}
	return errors.Join(errs...)
}

// Backend wraps b so that its operations are counted and timed, its open
// pinholes gauged, and its Syncs recorded for readiness. The wrapper is a
// rules.Lister when b is.
func (m *Metrics) Backend(b rules.Backend) rules.Backend {
	w := &backend{Backend: b, m: m, active: m.fwActive.WithLabelValues(b.Name())}
	if l, ok := b.(rules.Lister); ok {
		return &listingBackend{backend: w, Lister: l}
	}
	return w
}

type backend struct {
	rules.Backend
	m      *Metrics
	active prometheus.Gauge
}

func (b *backend) Open(ctx context.Context, p rules.Pinhole) error {
	start := time.Now()
	err := b.Backend.Open(ctx, p)
	b.m.op(b.Name(), "open", start, err)
	if err == nil {
		b.active.Inc()
	}
	return err
}

func (b *backend) Close(ctx context.Context, p rules.Pinhole) error {
	start := time.Now()
	err := b.Backend.Close(ctx, p)
	b.m.op(b.Name(), "close", start, err)
	if err == nil {
		b.active.Dec()
	}
	return err
}

func (b *backend) Sync(ctx context.Context) (rules.Restored, error) {
	start := time.Now()
	r, err := b.Backend.Sync(ctx)
	b.m.op(b.Name(), "sync", start, err)
	b.m.synced(b.Name(), r, err)
	return r, err
}

type listingBackend struct {
	*backend
	rules.Lister
}

// DataPath wraps d so that its mappings are counted, timed and gauged.
func (m *Metrics) DataPath(d rules.DataPath) rules.DataPath {
	return &dataPath{DataPath: d, m: m, active: m.fwActive.WithLabelValues(d.Name())}
}

type dataPath struct {
	rules.DataPath
	m      *Metrics
	active prometheus.Gauge
}

func (d *dataPath) Map(ctx context.Context, mp rules.Mapping) (rules.Forward, error) {
	start := time.Now()
	f, err := d.DataPath.Map(ctx, mp)
	d.m.op(d.Name(), "map", start, err)
	if err != nil {
		return nil, err
	}
	d.active.Inc()
	return &forward{Forward: f, d: d}, nil
}

type forward struct {
	rules.Forward
	d    *dataPath
	done atomic.Bool
}

func (f *forward) Close(ctx context.Context) error {
	start := time.Now()
	err := f.Forward.Close(ctx)
	f.d.m.op(f.d.Name(), "unmap", start, err)
	if f.done.CompareAndSwap(false, true) {
		f.d.active.Dec()
	}
	return err
}
