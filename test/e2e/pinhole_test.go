//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// The firewall pinhole tests (issue #3) run in a HostTopology: the FTP
// server and ftpalg share a host whose INPUT policy is DROP (loopback,
// ESTABLISHED/RELATED and tcp/21 accepted, no FTP conntrack helper), so a
// client's data connection gets in only through a pinhole ftpalg opened.

// knockTimeout is how long a connect may wait for an answer to its SYN
// before it counts as dropped. Loopback-fast veths answer a reachable port
// in well under a millisecond.
const knockTimeout = time.Second

// proxyLogProblems are log lines that must not appear when the firewall
// works: failed pinhole operations, refused foreign connections, errors.
var proxyLogProblems = []string{
	`"level":"error"`,
	proxy.MsgPinholeFailed,
	proxy.MsgListenFailed,
	proxy.MsgDataForeign,
	"firewall teardown failed",
	proxy.MsgDataFailed,
}

// checkProxyLog fails on proxyLogProblems in the log written since off.
func checkProxyLog(t testing.TB, p *Proxy, off int64) {
	t.Helper()
	for _, l := range strings.Split(p.LogSince(off), "\n") {
		for _, bad := range proxyLogProblems {
			if strings.Contains(l, bad) {
				t.Errorf("ftpalg logged: %s", l)
				break
			}
		}
	}
}

// TestPinholeFirewallNoneShowsSymptom is the control group of the pinhole
// tests: with --firewall none behind the host's default-DROP INPUT chain,
// logging in works but every passive data connection times out (its SYN
// is dropped), which is the classic symptom. Clients use short timeouts.
func TestPinholeFirewallNoneShowsSymptom(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqCurl, reqPython, reqVsftpd)
	requireProxy(t)
	h := NewHostTopology(t)
	srv := h.StartUpstream(t, Vsftpd, ServerOptions{})
	p := h.StartPinholeProxy(t, srv, "none", pinholeProxyOpts{})
	for _, tc := range []struct {
		c    Client
		mode Mode
		op   OpKind
	}{
		{curlClient{}, PASV, OpList},
		{curlClient{}, EPSV, OpGet},
		{pythonClient{}, EPSV, OpList},
		{pythonClient{}, PASV, OpGet},
	} {
		name := map[OpKind]string{OpList: "list", OpGet: "retr"}[tc.op]
		t.Run(tc.c.Name()+"-"+string(tc.mode)+"-"+name, func(t *testing.T) {
			requirePrereqs(t, clientRequirement(tc.c))
			work := t.TempDir()
			local := filepath.Join(work, "small.bin")
			op := Op{Kind: tc.op}
			if tc.op == OpGet {
				op = Op{Kind: OpGet, Remote: "small.bin", Local: local}
			}
			var extra []string
			if _, ok := tc.c.(curlClient); ok {
				extra = []string{"--connect-timeout", "3"} // the later one wins
			}
			off := p.LogSize()
			start := time.Now()
			// python's socket timeout is Timeout/2 = 3 s.
			res := tc.c.Run(context.Background(), h.Client, Session{
				Target: hostTarget(false), User: srv.User, Pass: srv.Pass, Mode: tc.mode,
				Ops: []Op{op}, WorkDir: work, Timeout: 6 * time.Second, ExtraArgs: extra,
			})
			elapsed := time.Since(start)
			if !reply230.MatchString(res.Log) {
				t.Errorf("login did not succeed (no 230 reply)")
			}
			// (curl falls back from a failed EPSV to PASV by itself.)
			if cmds := dataCommands(res.Log); !slices.Contains(cmds, tc.mode.Command()) {
				t.Errorf("client sent %v, not %s", cmds, tc.mode.Command())
			}
			announced := regexp.MustCompile(`(?m)^(?:< |\*resp\* ')22[79] `).MatchString(res.Log)
			if !announced {
				t.Errorf("no 227/229 reply: the data port was never announced")
			}
			switch {
			case res.Err == nil:
				t.Errorf("the transfer succeeded through a DROP firewall with --firewall none")
			case strings.Contains(res.Err.Error(), errHardTimeout.Error()):
				t.Errorf("client hung until killed (%v) instead of timing out by itself", res.Err)
			}
			// The SYN is dropped, so the client times out; a refused or
			// reset connection would mean the port was reachable.
			if !regexp.MustCompile(`(?im)timed out|timeout was reached|connect timeout after|^curl: \(28\)`).MatchString(res.Log) {
				t.Errorf("client did not report a connect timeout")
			}
			if regexp.MustCompile(`(?i)refused|reset by peer`).MatchString(res.Log) {
				t.Errorf("client saw a refused/reset connection, want a timeout")
			}
			for _, f := range standardFiles {
				if strings.Contains(res.Listing, f.name) {
					t.Errorf("listing unexpectedly arrived:\n%s", res.Listing)
					break
				}
			}
			if fi, err := os.Stat(local); err == nil && fi.Size() > 0 {
				t.Errorf("RETR unexpectedly delivered %d bytes", fi.Size())
			}
			if strings.Contains(p.LogSince(off), proxy.MsgDataConnected) {
				t.Errorf("ftpalg logged an established data connection")
			}
			if t.Failed() {
				t.Logf("--- transcript ---\n%s", nstest.Tail(res.Log, 60))
				t.Logf("--- ftpalg log ---\n%s", nstest.Tail(p.LogSince(off), 40))
			} else {
				t.Logf("classic symptom in %v: login ok, %s timed out: %s", elapsed.Round(time.Millisecond), name, lastLines(res.Log, 2))
			}
		})
	}
	h.StopProxyClean(t, p)
}

// TestPinholeMatrix runs the transfer matrix (list, downloads of 0 B to
// 10 MiB, uploads, SHA-256 of everything) through ftpalg with each pinhole
// backend: vsftpd with every client in every mode (IPv4: PASV, EPSV, PORT,
// EPRT, lftp without EPRT; IPv6: EPSV, EPRT), proftpd and pure-ftpd with
// curl PASV and PORT. Afterwards no pinhole is left, and a SIGTERM leaves
// the host's filter tables as they were.
func TestPinholeMatrix(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	for _, backend := range pinholeBackends {
		t.Run(backend, func(t *testing.T) {
			h := NewHostTopology(t)
			for _, kind := range allServers {
				t.Run(string(kind), func(t *testing.T) {
					requirePrereqs(t, kind.requirement())
					srv := h.StartUpstream(t, kind, ServerOptions{IPv6: kind == Vsftpd})
					fams := []bool{false}
					if kind == Vsftpd {
						fams = append(fams, true)
					}
					for _, v6 := range fams {
						tgt := hostTarget(v6)
						t.Run(tgt.Family(), func(t *testing.T) {
							p := h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{V6: v6})
							if kind == Vsftpd {
								runMatrix(t, h.Topology(), srv, p, tgt)
							} else {
								for _, mode := range []Mode{PASV, PORT} {
									t.Run("curl-"+string(mode), func(t *testing.T) {
										runTransferCase(t, h.Topology(), srv, p, curlClient{}, tgt, mode)
									})
								}
							}
							requireNoPinholes(t, h, backend, v6, 2*time.Second)
							checkProxyLog(t, p, 0)
							h.StopProxyClean(t, p)
						})
					}
				})
			}
		})
	}
}

// requireNoPinholes polls (bounded; shorter than any pinhole lifetime, so
// a leaked ipset element cannot expire meanwhile) until the set or chain
// is empty.
func requireNoPinholes(t testing.TB, h *HostTopology, backend string, v6 bool, deadline time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		ps, raw, err := h.KernelPinholes(backend, v6)
		if err != nil {
			t.Errorf("reading the %s pinholes: %v", backend, err)
			return
		}
		if len(ps) == 0 {
			return
		}
		if time.Since(start) > deadline {
			t.Errorf("%d %s pinholes left after all sessions ended (%v later):\n%s", len(ps), backend, deadline, raw)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPinholeLifecycle follows one pinhole from announcement to closing,
// for each backend, over IPv4 (PASV and EPSV) and IPv6 (EPSV), with a raw
// control client that stops between the announcement and the connect:
//
//   - while it is open, the kernel holds exactly one pinhole for exactly
//     the client, and `ftpalg rules show` lists it;
//   - a connect from the intruder (same segment, reaches port 21 fine) to
//     the announced port times out: its SYN is dropped by the firewall and
//     never reaches ftpalg (no proxy.MsgDataForeign log line);
//   - the real client's connect then succeeds and RETR delivers the file;
//   - afterwards the pinhole is gone and even the real client's connect to
//     that port times out (a pinhole left open would let the SYN reach the
//     closed port: refused, not timeout);
//   - an announced port nobody connects to is closed again after the data
//     timeout (3 s), with the same checks.
func TestPinholeLifecycle(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqVsftpd)
	requireProxy(t)
	for _, backend := range pinholeBackends {
		t.Run(backend, func(t *testing.T) {
			h := NewHostTopology(t)
			srv := h.StartUpstream(t, Vsftpd, ServerOptions{IPv6: true})
			for _, v6 := range []bool{false, true} {
				t.Run(hostTarget(v6).Family(), func(t *testing.T) {
					p := h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{V6: v6})
					modes := []Mode{PASV, EPSV}
					if v6 {
						modes = []Mode{EPSV}
					}
					for _, mode := range modes {
						t.Run("intruder-"+string(mode), func(t *testing.T) {
							pinholeIntruderCase(t, h, srv, p, backend, v6, mode)
						})
					}
					t.Run("replaced-then-quit", func(t *testing.T) {
						pinholeReplacedCase(t, h, srv, p, backend, v6)
					})
					t.Run("expires-unused", func(t *testing.T) {
						pinholeExpiryCase(t, h, srv, p, backend, v6)
					})
					h.StopProxyClean(t, p)
				})
			}
		})
	}
}

// pinholeAddrs are the client's and the host's addresses of one family.
func pinholeAddrs(v6 bool) (client, intruder, host netip.Addr) {
	if v6 {
		return netip.MustParseAddr(ClientIP6), netip.MustParseAddr(IntruderIP6), netip.MustParseAddr(HostIP6)
	}
	return netip.MustParseAddr(ClientIP4), netip.MustParseAddr(IntruderIP4), netip.MustParseAddr(HostIP4)
}

// announce logs in from the client namespace and sends PASV/EPSV; it
// returns the control connection and the announced data address, which
// must be the host's.
func announce(t *testing.T, h *HostTopology, srv *Server, p *Proxy, mode Mode) (*ctlConn, netip.AddrPort) {
	t.Helper()
	c, data := loginPassive(t, h.Client, netip.Addr{}, p.Listen, srv, mode)
	if want := netip.MustParseAddrPort(p.Listen).Addr(); data.Addr() != want {
		t.Fatalf("%s announced %s, want the host address %s", mode.Command(), data, want)
	}
	return c, data
}

// requireRulesShow checks `ftpalg rules show`: n lines for peer→local.
func requireRulesShow(t *testing.T, h *HostTopology, backend string, peer netip.Addr, local netip.AddrPort, n int) {
	t.Helper()
	out, err := h.RulesShow(backend)
	if err != nil {
		t.Errorf("ftpalg rules show --firewall %s: %v\n%s", backend, err, out)
		return
	}
	if got := rulesShowLines(out, peer, local); len(got) != n {
		t.Errorf("ftpalg rules show --firewall %s: %d lines for %s→%s, want %d:\n%s", backend, len(got), peer, local, n, out)
	}
}

func pinholeIntruderCase(t *testing.T, h *HostTopology, srv *Server, p *Proxy, backend string, v6 bool, mode Mode) {
	clientIP, _, _ := pinholeAddrs(v6)
	off := p.LogSize()
	defer func() {
		if t.Failed() {
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(p.LogSince(off), 60))
		}
	}()
	c, data := announce(t, h, srv, p, mode)

	// Open: exactly one pinhole, for exactly our client.
	h.RequirePinhole(t, backend, clientIP, data)
	requireRulesShow(t, h, backend, clientIP, data, 1)

	// The intruder can reach the host (port 21 answers) ...
	ic, err := dialCtl(h.Intruder, p.Listen, 5*time.Second)
	if err != nil {
		t.Fatalf("intruder cannot reach the host's port 21, so its knock below would prove nothing: %v", err)
	}
	if err := ic.quit(); err != nil {
		t.Errorf("intruder QUIT: %v", err)
	}
	// ... but not the pinhole: its SYN gets no answer.
	start := time.Now()
	got, conn := knock(h.Intruder, data, knockTimeout)
	if conn != nil {
		conn.Close()
	}
	if got != "timeout" {
		t.Errorf("intruder's connect to the open pinhole %s: %s after %v, want timeout (SYN dropped by the firewall)", data, got, time.Since(start).Round(time.Millisecond))
	}
	if strings.Contains(p.LogSince(off), proxy.MsgDataForeign) {
		t.Errorf("the intruder's connection reached ftpalg (it logged a foreign address); the firewall should have dropped it")
	}

	// The real client still gets in and receives the file.
	got, dc := knock(h.Client, data, 5*time.Second)
	if got != "connected" {
		t.Fatalf("client's connect to its pinhole %s: %s, want connected", data, got)
	}
	n, sum, err := c.retr(dc, "small.bin")
	if want := srv.Files["small.bin"]; err != nil || n != want.Size || sum != want.SHA256 {
		t.Errorf("RETR small.bin: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", n, short(sum), err, want.Size, short(want.SHA256))
	}

	// Closed again: no pinhole, and the client's own SYN is dropped now.
	d := h.WaitPinholeGone(t, backend, data, 2*time.Second, false)
	if got, conn := knock(h.Client, data, knockTimeout); got != "timeout" {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("client's connect to %s after the transfer: %s, want timeout (pinhole closed)", data, got)
	}
	requireRulesShow(t, h, backend, clientIP, data, 0)
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	checkProxyLog(t, p, off)
	if t.Failed() {
		return
	}
	t.Logf("pinhole %s→%s: intruder dropped, client served, closed %v after the transfer", clientIP, data, d.Round(time.Millisecond))
}

// pinholeReplacedCase: a second EPSV replaces the first offer, whose
// pinhole must close at once; QUIT with an offer pending must close that
// one too. "At once" is a bounded poll shorter than the 3 s lifetime, so
// an ipset element the proxy forgot cannot pass by expiring.
func pinholeReplacedCase(t *testing.T, h *HostTopology, srv *Server, p *Proxy, backend string, v6 bool) {
	clientIP, _, _ := pinholeAddrs(v6)
	off := p.LogSize()
	defer func() {
		if t.Failed() {
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(p.LogSince(off), 60))
		}
	}()
	c, first := announce(t, h, srv, p, EPSV)
	h.RequirePinhole(t, backend, clientIP, first)
	second, err := c.passive(EPSV)
	if err != nil {
		t.Fatalf("second EPSV: %v", err)
	}
	if second == first {
		t.Fatalf("second EPSV announced the same port %s", second)
	}
	h.RequirePinhole(t, backend, clientIP, second)
	h.WaitPinholeGone(t, backend, first, 1500*time.Millisecond, false)
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	h.WaitPinholeGone(t, backend, second, 1500*time.Millisecond, false)
	checkProxyLog(t, p, off)
}

func pinholeExpiryCase(t *testing.T, h *HostTopology, srv *Server, p *Proxy, backend string, v6 bool) {
	clientIP, _, _ := pinholeAddrs(v6)
	off := p.LogSize()
	defer func() {
		if t.Failed() {
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(p.LogSince(off), 60))
		}
	}()
	c, data := announce(t, h, srv, p, EPSV)
	announced := time.Now()
	h.RequirePinhole(t, backend, clientIP, data)
	requireRulesShow(t, h, backend, clientIP, data, 1)

	// Nobody connects. Bounded wait: the 3 s data timeout plus slack.
	h.WaitPinholeGone(t, backend, data, 10*time.Second, false)
	gone := time.Since(announced)
	if got, conn := knock(h.Client, data, knockTimeout); got != "timeout" {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("client's connect to %s after the offer expired: %s, want timeout (pinhole closed)", data, got)
	}
	requireRulesShow(t, h, backend, clientIP, data, 0)
	// ftpalg gave up on the offer itself (bounded poll for the log line).
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.LogSince(off), proxy.MsgDataNotMade) {
		if time.Now().After(deadline) {
			t.Errorf("ftpalg did not log that the data connection was not made in time")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The session goes on.
	if _, err := c.expect("NOOP", 200); err != nil {
		t.Errorf("session after the expired offer: %v", err)
	}
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	checkProxyLog(t, p, off)
	if t.Failed() {
		return
	}
	t.Logf("unused pinhole %s→%s closed %v after the announcement (data timeout 3s)", clientIP, data, gone.Round(time.Millisecond))
}

// TestPinholeCrashRecovery kills ftpalg with SIGKILL while a PASV has a
// pinhole open, twice:
//
//  1. With the 3 s lifetime: with ipset the element expires by itself
//     (bounded poll); with iptables the rule stays behind.
//  2. With a 30 s lifetime, restarted at once: the restart removes the
//     leftover pinhole (which would otherwise live on) and keeps one hook.
//
// Each restart must also remove what the previous crash left (the iptables
// rule of round 1). After the restart transfers work, and after the final
// SIGTERM the host's filter tables are exactly as before ftpalg first
// started, with no ftpalg ipset left.
func TestPinholeCrashRecovery(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqVsftpd, reqCurl)
	requireProxy(t)
	for _, backend := range pinholeBackends {
		t.Run(backend, func(t *testing.T) {
			h := NewHostTopology(t)
			srv := h.StartUpstream(t, Vsftpd, ServerOptions{})

			// Round 1: the pinhole's own lifetime.
			p := h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{})
			data, announced, left := crashWithPinhole(t, h, srv, p, backend)
			switch backend {
			case "ipset":
				h.WaitPinholeGone(t, backend, data, 8*time.Second, false)
				t.Logf("ipset element expired by itself %v after the announcement (lifetime 3s)", time.Since(announced).Round(time.Millisecond))
			case "iptables":
				got, conn := knock(h.Client, data, knockTimeout)
				if conn != nil {
					conn.Close()
				}
				t.Logf("iptables rule left behind by the dead proxy: %s (client's connect to the dead port: %s)", left, got)
			}

			// Round 2: a long lifetime, so only the restart can remove it.
			p = h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{Extra: []string{"--data-timeout", "30s"}})
			requireCleanStart(t, h, backend)
			data, _, left = crashWithPinhole(t, h, srv, p, backend)
			t.Logf("left behind with a 30s lifetime: %s", left)

			p = h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{})
			requireCleanStart(t, h, backend)
			if got, conn := knock(h.Client, data, knockTimeout); got != "timeout" {
				if conn != nil {
					conn.Close()
				}
				t.Errorf("client's connect to the crashed proxy's port %s after the restart: %s, want timeout (pinhole removed)", data, got)
			}
			work := t.TempDir()
			local := filepath.Join(work, "small.bin")
			res := curlClient{}.Run(context.Background(), h.Client, Session{
				Target: hostTarget(false), User: srv.User, Pass: srv.Pass, Mode: PASV,
				Ops:     []Op{{Kind: OpGet, Remote: "small.bin", Local: local}},
				WorkDir: work, Timeout: 20 * time.Second,
			})
			if res.Err != nil {
				t.Errorf("transfer after the restart: %v\n%s", res.Err, nstest.Tail(res.Log, 40))
			} else if err := checkFile(local, srv.Files["small.bin"]); err != nil {
				t.Errorf("transfer after the restart: %v", err)
			}
			requireNoPinholes(t, h, backend, false, 2*time.Second)
			checkProxyLog(t, p, 0)
			h.StopProxyClean(t, p)
		})
	}
}

// crashWithPinhole announces a PASV port through p, checks its pinhole,
// kills p with SIGKILL and checks the pinhole outlived it. It returns the
// announced address, when it was announced, and the kernel's line for it.
func crashWithPinhole(t *testing.T, h *HostTopology, srv *Server, p *Proxy, backend string) (netip.AddrPort, time.Time, string) {
	t.Helper()
	c, data := announce(t, h, srv, p, PASV)
	announced := time.Now()
	h.RequirePinhole(t, backend, netip.MustParseAddr(ClientIP4), data)
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", p.PID(), err)
	}
	t.Logf("ftpalg (pid %d) killed: %v", p.PID(), p.ExitErr())
	c.Close()
	// Nobody is left to close the pinhole.
	ps, raw, err := h.KernelPinholes(backend, false)
	if err != nil {
		t.Fatalf("after kill -9: %v", err)
	}
	found := findPinhole(ps, data)
	if len(found) != 1 {
		t.Fatalf("after kill -9 the pinhole for %s vanished at once (%v after the announcement):\n%s", data, time.Since(announced), raw)
	}
	return data, announced, found[0].Raw
}

// requireCleanStart checks a freshly (re)started ftpalg's kernel state: no
// pinholes in either family, exactly one hook into its chain in INPUT.
func requireCleanStart(t *testing.T, h *HostTopology, backend string) {
	t.Helper()
	for _, v6 := range []bool{false, true} {
		if ps, raw, err := h.KernelPinholes(backend, v6); err != nil {
			t.Errorf("after (re)start: %v", err)
		} else if len(ps) != 0 {
			t.Errorf("after (re)start %d stale pinholes remain:\n%s", len(ps), raw)
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		rules := h.Host.Run(t, ipt, "-w", "-S", "INPUT")
		if n := strings.Count(rules, "-j "+pinholeChain+"\n"); n != 1 {
			t.Errorf("%s INPUT has %d jumps to %s after the (re)start, want 1:\n%s", ipt, n, pinholeChain, rules)
		}
	}
}

// TestPinholeConcurrentSessions runs 200 sessions at once from the client
// namespace (login, EPSV, RETR 4 KiB, QUIT). All of them announce their
// data port before any connects, so 200 pinholes are open at the same
// time: the kernel must hold exactly those, one per announced port; all
// transfers must succeed; and afterwards the set or chain must be empty.
func TestPinholeConcurrentSessions(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqVsftpd)
	requireProxy(t)
	const n = 200
	for _, backend := range pinholeBackends {
		t.Run(backend, func(t *testing.T) {
			h := NewHostTopology(t)
			srv := h.StartUpstream(t, Vsftpd, ServerOptions{MaxClients: 2 * n, PasvMin: 40000, PasvMax: 40999})
			// Enough data ports for all sessions at once, and a data
			// timeout longer than the slowest announcement takes.
			p := h.StartPinholeProxy(t, srv, backend, pinholeProxyOpts{DataPorts: "50000-50999", Extra: []string{
				"--data-timeout", "30s",
				"--max-sessions", fmt.Sprint(4 * n), "--max-sessions-per-ip", fmt.Sprint(4 * n),
				"--log-level", "info",
			}})
			want := srv.Files["small.bin"]

			type session struct {
				c    *ctlConn
				data netip.AddrPort
				err  error
			}
			ss := make([]session, n)
			// phase runs f for every session still alive, at most
			// parallel at a time.
			phase := func(name string, parallel int, f func(s *session) error) {
				t.Helper()
				start := time.Now()
				var wg sync.WaitGroup
				sem := make(chan struct{}, parallel)
				for i := range ss {
					if ss[i].err != nil {
						continue
					}
					wg.Go(func() {
						sem <- struct{}{}
						defer func() { <-sem }()
						if err := f(&ss[i]); err != nil {
							ss[i].err = fmt.Errorf("%s: %w", name, err)
						}
					})
				}
				wg.Wait()
				var failed []string
				for i, s := range ss {
					if s.err != nil {
						failed = append(failed, fmt.Sprintf("session %d: %v", i, s.err))
					}
				}
				if len(failed) > 0 {
					t.Errorf("%d of %d sessions failed by the end of %s; first: %s", len(failed), n, name, strings.Join(failed[:min(5, len(failed))], "; "))
				}
				t.Logf("%s: %v", name, time.Since(start).Round(time.Millisecond))
			}
			t.Cleanup(func() {
				for _, s := range ss {
					if s.c != nil {
						s.c.Close()
					}
				}
			})

			// Connect and log in 16 at a time: vsftpd listens with a
			// backlog of 32, and 200 simultaneous connects overflow it
			// (the kernel then drops handshakes and ftpalg's upstream
			// connection is reset after ~16 s). All 200 sessions stay
			// open; the pinholes below are opened all at once.
			phase("login", 16, func(s *session) error {
				c, err := dialCtl(h.Client, p.Listen, 30*time.Second)
				if err != nil {
					return err
				}
				s.c = c
				return c.login(srv.User, srv.Pass)
			})
			phase("EPSV", n, func(s *session) error {
				var err error
				s.data, err = s.c.passive(EPSV)
				return err
			})
			if t.Failed() {
				t.FailNow()
			}

			// All announced, none connected: exactly one pinhole per
			// announced port, each for the client, no duplicates.
			ps, raw, err := h.KernelPinholes(backend, false)
			if err != nil {
				t.Fatal(err)
			}
			announced := map[netip.AddrPort]bool{}
			for _, s := range ss {
				announced[s.data] = true
			}
			if len(announced) != n {
				t.Errorf("%d distinct data ports announced to %d sessions", len(announced), n)
			}
			seen := map[netip.AddrPort]int{}
			for _, k := range ps {
				seen[k.Local]++
				if k.Peer != netip.MustParseAddr(ClientIP4) || !announced[k.Local] {
					t.Errorf("unexpected pinhole %s", k.Raw)
				}
			}
			for ap := range announced {
				if seen[ap] != 1 {
					t.Errorf("announced %s: %d pinholes in the kernel, want 1", ap, seen[ap])
				}
			}
			if len(ps) != n {
				t.Errorf("kernel holds %d %s pinholes with %d sessions announced", len(ps), backend, n)
			}
			if out, err := h.RulesShow(backend); err != nil {
				t.Errorf("ftpalg rules show --firewall %s: %v\n%s", backend, err, out)
			} else {
				lines := 0
				for _, l := range strings.Split(out, "\n") {
					if containsAddr(l, ClientIP4) {
						lines++
					}
				}
				if lines != n {
					t.Errorf("ftpalg rules show lists %d pinholes for %s, want %d:\n%s", lines, ClientIP4, n, nstest.Tail(out, 20))
				}
			}
			if t.Failed() {
				t.Logf("--- kernel ---\n%s", nstest.Tail(raw, 30))
			}

			phase("RETR+QUIT", n, func(s *session) error {
				dc, err := s.c.dialData(s.data)
				if err != nil {
					return err
				}
				size, sum, err := s.c.retr(dc, "small.bin")
				if err != nil {
					return err
				}
				if size != want.Size || sum != want.SHA256 {
					return fmt.Errorf("got %d bytes sha256 %s, want %d bytes sha256 %s", size, short(sum), want.Size, short(want.SHA256))
				}
				return s.c.quit()
			})
			requireNoPinholes(t, h, backend, false, 5*time.Second)
			checkProxyLog(t, p, 0)
			if t.Failed() {
				t.Logf("--- ftpalg log ---\n%s", nstest.Tail(p.Log(), 60))
			}
			h.StopProxyClean(t, p)
		})
	}
}
