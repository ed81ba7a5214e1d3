// Package proxy is ftpalg's FTP session engine: it relays control
// connections, rewrites data-channel negotiations to the proxy's own
// addresses, and carries each announced data connection through.
//
//	srv, _ := proxy.NewServer(proxy.Config{Upstream: "10.0.0.5:21", Firewall: fw, Logger: log})
//	err := srv.Serve(ctx, ln, 30*time.Second) // until ctx ends, then drain
//
// # The pipeline
//
// One session per client control connection:
//
//	client ─▶ command pump ─▶ correlation ─▶ server
//	client ◀─ client writer ◀─ correlation ◀─ reply pump (rewrite, data offer) ◀─ server
//	data offer ─▶ accept ─▶ transfer ─▶ splice
//
// Its parts:
//
//   - The command pump (commands.go) reads the client's lines, refuses
//     malformed ones, and for each command adds an exchange to the
//     correlator and forwards it, rewrites it (PORT/EPRT/LPRT, rewrite.go;
//     translated forms, translate.go) or answers it itself.
//   - The correlator (correlate.go) keeps the exchanges in command order:
//     which one the next server reply answers, what the client is to be
//     sent for each, and when an exchange is done.
//   - The reply pump (replies.go) reads the server's replies, matches each
//     to its exchange, and gives the exchange what the client should see:
//     the reply unchanged, rewritten (227/228/229 after opening a data
//     offer, rewrite.go), translated, or replaced.
//   - The client writer (replies.go) writes what the correlator releases,
//     in order. It is the only writer to the client, so ordering needs no
//     lock around a write.
//   - A data offer (data.go) is a listener for exactly one announced data
//     connection, from exactly one address, behind a firewall pinhole, for
//     DataAcceptTimeout. Its accept goroutine takes the connection, dials
//     the other end and splices the two (splice.go) with splice(2).
//   - FTP over TLS (tls.go): the proxy terminates the client's TLS (it
//     answers AUTH, PBSZ and PROT itself) and opens its own toward the
//     server, so it still reads every command and reply in clear; a data
//     connection with a TLS leg is copied through user space instead of
//     spliced. ClientTLSPassthrough instead relays the session blind
//     after the server's 234.
//
// # Goroutines and who joins them
//
//   - Server.Serve's goroutine accepts and starts one goroutine per
//     session (Server.runSession); Serve waits for all of them.
//   - Session.run runs the command pump itself and starts the reply pump
//     and the client writer; it waits for both. A context.AfterFunc on the
//     session's context (teardown) closes the server's side when the
//     session ends; run waits for it too.
//   - Each data offer has one accept goroutine, which also runs the
//     transfer; Session.run waits for them (Session.data) after the
//     control connection is gone, so a transfer may outlive its control
//     connection but never its session.
//   - splice runs one goroutine per direction and waits for both; a TLS
//     data connection's two handshakes run in two goroutines its
//     transfer waits for.
//   - The client writer runs the client's TLS handshake after writing
//     the 234 to AUTH, while the command pump waits for its outcome.
//
// # Ending a session
//
// Session.end(reason, goodbye) may be called from any goroutine: it records
// the first reason, hands the goodbye (a last 421) to the writer with a
// short write deadline, or closes the client connection when there is
// none, and cancels the session's context. Nothing waits for a lock held by
// a goroutine blocked in I/O: closing the sockets is what unblocks them. A
// client that stops reading therefore delays a shutdown by at most
// goodbyeTimeout, not by the idle timeout.
//
// # Lock contract
//
//   - No network, firewall or hook (Config.Trace) I/O while holding
//     Session.mu or the correlator's lock. Session.mu guards only the data
//     offer bookkeeping (offer, activeOffer, conns); protocol flags are
//     atomics; the correlator has its own lock.
//   - Fields set before the session's goroutines start (the connections,
//     addresses, logger) are never written afterwards, so any goroutine
//     may read them. The one exception is the client connection after
//     AUTH: the writer replaces it while the command pump waits on a
//     channel for the handshake, and no one else uses it meanwhile.
//   - The reply pump may wait, bounded, for a TLS data connection's
//     handshakes before relaying the server's 2xx to its transfer
//     command (dataRefusal), holding no lock.
//   - Session.toServer serialises "queue the exchange, write the command"
//     so that commands reach the server in queue order when the reply pump
//     sends one of its own (translation); it is taken before the
//     correlator's lock, never after.
//
// # Invariants
//
//   - Only the reply to the client's own PASV/EPSV/LPSV is rewritten, and
//     a data offer accepts one connection from one address and is gone
//     (listener and pinhole) once used, refused or expired.
//   - Active-mode addresses are checked (RFC 2577) before anything acts
//     on them.
//   - Data bytes move between bare *net.TCPConn values, so the kernel's
//     splice path is kept (unless a leg is TLS); counts come from
//     io.Copy's return.
//   - Plain text a client sends behind AUTH TLS is never read as a
//     command: it is fed to the TLS handshake (which it breaks).
package proxy
