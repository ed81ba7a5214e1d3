// Package metrics turns what the proxy and the firewall backends do into
// Prometheus metrics, and serves them with health and readiness endpoints.
//
//	m := metrics.New()
//	cfg.Observer = m.Observer()          // sessions, rewrites, data connections, bytes
//	cfg.Firewall = m.Backend(fw)         // pinhole operations, their latency, restores
//	cfg.DataPath = m.DataPath(dp)        // kernel mappings
//	go metrics.Serve(ctx, ln, m.Handler(checks, nil), log)
//
// Invariants:
//   - Every metric is named ftpalg_…, in base units (seconds, bytes), with
//     _total on counters.
//   - Labels take bounded values only: reasons, kinds, modes, paths,
//     outcomes, backend names; never client addresses, users or file names.
//   - The observer's methods are a few atomic adds: the hot path's label
//     lookups are done once (bound children) where the rate is highest
//     (bytes).
//   - The wrappers change no behaviour of what they wrap: they pass every
//     call and every error through.
package metrics
