//go:build linux

package e2e

// FTPS end to end (issue 12): real servers with TLS (vsftpd, proftpd with
// mod_tls, pure-ftpd), real TLS clients (curl, lftp, python ftplib), and
// ftpalg terminating TLS toward the clients and re-originating it toward
// the servers. Certificates are made per test (ftps_harness_test.go);
// every client verifies the certificate it is shown (the servers' or
// ftpalg's) against the test authority, and ftpalg verifies the servers'.
//
// What covers what (each case: LIST, RETR of 0 B, 1 B, 4 KiB and 10 MiB,
// STOR of 4 KiB and 10 MiB, SHA-256 of everything, the mode on the wire
// checked, a 227 checked to announce ftpalg's address; then ftpalg's TLS
// log lines: which legs are TLS, every data connection TLS on the legs
// that protect data, path=tls, session resumption per leg):
//
//   - TestFTPSMatrix: vsftpd (require_ssl_reuse=YES), TLS on both legs,
//     the full matrix: every client in every mode it supports, IPv4 and
//     IPv6; implicit TLS toward ftpalg (--listen-implicit) and toward a
//     second, implicit_ssl vsftpd (--upstream-tls implicit).
//   - TestFTPSServers: proftpd (mod_tls, TLSRequired on, reuse required)
//     and pure-ftpd (--tls=2), TLS on both legs, a representative subset:
//     each client once, passive and active, IPv4 (proftpd also IPv6);
//     proftpd through --upstream-tls auto.
//   - TestFTPSOneLeg: TLS offload (TLS clients, ftpalg, plain vsftpd;
//     explicit and implicit toward ftpalg, --upstream-tls auto finding no
//     TLS) and a plain client to a TLS-only vsftpd (--client-tls off).
//   - TestFTPSPinholes: TLS on both legs behind a default-DROP INPUT chain
//     with --firewall ipset: the pinhole admits exactly the client (an
//     intruder's SYN is dropped), closes after the one connection.
//   - TestFTPSReuse: --require-tls-reuse (lftp and curl resume, python's
//     ftplib does not and gets 522); proftpd limited to TLS 1.2 refuses
//     ftpalg's data connections unless it issues session tickets.
//   - TestFTPSDirect: the control group, without ftpalg: python against
//     require_ssl_reuse (522), curl's active-mode FTPS (hangs: a curl
//     bug), lftp's (works).
//   - TestFTPSVerify: the server's certificate from an untrusted authority
//     or for another name: the client gets a 421 saying so, ftpalg logs it.
//
// curl 7.88 cannot do active mode with protected data at all (see
// TestFTPSDirect), so its PORT and EPRT cases run with --ftp-ssl-control
// (PROT C toward ftpalg, which still protects the server's leg).

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// resume is what a leg's data connections must do with the control
// connection's TLS session.
type resume int

const (
	resumeAny  resume = iota // not checked
	resumeAll                // every one resumed it
	resumeNone               // none did
)

func (r resume) String() string { return [...]string{"any", "all", "none"}[r] }

// ftpsWant is what ftpalg's log must show for one client session.
type ftpsWant struct {
	client, server             bool // the control connection is TLS on that leg
	clientData, serverData     bool // the data connections are TLS on that leg
	clientResume, serverResume resume
	version                    string // of every handshake; "" = not checked
}

// Expectations of ftpalg's TLS legs by deployment.
var (
	wantBoth = ftpsWant{client: true, server: true, clientData: true, serverData: true}
	// Offload: TLS toward the client, plain toward the server.
	wantOffload = ftpsWant{client: true, clientData: true}
	// A plain client to a TLS server.
	wantUpstream = ftpsWant{server: true, serverData: true}
)

// clientResumes says whether a client's data connections resume its
// control connection's TLS session: curl and lftp do (vsftpd's
// require_ssl_reuse accepts them directly); python's ftplib never does.
func clientResumes(c Client) resume {
	if r, ok := c.(renamed); ok {
		c = r.Client
	}
	if _, ok := c.(pythonClient); ok {
		return resumeNone
	}
	return resumeAll
}

// ftpsCase is one client session of an FTPS matrix.
type ftpsCase struct {
	c    Client
	mode Mode
	// clearData: PROT C toward ftpalg (curl's active mode, which cannot
	// protect data; see TestFTPSDirect).
	clearData bool
	implicit  bool // TLS from the first byte toward ftpalg, at tgt's host, port implicitPort
}

// implicitPort is where ftpalg and the implicit vsftpd take implicit FTPS.
const implicitPort = 990

func (fc ftpsCase) name() string {
	n := fc.c.Name()
	switch {
	case fc.clearData:
		n += "-protc"
	case fc.implicit:
		n += "-implicit"
	}
	return n + "-" + string(fc.mode)
}

// fullCases is every client in every mode it supports on the family, with
// protected data, except curl's active modes, which run with PROT C.
func fullCases(v6 bool) []ftpsCase {
	var cs []ftpsCase
	for _, c := range allClients {
		for _, m := range allModes {
			if ok, _ := c.Supports(m, v6); !ok {
				continue
			}
			_, isCurl := c.(curlClient)
			cs = append(cs, ftpsCase{c: c, mode: m, clearData: isCurl && (m == PORT || m == EPRT)})
		}
	}
	return cs
}

// runFTPSCases runs each case with runTransferCase through p and then
// checks ftpalg's TLS log lines of its session against want (client
// resumption and PROT C adjusted per case). tgt.TLS is the clients' TLS.
func runFTPSCases(t *testing.T, topo *Topology, srv *Server, p *Proxy, tgt Target, want ftpsWant, cases []ftpsCase) {
	t.Helper()
	hardTimeouts := 0
	for _, fc := range cases {
		t.Run(fc.name(), func(t *testing.T) {
			requirePrereqs(t, clientRequirement(fc.c))
			if hardTimeouts >= maxHardTimeouts {
				t.Fatalf("not run: %d earlier clients hung until killed", hardTimeouts)
			}
			tg, w := tgt, want
			ct := *tgt.TLS
			ct.ClearData, ct.Implicit = fc.clearData, fc.implicit
			tg.TLS = &ct
			c := fc.c
			if fc.clearData || fc.implicit {
				c = renamed{Client: c, name: strings.TrimSuffix(fc.name(), "-"+string(fc.mode))}
			}
			if fc.implicit {
				tg.Port = implicitPort
			}
			if fc.clearData {
				w.clientData = false
			}
			if w.client && w.clientResume == resumeAny {
				w.clientResume = clientResumes(c)
			}
			if err := runFTPSCase(t, topo, srv, p, c, tg, fc.mode, w); errors.Is(err, errHardTimeout) {
				hardTimeouts++
			}
		})
	}
}

// runFTPSCase is runTransferCase (list, 0 B to 10 MiB downloads, two
// uploads, checksums, the mode on the wire) followed by checkFTPSLog on
// ftpalg's lines of the session.
func runFTPSCase(t *testing.T, topo *Topology, srv *Server, p *Proxy, c Client, tgt Target, mode Mode, want ftpsWant) error {
	t.Helper()
	off := p.LogSize()
	if err := runTransferCase(t, topo, srv, p, c, tgt, mode); err != nil || t.Failed() {
		return err
	}
	checkFTPSLog(t, settledLog(t, p, off), want)
	return nil
}

// checkFTPSLog checks ftpalg's log of one or more client sessions: TLS on
// exactly the legs want says, one handshake per data connection on each
// leg that protects data, resumption as want says, every transfer
// finished on path tls (splice when no leg protects data), no failed
// handshake.
func checkFTPSLog(t *testing.T, r tlsLog, want ftpsWant) {
	t.Helper()
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if r.started == 0 {
		bad("no session in ftpalg's log")
	}
	for _, f := range r.failed {
		bad("TLS handshake failed: %s", f.Raw)
	}
	wantPath := "splice"
	if want.clientData || want.serverData {
		wantPath = "tls"
	}
	if len(r.transfers) < 6 {
		bad("%d transfers logged, want at least 6 (LIST, downloads, uploads)", len(r.transfers))
	}
	for _, x := range r.transfers {
		if x.Msg != proxy.MsgTransferFinished || x.Path != wantPath {
			bad("transfer: %q on path %q, want %q on %q", x.Msg, x.Path, proxy.MsgTransferFinished, wantPath)
		}
	}
	for _, leg := range []struct {
		name  string
		on    bool
		data  bool // a data leg: one handshake per transfer
		rsm   resume
		count int
	}{
		{"client", want.client, false, resumeNone, r.started},
		{"server", want.server, false, resumeNone, r.started},
		{"client_data", want.clientData, true, want.clientResume, len(r.transfers)},
		{"server_data", want.serverData, true, want.serverResume, len(r.transfers)},
	} {
		n, resumed := r.legs(leg.name)
		switch {
		case !leg.on && n != 0:
			bad("%d TLS handshakes on leg %s, want none", n, leg.name)
		case leg.on && n != leg.count:
			bad("%d TLS handshakes on leg %s, want %d", n, leg.name, leg.count)
		case leg.rsm == resumeAll && resumed != n:
			bad("leg %s: %d of %d handshakes resumed the control connection's session, want all", leg.name, resumed, n)
		case leg.rsm == resumeNone && resumed != 0:
			bad("leg %s: %d of %d handshakes resumed the control connection's session, want none", leg.name, resumed, n)
		}
	}
	for _, e := range r.established {
		if want.version != "" && e.Version != want.version {
			bad("leg %s: %s, want %s", e.Leg, e.Version, want.version)
		}
	}
	if len(errs) > 0 {
		var lines []string
		for _, l := range r.all {
			lines = append(lines, l.Raw)
		}
		t.Errorf("ftpalg's TLS log for the session:\n  %s\n--- ftpalg log ---\n%s", strings.Join(errs, "\n  "), nstest.Tail(strings.Join(lines, "\n"), 80))
		return
	}
	var summary []string
	for _, leg := range []string{"client", "server", "client_data", "server_data"} {
		if n, resumed := r.legs(leg); n > 0 {
			summary = append(summary, fmt.Sprintf("%s %d (resumed %d)", leg, n, resumed))
		}
	}
	v := ""
	if len(r.established) > 0 {
		v = r.established[0].Version + " " + r.established[0].Cipher + ": "
	}
	t.Logf("TLS %s%s; %d transfers on path %s", v, strings.Join(summary, ", "), len(r.transfers), wantPath)
}

// requireTLSOnly checks, from ns (which can reach the server), that srv
// refuses a plain login: without TLS nothing works there, so a session
// that works through ftpalg spoke TLS to it.
func requireTLSOnly(t *testing.T, ns *nstest.NS, srv *Server, addr string) {
	t.Helper()
	c, err := dialCtl(ns, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("plain control connection to %s: %v", addr, err)
	}
	defer c.Close()
	code, text, err := c.cmd("USER " + srv.User)
	if err == nil && code == 331 {
		code, text, err = c.cmd("PASS " + srv.Pass)
	}
	if err != nil || code/100 == 2 {
		t.Fatalf("%s let a plain client in (reply %q, %v); it must require TLS\n%s", srv.Kind, text, err, c.Transcript())
	}
	t.Logf("%s refuses a plain login: %s", srv.Kind, text)
}

// ftpsProxy starts ftpalg in front of upstream with the lab's TLS flags.
func ftpsProxy(t *testing.T, topo *Topology, v6 bool, upstream string, flags []string) *Proxy {
	t.Helper()
	cfg := ProxyConfig{Listen: proxyListen4, Upstream: upstream, Advertise: FrontClientIP4, DataPorts: proxyDataPorts4, Extra: flags}
	if v6 {
		cfg.Listen, cfg.Advertise, cfg.DataPorts = proxyListen6, FrontClientIP6, proxyDataPorts6
	}
	return StartProxy(t, topo, cfg)
}

// frontTarget is ftpalg's address for clients on the chain topology, with
// the lab's client TLS.
func frontTarget(lab *tlsLab, v6 bool) Target {
	if v6 {
		return Target{Host: FrontClientIP6, Port: 21, IPv6: true, ClientIP: ClientIP6, TLS: lab.clientTLS()}
	}
	return Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4, TLS: lab.clientTLS()}
}

// TestFTPSMatrix: vsftpd with ssl_enable, forced TLS for login and data
// and require_ssl_reuse=YES; ftpalg with --client-tls required and
// --upstream-tls explicit; every client in every mode over IPv4 and IPv6
// (curl's active modes with PROT C toward ftpalg). Every data connection
// to vsftpd resumes ftpalg's control session (vsftpd would refuse it
// otherwise), curl's and lftp's to ftpalg resume theirs, python's do not.
// Then implicit FTPS: clients to ftpalg's --listen-implicit, and ftpalg
// to a second vsftpd with implicit_ssl=YES.
func TestFTPSMatrix(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqVsftpd)
	requireProxy(t)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{})
	srv := StartServer(t, topo, Vsftpd, ServerOptions{IPv6: true, TLS: &ServerTLS{Lab: lab}})
	requireTLSOnly(t, topo.Front, srv, srv.Addr4())
	want := wantBoth
	want.serverResume = resumeAll
	t.Run("v4", func(t *testing.T) {
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "explicit",
			"--listen-implicit", net.JoinHostPort(FrontClientIP4, fmt.Sprint(implicitPort))))
		cases := fullCases(false)
		for _, c := range allClients {
			cases = append(cases, ftpsCase{c: c, mode: EPSV, implicit: true})
		}
		cases = append(cases, ftpsCase{c: pythonClient{}, mode: PORT, implicit: true})
		runFTPSCases(t, topo, srv, p, frontTarget(lab, false), want, cases)
	})
	t.Run("v6", func(t *testing.T) {
		p := ftpsProxy(t, topo, true, proxyUpstream6, lab.proxyFlags("required", "explicit"))
		runFTPSCases(t, topo, srv, p, frontTarget(lab, true), want, fullCases(true))
	})
	t.Run("upstream-implicit", func(t *testing.T) {
		isrv := StartServer(t, topo, Vsftpd, ServerOptions{Port: implicitPort, PasvMin: 40200, PasvMax: 40300,
			TLS: &ServerTLS{Lab: lab, Implicit: true}})
		p := ftpsProxy(t, topo, false, isrv.Addr4(), lab.proxyFlags("required", "implicit"))
		runFTPSCases(t, topo, isrv, p, frontTarget(lab, false), want, []ftpsCase{
			{c: curlClient{}, mode: EPSV}, {c: lftpClient{}, mode: PORT}, {c: pythonClient{}, mode: PASV},
		})
	})
}

// TestFTPSServers: TLS on both legs to proftpd (mod_tls, TLSRequired on,
// session reuse required by default) and pure-ftpd (--tls=2), a subset:
// each client once, passive and active. proftpd is reached through
// --upstream-tls auto (its FEAT lists AUTH TLS), also over IPv6. Its data
// connections resume ftpalg's session (TLS 1.3 tickets); pure-ftpd 1.0.50
// issues no tickets, so none resume, and it does not ask them to.
func TestFTPSServers(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{})
	t.Run("proftpd", func(t *testing.T) {
		requirePrereqs(t, reqProftpd)
		srv := StartServer(t, topo, Proftpd, ServerOptions{IPv6: true, TLS: &ServerTLS{Lab: lab}})
		requireTLSOnly(t, topo.Front, srv, srv.Addr4())
		want := wantBoth
		want.serverResume = resumeAll
		t.Run("v4", func(t *testing.T) {
			p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "auto"))
			runFTPSCases(t, topo, srv, p, frontTarget(lab, false), want, []ftpsCase{
				{c: curlClient{}, mode: EPSV}, {c: lftpClient{}, mode: PORT},
				{c: pythonClient{}, mode: PASV}, {c: pythonClient{}, mode: EPRT},
			})
		})
		t.Run("v6", func(t *testing.T) {
			p := ftpsProxy(t, topo, true, proxyUpstream6, lab.proxyFlags("required", "auto"))
			runFTPSCases(t, topo, srv, p, frontTarget(lab, true), want, []ftpsCase{{c: lftpClient{}, mode: EPSV}})
		})
	})
	t.Run("pureftpd", func(t *testing.T) {
		requirePrereqs(t, reqPureFTPd)
		srv := StartServer(t, topo, PureFTPd, ServerOptions{TLS: &ServerTLS{Lab: lab}})
		requireTLSOnly(t, topo.Front, srv, srv.Addr4())
		want := wantBoth
		want.serverResume = resumeNone
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "explicit"))
		runFTPSCases(t, topo, srv, p, frontTarget(lab, false), want, []ftpsCase{
			{c: curlClient{}, mode: PASV}, {c: lftpClient{}, mode: EPSV},
			{c: pythonClient{}, mode: PORT}, {c: pythonClient{}, mode: EPRT},
		})
	})
}

// TestFTPSOneLeg: TLS on one leg only.
//
//   - offload: TLS clients (explicit, and implicit to --listen-implicit)
//     through ftpalg (--client-tls required) to a vsftpd without any TLS;
//     --upstream-tls auto finds no AUTH TLS in its FEAT and stays plain.
//     A plain USER gets ftpalg's 530.
//   - plain-client: plain clients through ftpalg (--client-tls off: AUTH
//     gets 502) to a vsftpd that requires TLS.
func TestFTPSOneLeg(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqVsftpd)
	requireProxy(t)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{})
	t.Run("offload", func(t *testing.T) {
		srv := StartServer(t, topo, Vsftpd, ServerOptions{IPv6: true})
		t.Run("v4", func(t *testing.T) {
			p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "auto",
				"--listen-implicit", net.JoinHostPort(FrontClientIP4, fmt.Sprint(implicitPort))))
			c, err := dialCtl(topo.Client, p.Listen, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.expect("USER "+srv.User, 530); err != nil {
				t.Errorf("plain USER with --client-tls required: %v\n%s", err, c.Transcript())
			}
			c.Close()
			off := p.LogSize()
			runFTPSCases(t, topo, srv, p, frontTarget(lab, false), wantOffload, []ftpsCase{
				{c: curlClient{}, mode: EPSV}, {c: lftpClient{}, mode: PORT},
				{c: pythonClient{}, mode: PASV}, {c: pythonClient{}, mode: EPRT},
				{c: curlClient{}, mode: EPSV, implicit: true}, {c: pythonClient{}, mode: PORT, implicit: true},
			})
			if n := len(parseTLSLog(p.LogSince(off)).find(proxy.MsgTLSUpstreamPlain)); n == 0 {
				t.Errorf("ftpalg never logged %q (--upstream-tls auto toward a server without TLS)", proxy.MsgTLSUpstreamPlain)
			}
		})
		t.Run("v6", func(t *testing.T) {
			p := ftpsProxy(t, topo, true, proxyUpstream6, lab.proxyFlags("required", "off"))
			runFTPSCases(t, topo, srv, p, frontTarget(lab, true), wantOffload, []ftpsCase{
				{c: lftpClient{}, mode: EPRT}, {c: curlClient{}, mode: EPSV},
			})
		})
	})
	t.Run("plain-client", func(t *testing.T) {
		srv := StartServer(t, topo, Vsftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}})
		requireTLSOnly(t, topo.Front, srv, srv.Addr4())
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("off", "explicit"))
		c, err := dialCtl(topo.Client, p.Listen, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.expect("AUTH TLS", 502); err != nil {
			t.Errorf("AUTH TLS with --client-tls off: %v\n%s", err, c.Transcript())
		}
		c.Close()
		want := wantUpstream
		want.serverResume = resumeAll
		tgt := frontTarget(lab, false)
		tgt.TLS = nil
		for _, fc := range []ftpsCase{{c: curlClient{}, mode: PASV}, {c: curlClient{}, mode: EPRT},
			{c: lftpClient{}, mode: PORT}, {c: pythonClient{}, mode: EPSV}} {
			t.Run(fc.name(), func(t *testing.T) {
				runFTPSCase(t, topo, srv, p, fc.c, tgt, fc.mode, want)
			})
		}
	})
}

// TestFTPSPinholes: TLS on both legs (vsftpd with TLS on the host's
// loopback) through ftpalg with --firewall ipset behind the host's
// default-DROP INPUT chain: the clients' data connections get in only
// through the pinholes ftpalg opens after reading the (decrypted) PASV,
// EPSV, PORT and EPRT. A Go client over TLS then shows the one-connection
// rule: exactly one pinhole, for exactly the client; an intruder's SYN is
// dropped; after the one transfer the pinhole is gone. Afterwards no
// pinhole is left and SIGTERM restores the host's rules.
func TestFTPSPinholes(t *testing.T) {
	requirePinholePrereqs(t)
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqVsftpd)
	requireProxy(t)
	lab := newTLSLab(t)
	h := NewHostTopology(t)
	srv := h.StartUpstream(t, Vsftpd, ServerOptions{IPv6: true, TLS: &ServerTLS{Lab: lab}})
	want := wantBoth
	want.serverResume = resumeAll
	for _, v6 := range []bool{false, true} {
		tgt := hostTarget(v6)
		tgt.TLS = lab.clientTLS()
		t.Run(tgt.Family(), func(t *testing.T) {
			p := h.StartPinholeProxy(t, srv, "ipset", pinholeProxyOpts{V6: v6, Extra: lab.proxyFlags("required", "explicit")})
			cases := []ftpsCase{{c: lftpClient{}, mode: EPSV}, {c: pythonClient{}, mode: EPRT}}
			if !v6 {
				cases = []ftpsCase{{c: curlClient{}, mode: PASV}, {c: lftpClient{}, mode: PORT},
					{c: pythonClient{}, mode: EPSV}, {c: curlClient{}, mode: EPRT, clearData: true}}
			}
			runFTPSCases(t, h.Topology(), srv, p, tgt, want, cases)
			t.Run("intruder", func(t *testing.T) { ftpsPinholeCase(t, h, lab, srv, p, v6) })
			requireNoPinholes(t, h, "ipset", v6, 2*time.Second)
			checkProxyLog(t, p, 0)
			h.StopProxyClean(t, p)
		})
	}
}

// ftpsPinholeCase is pinholeIntruderCase over TLS: a Go client logs in
// over TLS (PROT P), sends EPSV, and ftpalg's pinhole must admit exactly
// it; the intruder's SYN is dropped; the client's TLS data connection
// (resuming its control session) carries small.bin whole; then the
// pinhole is gone and the client's own SYN is dropped.
func ftpsPinholeCase(t *testing.T, h *HostTopology, lab *tlsLab, srv *Server, p *Proxy, v6 bool) {
	clientIP, _, hostIP := pinholeAddrs(v6)
	off := p.LogSize()
	c, err := dialCtl(h.Client, p.Listen, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Close()
		if t.Failed() {
			t.Logf("--- control transcript ---\n%s\n--- ftpalg log ---\n%s", c.Transcript(), nstest.Tail(p.LogSince(off), 60))
		}
	}()
	cfg := lab.clientConfig(hostIP.String())
	if err := c.startTLS(cfg, "P"); err != nil {
		t.Fatalf("TLS: %v", err)
	}
	if err := c.login(srv.User, srv.Pass); err != nil {
		t.Fatalf("login: %v", err)
	}
	data, err := c.passive(EPSV)
	if err != nil {
		t.Fatal(err)
	}
	if data.Addr() != hostIP {
		t.Fatalf("EPSV announced %s, want the host address %s", data, hostIP)
	}
	h.RequirePinhole(t, "ipset", clientIP, data)
	if got, conn := knock(h.Intruder, data, knockTimeout); got != "timeout" {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("intruder's connect to the open pinhole %s: %s, want timeout (SYN dropped)", data, got)
	}
	got, dc := knock(h.Client, data, 5*time.Second)
	if got != "connected" {
		t.Fatalf("client's connect to its pinhole %s: %s", data, got)
	}
	n, sum, err := c.retr(tls.Client(dc, cfg), "small.bin")
	if want := srv.Files["small.bin"]; err != nil || n != want.Size || sum != want.SHA256 {
		t.Errorf("RETR small.bin over TLS: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", n, short(sum), err, want.Size, short(want.SHA256))
	}
	h.WaitPinholeGone(t, "ipset", data, 2*time.Second, false)
	if got, conn := knock(h.Client, data, knockTimeout); got != "timeout" {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("client's connect to %s after the transfer: %s, want timeout (pinhole closed)", data, got)
	}
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	r := settledLog(t, p, off)
	if n, resumed := r.legs("client_data"); n != 1 || resumed != 1 {
		t.Errorf("client_data handshakes %d (resumed %d), want 1 resumed", n, resumed)
	}
	if n, resumed := r.legs("server_data"); n != 1 || resumed != 1 {
		t.Errorf("server_data handshakes %d (resumed %d), want 1 resumed", n, resumed)
	}
	checkProxyLog(t, p, off)
}

// TestFTPSReuse: session resumption on data connections, through ftpalg.
//
//   - require-tls-reuse: with --require-tls-reuse ftpalg refuses a
//     protected data connection that does not resume the client's control
//     session, as vsftpd does: lftp and curl resume and work; python's
//     ftplib does not resume and gets 522 (without the flag it works: see
//     TestFTPSMatrix).
//   - proftpd-tls12: ftpalg's data connections resume with session tickets
//     only (Go's crypto/tls has no session-ID resumption). proftpd limited
//     to TLS 1.2 (TLSProtocol TLSv1.2) issues no tickets by default
//     (TLSSessionTickets off), so its default reuse requirement refuses
//     every data connection from ftpalg; with TLSSessionTickets on they
//     resume and work. (With TLS 1.3, the default, proftpd and vsftpd
//     issue tickets: TestFTPSMatrix, TestFTPSServers.)
func TestFTPSReuse(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{})
	t.Run("require-tls-reuse", func(t *testing.T) {
		requirePrereqs(t, reqVsftpd)
		srv := StartServer(t, topo, Vsftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}})
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "explicit", "--require-tls-reuse"))
		want := wantBoth
		want.serverResume = resumeAll
		runFTPSCases(t, topo, srv, p, frontTarget(lab, false), want, []ftpsCase{
			{c: lftpClient{}, mode: EPSV}, {c: curlClient{}, mode: PASV},
		})
		t.Run("python", func(t *testing.T) {
			off := p.LogSize()
			res := pythonClient{}.Run(context.Background(), topo.Client, Session{
				Target: frontTarget(lab, false), User: srv.User, Pass: srv.Pass, Mode: EPSV,
				Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 20 * time.Second,
			})
			r := settledLog(t, p, off)
			if res.Err == nil || !strings.Contains(res.Log, "522 Data connection refused: TLS session reuse required") {
				t.Errorf("python's ftplib (which does not resume) got no 522 from ftpalg with --require-tls-reuse (err %v)\n%s", res.Err, nstest.Tail(res.Log, 30))
			}
			if len(r.find(proxy.MsgTLSNotResumed)) != 1 {
				t.Errorf("ftpalg did not log %q once\n%s", proxy.MsgTLSNotResumed, nstest.Tail(p.LogSince(off), 40))
			}
			if n, resumed := r.legs("client_data"); n != 1 || resumed != 0 {
				t.Errorf("client_data handshakes %d (resumed %d), want 1 not resumed", n, resumed)
			}
			t.Logf("python ftplib with --require-tls-reuse: %s", lastLine(res.Log, "522"))
		})
	})
	t.Run("proftpd-tls12", func(t *testing.T) {
		requirePrereqs(t, reqProftpd)
		srv := StartServer(t, topo, Proftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}, Config: "TLSProtocol TLSv1.2\n"})
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("off", "explicit"))
		off := p.LogSize()
		plain := frontTarget(lab, false)
		plain.TLS = nil
		res := curlClient{}.Run(context.Background(), topo.Client, Session{
			Target: plain, User: srv.User, Pass: srv.Pass, Mode: EPSV,
			Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 20 * time.Second,
		})
		r := settledLog(t, p, off)
		if res.Err == nil {
			t.Errorf("LIST worked although proftpd requires reuse and issues no TLS 1.2 tickets")
		}
		if n, resumed := r.legs("server_data"); n != 1 || resumed != 0 {
			t.Errorf("server_data handshakes %d (resumed %d), want 1 not resumed", n, resumed)
		}
		for _, e := range r.established {
			if e.Version != "TLS 1.2" {
				t.Errorf("leg %s negotiated %s, want TLS 1.2", e.Leg, e.Version)
			}
		}
		if len(r.transfers) != 1 || r.transfers[0].Msg == proxy.MsgTransferFinished || !strings.Contains(r.transfers[0].Hint, "did not resume") {
			t.Errorf("ftpalg's transfer line does not report the failure with the hint on resumption: %s", transferLines(r))
		}
		if logs := srv.Logs(); !strings.Contains(logs, "client did not reuse TLS session") {
			t.Errorf("proftpd's TLS log does not say it refused the data connection for want of reuse:\n%s", logs)
		}
		t.Logf("proftpd TLS 1.2 without tickets: curl got %q (%v); ftpalg: %s", lastLine(res.Log, "< 425"), res.Err, transferLines(r))
		if t.Failed() {
			t.Logf("--- curl ---\n%s\n--- ftpalg ---\n%s", nstest.Tail(res.Log, 40), nstest.Tail(p.LogSince(off), 40))
		}
	})
	t.Run("proftpd-tls12-tickets", func(t *testing.T) {
		requirePrereqs(t, reqProftpd)
		srv := StartServer(t, topo, Proftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}, Config: "TLSProtocol TLSv1.2\nTLSSessionTickets on\n"})
		p := ftpsProxy(t, topo, false, proxyUpstream4, lab.proxyFlags("required", "explicit"))
		want := wantBoth
		want.serverResume = resumeAll
		runFTPSCases(t, topo, srv, p, frontTarget(lab, false), want, []ftpsCase{{c: lftpClient{}, mode: EPSV}})
	})
}

// transferLines summarizes the transfer lines of r.
func transferLines(r tlsLog) string {
	var s []string
	for _, x := range r.transfers {
		s = append(s, fmt.Sprintf("%s (code %d, path %s)", x.Msg, x.Code, x.Path))
	}
	return strings.Join(s, "; ")
}

// lastLine returns the last line of log that contains sub.
func lastLine(log, sub string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

// TestFTPSDirect is the control group, the clients straight to vsftpd with
// TLS (require_ssl_reuse=YES) over a routed front host, no ftpalg:
//
//   - python's ftplib.FTP_TLS logs in but its first data connection gets
//     "522 SSL connection failed: session reuse required" (ftplib never
//     resumes): through ftpalg, which resumes toward the server, it works
//     (TestFTPSMatrix).
//   - curl 7.88 in active mode with protected data accepts vsftpd's data
//     connection and never starts TLS on it, then times out: curl bug
//     #10666 (the SSL filter was lost for active FTP in 7.87.0; fixed in
//     8.0.0, PR #10669). So curl's PORT/EPRT cases use PROT C. If this
//     ever passes, the curl on the machine is fixed: give curl's active
//     cases protected data in fullCases.
//   - lftp does active mode with protected data fine.
func TestFTPSDirect(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqVsftpd)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{Forwarding: true, ServerRouteToClient: true, ClientRouteToServer: true})
	srv := StartServer(t, topo, Vsftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}})
	direct := Target{Host: ServerIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: ServerIP4, TLS: lab.clientTLS()}
	run := func(t *testing.T, c Client, mode Mode, timeout time.Duration) Result {
		return c.Run(context.Background(), topo.Client, Session{
			Target: direct, User: srv.User, Pass: srv.Pass, Mode: mode,
			Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: timeout,
		})
	}
	t.Run("python-reuse", func(t *testing.T) {
		res := run(t, pythonClient{}, EPSV, 20*time.Second)
		if res.Err == nil || !strings.Contains(res.Log, "522 SSL connection failed: session reuse required") {
			t.Errorf("python's ftplib against require_ssl_reuse=YES: err %v, want 522 session reuse required\n%s", res.Err, nstest.Tail(res.Log, 30))
		}
		t.Logf("direct: %s", lastLine(res.Log, "522"))
	})
	t.Run("curl-port-hangs", func(t *testing.T) {
		// --max-time 4: curl gives up by itself, well before the hard
		// timeout.
		res := run(t, curlClient{}, PORT, 4*time.Second)
		switch {
		case res.Err == nil:
			t.Errorf("curl's active-mode FTPS with protected data works now (curl bug #10666 fixed?): give curl's PORT/EPRT cases PROT P in fullCases\n%s", nstest.Tail(res.Log, 30))
		case errors.Is(res.Err, errHardTimeout):
			t.Errorf("curl hung past its own --max-time: %v", res.Err)
		case !strings.Contains(res.Log, "Connection accepted from server") || !strings.Contains(res.Log, "curl: (28)"):
			t.Errorf("curl failed differently than known (accepts the data connection, then times out without TLS on it): %v\n%s", res.Err, nstest.Tail(res.Log, 30))
		default:
			t.Logf("known curl 7.88 bug reproduced: %s", lastLine(res.Log, "curl: (28)"))
		}
	})
	t.Run("lftp-port", func(t *testing.T) {
		res := run(t, lftpClient{}, PORT, 20*time.Second)
		if res.Err != nil || !strings.Contains(res.Listing, "big.bin") {
			t.Errorf("lftp active FTPS direct: %v\n%s", res.Err, nstest.Tail(res.Log, 30))
		}
	})
}

// TestFTPSVerify: ftpalg cannot verify the server's certificate, signed by
// an authority it does not trust (--upstream-ca of another authority), or
// for another name (--upstream-server-name): the client's greeting is a
// 421 that names the problem, python's ftplib reports it as such, and
// ftpalg logs the handshake failure with the x509 error.
func TestFTPSVerify(t *testing.T) {
	requirePrereqs(t, reqPython, reqVsftpd)
	requireProxy(t)
	lab := newTLSLab(t)
	topo := NewTopology(t, TopoOptions{})
	srv := StartServer(t, topo, Vsftpd, ServerOptions{TLS: &ServerTLS{Lab: lab}})
	for _, tc := range []struct {
		name    string
		flags   []string
		reply   string // in the 421
		x509err string // in ftpalg's log line
	}{
		{"wrong-ca", []string{"--upstream-ca", lab.OtherCAFile}, "its certificate is signed by an authority not trusted here", "certificate signed by unknown authority"},
		{"wrong-name", []string{"--upstream-server-name", "wrong.example.org"}, "its certificate is for another name", "not wrong.example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := StartProxy(t, topo, ProxyConfig{Listen: proxyListen4, Upstream: proxyUpstream4, Advertise: FrontClientIP4,
				DataPorts: proxyDataPorts4, Extra: lab.proxyFlags("required", "explicit", tc.flags...), NoWait: true})
			code, text := greetingWhenUp(t, topo.Client, p)
			if code != 421 || !strings.Contains(text, tc.reply) {
				t.Errorf("greeting %q, want 421 saying %q", text, tc.reply)
			}
			res := pythonClient{}.Run(context.Background(), topo.Client, Session{
				Target: frontTarget(lab, false), User: srv.User, Pass: srv.Pass, Mode: EPSV,
				Ops: []Op{{Kind: OpList}}, WorkDir: t.TempDir(), Timeout: 20 * time.Second,
			})
			if res.Err == nil || !strings.Contains(res.Log, "error_temp: 421 Service not available: TLS with the FTP server failed: "+tc.reply) {
				t.Errorf("python's ftplib: err %v, want error_temp 421 naming the problem\n%s", res.Err, nstest.Tail(res.Log, 20))
			}
			r := parseTLSLog(p.Log())
			var found bool
			for _, f := range r.failed {
				found = found || f.Leg == "server" && f.Level == "warn" && strings.Contains(f.Error, tc.x509err)
			}
			if !found {
				t.Errorf("ftpalg logged no warning %q on leg server with %q:\n%s", proxy.MsgTLSFailed, tc.x509err, nstest.Tail(p.Log(), 20))
			}
			if n, _ := r.legs("client"); n != 0 {
				t.Errorf("ftpalg shook hands with the client although the server failed")
			}
			t.Logf("client sees: %s", text)
		})
	}
}

// greetingWhenUp waits (bounded) until p accepts connections from ns and
// returns the first reply a client gets.
func greetingWhenUp(t *testing.T, ns *nstest.NS, p *Proxy) (int, string) {
	t.Helper()
	end := time.Now().Add(15 * time.Second)
	for {
		if err := p.Alive(); err != nil {
			t.Fatal(err)
		}
		c, err := dial(ns, p.Listen, time.Second)
		if err == nil {
			f := &ctlConn{ns: ns, c: c, r: bufio.NewReader(c), wait: 20 * time.Second}
			defer f.Close()
			code, text, err := f.reply()
			if err != nil {
				t.Fatalf("no greeting from ftpalg: %v", err)
			}
			return code, text
		}
		if time.Now().After(end) {
			t.Fatalf("ftpalg not listening on %s after 15 s: %v", p.Listen, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
