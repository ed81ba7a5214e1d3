// Package demo is `ftpalg demo`: a legacy-style FTP server that announces
// an unreachable private address, ftpalg in front of it, and a client that
// lists and downloads through the proxy, all on loopback, with the control
// exchange printed so the rewrite is visible.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jlaffaye/ftp"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	"github.com/ftpalg/ftpalg/proxy"
)

// privateAddr is what the demo server announces: an RFC 1918 address the
// client cannot reach. Nothing ever connects to it.
const privateAddr = "10.0.0.5"

const fileSize = 4 << 20

// Run runs the demo and writes its story to w.
func Run(w io.Writer) error {
	dir, err := os.MkdirTemp("", "ftpalg-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	payload := make([]byte, fileSize)
	rand.Read(payload)
	if err := os.WriteFile(filepath.Join(dir, "report.bin"), payload, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "README.txt"), []byte("served by the ftpalg demo\n"), 0o644); err != nil {
		return err
	}
	want := sha256.Sum256(payload)

	srv, err := ftpd.Start(ftpd.Options{Dir: dir, Listen: "127.0.0.1:0", PublicHost: privateAddr,
		Banner: "legacy FTP server (announces " + privateAddr + ")"})
	if err != nil {
		return fmt.Errorf("demo server: %w", err)
	}
	defer srv.Close()

	tr := &tracer{w: w}
	p, err := proxy.NewServer(proxy.Config{Upstream: srv.Addr(), Trace: tr.event,
		DataAcceptTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln, 2*time.Second) }()
	defer func() { cancel(); <-served }()

	fmt.Fprintf(w, "ftpalg demo\n===========\n\n")
	fmt.Fprintf(w, "An FTP server runs on %s. Like many legacy servers behind NAT, it announces\n", srv.Addr())
	fmt.Fprintf(w, "a private address (%s) in its passive-mode replies.\n\n", privateAddr)

	fmt.Fprintf(w, "1. Straight to the server\n\n")
	reply, err := directPASV(srv.Addr())
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   client → server   PASV\n   server → client   %s\n\n", reply)
	fmt.Fprintf(w, "   Login worked, but a client that trusts this reply now connects to %s,\n", privateAddr)
	fmt.Fprintf(w, "   which nobody outside can reach: LIST and RETR hang. (The demo does not try.)\n\n")

	fmt.Fprintf(w, "2. Through ftpalg on %s (upstream %s)\n\n", ln.Addr(), srv.Addr())
	for _, epsv := range []bool{false, true} {
		mode := "PASV"
		if epsv {
			mode = "EPSV"
		}
		fmt.Fprintf(w, "   -- %s: list and download report.bin (%d bytes) --\n", mode, fileSize)
		tr.on(true)
		got, names, err := fetch(ln.Addr().String(), epsv)
		tr.on(false)
		if err != nil {
			return fmt.Errorf("%s through the proxy: %w", mode, err)
		}
		sum := sha256.Sum256(got)
		fmt.Fprintf(w, "\n   listing: %s\n", strings.Join(names, ", "))
		if sum != want {
			return fmt.Errorf("%s: checksum mismatch: got %x, want %x", mode, sum, want)
		}
		fmt.Fprintf(w, "   downloaded %d bytes, sha256 %s… matches the server's file ✔\n\n", len(got), hex.EncodeToString(sum[:8]))
	}
	fmt.Fprintf(w, "ftpalg replaced the unreachable address with its own, listened for the client's\n")
	fmt.Fprintf(w, "data connection and spliced it to the server's data port.\n\n")
	fmt.Fprintf(w, "Next: run the tests (see README), then put ftpalg in front of your server:\n")
	fmt.Fprintf(w, "  ftpalg run --listen :21 --upstream 10.0.0.5:21 --advertise 203.0.113.7 --data-ports 50000-50999\n")
	return nil
}

// directPASV logs in to the server directly and returns its PASV reply.
func directPASV(addr string) (string, error) {
	c, err := textproto.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, _, err := c.ReadResponse(220); err != nil {
		return "", err
	}
	for _, step := range []struct {
		cmd  string
		code int
	}{{"USER demo", 331}, {"PASS demo", 230}} {
		if _, err := c.Cmd("%s", step.cmd); err != nil {
			return "", err
		}
		if _, _, err := c.ReadResponse(step.code); err != nil && step.code != 331 {
			return "", err
		}
	}
	if _, err := c.Cmd("PASV"); err != nil {
		return "", err
	}
	code, msg, err := c.ReadResponse(227)
	if err != nil {
		return "", err
	}
	c.Cmd("QUIT")
	return fmt.Sprintf("%d %s", code, msg), nil
}

// fetch lists and downloads report.bin through the proxy.
func fetch(addr string, epsv bool) ([]byte, []string, error) {
	c, err := ftp.Dial(addr, ftp.DialWithTimeout(10*time.Second), ftp.DialWithDisabledEPSV(!epsv))
	if err != nil {
		return nil, nil, err
	}
	defer c.Quit()
	if err := c.Login("demo", "demo"); err != nil {
		return nil, nil, err
	}
	entries, err := c.List("/")
	if err != nil {
		return nil, nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	r, err := c.Retr("report.bin")
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(bufio.NewReader(r))
	return b, names, err
}

// tracer prints the data-channel negotiation lines of the control exchange.
type tracer struct {
	mu      sync.Mutex
	w       io.Writer
	enabled bool
}

func (t *tracer) on(v bool) {
	t.mu.Lock()
	t.enabled = v
	t.mu.Unlock()
}

func (t *tracer) event(e proxy.TraceEvent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.enabled || !interesting(e.Line) {
		return
	}
	switch e.Dir {
	case proxy.ClientToProxy:
		fmt.Fprintf(t.w, "   client → ftpalg   %s\n", e.Line)
	case proxy.ServerToProxy:
		fmt.Fprintf(t.w, "   server → ftpalg   %s\n", e.Line)
	case proxy.ProxyToClient:
		if e.Changed {
			fmt.Fprintf(t.w, "   ftpalg → client   %s   ◀ rewritten\n", e.Line)
		}
	case proxy.ProxyToServer:
		fmt.Fprintf(t.w, "   ftpalg → server   %s   ◀ rewritten\n", e.Line)
	}
}

func interesting(line string) bool {
	for _, p := range []string{"PASV", "EPSV", "227", "229", "LIST", "MLSD", "NLST", "RETR", "226"} {
		if bytes.HasPrefix([]byte(line), []byte(p)) {
			return true
		}
	}
	return false
}
