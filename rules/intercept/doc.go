// Package intercept installs the kernel side of the transparent gateway
// mode (issue #4): the iptables rules that hand the FTP control
// connections of the clients behind a Linux router to ftpalg, by REDIRECT
// or by TPROXY, and the policy routing TPROXY and transparent sockets need.
// Package nat opens and reads the sockets; nat/README.md says what each
// mechanism needs, and this package installs exactly that, for IPv4 and
// IPv6, with iptables-nft or iptables-legacy. README.md lists the same
// rules as shell commands for operators who manage their own.
//
// Usage sketch:
//
//	lans, ifs, err := intercept.ParseSelectors("198.51.100.0/24,lan0") // --intercept
//	c := intercept.Config{Mode: nat.ModeTProxy, Sources: lans, Interfaces: ifs, ListenPort: 2121,
//		Divert: true, Logger: log}
//	aps, err := c.Listen()              // listen first: rules without a listener break FTP
//	ln, err := nat.ListenTransparent(ctx, aps[0]) // (net.Listen for ModeRedirect), one per family
//	r, err := intercept.Install(ctx, c) // reconciles a crashed run's leftovers
//	stop := rules.StartWatch(ctx, rules.DefaultWatchInterval, log, r) // r.Sync after a reload
//	defer r.Remove(ctx)                 // at shutdown, after the listeners closed (and stop())
//	err = intercept.Cleanup(ctx, c)     // `ftpalg rules cleanup`, without Install
//
// # Kernel objects
//
// With Config.Instance "gw" every chain name ends in "-gw". All hooks are
// inserted at the top of PREROUTING, one per chain of ours:
//
//	nat     -A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-REDIRECT
//	        -A FTPALG-REDIRECT -s 198.51.100.0/24 -p tcp -j REDIRECT --to-ports 2121
//	        -A FTPALG-REDIRECT -i lan0 -p tcp -j REDIRECT --to-ports 2121
//	mangle  -A PREROUTING -p tcp -j FTPALG-DIVERT                      (Divert)
//	        -A PREROUTING -p tcp -m tcp --dport 21 -j FTPALG-TPROXY
//	        -A FTPALG-DIVERT -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1
//	        -A FTPALG-TPROXY -s 198.51.100.0/24 -p tcp -j TPROXY --on-port 2121 --on-ip 127.0.0.1 --tproxy-mark 0x1/0x1
//	routing ip rule add fwmark 0x1/0x1 lookup 100 proto 70            (ModeTProxy or Divert)
//	        ip route add local 0.0.0.0/0 dev lo table 100 proto 70
//
// and the same with ip6tables, `ip -6` and ::/0 (--on-ip ::1).
//
// Why each rule:
//   - REDIRECT lives in nat PREROUTING, which sees only a connection's
//     first packet; conntrack rewrites the rest and keeps the original
//     destination for SO_ORIGINAL_DST (nat.ModeRedirect). REDIRECT rewrites
//     to the incoming interface's primary address, so ftpalg listens on the
//     wildcard address (Config.Listen) and refuses what was not redirected.
//   - TPROXY is only valid in mangle PREROUTING. It must see every packet
//     of the connection, not only the SYN: it hands each to the socket
//     (the established one first, else the listener on --on-ip:--on-port)
//     and marks it. --on-ip is loopback by default: without it TPROXY looks
//     on the incoming interface's address, where a wildcard listener would
//     also be reachable directly and a direct client could not be told from
//     an intercepted one (nat/README.md).
//   - The hooks match `-p tcp --dport Port`, so any other packet costs one
//     failed match; the selectors (-s per source, -i per interface, OR-ed)
//     live in our chain, so a change of sources rewrites only our chain
//     and the built-in chain holds one rule per chain of ours.
//   - The policy route: a packet carrying Mark/Mask is looked up in Table,
//     whose only route says every address is local, so it goes up to the
//     transparent socket instead of being forwarded (kernel
//     Documentation/networking/tproxy.rst). TPROXY's marked packets need
//     it, so ModeTProxy installs it with or without Divert.
//   - The divert (`-m socket --transparent`) marks packets of a socket
//     with IP_TRANSPARENT this host already has: an established one, or a
//     listener bound to a specific address (the socket match ignores
//     wildcard listeners). That is how a transparent listener bound to a
//     server's address catches the data connection a client opens to it,
//     and how the replies to nat.DialTransparent (dialing with the
//     client's address) come back. It costs a socket lookup for every TCP
//     packet the router forwards, which is why it is optional. It is
//     hooked before TPROXY, as in tproxy.rst, but returns instead of
//     ACCEPTing, so the host's later mangle rules still see the packet.
//   - The ip rule and route carry protocol 70 (RouteProtocol): ftpalg's
//     own, which Remove deletes. A host rule or route that already does
//     the same (as nat/README.md tells operators to add) is used as is
//     and left in place.
//
// # Invariants
//
//   - It creates, changes and deletes only the chains FTPALG-REDIRECT,
//     FTPALG-TPROXY and FTPALG-DIVERT (with the instance suffix), the rules
//     in nat and mangle PREROUTING that jump to them, and the ip rules and
//     routes with protocol RouteProtocol in Config.Table. Other chains,
//     rules, tables and routes are never touched.
//   - The kernel is reconciled to the Config; nothing is remembered across
//     runs. Install rebuilds a chain only when its rules differ, and
//     rewrites the hooks only when ours in PREROUTING are not exactly the
//     wanted ones in order (duplicates, older spellings, the other
//     method's), so a second Install with the same Config changes nothing
//     and leaves no window without interception. Objects of ours the
//     Config does not use (the other method's chain, the divert, a family
//     it leaves out, a previous mark's ip rule) are removed.
//   - Each Config.Table belongs to one instance: Install and Remove delete
//     every protocol-70 rule and route in it that is not what their Config
//     wants. Several instances need distinct Instance names and Tables.
//   - Families: those of Config.Sources, or both when Sources is empty.
//     An explicit IPv6 source makes an IPv6 failure fatal; otherwise IPv6
//     that cannot be set up is logged and left out.
//   - A failed Install removes what it had installed. Removal of what is
//     gone is success; Remove and Cleanup keep going after an error and
//     return all of them joined.
//   - Sync puts back what a firewall reload or a routing change removed
//     (Install's reconciliation of the damaged family) after a cheap
//     check: a route lookup with the mark, and the PREROUTING hooks unless
//     the nf_tables generation has not moved. After Remove it does
//     nothing.
//   - iptables binaries and netlink sockets act in the calling thread's
//     network namespace: a caller working in another one locks its
//     goroutine to a thread that has entered it.
//   - Errors are *rules.Error with Backend "intercept", classified as
//     rules.ErrNotPermitted, rules.ErrUnsupported or rules.ErrInvalid where
//     known, with a hint.
//   - Remove cannot unload a table: a namespace that had no nat or mangle
//     table before Install keeps an empty one (iptables never deletes
//     tables; legacy tables stay registered).
package intercept
