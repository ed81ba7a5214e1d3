//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// A kernel mapping serves exactly the one connection it was made for.

// The intruder: a third address on the client's link (documentation
// addresses), which can reach ftpalg's control port like any client.
var (
	kernelIntruder4 = netip.MustParseAddr("198.51.100.20")
	kernelIntruder6 = netip.MustParseAddr("2001:db8:1::20")
)

// kernelMappingsShown returns the lines of `ftpalg rules show` (run in
// ns, as an operator would, from another process) that list a kernel
// mapping from peer to announced.
func kernelMappingsShown(t testing.TB, ns *nstest.NS, firewall string, peer netip.Addr, announced netip.AddrPort) []string {
	t.Helper()
	out, err := ns.Try(proxyBinary, "rules", "show", "--firewall", firewall)
	if err != nil {
		t.Fatalf("ftpalg rules show --firewall %s: %v\n%s", firewall, err, out)
	}
	var got []string
	for _, l := range rulesShowLines(out, peer, announced) {
		if strings.HasPrefix(l, "nftables") {
			got = append(got, l)
		}
	}
	return got
}

// dnatFlows returns the conntrack entries in ns from src to dst that a
// DNAT bound.
func dnatFlows(t testing.TB, ns *nstest.NS, src netip.Addr, dst netip.AddrPort) []conntrack.Flow {
	t.Helper()
	var out []conntrack.Flow
	for _, f := range conntrackDump(t, ns) {
		o := f.TupleOrig
		if o.IP.SourceAddress.Unmap() == src && netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort) == dst && f.Status.DstNAT() {
			out = append(out, f)
		}
	}
	return out
}

// TestKernelMappingOnce announces a passive data connection (PASV over
// IPv4, EPSV over IPv6) and then, in this order:
//
//   - `ftpalg rules show` lists the mapping (peer, announced address);
//   - an intruder on the client's link (a third address) connects to the
//     announced port: not forwarded — on a front host without a firewall
//     the host's own stack refuses it (nothing listens there: ftpalg only
//     reserved the port), behind default-DROP INPUT and FORWARD chains its
//     SYN is dropped; conntrack holds no DNATed connection of it;
//   - the client connects: forwarded to the server;
//   - the client connects a second time to the same port: not forwarded
//     (refused, or dropped), and conntrack holds exactly one DNATed
//     connection from the client to that port;
//   - RETR over the first connection delivers the file; the mapping is no
//     longer listed.
//
// Variants: front host without a firewall (--firewall none); with
// default-DROP INPUT (only tcp/21) and FORWARD (ESTABLISHED,RELATED) for
// both families, and ftpalg's pinholes (--firewall ipset and iptables):
// the kernel path lets in only the announced tuple.
func TestKernelMappingOnce(t *testing.T) {
	requirePrereqs(t, reqVsftpd, reqIptables)
	requireProxy(t)
	for _, variant := range []string{"none", "ipset", "iptables"} {
		t.Run(variant, func(t *testing.T) {
			topo := kernelReverseTopology(t)
			topo.Client.Addr(t, "eth0", kernelIntruder4.String()+"/24", kernelIntruder6.String()+"/64")
			notForwarded := "refused"
			if variant != "none" {
				nstest.DefaultDrop(t, topo.Front, "", []string{"-p", "tcp", "--dport", "21"})
				nstest.ForwardDrop(t, topo.Front, "")
				requireNoFTPHelper(t, topo.Front)
				notForwarded = "timeout"
			}
			srv := StartServer(t, topo, Vsftpd, ServerOptions{IPv6: true})
			for _, v6 := range []bool{false, true} {
				f, intruder, mode := nstest.V4, kernelIntruder4, PASV
				cfg := ProxyConfig{Listen: proxyListen4, Upstream: proxyUpstream4, Advertise: FrontClientIP4, DataPorts: proxyDataPorts4}
				if v6 {
					f, intruder, mode = nstest.V6, kernelIntruder6, EPSV
					cfg = ProxyConfig{Listen: proxyListen6, Upstream: proxyUpstream6, Advertise: FrontClientIP6, DataPorts: proxyDataPorts6}
				}
				t.Run(f.Name, func(t *testing.T) {
					cfg.Extra = append(append([]string{}, kernelFlags...), "--firewall", variant)
					p := StartProxy(t, topo, cfg)
					kernelOnce(t, topo, srv, p, variant, f, intruder, mode, notForwarded)
				})
			}
		})
	}
}

func kernelOnce(t *testing.T, topo *Topology, srv *Server, p *Proxy, firewall string, f nstest.Family, intruder netip.Addr, mode Mode, notForwarded string) {
	off := p.LogSize()
	defer func() {
		if t.Failed() {
			t.Logf("--- ftpalg log ---\n%s", nstest.Tail(p.LogSince(off), 60))
		}
	}()
	c, data := loginPassive(t, topo.Client, f.Client, p.Listen, srv, mode)
	if data.Addr() != f.RouterClient {
		t.Fatalf("%s announced %s, want the front host's %s", mode.Command(), data, f.RouterClient)
	}
	if shown := kernelMappingsShown(t, topo.Front, firewall, f.Client, data); len(shown) != 1 {
		t.Errorf("ftpalg rules show lists %d mappings %s → %s, want 1", len(shown), f.Client, data)
	} else {
		t.Logf("ftpalg rules show: %s", strings.Join(strings.Fields(shown[0]), " "))
	}

	// The intruder reaches ftpalg (a greeting on port 21) ...
	ic, err := dialCtl(topo.Client, p.Listen, 5*time.Second)
	if err != nil {
		t.Fatalf("the client's link cannot reach ftpalg: %v", err)
	}
	ic.quit()
	// ... but its connection to the announced port is not forwarded.
	if got, conn := knockFrom(topo.Client, intruder, data, knockTimeout); got != notForwarded {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("intruder %s → announced %s: %s, want %s (not forwarded)", intruder, data, got, notForwarded)
	}
	if fs := dnatFlows(t, topo.Front, intruder, data); len(fs) != 0 {
		t.Errorf("conntrack has a DNATed connection of the intruder: %s", flowString(fs[0]))
	}

	got, dc := knockFrom(topo.Client, f.Client, data, 5*time.Second)
	if got != "connected" {
		t.Fatalf("client → announced %s: %s, want connected", data, got)
	}
	defer dc.Close()
	// The mapping is used up: a second connection of the same peer to
	// the same port (another source port) is not forwarded.
	if got, conn := knockFrom(topo.Client, f.Client, data, knockTimeout); got != notForwarded {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("client's second connection → announced %s: %s, want %s (not forwarded)", data, got, notForwarded)
	}
	if fs := dnatFlows(t, topo.Front, f.Client, data); len(fs) != 1 {
		for _, fl := range fs {
			t.Logf("conntrack: %s", flowString(fl))
		}
		t.Errorf("conntrack has %d DNATed connections %s → %s, want 1", len(fs), f.Client, data)
	} else if fs[0].TupleOrig.Proto.SourcePort != uint16(dc.LocalAddr().(*net.TCPAddr).Port) {
		t.Errorf("the DNATed connection is %s, not the client's first (from port %d)", flowString(fs[0]), dc.LocalAddr().(*net.TCPAddr).Port)
	}
	n, sum, err := c.retr(dc, "small.bin")
	if want := srv.Files["small.bin"]; err != nil || n != want.Size || sum != want.SHA256 {
		t.Errorf("RETR small.bin over the forwarded connection: %d bytes sha256 %s, %v; want %d bytes sha256 %s", n, short(sum), err, want.Size, short(want.SHA256))
	}
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	if shown := kernelMappingsShown(t, topo.Front, firewall, f.Client, data); len(shown) != 0 {
		t.Errorf("ftpalg rules show still lists the used mapping: %v", shown)
	}
	log := waitTransfers(t, p, off, 1)
	if strings.Contains(log, proxy.MsgDataForeign) {
		t.Errorf("a foreign connection reached ftpalg: the kernel path should never hand it one")
	}
	if !t.Failed() {
		t.Logf("%s → %s: intruder %s and the second connection not forwarded (%s), the first carried RETR", f.Client, data, intruder, notForwarded)
	}
}

// nftTable returns `nft list table inet ftpalg` in ns ("" if there is no
// such table) and the run token in its rules' comments.
func nftTable(t testing.TB, ns *nstest.NS) (listing, token string) {
	t.Helper()
	out, err := ns.Try("nft", "list", "table", "inet", "ftpalg")
	if err != nil {
		if strings.Contains(out, "No such file or directory") {
			return "", ""
		}
		t.Fatalf("nft list table inet ftpalg: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`comment "ftpalg ipv4 dnat, run ([0-9a-f]+)"`).FindStringSubmatch(out); m != nil {
		token = m[1]
	}
	return out, token
}

// armedElement reports whether the table listing holds the armed element
// of a mapping from peer to announced ("198.51.100.10 . 198.51.100.1 .
// 50012").
func armedElement(listing string, peer netip.Addr, announced netip.AddrPort) bool {
	return strings.Contains(listing, fmt.Sprintf("%s . %s . %d", peer, announced.Addr(), announced.Port()))
}

// TestKernelKill9: ftpalg is killed (SIGKILL) while a 32 MiB RETR runs
// through the kernel (the client stopped after 1 MiB) and while another
// session's data connection is announced but not connected yet.
//
//   - The running transfer completes: the client reads the rest of the
//     file, whole (SHA-256): conntrack holds its NAT binding; nothing of
//     ftpalg is needed.
//   - ftpalg's table stays behind (nothing removed it), with the
//     announced mapping; the kernel expires it after --data-timeout (2s):
//     once it is gone from the table, the client's connection to that
//     port is not forwarded (refused by the front host itself), and
//     conntrack has no DNATed connection to it.
//   - A restart replaces the leftover table (a new run token in its
//     rules), serves a transfer through the kernel, and removes the table
//     at its clean exit.
func TestKernelKill9(t *testing.T) {
	requirePrereqs(t, reqVsftpd, reqPython)
	requireProxy(t)
	nstest.Require(t, "nft")
	topo := kernelReverseTopology(t)
	srv := StartServer(t, topo, Vsftpd, ServerOptions{})
	big := writeRandomFile(t, filepath.Join(srv.Root, "big32.bin"), kernelBigFile, 33)
	srv.Files[big.Name] = big
	const lifetime = "2s"
	p := kernelProxy(t, topo, "--firewall", "none", "--data-timeout", lifetime)

	pr := startPausedRetr(t, topo, p, srv, PASV, big.Name, 1<<20)
	_, announced := loginPassive(t, topo.Client, nstest.V4.Client, p.Listen, srv, EPSV)
	before, token := nftTable(t, topo.Front)
	if !armedElement(before, nstest.V4.Client, announced) {
		t.Fatalf("no armed mapping %s → %s in the table:\n%s", ClientIP4, announced, before)
	}
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := p.ExitErr(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("ftpalg exited with %v, want killed", err)
	}
	killed := time.Now()
	t.Logf("ftpalg (pid %d) killed with SIGKILL in the middle of a RETR (%d bytes read) and with %s announced", p.PID(), pr.n, announced)

	t.Run("running-transfer-completes", func(t *testing.T) {
		n, sum := pr.finish(t)
		if n != big.Size || sum != big.SHA256 {
			t.Errorf("RETR %s after the kill: %d bytes sha256 %s, want %d bytes sha256 %s", big.Name, n, short(sum), big.Size, short(big.SHA256))
		} else {
			t.Logf("RETR %s completed after ftpalg died: %d bytes, sha256 %s", big.Name, n, short(sum))
		}
	})

	t.Run("nothing-forwarded-after-the-timeout", func(t *testing.T) {
		listing, left := nftTable(t, topo.Front)
		if left != token {
			t.Fatalf("the table after the kill has run token %q, want the killed run's %q:\n%s", left, token, listing)
		}
		// The kernel removes the element once its timeout passed; wait
		// for that (bounded), then knock.
		deadline := killed.Add(10 * time.Second)
		for armedElement(listing, nstest.V4.Client, announced) {
			if time.Now().After(deadline) {
				t.Fatalf("the mapping %s → %s is still in the table 10s after the kill (lifetime %s):\n%s", ClientIP4, announced, lifetime, listing)
			}
			time.Sleep(100 * time.Millisecond)
			listing, _ = nftTable(t, topo.Front)
		}
		t.Logf("the leftover mapping expired %v after the kill", time.Since(killed).Round(100*time.Millisecond))
		if got, conn := knockFrom(topo.Client, nstest.V4.Client, announced, knockTimeout); got != "refused" {
			if conn != nil {
				conn.Close()
			}
			t.Errorf("client → the expired mapping's %s: %s, want refused (not forwarded: the front host itself answers)", announced, got)
		}
		if fs := dnatFlows(t, topo.Front, nstest.V4.Client, announced); len(fs) != 0 {
			t.Errorf("conntrack has a DNATed connection to the expired mapping: %s", flowString(fs[0]))
		}
	})

	t.Run("restart-cleans-up", func(t *testing.T) {
		p2 := kernelProxy(t, topo, "--firewall", "none", "--data-timeout", lifetime)
		listing, now := nftTable(t, topo.Front)
		if now == "" || now == token {
			t.Errorf("after the restart the table's run token is %q, want a new one (the killed run's was %q):\n%s", now, token, listing)
		} else {
			t.Logf("the restart replaced the leftover table (run %s → %s)", token, now)
		}
		tgt := Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4}
		runTransferCaseCheck(t, topo, srv, p2, pythonClient{}, tgt, EPSV, kernelReverseCheck(topo, false))
		if err := p2.Stop(15 * time.Second); err != nil || p2.ExitErr() != nil {
			t.Errorf("ftpalg after SIGTERM: %v, exit %v", err, p2.ExitErr())
		}
		if listing, _ := nftTable(t, topo.Front); listing != "" {
			t.Errorf("table inet ftpalg left after a clean exit:\n%s", listing)
		}
	})
}
