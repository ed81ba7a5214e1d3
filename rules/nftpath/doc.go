// Package nftpath is the kernel data path over nftables (rules.DataPath
// "nftables"): each data connection ftpalg announces is handed to the
// kernel as one mapping, and the kernel NATs that one connection straight
// to its real endpoint, as the kernel's FTP helper would, while ftpalg
// keeps the control channel. Everything goes over netlink
// (github.com/google/nftables, github.com/ti-mo/conntrack): no nft
// process, ever.
//
// Usage sketch (the proxy's side is proxy/kernel.go):
//
//	dp, err := rules.NewDataPath("nftables", rules.Options{Instance: inst, Logger: log})
//	err = dp.Setup(ctx)                  // after the pinhole backend's Setup
//	stop := rules.StartWatch(ctx, interval, log, fw, dp.(rules.Syncer))
//	fwd, err := dp.Map(ctx, m)           // before announcing m.Announced
//	<-fwd.Used()                         // the peer's connection arrived
//	flow, err := fwd.Flow(ctx)           // conntrack's counters
//	err = fwd.Close(ctx)                 // removes the mapping if unused
//	stop(); err = dp.Teardown(ctx)
//
// # Kernel objects
//
// One table, `table inet ftpalg` (`ftpalg-INSTANCE` with
// Options.Instance), created and replaced atomically (one netlink batch)
// and never anything outside it:
//
//	set armed4 { type ipv4_addr . ipv4_addr . inet_service; size 65536; flags dynamic,timeout; timeout 30s }
//	map dnat4  { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; size 65536; timeout 30s }
//	map snat4  { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; size 65536; timeout 30s }
//	(armed6, dnat6, snat6 the same with ipv6_addr)
//	chain prerouting { type nat hook prerouting priority dstnat - 1; policy accept;
//	  ip saddr . ip daddr . tcp dport @armed4 delete @armed4 { ip saddr . ip daddr . tcp dport }
//	      dnat ip to ip saddr . ip daddr . tcp dport map @dnat4 comment "ftpalg ipv4 dnat, run TOKEN"
//	  (the same for ip6) }
//	chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept;
//	  ct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4 comment "ftpalg ipv4 snat, run TOKEN"
//	  (the same for ip6) }
//
// A mapping (rules.Mapping) is three elements, added in one batch, each
// with the timeout Mapping.TimeoutSeconds() (the proxy's data accept
// timeout) and the comment "ftpalg session N":
//
//	armed4: peer . announced address . announced port
//	dnat4:  peer . announced address . announced port : target address . target port
//	snat4:  peer . target address . target port : source address   (only when Mapping.Source is valid)
//
// # Why these
//
//   - One mapping, one connection, decided in the kernel: the prerouting
//     rule matches a SYN only while its exact pre-NAT tuple (peer,
//     announced address, announced port: the peer's source port is not
//     known in advance) is in armed, and deletes the element in the same
//     packet's path (dynset delete, NFT_DYNSET_OP_DELETE, Linux ≥ 5.11). A
//     second connection (another source port) finds nothing and is not
//     forwarded; retransmits of the first SYN ride its conntrack entry
//     (nat chains see only a connection's first packet). A third address
//     never matches. The one gap: two SYNs of the same peer to the same
//     tuple processed at the same instant on two CPUs can both pass the
//     lookup before either deletes; only the peer itself can do that.
//   - A set to arm and a map to translate, not the map alone: the kernel
//     does accept a dynset delete on the map itself, but nft (1.0.6)
//     aborts on listing such a rule (netlink_parse_concat_expr), and an
//     operator's `nft list ruleset` must work.
//   - NAT from maps: the target (and source) are data of the elements, so
//     the rules never change; a mapping is element operations only, never
//     a rule: one batch of three messages, one round trip (~20 µs to Map,
//     ~30 µs to Close here). Those batches go over a socket of our own,
//     acknowledged once per batch: google/nftables asks for an
//     acknowledgement per message (a receive each, through a socket
//     package that wakes a second thread per call), which more than
//     doubled the cost. Deletes use NFT_MSG_DESTROYSETELEM (Linux ≥ 6.3),
//     for which a missing element (used, expired) is no error; without
//     it a failed batch is retried one element at a time.
//   - Priority dstnat − 1 and srcnat − 1: among several nat chains on a
//     hook the first that sets a binding wins, so ours runs before the
//     host's own (iptables nat, Docker, an nft dstnat chain); the rules
//     match only armed tuples, so nothing else is affected.
//   - SNAT only with `ct status dnat`: a peer that can reach the target
//     directly does not get its own connections SNATed by a mapping's
//     element. The SNAT element is not deleted in the packet path (nft
//     cannot list a dynset delete on a map); the conntrack watcher removes
//     it once the connection exists, and Map refuses a second live
//     mapping with the same peer and target while either wants SNAT (the
//     postrouting rule sees only the post-DNAT tuple).
//   - Timeouts on every element: the kernel removes an unused mapping by
//     itself after the data accept timeout, so a crashed or stuck ftpalg
//     leaves nothing usable beyond it; the maps' own 30 s default applies
//     only to elements added by hand. A connection already forwarded does
//     not need its elements any more: conntrack holds its NAT binding.
//   - Comments with the session (elements) and the run's token (rules):
//     `ftpalg rules show`, in another process, reads who holds a mapping
//     and for how long; Sync tells a saved copy of our table restored by
//     a reload (old token) from ours.
//
// # Conntrack
//
// One watcher per DataPath (started by Setup, ended by Teardown) listens
// to conntrack's NEW events on a netlink socket of its own, whose socket
// filter (classic BPF, eventFilter) lets through only the events of
// connections a DNAT bound: every new connection of the namespace makes
// an event, and waking the watcher for each would cost ~20 µs of CPU. It
// matches each TCP event's original tuple
// (peer → announced address and port) to a live mapping, and its reply
// tuple's source to the mapping's target (so it was DNATed there): the
// Forward's Used closes, and the DNAT and SNAT elements (and the armed
// one, should the packet path have left it) are removed at once. Flow
// then reads the connection's counters and TCP state with a conntrack
// query of that exact tuple; counters need net.netfilter.nf_conntrack_acct
// =1 (per namespace, from the connection's start), and are IP-layer
// bytes. When the event socket overflows (a burst of new connections),
// the watcher listens again and finds the mapped connections whose events
// were lost: a live mapping whose armed element is gone, and conntrack's
// entry for it.
//
// # Host prerequisites (Setup; Probe for --data-path auto)
//
// Errors, with the exact fix in the hint: IPv4 forwarding off, conntrack
// events off, no CAP_NET_ADMIN, a kernel without the features above.
// Warnings: IPv6 forwarding off (IPv6 connections are refused by
// Supports, so the proxy splices them; the accept_ra=2 caveat is in the
// text), conntrack accounting off (byte counts 0), and every forward chain
// elsewhere that would drop the forwarded data: a forward-hook filter
// chain of another nftables table, iptables-nft's or iptables-legacy's
// FORWARD, whose policy is drop or which ends in a drop, without an
// accept of `ct status dnat` or the jump to the pinhole backends'
// FTPALG-FORWARD before it (the warning gives the rule to add). An accept
// in our own table would not help (a drop in any table drops), so none is
// added. Probe fails where Setup warns about such a chain.
//
// # Crashes, reloads, restarts
//
// A crash leaves the table, and mappings that expire within the data
// timeout. Setup replaces the table of the same name whatever it holds;
// Teardown (also without Setup: `ftpalg rules cleanup`) deletes it. Sync
// (rules.Watch) recreates the table with the live mappings when a reload
// removed or replaced it; see Sync.
//
// Invariants:
//   - Memory (the live mappings) is the source of truth: the kernel holds
//     an armed element exactly for each mapping not used, closed or
//     expired, and every element change happens under one mutex.
//   - Every call after Setup works in Setup's network namespace (the
//     sockets were opened there), except Supports, which reads the
//     host's addresses in the calling thread's.
//   - Mappings, FlushMappings and Teardown work in a process that did not
//     call Setup, in the calling thread's namespace.
package nftpath
