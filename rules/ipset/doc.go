// Package ipset is the fast pinhole backend: a pinhole is one element of a
// kernel ipset, added and deleted over one reused netlink socket (about
// 11 µs), and a single static iptables rule per chain lets in the SYNs that
// match an element. No process is spawned per pinhole.
//
// Kernel objects (all created by Setup, removed by Teardown):
//
//	sets    ftpalg-pinholes4 (family inet), ftpalg-pinholes6 (inet6)
//	        type hash:ip,port,ip, timeout 30, comment, maxelem 65536
//	chains  FTPALG-INPUT, FTPALG-FORWARD in the filter table, each holding
//	        -p tcp -m set --match-set ftpalg-pinholes4 dst,dst,src -j ACCEPT
//	hooks   -A INPUT   -p tcp --syn -m conntrack --ctstate NEW
//	            -m set --match-set ftpalg-pinholes4 dst,dst,src -j FTPALG-INPUT
//	        -A FORWARD … -j FTPALG-FORWARD (the same match)
//	        (inserted at the top; the same with ip6tables and ftpalg-pinholes6)
//
// With Options.Instance "web" every name ends in "-web" (ftpalg-pinholes4-web,
// FTPALG-INPUT-web), so several ftpalg processes share a host.
//
// Why these:
//   - hash:ip,port,ip: an element is exactly a pinhole — local address,
//     tcp:local port, peer address — so one hash lookup decides a SYN and no
//     element can admit a second peer, a second port or a network.
//   - dst,dst,src: the match reads the element's parts from the packet in
//     that order; for an incoming SYN the local address and port are its
//     destination and the peer is its source.
//   - timeout: every element carries its own timeout, the pinhole's
//     Lifetime (the proxy's data accept timeout) rounded up to whole
//     seconds, at least 1 (0 would mean "forever"). The proxy deletes the
//     element when the connection arrives or the offer is dropped; the
//     timeout is the backstop that closes the pinhole when the proxy does
//     not, so a crashed proxy leaves nothing open for longer than that.
//     Connections already accepted live on: only their first packet needs
//     the pinhole.
//   - comment "ftpalg session N": lets List, in any process, say whose a
//     pinhole is.
//   - the hook matches only NEW SYNs, so established traffic, which is most
//     packets, never walks our chain; and it accepts nothing itself.
//   - the hook also matches the set (the chain's rule tests it again): a
//     SYN that is no pinhole's costs the same one lookup as before, and
//     every hook and chain rule now holds a reference to the set. The
//     set's reference count, 4 with all in place, is what Sync reads
//     (one netlink round trip, no process) to know that a reload, a flush
//     or a deleted rule took some of them.
//
// ESTABLISHED traffic: the chains accept only a connection's first packet.
// The host's own rules must accept ESTABLISHED traffic, as every
// default-DROP ruleset does (a host whose INPUT accepts everything needs no
// pinholes). ftpalg does not add such a rule: it would be either global (not
// ours to decide) or need the data-port range, which the firewall layer
// does not know.
//
// Invariants:
//   - The memory map of open pinholes is the source of truth for what this
//     process opened; the kernel holds exactly those elements (less the ones
//     whose timeout ran out). List reads the kernel, so it also works in a
//     process that did not call Setup (`ftpalg rules show`).
//   - Every change to the kernel happens under one mutex, through one
//     netlink handle opened by Setup in the caller's network namespace.
//   - netlink v1.3.1 can panic inside its ipset code on some errors: every
//     call is wrapped in a recover that turns the panic into an error.
//   - Opening an open pinhole refreshes its timeout; closing a missing one
//     is success.
//   - Sync restores what a firewall reload removed (rules/doc.go): the set,
//     every element whose lifetime has not ended, with the time it has
//     left, the chains and their rule, the hooks. It takes the mutex above
//     only around each element it adds or removes, and only for an entry
//     still the one it copied (each Open numbers its entry), so it never
//     re-adds a closed pinhole nor holds up Open and Close behind its
//     iptables runs. It runs in the namespace Setup ran in (its iptables
//     runs and header queries use the calling thread's).
//   - Our accept sits at the top of INPUT, so it wins over the host's
//     later DROPs for exactly the announced peer, address and port — that
//     is the point — and over nothing else.
package ipset
