//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// TestScaleOut runs three ftpalg instances behind a kernel L4 load
// balancer, the deployment of issue 13 (several instances behind
// IPVS/keepalived), end to end with real clients and servers:
//
//	client ns                 director ns                        instance ns ×3
//	198.51.100.10/24 (+16     cli0 198.51.100.1/24 + VIP         eth0 192.0.2.11-13/24
//	source addresses) ─────── 203.0.113.10/32 | br0 192.0.2.1/24 ─ ftpalg :21 → vsftpd 127.0.0.1:21
//
// The balancer is nftables, not IPVS: this kernel has no IPVS (ipvsadm
// says "Protocol not available" and there is no ip_vs module), so IPVS
// itself cannot run here. nftables DNAT with a hash or counter looked up
// in a map of buckets is another real in-kernel L4 balancer with the same
// two behaviours that matter to FTP, so it stands in for IPVS:
//
//   - persistence (pattern 1): the director DNATs VIP tcp dport {21, the
//     data range} to the instance that the bucket jhash(ip saddr) mod 12
//     names, as IPVS persistence by firewall mark does: a client's control
//     and data connections all land on one instance. Every instance runs
//     with --advertise VIP and the same --data-ports; their default route
//     is the director (NAT mode), which un-NATs the replies.
//   - direct (pattern 2): the director balances only VIP:21 (numgen inc
//     mod 12, round robin) and each instance announces its own routable
//     address (--advertise 192.0.2.1x), so data connections go straight
//     to the instance that announced them, routed, not NATed. EPSV cannot
//     work in this pattern: a 229 reply has no address, so the client
//     would connect to VIP:port, which the director does not forward; so
//     the instances run with --epsv refuse (asserted: EPSV answered 502 by
//     ftpalg, not in FEAT, and curl, which tries EPSV first, falls back to
//     PASV and transfers).
//
// PORT and EPRT work in both patterns: the instance connects out to the
// client. In pattern 2 it does so from its own address, routed through
// the director. In pattern 1 the director masquerades the instances'
// outgoing connections (deploy/keepalived/README.md's rule, which IPVS
// NAT mode needs as well: it does not translate connections the real
// servers open), so the client sees them come from the director's
// address; asserted by the rule's counter. curl, lftp and ftplib accept
// a data connection from an address other than the control peer's.
//
// The subtests:
//
//   - persistence, direct: 18 concurrent sessions, curl, lftp and python
//     ftplib in PASV, EPSV (pattern 1 only), PORT and EPRT, bound to 16
//     client source addresses, list, download small.bin and big.bin and
//     upload small.bin. Asserted: every client succeeds with the right
//     checksums; more than one instance served sessions; each session's
//     upload landed on exactly one instance, whose log has the session's
//     control connection and, for each of its data connections, a data
//     peer with the control connection's address; no instance logged a
//     foreign or missing data connection. Pattern 1: every source address
//     was served by one instance only, and 227 replies announce the VIP.
//     Pattern 2: each 227 reply announces the instance the upload landed
//     on.
//   - kill9 (pattern 1): during a load of rate-limited downloads (2 MiB/s,
//     small socket buffers so the data is still at the instance), SIGKILL
//     the instance serving the most sessions. Its clients see the drop at
//     once: curl and ftplib exit with an error within 3 s of the kill
//     (their downloads need 5 s, their own limit is 30 s); lftp, which
//     retries, either fails the same way or reconnects and resumes with
//     REST on a live instance once the checker has moved its bucket
//     (then its file must be whole). The others finish with the right
//     checksums; the health checker takes the dead instance out of the
//     map and new sessions from every source address all succeed.
//   - drain (pattern 1): a slow download is held mid-transfer, its
//     instance gets SIGTERM (--shutdown-grace 20s): its /readyz stops
//     answering 200 at once, the checker takes it out, new sessions all go
//     to the other instances (no session started in its log after the
//     SIGTERM), and the held transfer then completes whole with the right
//     checksum (and was still being relayed after the SIGTERM). A new
//     data connection of that session is refused: its bucket moved (IPVS
//     with expire_quiescent_template=1 behaves the same). The instance
//     exits cleanly once the session quits.
//
// The health checker (soChecker) stands in for keepalived's HTTP_GET
// checker on each instance's /readyz (deploy/keepalived/keepalived.conf):
// the test polls /readyz from the director every 100 ms and, when an
// instance stops answering 200, rewrites the bucket map in one nft
// transaction so that the instance's buckets name live ones. Like
// keepalived's inhibit_on_failure (weight 0), that only steers new
// connections: established ones stay where conntrack has them.
func TestScaleOut(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython, reqVsftpd)
	nstest.Require(t, "nft")
	requireProxy(t)
	t.Run("persistence", func(t *testing.T) {
		so := newScaleOut(t, soPersistence, soOptions{})
		so.loadCheck(t, 18, []Mode{PASV, EPSV, PORT, EPRT})
	})
	t.Run("direct", func(t *testing.T) {
		so := newScaleOut(t, soDirect, soOptions{})
		so.loadCheck(t, 18, []Mode{PASV, PORT, EPRT})
		so.epsvRefused(t)
	})
	t.Run("kill9", func(t *testing.T) {
		so := newScaleOut(t, soPersistence, soOptions{})
		so.kill9(t)
	})
	t.Run("drain", func(t *testing.T) {
		so := newScaleOut(t, soPersistence, soOptions{Grace: "20s", Sparse: map[string]int64{soDrainFile: soDrainSize}})
		so.drain(t)
	})
}

// The scale-out topology's addresses and settings (documentation ranges
// only).
const (
	soVIP         = "203.0.113.10"
	soDirClient   = "198.51.100.1" // the director on the client's link
	soDirInst     = "192.0.2.1"    // the director on the instances' bridge
	soPrimary     = "198.51.100.10"
	soNumSources  = 16
	soInstances   = 3
	soBuckets     = 12 // map entries; IPVS would schedule per connection, the map per bucket
	soDataPorts   = "50000-50999"
	soMetricsPort = 9121
	soTimeout     = 30 * time.Second // one client session's hard limit
	soDrainFile   = "drain.bin"
	soDrainSize   = 64 << 20 // sparse: zeros
	soDrainHeldAt = 4 << 20
)

func soInstAddr(i int) string { return "192.0.2." + strconv.Itoa(11+i) }
func soSource(i int) string   { return "198.51.100." + strconv.Itoa(101+i) }

type soPattern int

const (
	soPersistence soPattern = iota // DNAT 21 and the data range by jhash(saddr), --advertise VIP
	soDirect                       // DNAT 21 by numgen, --advertise own address
)

// soInstance is one ftpalg instance with its vsftpd, alone in a
// namespace.
type soInstance struct {
	Idx   int
	Addr  string
	NS    *nstest.NS
	Srv   *Server
	Proxy *Proxy
}

type scaleOut struct {
	pattern          soPattern
	Client, Director *nstest.NS
	Inst             []*soInstance
	Sources          []string
	Files            map[string]DataFile // the same on every instance
}

type soOptions struct {
	Grace  string           // --shutdown-grace ("": the default)
	Sparse map[string]int64 // extra files on every server
}

func newScaleOut(t *testing.T, pattern soPattern, o soOptions) *scaleOut {
	t.Helper()
	id := nstest.RandomName("so")
	so := &scaleOut{
		pattern:  pattern,
		Client:   nstest.NewNamed(t, id+"-client"),
		Director: nstest.NewNamed(t, id+"-dir"),
	}
	so.Director.Sysctl(t, "net.ipv4.ip_forward", "1")
	nstest.Veth(t, so.Client, "eth0", so.Director, "cli0")
	so.Client.Addr(t, "eth0", soPrimary+"/24")
	for i := range soNumSources {
		so.Sources = append(so.Sources, soSource(i))
		so.Client.Addr(t, "eth0", soSource(i)+"/24")
	}
	so.Client.IP(t, "route", "add", "default", "via", soDirClient)
	so.Director.Addr(t, "cli0", soDirClient+"/24", soVIP+"/32")
	so.Director.IP(t, "link", "add", "br0", "type", "bridge")
	so.Director.IP(t, "link", "set", "br0", "up")
	so.Director.Addr(t, "br0", soDirInst+"/24")
	for i := range soInstances {
		n := nstest.NewNamed(t, fmt.Sprintf("%s-inst%d", id, i))
		dev := "inst" + strconv.Itoa(i)
		nstest.Veth(t, n, "eth0", so.Director, dev)
		so.Director.IP(t, "link", "set", dev, "master", "br0")
		n.Addr(t, "eth0", soInstAddr(i)+"/24")
		n.IP(t, "route", "add", "default", "via", soDirInst)
		so.Inst = append(so.Inst, &soInstance{Idx: i, Addr: soInstAddr(i), NS: n})
	}
	so.installLB(t)
	for _, in := range so.Inst {
		// The instance's namespace plays every role of a Topology: vsftpd
		// on its loopback, ftpalg in front of it, the readiness probe
		// from inside.
		topo := &Topology{ID: id, Client: in.NS, Front: in.NS, Server: in.NS}
		in.Srv = StartServer(t, topo, Vsftpd, ServerOptions{Addr4: "127.0.0.1", SparseFiles: o.Sparse})
		advertise := soVIP
		if pattern == soDirect {
			advertise = in.Addr
		}
		extra := []string{"--data-path", "splice", "--firewall", "none",
			"--metrics-listen", net.JoinHostPort(in.Addr, strconv.Itoa(soMetricsPort))}
		if o.Grace != "" {
			extra = append(extra, "--shutdown-grace", o.Grace)
		}
		if pattern == soDirect {
			extra = append(extra, "--epsv", "refuse")
		}
		in.Proxy = StartProxy(t, topo, ProxyConfig{
			Listen: in.Addr + ":21", Upstream: "127.0.0.1:21",
			Advertise: advertise, DataPorts: soDataPorts, Extra: extra,
		})
	}
	so.Files = so.Inst[0].Srv.Files
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := so.Director.Try("nft", "list", "ruleset")
			t.Logf("--- director ruleset ---\n%s", out)
		}
	})
	return so
}

// installLB installs the director's balancer: the bucket map and the DNAT
// rule of the pattern, every instance in the map.
func (so *scaleOut) installLB(t *testing.T) {
	t.Helper()
	ports, pick, snat := "21", "numgen inc", ""
	if so.pattern == soPersistence {
		ports, pick = "{ 21, "+soDataPorts+" }", "jhash ip saddr"
		// deploy/keepalived/README.md's source NAT for the connections
		// the instances open themselves (active mode), so that clients
		// see them come from the director, as the instances' addresses
		// are private in pattern 1. Replies of the DNATed connections
		// are not new connections and never reach it.
		snat = `	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 192.0.2.0/24 oifname "cli0" tcp sport != 21 counter masquerade
	}
`
	}
	// A map keyed by the mark: nft 1.0.6 cannot list a map declared
	// "typeof jhash ..." (it crashes), and the mark makes the analogy to
	// IPVS's firewall-mark services plain.
	ruleset := fmt.Sprintf(`table ip lb {
	map buckets {
		type mark : ipv4_addr
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %s meta mark set %s mod %d dnat to meta mark map @buckets
	}
%s}
`, soVIP, ports, pick, soBuckets, snat)
	path := filepath.Join(t.TempDir(), "lb.nft")
	writeFile(t, path, ruleset, 0o600)
	so.Director.Run(t, "nft", "-f", path)
	if err := so.setBackends(slices.Repeat([]bool{true}, len(so.Inst))); err != nil {
		t.Fatal(err)
	}
}

// setBackends rewrites the bucket map in one nft transaction: bucket b
// goes to instance b mod N while that one is up, else to one of the live
// ones, so a removal moves only the dead instance's buckets (clients of
// the others keep their instance, and with it their sessions' data
// connections).
func (so *scaleOut) setBackends(up []bool) error {
	var live []string
	for i, ok := range up {
		if ok {
			live = append(live, so.Inst[i].Addr)
		}
	}
	cmd := "flush map ip lb buckets"
	if len(live) > 0 {
		var elems []string
		for b := range soBuckets {
			addr := so.Inst[b%len(so.Inst)].Addr
			if !up[b%len(so.Inst)] {
				addr = live[b%len(live)]
			}
			elems = append(elems, fmt.Sprintf("%d : %s", b, addr))
		}
		cmd += "; add element ip lb buckets { " + strings.Join(elems, ", ") + " }"
	}
	_, err := so.Director.Try("nft", cmd)
	return err
}

// readyz asks instance i for /readyz from the director and returns the
// HTTP status (0 and the error when nothing answered).
func (so *scaleOut) readyz(i int) (int, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			c, err := so.Director.Dial(netip.Addr{}, ap, 500*time.Millisecond)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Second}
	resp, err := hc.Get("http://" + net.JoinHostPort(so.Inst[i].Addr, strconv.Itoa(soMetricsPort)) + "/readyz")
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// soChecker stands in for keepalived's HTTP_GET health checker: every
// 100 ms it asks each instance's /readyz from the director and, when the
// set of instances answering 200 changes, rewrites the bucket map.
type soChecker struct {
	mu      sync.Mutex
	up      []bool
	removed []time.Time // when each instance was taken out (zero: never)
	errs    []string
}

func (so *scaleOut) startChecker(t *testing.T) *soChecker {
	c := &soChecker{up: slices.Repeat([]bool{true}, len(so.Inst)), removed: make([]time.Time, len(so.Inst))}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			now := make([]bool, len(so.Inst))
			for i := range so.Inst {
				code, _ := so.readyz(i)
				now[i] = code == http.StatusOK
			}
			c.mu.Lock()
			if !slices.Equal(now, c.up) {
				if err := so.setBackends(now); err != nil {
					c.errs = append(c.errs, err.Error())
				} else {
					for i := range now {
						if c.up[i] && !now[i] {
							c.removed[i] = time.Now()
						}
					}
					c.up = now
				}
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.errs {
			t.Errorf("health checker: %s", e)
		}
	})
	return c
}

// waitRemoved waits up to within for the checker to take instance i out
// and returns when it did.
func (c *soChecker) waitRemoved(t *testing.T, i int, within time.Duration) time.Time {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		c.mu.Lock()
		at := c.removed[i]
		c.mu.Unlock()
		if !at.IsZero() {
			return at
		}
	}
	t.Fatalf("the health checker did not take instance %d out within %v", i, within)
	return time.Time{}
}

// soSession is one client run of a load.
type soSession struct {
	Name   string
	Client Client
	Mode   Mode
	Source string
	Gets   []string
	Put    bool
	Rate   int64
	Extra  []string // the client's own arguments
	Work   string
	Res    Result
	Start  time.Time
	End    time.Time
}

// sessions makes n sessions that cycle through the clients, the modes
// each client supports over IPv4 and the source addresses.
func (so *scaleOut) sessions(t *testing.T, prefix string, n int, clients []Client, modes []Mode, gets []string, put bool) []*soSession {
	var out []*soSession
	for i := range n {
		c := clients[i%len(clients)]
		m := modes[(i/len(clients))%len(modes)]
		for k := 1; ; k++ {
			if ok, _ := c.Supports(m, false); ok {
				break
			}
			m = modes[(i/len(clients)+k)%len(modes)]
		}
		out = append(out, &soSession{
			Name:   fmt.Sprintf("%s%02d-%s-%s", prefix, i, c.Name(), m),
			Client: c, Mode: m, Source: so.Sources[i%len(so.Sources)],
			Gets: gets, Put: put, Work: t.TempDir(),
		})
	}
	return out
}

func (s *soSession) uploadName() string { return s.Name + "-small.bin" }

// run runs the sessions concurrently against VIP:21 and waits for all.
func (so *scaleOut) run(ss []*soSession) {
	var wg sync.WaitGroup
	for _, s := range ss {
		ops := []Op{{Kind: OpList}}
		for _, f := range s.Gets {
			ops = append(ops, Op{Kind: OpGet, Remote: f, Local: filepath.Join(s.Work, "dl-"+f)})
		}
		if s.Put {
			ops = append(ops, Op{Kind: OpPut, Local: filepath.Join(so.Inst[0].Srv.Root, "small.bin"), Remote: uploadDirName + "/" + s.uploadName()})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Start = time.Now()
			s.Res = s.Client.Run(context.Background(), so.Client, Session{
				Target: Target{Host: soVIP, Port: 21, ClientIP: s.Source},
				User:   so.Inst[0].Srv.User, Pass: so.Inst[0].Srv.Pass,
				Mode: s.Mode, Ops: ops, WorkDir: s.Work, Timeout: soTimeout,
				Source: s.Source, LimitRate: s.Rate, ExtraArgs: s.Extra,
			})
			s.End = time.Now()
		}()
	}
	wg.Wait()
}

// check verifies a session that must have succeeded and returns the
// instance its upload landed on (-1: none, or not exactly one).
func (so *scaleOut) check(t *testing.T, s *soSession) int {
	t.Helper()
	failed := false
	fail := func(format string, args ...any) {
		failed = true
		t.Errorf("%s (from %s): "+format, append([]any{s.Name, s.Source}, args...)...)
	}
	if s.Res.Err != nil {
		fail("failed after %v: %v", s.End.Sub(s.Start).Round(time.Millisecond), s.Res.Err)
	}
	if err := checkModeUsed(s.Res.Log, s.Mode); err != nil {
		fail("%v", err)
	}
	if !strings.Contains(s.Res.Listing, "small.bin") {
		fail("listing lacks small.bin")
	}
	for _, f := range s.Gets {
		if err := checkFile(filepath.Join(s.Work, "dl-"+f), so.Files[f]); err != nil {
			fail("download: %v", err)
		}
	}
	landed := -1
	if s.Put {
		var on []int
		for _, in := range so.Inst {
			if _, err := os.Stat(filepath.Join(in.Srv.UploadDir, s.uploadName())); err == nil {
				on = append(on, in.Idx)
				if err := checkFile(filepath.Join(in.Srv.UploadDir, s.uploadName()), so.Files["small.bin"]); err != nil {
					fail("upload: %v", err)
				}
			}
		}
		if len(on) == 1 {
			landed = on[0]
		} else {
			fail("upload %s landed on instances %v, want exactly one", s.uploadName(), on)
		}
	}
	if failed {
		t.Logf("--- %s transcript ---\n%s", s.Name, nstest.Tail(s.Res.Log, 60))
	}
	return landed
}

// soLogStats is what one instance's log says about the client source
// addresses.
type soLogStats struct {
	sessions  map[string]int // control connections started, by client address
	data      map[string]int // data connections established, by client address
	transfers map[string]int // transfers finished, by client address
}

// stats reads instance i's log (from offset off): sessions, data
// connections and finished transfers per client address. Every data
// connection must come from (or go to) the address of its session's
// control connection, and none may be foreign or missing.
func (so *scaleOut) stats(t *testing.T, i int, off int64) soLogStats {
	t.Helper()
	st := soLogStats{sessions: map[string]int{}, data: map[string]int{}, transfers: map[string]int{}}
	for _, e := range parseProxyLog(so.Inst[i].Proxy.LogSince(off)) {
		client := addrOnly(e.str("client"))
		switch msg := e.str("msg"); msg {
		case proxy.MsgSessionStarted:
			st.sessions[client]++
		case proxy.MsgDataConnected:
			st.data[client]++
			if d := addrOnly(e.str("client_data")); d != client {
				t.Errorf("instance %d: a data connection of %s's session is with %s", i, client, d)
			}
		case proxy.MsgTransferFinished:
			st.transfers[client]++
		case proxy.MsgDataForeign, proxy.MsgDataNotMade, proxy.MsgDataFailed, proxy.MsgTransferFailed:
			t.Errorf("instance %d logged %q: %v", i, msg, e)
		}
		if l := e.str("level"); l == "warn" || l == "error" {
			t.Errorf("instance %d logged a %s: %v", i, l, e)
		}
	}
	return st
}

func addrOnly(s string) string {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().String()
	}
	return s
}

// loadCheck runs n concurrent sessions in modes and checks them and the
// instances' logs (see TestScaleOut).
func (so *scaleOut) loadCheck(t *testing.T, n int, modes []Mode) {
	ss := so.sessions(t, "load", n, allClients, modes, []string{"small.bin", "big.bin"}, true)
	start := time.Now()
	so.run(ss)
	t.Logf("%d sessions in %v", len(ss), time.Since(start).Round(time.Millisecond))

	want := make([]map[string]int, len(so.Inst)) // sessions per instance and source, by the uploads
	for i := range want {
		want[i] = map[string]int{}
	}
	used := map[int]bool{}
	for _, s := range ss {
		in := so.check(t, s)
		if in < 0 {
			continue
		}
		want[in][s.Source]++
		used[in] = true
		pasv := pasvAddrs(s.Res.Log)
		if s.Mode == PASV && len(pasv) == 0 {
			t.Errorf("%s: no 227 reply in the transcript", s.Name)
		}
		wantPASV := soVIP
		if so.pattern == soDirect {
			wantPASV = so.Inst[in].Addr
		}
		for _, a := range pasv {
			if a != wantPASV {
				t.Errorf("%s: 227 announces %s, want %s (its upload landed on instance %d)", s.Name, a, wantPASV, in)
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("sessions landed on instances %v only: the balancer did not spread them", used)
	}
	servedBy := map[string][]int{}
	for i := range so.Inst {
		st := so.stats(t, i, 0)
		for src, k := range want[i] {
			// Each session: list, two downloads, one upload.
			if st.sessions[src] != k || st.data[src] != 4*k || st.transfers[src] != 4*k {
				t.Errorf("instance %d, client %s: %d sessions, %d data connections, %d transfers finished logged; want %d, %d, %d",
					i, src, st.sessions[src], st.data[src], st.transfers[src], k, 4*k, 4*k)
			}
		}
		for src, k := range st.sessions {
			if slices.Contains(so.Sources, src) {
				servedBy[src] = append(servedBy[src], i)
				if want[i][src] == 0 {
					t.Errorf("instance %d logged %d sessions from %s, none of whose uploads landed there", i, k, src)
				}
			}
		}
	}
	for _, src := range so.Sources {
		if so.pattern == soPersistence && len(servedBy[src]) > 1 {
			t.Errorf("persistence: sessions from %s were served by instances %v, want one", src, servedBy[src])
		}
	}
	t.Logf("served by (source → instances): %v; instances used %v", servedBy, used)
	if so.pattern == soPersistence && slices.ContainsFunc(ss, func(s *soSession) bool { return s.Mode == PORT || s.Mode == EPRT }) {
		out := so.Director.Run(t, "nft", "list", "chain", "ip", "lb", "postrouting")
		if m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Errorf("active-mode sessions ran, but the director's masquerade rule for the instances' outgoing connections never matched:\n%s", out)
		}
	}
	so.alive(t)
}

// alive fails t if an instance or its server died.
func (so *scaleOut) alive(t *testing.T) {
	t.Helper()
	for _, in := range so.Inst {
		if err := in.Proxy.Alive(); err != nil {
			t.Errorf("instance %d: %v", in.Idx, err)
		}
		if err := in.Srv.Alive(); err != nil {
			t.Errorf("instance %d: %v", in.Idx, err)
		}
	}
}

// epsvRefused shows why pattern 2 needs --epsv refuse, and that it
// works: the instances answer EPSV themselves with 502 and leave it out of
// FEAT; curl, which tries EPSV first, falls back to PASV and gets the
// file.
func (so *scaleOut) epsvRefused(t *testing.T) {
	c, err := dialCtl(so.Client, soVIP+":21", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.login(so.Inst[0].Srv.User, so.Inst[0].Srv.Pass); err != nil {
		t.Fatal(err)
	}
	feat, err := c.expect("FEAT", 211)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(feat, "EPSV") {
		t.Errorf("FEAT through an instance with --epsv refuse lists EPSV:\n%s", feat)
	}
	if _, err := c.expect("EPSV", 502); err != nil {
		t.Errorf("EPSV through an instance with --epsv refuse: %v", err)
	}
	c.quit()

	// curl in its default passive mode: EPSV, then PASV on the 502. Since
	// 7.74 curl ignores the address in a 227 reply by default and
	// connects to the control connection's (VIP:port, not forwarded), so
	// pattern 2 needs --no-ftp-skip-pasv-ip with curl (python's ftplib:
	// trust_server_pasv_ipv4_address; lftp uses the address).
	s := &soSession{Name: "epsv-fallback-curl", Client: curlClient{}, Mode: EPSV, Source: so.Sources[0],
		Gets: []string{"small.bin"}, Extra: []string{"--no-ftp-skip-pasv-ip"}, Work: t.TempDir()}
	so.run([]*soSession{s})
	if s.Res.Err != nil {
		t.Fatalf("curl with EPSV first: %v\n%s", s.Res.Err, nstest.Tail(s.Res.Log, 40))
	}
	if err := checkFile(filepath.Join(s.Work, "dl-small.bin"), so.Files["small.bin"]); err != nil {
		t.Errorf("curl with EPSV first: %v", err)
	}
	if !regexp.MustCompile(`(?s)> EPSV\s.*< 502 .*> PASV\s`).MatchString(s.Res.Log) {
		t.Errorf("curl did not go EPSV, 502, PASV:\n%s", nstest.Tail(s.Res.Log, 40))
	}
}

// kill9: see TestScaleOut.
func (so *scaleOut) kill9(t *testing.T) {
	chk := so.startChecker(t)
	// 2 MiB/s: big.bin takes 5 s, long enough to kill an instance in the
	// middle of it. Small socket buffers keep the data in flight at the
	// instance: with this host's (up to 32 MiB receive buffers) the
	// instance would hand all of big.bin to the kernel within a fraction of
	// a second and be done with the transfer before the kill.
	so.Client.Sysctl(t, "net.ipv4.tcp_rmem", "4096 65536 262144")
	for _, in := range so.Inst {
		in.NS.Sysctl(t, "net.ipv4.tcp_wmem", "4096 65536 262144")
	}
	ss := so.sessions(t, "kill", 12, allClients, []Mode{PASV, EPSV}, []string{"big.bin"}, false)
	for _, s := range ss {
		s.Rate = 2 << 20
	}
	done := make(chan struct{})
	go func() { so.run(ss); close(done) }()

	// Wait until every session's download is running, then kill the
	// instance carrying the most of them.
	var victim int
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		total, most := 0, 0
		for i := range so.Inst {
			n := strings.Count(so.Inst[i].Proxy.Log(), `"msg":"`+proxy.MsgDataConnected+`"`)
			// The LIST's data connection, then RETR's.
			n = n / 2
			total += n
			if n > most {
				victim, most = i, n
			}
		}
		if total >= len(ss) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("only %d of %d downloads started within 15s", total, len(ss))
		}
	}
	// The victims are the sessions whose download is still running on it
	// (a data connection without its finished transfer): on a loaded
	// machine the first downloads may be done before the last one starts.
	victims := map[string]bool{}
	st := so.stats(t, victim, 0)
	for src, n := range st.data {
		if n > st.transfers[src] {
			victims[src] = true
		}
	}
	killed := time.Now()
	if err := syscall.Kill(so.Inst[victim].Proxy.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL to instance %d (pid %d), serving %v", victim, so.Inst[victim].Proxy.PID(), victims)
	removed := chk.waitRemoved(t, victim, 5*time.Second)
	t.Logf("the checker took instance %d out %v after the kill", victim, removed.Sub(killed).Round(time.Millisecond))
	<-done

	nFailed := 0
	for _, s := range ss {
		if !victims[s.Source] {
			so.check(t, s)
			t.Logf("%s: succeeded in %v", s.Name, s.End.Sub(s.Start).Round(time.Millisecond))
			continue
		}
		nFailed++
		if s.Res.Err == nil {
			// lftp retries: it sees the drop ("Peer closed
			// connection"), connects again and resumes with REST; once
			// the checker has moved the bucket, on a live instance.
			if s.Client.Name() == "lftp" && strings.Contains(s.Res.Log, "**** Peer closed connection") &&
				strings.Count(s.Res.Log, "---- Connecting to ") >= 2 && strings.Contains(s.Res.Log, "---> REST ") {
				so.check(t, s)
				on := -1
				for i := range so.Inst {
					if i != victim && so.stats(t, i, 0).sessions[s.Source] > 0 {
						on = i
					}
				}
				if on < 0 {
					t.Errorf("%s: resumed, but no live instance logged a session from %s", s.Name, s.Source)
				}
				t.Logf("%s: saw the drop, reconnected and resumed on instance %d (lftp retries)", s.Name, on)
				continue
			}
			t.Errorf("%s: succeeded although its instance %d was killed\n%s", s.Name, victim, nstest.Tail(s.Res.Log, 80))
			continue
		}
		// Promptly: long before the 5 s the download needs and the
		// client's own 30 s limit.
		if after := s.End.Sub(killed); after > 3*time.Second {
			t.Errorf("%s: failed %v after the kill, want within 3s (%v)", s.Name, after.Round(time.Millisecond), s.Res.Err)
		} else {
			t.Logf("%s: failed %v after the kill: %v", s.Name, after.Round(time.Millisecond), s.Res.Err)
		}
	}
	if nFailed == 0 {
		t.Errorf("no session was on the killed instance")
	}

	// New sessions, from every source address (the killed instance's
	// clients included), all go to the two others.
	after := so.sessions(t, "after", soNumSources, allClients, []Mode{PASV, EPSV, PORT, EPRT}, []string{"small.bin"}, true)
	so.run(after)
	for _, s := range after {
		if in := so.check(t, s); in == victim {
			t.Errorf("%s landed on the killed instance", s.Name)
		}
	}
}

// drain: see TestScaleOut.
func (so *scaleOut) drain(t *testing.T) {
	chk := so.startChecker(t)
	want := zeroFile(soDrainFile, soDrainSize)

	// The held download, from the client's primary address.
	c, err := dialCtl(so.Client, soVIP+":21", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.login(so.Inst[0].Srv.User, so.Inst[0].Srv.Pass); err != nil {
		t.Fatal(err)
	}
	at, err := c.passive(EPSV)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := c.dialData(at)
	if err != nil {
		t.Fatalf("data connection to %s: %v", at, err)
	}
	defer dc.Close()
	if _, err := c.expect("RETR "+soDrainFile, 125, 150); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	dc.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.CopyN(h, dc, soDrainHeldAt)
	if err != nil {
		t.Fatalf("first %d bytes of %s: %v", soDrainHeldAt, soDrainFile, err)
	}
	d := -1
	for i := range so.Inst {
		if so.stats(t, i, 0).sessions[soPrimary] > 0 {
			d = i
		}
	}
	if d < 0 {
		t.Fatalf("no instance logged the session from %s", soPrimary)
	}
	p := so.Inst[d].Proxy

	// SIGTERM: /readyz must stop answering 200 at once.
	off := p.LogSize()
	term := time.Now()
	if err := syscall.Kill(p.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		code, err := so.readyz(d)
		if code != http.StatusOK {
			t.Logf("instance %d /readyz %v after SIGTERM: %d %v", d, time.Since(term).Round(time.Millisecond), code, err)
			break
		}
		if time.Since(term) > time.Second {
			t.Fatalf("instance %d /readyz still 200 %v after SIGTERM", d, time.Since(term).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	removed := chk.waitRemoved(t, d, 3*time.Second)
	t.Logf("the checker took instance %d out %v after SIGTERM", d, removed.Sub(term).Round(time.Millisecond))

	// New sessions from every source address go to the others.
	ss := so.sessions(t, "drain", soNumSources, allClients, []Mode{PASV, EPSV, PORT, EPRT}, []string{"small.bin"}, true)
	so.run(ss)
	for _, s := range ss {
		if in := so.check(t, s); in == d {
			t.Errorf("%s landed on the draining instance %d", s.Name, d)
		}
	}
	for _, e := range parseProxyLog(p.LogSince(off)) {
		if e.str("msg") == proxy.MsgSessionStarted {
			t.Errorf("the draining instance %d started a session after SIGTERM: %v", d, e)
		}
	}
	if err := p.Alive(); err != nil {
		t.Fatalf("the draining instance exited with its transfer in flight: %v", err)
	}

	// The held transfer completes whole.
	dc.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := io.Copy(h, dc)
	n += m
	if err != nil {
		t.Errorf("rest of %s: %v", soDrainFile, err)
	}
	dc.Close()
	if sum := hex.EncodeToString(h.Sum(nil)); n != want.Size || sum != want.SHA256 {
		t.Errorf("%s across the drain: %d bytes, sha256 %s; want %d, %s", soDrainFile, n, short(sum), want.Size, short(want.SHA256))
	}
	if code, text, err := c.reply(); err != nil || code != 226 {
		t.Errorf("end of RETR: %q, %v; want 226\n%s", text, err, c.Transcript())
	}
	// The limit of draining behind a balancer that moves the drained
	// instance's clients: the session's next data connection goes to
	// VIP:port like the first, but the bucket now names another instance,
	// which has no such port open. IPVS with expire_quiescent_template=1
	// (deploy/keepalived/README.md) does the same: the client's template
	// points at a weight-0 instance, so the new connection is scheduled
	// afresh. Only transfers already running at the drain finish.
	if at, err := c.passive(EPSV); err != nil {
		t.Errorf("EPSV after the drained transfer: %v", err)
	} else if got, dc := knock(so.Client, at, 3*time.Second); got != "refused" {
		if dc != nil {
			dc.Close()
		}
		t.Errorf("a new data connection of the draining session to %s: %s, want refused (its bucket moved)", at, got)
	}
	if err := c.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	// The instance finished relaying the transfer after the SIGTERM: it
	// was in flight, not already in the client's socket buffer.
	finished := false
	for _, e := range parseProxyLog(p.LogSince(off)) {
		if e.str("msg") == proxy.MsgTransferFinished && addrOnly(e.str("client")) == soPrimary {
			finished = true
			if b, _ := e["bytes_to_client"].(float64); int64(b) != soDrainSize {
				t.Errorf("the drained transfer logged %v bytes to the client, want %d", e["bytes_to_client"], soDrainSize)
			}
		}
	}
	if !finished {
		t.Errorf("no %q line for %s after the SIGTERM: the transfer was not in flight", proxy.MsgTransferFinished, soDrainFile)
	}
	// With its last session gone the instance exits, well before the
	// grace period ends.
	exited := make(chan error, 1)
	go func() { exited <- p.ExitErr() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the drained instance exited with %v", err)
		}
		t.Logf("instance %d exited %v after SIGTERM", d, time.Since(term).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Errorf("the drained instance did not exit within 10s of its last session's end")
	}
}

// zeroFile is the DataFile of a sparse file of size zeros.
func zeroFile(name string, size int64) DataFile {
	h := sha256.New()
	io.CopyN(h, zeroReader{}, size)
	return DataFile{Name: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
