//go:build linux

package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/proxy"
)

// TestDiagnoseBlockedDataPort reproduces "login works, LIST hangs": a
// firewall on the gateway drops the data-port range from the client. The
// client's data connection never arrives; ftpalg must say so in one Warn
// line with the facts (who was to connect, from where, to which address and
// port, what the server had announced, how long it waited, the likely
// cause) and count it in ftpalg_data_connections_total{outcome="timeout"}.
// With the ports open again the transfer works, and nothing more is logged
// or counted.
func TestDiagnoseBlockedDataPort(t *testing.T) {
	requirePrereqs(t, reqIptables, Vsftpd.requirement())
	requireProxy(t)
	const dataPorts = "53000-53099"
	metricsAddr := FrontClientIP4 + ":9121"
	topo := NewTopology(t, TopoOptions{})
	srv := StartServer(t, topo, Vsftpd, ServerOptions{})
	p := StartProxy(t, topo, ProxyConfig{
		Listen: proxyListen4, Upstream: proxyUpstream4, Advertise: FrontClientIP4, DataPorts: dataPorts,
		Extra: []string{"--firewall", "none", "--data-timeout", "2s", "--metrics-listen", metricsAddr},
	})
	block := []string{"INPUT", "-p", "tcp", "-s", ClientIP4, "--dport", strings.ReplaceAll(dataPorts, "-", ":"), "-j", "DROP"}
	topo.Front.Run(t, append([]string{"iptables", "-w", "-I"}, block...)...)

	timeouts := func() float64 {
		t.Helper()
		out := topo.Client.Run(t, "curl", "-s", "--max-time", "10", "http://"+metricsAddr+"/metrics")
		re := regexp.MustCompile(`(?m)^ftpalg_data_connections_total\{mode="passive",outcome="timeout",path="splice"\} (\S+)$`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			return 0
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("metric value %q", m[1])
		}
		return v
	}
	if n := timeouts(); n != 0 {
		t.Fatalf("timeouts before the test: %v", n)
	}

	// Blocked: the announced port never gets the client's SYN.
	off := p.LogSize()
	c, err := dialCtl(topo.Client, proxyListen4, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.login(srv.User, srv.Pass); err != nil {
		t.Fatal(err)
	}
	announced, err := c.passive(EPSV)
	if err != nil {
		t.Fatal(err)
	}
	if dc, err := dial(topo.Client, announced.String(), 3*time.Second); err == nil {
		dc.Close()
		t.Fatalf("the data port %s is reachable through the firewall", announced)
	}
	var line proxyLogEntry
	deadline := time.Now().Add(15 * time.Second)
	for line == nil && time.Now().Before(deadline) {
		for _, e := range parseProxyLog(p.LogSince(off)) {
			if e.str("msg") == proxy.MsgDataNotMade {
				line = e
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if line == nil {
		t.Fatalf("no %q line:\n%s", proxy.MsgDataNotMade, p.LogSince(off))
	}
	want := map[string]string{
		"level": "warn", "expected": "client", "from": ClientIP4, "to": announced.String(), "mode": "passive",
		"server_announced": ServerIP4,
	}
	for k, v := range want {
		if got := line.str(k); !strings.Contains(got, v) {
			t.Errorf("%s = %q, want %q in it", k, got, v)
		}
	}
	diag := line.str("diagnosis")
	for _, s := range []string{"no SYN from " + ClientIP4 + " reached " + announced.String(), "within 2s", "TCP " + dataPorts} {
		if !strings.Contains(diag, s) {
			t.Errorf("diagnosis %q lacks %q", diag, s)
		}
	}
	if n := timeouts(); n != 1 {
		t.Errorf("ftpalg_data_connections_total{outcome=timeout} = %v, want 1", n)
	}

	// Open: the same session transfers, nothing more is reported.
	topo.Front.Run(t, append([]string{"iptables", "-w", "-D"}, block...)...)
	off = p.LogSize()
	announced, err = c.passive(EPSV)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := c.dialData(announced)
	if err != nil {
		t.Fatalf("data connection with the port open: %v", err)
	}
	n, sum, err := c.retr(dc, "small.bin")
	if err != nil || n != srv.Files["small.bin"].Size || sum != srv.Files["small.bin"].SHA256 {
		t.Fatalf("RETR with the port open: %d bytes, %s, %v", n, short(sum), err)
	}
	if strings.Contains(p.LogSince(off), proxy.MsgDataNotMade) {
		t.Errorf("a diagnosis was logged for a working transfer")
	}
	if n := timeouts(); n != 1 {
		t.Errorf("timeouts after a working transfer: %v, want still 1", n)
	}
	if err := c.quit(); err != nil {
		t.Error(err)
	}
}
