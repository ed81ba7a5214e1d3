//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/probe"
)

// The probe tests (issue 11) run `ftpalg probe --json` in the client
// namespace of a routed Chain (client → router → server, both ways
// routed, no NAT) against vsftpd instances on the server:
//
//	port 21    healthy, passive ports 40000-40099
//	port 2121  pasv_address=10.0.0.5 (a private address the client has no route to), 40100-40199
//	port 2122  behind the router's firewall, which drops its passive range 40200-40299
//	port 2123  both: pasv_address=10.0.0.5 and its range 40300-40399 dropped
//
// and through ftpalg on the router in front of the last two (listening on
// 198.51.100.1:2122 and :2123, --firewall none: the router's INPUT is
// open, and ftpalg's own data connections to the server leave the router
// through OUTPUT, which the FORWARD drop does not see).

// probeTimeout is the probes' --timeout: each connect and reply wait gets
// a quarter, 2 s.
const (
	probeTimeout  = 8 * time.Second
	probeStep     = probeTimeout / 4
	probePrivate  = "10.0.0.5"
	probeFirewall = "40200:40399" // the ranges of ports 2122 and 2123
)

// probeRun is one `ftpalg probe` run.
type probeRun struct {
	status         int
	stdout, stderr string
	took           time.Duration
	report         probe.Report
}

// runProbe runs `ftpalg probe args... url` in ns; with --json among args
// it decodes the report strictly (unknown fields are errors) and checks
// that every documented field is present.
func runProbe(t *testing.T, ns *nstest.NS, url string, args ...string) probeRun {
	t.Helper()
	argv := append([]string{proxyBinary, "probe", "--timeout", probeTimeout.String()}, args...)
	argv = append(argv, url)
	start := time.Now()
	stdout, stderr, err := runClient(context.Background(), ns, os.TempDir(), probeTimeout+10*time.Second, argv...)
	r := probeRun{stdout: stdout, stderr: stderr, took: time.Since(start)}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, stderr)
	}
	t.Logf("%s → exit %d in %v", strings.Join(argv[1:], " "), r.status, r.took.Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- ftpalg probe stdout ---\n%s\n--- stderr ---\n%s", stdout, stderr)
		}
	})
	if r.took > probeTimeout+2*time.Second {
		t.Errorf("the probe took %v with --timeout %v", r.took, probeTimeout)
	}
	if !strings.Contains(strings.Join(args, " "), "--json") {
		return r
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r.report); err != nil {
		t.Fatalf("decoding the report as probe.Report: %v", err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if missing := missingFields(reflect.TypeFor[probe.Report](), raw, ""); len(missing) > 0 {
		t.Errorf("fields missing from the JSON report: %v", missing)
	}
	if r.report.Verdict == "" || r.report.Summary == "" || r.report.Control.Address == "" || len(r.report.Transcript) == 0 {
		t.Errorf("empty verdict, summary, control address or transcript")
	}
	if want := map[bool]int{true: 0, false: 1}[r.report.DataOK]; r.status != want {
		t.Errorf("exit status %d with data_ok %v", r.status, r.report.DataOK)
	}
	t.Logf("summary: %s", r.report.Summary)
	return r
}

// missingFields returns the JSON fields of t (recursively; none is
// omitempty, so all are required) that obj lacks. A null object (list)
// is not looked into.
func missingFields(t reflect.Type, obj map[string]any, prefix string) []string {
	var missing []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		v, ok := obj[name]
		if !ok {
			missing = append(missing, prefix+name)
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			if m, ok := v.(map[string]any); ok {
				missing = append(missing, missingFields(ft, m, prefix+name+".")...)
			} else if f.Type.Kind() != reflect.Pointer || v != nil {
				missing = append(missing, prefix+name+" (not an object)")
			}
		case ft.Kind() == reflect.Slice:
			arr, ok := v.([]any)
			if !ok {
				missing = append(missing, prefix+name+" (not an array)")
				continue
			}
			if ft.Elem().Kind() == reflect.Struct {
				for i, e := range arr {
					m, _ := e.(map[string]any)
					missing = append(missing, missingFields(ft.Elem(), m, fmt.Sprintf("%s%s[%d].", prefix, name, i))...)
				}
			}
		}
	}
	return missing
}

func probeMode(t *testing.T, r probe.Report, name string) probe.Mode {
	t.Helper()
	for _, m := range r.Modes {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no %s in the report", name)
	return probe.Mode{}
}

// requireNoProblems fails on error or warning findings.
func requireNoProblems(t *testing.T, r probe.Report) {
	t.Helper()
	for _, f := range r.Findings {
		if f.Severity != probe.SevInfo {
			t.Errorf("%s finding %s: %s", f.Severity, f.Code, f.Title)
		}
	}
}

// requireAnnounced checks that a passive mode announced host with a port
// in lo..hi.
func requireAnnounced(t *testing.T, m probe.Mode, host string, lo, hi uint16) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(m.Announced)
	if err != nil || ap.Addr().String() != host || ap.Port() < lo || ap.Port() > hi {
		t.Errorf("%s announced %q, want %s with a port in %d-%d", m.Name, m.Announced, host, lo, hi)
	}
	return ap
}

func TestProbe(t *testing.T) {
	requirePrereqs(t, reqVsftpd, reqIptables)
	requireProxy(t)
	topo := NewTopology(t, TopoOptions{Forwarding: true, ServerRouteToClient: true, ClientRouteToServer: true})
	type server struct {
		port             int
		pasvMin, pasvMax uint16
		config           string
	}
	servers := map[string]server{
		"healthy":         {21, 40000, 40099, ""},
		"private":         {2121, 40100, 40199, "pasv_address=" + probePrivate + "\n"},
		"blocked":         {2122, 40200, 40299, ""},
		"private-blocked": {2123, 40300, 40399, "pasv_address=" + probePrivate + "\n"},
	}
	for _, s := range servers {
		StartServer(t, topo, Vsftpd, ServerOptions{Port: s.port, PasvMin: int(s.pasvMin), PasvMax: int(s.pasvMax), Config: s.config})
	}
	// The router's firewall: forwarded connections to the passive ranges
	// of ports 2122 and 2123 are dropped (the SYN never answered); all
	// else passes. No FTP helper.
	topo.Front.Run(t, "iptables", "-w", "-A", "FORWARD", "-d", ServerIP4, "-p", "tcp", "--dport", probeFirewall,
		"-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
	requireNoFTPHelper(t, topo.Front)
	url := func(host string, port int) string { return "ftp://" + net.JoinHostPort(host, fmt.Sprint(port)) + "/" }

	t.Run("healthy", func(t *testing.T) {
		s := servers["healthy"]
		r := runProbe(t, topo.Client, url(ServerIP4, s.port), "--json").report
		if r.Verdict != probe.VerdictOK || !r.DataOK || !r.Control.Connected || !r.Control.LoginOK ||
			r.Control.Greeting.Code != 220 || r.Control.Login.Code != 230 || !r.Control.Feat.EPSV {
			t.Errorf("verdict %s, control %+v", r.Verdict, r.Control)
		}
		epsv := probeMode(t, r, "EPSV")
		requireAnnounced(t, epsv, ServerIP4, s.pasvMin, s.pasvMax)
		if epsv.AnnouncedClass != probe.ClassDocumentation || epsv.DiffersFromControl || !epsv.DataConnected ||
			epsv.List == nil || !epsv.List.Completed || epsv.List.Bytes == 0 || epsv.List.Reply.Code != 226 {
			t.Errorf("EPSV %+v, list %+v", epsv, epsv.List)
		}
		pasv := probeMode(t, r, "PASV")
		requireAnnounced(t, pasv, ServerIP4, s.pasvMin, s.pasvMax)
		if !pasv.AddressInReply || !pasv.DataConnected || len(pasv.Attempts) != 1 {
			t.Errorf("PASV %+v", pasv)
		}
		requireNoProblems(t, r)

		// Active mode: the server connects back to the client, routed.
		r = runProbe(t, topo.Client, url(ServerIP4, s.port), "--json", "--active").report
		eprt := probeMode(t, r, "EPRT")
		if r.Verdict != probe.VerdictOK || eprt.Reply.Code != 200 || !eprt.DataConnected || eprt.List == nil || !eprt.List.Completed ||
			!strings.HasPrefix(eprt.Announced, ClientIP4+":") || !strings.HasPrefix(eprt.DataPeer, ServerIP4+":") {
			t.Errorf("verdict %s, EPRT %+v", r.Verdict, eprt)
		}
		requireNoProblems(t, r)
	})

	t.Run("blocked", func(t *testing.T) {
		s := servers["blocked"]
		run := runProbe(t, topo.Client, url(ServerIP4, s.port), "--json")
		r := run.report
		if r.Verdict != probe.VerdictDataBlocked || r.DataOK || run.status != 1 || !r.Control.LoginOK {
			t.Errorf("verdict %s, data_ok %v, exit %d", r.Verdict, r.DataOK, run.status)
		}
		for _, name := range []string{"EPSV", "PASV"} {
			m := probeMode(t, r, name)
			requireAnnounced(t, m, ServerIP4, s.pasvMin, s.pasvMax)
			if len(m.Attempts) != 1 || m.Attempts[0].Result != probe.ConnectTimeout || m.List != nil ||
				m.Attempts[0].ElapsedMS < float64(probeStep/time.Millisecond)-100 {
				t.Errorf("%s attempts %+v, want one timeout after %v", name, m.Attempts, probeStep)
			}
		}
		if len(r.Findings) == 0 || r.Findings[0].Code != "data-timeout" || !strings.Contains(r.Findings[0].Title, "on "+ServerIP4+" did not answer within 2s") ||
			!strings.Contains(r.Findings[0].Advice, "ftpalg") {
			t.Errorf("findings %+v", r.Findings)
		}
		// The same, for a person.
		txt := runProbe(t, topo.Client, url(ServerIP4, s.port))
		t.Logf("text output:\n%s", txt.stdout)
		first, _, _ := strings.Cut(txt.stdout, "\n")
		if txt.status != 1 || !strings.HasPrefix(first, "data-blocked: ") || !strings.Contains(txt.stdout, "→ open the server's passive port range") {
			t.Errorf("exit %d, output:\n%s", txt.status, txt.stdout)
		}
	})

	// Decided: vsftpd's 229 carries no address, so EPSV goes to the
	// control address and works; the LIST completes and data transfers
	// work (exit 0) for clients that use EPSV or ignore the 227 address.
	// The verdict is ok, and a warning (also in the summary) names the
	// private address its 227 announces, which strict PASV clients use
	// and hang on.
	t.Run("private", func(t *testing.T) {
		s := servers["private"]
		run := runProbe(t, topo.Client, url(ServerIP4, s.port), "--json")
		r := run.report
		if r.Verdict != probe.VerdictOK || run.status != 0 || !strings.Contains(r.Summary, probePrivate) {
			t.Errorf("verdict %s, exit %d, summary %q", r.Verdict, run.status, r.Summary)
		}
		pasv := probeMode(t, r, "PASV")
		ap := requireAnnounced(t, pasv, probePrivate, s.pasvMin, s.pasvMax)
		if pasv.AnnouncedClass != probe.ClassPrivate || !pasv.DiffersFromControl || len(pasv.Attempts) != 2 ||
			pasv.Attempts[0].Result != probe.ConnectUnreachable || pasv.Attempts[1].Result != probe.ConnectOK ||
			pasv.DataPeer != netip.AddrPortFrom(netip.MustParseAddr(ServerIP4), ap.Port()).String() {
			t.Errorf("PASV %+v", pasv)
		}
		if len(r.Findings) == 0 || r.Findings[0].Code != "announced-unroutable" || r.Findings[0].Severity != probe.SevWarning ||
			!strings.Contains(r.Findings[0].Title, probePrivate) || !strings.Contains(r.Findings[0].Advice, "pasv_address") {
			t.Errorf("findings %+v", r.Findings)
		}
		txt := runProbe(t, topo.Client, url(ServerIP4, s.port))
		t.Logf("text output:\n%s", txt.stdout)
	})

	t.Run("private-blocked", func(t *testing.T) {
		s := servers["private-blocked"]
		run := runProbe(t, topo.Client, url(ServerIP4, s.port), "--json")
		r := run.report
		if r.Verdict != probe.VerdictDataPrivateAddress || run.status != 1 || !strings.Contains(r.Summary, probePrivate) {
			t.Errorf("verdict %s, exit %d, summary %q", r.Verdict, run.status, r.Summary)
		}
		if len(r.Findings) == 0 || r.Findings[0].Code != "announced-unroutable" || r.Findings[0].Severity != probe.SevError {
			t.Errorf("findings %+v", r.Findings)
		}
	})

	// ftpalg on the router in front of the firewalled servers: the client
	// probes ftpalg, which announces its own address and ports.
	for i, name := range []string{"blocked", "private-blocked"} {
		t.Run("ftpalg-"+name, func(t *testing.T) {
			s := servers[name]
			lo := 50000 + 100*i
			p := StartProxy(t, topo, ProxyConfig{
				Listen:    net.JoinHostPort(FrontClientIP4, fmt.Sprint(s.port)),
				Upstream:  net.JoinHostPort(ServerIP4, fmt.Sprint(s.port)),
				Advertise: FrontClientIP4, DataPorts: fmt.Sprintf("%d-%d", lo, lo+99),
				// The splice path: ftpalg takes the client's data
				// connection and itself fails to reach the server, which
				// is what the verdict below describes. (On the kernel
				// path the client's SYN is forwarded, and the server's
				// firewall answers it: the probe then reports what the
				// server's firewall does, as with no ftpalg at all.)
				Extra: []string{"--firewall", "none", "--data-path", "splice"},
			})
			off := p.LogSize()
			run := runProbe(t, topo.Client, url(FrontClientIP4, s.port), "--json")
			r := run.report
			if r.Verdict != probe.VerdictOK || run.status != 0 {
				t.Errorf("verdict %s, exit %d", r.Verdict, run.status)
			}
			for _, m := range []string{"EPSV", "PASV"} {
				mm := probeMode(t, r, m)
				requireAnnounced(t, mm, FrontClientIP4, uint16(lo), uint16(lo+99))
				if !mm.DataConnected {
					t.Errorf("%s: no data connection: %+v", m, mm.Attempts)
				}
			}
			requireNoProblems(t, r)
			if t.Failed() {
				t.Logf("--- ftpalg log ---\n%s", nstest.Tail(p.LogSince(off), 40))
			}
		})
	}
	if t.Failed() {
		t.Logf("--- router rules ---\n%s", topo.Front.Run(t, "iptables-save", "-c"))
	}
}
