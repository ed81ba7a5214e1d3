//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// Proxy addresses used by the matrix.
var (
	proxyListen4   = FrontClientIP4 + ":21"
	proxyUpstream4 = ServerIP4 + ":21"
	proxyListen6   = "[" + FrontClientIP6 + "]:21"
	proxyUpstream6 = "[" + ServerIP6 + "]:21"
)

const (
	proxyDataPorts4 = "50000-50999"
	proxyDataPorts6 = "51000-51999"
)

// caseTimeout bounds one client session (list, 4 downloads, 2 uploads);
// a healthy session takes well under a second.
const caseTimeout = 45 * time.Second

// maxHardTimeouts: after this many clients of one matrix had to be killed,
// the remaining cases fail at once instead of each waiting caseTimeout, so
// a hanging proxy cannot push the package past go test's timeout.
const maxHardTimeouts = 2

// TestProxyMatrix runs every client in every mode through ftpalg against
// every server: list, download all test files, upload two, and compare
// SHA-256 sums of what arrived (uploads are read back from the server's
// disk). ftpalg runs on the front host with forwarding off; the client
// has no route to the server network, so everything must go through the
// proxy.
func TestProxyMatrix(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := NewTopology(t, TopoOptions{})
			srv := StartServer(t, topo, kind, ServerOptions{IPv6: true})
			t.Run("v4", func(t *testing.T) {
				p := StartProxy(t, topo, ProxyConfig{
					Listen: proxyListen4, Upstream: proxyUpstream4,
					Advertise: FrontClientIP4, DataPorts: proxyDataPorts4,
				})
				runMatrix(t, topo, srv, p, Target{
					Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4,
				})
			})
			t.Run("v6", func(t *testing.T) {
				p := StartProxy(t, topo, ProxyConfig{
					Listen: proxyListen6, Upstream: proxyUpstream6,
					Advertise: FrontClientIP6, DataPorts: proxyDataPorts6,
				})
				runMatrix(t, topo, srv, p, Target{
					Host: FrontClientIP6, Port: 21, IPv6: true, ClientIP: ClientIP6,
				})
			})
		})
	}
}

// TestDirectBaseline is the control group for TestProxyMatrix: the same
// matrix with the client talking to the server directly over a routed
// front host (no NAT, no proxy). If this fails, the harness (servers,
// clients, topology) is broken, not the proxy.
func TestDirectBaseline(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := NewTopology(t, TopoOptions{Forwarding: true, ServerRouteToClient: true, ClientRouteToServer: true})
			srv := StartServer(t, topo, kind, ServerOptions{IPv6: true})
			t.Run("v4", func(t *testing.T) {
				runMatrix(t, topo, srv, nil, Target{
					Host: ServerIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: ServerIP4,
				})
			})
			t.Run("v6", func(t *testing.T) {
				runMatrix(t, topo, srv, nil, Target{
					Host: ServerIP6, Port: 21, IPv6: true, ClientIP: ClientIP6,
				})
			})
		})
	}
}

// runMatrix runs one sub-test per client and mode the client supports on
// the target's address family. Modes a client cannot use on that family
// (lftp EPRT over IPv4; PASV/PORT over IPv6) are not generated.
func runMatrix(t *testing.T, topo *Topology, srv *Server, p *Proxy, tgt Target) {
	runMatrixCheck(t, topo, srv, p, tgt, nil)
}

// caseCheck is called before one client session of a matrix (off: where
// in ftpalg's log the session starts) and returns what checks, once the
// session went well, what ftpalg logged beyond what runTransferCase
// checks; sizes are the sizes of the files the session moved, listings
// the number of listings.
type caseCheck func(t *testing.T, p *Proxy, off int64) (after func(sizes []int64, listings int))

// runMatrixCheck is runMatrix with check run after each case.
func runMatrixCheck(t *testing.T, topo *Topology, srv *Server, p *Proxy, tgt Target, check caseCheck) {
	hardTimeouts := 0
	for _, c := range allClients {
		for _, mode := range allModes {
			if ok, _ := c.Supports(mode, tgt.IPv6); !ok {
				continue
			}
			t.Run(c.Name()+"-"+string(mode), func(t *testing.T) {
				requirePrereqs(t, clientRequirement(c))
				if hardTimeouts >= maxHardTimeouts {
					t.Fatalf("not run: %d earlier clients of this matrix hung until killed", hardTimeouts)
				}
				if errors.Is(runTransferCaseCheck(t, topo, srv, p, c, tgt, mode, check), errHardTimeout) {
					hardTimeouts++
				}
			})
		}
	}
}

// runTransferCase: list, download the standard files, upload small.bin and
// big.bin, verify everything. It returns the client's error.
func runTransferCase(t *testing.T, topo *Topology, srv *Server, p *Proxy, c Client, tgt Target, mode Mode) error {
	return runTransferCaseCheck(t, topo, srv, p, c, tgt, mode, nil)
}

// runTransferCaseCheck is runTransferCase with check (if not nil) run on
// ftpalg's log of the session.
func runTransferCaseCheck(t *testing.T, topo *Topology, srv *Server, p *Proxy, c Client, tgt Target, mode Mode, check caseCheck) error {
	work := t.TempDir()
	// Unique per run: vsftpd does not let anonymous users overwrite, and
	// a test may run a client and mode twice against one server.
	prefix := fmt.Sprintf("%s-%s-%s-%d-", c.Name(), tgt.Family(), mode, gwUploadSeq.Add(1))

	ops := []Op{{Kind: OpList}}
	var downloads []string
	for _, f := range standardFiles {
		ops = append(ops, Op{Kind: OpGet, Remote: f.name, Local: filepath.Join(work, "dl-"+f.name)})
		downloads = append(downloads, f.name)
	}
	uploads := []string{"small.bin", "big.bin"}
	for _, name := range uploads {
		ops = append(ops, Op{Kind: OpPut, Local: filepath.Join(srv.Root, name), Remote: uploadDirName + "/" + prefix + name})
	}

	var logOff int64
	var after func([]int64, int)
	if p != nil {
		logOff = p.LogSize()
		if check != nil {
			after = check(t, p, logOff)
		}
	}
	start := time.Now()
	res := c.Run(context.Background(), topo.Client, Session{
		Target: tgt, User: srv.User, Pass: srv.Pass, Mode: mode, Ops: ops,
		WorkDir: work, Timeout: caseTimeout,
	})
	elapsed := time.Since(start)

	if res.Err != nil {
		t.Errorf("%s (%s over %s) failed after %v: %v", c.Name(), mode.Command(), tgt.Family(), elapsed.Round(time.Millisecond), res.Err)
	}
	if err := checkModeUsed(res.Log, mode); err != nil {
		t.Error(err)
	}
	if mode == PASV && tgt.WantPASVIP != "" {
		addrs := pasvAddrs(res.Log)
		if len(addrs) == 0 {
			t.Errorf("no 227 reply in the transcript")
		}
		for _, a := range addrs {
			if a != tgt.WantPASVIP {
				t.Errorf("227 reply announces %s, want %s", a, tgt.WantPASVIP)
				break
			}
		}
	}
	for _, f := range standardFiles {
		if !strings.Contains(res.Listing, f.name) {
			t.Errorf("listing lacks %s", f.name)
		}
	}
	for _, name := range downloads {
		if err := checkFile(filepath.Join(work, "dl-"+name), srv.Files[name]); err != nil {
			t.Errorf("download %s: %v", name, err)
		}
	}
	for _, name := range uploads {
		if err := checkFile(filepath.Join(srv.UploadDir, prefix+name), srv.Files[name]); err != nil {
			t.Errorf("upload %s: %v", name, err)
		}
	}
	if err := srv.Alive(); err != nil {
		t.Error(err)
	}
	if p != nil {
		if err := p.Alive(); err != nil {
			t.Error(err)
		}
		if after != nil && res.Err == nil {
			var sizes []int64
			for _, name := range slices.Concat(downloads, uploads) {
				sizes = append(sizes, srv.Files[name].Size)
			}
			after(sizes, 1)
		}
	}
	if t.Failed() {
		t.Logf("--- %s transcript ---\n%s", c.Name(), nstest.Tail(res.Log, 150))
		t.Logf("--- listing ---\n%s", res.Listing)
		if p != nil {
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(p.LogSince(logOff), 150))
		}
		t.Logf("--- server logs ---\n%s", srv.Logs())
	} else {
		t.Logf("ok in %v, data commands %v", elapsed.Round(time.Millisecond), dataCommands(res.Log))
	}
	return res.Err
}
