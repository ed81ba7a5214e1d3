// Package rules owns the firewall: the proxy asks it for narrow, short-lived
// pinholes through one small interface and never speaks packet-filter syntax
// itself (the split OpenBSD's ftp-proxy makes between ftp-proxy.c and
// filter.c).
//
// The backends live in packages of their own and register here:
//
//	rules/ipset     one ipset element per pinhole over netlink (~11 µs), with a
//	                kernel timeout; the default where the kernel has ipset
//	rules/iptables  one iptables rule per pinhole (milliseconds, a process each)
//	None            nothing: the operator opens the data ports statically
//
// A program links the backends it offers with blank imports and then uses
// New(name, opts), or Detect to pick the best one that works on the host.
// Backends that can show and remove their pinholes from another process
// (`ftpalg rules show|flush`) implement Lister.
//
// Usage sketch:
//
//	name, reason := rules.Detect(ctx, log) // or the --firewall flag
//	fw, err := rules.New(name, rules.Options{Logger: log})
//	err = fw.Setup(ctx)       // hooks, chains, sets; reconciles leftovers
//	err = fw.Open(ctx, p)     // before announcing the data port
//	err = fw.Close(ctx, p)    // when the connection arrived or the offer expired
//	err = fw.Teardown(ctx)    // at exit, after the sessions
//
// Invariants:
//   - A Pinhole is built only from parsed integers and netip addresses, never
//     from strings off the wire; Check puts it in the kernel's form
//     (IPv4-mapped addresses unmapped, zones dropped) and refuses what no
//     rule can say (mixed families, an unspecified address, port 0).
//   - Open returns only once the kernel accepts the peer's SYN, so the proxy
//     can announce the port right after it without a race.
//   - Close of a pinhole that is already gone is not an error; neither is
//     removing anything already gone in Teardown, which also serves as the
//     cleanup entry point for a run that crashed.
//   - Backends touch only objects named ftpalg… / FTPALG-… (with
//     Options.Instance appended when set), in the calling thread's network
//     namespace at Setup.
//   - Errors are classified once, at the backend's boundary, into an *Error
//     whose Kind is ErrNotPermitted, ErrUnsupported, ErrInvalid or
//     ErrNotReady, with a hint for the operator; callers use errors.Is.
//   - A pinhole admits only a connection's first packet (a NEW SYN). The
//     host's own rules must accept ESTABLISHED traffic, as every
//     default-DROP ruleset does.
package rules
