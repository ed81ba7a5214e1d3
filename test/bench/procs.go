package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL.
const stopGrace = 5 * time.Second

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitFTP waits until an FTP server answers on addr with a greeting, logs
// in and out once.
func waitFTP(p *nstest.Proc, addr string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		if err := p.Alive(); err != nil {
			return err
		}
		c, err := benchftp.Open(addr, time.Now().Add(2*time.Second))
		if err == nil {
			err = c.Quit()
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no FTP server on %s after %s: %v", addr, timeout, last)
}

// startProxy runs the proxy binary on 127.0.0.1 in front of upstream.
func startProxy(bin, dir, name, upstream, dataPorts string, maxSessions int) (*nstest.Proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := benchkit.Start(nil, name, filepath.Join(dir, name+".log"), bin, "run",
		"--listen", addr,
		"--upstream", upstream,
		"--advertise", "127.0.0.1",
		"--data-ports", dataPorts,
		"--log-level", "warn",
		"--max-sessions", strconv.Itoa(maxSessions),
		"--max-sessions-per-ip", strconv.Itoa(maxSessions),
		"--shutdown-grace", "1s",
	)
	if err != nil {
		return nil, "", err
	}
	if err := waitFTP(p, addr, 10*time.Second); err != nil {
		p.Stop(stopGrace)
		return nil, "", fmt.Errorf("proxy: %w", err)
	}
	return p, addr, nil
}

// startVsftpd runs vsftpd in the foreground on 127.0.0.1, serving root
// anonymously.
func startVsftpd(bin, dir, root, pasvPorts string, maxClients int) (*nstest.Proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	empty := filepath.Join(dir, "vsftpd-empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return nil, "", err
	}
	conf, err := benchkit.Vsftpd{Addr: "127.0.0.1", Port: port, Root: root, Empty: empty,
		PasvPorts: pasvPorts, MaxClients: maxClients}.Config()
	if err != nil {
		return nil, "", fmt.Errorf("--server-pasv-ports: %w", err)
	}
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	p, err := benchkit.Start(nil, "vsftpd", filepath.Join(dir, "vsftpd.log"), bin, confPath)
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitFTP(p, addr, 10*time.Second); err != nil {
		p.Stop(stopGrace)
		return nil, "", fmt.Errorf("vsftpd: %w", err)
	}
	return p, addr, nil
}

// busy is the machine's busy CPU time over d, in seconds and in CPUs on
// average. This benchmark counts steal time as busy (the gateway
// benchmark reports it apart).
func busy(d benchkit.CPUDelta) (secs, cpus float64) {
	secs = d.Busy + d.Steal
	if d.Wall <= 0 {
		return secs, 0
	}
	return secs, secs / d.Wall
}
