//go:build linux

package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

const hugeFile = "huge.bin" // 200 MiB, sparse

// TestProxyAbortMidTransfer starts a RETR of a 200 MiB file through the
// proxy, reads 1 MiB, and aborts with python ftplib's abort() (ABOR sent as
// TCP urgent data) while the data connection is still open and unread, so
// the server is blocked writing. It checks that the server's abort replies
// reach the client in order (426 before 225/226 when the server sends
// both), and that the control connection stays in sync and usable (NOOP
// gets its own 200, a small download arrives intact).
//
// The "direct" sub-tests run the same against the server over plain
// routing: they show the server side of the exchange works without the
// proxy.
func TestProxyAbortMidTransfer(t *testing.T) {
	requirePrereqs(t, reqPython)
	for _, kind := range []ServerKind{Vsftpd, Proftpd} {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			for _, mode := range []Mode{PASV, PORT} {
				t.Run("direct-"+string(mode), func(t *testing.T) {
					topo := NewTopology(t, TopoOptions{Forwarding: true, ServerRouteToClient: true, ClientRouteToServer: true})
					srv := StartServer(t, topo, kind, ServerOptions{SparseFiles: map[string]int64{hugeFile: 200 << 20}})
					runAbort(t, topo, srv, nil, Target{Host: ServerIP4, Port: 21, ClientIP: ClientIP4}, mode)
				})
				t.Run("proxy-"+string(mode), func(t *testing.T) {
					requireProxy(t)
					topo := NewTopology(t, TopoOptions{})
					srv := StartServer(t, topo, kind, ServerOptions{SparseFiles: map[string]int64{hugeFile: 200 << 20}})
					p := StartProxy(t, topo, ProxyConfig{
						Listen: proxyListen4, Upstream: proxyUpstream4,
						Advertise: FrontClientIP4, DataPorts: proxyDataPorts4,
					})
					runAbort(t, topo, srv, p, Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4}, mode)
				})
			}
		})
	}
}

var (
	abortReplyRE = regexp.MustCompile(`(?m)^ABORT-REPLY: (\d{3})`)
	noopReplyRE  = regexp.MustCompile(`(?m)^NOOP-REPLY: (\d{3})`)
)

func runAbort(t *testing.T, topo *Topology, srv *Server, p *Proxy, tgt Target, mode Mode) {
	work := t.TempDir()
	local := filepath.Join(work, "small.bin")
	var off int64
	if p != nil {
		off = p.LogSize()
	}
	start := time.Now()
	res := runPython(context.Background(), topo.Client, Session{
		Target: tgt, User: srv.User, Pass: srv.Pass, Mode: mode,
		WorkDir: work, Timeout: 40 * time.Second,
	}, "abort-get", hugeFile, "noop", "get", "small.bin", local)
	elapsed := time.Since(start)

	if res.Err != nil {
		t.Errorf("client failed after %v: %v", elapsed.Round(time.Millisecond), res.Err)
	}
	var codes []string
	for _, m := range abortReplyRE.FindAllStringSubmatch(res.Log, -1) {
		codes = append(codes, m[1])
	}
	switch {
	case len(codes) == 0:
		t.Errorf("abort() returned no reply")
	case len(codes) == 1 && (codes[0] == "225" || codes[0] == "226"):
		// Server finished with a single reply.
	case len(codes) == 2 && codes[0] == "426" && (codes[1] == "225" || codes[1] == "226"):
		// 426 for the aborted transfer, then 225/226 for ABOR.
	default:
		t.Errorf("abort replies %v, want [426 225|226] or [225|226]", codes)
	}
	if m := noopReplyRE.FindStringSubmatch(res.Log); m == nil || m[1] != "200" {
		t.Errorf("NOOP after the abort did not get its own 200 reply (control connection out of sync?): %v", m)
	}
	if err := checkFile(local, srv.Files["small.bin"]); err != nil {
		t.Errorf("download after abort: %v", err)
	}
	if !strings.Contains(res.Log, "ALL-DONE") {
		t.Errorf("client did not finish")
	}
	if err := srv.Alive(); err != nil {
		t.Error(err)
	}
	if p != nil {
		if err := p.Alive(); err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.Logf("--- python transcript ---\n%s", nstest.Tail(res.Log, 80))
		if p != nil {
			t.Logf("--- ftpalg log during this case ---\n%s", nstest.Tail(p.LogSince(off), 100))
		}
		t.Logf("--- server ---\n%s", srv.Logs())
	} else {
		var replies []string
		for _, l := range strings.Split(res.Log, "\n") {
			if r, ok := strings.CutPrefix(l, "ABORT-REPLY: "); ok {
				replies = append(replies, strings.TrimSpace(r))
			}
		}
		t.Logf("abort replies %q, session usable afterwards (%v)", replies, elapsed.Round(time.Millisecond))
	}
}
