package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// testTimeout is the probes' budget in these tests: each step gets 1s.
const testTimeout = 4 * time.Second

// probeT runs a probe against f (nil: o.URL as given) and checks what
// holds for every probe: only the commands the probe may send, no
// password anywhere in the output, the time budget kept, a report that
// survives JSON. On failure the transcript and the report are logged.
func probeT(t *testing.T, f *fakeFTP, o Options) Report {
	t.Helper()
	if f != nil && o.URL == "" {
		o.URL = f.URL()
	}
	if o.Timeout == 0 {
		o.Timeout = testTimeout
	}
	start := time.Now()
	r, err := Run(context.Background(), o)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			js, _ := json.MarshalIndent(r, "", "  ")
			var txt bytes.Buffer
			_ = WriteText(&txt, &r)
			t.Logf("--- text ---\n%s--- report ---\n%s", txt.String(), js)
		}
	})
	if took > o.Timeout+time.Second {
		t.Errorf("the probe took %v, more than its %v budget", took, o.Timeout)
	}
	if f != nil {
		for _, v := range f.Commands() {
			if !allowed[v] {
				t.Errorf("the probe sent %s", v)
			}
		}
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var txt bytes.Buffer
	if err := WriteText(&txt, &r); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{string(js), txt.String()} {
		if strings.Contains(out, "s3cret") || strings.Contains(out, DefaultPassword) {
			t.Errorf("a password is in the output:\n%s", out)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var back Report
	if err := dec.Decode(&back); err != nil {
		t.Errorf("decoding the report: %v", err)
	}
	return r
}

func mode(t *testing.T, r Report, name string) Mode {
	t.Helper()
	for _, m := range r.Modes {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no mode %s in the report", name)
	return Mode{}
}

func finding(r Report, code string) (Finding, bool) {
	for _, f := range r.Findings {
		if f.Code == code {
			return f, true
		}
	}
	return Finding{}, false
}

func wantVerdict(t *testing.T, r Report, v Verdict, dataOK bool) {
	t.Helper()
	if r.Verdict != v || r.DataOK != dataOK {
		t.Errorf("verdict %s, data_ok %v; want %s, %v (summary: %s)", r.Verdict, r.DataOK, v, dataOK, r.Summary)
	}
}

func TestHealthy(t *testing.T) {
	f := newFake(t).start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictOK, true)
	if got, want := f.Commands(), []string{"USER", "PASS", "FEAT", "EPSV", "LIST", "PASV", "QUIT"}; !slices.Equal(got, want) {
		t.Errorf("commands %v, want %v", got, want)
	}
	c := r.Control
	if !c.Connected || !c.LoginOK || c.Greeting.Code != 220 || c.Login.Code != 230 || c.PeerClass != ClassLoopback ||
		!c.Feat.EPSV || !c.Feat.EPRT || c.Feat.AuthTLS || c.Feat.Reply.Code != 211 || len(c.Feat.List) != 4 || c.Error != "" {
		t.Errorf("control %+v", c)
	}
	if r.User != "anonymous" || r.Target != f.URL() {
		t.Errorf("user %q, target %q", r.User, r.Target)
	}
	epsv := mode(t, r, "EPSV")
	if epsv.Reply.Code != 229 || epsv.AddressInReply || epsv.DiffersFromControl || !epsv.DataConnected ||
		epsv.List == nil || !epsv.List.Completed || epsv.List.Bytes != int64(len(fakeListing)) ||
		epsv.List.Preliminary.Code != 150 || epsv.List.Reply.Code != 226 || len(epsv.Attempts) != 1 || epsv.Attempts[0].Result != ConnectOK {
		t.Errorf("EPSV %+v", epsv)
	}
	pasv := mode(t, r, "PASV")
	if pasv.Reply.Code != 227 || !pasv.AddressInReply || pasv.DiffersFromControl || !pasv.DataConnected || pasv.List != nil {
		t.Errorf("PASV %+v (want connected, no second LIST)", pasv)
	}
	for _, f := range r.Findings {
		if f.Severity != SevInfo {
			t.Errorf("finding on a healthy server: %+v", f)
		}
	}
	if !strings.HasPrefix(r.Summary, "ok: data transfers work") {
		t.Errorf("summary %q", r.Summary)
	}
}

func TestControlRefused(t *testing.T) {
	r := probeT(t, nil, Options{URL: fmt.Sprintf("ftp://127.0.0.1:%d", freePort(t))})
	wantVerdict(t, r, VerdictControlFailed, false)
	if r.Control.Connect.Result != ConnectRefused || r.Control.Connected {
		t.Errorf("control %+v", r.Control)
	}
	if f, ok := finding(r, FindControlConnect); !ok || !strings.Contains(f.Title, "nothing accepts connections") {
		t.Errorf("findings %+v", r.Findings)
	}
	if len(r.Modes) != 0 {
		t.Errorf("modes tried without a control connection: %+v", r.Modes)
	}
}

func TestControlTimeout(t *testing.T) {
	d := dialer{hosts: map[string]string{"192.0.2.77": "drop"}}
	r := probeT(t, nil, Options{URL: "ftp://192.0.2.77/", Dial: d.Dial, Timeout: 2 * time.Second})
	wantVerdict(t, r, VerdictControlFailed, false)
	if a := r.Control.Connect; a.Result != ConnectTimeout || a.ElapsedMS < 400 || a.ElapsedMS > 1000 {
		t.Errorf("connect %+v, want a timeout after the 500ms step", a)
	}
}

func TestNoGreeting(t *testing.T) {
	f := newFake(t)
	f.Greeting = "421 Too many users, sorry."
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictControlFailed, false)
	if fd, ok := finding(r, FindControlGreeting); !ok || !strings.Contains(fd.Title, "421") {
		t.Errorf("findings %+v", r.Findings)
	}
	if len(f.Commands()) > 1 { // QUIT at most
		t.Errorf("commands after a 421 greeting: %v", f.Commands())
	}
}

func TestLoginRefused(t *testing.T) {
	f := newFake(t)
	f.Pass = func(string) string { return "530 Login incorrect." }
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictLoginFailed, false)
	if fd, ok := finding(r, FindLogin); !ok || !strings.Contains(fd.Title, "anonymous login") || !strings.Contains(fd.Advice, "USER:PASSWORD") {
		t.Errorf("findings %+v", r.Findings)
	}
	if got := f.Commands(); !slices.Equal(got, []string{"USER", "PASS", "QUIT"}) {
		t.Errorf("commands %v", got)
	}

	// A named user: its password is sent, and printed nowhere.
	r = probeT(t, f, Options{URL: "ftp://alice:s3cret@" + f.Addr.String()})
	wantVerdict(t, r, VerdictLoginFailed, false)
	if r.Target != "ftp://alice@"+f.Addr.String() || r.User != "alice" {
		t.Errorf("target %q user %q", r.Target, r.User)
	}
	if !slices.Contains(f.Lines(), "PASS s3cret") {
		t.Errorf("the password was not sent: %q", f.Lines())
	}
	if !slices.Contains(r.Transcript, "> PASS <redacted>") {
		t.Errorf("transcript %q", r.Transcript)
	}
}

func TestEPSVUnsupported(t *testing.T) {
	f := newFake(t)
	f.EPSV = func(*fakeSession) string { return "500 Unknown command." }
	f.Feat = "211-Features:\r\n PASV\r\n AUTH TLS\r\n211 End"
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictOK, true)
	if m := mode(t, r, "EPSV"); m.Reply.Code != 500 || m.DataConnected {
		t.Errorf("EPSV %+v", m)
	}
	if m := mode(t, r, "PASV"); m.List == nil || !m.List.Completed {
		t.Errorf("PASV %+v", m)
	}
	if fd, ok := finding(r, FindPassiveRefused); !ok || fd.Severity != SevInfo || !strings.Contains(fd.Title, "EPSV: 500") {
		t.Errorf("findings %+v", r.Findings)
	}
	if !r.Control.Feat.AuthTLS || r.Control.Feat.EPSV {
		t.Errorf("feat %+v", r.Control.Feat)
	}
	if _, ok := finding(r, FindAuthTLS); !ok {
		t.Errorf("no auth-tls finding: %+v", r.Findings)
	}
}

func TestPassiveRefused(t *testing.T) {
	f := newFake(t)
	f.EPSV = func(*fakeSession) string { return "500 Unknown command." }
	f.PASV = func(*fakeSession) string { return "502 Command not implemented." }
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictPassiveRefused, false)
	if fd, ok := finding(r, FindPassiveRefused); !ok || fd.Severity != SevError || !strings.Contains(fd.Advice, "--active") {
		t.Errorf("findings %+v", r.Findings)
	}
}

// privatePASV announces 10.0.0.5 with the port of a loopback listener
// (or of a closed port, when closed is set).
func privatePASV(closed uint16) func(*fakeSession) string {
	return func(s *fakeSession) string {
		p := closed
		if p == 0 {
			p = s.listen()
		}
		return "227 Entering Passive Mode (" + ftp.FormatPORT(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.5"), p)) + ")."
	}
}

func TestPrivateAddressFallbackWorks(t *testing.T) {
	f := newFake(t)
	f.EPSV = func(*fakeSession) string { return "500 Unknown command." }
	f.PASV = privatePASV(0)
	f.start()
	d := dialer{hosts: map[string]string{"10.0.0.5": "unreachable"}}
	r := probeT(t, f, Options{Dial: d.Dial})
	// Decided: the LIST worked through the control address, so data
	// transfers work (verdict ok, exit 0), and a warning names the
	// private address for clients that use it.
	wantVerdict(t, r, VerdictOK, true)
	m := mode(t, r, "PASV")
	if m.AnnouncedClass != ClassPrivate || !m.DiffersFromControl || !strings.HasPrefix(m.Announced, "10.0.0.5:") ||
		len(m.Attempts) != 2 || m.Attempts[0].Result != ConnectUnreachable || m.Attempts[0].Source != SourceAnnounced ||
		m.Attempts[1].Result != ConnectOK || m.Attempts[1].Source != SourceControl ||
		!strings.HasPrefix(m.DataPeer, "127.0.0.1:") || m.List == nil || !m.List.Completed {
		t.Errorf("PASV %+v", m)
	}
	fd, ok := finding(r, FindAnnouncedPrivate)
	if !ok || fd.Severity != SevWarning || !strings.Contains(fd.Title, "10.0.0.5") || !strings.Contains(fd.Detail, "127.0.0.1") ||
		!strings.Contains(fd.Advice, "pasv_address") || !strings.Contains(fd.Advice, "MasqueradeAddress") {
		t.Errorf("finding %+v", fd)
	}
	if !strings.Contains(r.Summary, "10.0.0.5") {
		t.Errorf("summary %q does not name the private address", r.Summary)
	}
	if _, ok := finding(r, FindDataUnreachable); ok {
		t.Errorf("the private address's failure is reported twice: %+v", r.Findings)
	}
}

func TestPrivateAddressNothingWorks(t *testing.T) {
	f := newFake(t)
	f.EPSV = func(*fakeSession) string { return "500 Unknown command." }
	f.PASV = privatePASV(freePort(t))
	f.start()
	d := dialer{hosts: map[string]string{"10.0.0.5": "drop"}}
	r := probeT(t, f, Options{Dial: d.Dial})
	wantVerdict(t, r, VerdictDataPrivateAddress, false)
	if !strings.Contains(r.Summary, "10.0.0.5") || r.Findings[0].Code != FindAnnouncedPrivate || r.Findings[0].Severity != SevError {
		t.Errorf("summary %q, findings %+v", r.Summary, r.Findings)
	}
	if m := mode(t, r, "PASV"); len(m.Attempts) != 2 || m.Attempts[0].Result != ConnectTimeout || m.Attempts[1].Result != ConnectRefused {
		t.Errorf("attempts %+v", m.Attempts)
	}
}

func TestUnspecifiedAddressNotDialed(t *testing.T) {
	f := newFake(t)
	f.EPSV = func(*fakeSession) string { return "500 Unknown command." }
	f.PASV = func(s *fakeSession) string {
		return "227 Entering Passive Mode (" + ftp.FormatPORT(netip.AddrPortFrom(netip.IPv4Unspecified(), s.listen())) + ")."
	}
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictOK, true)
	m := mode(t, r, "PASV")
	if m.AnnouncedClass != ClassUnspecified || len(m.Attempts) != 2 || m.Attempts[0].Result != ConnectSkipped || m.Attempts[1].Result != ConnectOK {
		t.Errorf("PASV %+v", m)
	}
}

func TestDataRefused(t *testing.T) {
	f := newFake(t)
	closed := freePort(t)
	f.EPSV = func(*fakeSession) string { return fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", closed) }
	f.PASV = func(*fakeSession) string {
		return "227 Entering Passive Mode (" + ftp.FormatPORT(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), closed)) + ")."
	}
	f.start()
	r := probeT(t, f, Options{})
	wantVerdict(t, r, VerdictDataRefused, false)
	fd, ok := finding(r, FindDataRefused)
	if !ok || fd.Severity != SevError || !strings.Contains(fd.Title, fmt.Sprintf("port %d (EPSV, PASV) on 127.0.0.1 refused", closed)) {
		t.Errorf("findings %+v", r.Findings)
	}
	if len(r.Findings) != 1 {
		t.Errorf("want one merged finding, got %+v", r.Findings)
	}
}

func TestDataTimeout(t *testing.T) {
	f := newFake(t)
	const port = 50012 // never dialed for real: the dialer drops it
	f.EPSV = func(*fakeSession) string { return fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", port) }
	f.PASV = func(*fakeSession) string {
		return "227 Entering Passive Mode (" + ftp.FormatPORT(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)) + ")."
	}
	f.start()
	d := dialer{ports: map[uint16]string{port: "drop"}}
	r := probeT(t, f, Options{Dial: d.Dial})
	wantVerdict(t, r, VerdictDataBlocked, false)
	for _, name := range []string{"EPSV", "PASV"} {
		m := mode(t, r, name)
		if len(m.Attempts) != 1 || m.Attempts[0].Result != ConnectTimeout || m.Attempts[0].ElapsedMS < 900 || m.Attempts[0].ElapsedMS > 1500 {
			t.Errorf("%s attempts %+v, want one timeout after the 1s step", name, m.Attempts)
		}
	}
	fd, ok := finding(r, FindDataTimeout)
	if !ok || fd.Title != "port 50012 (EPSV, PASV) on 127.0.0.1 did not answer within 1s" ||
		!strings.Contains(fd.Advice, "ftpalg") || !strings.Contains(fd.Detail, "firewall") {
		t.Errorf("finding %+v", fd)
	}
	if !strings.HasPrefix(r.Summary, "data-blocked: ") || !strings.Contains(r.Summary, "did not answer within 1s") {
		t.Errorf("summary %q", r.Summary)
	}
}

func TestListFails(t *testing.T) {
	for _, tc := range []struct {
		reply string
		title string
	}{
		{"425 Security: Bad IP connecting.", "425 Security: Bad IP connecting."},
		{"550 Permission denied.", "the server refused to list: 550"},
	} {
		t.Run(tc.reply[:3], func(t *testing.T) {
			f := newFake(t)
			f.List = func(s *fakeSession) {
				if c, err := s.data(); err == nil {
					c.Close()
				}
				s.send(tc.reply)
			}
			f.start()
			r := probeT(t, f, Options{})
			wantVerdict(t, r, VerdictListFailed, false)
			m := mode(t, r, "EPSV")
			if m.List == nil || m.List.Completed || m.List.Reply.Code/100 != int(tc.reply[0]-'0') || !m.DataConnected {
				t.Errorf("EPSV %+v", m)
			}
			if fd, ok := finding(r, FindListFailed); !ok || !strings.Contains(fd.Title, tc.title) {
				t.Errorf("findings %+v", r.Findings)
			}
			// The LIST is tried again over PASV: it may be the path that differs.
			if m := mode(t, r, "PASV"); m.List == nil {
				t.Errorf("no LIST over PASV after the failed one over EPSV")
			}
		})
	}
}

func TestListHangs(t *testing.T) {
	f := newFake(t)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	f.List = func(s *fakeSession) {
		c, err := s.data()
		if err != nil {
			return
		}
		s.send("150 Here comes the directory listing.")
		<-hold // neither data nor the end of it
		c.Close()
	}
	f.start()
	r := probeT(t, f, Options{Timeout: 2 * time.Second})
	wantVerdict(t, r, VerdictListFailed, false)
	if m := mode(t, r, "PASV"); !strings.HasPrefix(m.Skipped, "not tried") {
		t.Errorf("PASV %+v: want skipped after the hang", m)
	}
}

func TestActive(t *testing.T) {
	refuse := func(*fakeSession) string { return "500 Unknown command." }
	t.Run("connects-back", func(t *testing.T) {
		f := newFake(t)
		f.EPSV, f.PASV = refuse, refuse
		f.start()
		r := probeT(t, f, Options{Active: true})
		wantVerdict(t, r, VerdictActiveOnly, true)
		m := mode(t, r, "EPRT")
		if !strings.HasPrefix(m.Command, "EPRT |1|127.0.0.1|") || m.Reply.Code != 200 || !m.DataConnected ||
			len(m.Attempts) != 1 || m.Attempts[0].Source != SourceServer || m.Attempts[0].Result != ConnectOK ||
			m.List == nil || !m.List.Completed || m.List.Bytes != int64(len(fakeListing)) {
			t.Errorf("EPRT %+v", m)
		}
		if p := mode(t, r, "PORT"); !strings.HasPrefix(p.Skipped, "not needed") {
			t.Errorf("PORT %+v", p)
		}
	})
	t.Run("port-fallback", func(t *testing.T) {
		f := newFake(t)
		f.EPRT = func(*fakeSession, string) string { return "500 Unknown command." }
		f.start()
		r := probeT(t, f, Options{Active: true})
		wantVerdict(t, r, VerdictOK, true)
		if p := mode(t, r, "PORT"); !strings.HasPrefix(p.Command, "PORT 127,0,0,1,") || p.List == nil || !p.List.Completed {
			t.Errorf("PORT %+v", p)
		}
		if got := f.Commands(); !slices.Equal(got, []string{"USER", "PASS", "FEAT", "EPSV", "LIST", "PASV", "EPRT", "PORT", "LIST", "QUIT"}) {
			t.Errorf("commands %v", got)
		}
	})
	t.Run("no-connect-150", func(t *testing.T) {
		f := newFake(t)
		f.EPSV, f.PASV = refuse, refuse
		f.List = func(s *fakeSession) { s.send("150 Here comes the directory listing.") } // and never connects
		f.start()
		r := probeT(t, f, Options{Active: true})
		wantVerdict(t, r, VerdictActiveBlocked, false)
		m := mode(t, r, "EPRT")
		if m.DataConnected || len(m.Attempts) != 1 || m.Attempts[0].Result != ConnectTimeout {
			t.Errorf("EPRT %+v", m)
		}
		if fd, ok := finding(r, FindActiveNoConnect); !ok || !strings.Contains(fd.Title, "did not connect back") {
			t.Errorf("findings %+v", r.Findings)
		}
	})
	t.Run("no-connect-425", func(t *testing.T) {
		f := newFake(t)
		f.EPSV, f.PASV = refuse, refuse
		f.List = func(s *fakeSession) { s.send("425 Failed to establish connection.") }
		f.start()
		start := time.Now()
		r := probeT(t, f, Options{Active: true})
		wantVerdict(t, r, VerdictActiveBlocked, false)
		if m := mode(t, r, "EPRT"); m.Attempts[0].Result != ConnectError || !strings.Contains(m.Attempts[0].Error, "replied 425") {
			t.Errorf("EPRT %+v", m)
		}
		if took := time.Since(start); took > time.Second/2 {
			t.Errorf("the probe waited %v for a connection the server had given up on", took)
		}
	})
}

// TestURLInjection: nothing in a URL can add a command line.
func TestURLInjection(t *testing.T) {
	for _, u := range []string{
		"ftp://user%0d%0aDELE%20x@127.0.0.1/",
		"ftp://user:pa%0ass@127.0.0.1/",
		"ftp://127.0.0.1/pub%0d%0aDELE%20x",
	} {
		if _, err := Run(context.Background(), Options{URL: u}); err == nil {
			t.Errorf("%s: no error", u)
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in                     string
		hostport, user, pass   string
		path, redacted, errSub string
	}{
		{in: "ftp://ftp.example.org", hostport: "ftp.example.org:21", user: "anonymous", pass: DefaultPassword, redacted: "ftp://ftp.example.org"},
		{in: "ftp.example.org:2121", hostport: "ftp.example.org:2121", user: "anonymous", pass: DefaultPassword, redacted: "ftp://ftp.example.org:2121"},
		{in: "ftp://bob:s3cret@[2001:db8::1]:21/pub/", hostport: "[2001:db8::1]:21", user: "bob", pass: "s3cret", path: "pub/", redacted: "ftp://bob@[2001:db8::1]:21/pub/"},
		{in: "ftp://bob@192.0.2.1", hostport: "192.0.2.1:21", user: "bob", pass: "", redacted: "ftp://bob@192.0.2.1"},
		{in: "ftp://ftp@192.0.2.1", hostport: "192.0.2.1:21", user: "ftp", pass: DefaultPassword, redacted: "ftp://ftp@192.0.2.1"},
		{in: "ftp://a%40b:p%3Aw@192.0.2.1", hostport: "192.0.2.1:21", user: "a@b", pass: "p:w", redacted: "ftp://a%40b@192.0.2.1"},
		{in: "ftps://192.0.2.1", errSub: "only plain FTP"},
		{in: "http://192.0.2.1", errSub: "want ftp://"},
		{in: "ftp://", errSub: "no host"},
		{in: "ftp://192.0.2.1:0", errSub: "bad port"},
		{in: "ftp://192.0.2.1:99999", errSub: "bad port"},
		{in: "ftp://192.0.2.1/?x=1", errSub: "no query"},
		{in: "ftp://:pw@192.0.2.1", errSub: "empty user"},
	} {
		got, err := parseURL(tc.in)
		switch {
		case tc.errSub != "":
			if err == nil || !strings.Contains(err.Error(), tc.errSub) {
				t.Errorf("%s: error %v, want one with %q", tc.in, err, tc.errSub)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case got.hostport != tc.hostport || got.user != tc.user || got.pass != tc.pass || got.path != tc.path || got.redacted != tc.redacted:
			t.Errorf("%s: %+v", tc.in, got)
		}
	}
}
