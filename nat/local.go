package nat

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// localRefresh is how long a reading of the host's addresses is trusted:
// addresses come and go (DHCP, a VRRP address moving here), and reading
// them is a netlink dump, too dear for every data connection.
const localRefresh = 10 * time.Second

// LocalAddrs tells whether an address is one of the host's own, from a
// reading of its interfaces at most localRefresh old. The zero value is
// ready; it is safe for concurrent use.
type LocalAddrs struct {
	mu   sync.Mutex
	set  map[netip.Addr]bool
	read time.Time
	now  func() time.Time // for tests; nil: time.Now
}

// Has reports whether a (unmapped, zone ignored) is the host's own, in
// the network namespace of the calling thread at the last reading. When
// the interfaces cannot be read it answers from the last reading.
func (l *LocalAddrs) Has(a netip.Addr) bool {
	now := time.Now
	if l.now != nil {
		now = l.now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set == nil || now().Sub(l.read) >= localRefresh {
		if m, err := localAddrs(); err == nil || l.set == nil {
			l.set, l.read = m, now()
		}
	}
	return l.set[a.Unmap().WithZone("")]
}

// localAddrs returns the host's own addresses, unmapped and without zones.
func localAddrs() (map[netip.Addr]bool, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]bool{}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			m[p.Addr().Unmap().WithZone("")] = true
		}
	}
	return m, nil
}
