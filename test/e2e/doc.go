//go:build linux

// Package e2e holds the end-to-end tests of ftpalg: they build the proxy,
// create throw-away network namespaces (client, front host, server), run
// real FTP servers (vsftpd, proftpd, pure-ftpd) and real FTP clients (curl,
// lftp, python3 ftplib) and check what arrives, byte for byte.
//
// The tests need root. Without root, or with a missing server or client
// binary, they skip, unless FTPALG_E2E=1 is set (CI), in which case a missing
// prerequisite is a failure. test/deps.sh installs everything on Debian 12.
//
//	sudo test/deps.sh
//	sudo go test ./test/e2e/ -v -count=1
//
// The firewall pinhole tests (pinhole_test.go, topology in
// pinhole_topo_test.go) use a second topology: one host namespace running
// both the FTP server (on loopback) and ftpalg behind a default-DROP INPUT
// chain, and a client and an "intruder" namespace on a bridge. They run
// ftpalg with --firewall ipset, iptables and none and read the sets and
// chains back with ipset and iptables.
//
// The kernel data path tests (kernel_*_test.go; what covers what is in
// kernel_test.go) run ftpalg with --data-path kernel on a forwarding front
// host or gateway router, and prove per session that the kernel, not
// ftpalg's sockets, carried the data: the transfer lines say path=kernel
// with conntrack's byte counts, conntrack (read with ti-mo/conntrack)
// holds each announced connection with its NAT tuple, and in the middle
// of a transfer ftpalg holds no data socket. They also cover one mapping
// per connection, SIGKILL mid-transfer, drop-policy forward chains and the
// sessions the kernel cannot carry (spliced, with the reason logged).
//
// The FTPS tests (ftps_test.go, harness in ftps_harness_test.go) run the
// same servers with TLS required, TLS clients, and ftpalg terminating and
// re-originating TLS; each test makes its own certificates.
//
// Binary locations can be overridden with FTPALG_VSFTPD, FTPALG_PROFTPD,
// FTPALG_PUREFTPD and FTPALG_PUREPW.
//
// Nothing leaves the sandbox: all addresses are documentation addresses
// that only exist inside the namespaces the tests create, the namespaces
// have only connected routes (plus routes to each other where a test needs
// them), and every namespace, firewall rule and process is removed in
// t.Cleanup, also when a test fails.
//
// The whole harness is in _test.go files (this file is the package's only
// other one), so that `go build ./...` never compiles half of it.
package e2e
