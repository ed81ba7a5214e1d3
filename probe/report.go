package probe

// The Report and everything in it. JSON field names are part of the
// interface (scripts read `ftpalg probe --json`): doc.go lists every one,
// report_test.go checks that list against these tags, and no field is
// omitempty, so every documented field is always present.

// Report is the outcome of one probe.
type Report struct {
	// Target is the probed URL without its password.
	Target string `json:"target"`
	// User is the login name sent.
	User string `json:"user"`
	// Verdict is the one-word conclusion; Summary says it in a sentence.
	Verdict Verdict `json:"verdict"`
	Summary string  `json:"summary"`
	// DataOK reports that a LIST completed over some data connection: data
	// transfers work (exit status 0).
	DataOK  bool    `json:"data_ok"`
	Control Control `json:"control"`
	// Modes are the data-connection set-ups, in the order tried: EPSV,
	// PASV and, with Options.Active, EPRT and PORT. One not tried says why
	// in Skipped.
	Modes []Mode `json:"modes"`
	// Findings explain what went wrong (or might, for other clients) and
	// what to do, most important first.
	Findings []Finding `json:"findings"`
	// Transcript is the control channel, "> " for what the probe sent and
	// "< " for what the server replied; the password is never in it.
	Transcript []string `json:"transcript"`
	// TimeoutMS is the whole probe's time budget, StepTimeoutMS each
	// connect's and reply's (a quarter of it), ElapsedMS the time taken.
	TimeoutMS     float64 `json:"timeout_ms"`
	StepTimeoutMS float64 `json:"step_timeout_ms"`
	ElapsedMS     float64 `json:"elapsed_ms"`
}

// Control is what happened on the control connection.
type Control struct {
	// Address is HOST:PORT from the URL.
	Address string `json:"address"`
	// Connect is the TCP connect; its Address is the IP:port reached.
	Connect Attempt `json:"connect"`
	// Local is the probe's own IP:port on the control connection.
	Local string `json:"local"`
	// PeerClass classifies the server's control address.
	PeerClass AddrClass `json:"peer_class"`
	// Connected reports a TCP connection and a 220 greeting.
	Connected bool  `json:"connected"`
	Greeting  Reply `json:"greeting"`
	// Login is the final reply to USER (or PASS); LoginOK that it was 230
	// or 202.
	Login   Reply    `json:"login"`
	LoginOK bool     `json:"login_ok"`
	Feat    Features `json:"feat"`
	// Error is why the control channel stopped working ("no reply within
	// 5s", "the server closed the control connection"); "" when it
	// worked to the end.
	Error string `json:"error"`
}

// Reply is a server reply: its code (0: none arrived) and its text, the
// lines after their codes joined by newlines, control characters replaced.
type Reply struct {
	Code int    `json:"code"`
	Text string `json:"text"`
}

// Final reports a final reply (2xx to 5xx), as opposed to a preliminary
// 1xx or none.
func (r Reply) Final() bool { return r.Code >= 200 }

// Features is the server's FEAT reply.
type Features struct {
	Reply Reply `json:"reply"`
	// List holds the feature lines ("EPSV", "AUTH TLS", "REST STREAM").
	List []string `json:"list"`
	// EPSV, EPRT and AuthTLS report those features in List.
	EPSV    bool `json:"epsv"`
	EPRT    bool `json:"eprt"`
	AuthTLS bool `json:"auth_tls"`
}

// Mode is one data-connection set-up and what came of it.
type Mode struct {
	// Name is EPSV, PASV, EPRT or PORT; Command the line as sent.
	Name    string `json:"name"`
	Command string `json:"command"`
	Passive bool   `json:"passive"`
	// Skipped says why the mode was not tried ("" when it was).
	Skipped string `json:"skipped"`
	Reply   Reply  `json:"reply"`
	// Error says what was wrong with a passive reply the probe could not
	// use (unparsable, a privileged port); "" otherwise.
	Error string `json:"error"`
	// Announced is the data address, IP:port: the one the server announced
	// (passive; for a 229 without an address, the control address with
	// the announced port) or the probe's listener (active).
	Announced string `json:"announced"`
	// AddressInReply reports that the reply itself carried an address (a
	// 227 always does, a 229 rarely).
	AddressInReply bool      `json:"address_in_reply"`
	AnnouncedClass AddrClass `json:"announced_class"`
	// DiffersFromControl reports that the announced address is not the
	// server's control address (passive), or not the probe's (active).
	DiffersFromControl bool `json:"differs_from_control"`
	// Attempts are the TCP connections of the data channel: in passive
	// mode the probe's connects to the announced port, on the announced
	// address and then on the control address (source "announced",
	// "control"); in active mode the server's connection back to the
	// probe's listener (source "server").
	Attempts []Attempt `json:"attempts"`
	// DataConnected reports that a data connection was made; DataPeer is
	// the address it was made to (passive) or from (active).
	DataConnected bool   `json:"data_connected"`
	DataPeer      string `json:"data_peer"`
	// List is the LIST over this mode's data connection; null when none
	// was sent (no connection, or an earlier mode already listed).
	List *List `json:"list"`
}

// Attempt is one TCP connection attempt.
type Attempt struct {
	Address   string        `json:"address"`
	Source    string        `json:"source"`
	Result    ConnectResult `json:"result"`
	Error     string        `json:"error"`
	ElapsedMS float64       `json:"elapsed_ms"`
}

// Attempt sources.
const (
	SourceURL       = "url"       // the control connection to the URL's host
	SourceAnnounced = "announced" // the address in the server's passive reply
	SourceControl   = "control"   // the server's control address with the announced port
	SourceServer    = "server"    // the server connecting back (active mode)
)

// ConnectResult is how a TCP connection attempt ended.
type ConnectResult string

// The connect results.
const (
	ConnectOK          ConnectResult = "ok"
	ConnectRefused     ConnectResult = "refused"     // RST, or ICMP port unreachable (a REJECT rule)
	ConnectTimeout     ConnectResult = "timeout"     // nothing came back: a firewall dropped the SYN
	ConnectUnreachable ConnectResult = "unreachable" // no route, or ICMP host/network unreachable
	ConnectError       ConnectResult = "error"       // anything else (name resolution, reset, a 425 instead of a connection)
	ConnectSkipped     ConnectResult = "skipped"     // not attempted (Error says why)
)

// List is a LIST and its data.
type List struct {
	// Completed reports a final 2xx reply and the data connection closed
	// cleanly by the server: the transfer worked.
	Completed bool `json:"completed"`
	// Bytes is what arrived over the data connection.
	Bytes       int64   `json:"bytes"`
	Preliminary Reply   `json:"preliminary"`
	Reply       Reply   `json:"reply"`
	Error       string  `json:"error"`
	ElapsedMS   float64 `json:"elapsed_ms"`
}

// Finding is one thing the probe found, in plain words, and what to do
// about it.
type Finding struct {
	// Code names the kind of finding (see doc.go); Severity is error (it
	// breaks transfers here), warning (it breaks some clients, or
	// clients elsewhere) or info.
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	// Title is one line; Detail explains it; Advice says what to do.
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Advice string `json:"advice"`
}

// Severity of a finding.
type Severity string

// The severities.
const (
	SevError   Severity = "error"
	SevWarning Severity = "warning"
	SevInfo    Severity = "info"
)

// Verdict is the probe's conclusion.
type Verdict string

// The verdicts; doc.go says what each means and the exit status.
const (
	VerdictOK                 Verdict = "ok"
	VerdictActiveOnly         Verdict = "active-only"
	VerdictControlFailed      Verdict = "control-failed"
	VerdictLoginFailed        Verdict = "login-failed"
	VerdictPassiveRefused     Verdict = "passive-refused"
	VerdictDataPrivateAddress Verdict = "data-private-address"
	VerdictDataRefused        Verdict = "data-refused"
	VerdictDataBlocked        Verdict = "data-blocked"
	VerdictDataUnreachable    Verdict = "data-unreachable"
	VerdictActiveRefused      Verdict = "active-refused"
	VerdictActiveBlocked      Verdict = "active-blocked"
	VerdictListFailed         Verdict = "list-failed"
	VerdictIncomplete         Verdict = "incomplete"
)

// Verdicts lists every verdict.
var Verdicts = []Verdict{
	VerdictOK, VerdictActiveOnly, VerdictControlFailed, VerdictLoginFailed, VerdictPassiveRefused,
	VerdictDataPrivateAddress, VerdictDataRefused, VerdictDataBlocked, VerdictDataUnreachable,
	VerdictActiveRefused, VerdictActiveBlocked, VerdictListFailed, VerdictIncomplete,
}

// Finding codes.
const (
	FindControlConnect   = "control-connect"
	FindControlGreeting  = "control-greeting"
	FindLogin            = "login"
	FindPassiveRefused   = "passive-refused"
	FindActiveRefused    = "active-refused"
	FindModeReply        = "mode-reply"
	FindPrivilegedPort   = "privileged-port"
	FindAnnouncedPrivate = "announced-unroutable"
	FindAnnouncedDiffers = "announced-differs"
	FindDataTimeout      = "data-timeout"
	FindDataRefused      = "data-refused"
	FindDataUnreachable  = "data-unreachable"
	FindDataError        = "data-error"
	FindListFailed       = "list-failed"
	FindActiveNoConnect  = "active-no-connect"
	FindAuthTLS          = "auth-tls"
	FindIncomplete       = "incomplete"
)
