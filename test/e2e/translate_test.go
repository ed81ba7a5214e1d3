//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// Protocol translation tests (issue #5): ftpalg between clients and servers
// of different address families, and in front of a server that refuses
// EPSV/EPRT. What the client saw is read from its transcript; what the
// server was sent is read from ftpalg's debug log and, for vsftpd and
// proftpd, from the server's own command log.

// Proxies of the translation tests. The data port range tells the proxy's
// data ports (a 227/229 the client gets) from the server's (40000-40100).
const (
	xlatDataMin = 52000
	xlatDataMax = 52999
)

var xlatDataPorts = fmt.Sprintf("%d-%d", xlatDataMin, xlatDataMax)

// xlatHangs counts the translation tests' clients that had to be killed
// (the tests run one after the other); after maxHardTimeouts the remaining
// cases fail at once instead of each waiting caseTimeout.
var xlatHangs int

// TestTranslateV6ClientV4Server: an IPv6 client through ftpalg on
// [2001:db8:1::1]:21 to a server that listens on 192.0.2.10:21 only. curl,
// lftp and python ftplib transfer in EPSV and EPRT; the client only ever
// sees 229 replies with the proxy's data ports and sends EPRT |2| with its
// own address; the server is sent PASV/EPSV and PORT/EPRT |1| with the
// proxy's IPv4 address, never anything IPv6.
func TestTranslateV6ClientV4Server(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := NewTopology(t, TopoOptions{})
			srv := StartServer(t, topo, kind, ServerOptions{}) // IPv4 only
			p := StartProxy(t, topo, ProxyConfig{
				Listen: proxyListen6, Upstream: proxyUpstream4,
				Advertise: FrontClientIP6, DataPorts: xlatDataPorts,
			})
			tgt := Target{Host: FrontClientIP6, Port: 21, IPv6: true, ClientIP: ClientIP6}
			for _, c := range allClients {
				for _, mode := range []Mode{EPSV, EPRT} {
					t.Run(c.Name()+"-"+string(mode), func(t *testing.T) {
						x := runXlatCase(t, topo, srv, p, c, tgt, mode)
						x.checkClientSaw(t, mode)
						for _, cmd := range x.upstream {
							if !validV4Upstream(cmd, mode) {
								t.Errorf("the IPv4 server was sent %q (client mode %s)", cmd, mode.Command())
							}
						}
						x.checkUpstreamSeen(t, mode)
						x.report(t)
					})
				}
			}
		})
	}
}

// TestTranslateV4ClientV6Server: an IPv4 client through ftpalg on
// 198.51.100.1:21 to a server that listens on [2001:db8:2::10]:21 only.
// Every client in every IPv4 mode transfers; 227 replies carry the
// advertised address; the server is never sent PASV or PORT, only EPSV and
// EPRT |2| with the proxy's IPv6 address.
func TestTranslateV4ClientV6Server(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := NewTopology(t, TopoOptions{})
			srv := StartServer(t, topo, kind, ServerOptions{IPv6Only: true})
			p := StartProxy(t, topo, ProxyConfig{
				Listen: proxyListen4, Upstream: proxyUpstream6,
				Advertise: FrontClientIP4, DataPorts: xlatDataPorts,
			})
			tgt := Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4}
			for _, c := range allClients {
				for _, mode := range allModes {
					if ok, _ := c.Supports(mode, false); !ok {
						continue
					}
					t.Run(c.Name()+"-"+string(mode), func(t *testing.T) {
						x := runXlatCase(t, topo, srv, p, c, tgt, mode)
						x.checkClientSaw(t, mode)
						for _, cmd := range x.upstream {
							if !validV6Upstream(cmd) {
								t.Errorf("the IPv6 server was sent %q (client mode %s)", cmd, mode.Command())
							}
						}
						x.checkUpstreamSeen(t, mode)
						x.report(t)
					})
				}
			}
		})
	}
}

// proftpdNoEPSV makes proftpd a server without EPSV and EPRT: it answers
// them (and EPSV ALL) "501 EPSV: Operation not permitted" and leaves them
// out of its FEAT reply.
const proftpdNoEPSV = "<Limit EPSV EPRT>\n  DenyAll\n</Limit>\n"

// TestTranslateServerWithoutEPSV: clients that insist on EPSV and EPRT
// (curl's defaults, lftp with ftp:prefer-epsv yes, python ftplib told to)
// through ftpalg to proftpd with EPSV and EPRT denied. Every transfer
// works and the client only ever sees 229 and 200 to EPRT (no fallback of
// its own); the server is sent PASV and PORT instead: at most one EPSV or
// EPRT per session reaches it (the proxy learns from the refusal), none
// after a FEAT (which lacks them, and which the client gets with EPSV and
// EPRT added).
func TestTranslateServerWithoutEPSV(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqProftpd)
	requireProxy(t)
	topo := NewTopology(t, TopoOptions{})
	srv := StartServer(t, topo, Proftpd, ServerOptions{Config: proftpdNoEPSV}) // IPv4 only
	t.Run("v4", func(t *testing.T) {
		p := StartProxy(t, topo, ProxyConfig{
			Listen: proxyListen4, Upstream: proxyUpstream4,
			Advertise: FrontClientIP4, DataPorts: xlatDataPorts,
		})
		noEPSVCases(t, topo, srv, p, Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4})
	})
	// An IPv6 client on top: EPSV and EPRT |2| become PASV and PORT.
	t.Run("v6", func(t *testing.T) {
		p := StartProxy(t, topo, ProxyConfig{
			Listen: proxyListen6, Upstream: proxyUpstream4,
			Advertise: FrontClientIP6, DataPorts: xlatDataPorts,
		})
		noEPSVCases(t, topo, srv, p, Target{Host: FrontClientIP6, Port: 21, IPv6: true, ClientIP: ClientIP6})
	})
}

// noEPSVCases runs the EPSV and EPRT clients of
// TestTranslateServerWithoutEPSV through p.
func noEPSVCases(t *testing.T, topo *Topology, srv *Server, p *Proxy, tgt Target) {
	for _, c := range allClients {
		for _, mode := range []Mode{EPSV, EPRT} {
			if ok, _ := c.Supports(mode, tgt.IPv6); !ok {
				continue // lftp sends PORT over IPv4, never EPRT
			}
			t.Run(c.Name()+"-"+string(mode), func(t *testing.T) {
				x := runXlatCase(t, topo, srv, p, c, tgt, mode)
				x.checkClientSaw(t, mode)
				x.checkUpstreamSeen(t, mode)
				want := map[Mode]string{EPSV: "PASV", EPRT: "PORT"}[mode]
				refused := 0
				for _, cmd := range x.upstream {
					verb, _, _ := strings.Cut(cmd, " ")
					switch {
					case strings.HasSuffix(cmd, refusedMark) && (verb == "EPSV" || verb == "EPRT"):
						refused++
					case strings.HasSuffix(cmd, refusedMark):
						t.Errorf("server refused %q (client mode %s)", strings.TrimSuffix(cmd, refusedMark), mode.Command())
					case verb != want || !validV4Upstream(cmd, mode):
						t.Errorf("server was sent %q (client mode %s), want only %s", cmd, mode.Command(), want)
					}
				}
				// The server's own log: every EPSV/EPRT it got was
				// refused, the transfers used PASV/PORT.
				for _, cmd := range x.srvCmds {
					verb, _, _ := strings.Cut(cmd, " ")
					if (verb == "EPSV" || verb == "EPRT") != strings.HasSuffix(cmd, refusedMark) {
						t.Errorf("proftpd logged %q", cmd)
					}
				}
				sentFEAT := regexp.MustCompile(`(?m)^(?:> |---> |\*cmd\* ')FEAT\b`).MatchString(x.res.Log)
				switch {
				case sentFEAT && refused > 0:
					t.Errorf("after a FEAT without EPSV/EPRT the server was still sent %d of them: %v", refused, x.upstream)
				case refused > 1:
					t.Errorf("the server was sent %d refused EPSV/EPRT in one session (%v): the proxy should learn from the first", refused, x.upstream)
				}
				if sentFEAT {
					for _, f := range []string{"EPSV", "EPRT"} {
						if !regexp.MustCompile(`(?m)^(?:< |<--- |\*resp\* ')\s*` + f + `\s*$`).MatchString(x.res.Log) {
							t.Errorf("the client's FEAT reply does not list %s", f)
						}
					}
				}
				x.report(t)
			})
		}
	}
}

// TestTranslateEPSVAll: a client sends EPSV ALL, then PORT, EPRT and PASV,
// then downloads with EPSV; against vsftpd, which implements EPSV ALL, and
// against proftpd with EPSV denied, which refuses it; once right after
// login and once after a FEAT (from which the proxy learns that proftpd
// lacks EPSV). The client gets 2xx to EPSV ALL in every case, the proxy's
// "501 ... not allowed after EPSV ALL" to PORT, EPRT and PASV (which never
// reach the server), and the EPSV download arrives intact.
func TestTranslateEPSVAll(t *testing.T) {
	requirePrereqs(t)
	requireProxy(t)
	for _, tc := range []struct {
		name   string
		kind   ServerKind
		config string
	}{
		{"vsftpd", Vsftpd, ""},
		{"proftpd-no-epsv", Proftpd, proftpdNoEPSV},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requirePrereqs(t, tc.kind.requirement())
			topo := NewTopology(t, TopoOptions{})
			srv := StartServer(t, topo, tc.kind, ServerOptions{Config: tc.config})
			p := StartProxy(t, topo, ProxyConfig{
				Listen: proxyListen4, Upstream: proxyUpstream4,
				Advertise: FrontClientIP4, DataPorts: xlatDataPorts,
			})
			for _, feat := range []bool{false, true} {
				name := "no-feat"
				// What the server must get: EPSV ALL (vsftpd accepts it,
				// proftpd refuses it and then EPSV, so the proxy asks for
				// PASV), or after a FEAT without EPSV nothing but PASV.
				want := []string{"EPSV ALL", "EPSV"}
				honoured := false // the proxy answers a refused EPSV ALL itself
				if feat {
					name = "feat"
				}
				if tc.kind == Proftpd {
					if feat {
						want = []string{"PASV"}
					} else {
						want = []string{"EPSV ALL" + refusedMark, "EPSV" + refusedMark, "PASV"}
						honoured = true
					}
				}
				t.Run(name, func(t *testing.T) {
					epsvAllSession(t, topo, srv, p, feat, want, honoured)
				})
			}
		})
	}
}

// epsvAllSession runs one EPSV ALL session (see TestTranslateEPSVAll) and
// checks the data commands the server got against want.
func epsvAllSession(t *testing.T, topo *Topology, srv *Server, p *Proxy, feat bool, want []string, honoured bool) {
	logOff := p.LogSize()
	mark := srv.cmdLogMark()
	c, err := dialCtl(topo.Client, proxyListen4, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- control transcript ---\n%s", c.Transcript())
			t.Logf("--- ftpalg log ---\n%s", nstest.Tail(p.LogSince(logOff), 80))
			t.Logf("--- server command log ---\n%s", nstest.Tail(srv.cmdLogSince(mark), 60))
		}
	})
	if err := c.login(srv.User, srv.Pass); err != nil {
		t.Fatal(err)
	}
	if feat {
		// FEAT lists EPSV and EPRT, also where the proxy provides them.
		before := len(c.Transcript())
		if _, err := c.expect("FEAT", 211); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"EPSV", "EPRT"} {
			if !regexp.MustCompile(`(?m)^< +` + f + `\s*$`).MatchString(c.Transcript()[before:]) {
				t.Errorf("FEAT reply does not list %s", f)
			}
		}
	}
	code, text, err := c.cmd("EPSV ALL")
	if err != nil || code/100 != 2 {
		t.Fatalf("EPSV ALL: %d %q, %v; want 2xx", code, text, err)
	}
	for _, cmd := range []string{
		"PORT " + strings.ReplaceAll(ClientIP4, ".", ",") + ",200,10",
		"EPRT |1|" + ClientIP4 + "|51210|",
		"PASV",
	} {
		code, text, err := c.cmd(cmd)
		verb, _, _ := strings.Cut(cmd, " ")
		if err != nil || code != 501 || !strings.Contains(text, verb+" not allowed after EPSV ALL") {
			t.Errorf("%s after EPSV ALL: %d %q, %v; want 501 %s not allowed after EPSV ALL", verb, code, text, err, verb)
		}
	}
	addr, err := c.passive(EPSV)
	if err != nil {
		t.Fatal(err)
	}
	if addr.Port() < xlatDataMin || addr.Port() > xlatDataMax {
		t.Errorf("229 announces port %d, not one of the proxy's (%s)", addr.Port(), xlatDataPorts)
	}
	dc, err := c.dialData(addr)
	if err != nil {
		t.Fatalf("data connection to %v: %v", addr, err)
	}
	n, sum, err := c.retr(dc, "small.bin")
	if err != nil {
		t.Fatal(err)
	}
	if w := srv.Files["small.bin"]; n != w.Size || sum != w.SHA256 {
		t.Errorf("small.bin: got %d bytes sha256 %s, want %d bytes sha256 %s", n, short(sum), w.Size, short(w.SHA256))
	}
	if err := c.quit(); err != nil {
		t.Error(err)
	}

	got := serverDataCommands(srv.Kind, srv.cmdLogSince(mark))
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("server's data commands: %q, want %q", got, want)
	}
	plog := p.LogSince(logOff)
	if n := strings.Count(plog, `"msg":"`+proxy.MsgEPSVAllRefused+`"`); n != 3 {
		t.Errorf("ftpalg logged %d refusals after EPSV ALL, want 3", n)
	}
	if h := strings.Contains(plog, `"msg":"`+proxy.MsgEPSVAllHonoured+`"`); h != honoured {
		t.Errorf("ftpalg logged %q: %v, want %v", proxy.MsgEPSVAllHonoured, h, honoured)
	}
	if !t.Failed() {
		t.Logf("EPSV ALL answered %d %q; the server got %q", code, text, got)
	}
}

// ---------------------------------------------------------------- one case

// xlatCase is the outcome of one client session through the proxy.
type xlatCase struct {
	tgt      Target
	res      Result
	elapsed  time.Duration
	proxyLog string   // ftpalg's log during the session
	upstream []string // data commands ftpalg sent the server (from its log)
	srvLog   string   // the server's command log during the session
	srvCmds  []string // data commands in it ("" log: not available)
	srv      *Server
}

// runXlatCase runs the matrix session (list, download the standard files,
// upload small.bin and big.bin) with c in mode and checks every checksum
// and that the client used only mode.
func runXlatCase(t *testing.T, topo *Topology, srv *Server, p *Proxy, c Client, tgt Target, mode Mode) *xlatCase {
	t.Helper()
	requirePrereqs(t, clientRequirement(c))
	if xlatHangs >= maxHardTimeouts {
		t.Fatalf("not run: %d earlier clients of the translation tests hung until killed", xlatHangs)
	}
	work := t.TempDir()
	prefix := fmt.Sprintf("%s-%s-%s-", c.Name(), tgt.Family(), mode)
	ops := []Op{{Kind: OpList}}
	for _, f := range standardFiles {
		ops = append(ops, Op{Kind: OpGet, Remote: f.name, Local: filepath.Join(work, "dl-"+f.name)})
	}
	uploads := []string{"small.bin", "big.bin"}
	for _, name := range uploads {
		ops = append(ops, Op{Kind: OpPut, Local: filepath.Join(srv.Root, name), Remote: uploadDirName + "/" + prefix + name})
	}

	logOff := p.LogSize()
	mark := srv.cmdLogMark()
	start := time.Now()
	res := c.Run(context.Background(), topo.Client, Session{
		Target: tgt, User: srv.User, Pass: srv.Pass, Mode: mode, Ops: ops,
		WorkDir: work, Timeout: caseTimeout,
	})
	x := &xlatCase{tgt: tgt, res: res, elapsed: time.Since(start), srv: srv}
	if errors.Is(res.Err, errHardTimeout) {
		xlatHangs++
	}
	// The proxy logs a session's end after the client has gone; what the
	// checks need (the data commands) was logged before the replies the
	// client waited for.
	x.proxyLog = p.LogSince(logOff)
	x.upstream = upstreamDataCommands(x.proxyLog)
	x.srvLog = srv.cmdLogSince(mark)
	x.srvCmds = serverDataCommands(srv.Kind, x.srvLog)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s transcript ---\n%s", c.Name(), nstest.Tail(res.Log, 150))
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(x.proxyLog, 150))
			t.Logf("--- server command log during this case ---\n%s", nstest.Tail(x.srvLog, 80))
			t.Logf("--- server logs ---\n%s", srv.Logs())
		}
	})

	if res.Err != nil {
		t.Errorf("%s (%s over %s) failed after %v: %v", c.Name(), mode.Command(), tgt.Family(), x.elapsed.Round(time.Millisecond), res.Err)
	}
	if err := checkModeUsed(res.Log, mode); err != nil {
		t.Error(err)
	}
	for _, f := range standardFiles {
		if !strings.Contains(res.Listing, f.name) {
			t.Errorf("listing lacks %s", f.name)
		}
		if err := checkFile(filepath.Join(work, "dl-"+f.name), srv.Files[f.name]); err != nil {
			t.Errorf("download %s: %v", f.name, err)
		}
	}
	for _, name := range uploads {
		if err := checkFile(filepath.Join(srv.UploadDir, prefix+name), srv.Files[name]); err != nil {
			t.Errorf("upload %s: %v", name, err)
		}
	}
	if err := srv.Alive(); err != nil {
		t.Error(err)
	}
	if err := p.Alive(); err != nil {
		t.Error(err)
	}
	return x
}

func (x *xlatCase) report(t *testing.T) {
	t.Helper()
	if !t.Failed() {
		own := "none"
		if x.srv.cmdLogs != nil {
			own = summarize(x.srvCmds)
		}
		t.Logf("ok in %v; client sent %v, the server was sent %s (its own log: %s)",
			x.elapsed.Round(time.Millisecond), dataCommands(x.res.Log), summarize(x.upstream), own)
	}
}

// Client transcripts: replies as curl "< 229 ...", lftp "<--- 229 ...",
// ftplib "*resp* '229 ...'"; EPRT commands likewise.
var (
	dataReplyRE = regexp.MustCompile(`(?m)^(?:< |<--- |\*resp\* ['"])(22[789]) ([^\n]*)`)
	eprtCmdRE   = regexp.MustCompile(`(?m)^(?:> |---> |\*cmd\* ')EPRT ([^'\n]*)`)
	portOf229RE = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
	portOf227RE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
)

// checkClientSaw checks the data-connection replies and commands in the
// client's transcript: passive replies only in the form asked for, with a
// port of the proxy's (and for 227 the advertised address); EPRT only with
// the client's own address in the client's family.
func (x *xlatCase) checkClientSaw(t *testing.T, mode Mode) {
	t.Helper()
	wantCode := map[Mode]string{PASV: "227", EPSV: "229"}[mode]
	replies := dataReplyRE.FindAllStringSubmatch(x.res.Log, -1)
	if (mode == PASV || mode == EPSV) && len(replies) == 0 {
		t.Errorf("no %s reply in the client's transcript", wantCode)
	}
	for _, m := range replies {
		code, text := m[1], m[2]
		if code != wantCode {
			t.Errorf("client (mode %s) got %s %s", mode.Command(), code, text)
			continue
		}
		var port int
		switch code {
		case "229":
			pm := portOf229RE.FindStringSubmatch(text)
			if pm == nil {
				t.Errorf("229 reply %q is not (|||port|)", text)
				continue
			}
			port, _ = strconv.Atoi(pm[1])
		case "227":
			pm := portOf227RE.FindStringSubmatch(text)
			if pm == nil {
				t.Errorf("unparsable 227 reply %q", text)
				continue
			}
			if ip := strings.Join(pm[1:5], "."); ip != x.tgt.WantPASVIP {
				t.Errorf("227 reply %q announces %s, want %s", text, ip, x.tgt.WantPASVIP)
			}
			hi, _ := strconv.Atoi(pm[5])
			lo, _ := strconv.Atoi(pm[6])
			port = hi<<8 | lo
		}
		if port < xlatDataMin || port > xlatDataMax {
			t.Errorf("%s reply %q: port %d is not one of the proxy's (%s)", code, text, port, xlatDataPorts)
		}
	}
	fam := "|1|"
	if x.tgt.IPv6 {
		fam = "|2|"
	}
	for _, m := range eprtCmdRE.FindAllStringSubmatch(x.res.Log, -1) {
		if !strings.HasPrefix(m[1], fam+x.tgt.ClientIP+"|") {
			t.Errorf("client sent EPRT %s, want %s%s|port|", m[1], fam, x.tgt.ClientIP)
		}
	}
	// Where the proxy's passive listeners were, and whom it connected
	// the data connections to on the client's side.
	for _, e := range parseProxyLog(x.proxyLog) {
		switch e.str("msg") {
		case proxy.MsgPassiveRewrite:
			if a, err := netip.ParseAddrPort(e.str("listen")); err != nil || a.Addr().Unmap().String() != x.tgt.Host {
				t.Errorf("proxy listened for the client's data connection on %q, want %s", e.str("listen"), x.tgt.Host)
			}
		case proxy.MsgDataConnected:
			if a, err := netip.ParseAddrPort(e.str("client_data")); err != nil || a.Addr().Unmap().String() != x.tgt.ClientIP {
				t.Errorf("client side of a data connection is %q, want %s", e.str("client_data"), x.tgt.ClientIP)
			}
		}
	}
}

// checkUpstreamSeen checks that the proxy sent the server a data command
// for every transfer, that the server's own log (where there is one)
// shows the same commands, and that the client's transfers went through.
func (x *xlatCase) checkUpstreamSeen(t *testing.T, mode Mode) {
	t.Helper()
	// list + 4 downloads + 2 uploads.
	if n := countAccepted(x.upstream); n < 7 {
		t.Errorf("ftpalg's log shows %d accepted data commands to the server (%v), want at least 7", n, x.upstream)
	}
	if x.srv.cmdLogs == nil {
		return
	}
	want := stripRefused(x.upstream)
	got := stripRefused(x.srvCmds)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("server's log shows data commands\n  %v\nftpalg's log shows\n  %v", x.srvCmds, x.upstream)
	}
}

// ---------------------------------------------------------------- what the server was sent

// summarize shortens a command list for the log: ports elided, repeats
// counted ("PASV ×7, PORT 192,0,2,1,… ×7").
func summarize(cmds []string) string {
	portRE := regexp.MustCompile(`^(PORT (?:\d+,){4})\d+,\d+|^(EPRT \|\d\|[^|]*\|)\d+\|`)
	var out []string
	count := map[string]int{}
	for _, c := range cmds {
		c = portRE.ReplaceAllString(c, "$1$2…")
		if count[c] == 0 {
			out = append(out, c)
		}
		count[c]++
	}
	for i, c := range out {
		out[i] = fmt.Sprintf("%s ×%d", c, count[c])
	}
	if out == nil {
		return "nothing"
	}
	return strings.Join(out, ", ")
}

// refusedMark is appended to a command the server refused.
const refusedMark = " (refused)"

func countAccepted(cmds []string) int {
	return len(stripRefused(cmds))
}

func stripRefused(cmds []string) []string {
	var out []string
	for _, c := range cmds {
		if !strings.HasSuffix(c, refusedMark) {
			out = append(out, c)
		}
	}
	return out
}

// validV4Upstream: what an IPv4 server may be sent for a client's EPSV or
// EPRT: PASV/EPSV, PORT/EPRT |1| with the proxy's IPv4 address.
func validV4Upstream(cmd string, mode Mode) bool {
	cmd = strings.TrimSuffix(cmd, refusedMark)
	verb, arg, _ := strings.Cut(cmd, " ")
	switch verb {
	case "PASV", "EPSV":
		return arg == "" && (mode == EPSV || mode == PASV)
	case "PORT":
		return strings.HasPrefix(arg, strings.ReplaceAll(FrontServerIP4, ".", ",")+",") && (mode == EPRT || mode == PORT)
	case "EPRT":
		return strings.HasPrefix(arg, "|1|"+FrontServerIP4+"|") && (mode == EPRT || mode == PORT)
	}
	return false
}

// validV6Upstream: an IPv6 server may only be sent EPSV and EPRT |2| with
// the proxy's IPv6 address.
func validV6Upstream(cmd string) bool {
	cmd = strings.TrimSuffix(cmd, refusedMark)
	verb, arg, _ := strings.Cut(cmd, " ")
	switch verb {
	case "EPSV":
		return arg == ""
	case "EPRT":
		return strings.HasPrefix(arg, "|2|"+FrontServerIP6+"|")
	}
	return false
}

// proxyLogEntry is one JSON line of ftpalg's log.
type proxyLogEntry map[string]any

func (e proxyLogEntry) str(k string) string {
	v, _ := e[k].(string)
	return v
}

func parseProxyLog(log string) []proxyLogEntry {
	var out []proxyLogEntry
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e proxyLogEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// upstreamDataCommands reconstructs, in order, the data-connection
// commands ftpalg sent the server, from its log: proxy.MsgActiveRewrite
// (sent: the command), proxy.MsgPassiveRewrite (server_reply: 227 answers
// PASV, 228 LPSV, 229 EPSV) and proxy.MsgFallback (the verb in refused
// was refused, the one in sending sent instead). Refused commands carry
// refusedMark.
func upstreamDataCommands(log string) []string {
	var out []string
	for _, e := range parseProxyLog(log) {
		msg := e.str("msg")
		switch {
		case msg == proxy.MsgActiveRewrite:
			out = append(out, e.str("sent"))
		case msg == proxy.MsgPassiveRewrite:
			switch code, _, _ := strings.Cut(e.str("server_reply"), " "); code {
			case "227":
				out = append(out, "PASV")
			case "228":
				out = append(out, "LPSV")
			case "229":
				out = append(out, "EPSV")
			default:
				out = append(out, "? "+e.str("server_reply"))
			}
		case msg == proxy.MsgFallback:
			m := []string{"", e.str("refused"), e.str("sending")}
			if m[2] == "PORT" {
				// The refused active command is the last one logged.
				if n := len(out); n > 0 && strings.HasPrefix(out[n-1], m[1]+" ") {
					out[n-1] += refusedMark
				} else {
					out = append(out, m[1]+refusedMark)
				}
				out = append(out, e.str("sent"))
			} else {
				out = append(out, m[1]+refusedMark)
			}
		}
	}
	return out
}

// Server command logs: vsftpd (log_ftp_protocol) `FTP command: Client
// "ADDR", "EPSV"` followed by `FTP response: Client "ADDR", "229 ..."`;
// proftpd (ExtendedLog, format "%a \"%r\" %s") `ADDR "EPSV" 229`.
var (
	vsftpdCmdRE  = regexp.MustCompile(`FTP command: Client "[^"]*", "((?:PASV|EPSV|PORT|EPRT|LPSV|LPRT)\b[^"]*)"`)
	vsftpdRespRE = regexp.MustCompile(`FTP response: Client "[^"]*", "(\d{3})`)
	proftpdCmdRE = regexp.MustCompile(`(?m)^\S+ "((?:PASV|EPSV|PORT|EPRT|LPSV|LPRT)\b[^"]*)" (\d{3})`)
)

// serverDataCommands returns the data commands in a server command log,
// refused ones (4xx/5xx) marked.
func serverDataCommands(kind ServerKind, log string) []string {
	var out []string
	switch kind {
	case Vsftpd:
		lines := strings.Split(log, "\n")
		for i, l := range lines {
			m := vsftpdCmdRE.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			cmd := m[1]
			for _, next := range lines[i+1:] {
				if r := vsftpdRespRE.FindStringSubmatch(next); r != nil {
					if r[1][0] >= '4' {
						cmd += refusedMark
					}
					break
				}
			}
			out = append(out, cmd)
		}
	case Proftpd:
		for _, m := range proftpdCmdRE.FindAllStringSubmatch(log, -1) {
			cmd := m[1]
			if m[2][0] >= '4' {
				cmd += refusedMark
			}
			out = append(out, cmd)
		}
	}
	return out
}

// cmdLogMark and cmdLogSince read the server's command logs from a mark on.
func (s *Server) cmdLogMark() map[string]int64 {
	m := map[string]int64{}
	for _, p := range s.cmdLogs {
		if fi, err := os.Stat(p); err == nil {
			m[p] = fi.Size()
		}
	}
	return m
}

func (s *Server) cmdLogSince(mark map[string]int64) string {
	var b strings.Builder
	for _, p := range s.cmdLogs {
		data, _ := os.ReadFile(p)
		off := mark[p]
		if off > int64(len(data)) {
			off = 0
		}
		b.Write(data[off:])
	}
	return b.String()
}
