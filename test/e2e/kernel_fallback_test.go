//go:build linux

package e2e

import (
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/proxy"
)

// spliceFallbackCheck is the per-session check of a session the kernel
// cannot carry: ftpalg says once why it splices (proxy.MsgSpliceFallback,
// its error containing why), and every data connection and transfer is
// on path=splice.
func spliceFallbackCheck(why string) caseCheck {
	return func(t *testing.T, p *Proxy, off int64) func([]int64, int) {
		after := spliceCheck(t, p, off)
		return func(sizes []int64, listings int) {
			after(sizes, listings)
			var notes []string
			for _, e := range parseProxyLog(p.LogSince(off)) {
				if e.str("msg") == proxy.MsgSpliceFallback {
					notes = append(notes, e.str("error"))
				}
			}
			switch {
			case len(notes) != 1:
				t.Errorf("ftpalg logged %q %d times in the session, want once: %q", proxy.MsgSpliceFallback, len(notes), notes)
			case !strings.Contains(notes[0], why):
				t.Errorf("ftpalg's reason for splicing %q does not say %q", notes[0], why)
			default:
				t.Logf("ftpalg: %s: %s", proxy.MsgSpliceFallback, notes[0])
			}
		}
	}
}

// TestKernelSpliceFallback: with --data-path kernel, sessions the kernel
// cannot carry are spliced, say why once, and work (python ftplib and
// curl, passive and active, checksums):
//
//   - an IPv4 client and an IPv6 server (the kernel does not translate
//     between families), on the forwarding front host;
//   - a server on the front host's loopback (a sidecar's usual upstream):
//     DNAT to a local address is delivered, not forwarded, and the
//     server's own connections (active mode) never pass prerouting.
func TestKernelSpliceFallback(t *testing.T) {
	requirePrereqs(t, reqCurl, reqPython, reqVsftpd)
	requireProxy(t)
	topo := kernelReverseTopology(t)
	cases := []struct {
		c    Client
		mode Mode
	}{{pythonClient{}, PASV}, {curlClient{}, EPSV}, {pythonClient{}, PORT}, {curlClient{}, EPRT}}
	tgt := Target{Host: FrontClientIP4, Port: 21, ClientIP: ClientIP4, WantPASVIP: FrontClientIP4}

	t.Run("v4-client-v6-server", func(t *testing.T) {
		srv := StartServer(t, topo, Vsftpd, ServerOptions{IPv6Only: true})
		p := StartProxy(t, topo, ProxyConfig{Listen: proxyListen4, Upstream: proxyUpstream6,
			Advertise: FrontClientIP4, DataPorts: xlatDataPorts, Extra: kernelFlags})
		for _, tc := range cases {
			t.Run(tc.c.Name()+"-"+string(tc.mode), func(t *testing.T) {
				runTransferCaseCheck(t, topo, srv, p, tc.c, tgt, tc.mode, spliceFallbackCheck("different families"))
			})
		}
	})
	t.Run("loopback-server", func(t *testing.T) {
		// The server in the front namespace, on 127.0.0.1:2121.
		local := &Topology{ID: topo.ID, Client: topo.Client, Front: topo.Front, Server: topo.Front}
		srv := StartServer(t, local, Vsftpd, ServerOptions{Addr4: upstreamIP4, Port: upstreamPort})
		p := StartProxy(t, topo, ProxyConfig{Listen: proxyListen4, Upstream: srv.Addr4(),
			Advertise: FrontClientIP4, DataPorts: proxyDataPorts4, Extra: kernelFlags})
		for _, tc := range cases {
			t.Run(tc.c.Name()+"-"+string(tc.mode), func(t *testing.T) {
				runTransferCaseCheck(t, topo, srv, p, tc.c, tgt, tc.mode, spliceFallbackCheck("this host"))
			})
		}
	})
}
