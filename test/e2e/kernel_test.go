//go:build linux

package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// End-to-end tests of the kernel data path (issue #10): ftpalg keeps the
// control channel and hands each announced data connection to the kernel
// (--data-path kernel, rules/nftpath). What covers what, to keep the run
// affordable (about 4 minutes in all):
//
//   - TestKernelReverseMatrix: reverse/sidecar mode, IPv4 and IPv6, every
//     server × every client × every mode it sends (the full matrix of
//     TestProxyMatrix), checksums, and per session the proof: transfer
//     lines on path=kernel with conntrack's byte counts equal to the file
//     sizes, conntrack entries with the NAT tuple of every announced
//     connection.
//   - TestKernelGateway: transparent gateway mode, REDIRECT and TPROXY, a
//     representative subset (kernel_gateway_test.go).
//   - TestKernelDataNotRelayed, TestKernelLongModes, TestKernelMappingOnce,
//     TestKernelKill9, TestKernelForwardDrop, TestKernelSpliceFallback:
//     the properties, one topology each (see their comments).

// kernelReverseTopology is the three-namespace chain of topo_test.go with
// the front host forwarding (the kernel forwards the data) and conntrack
// accounting on; the client still has no route to the server network, so
// nothing reaches the server except what ftpalg or its mappings pass.
func kernelReverseTopology(t *testing.T) *Topology {
	t.Helper()
	topo := NewTopology(t, TopoOptions{Forwarding: true})
	kernelHost(t, topo.Front)
	return topo
}

// kernelReverseCheck is the per-session proof for reverse mode: passive
// data connections come from the client and are SNATed to the front
// host's server-side address (servers insist that the data peer is the
// control peer), active ones come from the server and are SNATed to its
// client-side address.
func kernelReverseCheck(topo *Topology, v6 bool) caseCheck {
	f := nstest.V4
	if v6 {
		f = nstest.V6
	}
	return func(t *testing.T, p *Proxy, off int64) func([]int64, int) {
		rw := watchRetrans(t, topo.Client, topo.Server)
		return func(sizes []int64, listings int) {
			log := waitTransfers(t, p, off, len(sizes)+listings)
			requireKernelTransfers(t, log, sizes, listings, rw.bytes(t))
			requireKernelFlows(t, topo.Front, kernelAnnounced(t, log), f.Client, f.RouterServer, f.Server, f.RouterClient)
		}
	}
}

// waitTransfers waits (bounded) until ftpalg has logged n transfer lines
// since off and returns its log since off. A kernel transfer is reported
// once conntrack saw its connection close, which may be after the client
// exited.
func waitTransfers(t testing.TB, p *Proxy, off int64, n int) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		log := p.LogSince(off)
		if len(kernelTransfers(log)) >= n || time.Now().After(deadline) {
			return log
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKernelReverseMatrix: TestProxyMatrix through the kernel data path.
// ftpalg runs in reverse mode on the forwarding front host with
// --data-path kernel; every client in every mode lists, downloads the
// standard files and uploads two, checksums compared; then ftpalg's log
// and the front host's conntrack table must show that the kernel carried
// every data connection (kernelReverseCheck).
func TestKernelReverseMatrix(t *testing.T) {
	requirePrereqs(t, reqCurl, reqLftp, reqPython)
	requireProxy(t)
	for _, kind := range allServers {
		t.Run(string(kind), func(t *testing.T) {
			requirePrereqs(t, kind.requirement())
			topo := kernelReverseTopology(t)
			srv := StartServer(t, topo, kind, ServerOptions{IPv6: true})
			t.Run("v4", func(t *testing.T) {
				p := StartProxy(t, topo, ProxyConfig{
					Listen: proxyListen4, Upstream: proxyUpstream4,
					Advertise: FrontClientIP4, DataPorts: proxyDataPorts4, Extra: kernelFlags,
				})
				runMatrixCheck(t, topo, srv, p, Target{
					Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4,
				}, kernelReverseCheck(topo, false))
			})
			t.Run("v6", func(t *testing.T) {
				p := StartProxy(t, topo, ProxyConfig{
					Listen: proxyListen6, Upstream: proxyUpstream6,
					Advertise: FrontClientIP6, DataPorts: proxyDataPorts6, Extra: kernelFlags,
				})
				runMatrixCheck(t, topo, srv, p, Target{
					Host: FrontClientIP6, Port: 21, IPv6: true, ClientIP: ClientIP6,
				}, kernelReverseCheck(topo, true))
			})
		})
	}
}

func grepLines(s, re string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if regexp.MustCompile(re).MatchString(l) && !strings.Contains(l, " 0 ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
