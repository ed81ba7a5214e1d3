package nat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// PortRange is an inclusive range of TCP ports for data connections. The
// zero range means "any port the kernel picks".
type PortRange struct{ Lo, Hi uint16 }

// ParsePortRange parses "LO-HI" (or a single port, or "0" for any).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("nat: port range %q: want LO-HI with ports 1..65535", s)
	}
	if l == 0 && h == 0 {
		return PortRange{}, nil
	}
	if l == 0 || l > h {
		return PortRange{}, fmt.Errorf("nat: port range %q: want 1 <= LO <= HI <= 65535", s)
	}
	return PortRange{Lo: uint16(l), Hi: uint16(h)}, nil
}

func (r PortRange) String() string {
	if r.Lo == 0 {
		return "any"
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// Size is the number of ports in the range (0 for "any").
func (r PortRange) Size() int {
	if r.Lo == 0 {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// ErrNoPort is returned when every port of the range is in use.
var ErrNoPort = errors.New("nat: no free data port in range")

// Ports hands out listening sockets on ports of a range. It rotates through
// the range instead of reusing the lowest free port, so a port just closed
// (with a pinhole possibly still draining) is not handed out again at once.
type Ports struct {
	r    PortRange
	next atomic.Uint32
	// Transparent makes the listeners IP_TRANSPARENT, so they may bind an
	// address that is not the host's (a server's, in gateway mode).
	Transparent bool

	mu       sync.Mutex
	reserved map[netip.AddrPort]struct{} // ports given out by Reserve, not released yet
}

// NewPorts returns an allocator for r.
func NewPorts(r PortRange) *Ports {
	p := &Ports{r: r}
	if n := r.Size(); n > 0 {
		p.next.Store(uint32(rand.IntN(n)))
	}
	return p
}

// Listen opens a TCP listener on ip and a free port of the range.
func (p *Ports) Listen(ip netip.Addr) (*net.TCPListener, netip.AddrPort, error) {
	n := p.r.Size()
	if n == 0 {
		return p.listen(netip.AddrPortFrom(ip, 0))
	}
	for range n {
		port := p.r.Lo + uint16(p.next.Add(1)%uint32(n))
		if p.isReserved(netip.AddrPortFrom(ip, port)) {
			continue
		}
		ln, ap, err := p.listen(netip.AddrPortFrom(ip, port))
		if err == nil {
			return ln, ap, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, netip.AddrPort{}, err
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("%w %s on %s", ErrNoPort, p.r, ip)
}

// Reserve picks a port of the range on ip without keeping a socket on it,
// for a data connection the kernel forwards (a local listener on the port
// would take the connection for itself): a port no listener holds now (it
// is bound once, to check, and closed again) and no earlier reservation
// holds until its release. Listen skips reserved ports.
func (p *Ports) Reserve(ip netip.Addr) (ap netip.AddrPort, release func(), err error) {
	n := max(p.r.Size(), 1)
	for range n {
		want := netip.AddrPortFrom(ip, 0)
		if p.r.Size() > 0 {
			want = netip.AddrPortFrom(ip, p.r.Lo+uint16(p.next.Add(1)%uint32(n)))
			if p.isReserved(want) {
				continue
			}
		}
		ln, got, err := p.listen(want)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		ln.Close()
		got = netip.AddrPortFrom(got.Addr().Unmap(), got.Port())
		p.mu.Lock()
		if _, taken := p.reserved[got]; taken { // raced with another Reserve
			p.mu.Unlock()
			continue
		}
		if p.reserved == nil {
			p.reserved = map[netip.AddrPort]struct{}{}
		}
		p.reserved[got] = struct{}{}
		p.mu.Unlock()
		var once sync.Once
		return got, func() {
			once.Do(func() {
				p.mu.Lock()
				delete(p.reserved, got)
				p.mu.Unlock()
			})
		}, nil
	}
	return netip.AddrPort{}, nil, fmt.Errorf("%w %s on %s", ErrNoPort, p.r, ip)
}

func (p *Ports) isReserved(ap netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.reserved[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
	return ok
}

func (p *Ports) listen(ap netip.AddrPort) (*net.TCPListener, netip.AddrPort, error) {
	var ln *net.TCPListener
	var err error
	if p.Transparent {
		ln, err = ListenTransparent(context.Background(), ap)
	} else {
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	}
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return ln, ln.Addr().(*net.TCPAddr).AddrPort(), nil
}
