//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// Tests of the transparent gateway mode (issue #4) on a NAT router: see
// gateway_topo_test.go for the topology and the router's rules.

// requireGatewayPrereqs checks root, the clients, iptables, ipset and the
// ftpalg binary.
func requireGatewayPrereqs(t testing.TB) {
	t.Helper()
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqIptables)
	var missing []string
	for _, tool := range []string{"iptables-save", "ip6tables-save", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		nstest.Unmet(t, "missing: %s", strings.Join(missing, ", "))
	}
	requireProxy(t)
}

// gwCase is one client run through the gateway.
type gwCase struct {
	name   string
	client Client
	mode   Mode
	extra  []string
	// check looks at the client transcript for client-specific behaviour.
	check func(log string) error
}

// curl 7.88 prints this when it ignores the address in a 227 reply
// (--ftp-skip-pasv-ip, its default since 7.74) and connects to the control
// connection's address instead.
var curlSkipRE = regexp.MustCompile(`Skip \d+\.\d+\.\d+\.\d+ for data connection, re-?use ([^ ]+) instead`)

func curlUsedControlAddr(log string) error {
	if !curlSkipRE.MatchString(log) {
		return errors.New(`curl did not say "Skip ... for data connection, reuse ... instead": it did not use the control address`)
	}
	return nil
}

func curlUsed227Addr(log string) error {
	if curlSkipRE.MatchString(log) {
		return errors.New("curl ignored the 227 address although --no-ftp-skip-pasv-ip was given")
	}
	return nil
}

var (
	// gwFullCases: every client in every mode it supports over IPv4, and
	// both ways of treating the 227 address.
	gwFullCases = []gwCase{
		{name: "curl-pasv-227addr", client: curlClient{}, mode: PASV, check: curlUsed227Addr}, // harness: --no-ftp-skip-pasv-ip
		{name: "curl-pasv-ctladdr", client: curlClient{}, mode: PASV, extra: []string{"--ftp-skip-pasv-ip"}, check: curlUsedControlAddr},
		{name: "curl-epsv", client: curlClient{}, mode: EPSV},
		{name: "curl-port", client: curlClient{}, mode: PORT},
		{name: "curl-eprt", client: curlClient{}, mode: EPRT},
		{name: "lftp-pasv", client: lftpClient{}, mode: PASV},
		{name: "lftp-epsv", client: lftpClient{}, mode: EPSV},
		{name: "lftp-port", client: lftpClient{}, mode: PORT},
		{name: "python-pasv-227addr", client: pythonClient{}, mode: PASV}, // trust_server_pasv_ipv4_address=True
		{name: "python-pasv-ctladdr", client: pythonClient{}, mode: PASV, extra: []string{"--ignore-pasv-address"}},
		{name: "python-epsv", client: pythonClient{}, mode: EPSV},
		{name: "python-port", client: pythonClient{}, mode: PORT},
		{name: "python-eprt", client: pythonClient{}, mode: EPRT},
	}
	// gwSmokeCases: one client per mode.
	gwSmokeCases = []gwCase{
		{name: "python-pasv-ctladdr", client: pythonClient{}, mode: PASV, extra: []string{"--ignore-pasv-address"}},
		{name: "curl-pasv-ctladdr", client: curlClient{}, mode: PASV, extra: []string{"--ftp-skip-pasv-ip"}, check: curlUsedControlAddr},
		{name: "lftp-epsv", client: lftpClient{}, mode: EPSV},
		{name: "lftp-port", client: lftpClient{}, mode: PORT},
		{name: "curl-eprt", client: curlClient{}, mode: EPRT},
	}
)

// gwUploadSeq makes file names and ports unique within a test run.
var gwUploadSeq atomic.Int64

// gwTransfer runs one client session from r's client to the server's
// public address: list, download the standard files (full) or small.bin
// and big.bin, upload small.bin (and big.bin when full); it checks every
// SHA-256, the data command used, the address in 227 replies, and that
// ftpalg relayed the transfers. It returns the client's error.
func gwTransfer(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, c gwCase, full bool) error {
	t.Helper()
	return gwTransferCheck(t, r, srv, p, c, full, nil)
}

// gwTransferCheck is gwTransfer with check (if not nil) run on ftpalg's
// log of the session, as runTransferCaseCheck does.
func gwTransferCheck(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, c gwCase, full bool, check caseCheck) error {
	t.Helper()
	requirePrereqs(t, clientRequirement(c.client))
	if ok, why := c.client.Supports(c.mode, false); !ok {
		t.Fatalf("%s cannot do %s: %s", c.client.Name(), c.mode, why)
	}
	work := t.TempDir()
	// Unique per run: vsftpd does not let anonymous users overwrite.
	prefix := fmt.Sprintf("gw-%s-%d-%s-", r.Name, gwUploadSeq.Add(1), c.name)
	downloads := []string{"small.bin", "big.bin"}
	uploads := []string{"small.bin"}
	if full {
		downloads = nil
		for _, f := range standardFiles {
			downloads = append(downloads, f.name)
		}
		uploads = append(uploads, "big.bin")
	}
	ops := []Op{{Kind: OpList}}
	for _, name := range downloads {
		ops = append(ops, Op{Kind: OpGet, Remote: name, Local: filepath.Join(work, "dl-"+name)})
	}
	for _, name := range uploads {
		ops = append(ops, Op{Kind: OpPut, Local: filepath.Join(srv.Root, name), Remote: uploadDirName + "/" + prefix + name})
	}
	logOff := p.LogSize()
	var after func([]int64, int)
	if check != nil {
		after = check(t, p.Proxy, logOff)
	}
	start := time.Now()
	res := r.runClient(c.client, Session{
		Target: gwTarget, User: srv.User, Pass: srv.Pass, Mode: c.mode, Ops: ops,
		WorkDir: work, Timeout: caseTimeout, ExtraArgs: c.extra,
	})
	elapsed := time.Since(start)
	if after != nil && res.Err == nil {
		// Before the counts below: a kernel transfer is reported once
		// conntrack saw its end, which may be after the client exited.
		var sizes []int64
		for _, name := range slices.Concat(downloads, uploads) {
			sizes = append(sizes, srv.Files[name].Size)
		}
		after(sizes, 1)
	}
	plog := p.LogOfSessions(t, logOff, 1, 10*time.Second)

	if res.Err != nil {
		t.Errorf("%s (%s) through router %s failed after %v: %v", c.client.Name(), c.mode.Command(), r.Name, elapsed.Round(time.Millisecond), res.Err)
	}
	if err := checkModeUsed(res.Log, c.mode); err != nil {
		t.Error(err)
	}
	if c.mode == PASV {
		addrs := pasvAddrs(res.Log)
		if len(addrs) == 0 {
			t.Errorf("no 227 reply in the transcript")
		}
		for _, a := range addrs {
			if a != gwTarget.WantPASVIP {
				t.Errorf("227 reply announces %s, want the server's address %s", a, gwTarget.WantPASVIP)
				break
			}
		}
	}
	if c.check != nil {
		if err := c.check(res.Log); err != nil {
			t.Error(err)
		}
	}
	for _, f := range standardFiles {
		if !strings.Contains(res.Listing, f.name) {
			t.Errorf("listing lacks %s", f.name)
		}
	}
	for _, name := range downloads {
		if err := checkFile(filepath.Join(work, "dl-"+name), srv.Files[name]); err != nil {
			t.Errorf("download %s: %v", name, err)
		}
	}
	for _, name := range uploads {
		if err := checkFile(filepath.Join(srv.UploadDir, prefix+name), srv.Files[name]); err != nil {
			t.Errorf("upload %s: %v", name, err)
		}
	}
	// The router forwards nothing but tcp/21: the data went through
	// ftpalg, which says so.
	rewritten := `"` + proxy.MsgPassiveRewrite + `"`
	if c.mode == PORT || c.mode == EPRT {
		rewritten = `"` + proxy.MsgActiveRewrite + `"`
	}
	if n, want := strings.Count(plog, `"`+proxy.MsgTransferFinished+`"`), 1+len(downloads)+len(uploads); n < want {
		t.Errorf("ftpalg logged %d finished transfers for this session, want %d", n, want)
	}
	if !strings.Contains(plog, rewritten) {
		t.Errorf("ftpalg did not log %s", rewritten)
	}
	if err := srv.Alive(); err != nil {
		t.Error(err)
	}
	if err := p.Alive(); err != nil {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("--- %s transcript ---\n%s", c.client.Name(), nstest.Tail(res.Log, 150))
		t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(plog, 150))
		t.Logf("--- server logs ---\n%s", srv.Logs())
	} else {
		t.Logf("ok in %v, data commands %v", elapsed.Round(time.Millisecond), dataCommands(res.Log))
	}
	return res.Err
}

// runGwCases runs cases as sub-tests; after maxHardTimeouts clients hung,
// the rest fail at once.
func runGwCases(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, cases []gwCase, full bool) {
	runGwCasesCheck(t, r, srv, p, cases, full, nil)
}

// runGwCasesCheck is runGwCases with check run after each case.
func runGwCasesCheck(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, cases []gwCase, full bool, check caseCheck) {
	hung := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if hung >= maxHardTimeouts {
				t.Fatalf("not run: %d earlier clients hung until killed", hung)
			}
			if errors.Is(gwTransferCheck(t, r, srv, p, c, full, check), errHardTimeout) {
				hung++
			}
		})
	}
}

// TestGatewayTransparent: a client behind a NAT router (FORWARD only lets
// tcp/21 out, no FTP conntrack helper) talks to servers on the public
// side. Without ftpalg, login works and data connections do not (the
// classic symptoms). With ftpalg on the router in REDIRECT and in TPROXY
// interception, every client in every mode transfers correctly, for
// vsftpd fully and for proftpd and pure-ftpd as a smoke test; the client
// configures nothing. After ftpalg exits, the router is exactly as before.
func TestGatewayTransparent(t *testing.T) {
	requireGatewayPrereqs(t)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			g := NewGateway(t, 1)
			r := g.Routers[0]
			srv := StartServer(t, g.Topology(r), kind, ServerOptions{Addr4: GwServerIP4})
			t.Run("without-ftpalg", func(t *testing.T) {
				gwSymptoms(t, r, srv, kind == Vsftpd)
			})
			for _, mode := range []Interception{Redirect, TProxy} {
				t.Run(string(mode), func(t *testing.T) {
					remove := r.InstallInterception(t, InterceptOpts{Mode: mode})
					p := r.StartGatewayProxy(t, GwProxyOpts{Mode: mode})
					if kind == Vsftpd {
						runGwCases(t, r, srv, p, gwFullCases, true)
						if mode == Redirect {
							t.Run("direct-connection-refused", func(t *testing.T) { gwDirectRefused(t, r, p) })
						}
					} else {
						runGwCases(t, r, srv, p, gwSmokeCases, false)
					}
					r.RequireNoHelperUsed(t)
					t.Run("sigterm-restores-router", func(t *testing.T) { p.StopClean(t) })
					remove()
				})
			}
		})
	}
}

// gwDirectRefused: a client that connects to ftpalg's port on the router
// itself (not intercepted) gets a 421 instead of a session relayed to the
// proxy again.
func gwDirectRefused(t *testing.T, r *GwRouter, p *GwProxy) {
	off := p.LogSize()
	c, err := dial(r.Client, GwLANIP4+":"+gwProxyPort, 3*time.Second)
	if err != nil {
		t.Fatalf("connect to ftpalg's own port: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "421") {
		t.Errorf("direct connection to %s:%s: got %q, %v; want a 421 reply", GwLANIP4, gwProxyPort, line, err)
	}
	t.Logf("direct connection: %q; ftpalg: %s", strings.TrimSpace(line), strings.TrimSpace(lastLines(p.LogSince(off), 2)))
}

// gwSymptoms: without ftpalg, login works; PASV (and EPSV) listings hang
// until the client's own timeout, because the router drops the data
// connection (FORWARD policy DROP, no FTP helper); PORT fails, because the
// server is told the client's private address and sees the router's.
func gwSymptoms(t *testing.T, r *GwRouter, srv *Server, all bool) {
	// Nothing intercepts: ftpalg is not in the way.
	if st := r.State(t).Full; strings.Contains(st, "REDIRECT") || strings.Contains(st, "TPROXY") || strings.Contains(st, "FTPALG") {
		t.Fatalf("router %s has interception or ftpalg rules:\n%s", r.Name, st)
	}
	// Stock ftplib: PASV, connects to the control address.
	t.Run("python-pasv-hangs", func(t *testing.T) {
		requirePrereqs(t, reqPython)
		res := gwSymptomRun(t, r, srv, pythonClient{}, PASV, "--ignore-pasv-address")
		gwRequireDataTimeout(t, res)
	})
	if all {
		// curl --disable-epsv with curl's defaults (7.88: --ftp-skip-pasv-ip,
		// i.e. the control address), run directly so no harness flag changes
		// that default.
		t.Run("curl-pasv-hangs", func(t *testing.T) {
			requirePrereqs(t, reqCurl)
			gwCurlDefaultPASV(t, r, srv)
		})
		t.Run("python-epsv-hangs", func(t *testing.T) {
			requirePrereqs(t, reqPython)
			res := gwSymptomRun(t, r, srv, pythonClient{}, EPSV)
			gwRequireDataTimeout(t, res)
		})
	}
	t.Run("python-port-fails", func(t *testing.T) {
		requirePrereqs(t, reqPython)
		res := gwSymptomRun(t, r, srv, pythonClient{}, PORT)
		// The server's answer to PORT 198,51,100,10,...
		if reply := gwReplyTo(res.Log, "PORT"); !strings.HasPrefix(reply, "5") {
			t.Errorf("server's reply to PORT: %q, want a refusal (5xx)", reply)
		} else {
			t.Logf("server's reply to the client's PORT: %s", reply)
		}
	})
	r.RequireNoHelperUsed(t)
}

// gwSymptomRun runs a client that lists in mode and asserts login worked
// and the listing did not, within the client's own timeout.
func gwSymptomRun(t *testing.T, r *GwRouter, srv *Server, c Client, mode Mode, extra ...string) Result {
	t.Helper()
	start := time.Now()
	res := r.runClient(c, Session{
		Target: gwTarget, User: srv.User, Pass: srv.Pass, Mode: mode,
		Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 5 * time.Second, ExtraArgs: extra,
	})
	gwRequireSymptom(t, res, time.Since(start), srv)
	if err := checkModeUsed(res.Log, mode); err != nil {
		t.Error(err)
	}
	return res
}

func gwRequireSymptom(t *testing.T, res Result, elapsed time.Duration, srv *Server) {
	t.Helper()
	if !reply230.MatchString(res.Log) {
		t.Errorf("login did not succeed through the router (no 230 reply)")
	}
	if res.Err == nil {
		t.Errorf("LIST unexpectedly succeeded through a router that forwards only tcp/21, without FTP helper or ftpalg")
	}
	if errors.Is(res.Err, errHardTimeout) {
		t.Errorf("client killed after the hard timeout (%v) instead of failing on its own", elapsed)
	}
	for _, f := range standardFiles {
		if strings.Contains(res.Listing, f.name) {
			t.Errorf("listing unexpectedly contains %s", f.name)
			break
		}
	}
	if t.Failed() {
		t.Logf("--- transcript ---\n%s\n--- server ---\n%s", nstest.Tail(res.Log, 80), srv.Logs())
	} else {
		t.Logf("classic symptom in %v: login ok, LIST failed: %v\n%s", elapsed.Round(time.Millisecond), res.Err, lastLines(res.Log, 3))
	}
}

// gwRequireDataTimeout: the client failed because its data connection got
// no answer (dropped), not for another reason.
func gwRequireDataTimeout(t *testing.T, res Result) {
	t.Helper()
	if !strings.Contains(strings.ToLower(res.Log), "timed out") && !strings.Contains(res.Log, "Timeout") {
		t.Errorf("client did not fail with a timeout (the data connection should be dropped silently):\n%s", lastLines(res.Log, 5))
	}
}

// gwCurlDefaultPASV runs curl --disable-epsv without any PASV address
// option and checks curl's default: it ignores the 227 address and
// connects to the control connection's address, where the router drops the
// data connection.
func gwCurlDefaultPASV(t *testing.T, r *GwRouter, srv *Server) {
	t.Helper()
	argv := []string{"curl", "-q", "--silent", "--show-error", "--verbose", "--disable-epsv",
		"--connect-timeout", "2", "--max-time", "8", "--user", srv.User + ":" + srv.Pass,
		"ftp://" + GwServerIP4 + "/"}
	start := time.Now()
	out, errOut, err := runClient(context.Background(), r.Client, t.TempDir(), 12*time.Second, argv...)
	res := Result{Listing: out, Log: "### " + strings.Join(argv, " ") + "\n" + errOut, Err: err}
	gwRequireSymptom(t, res, time.Since(start), srv)
	if err := checkModeUsed(res.Log, PASV); err != nil {
		t.Error(err)
	}
	// 28: CURLE_OPERATION_TIMEDOUT, the data connection's --connect-timeout.
	if res.Err == nil || !strings.Contains(res.Err.Error(), "exit status 28") {
		t.Errorf("curl did not time out connecting the data connection: %v", res.Err)
	}
	if m := curlSkipRE.FindStringSubmatch(res.Log); m != nil {
		t.Logf("curl's default for 227 (--ftp-skip-pasv-ip): %s", m[0])
	} else {
		t.Errorf("curl did not use the control address by default (no \"Skip ... for data connection\" line)")
	}
}

// TestGatewayUpstreamSourceClient: with --upstream-source client, ftpalg
// connects to the server from the client's address, and the server logs
// 198.51.100.10 instead of the router's 203.0.113.1. The router needs the
// divert rule and policy route, and the MASQUERADE rule must not apply to
// ftpalg's transparent dials; without that exemption the server sees the
// router's address again, and active mode breaks.
func TestGatewayUpstreamSourceClient(t *testing.T) {
	requireGatewayPrereqs(t)
	requirePrereqs(t, reqVsftpd)
	g := NewGateway(t, 1)
	r := g.Routers[0]
	srv := StartServer(t, g.Topology(r), Vsftpd, ServerOptions{Addr4: GwServerIP4})
	cases := []gwCase{
		{name: "python-pasv-ctladdr", client: pythonClient{}, mode: PASV, extra: []string{"--ignore-pasv-address"}},
		{name: "curl-epsv", client: curlClient{}, mode: EPSV},
		{name: "python-port", client: pythonClient{}, mode: PORT},
		{name: "curl-eprt", client: curlClient{}, mode: EPRT},
		{name: "lftp-port", client: lftpClient{}, mode: PORT},
	}
	kernelHost(t, r.Router)
	for _, run := range []struct {
		name  string
		mode  Interception
		extra []string
	}{
		{"redirect", Redirect, nil}, {"tproxy", TProxy, nil},
		// The kernel data path: the server must see the client's address
		// on the data connections too, not the router's MASQUERADE.
		{"redirect-kernel", Redirect, kernelFlags},
	} {
		mode := run.mode
		t.Run(run.name, func(t *testing.T) {
			remove := r.InstallInterception(t, InterceptOpts{Mode: mode, ExemptTransparentFromMasq: true})
			off := srv.vsftpdLogSize()
			// A short connect timeout bounds the source-port collision case.
			p := r.StartGatewayProxy(t, GwProxyOpts{Mode: mode, UpstreamSourceClient: true, Extra: append([]string{"--connect-timeout", "3s"}, run.extra...)})
			runGwCases(t, r, srv, p, cases, false)
			clients := srv.vsftpdClients(off)
			t.Logf("vsftpd logged clients %v", clients)
			if !clients[GwClientIP4] {
				t.Errorf("vsftpd never saw the client's address %s, only %v", GwClientIP4, clients)
			}
			if len(clients) != 1 {
				t.Errorf("vsftpd saw other addresses than the client's %s: %v", GwClientIP4, clients)
			}
			// ftpalg says where it connected from.
			if !regexp.MustCompile(`"msg":"` + proxy.MsgConnected + `".*"local":"` + regexp.QuoteMeta(GwClientIP4) + `:\d+"`).MatchString(p.Log()) {
				t.Errorf("ftpalg never logged a connection to the server from %s", GwClientIP4)
			}
			t.Run("client-source-port-reused", func(t *testing.T) { gwSourcePortCollision(t, r, p) })
			r.RequireNoHelperUsed(t)
			t.Run("sigterm-restores-router", func(t *testing.T) { p.StopClean(t) })
			remove()
		})
	}
	// Without the exemption, MASQUERADE on the WAN interface also
	// rewrites ftpalg's transparent dials (it applies to locally generated
	// packets): the server sees the router again. PASV still works; PORT
	// does not, since ftpalg tells the server the client's address while
	// the server sees the router's, which vsftpd refuses.
	t.Run("masquerade-not-exempted", func(t *testing.T) {
		remove := r.InstallInterception(t, InterceptOpts{Mode: Redirect})
		off := srv.vsftpdLogSize()
		p := r.StartGatewayProxy(t, GwProxyOpts{Mode: Redirect, UpstreamSourceClient: true})
		gwTransfer(t, r, srv, p, cases[0], false)
		clients := srv.vsftpdClients(off)
		t.Logf("vsftpd logged clients %v", clients)
		if clients[GwClientIP4] || !clients[r.WANIP] {
			t.Errorf("expected MASQUERADE to hide the client (vsftpd sees only %s), vsftpd saw %v", r.WANIP, clients)
		}
		res := r.runClient(pythonClient{}, Session{
			Target: gwTarget, User: srv.User, Pass: srv.Pass, Mode: PORT,
			Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 10 * time.Second,
		})
		reply := gwReplyTo(res.Log, "PORT")
		t.Logf("PORT without the MASQUERADE exemption: client error %v; server's reply to the rewritten PORT: %q", res.Err, reply)
		if res.Err == nil || !strings.HasPrefix(reply, "500") {
			t.Errorf("expected vsftpd to refuse the PORT ftpalg sends (the client's address, while vsftpd sees the router's) with 500")
		}
		r.RequireNoHelperUsed(t)
		t.Run("sigterm-restores-router", func(t *testing.T) { p.StopClean(t) })
		remove()
	})
}

// gwSourcePortCollision: with --upstream-source client, ftpalg dials the
// server from the client's address and a source port the router's kernel
// picks. When that port is the one the client used for its own,
// intercepted, connection, both have the same address/port 4-tuple. Forced
// here: the client connects from port P, and the router's ephemeral range
// is just P (by default it happens by chance, about once in
// 28,000 sessions, more often with several sessions of one client). The
// session must still work.
func gwSourcePortCollision(t *testing.T, r *GwRouter, p *GwProxy) {
	// A fresh port each time: the last one may be in TIME_WAIT.
	port := strconv.Itoa(int(40500 + gwUploadSeq.Add(1)%500))
	old := strings.TrimSpace(r.Router.Run(t, "sysctl", "-n", "net.ipv4.ip_local_port_range"))
	r.Router.Sysctl(t, "net.ipv4.ip_local_port_range", port+" "+port)
	defer r.Router.Sysctl(t, "net.ipv4.ip_local_port_range", strings.Join(strings.Fields(old), " "))
	off := p.LogSize()
	c, err := r.Client.DialFrom(netip.MustParseAddrPort(GwClientIP4+":"+port), netip.MustParseAddrPort(GwServerIP4+":21"), 5*time.Second)
	if err != nil {
		t.Fatalf("connect from port %s: %v", port, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	plog := p.LogSince(off)
	if err != nil || !strings.HasPrefix(line, "220") {
		t.Errorf("client %s:%s got %q (%v), want the server's 220 greeting\n--- ftpalg ---\n%s", GwClientIP4, port, strings.TrimSpace(line), err, plog)
		return
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	t.Logf("greeting %q; ftpalg: %s", strings.TrimSpace(line),
		regexp.MustCompile(`"msg":"`+proxy.MsgConnected+`".*`).FindString(plog))
}

// gwReplyTo returns the reply ftplib printed after cmd ("" if none).
func gwReplyTo(log, cmd string) string {
	// ftplib prints repr(): '...' or, when the text has a ', "...".
	m := regexp.MustCompile(`(?m)^\*cmd\* '` + cmd + ` [^'\n]*'\n\*resp\* (['"])(.*)['"]$`).FindStringSubmatch(log)
	if m == nil {
		return ""
	}
	return m[2]
}

// vsftpdLogSize and vsftpdClients read vsftpd's protocol and transfer log
// (log_ftp_protocol=YES, xferlog_enable=YES): `[pid N] CONNECT: Client
// "ADDR"`, `[pid N] [ftp] OK DOWNLOAD: Client "ADDR", ...`.
func (s *Server) vsftpdLogSize() int64 {
	if s.Kind != Vsftpd || len(s.extraLogs) == 0 {
		return 0
	}
	fi, err := os.Stat(s.extraLogs[0])
	if err != nil {
		return 0
	}
	return fi.Size()
}

// vsftpdClientRE matches every line vsftpd logs about a client: CONNECT,
// FTP command, FTP response, LOGIN, DOWNLOAD, UPLOAD.
var vsftpdClientRE = regexp.MustCompile(`Client "([^"]+)"`)

func (s *Server) vsftpdClients(off int64) map[string]bool {
	got := map[string]bool{}
	if s.Kind != Vsftpd || len(s.extraLogs) == 0 {
		return got
	}
	b, _ := os.ReadFile(s.extraLogs[0])
	if off > int64(len(b)) {
		off = 0
	}
	for _, m := range vsftpdClientRE.FindAllStringSubmatch(string(b[off:]), -1) {
		// StartServer's readiness probes come from the server itself, and
		// vsftpd may log them after it returned.
		if m[1] != s.addr4 {
			got[m[1]] = true
		}
	}
	return got
}

// TestGatewayTwoRoutersSameLAN: two clients with the same private address
// 198.51.100.10, behind two routers (a: REDIRECT, b: TPROXY), each with its
// own ftpalg, download different files from the same server at the same
// time, in every mode; each gets its own data. The transfers are held
// open together: each client stops after 1 MiB until both have (a gate),
// then both read the rest.
func TestGatewayTwoRoutersSameLAN(t *testing.T) {
	requireGatewayPrereqs(t)
	requirePrereqs(t, reqVsftpd)
	g := NewGateway(t, 2)
	srv := StartServer(t, g.Topology(g.Routers[0]), Vsftpd, ServerOptions{Addr4: GwServerIP4})
	// One file per router, different contents, larger than all the
	// socket buffers on the way, so the server is still sending while the
	// clients wait at the gate.
	const size = 32 << 20
	files := map[string]DataFile{}
	for i, r := range g.Routers {
		name := "only-" + r.Name + ".bin"
		files[r.Name] = writeRandomFile(t, filepath.Join(srv.Root, name), size, uint64(100+i))
		srv.Files[name] = files[r.Name]
	}
	if files["a"].SHA256 == files["b"].SHA256 {
		t.Fatal("the two test files are equal")
	}
	const gwSinglePort = "50000-50000"
	modes := []Interception{Redirect, TProxy}
	proxies := make([]*GwProxy, len(g.Routers))
	for i, r := range g.Routers {
		r.InstallInterception(t, InterceptOpts{Mode: modes[i]})
		// One data port only: both routers' ftpalg must announce and catch
		// the very same server address and port at the same time.
		proxies[i] = r.StartGatewayProxy(t, GwProxyOpts{Mode: modes[i], Extra: []string{"--data-ports", gwSinglePort}})
	}
	for _, mode := range allModes {
		t.Run(string(mode), func(t *testing.T) {
			requirePrereqs(t, reqPython)
			gwGatedPair(t, g, srv, proxies, files, mode)
		})
	}
	clients := srv.vsftpdClients(0)
	t.Logf("vsftpd logged clients %v", clients)
	for _, r := range g.Routers {
		if !clients[r.WANIP] {
			t.Errorf("vsftpd never saw router %s (%s)", r.Name, r.WANIP)
		}
	}
	if len(clients) != len(g.Routers) {
		t.Errorf("vsftpd saw other clients than the routers: %v", clients)
	}
	for i, r := range g.Routers {
		r.RequireNoHelperUsed(t)
		t.Run("sigterm-restores-router-"+r.Name, func(t *testing.T) { proxies[i].StopClean(t) })
	}
}

// gwGatedPair runs one python ftplib download per router at the same
// time, held at a gate after 1 MiB until all are there.
func gwGatedPair(t *testing.T, g *Gateway, srv *Server, proxies []*GwProxy, files map[string]DataFile, mode Mode) {
	n := len(g.Routers)
	type run struct {
		res    Result
		local  string
		gate   string
		logOff int64
	}
	runs := make([]*run, n)
	done := make(chan int, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, r := range g.Routers {
		work := t.TempDir()
		rn := &run{local: filepath.Join(work, "dl.bin"), gate: filepath.Join(work, "gate"), logOff: proxies[i].LogSize()}
		if err := syscall.Mkfifo(rn.gate, 0o600); err != nil {
			t.Fatal(err)
		}
		runs[i] = rn
		var extra []string
		if mode == PASV {
			extra = []string{"--ignore-pasv-address"} // stock ftplib
		}
		wg.Go(func() {
			rn.res = runPython(context.Background(), r.Client, Session{
				Target: gwTarget, User: srv.User, Pass: srv.Pass, Mode: mode,
				WorkDir: work, Timeout: 40 * time.Second, ExtraArgs: extra,
			}, "get-gated", files[r.Name].Name, rn.local, strconv.Itoa(1<<20), rn.gate)
			done <- i
		})
	}
	// Opening a FIFO for writing blocks until its reader opens it: once
	// every open returned, every client is in the middle of its transfer.
	opened := make(chan *os.File, n)
	for _, rn := range runs {
		go func() {
			f, err := os.OpenFile(rn.gate, os.O_WRONLY, 0)
			if err != nil {
				t.Errorf("open gate: %v", err)
				f = nil
			}
			opened <- f
		}()
	}
	var gates []*os.File
	collected := 0
	deadline := time.After(30 * time.Second)
wait:
	for collected < n {
		select {
		case f := <-opened:
			collected++
			if f != nil {
				gates = append(gates, f)
			}
		case i := <-done:
			t.Errorf("router %s: client ended before all clients reached the gate: %v", g.Routers[i].Name, runs[i].res.Err)
			break wait
		case <-deadline:
			t.Errorf("not all clients reached the gate after 1 MiB within 30s")
			break wait
		}
	}
	if len(gates) == n {
		t.Logf("%d clients with the same address %s hold %s transfers open at the same time", n, GwClientIP4, mode.Command())
		for _, f := range gates {
			if _, err := f.Write([]byte{1}); err != nil {
				t.Errorf("gate: %v", err)
			}
		}
	} else {
		// Unblock the opens still waiting (a reader satisfies them); the
		// gates are closed without a byte, so clients waiting there exit.
		for _, rn := range runs {
			if f, err := os.OpenFile(rn.gate, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		}
		for ; collected < n; collected++ {
			if f := <-opened; f != nil {
				gates = append(gates, f)
			}
		}
	}
	for _, f := range gates {
		f.Close()
	}
	wg.Wait()
	for i, r := range g.Routers {
		rn := runs[i]
		if rn.res.Err != nil {
			t.Errorf("router %s: %v", r.Name, rn.res.Err)
		}
		if !strings.Contains(rn.res.Log, "GATE-PASSED") {
			t.Errorf("router %s: client did not pass the gate", r.Name)
		}
		if err := checkFile(rn.local, files[r.Name]); err != nil {
			t.Errorf("router %s: %v", r.Name, err)
		}
		if err := checkModeUsed(rn.res.Log, mode); err != nil {
			t.Errorf("router %s: %v", r.Name, err)
		}
		plog := proxies[i].LogSince(rn.logOff)
		if !strings.Contains(plog, `"`+proxy.MsgTransferFinished+`"`) {
			t.Errorf("router %s: ftpalg logged no finished transfer", r.Name)
		}
		listens := gwListens(plog)
		t.Logf("router %s: %s ok; ftpalg data listener %v", r.Name, files[r.Name].Name, listens)
		want := GwServerIP4 + ":50000" // passive: on the server's address
		if mode == PORT || mode == EPRT {
			want = r.WANIP + ":50000"
		}
		if len(listens) != 1 || listens[0] != want {
			t.Errorf("router %s: ftpalg listened on %v, want [%s]", r.Name, listens, want)
		}
		if t.Failed() {
			t.Logf("--- router %s: ftplib transcript ---\n%s", r.Name, nstest.Tail(rn.res.Log, 60))
			t.Logf("--- router %s: ftpalg log ---\n%s", r.Name, nstest.Tail(plog, 60))
		}
	}
}

var gwListenRE = regexp.MustCompile(`"(?:passive|active) mode rewritten".*?"listen":"([^"]+)"`)

// gwListens returns the data listeners ftpalg logged.
func gwListens(log string) []string {
	var out []string
	for _, m := range gwListenRE.FindAllStringSubmatch(log, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestGatewayDivertNeeded shows why the divert rule and policy route are
// part of both interception setups: without them the control connection
// still works (REDIRECT, and TPROXY's own mark), but the data connections
// to ftpalg's transparent sockets are routed past it.
//
//   - PASV/EPSV: the client's SYN to SERVER:DATAPORT is forwarded (ftpalg's
//     pinhole in FTPALG-FORWARD even lets it through) to the real server,
//     where nothing listens on that port;
//   - PORT with --interception tproxy: ftpalg dials the client from the
//     server's address, and the client's SYN-ACK is forwarded to the real
//     server instead of being delivered to ftpalg.
//
// PORT with REDIRECT works without them (ftpalg dials the client from the
// router's own LAN address). Then the same without the router's divert
// rule, but with ftpalg's own (--divert, its default): everything works,
// and ftpalg removes its rules at exit.
func TestGatewayDivertNeeded(t *testing.T) {
	requireGatewayPrereqs(t)
	requirePrereqs(t, reqVsftpd)
	g := NewGateway(t, 1)
	r := g.Routers[0]
	srv := StartServer(t, g.Topology(r), Vsftpd, ServerOptions{Addr4: GwServerIP4})
	for _, mode := range []Interception{Redirect, TProxy} {
		t.Run(string(mode), func(t *testing.T) {
			remove := r.InstallInterception(t, InterceptOpts{Mode: mode, NoDivert: true})
			for _, ftpalgDivert := range []bool{false, true} {
				name := "no-divert"
				if ftpalgDivert {
					name = "ftpalg-divert"
				}
				t.Run(name, func(t *testing.T) {
					// A short connect timeout: a failing active-mode dial must
					// not hold up ftpalg's shutdown.
					p := r.StartGatewayProxy(t, GwProxyOpts{Mode: mode, FtpalgDivert: ftpalgDivert, Extra: []string{"--connect-timeout", "2s"}})
					for _, m := range []Mode{PASV, EPSV, PORT} {
						works := ftpalgDivert || (m == PORT && mode == Redirect)
						t.Run(string(m), func(t *testing.T) { gwDivertCase(t, r, srv, p, m, works) })
					}
					t.Run("sigterm-restores-router", func(t *testing.T) { p.StopClean(t) })
				})
			}
			remove()
		})
	}
}

func gwDivertCase(t *testing.T, r *GwRouter, srv *Server, p *GwProxy, m Mode, works bool) {
	off := p.LogSize()
	start := time.Now()
	res := r.runClient(pythonClient{}, Session{
		Target: gwTarget, User: srv.User, Pass: srv.Pass, Mode: m,
		Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 6 * time.Second,
	})
	elapsed := time.Since(start).Round(time.Millisecond)
	if !reply230.MatchString(res.Log) {
		t.Errorf("login failed: the control connection works without any divert rule")
	}
	switch {
	case works && res.Err != nil:
		t.Errorf("%s failed: %v", m.Command(), res.Err)
	case !works && res.Err == nil:
		t.Errorf("%s worked without any divert rule and policy route: are they not needed?", m.Command())
	case res.Err != nil:
		t.Logf("as expected, %s fails without a divert rule, after %v:\n%s", m.Command(), elapsed, lastLines(res.Log, 2))
	default:
		t.Logf("as expected, %s works", m.Command())
	}
	if t.Failed() {
		t.Logf("--- transcript ---\n%s\n--- ftpalg ---\n%s", nstest.Tail(res.Log, 40), nstest.Tail(p.LogSince(off), 40))
	}
}
