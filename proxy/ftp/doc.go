// Package ftp is the FTP control-channel codec of ftpalg: pure functions and
// small stream framers, no sockets, no goroutines.
//
// Invariants the proxy relies on:
//
//   - Framing is bounded: no line longer than MaxLine bytes is ever buffered.
//   - A reply line ends only at CRLF. A bare CR or LF inside a reply (real
//     servers echo a client's bare LF inside error replies) never splits one
//     line into two, so an echoed "227 ..." can never be taken for a reply.
//     The one exception is a server whose greeting already ends in a bare
//     LF (NewLearningReplyScanner): it never sends CR, so its LF ends lines.
//   - A command line ends only at CRLF too, and is valid only when it holds
//     no other CR, LF or NUL; the proxy refuses anything else whole, so a
//     server never sees a command boundary the proxy did not see.
//   - Telnet IAC sequences are recognised in both directions, removed from the
//     text that is parsed and kept in the raw bytes that are forwarded. They
//     are decoded the way FTP servers do (IAC SB is a 2-byte command, never
//     a subnegotiation that hides text), and a CR or LF never belongs to one:
//     a sequence cut short by CR or LF makes the line unclean.
//   - Replies are matched on their code, never on their text; addresses are
//     parsed into netip values and integers, and formatted back only from
//     those values.
//   - Addresses a client announces (PORT, EPRT, LPRT) are checked with
//     CheckActive before anything acts on them (RFC 2577: no bounce, no
//     privileged ports).
package ftp
