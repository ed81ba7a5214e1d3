package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Netfilter answers these getsockopt calls from the socket's conntrack
// entry: the tuple of the original direction, before any NAT.
const (
	// soOriginalDst is SO_ORIGINAL_DST (<linux/netfilter_ipv4.h>), level
	// SOL_IP. The kernel wants exactly sizeof(struct sockaddr_in), 16 bytes.
	soOriginalDst = 80
	// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST
	// (<linux/netfilter_ipv6/ip6_tables.h>), level SOL_IPV6. The kernel
	// wants at least sizeof(struct sockaddr_in6), 28 bytes; the 20-byte
	// buffer some proxies pass fails with EINVAL.
	ip6tSoOriginalDst = 80
)

// OriginalDst returns the destination the client of c originally connected
// to, before an iptables/nft REDIRECT or DNAT rule rewrote it to the
// proxy's address. It reads the socket's conntrack entry with
// getsockopt(SOL_IP, SO_ORIGINAL_DST) for IPv4 (also for an IPv4 client on
// a dual-stack socket) and getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for
// IPv6. No capability is needed.
//
// The answer is only meaningful for a redirected connection: on a tracked
// connection no rule rewrote, the kernel returns the socket's own local
// address without an error (use Intercepted to tell the two apart). On a
// connection conntrack does not track at all (no NAT rule in the network
// namespace, a NOTRACK/notrack rule) it fails with an error matching
// syscall.ENOENT. For a connection accepted through TPROXY use LocalAddr,
// or Destination with ModeTProxy.
//
// The file descriptor is used in place through SyscallConn; c stays in
// non-blocking mode and is not duplicated.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local, err := localAddrPort(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("nat: original destination of %s: %w", local, err)
	}
	var (
		orig netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		if local.Addr().Is4() {
			orig, serr = originalDst4(int(fd))
		} else {
			orig, serr = originalDst6(int(fd))
		}
	})
	if err == nil {
		err = serr
	}
	if errors.Is(err, syscall.ENOENT) {
		return netip.AddrPort{}, fmt.Errorf("nat: original destination of %s: no conntrack entry: the connection is not tracked (no NAT rule in this network namespace, or a notrack rule): %w", local, err)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("nat: original destination of %s: %w", local, err)
	}
	return orig, nil
}

// Intercepted returns c's original destination (see OriginalDst) and
// whether a REDIRECT/DNAT rule rewrote it, that is whether it differs from
// c's local address. redirected is false for a client that connected to
// the proxy's own address and port.
func Intercepted(c *net.TCPConn) (orig netip.AddrPort, redirected bool, err error) {
	orig, err = OriginalDst(c)
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	local, err := localAddrPort(c)
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	return orig, !sameAddrPort(orig, local), nil
}

// Destination returns where the client of an intercepted connection meant
// to go, read the way mode m delivers it:
//
//   - ModeRedirect: OriginalDst. A connection no rule rewrote yields
//     ErrNotIntercepted (together with its local address): proxying it
//     would loop back to the proxy.
//   - ModeTProxy: c's local address, which TPROXY leaves untouched; no
//     system call. TPROXY cannot be told apart from a client that
//     connected straight to the listener's own address: bind the listener
//     to 127.0.0.1 and point TPROXY at it (--on-ip 127.0.0.1), or refuse a
//     destination equal to the listener's address.
func Destination(c *net.TCPConn, m Mode) (netip.AddrPort, error) {
	switch m {
	case ModeTProxy:
		return localAddrPort(c)
	case ModeRedirect:
		orig, redirected, err := Intercepted(c)
		if err != nil {
			return netip.AddrPort{}, err
		}
		if !redirected {
			return orig, fmt.Errorf("%w (%s)", ErrNotIntercepted, orig)
		}
		return orig, nil
	}
	return netip.AddrPort{}, fmt.Errorf("nat: destination: unknown interception mode %s", m)
}

func localAddrPort(c *net.TCPConn) (netip.AddrPort, error) {
	if c == nil {
		return netip.AddrPort{}, errors.New("nat: nil connection")
	}
	a := c.LocalAddr()
	if a == nil {
		return netip.AddrPort{}, errors.New("nat: connection has no local address")
	}
	return AddrPortOf(a), nil
}

// sameAddrPort compares unmapped addresses and ports, ignoring zones (the
// kernel reports a scope id, Go an interface name).
func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap().WithZone("") == b.Addr().Unmap().WithZone("")
}

func originalDst4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4 // 16 bytes: struct sockaddr_in
	if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: address family %d, want AF_INET", sa.Family)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port)), nil
}

func originalDst6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6 // 28 bytes: struct sockaddr_in6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: address family %d, want AF_INET6", sa.Family)
	}
	a := netip.AddrFrom16(sa.Addr)
	if sa.Scope_id != 0 {
		a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
	}
	return netip.AddrPortFrom(a, netPort(&sa.Port)), nil
}

// netPort reads a sockaddr port, stored in network byte order.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// getsockopt reads an option of exactly size bytes into p. x/sys/unix has
// no typed getter for a sockaddr, hence the raw call.
func getsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	if uintptr(n) != size {
		return fmt.Errorf("kernel returned %d bytes, want %d", n, size)
	}
	return nil
}
