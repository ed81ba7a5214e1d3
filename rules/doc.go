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
// Kernel data paths (DataPath: each announced data connection forwarded
// by the kernel instead of spliced by the proxy) register the same way,
// with RegisterDataPath, and are built with NewDataPath(name, opts) or
// chosen with DetectDataPath, which falls back to Splice (none) with the
// reason:
//
//	rules/nftpath   nftables NAT from maps, one armed element per
//	                connection, conntrack events ("nftables")
//
// Usage sketch:
//
//	name, reason := rules.Detect(ctx, log) // or the --firewall flag
//	fw, err := rules.New(name, rules.Options{Logger: log})
//	err = fw.Setup(ctx)       // hooks, chains, sets; reconciles leftovers
//	stop := rules.StartWatch(ctx, rules.DefaultWatchInterval, log, fw) // Sync every 2 s
//	err = fw.Open(ctx, p)     // before announcing the data port
//	err = fw.Close(ctx, p)    // when the connection arrived or the offer expired
//	stop()                    // before Teardown: no Sync puts back what it removes
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
//   - Memory is the source of truth (as in kube-proxy): a backend keeps
//     the pinholes it holds open, each with the end of its lifetime, and
//     Sync reconciles the kernel to that.
//
// # Firewall reloads
//
// Replacing the host's ruleset (iptables-restore, netfilter-persistent,
// `firewall-cmd --reload`, ufw, `nft flush ruleset`) removes our hooks and
// chains, and a full reload script destroys our sets; from then on every
// pinhole is closed. Backend.Sync (and intercept's Rules.Sync, for the
// interception) notices and puts everything back: Watch calls it every
// interval (--firewall-check-interval, DefaultWatchInterval = 2 s, so a
// reload closes pinholes for at most that long) and logs MsgRestored at
// Warn with what was restored.
//
// A check must cost next to nothing, because it runs all the time and
// finds nothing almost always; so each Sync first asks one cheap question
// per address family and looks further only when the answer is wrong:
//
//	ipset     the set's header over netlink (`ipset list -t`): it exists, is
//	          ours, and our two hooks and two chain rules, which all match
//	          the set, are its references. No process. ~0.1 ms, 0.3 s CPU/h.
//	iptables  the nf_tables generation over netlink: unchanged since the
//	          last good check means nothing changed; otherwise (legacy, or
//	          any change, our own Opens included) one `iptables -C` of our
//	          INPUT hook. ~0.1 ms when unchanged, ~10 ms (two processes)
//	          otherwise: up to ~20 s CPU/h.
//	intercept a route lookup with the mark (`ip route get ADDR mark M` must
//	          say local, our table) and, unless the generation is unchanged,
//	          `iptables -t TABLE -S PREROUTING` per table with hooks.
//
// (rules/README.md has the measurements.) A reload that replaces a table
// takes every hook in it, so the hook is the canary, as kube-proxy's
// canary chain is; when it is gone, Sync compares chains, rules, set and
// elements with memory and repairs what differs: it recreates what is
// missing, re-adds the pinholes whose lifetime has not ended (ipset: for
// the time they have left), and removes pinholes the kernel holds and
// memory does not (a saved set or ruleset restored with old entries).
//
// Sync checks that the hook exists, not that it is first: EnsureHook
// leaves a hook an operator moved down where it is, and tools that also
// insert at the top (Docker, kube-proxy, fail2ban) would otherwise fight
// ours every interval. It does not re-add pinholes one by one while the
// hook is intact: `ftpalg rules flush` must stay effective.
//
// Sync never makes Open and Close wait for its checks: it holds a mutex of
// its own (which Setup and Teardown also take), copies the pinholes under
// the backends' mutex, and takes that mutex again only around each
// pinhole it re-adds or removes, after checking that the entry is still
// the one it copied (a sequence number per Open). A pinhole closed
// meanwhile is therefore never re-added, and one opened meanwhile is
// Open's to add; a Close or Open that races the repair of a missing chain
// or set fails or succeeds as it would without Sync.
package rules
