package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// The kernel data path's logic, against rulestest.DataPath, which forwards
// each mapping's one connection in user space the way the kernel's NAT
// would. The real kernel path is tested end to end in test/e2e.

// kernelEnv is newEnv with the fake kernel data path; it is torn down with
// the test.
func kernelEnv(t *testing.T, mod ...func(*Config)) (*env, *rulestest.DataPath) {
	t.Helper()
	dp := rulestest.NewDataPath()
	t.Cleanup(func() { dp.Teardown(context.Background()) })
	e := newEnv(t, append([]func(*Config){func(c *Config) { c.DataPath = dp }}, mod...)...)
	return e, dp
}

// TestKernelPathModes: every mode, down and up, goes through a mapping
// (none through the proxy's own listeners), arrives intact, and is logged
// as finished on the kernel path with its bytes.
func TestKernelPathModes(t *testing.T) {
	e, dp := kernelEnv(t)
	want := fixtureData[f4k]
	n := 0
	for _, mode := range []string{"PASV", "EPSV", "PORT", "EPRT"} {
		t.Run(mode, func(t *testing.T) {
			c := dialCtl(t, e.addr, "")
			c.login(t, "tester")
			var got bytes.Buffer
			c.download(t, mode, "RETR "+f4k, 0, &got)
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("download differs: %d bytes", got.Len())
			}
			name := "kernel-" + strings.ToLower(mode) + ".bin"
			removeServed(t, name)
			c.upload(t, mode, "STOR "+name, bytes.NewReader(want))
			if fileSum(t, name) != sha256Of(want) {
				t.Fatalf("upload differs on disk")
			}
			c.cmd(t, 221, "QUIT")
			n += 2
		})
	}
	if mapped, used := dp.Counts(); used != n || mapped != n {
		t.Errorf("fake kernel: %d mapped, %d used; want %d each", mapped, used, n)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range e.logs.All() {
				t.Logf("%s %v", l.Message, l.ContextMap())
			}
		}
	})
	eventually(t, ioTimeout, "transfers not all reported", func() bool {
		return e.logs.FilterMessage(MsgTransferFinished).Len() == n
	})
	for _, l := range e.logs.FilterMessage(MsgTransferFinished).All() {
		m := l.ContextMap()
		if m["path"] != "kernel" || m["bytes_to_client"].(int64)+m["bytes_to_server"].(int64) != int64(len(want)) {
			t.Errorf("transfer logged as %v", m)
		}
	}
	if holes := e.fw.Pinholes(); len(holes) != 0 {
		t.Errorf("pinholes left: %v", holes)
	}
	if ms, _ := dp.Mappings(context.Background()); len(ms) != 0 {
		t.Errorf("mappings left: %v", ms)
	}
}

// TestKernelPathPinhole: the pinhole of a kernel-carried connection is the
// forwarded one, from the peer to the real target, and lasts only until
// the connection exists.
func TestKernelPathPinhole(t *testing.T) {
	e, _ := kernelEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	port := c.passive(t, "EPSV")
	holes := e.fw.Pinholes()
	if len(holes) != 1 || !holes[0].Forward || holes[0].Peer != loopback || holes[0].Local.Port() == port {
		t.Fatalf("pinholes %v; want one forward pinhole from the client to the server's data port", holes)
	}
	c.send(t, "LIST")
	dc, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.expectPrelim(t)
	dc.SetDeadline(time.Now().Add(ioTimeout))
	var b bytes.Buffer
	b.ReadFrom(dc)
	dc.Close()
	c.expect(t, 226)
	eventually(t, ioTimeout, "the pinhole outlived its connection", func() bool { return len(e.fw.Pinholes()) == 0 })
}

// TestKernelPathOneConnection: a mapping carries one connection; a second
// one to the same announced port is not forwarded.
func TestKernelPathOneConnection(t *testing.T) {
	e, _ := kernelEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	port := c.passive(t, "EPSV")
	addr := netip.AddrPortFrom(loopback, port).String()
	c.send(t, "RETR "+f4k)
	first, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	c.expectPrelim(t)
	first.SetDeadline(time.Now().Add(ioTimeout))
	var b bytes.Buffer
	b.ReadFrom(first)
	c.expect(t, 226)
	if b.Len() != len(fixtureData[f4k]) {
		t.Fatalf("first connection got %d bytes", b.Len())
	}
	second, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		second.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := second.Read(make([]byte, 1))
		second.Close()
		if n > 0 {
			t.Fatal("a second connection to the announced port was forwarded")
		}
	}
}

// TestKernelPathFallback: a session whose data connections the kernel
// cannot carry splices them and says why once; a mapping that fails splices
// that one connection.
func TestKernelPathFallback(t *testing.T) {
	e, dp := kernelEnv(t)
	dp.Refuse(func(rules.Mapping) bool { return true })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	for range 2 {
		var b bytes.Buffer
		c.download(t, "EPSV", "RETR "+f4k, 0, &b)
		if b.Len() != len(fixtureData[f4k]) {
			t.Fatalf("spliced download got %d bytes", b.Len())
		}
	}
	if n := e.logs.FilterMessage(MsgSpliceFallback).Len(); n != 1 {
		t.Errorf("fallback logged %d times, want once per session", n)
	}
	if mapped, _ := dp.Counts(); mapped != 0 {
		t.Errorf("%d mappings for a session the kernel cannot serve", mapped)
	}

	dp.Refuse(nil)
	dp.FailMap(errors.New("netlink: no buffer space"))
	var b bytes.Buffer
	c.download(t, "PASV", "RETR "+f4k, 0, &b)
	if b.Len() != len(fixtureData[f4k]) {
		t.Fatalf("download after a failed mapping got %d bytes", b.Len())
	}
	if holes := e.fw.Pinholes(); len(holes) != 0 {
		t.Errorf("pinholes left after the failed mapping: %v", holes)
	}
}

// TestKernelPathUnused: an announced port nobody connects to expires: its
// mapping, reservation and pinhole go, and the reason is logged.
func TestKernelPathUnused(t *testing.T) {
	e, dp := kernelEnv(t, func(c *Config) { c.DataAcceptTimeout = 200 * time.Millisecond })
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	c.passive(t, "EPSV")
	eventually(t, ioTimeout, "the unused mapping never expired", func() bool {
		ms, _ := dp.Mappings(context.Background())
		return len(ms) == 0 && len(e.fw.Pinholes()) == 0 && e.logs.FilterMessage(MsgDataNotMade).Len() == 1
	})
	c.cmd(t, 200, "NOOP")
}

// TestKernelPayload: conntrack's IP-layer counts of real connections
// between two Linux hosts (as test/e2e's TestKernelReverseMatrix saw
// them) come out as the bytes the files have; they once came out 8 bytes
// too many each way, the handshake packet's extra TCP options.
func TestKernelPayload(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    rules.Counter
		v6   bool
		want int64
	}{
		{"nothing", rules.Counter{}, false, 0},
		// The SYN (60 bytes), its ACK, the FIN and the last ACK.
		{"v4 handshake only", rules.Counter{Packets: 4, Bytes: 60 + 3*52}, false, 0},
		// SYN-ACK, 4096 bytes in one segment, FIN, ACK.
		{"v4 4 KiB", rules.Counter{Packets: 4, Bytes: 60 + 52 + 4096 + 2*52}, false, 4096},
		// One byte.
		{"v4 1 byte", rules.Counter{Packets: 4, Bytes: 60 + 52 + 1 + 52 + 52}, false, 1},
		// 10 MiB in GRO-merged skbs: one header each.
		{"v4 10 MiB", rules.Counter{Packets: 3 + 160, Bytes: 60 + 2*52 + 160*52 + 10<<20}, false, 10 << 20},
		{"v6 handshake only", rules.Counter{Packets: 3, Bytes: 80 + 2*72}, true, 0},
		{"v6 4 KiB", rules.Counter{Packets: 4, Bytes: 80 + 72 + 4096 + 2*72}, true, 4096},
		// Fewer bytes than the headers assumed (no timestamps): 0, not
		// negative.
		{"v4 short headers", rules.Counter{Packets: 3, Bytes: 44 + 2*40}, false, 0},
	} {
		if got := payload(tc.c, tc.v6); got != tc.want {
			t.Errorf("%s: payload(%+v) = %d, want %d", tc.name, tc.c, got, tc.want)
		}
	}
}

// TestSplicePathNamed: without a kernel data path, the data connection
// and the transfer are logged with path=splice, as kernel ones are with
// path=kernel, so that an operator (and test/e2e) can tell which path
// carried each (the data connection line once had no path).
func TestSplicePathNamed(t *testing.T) {
	e := newEnv(t)
	c := dialCtl(t, e.addr, "")
	c.login(t, "tester")
	var got bytes.Buffer
	c.download(t, "EPSV", "RETR "+f4k, 0, &got)
	c.cmd(t, 221, "QUIT")
	eventually(t, ioTimeout, "transfer not reported", func() bool {
		return e.logs.FilterMessage(MsgTransferFinished).Len() == 1
	})
	for _, msg := range []string{MsgDataConnected, MsgTransferFinished} {
		ls := e.logs.FilterMessage(msg).All()
		if len(ls) != 1 || ls[0].ContextMap()["path"] != "splice" {
			for _, l := range ls {
				t.Logf("%s %v", l.Message, l.ContextMap())
			}
			t.Errorf("%q: %d lines, want one with path=splice", msg, len(ls))
		}
	}
}
