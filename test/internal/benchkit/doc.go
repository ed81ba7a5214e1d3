// Package benchkit is what the benchmark programs, test/bench (reverse
// mode on loopback), test/bench/gateway (a router in three network
// namespaces), test/bench/load and test/bench/scaleout (instances behind
// a director), share besides the FTP client (test/internal/benchftp):
// building ftpalg, the served files, vsftpd's configuration, the child
// processes and their cleanup on a signal, the client worker processes in
// a namespace, the session script and the download and session-rate
// loops, the /proc readers (process and machine CPU, memory, file
// descriptors) and the formatting of figures.
//
// Each program keeps its own measurements, output and verdict-free
// reporting; nothing here prints.
package benchkit
