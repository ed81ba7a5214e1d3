package proxy

import "time"

// Observer is told what an operator counts: sessions, rewrites, data
// connections and their outcomes, bytes, protocol violations. Config.Observer
// sets one (package metrics turns the calls into Prometheus metrics); nil
// counts nothing. Calls come from the sessions' goroutines, concurrently,
// with no lock of the proxy held; they must be cheap (a few atomic adds),
// for they sit on every session's path. Label values are the constants
// below, never addresses, users or file names.
type Observer interface {
	// SessionStarted: a session was admitted; SessionEnded: it ended
	// (reason: client_closed, server_closed, client_connection_failed,
	// server_connection_failed, idle_timeout, shutdown,
	// protocol_violation, refused, login_timeout).
	SessionStarted()
	SessionEnded(reason string)
	// SessionRefused: a connection got a 421 before a session began
	// (one of the Refused* reasons).
	SessionRefused(reason string)
	// UpstreamConnected: the control connection to the server was made,
	// after took.
	UpstreamConnected(took time.Duration)
	// Rewritten: a data-channel negotiation was rewritten (kind: pasv,
	// epsv, lpsv, port, eprt, lprt).
	Rewritten(kind string)
	// Translated: a command went to the server in another form than the
	// client's, or the proxy answered for the server (one of the
	// Translation* kinds).
	Translated(kind string)
	// DataConnection: an announced data connection came to an end
	// (mode: passive or active; path: splice or kernel; outcome: one of
	// the Outcome* values).
	DataConnection(mode, path, outcome string)
	// Transfer: a transfer was reported, with its bytes each way and its
	// duration.
	Transfer(path string, toClient, toServer int64, took time.Duration)
	// Violation: input was refused (one of the Violation* kinds).
	Violation(kind string)
	// TLSHandshake: a TLS handshake on leg (client, server, client_data,
	// server_data) ended; version is the TLS version's name when ok.
	TLSHandshake(leg, version string, resumed, ok bool)
}

// Reasons of Observer.SessionRefused.
const (
	RefusedLimit     = "limit"                // --max-sessions
	RefusedPerIP     = "per_ip_limit"         // --max-sessions-per-ip
	RefusedUpstream  = "upstream_unreachable" // the server could not be reached
	RefusedGreeting  = "greeting_timeout"     // the server did not greet in time
	RefusedResources = "out_of_resources"     // no descriptor or buffer left here
	RefusedNoServer  = "no_server"            // transparent mode: no original destination
)

// Outcomes of Observer.DataConnection.
const (
	OutcomeCompleted   = "completed"    // data ended cleanly, the server confirmed it (2xx)
	OutcomeFailed      = "failed"       // the server's 4xx/5xx, or a reset
	OutcomeUnconfirmed = "unconfirmed"  // the server never answered the transfer command
	OutcomeAborted     = "aborted"      // ftpalg cut it (shutdown, data idle timeout)
	OutcomeTimeout     = "timeout"      // no connection arrived before --data-timeout
	OutcomeForeign     = "foreign_peer" // a connection from another address was refused (counted per attempt)
	OutcomeDialFailed  = "dial_failed"  // ftpalg could not connect to the far end
	OutcomeCancelled   = "cancelled"    // replaced by a newer PASV/PORT, or the session ended, unused
)

// Kinds of Observer.Translated.
const (
	TranslationToPASV      = "to_pasv"      // EPSV/LPSV sent as PASV (server without them)
	TranslationToPORT      = "to_port"      // EPRT/LPRT sent as PORT
	TranslationToEPSV      = "to_epsv"      // PASV/LPSV sent as EPSV (IPv6 server)
	TranslationToEPRT      = "to_eprt"      // PORT/LPRT sent as EPRT
	TranslationEPSVAll     = "epsv_all"     // EPSV ALL answered by the proxy
	TranslationFEAT        = "feat"         // EPSV/EPRT added to FEAT (EPSV removed with RefuseEPSV)
	TranslationLocalAnswer = "local_answer" // a passive request answered by the proxy (522/425 for a family)
	TranslationEPSVRefused = "epsv_refused" // EPSV or EPSV ALL answered 502 by the proxy (Config.RefuseEPSV)
)

// Kinds of Observer.Violation.
const (
	ViolationBadLine        = "bad_line"          // bare CR/LF or NUL in a command line
	ViolationLongLine       = "long_line"         // a line over 8192 bytes (either side)
	ViolationBounce         = "bounce"            // PORT/EPRT/LPRT to another host (RFC 2577)
	ViolationPrivilegedPort = "privileged_port"   // a data port below 1024 (either side)
	ViolationBadArgument    = "bad_argument"      // an unparsable PORT/EPRT/LPRT
	ViolationAfterEPSVAll   = "after_epsv_all"    // PORT/PASV after EPSV ALL
	ViolationBadPassive     = "bad_passive_reply" // an unparsable 227/228/229
)

// nopObserver counts nothing.
type nopObserver struct{}

func (nopObserver) SessionStarted()                              {}
func (nopObserver) SessionEnded(string)                          {}
func (nopObserver) SessionRefused(string)                        {}
func (nopObserver) UpstreamConnected(time.Duration)              {}
func (nopObserver) Rewritten(string)                             {}
func (nopObserver) Translated(string)                            {}
func (nopObserver) DataConnection(string, string, string)        {}
func (nopObserver) Transfer(string, int64, int64, time.Duration) {}
func (nopObserver) Violation(string)                             {}
func (nopObserver) TLSHandshake(string, string, bool, bool)      {}
