//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// Properties of the kernel data path, each shown once, in reverse mode
// (kernelReverseTopology): see kernel_test.go for what covers what.

// kernelBigFile is a file larger than every socket buffer on the way
// (server send, client receive: a few MiB each), so that a client that
// stops reading holds the transfer open in the middle.
const kernelBigFile = 32 << 20

// kernelProxy starts ftpalg in reverse mode on the front host with the
// kernel data path, IPv4, and the extra flags.
func kernelProxy(t *testing.T, topo *Topology, extra ...string) *Proxy {
	t.Helper()
	return StartProxy(t, topo, ProxyConfig{
		Listen: proxyListen4, Upstream: proxyUpstream4,
		Advertise: FrontClientIP4, DataPorts: proxyDataPorts4,
		Extra: append(append([]string{}, kernelFlags...), extra...),
	})
}

// pausedRetr is a RETR whose client has read `first` bytes and stopped
// reading: the server still has most of the file to send, the transfer is
// in the middle.
type pausedRetr struct {
	c         *ctlConn
	dc        net.Conn
	announced netip.AddrPort
	h         io.Writer
	sum       func() string
	n         int64
}

// startPausedRetr logs in from the client namespace, announces with mode
// (PASV or EPSV), connects, sends RETR name and reads first bytes.
func startPausedRetr(t *testing.T, topo *Topology, p *Proxy, srv *Server, mode Mode, name string, first int64) *pausedRetr {
	t.Helper()
	c, announced := loginPassive(t, topo.Client, netip.Addr{}, p.Listen, srv, mode)
	dc, err := c.dialData(announced)
	if err != nil {
		t.Fatalf("data connection to %s: %v", announced, err)
	}
	t.Cleanup(func() { dc.Close() })
	if _, err := c.expect("RETR "+name, 125, 150); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	pr := &pausedRetr{c: c, dc: dc, announced: announced, h: h, sum: func() string { return hex.EncodeToString(h.Sum(nil)) }}
	_ = dc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if pr.n, err = io.CopyN(h, dc, first); err != nil {
		t.Fatalf("reading the first %d bytes: %v", first, err)
	}
	return pr
}

// finish reads the rest of the file and returns its size and checksum.
func (pr *pausedRetr) finish(t *testing.T) (int64, string) {
	t.Helper()
	_ = pr.dc.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := io.Copy(pr.h, pr.dc)
	pr.n += n
	if err != nil {
		t.Errorf("reading the rest: %v", err)
	}
	pr.dc.Close()
	return pr.n, pr.sum()
}

// TestKernelDataNotRelayed shows, in the middle of a transfer, that the
// data does not pass through ftpalg: a RETR of 32 MiB (PASV) whose client
// stops after 1 MiB, and meanwhile
//
//   - ftpalg's process holds no TCP socket but its listener and the two
//     control connections (/proc/PID/fd against /proc/PID/net/tcp{,6});
//   - the front host's conntrack has the data connection, client →
//     announced port, DNATed to the server's passive port and SNATed to
//     the front host, established, its counters past the 1 MiB read;
//   - ftpalg logged the data connection established on path=kernel.
//
// Then the client reads on: the file arrives whole, and the transfer line
// says path=kernel with the file's size. The same proxy then carries LPSV
// and LPRT data connections (sent by no real client; the server, vsftpd,
// knows neither and is sent EPSV and EPRT/PORT), also through the kernel.
func TestKernelDataNotRelayed(t *testing.T) {
	requirePrereqs(t, reqVsftpd)
	requireProxy(t)
	topo := kernelReverseTopology(t)
	srv := StartServer(t, topo, Vsftpd, ServerOptions{})
	big := writeRandomFile(t, filepath.Join(srv.Root, "big32.bin"), kernelBigFile, 32)
	srv.Files[big.Name] = big
	p := kernelProxy(t, topo)

	t.Run("paused-retr", func(t *testing.T) {
		off := p.LogSize()
		rw := watchRetrans(t, topo.Client, topo.Server)
		pr := startPausedRetr(t, topo, p, srv, PASV, big.Name, 1<<20)

		socks, err := procSockets(p.PID())
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, s := range socks {
			lines = append(lines, s.String())
			control := s.State == "0A" && s.Local.Port() == 21 || s.Remote.Port() == 21 || s.Local.Port() == 21
			if !control {
				t.Errorf("ftpalg holds a TCP socket that is neither its listener nor a control connection: %s", s)
			}
			if s.Local == pr.announced || s.Remote.Port() == pr.announced.Port() || s.Local.Port() == pr.announced.Port() {
				t.Errorf("ftpalg holds a socket of the data connection (announced %s): %s", pr.announced, s)
			}
		}
		if len(socks) != 3 {
			t.Errorf("ftpalg holds %d TCP sockets, want 3 (listener, client and server control connections): %v", len(socks), lines)
		}
		t.Logf("ftpalg's TCP sockets in the middle of the transfer: %s", strings.Join(lines, "; "))

		var flow *conntrack.Flow
		for _, f := range conntrackDump(t, topo.Front) {
			o := f.TupleOrig
			if o.IP.SourceAddress == nstest.V4.Client && netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort) == pr.announced {
				flow = &f
				break
			}
		}
		switch {
		case flow == nil:
			t.Errorf("no conntrack entry %s → %s in the front host", ClientIP4, pr.announced)
		case flow.TupleReply.IP.SourceAddress != nstest.V4.Server || flow.TupleReply.IP.DestinationAddress != nstest.V4.RouterServer ||
			!flow.Status.DstNAT() || !flow.Status.SrcNAT():
			t.Errorf("conntrack: %s; want it DNATed to the server %s and SNATed to %s", flowString(*flow), ServerIP4, FrontServerIP4)
		case flow.ProtoInfo.TCP == nil || flow.ProtoInfo.TCP.State != 3: // TCP_CONNTRACK_ESTABLISHED
			t.Errorf("conntrack: %s; TCP state %v, want established", flowString(*flow), flow.ProtoInfo.TCP)
		case flow.CountersReply.Bytes < 1<<20:
			t.Errorf("conntrack: %s; the server → client counter is below the 1 MiB the client read", flowString(*flow))
		default:
			t.Logf("conntrack in the middle of the transfer: %s", flowString(*flow))
		}
		if !strings.Contains(p.LogSince(off), `"path":"kernel"`) {
			t.Errorf("ftpalg did not log the data connection on path=kernel")
		}

		n, sum := pr.finish(t)
		if n != big.Size || sum != big.SHA256 {
			t.Errorf("RETR %s: %d bytes sha256 %s, want %d bytes sha256 %s", big.Name, n, short(sum), big.Size, short(big.SHA256))
		}
		if code, text, err := pr.c.reply(); err != nil || code != 226 {
			t.Errorf("end of RETR: %q, %v; want 226", text, err)
		}
		if err := pr.c.quit(); err != nil {
			t.Errorf("QUIT: %v", err)
		}
		requireKernelTransfers(t, waitTransfers(t, p, off, 1), []int64{big.Size}, 0, rw.bytes(t))
	})

	for _, mode := range []Mode{LPSV, LPRT} {
		t.Run(string(mode), func(t *testing.T) {
			off := p.LogSize()
			rw := watchRetrans(t, topo.Client, topo.Server)
			c, err := dialCtl(topo.Client, p.Listen, 10*time.Second)
			if err != nil {
				t.Fatalf("control connection: %v", err)
			}
			defer func() {
				c.Close()
				if t.Failed() {
					t.Logf("--- control transcript ---\n%s\n--- ftpalg ---\n%s", c.Transcript(), nstest.Tail(p.LogSince(off), 40))
				}
			}()
			if err := c.login(srv.User, srv.Pass); err != nil {
				t.Fatalf("login: %v", err)
			}
			want := srv.Files["small.bin"]
			var n int64
			var sum string
			if mode == LPSV {
				data, err := c.passive(LPSV)
				if err != nil {
					t.Fatal(err)
				}
				if data.Addr() != netip.MustParseAddr(FrontClientIP4) {
					t.Errorf("228 announced %s, want the front host's %s", data, FrontClientIP4)
				}
				dc, err := c.dialData(data)
				if err != nil {
					t.Fatalf("data connection to %s: %v", data, err)
				}
				if n, sum, err = c.retr(dc, "small.bin"); err != nil {
					t.Fatal(err)
				}
			} else {
				ln := topo.Client.Listen(t, netip.AddrPortFrom(nstest.V4.Client, 0))
				if err := c.active(LPRT, ln.Addr().(*net.TCPAddr).AddrPort()); err != nil {
					t.Fatal(err)
				}
				if _, err := c.expect("RETR small.bin", 125, 150); err != nil {
					t.Fatal(err)
				}
				dc := nstest.Accept(t, ln)
				if got := dc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != nstest.V4.RouterClient {
					t.Errorf("the active data connection came from %s, want the front host %s (SNAT)", got, FrontClientIP4)
				}
				_ = dc.SetReadDeadline(time.Now().Add(10 * time.Second))
				h := sha256.New()
				n, err = io.Copy(h, dc)
				dc.Close()
				if err != nil {
					t.Fatal(err)
				}
				sum = hex.EncodeToString(h.Sum(nil))
				if code, text, err := c.reply(); err != nil || code != 226 {
					t.Fatalf("end of RETR: %q, %v", text, err)
				}
			}
			if n != want.Size || sum != want.SHA256 {
				t.Errorf("RETR small.bin: %d bytes sha256 %s, want %d bytes sha256 %s", n, short(sum), want.Size, short(want.SHA256))
			}
			if err := c.quit(); err != nil {
				t.Errorf("QUIT: %v", err)
			}
			log := waitTransfers(t, p, off, 1)
			requireKernelTransfers(t, log, []int64{want.Size}, 0, rw.bytes(t))
			requireKernelFlows(t, topo.Front, kernelAnnounced(t, log), nstest.V4.Client, nstest.V4.RouterServer, nstest.V4.Server, nstest.V4.RouterClient)
		})
	}
}
