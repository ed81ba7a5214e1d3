//go:build linux

package e2e

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules/nftpath"
)

// A front host whose forward path drops by default: the kernel data path
// forwards the data connections, so a DROP there drops them, whatever
// ftpalg's own table accepts. ftpalg says so at start, with the rule to
// add, or a pinhole backend's FORWARD hook admits exactly the mapped
// connections.

// forwardWarnings returns the fixes ftpalg's start log gives for the
// forward chains that would drop the forwarded data
// (nftpath.MsgForwardDropped), keyed by the chain.
func forwardWarnings(log string) map[string]string {
	out := map[string]string{}
	for _, e := range parseProxyLog(log) {
		if e.str("msg") == nftpath.MsgForwardDropped {
			out[e.str("chain")] = e.str("fix")
		}
	}
	return out
}

// fixCommand is the command at the start of a fix text ("iptables -I
// FORWARD -m conntrack --ctstate DNAT -j ACCEPT (or use a pinhole
// backend, ...)"), as an argument list.
func fixCommand(fix string) []string {
	cmd, _, _ := strings.Cut(fix, " (or ")
	return strings.Fields(cmd)
}

// policyDrops reads how many packets the FORWARD policy of an iptables
// family (iptables, ip6tables) dropped in ns.
func policyDrops(t testing.TB, ns *nstest.NS, ipt string) int {
	t.Helper()
	out := ns.Run(t, ipt, "-w", "-L", "FORWARD", "-v", "-x", "-n")
	m := regexp.MustCompile(`\(policy DROP (\d+) packets`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s FORWARD: no DROP policy:\n%s", ipt, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// requireDropped announces a passive data connection (PASV) and shows
// that the client's connect to it is dropped on the front host's forward
// path: no answer to its SYN, and the FORWARD policy counted a drop.
func requireDropped(t *testing.T, topo *Topology, srv *Server, p *Proxy) {
	t.Helper()
	before := policyDrops(t, topo.Front, "iptables")
	c, data := loginPassive(t, topo.Client, netip.Addr{}, p.Listen, srv, PASV)
	defer c.Close()
	got, conn := knock(topo.Client, data, knockTimeout)
	if conn != nil {
		conn.Close()
	}
	if got != "timeout" {
		t.Errorf("client's connect to the announced %s: %s, want timeout (dropped in FORWARD)", data, got)
	}
	if after := policyDrops(t, topo.Front, "iptables"); after <= before {
		t.Errorf("the FORWARD policy dropped nothing (%d packets before, %d after)", before, after)
	}
}

// TestKernelForwardDrop: the front host's iptables FORWARD policy is
// DROP (ESTABLISHED,RELATED accepted), IPv4 and IPv6.
//
//   - --firewall none: ftpalg's start log warns about iptables and
//     ip6tables FORWARD and gives the rule to add; a passive data
//     connection is indeed dropped there. With the rule it names added,
//     curl and python transfer in every mode (PASV, EPSV, PORT, EPRT)
//     through the kernel.
//   - --firewall ipset and --firewall iptables: no warning, and the same
//     transfers work: the backend's FORWARD hook admits the mapped
//     connections' first packets (Forward pinholes).
//   - --firewall none with --data-path auto: ftpalg chooses splice at
//     start, says why (the forward chain), and transfers work spliced.
//   - a drop-policy forward chain in another nftables table, next to the
//     ipset backend's hook in iptables: the hook does not help (a drop in
//     any table drops), ftpalg warns about that chain with the nft rule
//     to add, and with it added the transfers work.
func TestKernelForwardDrop(t *testing.T) {
	requirePrereqs(t, reqCurl, reqPython, reqVsftpd, reqIptables)
	requireProxy(t)
	nstest.Require(t, "ip6tables", "nft")
	topo := kernelReverseTopology(t)
	nstest.ForwardDrop(t, topo.Front, "")
	srv := StartServer(t, topo, Vsftpd, ServerOptions{})
	tgt := Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4}
	transfers := func(t *testing.T, p *Proxy, check caseCheck) {
		for _, c := range []Client{curlClient{}, pythonClient{}} {
			for _, mode := range allModes {
				t.Run(c.Name()+"-"+string(mode), func(t *testing.T) {
					runTransferCaseCheck(t, topo, srv, p, c, tgt, mode, check)
				})
			}
		}
	}
	kernel := kernelReverseCheck(topo, false)

	t.Run("none-warns", func(t *testing.T) {
		p := kernelProxy(t, topo, "--firewall", "none")
		warned := forwardWarnings(p.Log())
		if len(warned) != 2 {
			t.Fatalf("ftpalg warned about %d forward chains, want iptables and ip6tables FORWARD: %v\n%s", len(warned), warned, nstest.Tail(p.Log(), 30))
		}
		var fixes [][]string
		for chain, fix := range warned {
			t.Logf("ftpalg: %q: %s: %s", nftpath.MsgForwardDropped, chain, fix)
			cmd := fixCommand(fix)
			// iptables-nft, ip6tables-legacy, ...: the variant found.
			if len(cmd) < 2 || !regexp.MustCompile(`^ip6?tables(-nft|-legacy)?$`).MatchString(cmd[0]) || !strings.HasPrefix(chain, cmd[0]+" FORWARD") {
				t.Fatalf("the fix for %s is not an iptables command for that chain: %q", chain, fix)
			}
			fixes = append(fixes, cmd)
		}
		t.Run("dropped", func(t *testing.T) { requireDropped(t, topo, srv, p) })
		// The operator adds what ftpalg said; the same rule with -D
		// removes it again.
		for _, cmd := range fixes {
			topo.Front.Run(t, cmd...)
			t.Cleanup(func() {
				del := append([]string(nil), cmd...)
				for i, a := range del {
					if a == "-I" {
						del[i] = "-D"
					}
				}
				topo.Front.Run(t, del...)
			})
		}
		t.Run("with-the-fix", func(t *testing.T) { transfers(t, p, kernel) })
	})
	for _, fw := range pinholeBackends {
		t.Run(fw+"-hook", func(t *testing.T) {
			p := kernelProxy(t, topo, "--firewall", fw)
			if w := forwardWarnings(p.Log()); len(w) != 0 {
				t.Errorf("ftpalg warned about forward chains although its %s backend's FORWARD hook admits the data: %v", fw, w)
			}
			transfers(t, p, kernel)
		})
	}
	t.Run("auto-splices", func(t *testing.T) {
		p := kernelProxy(t, topo, "--firewall", "none", "--data-path", "auto")
		var reason string
		for _, e := range parseProxyLog(p.Log()) {
			if e.str("msg") == "data path detected" {
				if e.str("data_path") != "splice" {
					t.Errorf("--data-path auto chose %q, want splice: %v", e.str("data_path"), e)
				}
				reason = e.str("reason")
			}
		}
		if !regexp.MustCompile(`iptables(-nft|-legacy)? FORWARD \(policy DROP\)`).MatchString(reason) {
			t.Errorf("the reason for splice does not name the FORWARD chain: %q", reason)
		} else {
			t.Logf("ftpalg: data path splice: %s", reason)
		}
		for _, mode := range []Mode{EPSV, PORT} {
			t.Run("python-"+string(mode), func(t *testing.T) {
				runTransferCaseCheck(t, topo, srv, p, pythonClient{}, tgt, mode, spliceCheck)
			})
		}
	})
	t.Run("nft-table-drops", func(t *testing.T) {
		// Another table's forward chain, as an nftables ruleset would
		// have it; iptables' FORWARD admits through ftpalg's hook.
		const table = "ftpalgtest"
		topo.Front.Run(t, "nft", "add table inet "+table)
		t.Cleanup(func() { topo.Front.Run(t, "nft", "delete table inet "+table) })
		topo.Front.Run(t, "nft", "add chain inet "+table+" fwdchain { type filter hook forward priority 0; policy drop; }")
		topo.Front.Run(t, "nft", "add rule inet "+table+" fwdchain ct state established,related accept")
		p := kernelProxy(t, topo, "--firewall", "ipset")
		warned := forwardWarnings(p.Log())
		var fix []string
		for chain, f := range warned {
			if strings.Contains(chain, table) {
				fix = strings.Fields(f)
				t.Logf("ftpalg: %s: %s", chain, f)
			} else {
				t.Errorf("ftpalg warned about %s, which its ipset backend's hook admits", chain)
			}
		}
		if len(fix) < 3 || fix[0] != "nft" {
			t.Fatalf("no nft fix for the table's forward chain: %v", warned)
		}
		t.Run("dropped", func(t *testing.T) {
			c, data := loginPassive(t, topo.Client, netip.Addr{}, p.Listen, srv, PASV)
			defer c.Close()
			if got, conn := knock(topo.Client, data, knockTimeout); got != "timeout" {
				if conn != nil {
					conn.Close()
				}
				t.Errorf("client's connect to %s: %s, want timeout (dropped by table %s)", data, got, table)
			}
		})
		topo.Front.Run(t, fix...)
		t.Run("with-the-fix", func(t *testing.T) {
			runTransferCaseCheck(t, topo, srv, p, pythonClient{}, tgt, EPSV, kernel)
		})
	})
}

// spliceCheck is the per-session check of a session that must use the
// splice path: every data connection and transfer on path=splice.
func spliceCheck(t *testing.T, p *Proxy, off int64) func([]int64, int) {
	return func(sizes []int64, listings int) {
		log := waitTransfers(t, p, off, len(sizes)+listings)
		n := 0
		for _, e := range parseProxyLog(log) {
			switch e.str("msg") {
			case proxy.MsgDataConnected, proxy.MsgTransferFinished:
				n++
				if e.str("path") != "splice" {
					t.Errorf("%q on path %q, want splice: %v", e.str("msg"), e.str("path"), e)
				}
			}
		}
		if n == 0 {
			t.Errorf("ftpalg logged no data connection")
		}
	}
}
