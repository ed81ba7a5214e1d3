//go:build linux

package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// TestNaiveForwardShowsClassicSymptom reproduces the problem ftpalg
// solves: the front host forwards only TCP port 21 to the server (DNAT),
// without any FTP connection-tracking helper. Logging in works, but the
// server announces its private address and a passive port nobody forwards,
// so the first directory listing fails.
func TestNaiveForwardShowsClassicSymptom(t *testing.T) {
	requirePrereqs(t, reqCurl, reqPython, reqIptables)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := NewTopology(t, TopoOptions{Forwarding: true, ServerRouteToClient: true})
			srv := StartServer(t, topo, kind, ServerOptions{})
			setupNaiveDNAT(t, topo)
			tgt := Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4}

			// curl, told to use the address from the 227 reply: it tries to
			// reach the server's private address, which the client cannot
			// route to.
			t.Run("curl-pasv-trusting-227", func(t *testing.T) {
				requirePrereqs(t, reqCurl)
				res := naiveList(t, topo, srv, curlClient{}, tgt, "--connect-timeout", "3", "--max-time", "10")
				if addrs := pasvAddrs(res.Log); !slices.Contains(addrs, ServerIP4) {
					t.Errorf("expected the server to announce its private address %s in 227, got %v", ServerIP4, addrs)
				}
			})
			// Stock ftplib ignores the 227 address and connects to the
			// control connection's peer (the front host), where the passive
			// port is not forwarded.
			t.Run("python-pasv-ignoring-227", func(t *testing.T) {
				requirePrereqs(t, reqPython)
				naiveList(t, topo, srv, pythonClient{}, tgt, "--ignore-pasv-address")
			})
		})
	}
}

// naiveList logs in and lists in PASV mode; it asserts that the login
// succeeded and the listing failed, quickly.
func naiveList(t *testing.T, topo *Topology, srv *Server, c Client, tgt Target, extra ...string) Result {
	t.Helper()
	start := time.Now()
	res := c.Run(context.Background(), topo.Client, Session{
		Target: tgt, User: srv.User, Pass: srv.Pass, Mode: PASV,
		Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 15 * time.Second,
		ExtraArgs: extra,
	})
	elapsed := time.Since(start)
	if !reply230.MatchString(res.Log) {
		t.Errorf("login did not succeed through the DNAT (no 230 reply)")
	}
	if res.Err == nil {
		t.Errorf("LIST unexpectedly succeeded through a port-21-only DNAT without FTP helper")
	}
	for _, f := range standardFiles {
		if strings.Contains(res.Listing, f.name) {
			t.Errorf("listing unexpectedly contains %s", f.name)
			break
		}
	}
	if elapsed > 14*time.Second {
		t.Errorf("client needed %v: hard timeout hit instead of the client's own timeout", elapsed)
	}
	if err := checkModeUsed(res.Log, PASV); err != nil {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("--- transcript ---\n%s\n--- server ---\n%s", nstest.Tail(res.Log, 80), srv.Logs())
	} else {
		t.Logf("classic symptom reproduced in %v: login ok, LIST failed: %v", elapsed.Round(time.Millisecond), res.Err)
		t.Logf("client error output:\n%s", lastLines(res.Log, 4))
	}
	return res
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// setupNaiveDNAT configures the front host like a plain NAT router that
// publishes only the FTP control port: DNAT of tcp/21 to the server,
// FORWARD policy DROP, accept forwarded port 21 and established/related
// traffic. No FTP conntrack helper is assigned (kernels >= 6.0 never
// assign helpers automatically, and this checks nobody added a CT rule).
func setupNaiveDNAT(t *testing.T, topo *Topology) {
	t.Helper()
	f := topo.Front
	f.Run(t, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", FrontClientIP4, "-p", "tcp", "--dport", "21",
		"-j", "DNAT", "--to-destination", ServerIP4+":21")
	f.Run(t, "iptables", "-w", "-P", "FORWARD", "DROP")
	f.Run(t, "iptables", "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	f.Run(t, "iptables", "-w", "-A", "FORWARD", "-d", ServerIP4, "-p", "tcp", "--dport", "21",
		"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")

	rules := requireNoFTPHelper(t, f)
	t.Logf("front host rules:\n%s", strings.TrimSpace(rules))
}

// requireNoFTPHelper fails the test if the kernel's FTP conntrack helper
// could be attached to connections in ns (a CT --helper rule, an nftables
// ct helper, or automatic helper assignment). It returns iptables-save.
func requireNoFTPHelper(t testing.TB, ns *nstest.NS) string {
	t.Helper()
	rules := ns.Run(t, "iptables-save")
	if strings.Contains(rules, "helper") || strings.Contains(rules, "-j CT") {
		t.Fatalf("netns %s has an FTP helper / CT rule, the test setup must not:\n%s", ns.Name, rules)
	}
	if out, err := ns.Try("ip6tables-save"); err == nil && (strings.Contains(out, "helper") || strings.Contains(out, "-j CT")) {
		t.Fatalf("netns %s has an IPv6 FTP helper / CT rule:\n%s", ns.Name, out)
	}
	if out, err := ns.Try("nft", "list", "ruleset"); err == nil && strings.Contains(out, "helper") {
		t.Fatalf("netns %s has an nftables ct helper:\n%s", ns.Name, out)
	}
	// Pre-6.0 kernels could attach helpers automatically.
	if out, err := ns.Try("sysctl", "-n", "net.netfilter.nf_conntrack_helper"); err == nil && strings.TrimSpace(out) == "1" {
		t.Fatalf("net.netfilter.nf_conntrack_helper=1: the kernel would attach the FTP helper automatically")
	}
	return rules
}
