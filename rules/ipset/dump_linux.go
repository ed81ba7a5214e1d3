package ipset

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// setDump is what listSet reads of a set: its header and its elements.
type setDump struct {
	TypeName   string
	Family     uint8
	Timeout    *uint32 // the set's default timeout; nil: no timeout support
	CadtFlags  uint32
	References uint32 // how many iptables rules (and other sets) refer to it
	Elements   []dumpElement
}

type dumpElement struct {
	IP, IP2 netip.Addr
	Port    uint16
	Proto   uint8
	Timeout uint32 // seconds left
	Comment string
}

// listSet dumps one set over a netlink socket of the calling thread's
// namespace. netlink v1.3.1's IpsetList would do, but it prints a line to
// the standard logger for each header attribute it does not know, and this
// kernel sends two (bucketsize, initval) for every set; `ftpalg rules show`
// should print pinholes, not that.
func listSet(name string) (*setDump, error) { return dump(name, false) }

// setHeader reads only the header of a set (`ipset list -t`): type,
// family, flags and references, without its elements. One netlink round
// trip of a few hundred bytes, whatever the set holds.
func setHeader(name string) (*setDump, error) { return dump(name, true) }

// ipsetFlagListHeader is the kernel's IPSET_FLAG_LIST_HEADER (ipset.h),
// which netlink v1.3.1 does not name: list the header, not the members.
const ipsetFlagListHeader = 1 << 2

func dump(name string, headerOnly bool) (*setDump, error) {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_LIST|(unix.NFNL_SUBSYS_IPSET<<8), nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	if headerOnly {
		req.AddData(&nl.Uint32Attribute{Type: nl.IPSET_ATTR_FLAGS | nl.NLA_F_NET_BYTEORDER, Value: ipsetFlagListHeader})
	}
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
			return nil, nl.IPSetError(uintptr(errno))
		}
		return nil, err
	}
	d := &setDump{}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		for typ, v := range attrs(m[4:]) { // after the nfgenmsg header
			switch typ {
			case nl.IPSET_ATTR_TYPENAME:
				d.TypeName = cstring(v)
			case nl.IPSET_ATTR_FAMILY:
				if len(v) > 0 {
					d.Family = v[0]
				}
			case nl.IPSET_ATTR_DATA:
				for typ, v := range attrs(v) {
					switch typ {
					case nl.IPSET_ATTR_TIMEOUT:
						if len(v) == 4 {
							t := binary.BigEndian.Uint32(v)
							d.Timeout = &t
						}
					case nl.IPSET_ATTR_CADT_FLAGS:
						if len(v) == 4 {
							d.CadtFlags = binary.BigEndian.Uint32(v)
						}
					case nl.IPSET_ATTR_REFERENCES:
						if len(v) == 4 {
							d.References = binary.BigEndian.Uint32(v)
						}
					}
				}
			case nl.IPSET_ATTR_ADT:
				for typ, v := range attrs(v) {
					if typ == nl.IPSET_ATTR_DATA {
						d.Elements = append(d.Elements, parseElement(v))
					}
				}
			}
		}
	}
	return d, nil
}

func parseElement(b []byte) dumpElement {
	var e dumpElement
	for typ, v := range attrs(b) {
		switch typ {
		case nl.IPSET_ATTR_IP:
			e.IP = nestedAddr(v)
		case nl.IPSET_ATTR_IP2:
			e.IP2 = nestedAddr(v)
		case nl.IPSET_ATTR_PORT:
			if len(v) == 2 {
				e.Port = binary.BigEndian.Uint16(v)
			}
		case nl.IPSET_ATTR_PROTO:
			if len(v) == 1 {
				e.Proto = v[0]
			}
		case nl.IPSET_ATTR_TIMEOUT:
			if len(v) == 4 {
				e.Timeout = binary.BigEndian.Uint32(v)
			}
		case nl.IPSET_ATTR_COMMENT:
			e.Comment = cstring(v)
		}
	}
	return e
}

func nestedAddr(b []byte) netip.Addr {
	for typ, v := range attrs(b) {
		if typ == nl.IPSET_ATTR_IPADDR_IPV4 || typ == nl.IPSET_ATTR_IPADDR_IPV6 {
			a, _ := netip.AddrFromSlice(v)
			return a
		}
	}
	return netip.Addr{}
}

// attrs iterates over the netlink attributes in b, yielding each type with
// its flags (nested, network byte order) masked off.
func attrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		ne := nl.NativeEndian()
		for len(b) >= 4 {
			n := int(ne.Uint16(b[0:2]))
			typ := ne.Uint16(b[2:4]) & nl.NLA_TYPE_MASK
			if n < 4 || n > len(b) {
				return
			}
			if !yield(typ, b[4:n]) {
				return
			}
			adv := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
			if adv > len(b) {
				return
			}
			b = b[adv:]
		}
	}
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
