// Package nat holds the address plumbing of the proxy: which local port a
// data connection listens on, and which address is announced to a peer.
// Transparent interception (original destination, IP_TRANSPARENT) lands here
// too. It knows nothing of FTP.
package nat
