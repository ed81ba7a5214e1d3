package rulestest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// DataPath is a fake rules.DataPath that does in user space what the
// kernel does with a mapping, so the proxy's kernel-path logic can be
// tested on loopback without root: Map listens on the announced address,
// takes the first connection from the peer (and only that one), dials the
// target from the source address, and copies both ways, counting payload
// bytes as the flow's counters. It is a normal file so any package's tests
// can use it.
type DataPath struct {
	mu      sync.Mutex
	failMap error
	refuse  func(rules.Mapping) bool
	live    map[rules.MappingKey]*forward
	mapped  int
	used    int
	wg      sync.WaitGroup
}

// NewDataPath returns an empty fake data path.
func NewDataPath() *DataPath { return &DataPath{live: map[rules.MappingKey]*forward{}} }

func (d *DataPath) Name() string                { return "fake-kernel" }
func (d *DataPath) Setup(context.Context) error { return nil }

// Supports accepts what Mapping.Check accepts, and refuses targets in
// Refuse: the fake forwards in user space, so loopback is fine here.
func (d *DataPath) Supports(m rules.Mapping) error {
	m, err := m.Check()
	if err != nil {
		return err
	}
	d.mu.Lock()
	refuse := d.refuse
	d.mu.Unlock()
	if refuse != nil && refuse(m) {
		return fmt.Errorf("%w: the fake refuses %s", rules.ErrInvalid, m)
	}
	return nil
}

// Teardown closes every unused mapping and waits for the forwarded
// connections to end.
func (d *DataPath) Teardown(ctx context.Context) error {
	d.mu.Lock()
	fs := make([]*forward, 0, len(d.live))
	for _, f := range d.live {
		fs = append(fs, f)
	}
	d.mu.Unlock()
	for _, f := range fs {
		f.Close(ctx)
	}
	d.wg.Wait()
	return nil
}

// Map installs m: from now on the first connection from m.Peer to
// m.Announced goes to m.Target. A key installed already is an error, as
// for the kernel's map.
func (d *DataPath) Map(ctx context.Context, m rules.Mapping) (rules.Forward, error) {
	m, err := m.Check()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.failMap != nil {
		d.mu.Unlock()
		return nil, d.failMap
	}
	if _, dup := d.live[m.Key()]; dup {
		d.mu.Unlock()
		return nil, fmt.Errorf("rulestest: mapping %s installed twice", m)
	}
	d.mu.Unlock()
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(m.Announced))
	if err != nil {
		return nil, fmt.Errorf("rulestest: mapping %s: %w", m, err)
	}
	f := &forward{d: d, m: m, ln: ln, used: make(chan struct{})}
	d.mu.Lock()
	d.live[m.Key()] = f
	d.mapped++
	d.mu.Unlock()
	ln.SetDeadline(time.Now().Add(max(m.Lifetime, time.Second)))
	d.wg.Go(f.serve)
	return f, nil
}

// FailMap makes Map fail with err (nil: succeed again).
func (d *DataPath) FailMap(err error) {
	d.mu.Lock()
	d.failMap = err
	d.mu.Unlock()
}

// Refuse makes Supports refuse the mappings f is true for (nil: none).
func (d *DataPath) Refuse(f func(rules.Mapping) bool) {
	d.mu.Lock()
	d.refuse = f
	d.mu.Unlock()
}

// Mappings returns the mappings not used yet.
func (d *DataPath) Mappings(context.Context) ([]rules.Mapping, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]rules.Mapping, 0, len(d.live))
	for _, f := range d.live {
		out = append(out, f.m)
	}
	return out, nil
}

// FlushMappings removes every unused mapping.
func (d *DataPath) FlushMappings(ctx context.Context) error {
	ms, _ := d.Mappings(ctx)
	for _, m := range ms {
		d.mu.Lock()
		f := d.live[m.Key()]
		d.mu.Unlock()
		if f != nil {
			f.Close(ctx)
		}
	}
	return nil
}

// Counts returns how many mappings were installed and how many carried a
// connection.
func (d *DataPath) Counts() (mapped, used int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mapped, d.used
}

// forward is one fake mapping.
type forward struct {
	d    *DataPath
	m    rules.Mapping
	ln   *net.TCPListener
	used chan struct{}
	once sync.Once

	mu   sync.Mutex
	flow rules.Flow
	got  bool
}

func (f *forward) Used() <-chan struct{} { return f.used }

func (f *forward) Flow(context.Context) (rules.Flow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.got {
		return rules.Flow{}, rules.ErrNotUsed
	}
	return f.flow, nil
}

// Close removes the mapping; a connection it carried goes on.
func (f *forward) Close(context.Context) error {
	f.once.Do(func() {
		f.ln.Close()
		f.d.mu.Lock()
		if f.d.live[f.m.Key()] == f {
			delete(f.d.live, f.m.Key())
		}
		f.d.mu.Unlock()
	})
	return nil
}

// serve takes the mapping's one connection and forwards it.
func (f *forward) serve() {
	var in *net.TCPConn
	for {
		c, err := f.ln.AcceptTCP()
		if err != nil {
			f.Close(context.Background())
			return
		}
		if netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap() == f.m.Peer {
			in = c
			break
		}
		c.Close() // the kernel's map would not match another source
	}
	f.Close(context.Background()) // used up: a second connection is not forwarded
	d := net.Dialer{Timeout: 10 * time.Second}
	if f.m.Source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(f.m.Source, 0))
	}
	c, err := d.Dial("tcp", f.m.Target.String())
	if err != nil {
		in.SetLinger(0)
		in.Close()
		return
	}
	out := c.(*net.TCPConn)
	f.mu.Lock()
	f.got = true
	f.flow = rules.Flow{PeerPort: uint16(in.RemoteAddr().(*net.TCPAddr).Port), Seen: time.Now(), Counted: true}
	f.mu.Unlock()
	f.d.mu.Lock()
	f.d.used++
	f.d.mu.Unlock()
	close(f.used)
	var wg sync.WaitGroup
	count := func(dst, src *net.TCPConn, c *rules.Counter) {
		n, err := io.Copy(dst, src)
		f.mu.Lock()
		c.Bytes += uint64(n)
		f.mu.Unlock()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			dst.SetLinger(0)
			dst.Close()
			src.Close()
			return
		}
		dst.CloseWrite()
	}
	wg.Go(func() { count(out, in, &f.flow.ToTarget) })
	wg.Go(func() { count(in, out, &f.flow.FromTarget) })
	wg.Wait()
	in.Close()
	out.Close()
	f.mu.Lock()
	f.flow.Closed = true
	f.mu.Unlock()
}

var (
	_ rules.DataPath      = (*DataPath)(nil)
	_ rules.MappingLister = (*DataPath)(nil)
)
