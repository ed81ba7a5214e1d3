package probe

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// Advice shared by several findings.
const (
	advicePassiveAddress = "configure the server's passive address (vsftpd pasv_address, ProFTPD MasqueradeAddress, pure-ftpd -P) " +
		"or put ftpalg in front of it"
	adviceOpenRange = "open the server's passive port range (vsftpd pasv_min_port/pasv_max_port, ProFTPD PassivePorts, " +
		"pure-ftpd -p) in that firewall, or use ftpalg, which opens exactly the announced port"
	adviceForwardRange = "forward (or open) the server's passive port range to the server as well as port 21, " +
		"or put ftpalg in front of the server"
	// ignoringClients are clients that dial the control address whatever
	// a 227 says.
	ignoringClients = "curl, lftp, FileZilla, Python ftplib ≥ 3.9.3 and ftpalg"
)

// Judge sets r's Verdict, Summary, DataOK and Findings from the facts in
// the rest of r. It is pure: Run calls it last, and tests call it on
// reports they build.
func Judge(r *Report) {
	j := &judge{r: r}
	r.Findings = []Finding{}
	r.DataOK = false
	r.Verdict = j.verdict()
	r.Findings = j.sorted()
	j.headline()
	r.Summary = j.summary()
}

// headlines are the findings that explain each verdict, best first.
var headlines = map[Verdict][]string{
	VerdictControlFailed:      {FindControlConnect, FindControlGreeting},
	VerdictLoginFailed:        {FindLogin},
	VerdictPassiveRefused:     {FindPassiveRefused, FindModeReply, FindPrivilegedPort},
	VerdictDataPrivateAddress: {FindAnnouncedPrivate},
	VerdictDataRefused:        {FindDataRefused},
	VerdictDataBlocked:        {FindDataTimeout},
	VerdictDataUnreachable:    {FindDataUnreachable, FindDataError},
	VerdictActiveRefused:      {FindActiveRefused},
	VerdictActiveBlocked:      {FindActiveNoConnect},
	VerdictListFailed:         {FindListFailed},
	VerdictIncomplete:         {FindIncomplete},
}

// headline moves the finding that explains the verdict to the front, so
// that the first finding and the summary name the cause.
func (j *judge) headline() {
	fs := j.r.Findings
	for _, code := range headlines[j.r.Verdict] {
		if i := slices.IndexFunc(fs, func(f Finding) bool { return f.Code == code && f.Severity != SevInfo }); i > 0 {
			f := fs[i]
			copy(fs[1:i+1], fs[:i])
			fs[0] = f
			return
		} else if i == 0 {
			return
		}
	}
}

type judge struct {
	r        *Report
	findings []Finding
}

func (j *judge) add(f Finding) { j.findings = append(j.findings, f) }

// sorted returns the findings, errors first, then warnings, then infos,
// each in the order found.
func (j *judge) sorted() []Finding {
	rank := map[Severity]int{SevError: 0, SevWarning: 1, SevInfo: 2}
	out := slices.Clone(j.findings)
	slices.SortStableFunc(out, func(a, b Finding) int { return cmp.Compare(rank[a.Severity], rank[b.Severity]) })
	if out == nil {
		out = []Finding{}
	}
	return out
}

func (j *judge) verdict() Verdict {
	r := j.r
	c := &r.Control
	if c.Connect.Result != ConnectOK {
		j.controlConnect()
		return VerdictControlFailed
	}
	if !c.Connected {
		j.greeting()
		return VerdictControlFailed
	}
	if !c.LoginOK {
		j.login()
		return VerdictLoginFailed
	}
	var passive, active []*Mode
	for i := range r.Modes {
		m := &r.Modes[i]
		if m.List != nil && m.List.Completed {
			r.DataOK = true
		}
		if m.Passive {
			passive = append(passive, m)
		} else {
			active = append(active, m)
		}
	}
	passiveOK, activeOK := listed(passive), listed(active)
	pv := j.passive(passive)
	av := j.active(active, passiveOK)
	j.incomplete()
	if c.Feat.AuthTLS {
		j.add(Finding{Code: FindAuthTLS, Severity: SevInfo,
			Title: "the server offers FTPS (AUTH TLS); this probe tested plain FTP",
			Detail: "With FTPS the control channel is encrypted, so no firewall, NAT router helper or ftpalg in between can read " +
				"the announced data ports and open them.",
			Advice: "for FTPS clients, open (and forward) the server's passive port range, and make the server announce an address " +
				"its clients can reach"})
	}
	switch {
	case passiveOK:
		return VerdictOK
	case activeOK:
		return VerdictActiveOnly
	case pv != "" && pv != VerdictPassiveRefused && pv != VerdictIncomplete:
		return pv
	case av != "" && av != VerdictIncomplete:
		return av
	case pv != "":
		return pv
	}
	return VerdictIncomplete
}

// listed reports whether a LIST completed in one of ms.
func listed(ms []*Mode) bool {
	for _, m := range ms {
		if m.List != nil && m.List.Completed {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- control

func (j *judge) controlConnect() {
	a := j.r.Control.Connect
	addr := cmp.Or(a.Address, j.r.Control.Address)
	f := Finding{Code: FindControlConnect, Severity: SevError}
	switch a.Result {
	case ConnectRefused:
		f.Title = "nothing accepts connections on " + addr
		f.Detail = "The connection was refused (a TCP reset, or ICMP port unreachable): the FTP server is not running there, " +
			"listens on another address or port, or a firewall rejects the control port."
		f.Advice = "check the host and port in the URL and that the server runs; open its control port (21) in its firewall"
	case ConnectTimeout:
		f.Title = fmt.Sprintf("%s did not answer within %s", addr, dur(a.ElapsedMS))
		f.Detail = "No answer to the connection attempt came back: the host is down, or a firewall on the way drops the control port."
		f.Advice = "check the address, that the host is up, and that the firewalls in between let the control port (21) through"
	case ConnectUnreachable:
		f.Title = fmt.Sprintf("%s is unreachable (%s)", addr, shortErr(a.Error))
		f.Detail = "There is no route to the server, or a router or firewall (this machine's own included) reported it unreachable or prohibited."
		f.Advice = "check this machine's routes and firewall, and the address in the URL"
	default:
		f.Title = fmt.Sprintf("could not connect to %s (%s)", addr, shortErr(a.Error))
		f.Detail = "The control connection failed before any FTP was spoken: " + a.Error
		f.Advice = "check the host name and port in the URL"
	}
	j.add(f)
}

func (j *judge) greeting() {
	c := &j.r.Control
	f := Finding{Code: FindControlGreeting, Severity: SevError}
	switch {
	case c.Greeting.Code == 0:
		f.Title = "the server sent no FTP greeting: " + cmp.Or(c.Error, "no reply")
		f.Detail = "The TCP connection to " + c.Connect.Address + " opened, but no 220 greeting came: it may not be an FTP server, " +
			"or the server (or something in between, like a proxy that waits for a TLS handshake) is stuck."
		f.Advice = "check that the URL names an FTP server's plain control port (21; implicit FTPS on 990 is not probed)"
	case c.Greeting.Code == 421:
		f.Title = fmt.Sprintf("the server refused the session: %d %s", c.Greeting.Code, firstLine(c.Greeting.Text))
		f.Detail = "The server answered but does not take a session now: it reached its connection limit, or refuses this client's address."
		f.Advice = "try again later, or raise the server's limits (vsftpd max_clients/max_per_ip, ProFTPD MaxInstances/MaxClientsPerHost)"
	default:
		f.Title = fmt.Sprintf("unexpected greeting: %d %s", c.Greeting.Code, firstLine(c.Greeting.Text))
		f.Detail = "An FTP server greets with 220; this one did not."
		f.Advice = "check that the URL names an FTP server"
	}
	j.add(f)
}

func (j *judge) login() {
	c := &j.r.Control
	f := Finding{Code: FindLogin, Severity: SevError}
	anon := strings.EqualFold(j.r.User, DefaultUser) || strings.EqualFold(j.r.User, "ftp")
	switch {
	case c.Login.Code == 0:
		f.Title = "no answer to the login: " + cmp.Or(c.Error, "no reply")
		f.Detail = "The server greeted but did not answer USER/PASS in time."
		f.Advice = "try again with a longer --timeout; a server that looks up the client's name (reverse DNS) can be slow"
	case c.Login.Code == 332:
		f.Title = "the server wants an account (332), which the probe does not send"
		f.Detail = "The probe sends only USER and PASS."
		f.Advice = "probe with a user that needs no ACCT"
	case anon:
		f.Title = fmt.Sprintf("the server refused the anonymous login: %d %s", c.Login.Code, firstLine(c.Login.Text))
		f.Detail = "The probe logs in as anonymous unless the URL names a user; this server does not allow anonymous logins."
		f.Advice = "give a user and password: ftpalg probe ftp://USER:PASSWORD@HOST/"
	default:
		f.Title = fmt.Sprintf("the server refused the login of %q: %d %s", j.r.User, c.Login.Code, firstLine(c.Login.Text))
		f.Detail = "The control connection works; the user name or password was not accepted."
		f.Advice = "check the user name and password in the URL"
	}
	j.add(f)
}

// ---------------------------------------------------------------- passive

// failure is a data connection that did not open, for findings merged
// per address and result.
type failure struct {
	result  ConnectResult
	host    netip.Addr
	ports   []uint16
	modes   map[uint16][]string // port → the modes that announced it
	elapsed float64             // the longest wait, ms
	err     string
}

// portList says which ports failed for which modes: "port 40012 (EPSV,
// PASV)", "ports 40012 (EPSV) and 40077 (PASV)".
func (f *failure) portList() string {
	var parts []string
	for _, p := range f.ports {
		parts = append(parts, fmt.Sprintf("%d (%s)", p, strings.Join(f.modes[p], ", ")))
	}
	if len(parts) == 1 {
		return "port " + parts[0]
	}
	return "ports " + strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// passive makes the findings about passive modes and returns the verdict
// they lead to when no LIST completed ("" when they lead to none).
func (j *judge) passive(modes []*Mode) Verdict {
	r := j.r
	sev := SevError
	if r.DataOK {
		sev = SevWarning
	}
	var (
		fails   []*failure
		refused []string
		worst   Verdict
		tried   int
	)
	better := func(v Verdict) {
		if rankVerdict(v) < rankVerdict(worst) {
			worst = v
		}
	}
	for _, m := range modes {
		if m.Skipped != "" {
			if strings.HasPrefix(m.Skipped, "not tried") {
				better(VerdictIncomplete)
			}
			continue
		}
		tried++
		switch {
		case m.Reply.Code == 0:
			better(VerdictIncomplete)
			continue
		case m.Reply.Code != 227 && m.Reply.Code != 228 && m.Reply.Code != 229:
			refused = append(refused, fmt.Sprintf("%s: %d %s", m.Name, m.Reply.Code, firstLine(m.Reply.Text)))
			better(VerdictPassiveRefused)
			continue
		case m.Error != "":
			j.badReply(m, sev)
			better(VerdictPassiveRefused)
			continue
		}
		unroutable := m.DiffersFromControl && !m.AnnouncedClass.Routable()
		if unroutable {
			j.unroutable(m)
		} else if m.DiffersFromControl {
			j.differs(m)
		}
		for _, a := range m.Attempts {
			if a.Result == ConnectOK || a.Result == ConnectSkipped || unroutable && a.Source == SourceAnnounced {
				continue
			}
			fails = addFailure(fails, m.Name, a)
		}
		switch {
		case m.List != nil && !m.List.Completed:
			j.listFailed(m, sev)
			better(VerdictListFailed)
		case m.DataConnected:
		case unroutable:
			better(VerdictDataPrivateAddress)
		default:
			better(verdictOf(m.Attempts))
		}
	}
	for _, f := range fails {
		j.dataFailure(f, sev)
	}
	if len(refused) > 0 {
		f := Finding{Code: FindPassiveRefused, Severity: SevInfo,
			Title:  "the server refused " + strings.Join(refused, "; "),
			Detail: "Clients fall back from one passive command to the other (EPSV to PASV); this is only a problem when both fail."}
		if len(refused) == tried {
			f.Severity = sev
			f.Detail = "The server refused every passive-mode command: clients in passive mode (the default of every modern client) cannot transfer anything."
			f.Advice = "enable passive mode on the server (vsftpd pasv_enable=YES), or use active mode (check it with ftpalg probe --active)"
		}
		j.add(f)
	}
	return worst
}

// rankVerdict orders the verdicts of failed data connections: the one
// that got furthest, or names the more specific cause, first.
func rankVerdict(v Verdict) int {
	switch v {
	case VerdictListFailed:
		return 0
	case VerdictDataPrivateAddress:
		return 1
	case VerdictDataRefused:
		return 2
	case VerdictDataBlocked:
		return 3
	case VerdictDataUnreachable:
		return 4
	case VerdictPassiveRefused:
		return 5
	case VerdictIncomplete:
		return 6
	}
	return 99
}

// verdictOf is the verdict of a mode whose attempts all failed.
func verdictOf(as []Attempt) Verdict {
	v := Verdict("")
	for _, a := range as {
		var w Verdict
		switch a.Result {
		case ConnectRefused:
			w = VerdictDataRefused
		case ConnectTimeout:
			w = VerdictDataBlocked
		case ConnectUnreachable, ConnectError:
			w = VerdictDataUnreachable
		case ConnectSkipped:
			w = VerdictIncomplete
		default:
			continue
		}
		if v == "" || rankVerdict(w) < rankVerdict(v) {
			v = w
		}
	}
	return cmp.Or(v, VerdictIncomplete)
}

func addFailure(fails []*failure, mode string, a Attempt) []*failure {
	ap, err := netip.ParseAddrPort(a.Address)
	if err != nil {
		return fails
	}
	i := slices.IndexFunc(fails, func(f *failure) bool { return f.result == a.Result && f.host == ap.Addr() })
	if i < 0 {
		fails = append(fails, &failure{result: a.Result, host: ap.Addr(), modes: map[uint16][]string{}, err: a.Error})
		i = len(fails) - 1
	}
	f := fails[i]
	if _, seen := f.modes[ap.Port()]; !seen {
		f.ports = append(f.ports, ap.Port())
	}
	f.modes[ap.Port()] = append(f.modes[ap.Port()], mode)
	f.elapsed = max(f.elapsed, a.ElapsedMS)
	return fails
}

func (j *judge) dataFailure(f *failure, sev Severity) {
	ports := f.portList()
	x := Finding{Severity: sev}
	switch f.result {
	case ConnectTimeout:
		x.Code = FindDataTimeout
		x.Title = fmt.Sprintf("%s on %s did not answer within %s", ports, f.host, dur(f.elapsed))
		x.Detail = "The server announced " + map[bool]string{true: "these ports", false: "the port"}[len(f.ports) > 1] +
			", but no answer to the connection attempt came back: a firewall between you " +
			"and the server (yours, a router's or the server's own) probably drops its passive port range. This is the " +
			"classic \"login works, LIST hangs\"."
		x.Advice = adviceOpenRange
	case ConnectRefused:
		x.Code = FindDataRefused
		x.Title = fmt.Sprintf("%s on %s refused the connection", ports, f.host)
		x.Detail = "The connection was actively refused (a TCP reset, or ICMP port unreachable): nothing listens on that port " +
			"there — typically a NAT router that forwards only port 21 to the server — or a firewall rejects it."
		x.Advice = adviceForwardRange
	case ConnectUnreachable:
		x.Code = FindDataUnreachable
		x.Title = fmt.Sprintf("%s on %s could not be reached (%s)", ports, f.host, shortErr(f.err))
		x.Detail = "There is no route to that address, or a router or a firewall (this machine's own included) reported it " +
			"unreachable or prohibited."
		x.Advice = "check the routes and the firewalls on the path, this machine's own included; or use ftpalg, which opens exactly the announced port"
	default:
		x.Code = FindDataError
		x.Title = fmt.Sprintf("connecting to %s on %s failed (%s)", ports, f.host, shortErr(f.err))
		x.Detail = "The data connection failed: " + f.err
		x.Advice = "check the firewalls on the path, this machine's own included"
	}
	j.add(x)
}

// unroutable explains an announced address that is private (or
// otherwise not routable) and not the control address.
func (j *judge) unroutable(m *Mode) {
	ann, _ := netip.ParseAddrPort(m.Announced)
	control, _ := netip.ParseAddrPort(j.r.Control.Connect.Address)
	f := Finding{Code: FindAnnouncedPrivate, Severity: SevError, Advice: advicePassiveAddress}
	f.Title = fmt.Sprintf("%s announced %s, %s", m.Name, m.Announced, m.AnnouncedClass.describe(ann.Addr()))
	reach := "that this client cannot reach"
	var here string
	for _, a := range m.Attempts {
		if a.Source != SourceAnnounced {
			continue
		}
		switch a.Result {
		case ConnectOK:
			reach = "that is reachable from here but from nowhere outside the server's own network"
		case ConnectSkipped:
			here = " The probe did not connect there (" + strings.TrimPrefix(a.Error, "not dialed: ") + ")."
		default:
			here = fmt.Sprintf(" A connection to it here: %s.", resultWords(a))
		}
	}
	f.Detail = fmt.Sprintf("The server announced %s, %s %s; it answered the control connection on %s.%s",
		m.Announced, m.AnnouncedClass.describe(ann.Addr()), reach, control.Addr(), here)
	switch {
	case m.DataConnected && m.DataPeer != m.Announced:
		f.Severity = SevWarning
		f.Detail += fmt.Sprintf(" The control address with the same port (%s) works, so clients that ignore the announced "+
			"address (%s) work, while clients that use it hang at LIST.", m.DataPeer, ignoringClients)
	case m.DataConnected:
		f.Severity = SevWarning
		f.Detail += " Clients elsewhere cannot use it."
	default:
		f.Detail += " The control address with the same port did not answer either, so even clients that ignore the announced address fail."
		if j.r.DataOK {
			f.Severity = SevWarning
		}
	}
	j.add(f)
}

// differs explains a routable announced address that is not the control
// address, when it matters.
func (j *judge) differs(m *Mode) {
	control, _ := netip.ParseAddrPort(j.r.Control.Connect.Address)
	var annRes *Attempt
	for i := range m.Attempts {
		if m.Attempts[i].Source == SourceAnnounced {
			annRes = &m.Attempts[i]
		}
	}
	f := Finding{Code: FindAnnouncedDiffers, Severity: SevInfo,
		Title: fmt.Sprintf("%s announced %s, not the control address %s", m.Name, m.Announced, control.Addr())}
	switch {
	case annRes != nil && annRes.Result == ConnectOK:
		f.Detail = "The announced address answered: the server has several addresses, or sits behind a NAT that it knows about."
	case m.DataConnected:
		f.Severity = SevWarning
		f.Detail = fmt.Sprintf("The announced address did not answer (%s) but the control address did, so only clients that ignore "+
			"the announced address (%s) work.", resultWords(*annRes), ignoringClients)
		f.Advice = advicePassiveAddress
	default:
		return // the failures below say it all
	}
	j.add(f)
}

func (j *judge) badReply(m *Mode, sev Severity) {
	f := Finding{Code: FindModeReply, Severity: sev}
	if strings.Contains(m.Error, ftp.ErrPrivilegedPort.Error()) {
		f.Code = FindPrivilegedPort
		f.Title = fmt.Sprintf("%s announced %s, a privileged port", m.Name, cmp.Or(m.Announced, "an address"))
		f.Detail = "A data port below 1024 is never an FTP passive port; careful clients and ftpalg refuse to connect there (it " +
			"would reach another service of the server). The probe did not connect."
		f.Advice = "set the server's passive port range above 1023"
	} else {
		f.Title = fmt.Sprintf("the server's %d reply to %s cannot be used: %s", m.Reply.Code, m.Name, m.Error)
		f.Detail = "Clients cannot find the data address in this reply."
		f.Advice = "report the reply to the server's vendor; ftpalg in front of the server sends clients a well-formed one"
	}
	j.add(f)
}

// listFailed explains a LIST over an open data connection that did not
// complete.
func (j *judge) listFailed(m *Mode, sev Severity) {
	l := m.List
	f := Finding{Code: FindListFailed, Severity: sev}
	code := l.Reply.Code
	if code == 0 {
		code = l.Preliminary.Code
	}
	switch {
	case l.Reply.Code == 425:
		f.Title = fmt.Sprintf("LIST over the %s data connection failed: 425 %s", m.Name, firstLine(l.Reply.Text))
		if m.Passive {
			f.Detail = "The data connection opened, but the server did not take it as the data connection. Servers refuse a data " +
				"connection from another address than the control connection's (vsftpd: pasv_promiscuous=NO), which a NAT or " +
				"load balancer with several source addresses causes."
			f.Advice = "make control and data connections leave from the same address, or put ftpalg in front of the server"
		} else {
			f.Detail = "The server could not open its connection back to the probe."
			f.Advice = "use passive mode, or open the way back to this machine"
		}
	case l.Reply.Code == 426:
		f.Title = fmt.Sprintf("LIST over the %s data connection was aborted: 426 %s", m.Name, firstLine(l.Reply.Text))
		f.Detail = "The data connection broke during the transfer: something in between reset it."
		f.Advice = "look for a firewall or IDS that resets FTP data connections"
	case l.Reply.Code == 450 || l.Reply.Code == 550 || l.Reply.Code == 451:
		f.Title = fmt.Sprintf("the server refused to list: %d %s", l.Reply.Code, firstLine(l.Reply.Text))
		f.Detail = "The data connection opened, so the network path works; the server refused the listing (permissions, or the path)."
		f.Advice = "check the path in the URL and the account's permissions"
	case l.Reply.Code != 0:
		f.Title = fmt.Sprintf("LIST over the %s data connection failed: %d %s", m.Name, l.Reply.Code, firstLine(l.Reply.Text))
		f.Detail = "The data connection opened, but the server did not complete the listing."
		f.Advice = "see the server's log for the reason"
	default:
		f.Title = fmt.Sprintf("LIST over the %s data connection did not finish: %s", m.Name, cmp.Or(l.Error, "no reply"))
		f.Detail = "The data connection opened, but the listing or the server's final reply did not come in time: a middlebox may " +
			"hold the data connection (a path MTU problem drops full-size segments, typical of VPN and PPPoE links), or the server hangs."
		f.Advice = "look for MTU/MSS problems on the path, or probe again with a longer --timeout"
		if code == 0 && l.Bytes == 0 && l.Preliminary.Code == 0 {
			f.Detail = "The data connection opened, but the server did not answer LIST in time."
			f.Advice = "see the server's log; probe again with a longer --timeout"
		}
	}
	j.add(f)
}

// ---------------------------------------------------------------- active

// active makes the findings about active modes and returns their verdict
// when no LIST completed ("" when none was tried).
func (j *judge) active(modes []*Mode, passiveOK bool) Verdict {
	if len(modes) == 0 {
		return ""
	}
	sev := SevError
	if j.r.DataOK {
		sev = SevWarning
	}
	var (
		v       Verdict
		refused []string
		tried   int
	)
	for _, m := range modes {
		if m.Skipped != "" {
			if strings.HasPrefix(m.Skipped, "not tried") || strings.HasPrefix(m.Skipped, "no listener") {
				v = cmp.Or(v, VerdictIncomplete)
			}
			continue
		}
		tried++
		switch {
		case m.Reply.Code == 0:
			v = cmp.Or(v, VerdictIncomplete)
		case m.Reply.Code/100 != 2:
			refused = append(refused, fmt.Sprintf("%s: %d %s", m.Name, m.Reply.Code, firstLine(m.Reply.Text)))
		case len(m.Attempts) > 0 && m.Attempts[0].Result != ConnectOK:
			j.noConnect(m, sev)
			v = VerdictActiveBlocked
		case m.List != nil && !m.List.Completed:
			j.listFailed(m, sev)
			v = VerdictListFailed
		}
	}
	if len(refused) > 0 {
		f := Finding{Code: FindActiveRefused, Severity: SevInfo, Title: "the server refused " + strings.Join(refused, "; ")}
		if len(refused) == tried {
			f.Severity = sev
			if passiveOK {
				f.Severity = SevInfo
			}
			f.Detail = "The server does not take active mode (vsftpd port_enable=NO, or PORT to this address is refused)."
			f.Advice = "use passive mode"
			if v == "" {
				v = VerdictActiveRefused
			}
		}
		j.add(f)
	}
	return v
}

func (j *judge) noConnect(m *Mode, sev Severity) {
	a := m.Attempts[0]
	f := Finding{Code: FindActiveNoConnect, Severity: sev}
	if a.Result == ConnectTimeout {
		f.Title = fmt.Sprintf("after %s the server did not connect back to %s within %s", m.Name, m.Announced, dur(a.ElapsedMS))
	} else {
		f.Title = fmt.Sprintf("after %s the server did not connect back to %s (%s)", m.Name, m.Announced, a.Error)
	}
	local, _ := netip.ParseAddrPort(m.Announced)
	server, _ := netip.ParseAddrPort(j.r.Control.Connect.Address)
	if !m.AnnouncedClass.Routable() && Classify(server.Addr()).Routable() {
		f.Detail = fmt.Sprintf("This machine's address %s is %s: the server cannot reach it unless a NAT router in between "+
			"rewrites PORT/EPRT (an FTP helper).", local.Addr(), m.AnnouncedClass.describe(local.Addr()))
	} else {
		f.Detail = "A firewall on this machine or in front of it drops the server's connection, or the server's outgoing connections are blocked."
	}
	f.Advice = "use passive mode (every modern client's default); or let the server's connections in, or run ftpalg on your router, which handles PORT/EPRT"
	j.add(f)
}

// ---------------------------------------------------------------- the rest

// incomplete explains modes not tried because the control channel broke
// or the time ran out.
func (j *judge) incomplete() {
	var names []string
	for _, m := range j.r.Modes {
		if strings.HasPrefix(m.Skipped, "not tried") {
			names = append(names, m.Name)
		}
	}
	if len(names) == 0 {
		return
	}
	why := cmp.Or(j.r.Control.Error, "the probe ran out of time")
	sev := SevWarning
	if j.r.DataOK {
		sev = SevInfo
	}
	j.add(Finding{Code: FindIncomplete, Severity: sev,
		Title:  fmt.Sprintf("%s not tried: %s", strings.Join(names, ", "), why),
		Detail: "The probe stops sending commands once a reply is overdue (a late one would be taken for the answer to the next command) or its time is up.",
		Advice: "probe again with a longer --timeout"})
}

func (j *judge) summary() string {
	r := j.r
	lead := map[Verdict]string{
		VerdictOK:                 "data transfers work",
		VerdictActiveOnly:         "only active mode works",
		VerdictControlFailed:      "no FTP control connection",
		VerdictLoginFailed:        "login failed",
		VerdictPassiveRefused:     "logged in, but the server offers no usable passive mode",
		VerdictDataPrivateAddress: "logged in, but the server announces an address clients cannot reach",
		VerdictDataRefused:        "logged in, but the data connection is refused",
		VerdictDataBlocked:        "logged in, but the data connection is blocked",
		VerdictDataUnreachable:    "logged in, but the data connection cannot be made",
		VerdictActiveRefused:      "logged in, but the server refuses active mode",
		VerdictActiveBlocked:      "logged in, but the server cannot connect back",
		VerdictListFailed:         "a data connection opened, but LIST failed",
		VerdictIncomplete:         "the probe could not finish",
	}[r.Verdict]
	s := string(r.Verdict) + ": " + lead
	if r.Verdict == VerdictOK || r.Verdict == VerdictActiveOnly {
		for _, m := range r.Modes {
			if m.List != nil && m.List.Completed {
				s += fmt.Sprintf(" (LIST over %s via %s: %d bytes)", m.Name, m.DataPeer, m.List.Bytes)
				break
			}
		}
	}
	for _, f := range r.Findings {
		if f.Severity == SevError || f.Severity == SevWarning && (r.DataOK || r.Verdict == VerdictIncomplete) {
			if r.DataOK {
				return s + "; but " + f.Title
			}
			return s + ": " + f.Title
		}
	}
	return s
}

// ---------------------------------------------------------------- words

// resultWords says how an attempt ended.
func resultWords(a Attempt) string {
	switch a.Result {
	case ConnectOK:
		return "it connected"
	case ConnectTimeout:
		return "no answer within " + dur(a.ElapsedMS)
	case ConnectRefused:
		return "refused"
	case ConnectUnreachable:
		return "unreachable (" + shortErr(a.Error) + ")"
	case ConnectSkipped:
		return "not tried"
	}
	return "failed (" + shortErr(a.Error) + ")"
}

// dur prints milliseconds as a short duration: "5s", "1.2s", "3ms".
func dur(msec float64) string {
	d := time.Duration(msec * float64(time.Millisecond))
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// shortErr is the last part of a Go network error ("dial tcp
// 10.0.0.5:50012: connect: network is unreachable" → "network is
// unreachable").
func shortErr(s string) string {
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}
