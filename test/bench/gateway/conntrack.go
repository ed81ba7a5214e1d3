//go:build linux

package main

// A conntrack table dump over ctnetlink, the equivalent of `conntrack -L`
// (the conntrack tool may be missing, and /proc/net/nf_conntrack does not
// show helpers). It runs as a worker in the router's namespace.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ctattr types (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaHelp       = 5
	ctaHelpName   = 1
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3

	ipsDstNAT = 1 << 5 // IPS_DST_NAT in ctaStatus
)

// ctDump is what the router's conntrack table holds (TCP over IPv4).
type ctDump struct {
	Total      int            // TCP connections
	Control    int            // original direction to port 21
	Redirected int            // control connections answered from port 2121 (REDIRECT to ftpalg)
	DNATData   int            // connections to a port of dataLo-dataHi that a DNAT bound
	Helpers    map[string]int // connections with a helper, by helper name
	Sample     string         // one connection with a helper
}

type ctTuple struct {
	src, dst         netip.Addr
	proto            uint8
	sport, dport     uint16
	hasProto, hasIPs bool
}

func (t ctTuple) String() string {
	return fmt.Sprintf("%s:%d → %s:%d", t.src, t.sport, t.dst, t.dport)
}

// attrs splits a netlink attribute stream into type → value (the last
// one wins; none of the attributes read here repeats).
func attrs(b []byte) map[uint16][]byte {
	m := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nl.NLA_TYPE_MASK
		if l < 4 || l > len(b) {
			break
		}
		m[typ] = b[4:l]
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	return m
}

func parseTuple(b []byte) ctTuple {
	var t ctTuple
	a := attrs(b)
	if ip, ok := a[ctaTupleIP]; ok {
		ips := attrs(ip)
		if s, ok := ips[ctaIPv4Src]; ok && len(s) == 4 {
			t.src = netip.AddrFrom4([4]byte(s))
			t.hasIPs = true
		}
		if d, ok := ips[ctaIPv4Dst]; ok && len(d) == 4 {
			t.dst = netip.AddrFrom4([4]byte(d))
		}
	}
	if p, ok := a[ctaTupleProto]; ok {
		ps := attrs(p)
		if n, ok := ps[ctaProtoNum]; ok && len(n) == 1 {
			t.proto = n[0]
			t.hasProto = true
		}
		if s, ok := ps[ctaProtoSrc]; ok && len(s) == 2 {
			t.sport = binary.BigEndian.Uint16(s)
		}
		if d, ok := ps[ctaProtoDst]; ok && len(d) == 2 {
			t.dport = binary.BigEndian.Uint16(d)
		}
	}
	return t
}

// dumpConntrack lists this namespace's conntrack table; dataLo-dataHi
// are ftpalg's data ports.
func dumpConntrack(proxyPort, dataLo, dataHi uint16) (ctDump, error) {
	d := ctDump{Helpers: map[string]int{}}
	req := nl.NewNetlinkRequest((int(netlink.ConntrackTable)<<8)|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return d, fmt.Errorf("conntrack dump: %w", err)
	}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		a := attrs(m[4:]) // after struct nfgenmsg
		orig := parseTuple(a[ctaTupleOrig])
		reply := parseTuple(a[ctaTupleReply])
		if orig.proto != unix.IPPROTO_TCP {
			continue
		}
		d.Total++
		if st, ok := a[ctaStatus]; ok && len(st) == 4 && binary.BigEndian.Uint32(st)&ipsDstNAT != 0 &&
			orig.dport >= dataLo && orig.dport <= dataHi {
			d.DNATData++
		}
		if orig.dport == 21 {
			d.Control++
			if reply.sport == proxyPort {
				d.Redirected++
			}
		}
		if h, ok := a[ctaHelp]; ok {
			name := string(attrs(h)[ctaHelpName])
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			d.Helpers[name]++
			if d.Sample == "" {
				d.Sample = fmt.Sprintf("tcp %s, reply %s, helper=%s", orig, reply, name)
			}
		}
	}
	return d, nil
}
