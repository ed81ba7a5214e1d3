// Package nat holds the socket plumbing of the proxy: which local port a
// data connection listens on, which address is announced to a peer, and,
// for the transparent gateway mode, where an intercepted connection was
// going and how to listen and dial on addresses the host does not own. It
// knows nothing of FTP and never installs firewall rules or routes (rules/
// and the operator do; README.md lists what each mechanism needs).
//
// # Invariants
//
// Addresses leave this package as netip values, unmapped: an IPv4 peer on
// a dual-stack socket is reported as IPv4.
//
// Everything acts in the network namespace of the calling OS thread.
//
// Sockets are reached through SyscallConn().Control, never File(), which
// would duplicate the descriptor.
//
// # Original destination
//
//   - REDIRECT/DNAT rewrites the destination; conntrack remembers it.
//     OriginalDst asks with getsockopt(SOL_IP, SO_ORIGINAL_DST) into a
//     16-byte sockaddr_in, or getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)
//     into a 28-byte sockaddr_in6 (a shorter buffer is EINVAL). No
//     capability. A tracked connection nothing rewrote answers with its own
//     local address, without an error, which Intercepted detects; an
//     untracked one fails with ENOENT.
//   - TPROXY does not rewrite: the accepted socket's LocalAddr is the
//     original destination, and conntrack is not consulted.
//   - Destination(c, mode) reads whichever applies, and refuses in
//     ModeRedirect a connection addressed to the proxy itself (it would
//     loop).
//   - Director(mode) wraps Destination for proxy.Config.Director: it
//     unmaps the answer and also refuses any of the host's own addresses
//     (read once, when Director is called), which covers TPROXY, where a
//     direct client cannot be told from an intercepted one otherwise.
//
// # Intercepting listeners
//
// ListenIntercepted(ctx, mode, listen) opens what intercepted control
// connections arrive on: an ordinary listener for ModeRedirect, and for
// ModeTProxy one transparent listener per family (":PORT" is an IPv4 and
// an IPv6 one, on one port, merged into one net.Listener). The merged
// listener's invariants:
//
//   - Nothing is accepted ahead of the caller: each listener's goroutine
//     hands over one connection at a time through an unbuffered channel.
//   - Accept errors are passed on to the caller, and the failing listener
//     is asked again only after a pause (5 ms doubling up to 1 s, reset by
//     a success), on one reused timer that Close interrupts: no busy loop
//     even for a caller that retries at once.
//   - Close closes every listener, closes a connection accepted but not
//     handed over, and returns only when its goroutines have ended.
//
// # Transparent and freebind sockets
//
//   - IP_TRANSPARENT (IPV6_TRANSPARENT for AF_INET6 sockets) is set in
//     ListenConfig.Control / Dialer.Control, that is after socket(2) and
//     before bind(2), because bind is where the kernel checks that the
//     address is local. It lets a listener bind a non-local address, makes
//     it eligible for TPROXY delivery (TPROXY only hands packets to
//     transparent sockets), and lets a dial send from a non-local source
//     (the server sees the client's address). It needs CAP_NET_ADMIN or
//     CAP_NET_RAW in the user namespace owning the network namespace;
//     without, the error matches os.ErrPermission and names option and
//     capability.
//   - IP_FREEBIND (IPV6_FREEBIND) only lifts the bind check, for an address
//     not configured yet (a floating VRRP address). No capability, no TPROXY
//     delivery, no non-local source.
//   - Sockets are opened as "tcp4" or "tcp6" after the address, never
//     "tcp": Go would make 0.0.0.0 a dual-stack AF_INET6 socket, and the
//     IPv4 option and rules are meant for AF_INET ones. One listener per
//     family.
//   - DialTransparentAvoiding dials from an address with a random source
//     port in 32768–60999 other than a given one (the intercepted client
//     connection's, whose 4-tuple conntrack would otherwise claim), and
//     tries another port, up to 8 more times, while the port is in use.
//   - Sending from a non-local source is half the job: the replies come
//     back to an address the host does not own and must be marked by
//     `-m socket --transparent` and routed to `local 0/0 dev lo` in a
//     policy table, or they are forwarded away and the dial times out.
package nat
