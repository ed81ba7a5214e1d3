package probe

import (
	"net/netip"
	"strings"
	"testing"
)

// The server of the hand-built reports: control on 203.0.113.9:21.
const testServer = "203.0.113.9"

func loggedIn(modes ...Mode) Report {
	return Report{User: "anonymous", Control: Control{
		Address:   testServer + ":21",
		Connect:   Attempt{Address: testServer + ":21", Source: SourceURL, Result: ConnectOK, ElapsedMS: 20},
		Connected: true, Greeting: Reply{Code: 220, Text: "ready"}, Login: Reply{Code: 230, Text: "ok"}, LoginOK: true,
	}, Modes: modes}
}

// pasv is a passive mode that announced ann; its attempts decide the
// rest (data_connected, data_peer).
func pasv(name, ann string, as ...Attempt) Mode {
	ap := netip.MustParseAddrPort(ann)
	code := 227
	if name == "EPSV" {
		code = 229
	}
	m := Mode{Name: name, Command: name, Passive: true, Reply: Reply{Code: code}, Announced: ann,
		AddressInReply: code == 227, AnnouncedClass: Classify(ap.Addr()),
		DiffersFromControl: ap.Addr() != netip.MustParseAddr(testServer), Attempts: as}
	for _, a := range as {
		if a.Result == ConnectOK {
			m.DataConnected, m.DataPeer = true, a.Address
		}
	}
	return m
}

func refusedMode(name string, code int) Mode {
	return Mode{Name: name, Command: name, Passive: name == "EPSV" || name == "PASV", Reply: Reply{Code: code, Text: "Unknown command."}}
}

func att(addr, source string, res ConnectResult) Attempt {
	a := Attempt{Address: addr, Source: source, Result: res, ElapsedMS: 0.3}
	switch res {
	case ConnectTimeout:
		a.ElapsedMS, a.Error = 5000.2, "dial tcp "+addr+": i/o timeout"
	case ConnectRefused:
		a.Error = "dial tcp " + addr + ": connect: connection refused"
	case ConnectUnreachable:
		a.Error = "dial tcp " + addr + ": connect: network is unreachable"
	case ConnectSkipped:
		a.Error = "not dialed: reasons"
	}
	return a
}

func with(m Mode, l *List) Mode { m.List = l; return m }

func listOK() *List {
	return &List{Completed: true, Bytes: 312, Preliminary: Reply{Code: 150}, Reply: Reply{Code: 226}}
}

func listFail(code int, text string) *List {
	return &List{Preliminary: Reply{Code: 150}, Reply: Reply{Code: code, Text: text}}
}

func active(name, listener string, res ConnectResult, l *List) Mode {
	m := Mode{Name: name, Command: name + " x", Reply: Reply{Code: 200}, Announced: listener,
		AnnouncedClass: Classify(netip.MustParseAddrPort(listener).Addr()), List: l,
		Attempts: []Attempt{att(listener, SourceServer, res)}}
	if res == ConnectOK {
		m.DataConnected, m.DataPeer = true, testServer+":20"
	}
	return m
}

func TestJudge(t *testing.T) {
	const (
		e1 = testServer + ":40012"
		p1 = testServer + ":40077"
		v1 = "10.0.0.5:40077"
	)
	type want struct {
		verdict Verdict
		dataOK  bool
		// codes are the findings' codes in order, each with its
		// severity's first letter: "E:data-timeout".
		codes []string
		// in are strings the summary must hold.
		in []string
	}
	for _, tc := range []struct {
		name string
		r    Report
		want want
	}{
		{"healthy", loggedIn(
			with(pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectOK)), listOK()),
			pasv("PASV", p1, att(p1, SourceAnnounced, ConnectOK))),
			want{VerdictOK, true, nil, []string{"ok: data transfers work (LIST over EPSV via 203.0.113.9:40012: 312 bytes)"}}},
		{"control-refused", Report{Control: Control{Address: "ftp.example:21",
			Connect: Attempt{Address: "ftp.example:21", Result: ConnectRefused}}},
			want{VerdictControlFailed, false, []string{"E:control-connect"}, []string{"nothing accepts connections on ftp.example:21"}}},
		{"control-timeout", Report{Control: Control{Address: "ftp.example:21",
			Connect: Attempt{Address: "ftp.example:21", Result: ConnectTimeout, ElapsedMS: 5000}}},
			want{VerdictControlFailed, false, []string{"E:control-connect"}, []string{"did not answer within 5s"}}},
		{"no-greeting", func() Report {
			r := loggedIn()
			r.Control.Connected, r.Control.Greeting, r.Control.LoginOK, r.Control.Error = false, Reply{}, false, "no reply within 5s"
			return r
		}(), want{VerdictControlFailed, false, []string{"E:control-greeting"}, []string{"no reply within 5s"}}},
		{"login-refused", func() Report {
			r := loggedIn()
			r.Control.Login, r.Control.LoginOK = Reply{Code: 530, Text: "Login incorrect."}, false
			return r
		}(), want{VerdictLoginFailed, false, []string{"E:login"}, []string{"anonymous login: 530 Login incorrect."}}},
		{"blocked", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectTimeout)),
			pasv("PASV", p1, att(p1, SourceAnnounced, ConnectTimeout))),
			want{VerdictDataBlocked, false, []string{"E:data-timeout"},
				[]string{"ports 40012 (EPSV) and 40077 (PASV) on 203.0.113.9 did not answer within 5s"}}},
		{"refused-wins-over-blocked", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectRefused)),
			pasv("PASV", p1, att(p1, SourceAnnounced, ConnectTimeout))),
			want{VerdictDataRefused, false, []string{"E:data-refused", "E:data-timeout"}, []string{"port 40012 (EPSV) on 203.0.113.9 refused"}}},
		{"unreachable", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectUnreachable)),
			refusedMode("PASV", 500)),
			want{VerdictDataUnreachable, false, []string{"E:data-unreachable", "I:passive-refused"}, []string{"(network is unreachable)"}}},
		{"private-and-blocked", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectTimeout)),
			pasv("PASV", v1, att(v1, SourceAnnounced, ConnectTimeout), att(p1, SourceControl, ConnectTimeout))),
			// The private address heads; the timeouts on the control
			// address are merged; the private address's own timeout is
			// part of its finding, not another one.
			want{VerdictDataPrivateAddress, false, []string{"E:announced-unroutable", "E:data-timeout"},
				[]string{"PASV announced 10.0.0.5:40077, a private address (RFC 1918)"}}},
		{"private-fallback-works", loggedIn(
			refusedMode("EPSV", 500),
			with(pasv("PASV", v1, att(v1, SourceAnnounced, ConnectUnreachable), att(p1, SourceControl, ConnectOK)), listOK())),
			want{VerdictOK, true, []string{"W:announced-unroutable", "I:passive-refused"},
				[]string{"ok: data transfers work", "; but PASV announced 10.0.0.5:40077"}}},
		{"private-reachable-here", loggedIn(
			with(pasv("PASV", v1, att(v1, SourceAnnounced, ConnectOK)), listOK())),
			want{VerdictOK, true, []string{"W:announced-unroutable"}, []string{"10.0.0.5"}}},
		{"public-differs-fallback", loggedIn(
			with(pasv("PASV", "198.18.0.1:40077"), nil),
			with(pasv("EPSV", "8.8.8.8:40012", att("8.8.8.8:40012", SourceAnnounced, ConnectTimeout), att(e1, SourceControl, ConnectOK)), listOK())),
			want{VerdictOK, true, []string{"W:announced-unroutable", "W:announced-differs", "W:data-timeout"}, nil}},
		{"unspecified", loggedIn(
			with(pasv("PASV", "0.0.0.0:40077", att("0.0.0.0:40077", SourceAnnounced, ConnectSkipped), att(p1, SourceControl, ConnectOK)), listOK())),
			want{VerdictOK, true, []string{"W:announced-unroutable"}, []string{"0.0.0.0:40077, the unspecified address"}}},
		{"passive-refused", loggedIn(refusedMode("EPSV", 500), refusedMode("PASV", 502)),
			want{VerdictPassiveRefused, false, []string{"E:passive-refused"}, []string{"EPSV: 500 Unknown command.; PASV: 502"}}},
		{"bad-reply", loggedIn(refusedMode("EPSV", 500), func() Mode {
			m := refusedMode("PASV", 227)
			m.Error = "unparsable reply: ftp: malformed address: 227 without an address"
			return m
		}()), want{VerdictPassiveRefused, false, []string{"E:mode-reply", "I:passive-refused"}, nil}},
		{"privileged", loggedIn(refusedMode("EPSV", 500), func() Mode {
			m := pasv("PASV", testServer+":22")
			m.Error = "not dialed: ftp: data port below 1024: 22"
			return m
		}()), want{VerdictPassiveRefused, false, []string{"E:privileged-port", "I:passive-refused"}, []string{"a privileged port"}}},
		{"list-550", loggedIn(
			with(pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectOK)), listFail(550, "Permission denied.")),
			with(pasv("PASV", p1, att(p1, SourceAnnounced, ConnectOK)), listFail(550, "Permission denied."))),
			want{VerdictListFailed, false, []string{"E:list-failed", "E:list-failed"}, []string{"the server refused to list: 550"}}},
		{"list-wins-over-blocked", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectTimeout)),
			with(pasv("PASV", p1, att(p1, SourceAnnounced, ConnectOK)), listFail(425, "Security: Bad IP connecting."))),
			want{VerdictListFailed, false, []string{"E:list-failed", "E:data-timeout"}, []string{"425 Security: Bad IP connecting."}}},
		{"list-hang", loggedIn(
			with(pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectOK)), &List{Preliminary: Reply{Code: 150}, Error: "data connection: no end"}),
			Mode{Name: "PASV", Passive: true, Skipped: "not tried: the control channel stopped working: no reply"}),
			want{VerdictListFailed, false, []string{"E:list-failed", "W:incomplete"}, []string{"did not finish"}}},
		{"incomplete", func() Report {
			r := loggedIn(
				Mode{Name: "EPSV", Passive: true, Reply: Reply{}},
				Mode{Name: "PASV", Passive: true, Skipped: "not tried: the control channel stopped working: no reply within 5s"})
			r.Control.Error = "no reply within 5s"
			return r
		}(), want{VerdictIncomplete, false, []string{"W:incomplete"}, []string{"the probe could not finish"}}},
		{"active-only", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectTimeout)),
			pasv("PASV", p1, att(p1, SourceAnnounced, ConnectTimeout)),
			active("EPRT", "198.51.100.10:41234", ConnectOK, listOK()),
			Mode{Name: "PORT", Skipped: "not needed: the server did not refuse EPRT"}),
			want{VerdictActiveOnly, true, []string{"W:data-timeout"}, []string{"active-only: only active mode works (LIST over EPRT"}}},
		{"active-blocked-after-passive-refused", loggedIn(
			refusedMode("EPSV", 500), refusedMode("PASV", 500),
			active("EPRT", "192.168.1.20:41234", ConnectTimeout, &List{Preliminary: Reply{Code: 150}, Error: "no data connection"}),
			Mode{Name: "PORT", Skipped: "not needed: the server did not refuse EPRT"}),
			want{VerdictActiveBlocked, false, []string{"E:active-no-connect", "E:passive-refused"}, []string{"did not connect back to 192.168.1.20:41234 within 5s"}}},
		{"passive-blocked-wins-over-active", loggedIn(
			pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectTimeout)),
			refusedMode("PASV", 500),
			active("EPRT", "192.168.1.20:41234", ConnectTimeout, &List{Error: "no data connection"})),
			want{VerdictDataBlocked, false, []string{"E:data-timeout", "E:active-no-connect", "I:passive-refused"}, nil}},
		{"active-refused", loggedIn(
			refusedMode("EPSV", 500), refusedMode("PASV", 500), refusedMode("EPRT", 500), refusedMode("PORT", 500)),
			want{VerdictActiveRefused, false, []string{"E:active-refused", "E:passive-refused"}, []string{"EPRT: 500"}}},
		{"passive-ok-active-blocked", loggedIn(
			with(pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectOK)), listOK()),
			pasv("PASV", p1, att(p1, SourceAnnounced, ConnectOK)),
			active("EPRT", "192.168.1.20:41234", ConnectTimeout, &List{Error: "no data connection"})),
			want{VerdictOK, true, []string{"W:active-no-connect"}, []string{"; but after EPRT the server did not connect back"}}},
		{"auth-tls", func() Report {
			r := loggedIn(with(pasv("EPSV", e1, att(e1, SourceAnnounced, ConnectOK)), listOK()))
			r.Control.Feat.AuthTLS = true
			return r
		}(), want{VerdictOK, true, []string{"I:auth-tls"}, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			Judge(&r)
			var codes []string
			for _, f := range r.Findings {
				codes = append(codes, strings.ToUpper(string(f.Severity[0]))+":"+f.Code)
				if f.Title == "" || f.Severity != SevInfo && (f.Detail == "" || f.Advice == "") && f.Code != FindAnnouncedDiffers {
					t.Errorf("finding without words: %+v", f)
				}
			}
			if r.Verdict != tc.want.verdict || r.DataOK != tc.want.dataOK || strings.Join(codes, " ") != strings.Join(tc.want.codes, " ") {
				t.Errorf("verdict %s, data_ok %v, findings %v; want %s, %v, %v", r.Verdict, r.DataOK, codes,
					tc.want.verdict, tc.want.dataOK, tc.want.codes)
			}
			if !strings.HasPrefix(r.Summary, string(r.Verdict)+": ") {
				t.Errorf("summary %q does not start with the verdict", r.Summary)
			}
			for _, s := range tc.want.in {
				if !strings.Contains(r.Summary, s) {
					t.Errorf("summary %q lacks %q", r.Summary, s)
				}
			}
			if t.Failed() {
				for _, f := range r.Findings {
					t.Logf("%s %s: %s\n    %s\n    → %s", f.Severity, f.Code, f.Title, f.Detail, f.Advice)
				}
			}
		})
	}
}

func TestDur(t *testing.T) {
	for ms, want := range map[float64]string{5000.2: "5s", 4999.6: "5s", 1234: "1.2s", 12.4: "12ms", 0.25: "250µs"} {
		if got := dur(ms); got != want {
			t.Errorf("dur(%v) = %s, want %s", ms, got, want)
		}
	}
}
