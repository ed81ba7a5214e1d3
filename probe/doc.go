// Package probe is the client-side check behind `ftpalg probe`: the test a
// user runs when "login works, LIST hangs". It connects to an FTP server,
// logs in (anonymous by default), asks for FEAT, tries EPSV and PASV (and
// with Options.Active EPRT, then PORT if EPRT is refused), connects to
// every announced data port, lists over the first data connection that
// opens, and judges what it saw: a Report with a Verdict, and Findings
// that say in plain words what is wrong and what to do.
//
//	r, err := probe.Run(ctx, probe.Options{URL: "ftp://ftp.example.org/", Timeout: 20 * time.Second})
//	// err: only a bad URL or timeout; the network's failures are in r
//	probe.WriteText(os.Stdout, &r) // or json.Marshal(r)
//	if !r.DataOK { os.Exit(1) }
//
// Invariants:
//
//   - Bounded: the whole probe ends within Options.Timeout (default 20s).
//     Every connect, accept and reply wait gets a quarter of it, within
//     what is left, so two silent data ports still leave time to judge.
//     Nothing is retried; each data address is dialed once.
//   - Harmless: the probe sends USER, PASS, FEAT, EPSV, PASV, EPRT, PORT,
//     LIST and QUIT and nothing else (TYPE is allowed but not needed), and
//     nothing from the URL can add a command line (CR, LF and NUL in the
//     user, password or path are refused). It never dials 0.0.0.0, a
//     loopback address announced by a server that is not on loopback, or a
//     multicast, reserved or link-local address, and never a port below
//     1024 (ftp.CheckPassive).
//   - Passwords are never in the report, the transcript (PASS <redacted>)
//     or the printed URL.
//   - Server text is made printable when it is recorded (control
//     characters become '?'), so no server can write escape sequences to a
//     terminal through the probe; replies and the transcript are bounded.
//   - Once a reply is overdue the control channel is not trusted (a late
//     reply would be taken for the answer to the next command): nothing
//     more is sent and the modes not yet tried say why.
//   - FTP is parsed only by package proxy/ftp (reply framing, 227/229,
//     PORT/EPRT formatting); FEAT lines are read as RFC 2389 lays them out.
//
// # Passive addresses and the control-address fallback
//
// When a passive reply announces an address other than the server's
// control address, the probe dials the announced address first and then
// the control address with the same port, as curl, lftp, FileZilla,
// Python's ftplib ≥ 3.9.3 and ftpalg itself do. When only the control
// address works, data transfers work for those clients: the verdict is ok
// (exit status 0) and a warning (announced-unroutable, or
// announced-differs for a public address) names the announced address,
// because clients that use it hang at LIST. When neither works, the
// verdict is data-private-address for an address that is not routable
// (private, CGNAT, loopback, link-local, unspecified, documentation,
// reserved) and names it; for a public one, the connect results decide.
//
// # Verdicts
//
// Exit status 0 (DataOK, a LIST completed):
//
//	ok                    a passive LIST completed (warnings may name what breaks other clients)
//	active-only           passive transfers fail, active ones work (Options.Active)
//
// Exit status 1:
//
//	control-failed        no TCP connection to the server, or no 220 greeting
//	login-failed          USER/PASS not accepted (or not answered)
//	passive-refused       the server refused EPSV and PASV, or answered them unusably
//	data-private-address  the announced address is not routable and no data connection opened
//	data-refused          a data port refused the connection (RST, ICMP port unreachable)
//	data-blocked          a data port never answered: a firewall drops the passive range
//	data-unreachable      a data port could not be reached otherwise (no route, ICMP, local firewall)
//	active-refused        passive failed and the server refused EPRT and PORT
//	active-blocked        passive failed and the server never connected back
//	list-failed           a data connection opened but LIST did not complete (425, 550, 426, a hang)
//	incomplete            the probe could not finish: a reply overdue, or out of time
//
// When several modes fail differently, the verdict is the one that got
// furthest or is most specific, in this order: list-failed,
// data-private-address, data-refused, data-blocked, data-unreachable,
// passive-refused, incomplete. Passive failures win over active ones,
// except passive-refused and incomplete.
//
// # Findings
//
// Each finding has a code, a severity (error: breaks transfers here;
// warning: breaks some clients, or clients elsewhere; info), a title, a
// detail and advice. The codes: control-connect, control-greeting,
// login, passive-refused, active-refused, mode-reply, privileged-port, announced-unroutable,
// announced-differs, data-timeout, data-refused, data-unreachable,
// data-error, list-failed, active-no-connect, auth-tls, incomplete.
// Failed connects to the same address with the same result are merged
// into one finding ("ports 40012 (EPSV) and 40077 (PASV) on 192.0.2.10
// did not answer within 5s"; "port 40012 (EPSV, PASV)" when both
// announced the same port).
//
// # Report fields
//
// The JSON encoding of a Report (`ftpalg probe --json`). Every field is
// always present; a list is [] when empty, "list" is null when no LIST
// was sent. Durations are milliseconds. The list is checked against the
// code by TestJSONFieldsDocumented.
//
//	target                              string  the URL probed, without its password
//	user                                string  the login name sent
//	verdict                             string  one of the verdicts above
//	summary                             string  the verdict in a sentence, with the main finding
//	data_ok                             bool    a LIST completed: data transfers work (exit status 0)
//	control                             object  the control connection
//	control.address                     string  HOST:PORT from the URL
//	control.connect                     object  the TCP connect (an attempt, below)
//	control.connect.address             string  the IP:port reached (HOST:PORT when the connect failed)
//	control.connect.source              string  "url"
//	control.connect.result              string  ok, refused, timeout, unreachable, error, skipped
//	control.connect.error               string  the error, "" when ok
//	control.connect.elapsed_ms          number  how long the connect took
//	control.local                       string  the probe's IP:port on the control connection
//	control.peer_class                  string  the class of the server's control address (see classes)
//	control.connected                   bool    connected and greeted with 220
//	control.greeting                    object  the greeting (a reply: code and text)
//	control.greeting.code               number  reply code, 0 when none came
//	control.greeting.text               string  reply text, lines joined by "\n", codes stripped
//	control.login                       object  the final reply to USER or PASS
//	control.login.code                  number
//	control.login.text                  string
//	control.login_ok                    bool    logged in (230 or 202)
//	control.feat                        object  the FEAT reply
//	control.feat.reply                  object
//	control.feat.reply.code             number  211 when the server lists features
//	control.feat.reply.text             string
//	control.feat.list                   array   the feature lines ("EPSV", "AUTH TLS")
//	control.feat.epsv                   bool    EPSV listed
//	control.feat.eprt                   bool    EPRT listed
//	control.feat.auth_tls               bool    AUTH TLS (or SSL) listed: the server offers FTPS
//	control.error                       string  why the control channel stopped working, "" if it did not
//	modes                               array   EPSV, PASV (and with --active EPRT, PORT), in order
//	modes[].name                        string  EPSV, PASV, EPRT or PORT
//	modes[].command                     string  the command line as sent
//	modes[].passive                     bool    EPSV or PASV
//	modes[].skipped                     string  why the mode was not tried, "" when it was
//	modes[].reply                       object  the server's reply to the command
//	modes[].reply.code                  number
//	modes[].reply.text                  string
//	modes[].error                       string  why a passive reply could not be used (unparsable, port < 1024)
//	modes[].announced                   string  passive: the IP:port announced (a 229 without address: the control address); active: the probe's listener
//	modes[].address_in_reply            bool    the reply carried an address (227 always, 229 rarely)
//	modes[].announced_class             string  the class of the announced address
//	modes[].differs_from_control        bool    the announced address is not the control address (active: not the probe's)
//	modes[].attempts                    array   the data-connection attempts
//	modes[].attempts[].address          string  passive: the IP:port dialed; active: the probe's listener
//	modes[].attempts[].source           string  announced, control (the control address, announced port) or server (active)
//	modes[].attempts[].result           string  ok, refused, timeout, unreachable, error, skipped
//	modes[].attempts[].error            string  the error, or why it was skipped
//	modes[].attempts[].elapsed_ms       number  how long it took
//	modes[].data_connected              bool    a data connection opened
//	modes[].data_peer                   string  passive: the IP:port that connected; active: where the server came from
//	modes[].list                        object  the LIST over this mode's data connection, or null
//	modes[].list.completed              bool    a final 2xx and the listing's end: the transfer worked
//	modes[].list.bytes                  number  bytes received over the data connection
//	modes[].list.preliminary            object  the 1xx reply (150, 125), code 0 when none
//	modes[].list.preliminary.code       number
//	modes[].list.preliminary.text       string
//	modes[].list.reply                  object  the final reply (226, 425, 550, …)
//	modes[].list.reply.code             number
//	modes[].list.reply.text             string
//	modes[].list.error                  string  what went wrong on the data connection or in waiting
//	modes[].list.elapsed_ms             number  from LIST to its final reply
//	findings                            array   most severe first
//	findings[].code                     string  see Findings
//	findings[].severity                 string  error, warning or info
//	findings[].title                    string  one line
//	findings[].detail                   string  the explanation
//	findings[].advice                   string  what to do
//	transcript                          array   the control channel: "> " sent, "< " received; PASS redacted
//	timeout_ms                          number  the probe's budget
//	step_timeout_ms                     number  each connect's, accept's and reply's budget
//	elapsed_ms                          number  how long the probe took
//
// Address classes (Classify): unspecified, loopback, private (RFC 1918,
// ULA), cgnat (100.64.0.0/10), link-local, documentation, multicast,
// reserved, public. Only public addresses are routable.
package probe
