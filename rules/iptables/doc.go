// Package iptables is the portable pinhole backend: one iptables rule per
// pinhole, for hosts without ipset. Every Open and Close runs the iptables
// binary (through go-iptables): milliseconds, not microseconds, and on
// iptables-legacy the whole table is rewritten each time, so prefer the
// ipset backend where the kernel has it.
//
// Kernel objects:
//
//	chains  FTPALG-INPUT, FTPALG-FORWARD in the filter table
//	hooks   -A INPUT   -p tcp --syn -m conntrack --ctstate NEW -j FTPALG-INPUT
//	        -A FORWARD -p tcp --syn -m conntrack --ctstate NEW -j FTPALG-FORWARD
//	        (inserted at the top; the same with ip6tables)
//	rules   -A FTPALG-INPUT -p tcp -s PEER -d LOCAL --dport PORT
//	            -m comment --comment "ftpalg session N" -j ACCEPT
//	        the same in FTPALG-FORWARD for a Forward pinhole
//
// With Options.Instance "web" the chains are FTPALG-INPUT-web and
// FTPALG-FORWARD-web, so several ftpalg processes share a host.
//
// FTPALG-FORWARD holds the Forward pinholes: the kernel data path's
// forwarded connections, matched after its DNAT (peer to the real
// target). An input and a Forward pinhole of one tuple are two rules
// (rules.Key tells them apart).
//
// Lifetime: a rule has no kernel timeout. The proxy closes it when the data
// connection arrives or the offer expires; a crashed proxy leaves its rules
// in place until the next Setup, which flushes the chain (or until
// `ftpalg rules flush`). Pinhole.Lifetime only tells Sync which pinholes
// are worth restoring after a firewall reload: those within it.
//
// It works with iptables-nft and iptables-legacy (Options.Iptables chooses;
// Setup logs which one `iptables --version` reports). The variant must be
// the one the host's ruleset uses: packets pass both, and a DROP in the
// other still drops.
//
// ESTABLISHED traffic: only a connection's first packet passes our chain
// (the hook matches NEW SYNs); the host's rules must accept ESTABLISHED
// traffic, as every default-DROP ruleset does.
//
// Invariants:
//   - The memory map of open pinholes is the source of truth for what this
//     process opened; FTPALG-INPUT (FTPALG-FORWARD) holds exactly one rule
//     for each. List
//     reads the kernel, so it also works in `ftpalg rules show`.
//   - Kernel changes are serialised by one mutex: concurrent iptables
//     processes would only queue on the xtables lock (legacy) or retry
//     their transactions (nft).
//   - Closing a missing rule is success; opening an open pinhole adds no
//     second rule.
//   - Sync restores what a firewall reload removed (rules/doc.go): chains,
//     hooks, and one rule per pinhole within its lifetime; rules of
//     pinholes this process does not hold are removed. Its check is the
//     nf_tables generation (netlink) and, when that moved or on legacy,
//     one `iptables -C` of the INPUT hook per family. It takes the mutex
//     above only for each rule it adds or removes, and only for an entry
//     still the one it copied, so a closed pinhole is never re-added.
package iptables
