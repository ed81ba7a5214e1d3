package nftpath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// The kernel objects, all in one table of family inet (both address
// families, one atomic batch to create or delete).
const (
	// TableName is the table's name without an instance suffix.
	TableName = "ftpalg"
	// ChainPre and ChainPost are the nat chains.
	ChainPre  = "prerouting"
	ChainPost = "postrouting"

	// PriorityPre is dstnat − 1 (NF_IP_PRI_NAT_DST = −100): among several
	// nat chains on one hook the first that sets a binding wins, so ours
	// runs before the host's own dstnat chains (iptables' nat PREROUTING,
	// Docker's, an `nft` dstnat chain) and the announced tuple is never
	// claimed by their DNAT or REDIRECT. Our rule matches only armed
	// tuples; every other packet walks on to theirs.
	PriorityPre = -101
	// PriorityPost is srcnat − 1 (NF_IP_PRI_NAT_SRC = 100), for the same
	// reason: our SNAT of a mapped connection wins over a host MASQUERADE.
	PriorityPost = 99

	// mapSize bounds each map, as ipset's maxelem does: the kernel refuses
	// an add beyond it instead of growing without limit.
	mapSize = 65536
	// mapTimeout is the maps' default element timeout. Every Map passes its
	// own; this applies only to elements added by hand.
	mapTimeout = rules.DefaultLifetime

	// dynsetOpDelete is NFT_DYNSET_OP_DELETE (kernel ≥ 5.11), which
	// golang.org/x/sys does not name: the rule deletes the element it
	// matched from the packet path.
	dynsetOpDelete = 2
	// ipsDstNAT is IPS_DST_NAT, the conntrack status bit a DNAT binding
	// sets.
	ipsDstNAT = 1 << 5
)

// family is one address family's objects and packet layout.
type family struct {
	name    string // "ipv4", "ipv6"
	nfproto byte   // NFPROTO_IPV4, NFPROTO_IPV6
	addrLen uint32 // 4, 16
	srcOff  uint32 // source address offset in the network header
	dstOff  uint32
	addr    nftables.SetDatatype
	armed   string // set (peer . announced addr . announced port): the mappings not used yet
	dnat    string // map (peer . announced addr . announced port) → target addr . target port
	snat    string // map (peer . target addr . target port) → source addr
}

var families = [2]family{
	{name: "ipv4", nfproto: unix.NFPROTO_IPV4, addrLen: 4, srcOff: 12, dstOff: 16,
		addr: nftables.TypeIPAddr, armed: "armed4", dnat: "dnat4", snat: "snat4"},
	{name: "ipv6", nfproto: unix.NFPROTO_IPV6, addrLen: 16, srcOff: 8, dstOff: 24,
		addr: nftables.TypeIP6Addr, armed: "armed6", dnat: "dnat6", snat: "snat6"},
}

// fam returns the family of an address (after Mapping.Check).
func fam(a netip.Addr) *family {
	if a.Is4() {
		return &families[0]
	}
	return &families[1]
}

// Registers: the key (peer . address . port, each padded to 32 bits) is
// loaded from NFT_REG32_00 on, and the map's value goes to the registers
// right after it, so that the key is still there for the dynset delete
// that follows the lookup. IPv6 needs 9 + 5 of the 16 32-bit registers.
func (f *family) keyReg() uint32   { return unix.NFT_REG32_00 }
func (f *family) addrRegs() uint32 { return f.addrLen / 4 }
func (f *family) dataReg() uint32  { return f.keyReg() + 2*f.addrRegs() + 1 }

// tuple loads the packet's source address, destination address and TCP
// destination port into the key registers, after checking that the packet
// is of f and TCP.
func (f *family) tuple() []expr.Any {
	r := f.keyReg()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{f.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: f.srcOff, Len: f.addrLen},
		&expr.Payload{DestRegister: r + f.addrRegs(), Base: expr.PayloadBaseNetworkHeader, Offset: f.dstOff, Len: f.addrLen},
		&expr.Payload{DestRegister: r + 2*f.addrRegs(), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// dnatRule is, for IPv4, what nft prints as
//
//	ip saddr . ip daddr . tcp dport @armed4
//	delete @armed4 { ip saddr . ip daddr . tcp dport }
//	dnat ip to ip saddr . ip daddr . tcp dport map @dnat4
//
// The lookup in armed4 is the match (a packet whose tuple is no element
// leaves the rule); the delete takes the element out in the packet path,
// so a second connection (another source port) finds nothing: one
// mapping, one connection. Retransmits of the first SYN ride its
// conntrack entry. The key registers survive the lookups (the map's value
// goes to the registers after them), so the tuple is loaded once.
func (f *family) dnatRule(t *nftables.Table, c *nftables.Chain, armed, m *nftables.Set, note string) *nftables.Rule {
	d := f.dataReg()
	ex := append(f.tuple(),
		&expr.Lookup{SourceRegister: f.keyReg(), SetName: armed.Name, SetID: armed.ID},
		&expr.Dynset{SrcRegKey: f.keyReg(), SetName: armed.Name, SetID: armed.ID, Operation: dynsetOpDelete},
		&expr.Lookup{SourceRegister: f.keyReg(), SetName: m.Name, SetID: m.ID, DestRegister: d, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: d, RegProtoMin: d + f.addrRegs(), Specified: true},
	)
	return &nftables.Rule{Table: t, Chain: c, Exprs: ex, UserData: ruleComment(note)}
}

// snatRule is, for IPv4,
//
//	ct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4
//
// In postrouting the destination is already the target. `ct status dnat`
// keeps the map to connections some DNAT made: a peer that can reach the
// target directly does not get its own connection SNATed. The element is
// not deleted in the packet path: the connection that consumed the armed
// element is the only DNATed one from that peer to that target, and the
// conntrack watcher removes the element as soon as the connection exists.
func (f *family) snatRule(t *nftables.Table, c *nftables.Chain, m *nftables.Set, note string) *nftables.Rule {
	d := f.dataReg()
	ex := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: unix.NFT_REG_1},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: unix.NFT_REG_1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
	ex = append(ex, f.tuple()...)
	ex = append(ex,
		&expr.Lookup{SourceRegister: f.keyReg(), SetName: m.Name, SetID: m.ID, DestRegister: d, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto), RegAddrMin: d},
	)
	return &nftables.Rule{Table: t, Chain: c, Exprs: ex, UserData: ruleComment(note)}
}

// ruleComment is a rule's userdata: a comment nft shows.
func ruleComment(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

// ruleNote reads a rule's comment back.
func ruleNote(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// objects are the table, chains and maps of one instance.
type objects struct {
	table             *nftables.Table
	pre, post         *nftables.Chain
	armed, dnat, snat [2]*nftables.Set
}

func newObjects(name string) *objects {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	accept := nftables.ChainPolicyAccept
	o := &objects{
		table: t,
		pre: &nftables.Chain{Name: ChainPre, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(PriorityPre), Policy: &accept},
		post: &nftables.Chain{Name: ChainPost, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(PriorityPost), Policy: &accept},
	}
	for i := range families {
		f := &families[i]
		o.armed[i] = &nftables.Set{Table: t, Name: f.armed, HasTimeout: true, Timeout: mapTimeout,
			Dynamic: true, Concatenation: true, Size: mapSize,
			KeyType: nftables.MustConcatSetType(f.addr, f.addr, nftables.TypeInetService)}
		o.dnat[i] = &nftables.Set{Table: t, Name: f.dnat, IsMap: true, HasTimeout: true, Timeout: mapTimeout,
			Concatenation: true, Size: mapSize,
			KeyType:  nftables.MustConcatSetType(f.addr, f.addr, nftables.TypeInetService),
			DataType: nftables.MustConcatSetType(f.addr, nftables.TypeInetService)}
		o.snat[i] = &nftables.Set{Table: t, Name: f.snat, IsMap: true, HasTimeout: true, Timeout: mapTimeout,
			Concatenation: true, Size: mapSize,
			KeyType:  nftables.MustConcatSetType(f.addr, f.addr, nftables.TypeInetService),
			DataType: f.addr}
	}
	return o
}

// notes are the comments of our rules, in chain order: they carry the
// run's token, so a saved copy of our table restored by a reload (rules
// present, token old) is told from ours.
func notes(token string) (pre, post []string) {
	for _, f := range families {
		pre = append(pre, fmt.Sprintf("ftpalg %s dnat, run %s", f.name, token))
		post = append(post, fmt.Sprintf("ftpalg %s snat, run %s", f.name, token))
	}
	return pre, post
}

// create queues, on c, the creation of every object with the given
// mappings in it: one batch, so the kernel gets all or nothing.
func (o *objects) create(c *nftables.Conn, token string, ms []held, now time.Time) error {
	c.AddTable(o.table)
	c.AddChain(o.pre)
	c.AddChain(o.post)
	for i := range families {
		if err := c.AddSet(o.armed[i], nil); err != nil {
			return err
		}
		if err := c.AddSet(o.dnat[i], nil); err != nil {
			return err
		}
		if err := c.AddSet(o.snat[i], nil); err != nil {
			return err
		}
	}
	pre, post := notes(token)
	for i := range families {
		f := &families[i]
		c.AddRule(f.dnatRule(o.table, o.pre, o.armed[i], o.dnat[i], pre[i]))
		c.AddRule(f.snatRule(o.table, o.post, o.snat[i], post[i]))
	}
	return o.add(c, ms, now)
}

// add queues the elements of ms, each with a timeout of the time it has
// left at now (at least 1 s): armed, DNAT and, with a Source, SNAT; one
// message per set (the library asks for an acknowledgement per message,
// and hundreds of those overflow the socket).
func (o *objects) add(c *nftables.Conn, ms []held, now time.Time) error {
	var armed, dnat, snat [2][]nftables.SetElement
	for _, h := range ms {
		m := h.m
		i := idx(m.Peer)
		life := max(time.Second, h.expires.Sub(now).Round(time.Millisecond))
		note := comment(m.Session)
		k := key(m.Peer, m.Announced)
		armed[i] = append(armed[i], nftables.SetElement{Key: k, Timeout: life, Comment: note})
		dnat[i] = append(dnat[i], nftables.SetElement{Key: k, Val: addrPort(m.Target), Timeout: life, Comment: note})
		if m.Source.IsValid() {
			snat[i] = append(snat[i], nftables.SetElement{Key: key(m.Peer, m.Target), Val: m.Source.AsSlice(), Timeout: life, Comment: note})
		}
	}
	for i := range families {
		for _, s := range []struct {
			set *nftables.Set
			els []nftables.SetElement
		}{{o.armed[i], armed[i]}, {o.dnat[i], dnat[i]}, {o.snat[i], snat[i]}} {
			if len(s.els) == 0 {
				continue
			}
			if err := c.SetAddElements(s.set, s.els); err != nil {
				return err
			}
		}
	}
	return nil
}

// Which of a mapping's elements a removal takes.
const (
	elArmed = 1 << iota
	elDNAT
	elSNAT
	elAll = elArmed | elDNAT | elSNAT
)

func idx(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// comment is what an element carries besides its tuple: whose it is.
func comment(session uint64) string {
	return rules.Pinhole{Session: session}.Comment()
}

// key encodes a concatenated key: address . address . port, the port in
// network order padded to 4 bytes (registers are 32 bits wide).
func key(peer netip.Addr, ap netip.AddrPort) []byte {
	b := append(peer.AsSlice(), ap.Addr().AsSlice()...)
	return append(binary.BigEndian.AppendUint16(b, ap.Port()), 0, 0)
}

// addrPort encodes a concatenated address . port value.
func addrPort(ap netip.AddrPort) []byte {
	return append(binary.BigEndian.AppendUint16(ap.Addr().AsSlice(), ap.Port()), 0, 0)
}
