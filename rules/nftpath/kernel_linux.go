package nftpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// kernel is what the data path does to nf_tables: the seam a fake stands
// in at, so the mapping logic is tested without root.
type kernel interface {
	// create replaces the table (a leftover included) by a fresh one
	// holding ms, each for the time it has left at now, atomically.
	create(token string, ms []held, now time.Time) error
	// add adds m's elements with a timeout of life.
	add(m rules.Mapping, life time.Duration) error
	// remove removes m's elements named by which (elArmed, …); missing
	// ones are fine.
	remove(m rules.Mapping, which int) error
	// check reports whether the table exists with exactly our chains'
	// rules, carrying token.
	check(token string) (intact bool, err error)
	// generation is the nf_tables ruleset generation, which every
	// committed change moves.
	generation() (uint32, error)
	// armed returns the keys of the armed elements (mappings not used).
	armed() (map[rules.MappingKey]bool, error)
	// list returns the armed mappings with target, source, session and
	// time left; none without the table.
	list() ([]rules.Mapping, error)
	// flush removes every element; a missing table is fine.
	flush() error
	// destroy deletes the table; a missing one is fine.
	destroy() error
	close()
}

// nftKernel is kernel over netlink, through google/nftables: one lasting
// socket in the data path's namespace, serialised by mu (the library
// buffers a batch on the connection and reads its answers off the one
// socket, so two goroutines must not interleave).
type nftKernel struct {
	mu  sync.Mutex
	c   *nftables.Conn
	gen *netlink.Conn // for NFT_MSG_GETGEN, which the library lacks
	o   *objects
}

// dialKernel opens the kernel side in the network namespace ns (an open
// namespace file; 0: the calling thread's).
func dialKernel(ns int, table string) (*nftKernel, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	cfg := &netlink.Config{}
	if ns > 0 {
		opts = append(opts, nftables.WithNetNSFd(ns))
		cfg.NetNS = ns
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, err
	}
	gen, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		c.CloseLasting()
		return nil, err
	}
	return &nftKernel{c: c, gen: gen, o: newObjects(table)}, nil
}

// dialNetlink is DataPath.dial on a host: nf_tables and conntrack over
// netlink in the namespace ns.
func dialNetlink(ns int, table string) (kernel, tracker, error) {
	k, err := dialKernel(ns, table)
	if err != nil {
		return nil, nil, kerr("open netlink socket", err)
	}
	ct, err := dialTracker(ns)
	if err != nil {
		k.close()
		return nil, nil, kerr("open conntrack socket", err)
	}
	return k, ct, nil
}

func (k *nftKernel) close() {
	k.c.CloseLasting()
	k.gen.Close()
}

// chunk is how many mappings one message of a batch carries at most: a
// single netlink message of ~2000 elements is refused.
const chunk = 500

func (k *nftKernel) create(token string, ms []held, now time.Time) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	// Adding the table first makes the delete succeed whether or not a
	// leftover exists; the batch replaces it atomically.
	k.c.AddTable(k.o.table)
	k.c.DelTable(k.o.table)
	first := ms[:min(len(ms), chunk)]
	if err := k.o.create(k.c, token, first, now); err != nil {
		return err
	}
	if err := k.c.Flush(); err != nil {
		return err
	}
	for rest := ms[len(first):]; len(rest) > 0; {
		n := min(len(rest), chunk)
		for _, h := range rest[:n] {
			if err := k.o.add(k.c, h.m, h.expires.Sub(now)); err != nil {
				return err
			}
		}
		if err := k.c.Flush(); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

func (k *nftKernel) add(m rules.Mapping, life time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.o.add(k.c, m, life); err != nil {
		return err
	}
	return k.c.Flush()
}

func (k *nftKernel) remove(m rules.Mapping, which int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.o.del(k.c, m, which); err != nil {
		return err
	}
	err := k.c.Flush()
	if err == nil || !notExist(err) {
		return err
	}
	// One missing element fails the whole batch: one at a time.
	var errs []error
	for _, el := range []int{elArmed, elDNAT, elSNAT} {
		if which&el == 0 || which == el || el == elSNAT && !m.Source.IsValid() {
			continue
		}
		if err := k.o.del(k.c, m, el); err != nil {
			return err
		}
		if err := k.c.Flush(); err != nil && !notExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (k *nftKernel) check(token string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.c.ListTableOfFamily(k.o.table.Name, nftables.TableFamilyINet); err != nil {
		if notExist(err) {
			return false, nil
		}
		return false, err
	}
	pre, post := notes(token)
	for _, c := range []struct {
		chain *nftables.Chain
		want  []string
	}{{k.o.pre, pre}, {k.o.post, post}} {
		rs, err := k.c.GetRules(k.o.table, c.chain)
		if err != nil || len(rs) != len(c.want) {
			return false, nil // the chain is gone or changed: rebuild
		}
		for i, r := range rs {
			if ruleNote(r) != c.want[i] {
				return false, nil
			}
		}
	}
	return true, nil
}

func (k *nftKernel) generation() (uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	msgs, err := k.gen.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("nf_tables answered without a generation")
}

func (k *nftKernel) armed() (map[rules.MappingKey]bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[rules.MappingKey]bool{}
	for i := range families {
		es, err := k.c.GetSetElements(k.o.armed[i])
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if peer, ap, ok := parseKey(e.Key); ok {
				out[rules.MappingKey{Peer: peer, Announced: ap}] = true
			}
		}
	}
	return out, nil
}

func (k *nftKernel) list() ([]rules.Mapping, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.c.ListTableOfFamily(k.o.table.Name, nftables.TableFamilyINet); err != nil {
		if notExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []rules.Mapping
	for i := range families {
		armed, err := k.c.GetSetElements(k.o.armed[i])
		if err != nil {
			return nil, err
		}
		dnat, err := k.c.GetSetElements(k.o.dnat[i])
		if err != nil {
			return nil, err
		}
		snat, err := k.c.GetSetElements(k.o.snat[i])
		if err != nil {
			return nil, err
		}
		targets := map[string]netip.AddrPort{}
		for _, e := range dnat {
			if ap, ok := parseAddrPort(e.Val); ok {
				targets[string(e.Key)] = ap
			}
		}
		sources := map[string]netip.Addr{}
		for _, e := range snat {
			if a, ok := netip.AddrFromSlice(e.Val); ok {
				sources[string(e.Key)] = a
			}
		}
		for _, e := range armed {
			peer, ap, ok := parseKey(e.Key)
			if !ok {
				continue
			}
			m := rules.Mapping{Peer: peer, Announced: ap, Target: targets[string(e.Key)], Lifetime: e.Expires}
			if m.Target.IsValid() {
				m.Source = sources[string(key(peer, m.Target))]
			}
			m.Session, _ = rules.ParseComment(e.Comment)
			out = append(out, m)
		}
	}
	return out, nil
}

func (k *nftKernel) flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.c.ListTableOfFamily(k.o.table.Name, nftables.TableFamilyINet); err != nil {
		if notExist(err) {
			return nil
		}
		return err
	}
	for i := range families {
		k.c.FlushSet(k.o.armed[i])
		k.c.FlushSet(k.o.dnat[i])
		k.c.FlushSet(k.o.snat[i])
	}
	return k.c.Flush()
}

func (k *nftKernel) destroy() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.c.AddTable(k.o.table) // so that the delete finds one
	k.c.DelTable(k.o.table)
	return k.c.Flush()
}

// parseKey reads a concatenated key back: address . address . port
// (padded), of either family.
func parseKey(b []byte) (netip.Addr, netip.AddrPort, bool) {
	n := (len(b) - 4) / 2
	if n != 4 && n != 16 || len(b) != 2*n+4 {
		return netip.Addr{}, netip.AddrPort{}, false
	}
	peer, _ := netip.AddrFromSlice(b[:n])
	ap, ok := parseAddrPort(b[n:])
	return peer, ap, ok
}

// parseAddrPort reads an address . port (padded) value back.
func parseAddrPort(b []byte) (netip.AddrPort, bool) {
	n := len(b) - 4
	if n != 4 && n != 16 {
		return netip.AddrPort{}, false
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), true
}

// notExist reports whether err says an object is not there. The library
// keeps the errno for batches and table queries but flattens it to text
// for some dumps, so the text counts too.
func notExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || err != nil && strings.Contains(err.Error(), unix.ENOENT.Error())
}

// kerr classifies a netlink error of op.
func kerr(op string, err error) error {
	if err == nil {
		return nil
	}
	if e, ok := errors.AsType[*rules.Error](err); ok {
		return e
	}
	var kind error
	hint := ""
	has := func(errno unix.Errno) bool {
		return errors.Is(err, errno) || strings.Contains(err.Error(), errno.Error())
	}
	switch {
	case has(unix.EPERM), has(unix.EACCES):
		kind, hint = rules.ErrNotPermitted, rules.HintNotPermitted
	case has(unix.EPROTONOSUPPORT), has(unix.EAFNOSUPPORT):
		kind, hint = rules.ErrUnsupported, "this kernel lacks nf_tables or conntrack netlink: use --data-path splice"
	case has(unix.EOPNOTSUPP), strings.HasPrefix(op, "setup: create") && has(unix.ENOENT):
		kind, hint = rules.ErrUnsupported, "this kernel lacks what the mappings need — nftables NAT for family inet (Linux ≥ 5.2), "+
			"dynset delete (≥ 5.11), concatenated set keys: use --data-path splice"
	case has(unix.ENOENT):
		kind, hint = rules.ErrNotReady, "the table is gone (a ruleset reload?): the next firewall check restores it (--firewall-check-interval), or restart ftpalg"
	case has(unix.ENFILE), has(unix.ENOSPC):
		hint = fmt.Sprintf("more than %d mappings at once", mapSize)
	}
	return rules.Wrap(Name, op, kind, hint, err)
}

// kerr is kerr for d's errors.
func (d *DataPath) kerr(op string, err error) error { return kerr(op, err) }
