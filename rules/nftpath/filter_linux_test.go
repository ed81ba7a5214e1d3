package nftpath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ctMessage is a ctnetlink NEW event as ctnetlink_conntrack_event lays it
// out: netlink header, nfgenmsg, the tuples, a zone when zone is not 0, the
// id, the status, and the rest.
func ctMessage(t *testing.T, src, dst, replySrc netip.AddrPort, zone uint16, status uint32, withStatus bool) []byte {
	t.Helper()
	tup := func(ae *netlink.AttributeEncoder, s, d netip.AddrPort) error {
		srcT, dstT := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
		if s.Addr().Is6() {
			srcT, dstT = ctaIPv6Src, ctaIPv6Dst
		}
		ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(srcT, s.Addr().AsSlice())
			ae.Bytes(dstT, d.Addr().AsSlice())
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, unix.IPPROTO_TCP)
			ae.Bytes(ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, s.Port()))
			ae.Bytes(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, d.Port()))
			return nil
		})
		if zone != 0 {
			ae.Bytes(3, binary.BigEndian.AppendUint16(nil, zone)) // CTA_TUPLE_ZONE
		}
		return nil
	}
	be := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	ae := netlink.NewAttributeEncoder()
	ae.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error { return tup(ae, src, dst) })
	ae.Nested(ctaTupleReply, func(ae *netlink.AttributeEncoder) error { return tup(ae, replySrc, src) })
	if zone != 0 {
		ae.Bytes(18, binary.BigEndian.AppendUint16(nil, zone)) // CTA_ZONE
	}
	ae.Bytes(12, be(0x1234)) // CTA_ID
	if withStatus {
		ae.Bytes(ctaStatus, be(status))
	}
	ae.Bytes(7, be(120)) // CTA_TIMEOUT
	ae.Bytes(8, be(0))   // CTA_MARK
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	body := append([]byte{unix.AF_INET, 0, 0, 0}, b...)
	hdr := binary.NativeEndian.AppendUint32(nil, uint32(16+len(body)))
	hdr = binary.NativeEndian.AppendUint16(hdr, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtNew)
	hdr = binary.NativeEndian.AppendUint16(hdr, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	hdr = append(hdr, make([]byte, 8)...)
	return append(hdr, body...)
}

// TestEventFilter runs the socket filter on events as the kernel sends
// them: DNATed connections (IPv4, IPv6, in a zone) are kept, others
// dropped, and one whose status is not where expected is kept.
func TestEventFilter(t *testing.T) {
	vm, err := bpf.NewVM(eventFilter())
	if err != nil {
		t.Fatal(err)
	}
	src, src6 := netip.AddrPortFrom(peer, 33000), netip.AddrPortFrom(peer6, 33000)
	const dnat = ipsDstNATBit | 0x188 // and CONFIRMED, SRC_NAT_DONE, DST_NAT_DONE…
	for _, tc := range []struct {
		name string
		msg  []byte
		keep bool
	}{
		{"ipv4 DNAT", ctMessage(t, src, annc, target, 0, dnat, true), true},
		{"ipv4 not NATed", ctMessage(t, src, annc, annc, 0, 0x188, true), false},
		{"ipv4 SNAT only", ctMessage(t, src, annc, annc, 0, 1<<4|0x100, true), false},
		{"ipv6 DNAT", ctMessage(t, src6, annc6, target6, 0, dnat, true), true},
		{"ipv6 not NATed", ctMessage(t, src6, annc6, annc6, 0, 0x188, true), false},
		{"zone DNAT", ctMessage(t, src, annc, target, 7, dnat, true), true},
		{"zone not NATed", ctMessage(t, src, annc, annc, 7, 0x188, true), false},
		{"no status", ctMessage(t, src, annc, annc, 0, 0, false), true},
	} {
		n, err := vm.Run(tc.msg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := n > 0; got != tc.keep {
			t.Errorf("%s: kept %v, want %v", tc.name, got, tc.keep)
		}
		if tc.keep {
			if ev, ok := parseCT(tc.msg[16:]); !ok || ev.src.Port() != 33000 {
				t.Errorf("%s: parseCT = %+v, %v", tc.name, ev, ok)
			}
		}
	}
	if _, err := bpf.Assemble(eventFilter()); err != nil {
		t.Errorf("the filter does not assemble: %v", err)
	}
}
