package nftpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
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
	// removeUsed removes what is left of a used mapping: its DNAT and SNAT
	// elements, and the armed one should the packet path have left it.
	removeUsed(m rules.Mapping) error
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

// nftKernel is kernel over netlink in the data path's namespace, all of
// it serialised by mu: google/nftables (a lasting socket) for the table,
// chains, sets and rules, and a socket of our own for the element
// batches of Map and Close and for the generation, which the library
// either cannot send (NFT_MSG_GETGEN, NFT_MSG_DESTROYSETELEM) or sends
// with an acknowledgement per message, each a receive of its own (see
// batch).
type nftKernel struct {
	mu  sync.Mutex
	c   *nftables.Conn
	nl  *netlink.Conn
	seq uint32 // the last sequence number sent on nl
	out []byte // send buffer of nl
	buf []byte // receive buffer of nl
	o   *objects
	// destroy: the kernel has NFT_MSG_DESTROYSETELEM (Linux ≥ 6.3), a
	// delete for which a missing element is no error, so a mapping's
	// elements go in one batch whatever is left of them.
	hasDestroy bool
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
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		c.CloseLasting()
		return nil, err
	}
	// Errors then carry no copy of the failed message: small receives.
	if err := nl.SetOption(netlink.CapAcknowledge, true); err != nil {
		nl.Close()
		c.CloseLasting()
		return nil, err
	}
	return &nftKernel{c: c, nl: nl, buf: make([]byte, 64<<10), o: newObjects(table)}, nil
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
	k.nl.Close()
}

// msgDestroySetElem is NFT_MSG_DESTROYSETELEM (Linux ≥ 6.3), which
// golang.org/x/sys does not name yet.
const msgDestroySetElem = 30

// chunk is how many mappings one batch carries at most (one message per
// set, each of up to chunk elements): a single message of ~2000 elements
// is refused.
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
	// Does the kernel have DESTROYSETELEM? Destroy an element that is not
	// there: no error means yes.
	probe := rules.Mapping{Peer: netip.IPv4Unspecified(), Announced: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)}
	k.hasDestroy = k.batch(k.elems(msgDestroySetElem, probe, elArmed, 0)) == nil
	for rest := ms[len(first):]; len(rest) > 0; {
		n := min(len(rest), chunk)
		if err := k.o.add(k.c, rest[:n], now); err != nil {
			return err
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
	return k.batch(k.elems(unix.NFT_MSG_NEWSETELEM, m, elAll, life))
}

func (k *nftKernel) remove(m rules.Mapping, which int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.hasDestroy {
		return k.batch(k.elems(msgDestroySetElem, m, which, 0))
	}
	err := k.batch(k.elems(unix.NFT_MSG_DELSETELEM, m, which, 0))
	if err == nil || !notExist(err) {
		return err
	}
	// One missing element fails the whole batch: one at a time.
	var errs []error
	for _, el := range []int{elArmed, elDNAT, elSNAT} {
		if which&el == 0 || which == el || el == elSNAT && !m.Source.IsValid() {
			continue
		}
		if err := k.batch(k.elems(unix.NFT_MSG_DELSETELEM, m, el, 0)); err != nil && !notExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (k *nftKernel) removeUsed(m rules.Mapping) error {
	k.mu.Lock()
	hasDestroy := k.hasDestroy
	k.mu.Unlock()
	if hasDestroy {
		return k.remove(m, elAll) // one batch
	}
	// Without DESTROYSETELEM the armed element, which the packet path
	// deleted, would fail the batch: it goes alone, after.
	return errors.Join(k.remove(m, elDNAT|elSNAT), k.remove(m, elArmed))
}

// elems returns the messages of type typ (NEWSETELEM, DELSETELEM,
// DESTROYSETELEM) for m's elements named by which: armed, DNAT, and SNAT
// when m has a Source. New elements carry the timeout life and the
// session's comment.
func (k *nftKernel) elems(typ uint16, m rules.Mapping, which int, life time.Duration) []netlink.Message {
	i := idx(m.Peer)
	k1 := key(m.Peer, m.Announced)
	add := typ == unix.NFT_MSG_NEWSETELEM
	var note []byte
	if add {
		life = max(time.Second, life.Round(time.Millisecond))
		note = userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, comment(m.Session))
	}
	var out []netlink.Message
	one := func(set string, key, val []byte) {
		var e elem
		e.key = key
		if add {
			e.val, e.timeout, e.note = val, life, note
		}
		out = append(out, elemMessage(typ, k.o.table.Name, set, e))
	}
	if which&elArmed != 0 {
		one(k.o.armed[i].Name, k1, nil)
	}
	if which&elDNAT != 0 {
		one(k.o.dnat[i].Name, k1, addrPort(m.Target))
	}
	if which&elSNAT != 0 && m.Source.IsValid() {
		one(k.o.snat[i].Name, key(m.Peer, m.Target), m.Source.AsSlice())
	}
	return out
}

// elem is one set element of a message.
type elem struct {
	key, val []byte
	timeout  time.Duration
	note     []byte // userdata: the comment
}

// elemMessage is one element message of family inet for table's set:
// what libnftnl sends for `nft add element inet TABLE SET { … }`.
func elemMessage(typ uint16, table, set string, e elem) netlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
		ae.Bytes(unix.NFTA_DATA_VALUE, e.key)
		return nil
	})
	if e.timeout > 0 {
		ae.Uint64(unix.NFTA_SET_ELEM_TIMEOUT, uint64(e.timeout.Milliseconds()))
	}
	if e.val != nil {
		ae.Nested(unix.NFTA_SET_ELEM_DATA, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(unix.NFTA_DATA_VALUE, e.val)
			return nil
		})
	}
	if e.note != nil {
		ae.Bytes(unix.NFTA_SET_ELEM_USERDATA, e.note)
	}
	item, _ := ae.Encode()
	list := netlink.NewAttributeEncoder()
	list.ByteOrder = binary.BigEndian
	list.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	list.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	list.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		ae.Bytes(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, item)
		return nil
	})
	data, _ := list.Encode()
	flags := netlink.Request
	if typ == unix.NFT_MSG_NEWSETELEM {
		flags |= netlink.Create
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	}
}

// batch sends msgs as one nf_tables transaction and returns the first
// error the kernel reported for any of them (the transaction is then
// undone as a whole). Only the last message asks for an acknowledgement:
// the kernel processes every message of a batch and reports each that
// fails, then the last one's outcome, in order, so reading up to the
// last message's answer drains the socket: one receive instead of one
// per message.
func (k *nftKernel) batch(msgs []netlink.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES} // res_id: the subsystem, big-endian
	all := make([]netlink.Message, 0, len(msgs)+2)
	all = append(all, netlink.Message{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_BEGIN, Flags: netlink.Request}, Data: hdr})
	all = append(all, msgs...)
	all[len(all)-1].Header.Flags |= netlink.Acknowledge
	all = append(all, netlink.Message{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_END, Flags: netlink.Request}, Data: hdr})
	first, last, err := k.send(all)
	if err != nil {
		return err
	}
	return k.receive(first+1, last-1)
}

// send writes msgs to the socket in one sendto, numbering them, and
// returns the first and last sequence numbers. It goes to the file
// descriptor directly: the socket package's context-aware write wakes a
// second OS thread per call, which costs more than the kernel's work.
func (k *nftKernel) send(msgs []netlink.Message) (first, last uint32, err error) {
	b := k.out[:0]
	first = k.seq + 1
	for _, m := range msgs {
		k.seq++
		n := unix.NLMSG_HDRLEN + len(m.Data)
		b = binary.NativeEndian.AppendUint32(b, uint32(n))
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags))
		b = binary.NativeEndian.AppendUint32(b, k.seq)
		b = binary.NativeEndian.AppendUint32(b, 0) // the kernel's port id
		b = append(b, m.Data...)
		for len(b)%unix.NLMSG_ALIGNTO != 0 {
			b = append(b, 0)
		}
	}
	k.out = b
	rc, err := k.nl.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		werr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return werr != unix.EAGAIN && werr != unix.EINTR
	}); err != nil {
		return 0, 0, err
	}
	if werr != nil {
		return 0, 0, fmt.Errorf("netlink send: %w", werr)
	}
	return first, k.seq, nil
}

// readDatagram reads one datagram from the netlink socket into k.buf,
// waiting in the runtime's poller, and parses its messages.
func (k *nftKernel) readDatagram() ([]syscall.NetlinkMessage, error) {
	rc, err := k.nl.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		n    int
		rerr error
	)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), k.buf, 0)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	}); err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, fmt.Errorf("netlink receive: %w", rerr)
	}
	ms, err := syscall.ParseNetlinkMessage(k.buf[:n])
	if err != nil {
		return nil, fmt.Errorf("netlink receive: %w", err)
	}
	return ms, nil
}

// receive reads the answers to the messages numbered first to last until
// the one to last (an acknowledgement or an error), and returns the
// first error among them. Each answer is a datagram of its own.
func (k *nftKernel) receive(first, last uint32) error {
	var failed error
	for {
		ms, err := k.readDatagram()
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Header.Seq < first || m.Header.Seq > last {
				continue // an answer to an earlier call (cannot be: each reads up to its last)
			}
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 && failed == nil {
					failed = fmt.Errorf("netlink receive: %w", unix.Errno(-code))
				}
			}
			if m.Header.Seq == last {
				return failed
			}
		}
	}
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
	_, seq, err := k.send([]netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}})
	if err != nil {
		return 0, err
	}
	// The answer is a NEWGEN message, without an acknowledgement.
	for {
		ms, err := k.readDatagram()
		if err != nil {
			return 0, err
		}
		for _, m := range ms {
			if m.Header.Seq != seq {
				continue
			}
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				return 0, fmt.Errorf("netlink receive: %w", unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data))))
			}
			if len(m.Data) < 4 {
				return 0, errors.New("nf_tables answered with a short message")
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
			return 0, errors.New("nf_tables answered without a generation")
		}
	}
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
