//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// Proof that ftpalg's kernel data path (--data-path kernel, rules/nftpath)
// carried a data connection, not ftpalg's sockets: its transfer log line
// says path=kernel with conntrack's byte counts, conntrack holds the
// connection with the NAT tuple of the mapping, and ftpalg's process holds
// no socket of it.

// kernelFlags run ftpalg with the kernel data path, failing at start when
// the host does not allow it (auto would fall back to splice silently).
var kernelFlags = []string{"--data-path", "kernel"}

// kernelHost prepares a router namespace as ftpalg's start checks ask an
// operator to: conntrack accounting on, so the transfer lines carry the
// kernel's byte counts (per namespace, for connections that start
// afterwards), and conntrack events on (the default, 2, enables them once
// a listener exists; 1 says so explicitly). Forwarding is the topology's.
func kernelHost(t testing.TB, ns *nstest.NS) {
	t.Helper()
	ns.Sysctl(t, "net.netfilter.nf_conntrack_acct", "1")
	ns.Sysctl(t, "net.netfilter.nf_conntrack_events", "1")
}

func (e proxyLogEntry) num(k string) int64 {
	v, _ := e[k].(float64)
	return int64(v)
}

// kernelSlack is how many bytes a kernel transfer's logged count may be
// off from the file's size without retransmissions: proxy/kernel.go takes
// the headers a Linux peer sends off conntrack's IP-layer counters, which
// is exact on a clean path; a retransmitted SYN would add 8.
const kernelSlack = 16

// kernelMSS bounds the payload of one TCP segment on these 1500-byte veths
// (1448 for IPv4, 1428 for IPv6, with timestamps).
const kernelMSS = 1460

// retransSegs reads the TCP segments ns has retransmitted
// (/proc/net/snmp, Tcp RetransSegs; one counter for both families).
func retransSegs(t testing.TB, ns *nstest.NS) int64 {
	t.Helper()
	out, err := ns.Try("cat", "/proc/net/snmp")
	if err != nil {
		t.Fatalf("/proc/net/snmp in %s: %v", ns.Name, err)
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RetransSegs" && i < len(f) {
				if v, err := strconv.ParseInt(f[i], 10, 64); err == nil {
					return v
				}
			}
		}
	}
	t.Fatalf("no Tcp RetransSegs in /proc/net/snmp of %s:\n%s", ns.Name, out)
	return 0
}

// retransWatch counts what the senders of a session's data (the server
// for downloads, the client for uploads) retransmit meanwhile.
type retransWatch struct {
	nss    []*nstest.NS
	before int64
}

func watchRetrans(t testing.TB, nss ...*nstest.NS) *retransWatch {
	t.Helper()
	w := &retransWatch{nss: nss}
	for _, ns := range nss {
		w.before += retransSegs(t, ns)
	}
	return w
}

// bytes is the most payload the segments retransmitted since the watch
// started can carry.
func (w *retransWatch) bytes(t testing.TB) int64 {
	t.Helper()
	var now int64
	for _, ns := range w.nss {
		now += retransSegs(t, ns)
	}
	return (now - w.before) * kernelMSS
}

// kernelTransfers returns the transfer lines (finished, failed, aborted,
// unconfirmed) in ftpalg's log.
func kernelTransfers(log string) []proxyLogEntry {
	var out []proxyLogEntry
	for _, e := range parseProxyLog(log) {
		switch e.str("msg") {
		case proxy.MsgTransferFinished, proxy.MsgTransferFailed, proxy.MsgTransferAborted, proxy.MsgTransferNoConfirm:
			out = append(out, e)
		}
	}
	return out
}

// requireKernelTransfers checks ftpalg's log of one client session: every
// data connection was established on path=kernel, every transfer finished
// on path=kernel, and the byte counts match the files moved. sizes are
// the sizes of the files downloaded and uploaded, in any order; listings
// (LIST: size not known) must count more than 0 bytes. Conntrack counts
// what crossed the host, so a count may exceed the file by what was
// retransmitted (retrans: the most the senders' retransmitted segments
// can carry, retransWatch) and never fall short of it.
func requireKernelTransfers(t testing.TB, log string, sizes []int64, listings int, retrans int64) {
	t.Helper()
	for _, e := range parseProxyLog(log) {
		if e.str("msg") == proxy.MsgDataConnected && e.str("path") != "kernel" {
			t.Errorf("a data connection on path %q, want kernel: %v", e.str("path"), e)
		}
		if e.str("msg") == proxy.MsgSpliceFallback {
			t.Errorf("ftpalg fell back to splice: %v", e)
		}
	}
	xs := kernelTransfers(log)
	if len(xs) != len(sizes)+listings {
		t.Errorf("ftpalg logged %d transfers, want %d (%d files, %d listings)", len(xs), len(sizes)+listings, len(sizes), listings)
	}
	var got []int64
	for _, e := range xs {
		if e.str("msg") != proxy.MsgTransferFinished || e.str("path") != "kernel" {
			t.Errorf("transfer line %q on path %q, want %q on kernel: %v", e.str("msg"), e.str("path"), proxy.MsgTransferFinished, e)
			continue
		}
		if e.str("counted") != "" {
			t.Errorf("transfer not counted: %s", e.str("counted"))
		}
		// One direction carries the file; the other only the handshake,
		// and SACK blocks in its ACKs where the veths reordered segments
		// (tens of bytes per 10 MiB here).
		toC, toS := e.num("bytes_to_client"), e.num("bytes_to_server")
		if back := min(toC, toS); back > kernelSlack+max(toC, toS)/100 {
			t.Errorf("transfer counted %d bytes to the client and %d to the server: both directions carried data", toC, toS)
		}
		got = append(got, max(toC, toS))
	}
	// Match every expected size, largest first, to the smallest logged
	// count that can be it; the excess over all must be retransmissions.
	want := slices.Clone(sizes)
	slices.Sort(want)
	slices.Reverse(want)
	left := slices.Clone(got)
	slices.Sort(left)
	excess := int64(0)
	for _, w := range want {
		i := slices.IndexFunc(left, func(g int64) bool { return g >= w-kernelSlack && g-w <= retrans+kernelSlack })
		if i < 0 {
			t.Errorf("no kernel transfer counted %d bytes (-%d, +%d retransmitted); counts: %v", w, kernelSlack, retrans+kernelSlack, got)
			continue
		}
		excess += max(left[i]-w-kernelSlack, 0)
		left = slices.Delete(left, i, i+1)
	}
	if excess > retrans {
		t.Errorf("the counts exceed the files by %d bytes, more than the %d the retransmitted segments carry: %v for %v", excess, retrans, got, sizes)
	}
	for _, l := range left {
		if l == 0 && listings > 0 {
			t.Errorf("a listing counted 0 bytes: conntrack's counters did not reach the log")
		}
	}
	if !t.Failed() {
		t.Logf("ftpalg: %d transfers on path=kernel, byte counts %v (files %v; at most %d bytes retransmitted)", len(xs), got, sizes, retrans)
	}
}

// kernelMappings are the data connections ftpalg announced in a session,
// from its log: who connects (peer), where it was told to (announced),
// where the kernel must send it (target), as proxy.MsgPassiveRewrite
// (listen, server_data) and proxy.MsgActiveRewrite (listen, client_data)
// name them.
type kernelMapping struct {
	passive   bool
	announced netip.AddrPort
	target    netip.AddrPort
}

func kernelAnnounced(t testing.TB, log string) []kernelMapping {
	t.Helper()
	var out []kernelMapping
	for _, e := range parseProxyLog(log) {
		var m kernelMapping
		var err1, err2 error
		switch e.str("msg") {
		case proxy.MsgPassiveRewrite:
			m.passive = true
			m.announced, err1 = netip.ParseAddrPort(e.str("listen"))
			m.target, err2 = netip.ParseAddrPort(e.str("server_data"))
		case proxy.MsgActiveRewrite:
			m.announced, err1 = netip.ParseAddrPort(e.str("listen"))
			m.target, err2 = netip.ParseAddrPort(e.str("client_data"))
		default:
			continue
		}
		if err1 != nil || err2 != nil {
			t.Fatalf("ftpalg's log line %v: %v %v", e, err1, err2)
		}
		m.announced = netip.AddrPortFrom(m.announced.Addr().Unmap(), m.announced.Port())
		m.target = netip.AddrPortFrom(m.target.Addr().Unmap(), m.target.Port())
		out = append(out, m)
	}
	return out
}

// conntrackDump lists ns's conntrack table over ctnetlink
// (github.com/ti-mo/conntrack: what `conntrack -L` shows, without the
// tool), both families.
func conntrackDump(t testing.TB, ns *nstest.NS) []conntrack.Flow {
	t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Handle())})
	if err != nil {
		t.Fatalf("conntrack in %s: %v", ns.Name, err)
	}
	defer c.Close()
	fs, err := c.Dump(nil) // both families
	if err != nil {
		t.Fatalf("conntrack dump in %s: %v", ns.Name, err)
	}
	return fs
}

func flowString(f conntrack.Flow) string {
	o, r := f.TupleOrig, f.TupleReply
	return fmt.Sprintf("tcp %s → %s, reply %s → %s, status %s, counters orig %d/%d reply %d/%d",
		netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort), netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort),
		netip.AddrPortFrom(r.IP.SourceAddress, r.Proto.SourcePort), netip.AddrPortFrom(r.IP.DestinationAddress, r.Proto.DestinationPort),
		f.Status, f.CountersOrig.Packets, f.CountersOrig.Bytes, f.CountersReply.Packets, f.CountersReply.Bytes)
}

// requireKernelFlows checks the router's conntrack table for each data
// connection ftpalg announced: a connection from peer to the announced
// address and port whose reply comes from the target (DNAT) to source
// (SNAT to ftpalg's address; invalid: not SNATed, the far end sees the
// peer), with the NAT status bits set. peer and source are given per
// direction: passive (the client connects) and active (the server does).
func requireKernelFlows(t testing.TB, ns *nstest.NS, ms []kernelMapping, passivePeer, passiveSource, activePeer, activeSource netip.Addr) {
	t.Helper()
	if len(ms) == 0 {
		t.Errorf("ftpalg announced no data connection")
		return
	}
	flows := conntrackDump(t, ns)
	var example string
	for _, m := range ms {
		peer, source := passivePeer, passiveSource
		if !m.passive {
			peer, source = activePeer, activeSource
		}
		// The announced port may have served an earlier proxy's
		// connection whose entry conntrack still holds (TIME_WAIT): the
		// one DNATed to this target is this one.
		var hit *conntrack.Flow
		var others []string
		for i, f := range flows {
			o, r := f.TupleOrig, f.TupleReply
			if o.Proto.Protocol != 6 || o.IP.SourceAddress.Unmap() != peer || o.IP.DestinationAddress.Unmap() != m.announced.Addr() ||
				o.Proto.DestinationPort != m.announced.Port() {
				continue
			}
			if netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort) == m.target {
				hit = &flows[i]
				break
			}
			others = append(others, flowString(f))
		}
		if hit == nil {
			t.Errorf("conntrack has no connection %s → %s DNATed to %s (ftpalg announced it); others to that port: %q", peer, m.announced, m.target, others)
			continue
		}
		if example == "" {
			example = flowString(*hit)
		}
		r := hit.TupleReply
		wantDst := source
		if !source.IsValid() {
			wantDst = peer
		}
		if got := netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort); got != m.target || r.IP.DestinationAddress.Unmap() != wantDst {
			t.Errorf("conntrack: %s; want the reply from %s (DNAT) to %s", flowString(*hit), m.target, wantDst)
		}
		if !hit.Status.DstNAT() || source.IsValid() != hit.Status.SrcNAT() {
			t.Errorf("conntrack: %s; want DNAT and SNAT %v", flowString(*hit), source.IsValid())
		}
	}
	if !t.Failed() {
		t.Logf("conntrack holds the %d announced data connections with their NAT tuples, e.g. %s", len(ms), example)
	}
}

// procSockets returns the TCP sockets process pid holds: its socket file
// descriptors matched, by inode, to the lines of /proc/PID/net/tcp and
// tcp6 (the process's namespace). Each is "LOCAL REMOTE STATE".
func procSockets(pid int) ([]procSocket, error) {
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []procSocket
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "net", f))
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			local, err1 := parseProcAddr(fs[1])
			remote, err2 := parseProcAddr(fs[2])
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("/proc/%d/net/%s: %q", pid, f, l)
			}
			out = append(out, procSocket{Local: local, Remote: remote, State: fs[3]})
		}
	}
	return out, nil
}

// procSocket is one TCP socket of a process; State is the kernel's hex
// code (0A: listening, 01: established).
type procSocket struct {
	Local, Remote netip.AddrPort
	State         string
}

func (s procSocket) String() string { return fmt.Sprintf("%s → %s (%s)", s.Local, s.Remote, s.State) }

// parseProcAddr reads /proc/net/tcp's "0100007F:0015" (the address's
// 32-bit words in host byte order, little endian here).
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || (len(hexAddr) != 8 && len(hexAddr) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	var b [16]byte
	for w := 0; w < len(hexAddr)/8; w++ {
		v, err := strconv.ParseUint(hexAddr[w*8:w*8+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
		}
		b[w*4], b[w*4+1], b[w*4+2], b[w*4+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	a := netip.AddrFrom16(b)
	if len(hexAddr) == 8 {
		a = netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
