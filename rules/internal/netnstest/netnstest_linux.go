// Package netnstest gives the backends' tests throwaway network namespaces:
// create one, run code or commands inside it, wire two together with a
// veth pair, and read the firewall state back. Every namespace is deleted
// when its test ends, failed or not.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Require skips t unless it runs as root with the given binaries on PATH;
// with FTPALG_E2E=1 it fails instead, so CI never skips silently.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces and firewall rules)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ")
	if os.Getenv("FTPALG_E2E") == "1" {
		t.Fatal(msg + " (FTPALG_E2E=1: not skipping)")
	}
	t.Skip(msg + " (set FTPALG_E2E=1 to make this a failure)")
}

// Variants returns the iptables variants whose binaries are installed, of
// "nft" and "legacy"; tests run once per variant.
func Variants(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, v := range []string{"nft", "legacy"} {
		_, err4 := exec.LookPath("iptables-" + v)
		_, err6 := exec.LookPath("ip6tables-" + v)
		if err4 == nil && err6 == nil {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		Require(t, "iptables-nft", "iptables-legacy")
	}
	return out
}

// NS is a network namespace created for one test.
type NS struct {
	Name string
	h    netns.NsHandle
}

// New creates a namespace named ftpalg-t-…, with lo up, and deletes it when
// t ends.
func New(t testing.TB) *NS {
	t.Helper()
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "ftpalg-t-" + hex.EncodeToString(rnd[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name}
	t.Cleanup(func() {
		n.h.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	n.h = h
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Enter locks the calling goroutine to its OS thread and moves the thread
// into n; exit moves it back and unlocks. Binaries the goroutine starts
// meanwhile (iptables) and sockets it creates live in n. If the thread
// cannot be moved back it stays locked, and the runtime discards it when
// the goroutine ends.
func (n *NS) Enter() (exit func(), err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	if err := netns.Set(n.h); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter %s: %w", n.Name, err)
	}
	return func() {
		err := netns.Set(orig)
		orig.Close()
		if err == nil {
			runtime.UnlockOSThread()
		}
	}, nil
}

// Do runs fn on the calling goroutine inside n.
func (n *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	exit, err := n.Enter()
	if err != nil {
		t.Fatal(err)
	}
	defer exit()
	fn()
}

// Try runs a command inside n and returns its combined output.
func (n *NS) Try(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Run runs a command inside n and fails t if it fails.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Cmd returns the iptables binary of a family ("4" or "6") and variant.
func Cmd(family, variant string) string {
	cmd := "iptables"
	if family == "6" {
		cmd = "ip6tables"
	}
	if variant != "" {
		cmd += "-" + variant
	}
	return cmd
}

// Rules returns `iptables -S` (or ip6tables) of the filter table in n, one
// rule per line.
func (n *NS) Rules(t testing.TB, family, variant string) []string {
	t.Helper()
	return lines(n.Run(t, Cmd(family, variant), "-w", "-S"))
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// Save returns iptables-save (or ip6tables-save) of n without comments and
// with counters zeroed, for before/after comparisons.
func (n *NS) Save(t testing.TB, family, variant string) string {
	t.Helper()
	out := n.Run(t, Cmd(family, variant)+"-save")
	var keep []string
	for _, l := range lines(out) {
		if strings.HasPrefix(l, "#") {
			continue
		}
		keep = append(keep, counters.ReplaceAllString(l, "[0:0]"))
	}
	return strings.Join(keep, "\n")
}

// Sets returns the names of the ipsets in n, sorted.
func (n *NS) Sets(t testing.TB) []string {
	t.Helper()
	s := lines(n.Run(t, "ipset", "list", "-n"))
	slices.Sort(s)
	return s
}

// Members returns the members of set as `ipset list` prints them, with the
// remaining timeout removed ("192.0.2.1,tcp:50000,192.0.2.2 comment …").
func (n *NS) Members(t testing.TB, set string) []string {
	t.Helper()
	out := n.Run(t, "ipset", "list", set)
	_, members, ok := strings.Cut(out, "Members:\n")
	if !ok {
		t.Fatalf("ipset list %s: no Members: %s", set, out)
	}
	var res []string
	for _, l := range lines(members) {
		res = append(res, timeoutField.ReplaceAllString(l, ""))
	}
	slices.Sort(res)
	return res
}

var timeoutField = regexp.MustCompile(` timeout \d+`)

func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Listen opens a TCP listener inside n; it is closed when t ends.
func (n *NS) Listen(t testing.TB, addr netip.AddrPort) *net.TCPListener {
	t.Helper()
	var (
		ln  *net.TCPListener
		err error
	)
	n.Do(t, func() { ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from inside n, from the address from, within timeout.
func (n *NS) Dial(from netip.Addr, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	exit, err := n.Enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
	c, err := d.DialContext(context.Background(), "tcp", to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// IsTimeout reports whether a dial failed by timing out: its SYN was
// dropped, not refused.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Topology is two namespaces joined by a veth pair on documentation
// addresses: Server has ServerAddr, Peer has PeerAddr and OtherAddr (a
// third host in the same subnet), for IPv4 and IPv6.
type Topology struct {
	Server, Peer *NS
}

// Documentation addresses (RFC 5737, RFC 3849) of the topology.
var (
	ServerAddr4 = netip.MustParseAddr("192.0.2.1")
	PeerAddr4   = netip.MustParseAddr("192.0.2.2")
	OtherAddr4  = netip.MustParseAddr("192.0.2.3")
	ServerAddr6 = netip.MustParseAddr("2001:db8::1")
	PeerAddr6   = netip.MustParseAddr("2001:db8::2")
	OtherAddr6  = netip.MustParseAddr("2001:db8::3")
)

// NewTopology creates the two namespaces and the veth pair between them.
// The link is created inside Server with its peer end moved straight into
// Peer: the host's root namespace is never touched.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	s, p := New(t), New(t)
	s.Run(t, "ip", "link", "add", "s0", "type", "veth", "peer", "name", "p0", "netns", p.Name)
	s.Run(t, "ip", "addr", "add", ServerAddr4.String()+"/24", "dev", "s0")
	s.Run(t, "ip", "addr", "add", ServerAddr6.String()+"/64", "dev", "s0", "nodad")
	s.Run(t, "ip", "link", "set", "s0", "up")
	for _, a := range []netip.Addr{PeerAddr4, OtherAddr4} {
		p.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "p0")
	}
	for _, a := range []netip.Addr{PeerAddr6, OtherAddr6} {
		p.Run(t, "ip", "addr", "add", a.String()+"/64", "dev", "p0", "nodad")
	}
	p.Run(t, "ip", "link", "set", "p0", "up")
	return &Topology{Server: s, Peer: p}
}

// DefaultDrop installs a typical host firewall in n with the given
// variant: INPUT policy DROP, loopback and ESTABLISHED,RELATED accepted
// (and ICMPv6, which IPv6 neighbour discovery needs).
func DefaultDrop(t testing.TB, n *NS, variant string) {
	t.Helper()
	for _, fam := range []string{"4", "6"} {
		cmd := Cmd(fam, variant)
		n.Run(t, cmd, "-w", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
		n.Run(t, cmd, "-w", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
		if fam == "6" {
			n.Run(t, cmd, "-w", "-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT")
		}
		n.Run(t, cmd, "-w", "-P", "INPUT", "DROP")
	}
}
