// Package benchkit is what the two benchmark programs, test/bench (reverse
// mode on loopback) and test/bench/gateway (a router in three network
// namespaces), share besides the FTP client (test/internal/benchftp):
// building ftpalg, the served files, vsftpd's configuration, the child
// processes and their cleanup on a signal, the session script and the
// download and session-rate loops, the /proc readers (process and machine
// CPU, memory, file descriptors) and the formatting of figures.
//
// Each program keeps its own measurements, output and verdict-free
// reporting; nothing here prints.
package benchkit
