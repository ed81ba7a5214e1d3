//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The topology (documentation addresses only), test/e2e's TestScaleOut
// with the director as the stand-in for IPVS:
//
//	client ns                director ns                         instance ns ×3
//	198.51.100.101-116/24 ── cli0 198.51.100.1/24 + VIP          eth0 192.0.2.11-13/24
//	(16 source addresses)    203.0.113.10/32 | br0 192.0.2.1/24 ─ ftpalg :21 → vsftpd 127.0.0.1:21
const (
	vip        = "203.0.113.10"
	dirClient  = "198.51.100.1" // the director on the clients' link
	dirInst    = "192.0.2.1"    // the director on the instances' bridge
	numSources = 16
	numInst    = 3
	buckets    = 12 // map entries: divisible by 1, 2 and 3, so every count of instances gets as many
	// jhashSeed fixes the hash, so that every run spreads the 16 source
	// addresses over the buckets alike (without a seed nft picks a random
	// one per rule).
	jhashSeed = "0x5ca1e"
)

func instAddr(i int) string { return "192.0.2." + strconv.Itoa(11+i) }
func source(i int) string   { return "198.51.100." + strconv.Itoa(101+i) }

// topo is the namespaces, client, director and instances.
type topo struct {
	client, director *nstest.NS
	inst             []*nstest.NS
	all              []*nstest.NS // to delete, in creation order
}

// newTopo creates the namespaces and wires them; on an error the caller
// still destroys what was made.
func newTopo(t *topo) error {
	prefix := nstest.RandomName("ftpalg-sob")
	mk := func(role string) (*nstest.NS, error) {
		n, err := nstest.Create(prefix + "-" + role)
		if err == nil {
			t.all = append(t.all, n)
		}
		return n, err
	}
	var err error
	if t.client, err = mk("c"); err != nil {
		return err
	}
	if t.director, err = mk("d"); err != nil {
		return err
	}
	type step struct {
		n    *nstest.NS
		argv string
	}
	var steps []step
	add := func(n *nstest.NS, argv ...string) {
		for _, a := range argv {
			steps = append(steps, step{n, a})
		}
	}
	add(t.director, "sysctl -qw net.ipv4.ip_forward=1")
	add(t.client, "ip link add eth0 type veth peer name cli0 netns "+t.director.Name, "ip link set eth0 up",
		"ip addr add 198.51.100.10/24 dev eth0")
	for i := range numSources {
		add(t.client, "ip addr add "+source(i)+"/24 dev eth0")
	}
	add(t.client, "ip route add default via "+dirClient)
	add(t.director, "ip link set cli0 up", "ip addr add "+dirClient+"/24 dev cli0", "ip addr add "+vip+"/32 dev cli0",
		"ip link add br0 type bridge", "ip link set br0 up", "ip addr add "+dirInst+"/24 dev br0")
	for i := range numInst {
		n, err := mk("i" + strconv.Itoa(i))
		if err != nil {
			return err
		}
		t.inst = append(t.inst, n)
		dev := "inst" + strconv.Itoa(i)
		add(n, "ip link add eth0 type veth peer name "+dev+" netns "+t.director.Name, "ip link set eth0 up",
			"ip addr add "+instAddr(i)+"/24 dev eth0", "ip route add default via "+dirInst)
		add(t.director, "ip link set "+dev+" master br0", "ip link set "+dev+" up")
	}
	for _, c := range steps {
		if _, err := c.n.Try(strings.Fields(c.argv)...); err != nil {
			return err
		}
	}
	return nil
}

// destroy deletes the namespaces (and with them links, addresses, routes
// and the director's ruleset) after killing what still runs in them.
func (t *topo) destroy() {
	for _, n := range t.all {
		if err := n.Delete(); err != nil {
			fmt.Println("warning:", err)
		}
	}
	t.all = nil
}

// inodes are the namespaces' inode numbers (for benchkit.OthersCPU).
func (t *topo) inodes() ([]uint64, error) {
	var out []uint64
	for _, n := range t.all {
		ino, err := n.Inode()
		if err != nil {
			return nil, err
		}
		out = append(out, ino)
	}
	return out, nil
}

// balance installs the director's balancer (test/e2e's pattern 1,
// persistence) the first time, then points the buckets at the first n
// instances, bucket b at instance b mod n, in one nft transaction. The
// table's prerouting nat chain also turns connection tracking on in the
// director: until the first call it only routes.
func (t *topo) balance(dir string, n int, dataPorts string) error {
	out, _ := t.director.Try("nft", "list", "tables")
	if !strings.Contains(out, "table ip lb") {
		ruleset := fmt.Sprintf(`table ip lb {
	map buckets {
		type mark : ipv4_addr
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport { 21, %s } meta mark set jhash ip saddr mod %d seed %s dnat to meta mark map @buckets
	}
}
`, vip, dataPorts, buckets, jhashSeed)
		path := filepath.Join(dir, "lb.nft")
		if err := os.WriteFile(path, []byte(ruleset), 0o600); err != nil {
			return err
		}
		if _, err := t.director.Try("nft", "-f", path); err != nil {
			return err
		}
	}
	var elems []string
	for b := range buckets {
		elems = append(elems, fmt.Sprintf("%d : %s", b, instAddr(b%n)))
	}
	_, err := t.director.Try("nft", "flush map ip lb buckets; add element ip lb buckets { "+strings.Join(elems, ", ")+" }")
	return err
}

// ruleset is the director's nft ruleset.
func (t *topo) ruleset() string {
	out, err := t.director.Try("nft", "list", "ruleset")
	if err != nil {
		return err.Error()
	}
	return out
}

// flushConntrack empties the director's connection tracking table: each
// configuration starts clean (a TIME_WAIT entry of the previous one would
// send a reused client port to its old instance) and counts only its own
// sessions.
func (t *topo) flushConntrack() error {
	h, err := netlink.NewHandleAt(t.director.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.ConntrackTableFlush(netlink.ConntrackTable)
}

// controlPerInstance counts the control connections to VIP:21 in the
// director's conntrack table by the instance they were sent to.
func (t *topo) controlPerInstance() ([]int, error) {
	h, err := netlink.NewHandleAt(t.director.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return nil, err
	}
	n := make([]int, numInst)
	v := net.ParseIP(vip)
	for _, f := range flows {
		if f.Forward.DstPort != 21 || !f.Forward.DstIP.Equal(v) {
			continue
		}
		if a, ok := netip.AddrFromSlice(f.Reverse.SrcIP.To4()); ok {
			for i := range numInst {
				if a.String() == instAddr(i) {
					n[i]++
				}
			}
		}
	}
	return n, nil
}
