//go:build linux

package e2e

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The pinhole topology: one L2 segment (a bridge in the host namespace),
// three namespaces on it. The host runs the FTP server on loopback and
// ftpalg in front of it, behind a default-DROP INPUT chain that admits
// only loopback, ESTABLISHED/RELATED and tcp/21; the data ports are
// reachable only through the pinholes ftpalg opens.
//
//	client ns  198.51.100.10/24  2001:db8:1::10/64 ─┐
//	                                               br0 (host ns) 198.51.100.1/24  2001:db8:1::1/64
//	intruder ns 198.51.100.20/24 2001:db8:1::20/64 ─┘   ftpalg :21 → FTP server 127.0.0.1:2121 / [::1]:2121
var (
	HostIP4 = FrontClientIP4 // 198.51.100.1
	HostIP6 = FrontClientIP6 // 2001:db8:1::1
)

const (
	IntruderIP4 = "198.51.100.20"
	IntruderIP6 = "2001:db8:1::20"

	// Where the FTP server listens inside the host namespace.
	upstreamIP4  = "127.0.0.1"
	upstreamIP6  = "::1"
	upstreamPort = 2121

	pinholeDataPorts = "50000-50099"
)

// Kernel objects of the pinhole backends (rules/ipset, rules/iptables).
const (
	pinholeSet4  = "ftpalg-pinholes4"
	pinholeSet6  = "ftpalg-pinholes6"
	pinholeChain = "FTPALG-INPUT"
)

// pinholeBackends are the --firewall values that open pinholes.
var pinholeBackends = []string{"ipset", "iptables"}

// HostTopology is the host / client / intruder network.
type HostTopology struct {
	ID                     string
	Host, Client, Intruder *nstest.NS
	baseline               string // FilterRuleset before ftpalg ever ran
}

// requirePinholePrereqs checks root, iproute2 and the firewall tools.
func requirePinholePrereqs(t testing.TB) {
	t.Helper()
	requirePrereqs(t, reqIptables)
	nstest.Require(t, "ip6tables", "iptables-save", "ip6tables-save", "ipset")
}

// NewHostTopology builds the namespaces, the bridge, the addresses and the
// host's firewall. It all disappears in t.Cleanup (the rules and sets live
// in the namespaces).
func NewHostTopology(t testing.TB) *HostTopology {
	t.Helper()
	id := nstest.RandomName("fa")
	h := &HostTopology{
		ID:       id,
		Host:     nstest.NewNamed(t, "fa-"+id+"-h"),
		Client:   nstest.NewNamed(t, "fa-"+id+"-c"),
		Intruder: nstest.NewNamed(t, "fa-"+id+"-i"),
	}
	for _, ns := range []*nstest.NS{h.Host, h.Client, h.Intruder} {
		ns.StaticIPv6(t)
		ns.Sysctl(t, "net.ipv4.ip_forward", "0")
		ns.Sysctl(t, "net.ipv6.conf.all.forwarding", "0")
	}
	h.Host.IP(t, "link", "add", "br0", "type", "bridge")
	for _, peer := range []struct {
		ns   *nstest.NS
		port string
		a4   string
		a6   string
	}{
		{h.Client, "cli0", ClientIP4, ClientIP6},
		{h.Intruder, "int0", IntruderIP4, IntruderIP6},
	} {
		nstest.Veth(t, peer.ns, "eth0", h.Host, peer.port)
		h.Host.IP(t, "link", "set", peer.port, "master", "br0")
		peer.ns.Addr(t, "eth0", peer.a4+"/24", peer.a6+"/64")
	}
	h.Host.Addr(t, "br0", HostIP4+"/24", HostIP6+"/64")
	h.Host.IP(t, "link", "set", "br0", "up")

	// The host's own firewall: default DROP; loopback (the FTP server and
	// ftpalg's upstream side), replies, ICMPv6 (neighbour discovery), and
	// the FTP control port. No conntrack helper anywhere.
	nstest.DefaultDrop(t, h.Host, "", []string{"-p", "tcp", "--dport", "21"})
	requireNoFTPHelper(t, h.Host)
	h.baseline = h.FilterRuleset(t)
	if names := h.IpsetNames(t); len(names) > 0 {
		t.Fatalf("fresh namespace has ipsets %v", names)
	}
	return h
}

// Topology is the view StartServer, StartProxy and runMatrix take: the
// server and the proxy both run in the host namespace, the clients in the
// client namespace.
func (h *HostTopology) Topology() *Topology {
	return &Topology{ID: h.ID, Client: h.Client, Front: h.Host, Server: h.Host}
}

// StartUpstream starts an FTP server on the host's loopback, port 2121.
func (h *HostTopology) StartUpstream(t testing.TB, kind ServerKind, opt ServerOptions) *Server {
	t.Helper()
	opt.Addr4, opt.Addr6, opt.Port = upstreamIP4, upstreamIP6, upstreamPort
	return StartServer(t, h.Topology(), kind, opt)
}

// pinholeProxyOpts are the variations of StartPinholeProxy.
type pinholeProxyOpts struct {
	V6        bool     // listen on [2001:db8:1::1]:21, upstream [::1]:2121
	DataPorts string   // default 50000-50099
	Extra     []string // further flags; they come last and win
}

// StartPinholeProxy runs ftpalg on the host in front of srv:
//
//	ftpalg run --listen 198.51.100.1:21 --upstream 127.0.0.1:2121 --advertise 198.51.100.1
//	    --data-ports 50000-50099 --firewall BACKEND --data-timeout 3s ...
func (h *HostTopology) StartPinholeProxy(t testing.TB, srv *Server, firewall string, o pinholeProxyOpts) *Proxy {
	t.Helper()
	cfg := ProxyConfig{
		Listen: net.JoinHostPort(HostIP4, "21"), Upstream: srv.Addr4(),
		Advertise: HostIP4, DataPorts: cmp.Or(o.DataPorts, pinholeDataPorts),
	}
	if o.V6 {
		cfg.Listen, cfg.Upstream, cfg.Advertise = net.JoinHostPort(HostIP6, "21"), srv.Addr6(), HostIP6
	}
	cfg.Extra = append([]string{"--firewall", firewall, "--data-timeout", "3s"}, o.Extra...)
	return StartProxy(t, h.Topology(), cfg)
}

// StopProxyClean stops ftpalg with SIGTERM, requires a clean exit (status
// 0 within the grace period) and then a pristine host: the filter tables
// exactly as before ftpalg first ran, no ftpalg ipset.
func (h *HostTopology) StopProxyClean(t testing.TB, p *Proxy) {
	t.Helper()
	if err := p.Stop(15 * time.Second); err != nil {
		t.Errorf("ftpalg did not exit on SIGTERM: %v", err)
	} else if err := p.ExitErr(); err != nil {
		t.Errorf("ftpalg exited with %v after SIGTERM:\n%s", err, nstest.Tail(p.Log(), 20))
	}
	h.RequirePristine(t)
}

// RequirePristine compares the host's filter tables with the ones saved
// before ftpalg first ran (counters ignored) and looks for ftpalg ipsets.
func (h *HostTopology) RequirePristine(t testing.TB) {
	t.Helper()
	if got := h.FilterRuleset(t); got != h.baseline {
		t.Errorf("the host's filter tables differ from before ftpalg ran:\n--- before ---\n%s--- after ---\n%s", h.baseline, got)
	}
	for _, n := range h.IpsetNames(t) {
		if strings.HasPrefix(n, "ftpalg") {
			t.Errorf("ipset %s left behind after ftpalg exited", n)
		}
	}
}

// hostTarget is what clients in the client namespace connect to.
func hostTarget(v6 bool) Target {
	if v6 {
		return Target{Host: HostIP6, Port: 21, IPv6: true, ClientIP: ClientIP6}
	}
	return Target{Host: HostIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: HostIP4}
}

// ---------------------------------------------------------------- firewall state

// FilterRuleset returns iptables-save and ip6tables-save of the host's
// filter table, normalized (nstest.Normalize), for before/after
// comparisons.
func (h *HostTopology) FilterRuleset(t testing.TB) string {
	t.Helper()
	return "### iptables-save\n" + h.Host.Save(t, "4", "", "-t", "filter") +
		"\n### ip6tables-save\n" + h.Host.Save(t, "6", "", "-t", "filter") + "\n"
}

// IpsetNames lists the ipsets in the host namespace.
func (h *HostTopology) IpsetNames(t testing.TB) []string {
	t.Helper()
	return h.Host.Sets(t)
}

// kernelPinhole is one pinhole as the kernel holds it: a set element or a
// rule.
type kernelPinhole struct {
	Peer  netip.Addr
	Local netip.AddrPort
	Raw   string // the line it was read from
}

func (k kernelPinhole) String() string { return k.Raw }

// KernelPinholes reads the open pinholes of backend for one address family
// straight from the kernel (`ipset list` or `iptables -S FTPALG-INPUT`),
// not through ftpalg. It returns an error if the set or chain is missing;
// raw is the tool's output.
func (h *HostTopology) KernelPinholes(backend string, v6 bool) (ps []kernelPinhole, raw string, err error) {
	switch backend {
	case "ipset":
		set := pinholeSet4
		if v6 {
			set = pinholeSet6
		}
		if raw, err = h.Host.Try("ipset", "list", set); err != nil {
			return nil, raw, err
		}
		ps, err = parseIpsetMembers(raw)
	case "iptables":
		ipt := "iptables"
		if v6 {
			ipt = "ip6tables"
		}
		if raw, err = h.Host.Try(ipt, "-w", "-S", pinholeChain); err != nil {
			return nil, raw, err
		}
		ps, err = parseChainRules(raw)
	default:
		return nil, "", fmt.Errorf("no kernel pinholes for backend %q", backend)
	}
	return ps, raw, err
}

// parseIpsetMembers reads the "LOCAL,tcp:PORT,PEER comment ..." members
// of `ipset list SET`.
func parseIpsetMembers(out string) ([]kernelPinhole, error) {
	members, err := nstest.Members(out)
	if err != nil {
		return nil, err
	}
	var ps []kernelPinhole
	for _, l := range members {
		parts := strings.Split(strings.Fields(l)[0], ",")
		if len(parts) != 3 || !strings.HasPrefix(parts[1], "tcp:") {
			return nil, fmt.Errorf("unexpected set element %q", l)
		}
		local, err1 := netip.ParseAddr(parts[0])
		port, err2 := strconv.ParseUint(strings.TrimPrefix(parts[1], "tcp:"), 10, 16)
		peer, err3 := netip.ParseAddr(parts[2])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("unexpected set element %q", l)
		}
		ps = append(ps, kernelPinhole{Peer: peer, Local: netip.AddrPortFrom(local, uint16(port)), Raw: l})
	}
	return ps, nil
}

// parseChainRules reads "-A FTPALG-INPUT -s PEER/32 -d LOCAL/32 -p tcp -m
// tcp --dport PORT ... -j ACCEPT" lines; other rules in the chain are
// errors (the iptables backend keeps nothing else there).
func parseChainRules(out string) ([]kernelPinhole, error) {
	var ps []kernelPinhole
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		f := strings.Fields(l)
		var src, dst, dport string
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "-s":
				src = f[i+1]
			case "-d":
				dst = f[i+1]
			case "--dport":
				dport = f[i+1]
			}
		}
		peer, err1 := netip.ParsePrefix(src)
		local, err2 := netip.ParsePrefix(dst)
		port, err3 := strconv.ParseUint(dport, 10, 16)
		if err1 != nil || err2 != nil || err3 != nil || !peer.IsSingleIP() || !local.IsSingleIP() {
			return nil, fmt.Errorf("rule is not a single pinhole: %q", l)
		}
		ps = append(ps, kernelPinhole{Peer: peer.Addr(), Local: netip.AddrPortFrom(local.Addr(), uint16(port)), Raw: l})
	}
	return ps, nil
}

// findPinhole returns the kernel pinholes for local (any peer).
func findPinhole(ps []kernelPinhole, local netip.AddrPort) []kernelPinhole {
	var out []kernelPinhole
	for _, p := range ps {
		if p.Local == local {
			out = append(out, p)
		}
	}
	return out
}

// RequirePinhole fails unless the kernel holds exactly one pinhole for
// local, and it admits exactly peer.
func (h *HostTopology) RequirePinhole(t testing.TB, backend string, peer netip.Addr, local netip.AddrPort) {
	t.Helper()
	ps, raw, err := h.KernelPinholes(backend, local.Addr().Is6())
	if err != nil {
		t.Fatalf("reading the %s pinholes: %v", backend, err)
	}
	got := findPinhole(ps, local)
	if len(got) != 1 || got[0].Peer != peer {
		t.Fatalf("want exactly one %s pinhole %s→%s in the kernel, got %v; all:\n%s", backend, peer, local, got, raw)
	}
	t.Logf("kernel pinhole: %s", got[0].Raw)
}

// WaitPinholeGone polls (bounded) until the kernel holds no pinhole for
// local and returns how long that took, or fails the test. A missing set
// or chain counts as gone only if allowMissing.
func (h *HostTopology) WaitPinholeGone(t testing.TB, backend string, local netip.AddrPort, deadline time.Duration, allowMissing bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ps, raw, err := h.KernelPinholes(backend, local.Addr().Is6())
		switch {
		case err != nil && !allowMissing:
			t.Fatalf("reading the %s pinholes: %v", backend, err)
		case err != nil || len(findPinhole(ps, local)) == 0:
			return time.Since(start)
		}
		if time.Since(start) > deadline {
			t.Fatalf("%s pinhole for %s still there after %v:\n%s", backend, local, deadline, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RulesShow runs `ftpalg rules show --firewall backend` on the host.
func (h *HostTopology) RulesShow(backend string) (string, error) {
	if proxyBinary == "" {
		return "", fmt.Errorf("no ftpalg binary")
	}
	return h.Host.Try(proxyBinary, "rules", "show", "--firewall", backend)
}

// rulesShowLines returns the lines of `ftpalg rules show` output that name
// both peer and local ("198.51.100.10" and "198.51.100.1:50012"; IPv6
// local addresses bracketed).
func rulesShowLines(out string, peer netip.Addr, local netip.AddrPort) []string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if containsAddr(l, peer.String()) && strings.Contains(l, local.String()) {
			got = append(got, l)
		}
	}
	return got
}

// containsAddr reports whether line contains addr as a whole address, not
// as the prefix of a longer one (198.51.100.1 in 198.51.100.10).
func containsAddr(line, addr string) bool {
	for i := 0; ; {
		j := strings.Index(line[i:], addr)
		if j < 0 {
			return false
		}
		end := i + j + len(addr)
		if end == len(line) || !strings.ContainsRune("0123456789abcdefABCDEF:.", rune(line[end])) || line[end] == ':' && strings.Contains(addr, ".") {
			return true
		}
		i = end
	}
}
