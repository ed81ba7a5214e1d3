package nftpath

import (
	"encoding/binary"

	"golang.org/x/net/bpf"
)

// ctattr types (linux/netfilter/nfnetlink_conntrack.h) the filter reads.
const (
	ctaStatus = 3
	// ipsDstNATBit is IPS_DST_NAT in CTA_STATUS (a big-endian u32).
	ipsDstNATBit = 1 << 5
)

// eventFilter is the socket filter of the event socket: every new
// connection of the namespace makes an event, and waking the watcher for
// each costs more than anything else it does (rules/README.md), so the
// kernel keeps only the events of connections some DNAT has bound
// (IPS_DST_NAT in CTA_STATUS): ours, and the host's port forwards and
// interceptions. Everything else never reaches us.
//
// A NEW event's message is nlmsghdr (16 bytes), nfgenmsg (4), then
// CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE (only for a zone other than
// the default), CTA_ID and CTA_STATUS (ctnetlink_conntrack_event). The
// filter walks the attributes (lengths are host-endian u16s, read a byte
// at a time: classic BPF loads big-endian) up to five past the tuples,
// and keeps the event when it finds no CTA_STATUS where it expects one,
// checking each offset against the length first: an unexpected layout
// must not lose our events.
func eventFilter() []bpf.Instruction {
	type label int
	const (
		keep label = iota + 1
		drop
		status
	)
	var (
		prog   []bpf.Instruction
		fixups = map[int]label{} // index of a JumpIf → where its true branch goes
		at     = map[label]int{}
	)
	emit := func(in ...bpf.Instruction) { prog = append(prog, in...) }
	// Where the bytes of the host-endian nla_len and nla_type are.
	lenHi, lenLo, typeLo := uint32(1), uint32(0), uint32(2)
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 { // big-endian host
		lenHi, lenLo, typeLo = 0, 1, 3
	}
	// skip advances X past the attribute at X.
	skip := func() {
		emit(
			bpf.StoreScratch{Src: bpf.RegX, N: 2},
			bpf.LoadIndirect{Off: lenHi, Size: 1}, // nla_len, high byte
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
			bpf.StoreScratch{Src: bpf.RegA, N: 0},
			bpf.LoadIndirect{Off: lenLo, Size: 1}, // nla_len, low byte
			bpf.LoadScratch{Dst: bpf.RegX, N: 0},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 3}, // NLA_ALIGN
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xfffc},
			bpf.LoadScratch{Dst: bpf.RegX, N: 2},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.TAX{},
		)
	}
	// inBounds goes to keep unless the message holds n bytes from X on
	// (a load past the end would make the filter drop the event).
	inBounds := func(n uint32) {
		emit(
			bpf.LoadExtension{Num: bpf.ExtLen},
			bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: n},
		)
		emit(bpf.JumpIfX{Cond: bpf.JumpGreaterOrEqual, SkipTrue: 1}) // A = len-n ≥ X: go on
		fixups[len(prog)] = keep
		emit(bpf.Jump{})
	}
	jumpIfType := func(typ uint32, to label) {
		inBounds(4)
		emit(bpf.LoadIndirect{Off: typeLo, Size: 1}) // nla_type, low byte
		fixups[len(prog)] = to
		emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: typ})
	}
	emit(bpf.LoadConstant{Dst: bpf.RegX, Val: 16 + 4})
	inBounds(4)
	skip() // CTA_TUPLE_ORIG
	inBounds(4)
	skip() // CTA_TUPLE_REPLY
	for range 5 {
		jumpIfType(ctaStatus, status)
		skip()
	}
	fixups[len(prog)] = keep
	emit(bpf.Jump{})
	at[status] = len(prog)
	inBounds(8)
	emit(bpf.LoadIndirect{Off: 4, Size: 4}) // the status, big-endian
	fixups[len(prog)] = keep
	emit(bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: ipsDstNATBit})
	at[drop] = len(prog)
	emit(bpf.RetConstant{Val: 0})
	at[keep] = len(prog)
	emit(bpf.RetConstant{Val: 0xffff})
	for i, l := range fixups {
		skip := uint32(at[l] - i - 1)
		switch in := prog[i].(type) {
		case bpf.JumpIf:
			in.SkipTrue = uint8(skip)
			prog[i] = in
		case bpf.Jump:
			in.Skip = skip
			prog[i] = in
		}
	}
	return prog
}
