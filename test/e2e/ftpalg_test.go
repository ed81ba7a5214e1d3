//go:build linux

package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// proxyBinary is the ftpalg binary built by TestMain ("" if the build
// failed or was not attempted); proxyBuildErr says why.
var (
	proxyBinary   string
	proxyBuildErr error
)

// buildProxy builds cmd/ftpalg into dir.
func buildProxy(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, serr := os.Stat(gobin); serr != nil {
			return "", errors.New("go command not found in PATH")
		}
	}
	out := filepath.Join(dir, "ftpalg")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, "github.com/ftpalg/ftpalg/cmd/ftpalg")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", errors.New("go build github.com/ftpalg/ftpalg/cmd/ftpalg: " + err.Error() + "\n" + string(b))
	}
	return out, nil
}

// requireProxy skips (or fails under FTPALG_E2E=1) when the proxy binary is
// not available.
func requireProxy(t testing.TB) {
	t.Helper()
	if proxyBinary == "" {
		msg := "ftpalg binary was not built"
		if proxyBuildErr != nil {
			msg += ": " + proxyBuildErr.Error()
		}
		if nstest.Strict() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// Proxy is a running "ftpalg run" instance.
type Proxy struct {
	*nstest.Proc
	Listen    string
	Advertise string
}

// LogOfSessions returns ftpalg's log from offset off once it holds n
// "session ended" lines (at most wait later): a session's end is its last
// line, so the sessions' transfer lines are all in — a kernel-carried
// transfer is reported when conntrack saw its end, which can be after the
// client exited.
func (p *Proxy) LogOfSessions(t testing.TB, off int64, n int, wait time.Duration) string {
	t.Helper()
	ended := `"msg":"` + proxy.MsgSessionEnded + `"`
	end := time.Now().Add(wait)
	for {
		log := p.LogSince(off)
		if strings.Count(log, ended) >= n {
			return log
		}
		if time.Now().After(end) {
			t.Errorf("ftpalg logged %d of %d session ends within %v", strings.Count(log, ended), n, wait)
			return log
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ProxyConfig are the flags of "ftpalg run".
type ProxyConfig struct {
	Listen    string // host:port
	Upstream  string // host:port
	Advertise string // IP
	DataPorts string // LO-HI
	// Extra flags, appended after the standard ones (so they win):
	// "--firewall", "ipset", "--data-timeout", "3s", ...
	Extra []string
	// NoWait: StartProxy returns once the process runs, without waiting
	// for a client to get the 220 (a test that expects a 421 waits
	// itself).
	NoWait bool
}

// StartProxy runs ftpalg in the front namespace and waits until a client
// in the client namespace gets the (relayed) 220 greeting. The upstream
// server must already be running. On failure of the calling test, the
// proxy log is attached. Cleanup stops it with SIGTERM and reports an error
// if it does not exit.
func StartProxy(t testing.TB, topo *Topology, cfg ProxyConfig) *Proxy {
	t.Helper()
	requireProxy(t)
	logPath := filepath.Join(t.TempDir(), "ftpalg.log")
	args := []string{proxyBinary, "run",
		"--listen", cfg.Listen,
		"--upstream", cfg.Upstream,
		"--advertise", cfg.Advertise,
		"--data-ports", cfg.DataPorts,
		"--log-format", "json",
		"--log-level", "debug",
	}
	args = append(args, cfg.Extra...)
	p := &Proxy{Proc: nstest.Start(t, topo.Front, "ftpalg", logPath, clientEnv(os.TempDir()), args...), Listen: cfg.Listen, Advertise: cfg.Advertise}
	t.Logf("started (pid %d): %s", p.PID(), strings.Join(args, " "))
	t.Cleanup(func() {
		err := p.Stop(5 * time.Second)
		if errors.Is(err, nstest.ErrKilled) {
			t.Errorf("ftpalg (%s) %v", cfg.Listen, err)
		} else if err != nil {
			t.Errorf("ftpalg (%s): %v", cfg.Listen, err)
		}
		if t.Failed() {
			t.Logf("--- ftpalg log (%s, listen %s) ---\n%s", logPath, cfg.Listen, nstest.Tail(p.Log(), 80))
		}
	})
	if cfg.NoWait {
		return p
	}
	if err := waitBanner(topo.Client, cfg.Listen, 15*time.Second, p.Alive); err != nil {
		t.Fatalf("ftpalg not serving: %v", err)
	}
	return p
}
