// Package xtables is the iptables plumbing the ipset and iptables backends
// (and rules/intercept) share: finding the binaries and their variant, our
// chains and the hooks that jump to them, listing and parsing rules, and
// classifying the binary's errors. It runs the iptables binaries through
// go-iptables, so every call costs a process (1.7–24 ms): it is for the few
// rules set up at start, and for the iptables backend's one rule per
// pinhole.
//
// The binaries are reached through IPTables, the few go-iptables methods
// used, and Tables are made by an Opener: New on a host, Fake.Open in
// tests. Fake (a normal file, for other packages' tests) keeps tables,
// chains, policies and rules in order and answers as the binaries do,
// errors included; TestFakeMatchesIptables holds it to both variants as
// root, so tests of the hooks, the leftovers and the interception chains
// run against it without root.
//
// Invariants:
//   - It creates, changes and deletes only the chains its callers name and
//     the rules in built-in chains that jump to them: for the pinhole
//     backends FTPALG-INPUT and FTPALG-FORWARD in the filter table, hooked
//     from INPUT/FORWARD; for rules/intercept its FTPALG-… chains in nat
//     and mangle (through Tables.In), hooked from PREROUTING.
//   - A hook is exactly Hook.Spec, once, inserted at the top of its built-in
//     chain; EnsureHook removes older spellings of it, keeps a single hook
//     where it is and replaces duplicates by one at the top.
//   - "Already gone" is success for every removal.
//   - Tables.Generation reads the nf_tables ruleset generation over
//     netlink (no process): periodic checks (rules.Syncer) skip the binary
//     while it has not moved. Legacy tables have none.
//   - The binary inherits the calling thread's network namespace: callers
//     that work in another namespace lock their goroutine to a thread that
//     has entered it.
package xtables
