// Package nstest is the one harness for everything that runs in throwaway
// Linux network namespaces: the backends' tests (rules/...), nat's tests,
// the end-to-end tests (test/e2e) and the gateway benchmark
// (test/bench/gateway).
//
// It creates and deletes namespaces, runs commands and Go code inside them,
// wires them together with veth pairs, starts long-running processes with
// a log, reads the firewall state back (iptables -S, iptables-save, ipset
// list, nft list) and declares, once, when such a test may run at all
// (Require).
//
// Invariants:
//   - A namespace created for a test is deleted when the test ends, failed
//     or not; before that, every process still running in it is killed by
//     PID (only processes the caller started can be there). Links,
//     addresses, routes, rules and sets live in the namespace and go with
//     it: the host's own namespace is never touched.
//   - A goroutine inside a namespace is locked to its OS thread; a thread
//     that could not be moved back, or that was changed further
//     (DoIsolated), is never reused.
//   - Without root or a needed tool a test skips and says why, except with
//     FTPALG_E2E=1 (CI), where it fails.
//
// Functions and methods that take a testing.TB fail the test on error and
// clean up in t.Cleanup; the others (Create, Try, Spawn, Missing, ...)
// return errors, for the benchmark programs, which have no testing.T.
package nstest
