// Package rules owns the firewall: the proxy asks it for narrow, short-lived
// pinholes through one small interface and never speaks packet-filter syntax
// itself (the split OpenBSD's ftp-proxy makes between ftp-proxy.c and
// filter.c).
//
// Invariants:
//   - A Pinhole is built only from parsed integers and netip addresses, never
//     from strings off the wire.
//   - Open returns only once the kernel accepts the peer's SYN, so the proxy
//     can announce the port right after it without a race.
//   - Close of a pinhole that is already gone is not an error.
//   - Backends touch only objects named ftpalg… / FTPALG-….
package rules
