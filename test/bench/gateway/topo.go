//go:build linux

package main

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The topology (documentation addresses only):
//
//	[client ns] eth0 198.51.100.10/24 ── lan0 198.51.100.1/24 [router ns] wan0 203.0.113.1/24 ── eth0 203.0.113.10/24 [server ns]
//
// The client's default route is the router, the server's too; the router
// forwards and masquerades the LAN onto wan0. The veths are created inside
// the namespaces: nothing appears in the root namespace.
const (
	clientIP = "198.51.100.10"
	lanIP    = "198.51.100.1"
	lanNet   = "198.51.100.0/24"
	wanIP    = "203.0.113.1"
	serverIP = "203.0.113.10"
	lanDev   = "lan0"
	wanDev   = "wan0"

	proxyPort = "2121"    // ftpalg's control listener on the router
	divMark   = "0x1/0x1" // ftpalg's default --intercept-mark
)

// topo is the three namespaces.
type topo struct {
	client, router, server *nstest.NS

	mu      sync.Mutex
	created []*nstest.NS // namespaces to delete
}

func newTopo() (*topo, error) {
	prefix := nstest.RandomName("ftpalg-gwb")
	t := &topo{}
	for _, ns := range []struct {
		n    **nstest.NS
		role string
	}{{&t.client, "c"}, {&t.router, "r"}, {&t.server, "s"}} {
		n, err := nstest.Create(prefix + "-" + ns.role)
		if err != nil {
			return t, err
		}
		t.mu.Lock()
		t.created = append(t.created, n)
		t.mu.Unlock()
		*ns.n = n
	}
	return t, nil
}

// inodes returns the namespaces' inode numbers (as in /proc/PID/ns/net).
func (t *topo) inodes() ([]uint64, error) {
	var ns []uint64
	for _, n := range []*nstest.NS{t.client, t.router, t.server} {
		ino, err := n.Inode()
		if err != nil {
			return nil, err
		}
		ns = append(ns, ino)
	}
	return ns, nil
}

// destroy deletes the namespaces (and with them the veths, addresses,
// routes and netfilter rules in them), after killing what still runs in
// them (by PID).
func (t *topo) destroy() {
	if t == nil {
		return
	}
	t.mu.Lock()
	ns := t.created
	t.created = nil
	t.mu.Unlock()
	for _, n := range ns {
		if err := n.Delete(); err != nil {
			fmt.Printf("warning: %v\n", err)
		}
	}
}

// runAll runs several commands in ns, stopping at the first error.
func runAll(ns *nstest.NS, cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := ns.Try(c...); err != nil {
			return err
		}
	}
	return nil
}

// ipt runs iptables -w in the router and prints the command.
func (t *topo) ipt(args ...string) error {
	fmt.Printf("    router# iptables %s\n", strings.Join(args, " "))
	_, err := t.router.Try(append([]string{"iptables", "-w"}, args...)...)
	return err
}

// setup builds links, addresses, routes and sysctls.
func (t *topo) setup() error {
	for _, ns := range []*nstest.NS{t.client, t.router, t.server} {
		fwd := "0"
		if ns == t.router {
			fwd = "1"
		}
		// IPv4 only; no reverse-path filter on the router (the divert
		// delivers packets for foreign addresses to local sockets).
		if err := runAll(ns,
			[]string{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
			[]string{"sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"},
			[]string{"sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"},
			[]string{"sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"},
			[]string{"sysctl", "-qw", "net.ipv4.ip_forward=" + fwd},
		); err != nil {
			return err
		}
	}
	if err := runAll(t.client, []string{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", lanDev, "netns", t.router.Name}); err != nil {
		return err
	}
	if err := runAll(t.router, []string{"ip", "link", "add", wanDev, "type", "veth", "peer", "name", "eth0", "netns", t.server.Name}); err != nil {
		return err
	}
	if err := runAll(t.client,
		[]string{"ip", "addr", "add", clientIP + "/24", "dev", "eth0"},
		[]string{"ip", "link", "set", "eth0", "up"},
		[]string{"ip", "route", "add", "default", "via", lanIP},
	); err != nil {
		return err
	}
	if err := runAll(t.router,
		[]string{"ip", "addr", "add", lanIP + "/24", "dev", lanDev},
		[]string{"ip", "link", "set", lanDev, "up"},
		[]string{"ip", "addr", "add", wanIP + "/24", "dev", wanDev},
		[]string{"ip", "link", "set", wanDev, "up"},
	); err != nil {
		return err
	}
	return runAll(t.server,
		[]string{"ip", "addr", "add", serverIP + "/24", "dev", "eth0"},
		[]string{"ip", "link", "set", "eth0", "up"},
		[]string{"ip", "route", "add", "default", "via", wanIP},
	)
}

// baseFirewall is what every configuration shares: masquerading onto the
// WAN and a default-DROP INPUT (the router itself accepts nothing new).
func (t *topo) baseFirewall() error {
	for _, r := range [][]string{
		{"-t", "nat", "-A", "POSTROUTING", "-o", wanDev, "-j", "MASQUERADE"},
		{"-P", "INPUT", "DROP"},
		{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
	} {
		if err := t.ipt(r...); err != nil {
			return err
		}
	}
	return nil
}

// forwardOpen: plain routing, FORWARD accepts everything.
func (t *topo) forwardOpen() error {
	if err := t.ipt("-F", "FORWARD"); err != nil {
		return err
	}
	return t.ipt("-P", "FORWARD", "ACCEPT")
}

// forwardClosed: FORWARD drops everything but established/related
// packets and new control connections from the LAN.
func (t *topo) forwardClosed() error {
	for _, r := range [][]string{
		{"-F", "FORWARD"},
		{"-P", "FORWARD", "DROP"},
		{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-A", "FORWARD", "-i", lanDev, "-o", wanDev, "-p", "tcp", "--dport", "21", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"},
	} {
		if err := t.ipt(r...); err != nil {
			return err
		}
	}
	return nil
}

// helperRule assigns the kernel's FTP helper to control connections
// (since kernel 6.0 nothing assigns it automatically).
var helperRule = []string{"-t", "raw", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp"}

func ruleOp(op string, spec []string) []string {
	if spec[0] == "-t" {
		return append([]string{spec[0], spec[1], op}, spec[2:]...)
	}
	return append([]string{op}, spec...)
}

// proxyInputRules accept what ftpalg receives on the router
// (rules/intercept/README.md, "Your INPUT chain"): the redirected control
// connections on port 2121 and the divert-marked packets of its
// transparent sockets (the clients' data connections to the server's
// address).
var proxyInputRules = [][]string{
	{"INPUT", "-p", "tcp", "--dport", proxyPort, "-j", "ACCEPT"},
	{"INPUT", "-p", "tcp", "-m", "mark", "--mark", divMark, "-j", "ACCEPT"},
}

// proxyDataInputRule is needed with ftpalg --firewall none for the data
// connections ftpalg's sockets take on dev: active mode's from the server
// on the WAN, and in the reverse topology passive mode's from the client
// on the LAN; with --firewall ipset ftpalg opens a pinhole per connection
// instead.
func proxyDataInputRule(dev, ports string) []string {
	return []string{"INPUT", "-i", dev, "-p", "tcp", "--dport", strings.Replace(ports, "-", ":", 1), "-j", "ACCEPT"}
}

// reverseInputRule accepts the clients' control connections to ftpalg in
// the reverse topology (it listens on the router's port 21).
var reverseInputRule = []string{"INPUT", "-i", lanDev, "-p", "tcp", "--dport", "21", "-j", "ACCEPT"}

// forwardDNATRule is the fix ftpalg's start check prints for a drop-policy
// FORWARD chain: the kernel data path's connections are DNATed. With
// --firewall ipset its FORWARD hook admits each one instead.
var forwardDNATRule = []string{"FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"}

// helperDNATRule makes the router the server's front in the reverse
// topology's helper configuration: its port 21 is DNATed to the server,
// whose passive replies nf_nat_ftp rewrites to the router's address.
var helperDNATRule = []string{"-t", "nat", "PREROUTING", "-i", lanDev, "-d", lanIP, "-p", "tcp", "--dport", "21",
	"-j", "DNAT", "--to-destination", serverIP + ":21"}

// flushConntrack empties the router's connection tracking table (and with
// it the expectations), so that each configuration starts clean and its
// verification sees only its own connections.
func (t *topo) flushConntrack() error {
	nl, err := netlink.NewHandleAt(t.router.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer nl.Close()
	return nl.ConntrackTableFlush(netlink.ConntrackTable)
}

// ctStats summarizes the router's conntrack table (a ctnetlink dump, as
// `conntrack -L`) and /proc/net/nf_conntrack_expect.
type ctStats struct {
	total      int
	control    int // original direction to port 21
	helperFTP  int // entries with helper=ftp
	redirected int // control connections answered by port 2121 (REDIRECT to ftpalg)
	anyHelper  int
	expect     int // entries in nf_conntrack_expect
	// dnatData: connections to one of ftpalg's data ports (original
	// direction) that a DNAT bound: the kernel data path's mappings.
	dnatData int
	sample   string
}

// conntrack reads the router's table; dataPorts are ftpalg's.
func (t *topo) conntrack(dataPorts string) (ctStats, error) {
	var s ctStats
	r, err := runWorker(t.router, job{Mode: "ctdump", DataPorts: dataPorts}, time.Minute)
	if err != nil {
		return s, err
	}
	d := r.CT
	s.total, s.control, s.redirected, s.sample, s.dnatData = d.Total, d.Control, d.Redirected, d.Sample, d.DNATData
	s.helperFTP = d.Helpers["ftp"]
	for _, n := range d.Helpers {
		s.anyHelper += n
	}
	exp, err := t.router.Try("cat", "/proc/net/nf_conntrack_expect")
	if err != nil {
		return s, err
	}
	for l := range strings.SplitSeq(exp, "\n") {
		if strings.TrimSpace(l) != "" {
			s.expect++
		}
	}
	return s, nil
}

// ruleset is the router's iptables-save, normalized (nstest.Normalize:
// no comments, counters zeroed).
func (t *topo) ruleset() string {
	out, err := t.router.Try("iptables-save")
	if err != nil {
		return err.Error()
	}
	return nstest.Normalize(out) + "\n"
}
