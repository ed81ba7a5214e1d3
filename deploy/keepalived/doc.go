// Package keepalived holds no code: it is the directory of the example
// keepalived and nftables configurations for several ftpalg instances
// behind IPVS (README.md), and its test checks them with the real tools
// (keepalived --config-test, nft --check in a throwaway namespace) and
// checks that the files agree with each other.
//
// Invariants the test keeps: every configuration passes its tool's check
// without a warning; the fwmark rule marks exactly the virtual address,
// port 21 and the data range the README's instance flags use, with the
// mark the virtual server balances; every real server is health-checked
// with HTTP GET /readyz on the instances' --metrics-listen port.
package keepalived
