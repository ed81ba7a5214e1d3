package xtables

import (
	"encoding/binary"
	"errors"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Generation returns the nf_tables ruleset generation of the calling
// thread's network namespace: a counter the kernel advances with every
// committed change to any nftables table, of any family — every
// iptables-nft command that changes something, an iptables-nft-restore, an
// `nft flush ruleset`. While it stays the same, nothing in nftables has
// changed, so a periodic check that has verified our rules at one
// generation need not run the binary again until it moves. It costs one
// netlink round trip (tens of microseconds) instead of a process.
//
// ok is false when t is legacy (its tables live outside nf_tables and
// have no generation) or the kernel does not answer: then only the binary
// can tell.
func (t *Tables) Generation() (gen uint32, ok bool) {
	if t.generation == nil {
		return 0, false
	}
	g, err := t.generation()
	return g, err == nil
}

// nftGeneration asks nf_tables for its generation (NFT_MSG_GETGEN), over a
// netlink socket of the calling thread's namespace.
func nftGeneration() (uint32, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, 0)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofNfgenmsg {
			continue
		}
		b := m[nl.SizeofNfgenmsg:]
		ne := nl.NativeEndian()
		for len(b) >= 4 {
			n := int(ne.Uint16(b[0:2]))
			typ := ne.Uint16(b[2:4]) & nl.NLA_TYPE_MASK
			if n < 4 || n > len(b) {
				break
			}
			if typ == unix.NFTA_GEN_ID && n == 8 {
				return binary.BigEndian.Uint32(b[4:8]), nil
			}
			adv := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
			if adv > len(b) {
				break
			}
			b = b[adv:]
		}
	}
	return 0, errors.New("nf_tables answered without a generation")
}
