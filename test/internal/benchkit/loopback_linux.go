package benchkit

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
)

// failedStartGrace is how long a child that did not come up gets between
// SIGTERM and SIGKILL.
const failedStartGrace = 5 * time.Second

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitFTP waits until an FTP server answers on addr with a greeting, logs
// in and out once.
func WaitFTP(p *nstest.Proc, addr string, timeout time.Duration) error {
	return WaitFTPWith(benchftp.Dialer{}, p, addr, timeout)
}

// WaitFTPWith is WaitFTP logging in with d (FTPS: d.TLS).
func WaitFTPWith(d benchftp.Dialer, p *nstest.Proc, addr string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		if err := p.Alive(); err != nil {
			return err
		}
		c, err := d.Open(addr, time.Now().Add(2*time.Second))
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

// Proxy is an ftpalg process in reverse mode on 127.0.0.1, announcing
// 127.0.0.1.
type Proxy struct {
	Bin       string // the ftpalg binary
	Dir       string // where its log goes, as Name.log
	Name      string
	Upstream  string // --upstream
	DataPorts string // --data-ports
	// Args are further flags of `ftpalg run` (--log-level, limits,
	// timeouts).
	Args []string
	// Wrapper, when set, is a command ftpalg is run under, which must
	// exec it (prlimit --nofile=N:N --).
	Wrapper []string
	// Dialer is how Start logs in to see the proxy up (FTPS toward a
	// proxy with --client-tls required).
	Dialer benchftp.Dialer
}

// Start runs the proxy on a free port (see Start) and waits until a
// login through it works; it returns the process and its address.
func (x Proxy) Start() (*nstest.Proc, string, error) {
	port, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// On the host's loopback: no firewall objects (they would be the
	// host's, and two proxies of one run would share their names) and no
	// kernel data path (loopback targets are spliced anyway). x.Args
	// come after and may say otherwise.
	argv := append(append([]string{}, x.Wrapper...), x.Bin, "run",
		"--listen", addr,
		"--upstream", x.Upstream,
		"--advertise", "127.0.0.1",
		"--data-ports", x.DataPorts,
		"--firewall", "none", "--data-path", "splice")
	p, err := Start(nil, x.Name, filepath.Join(x.Dir, x.Name+".log"), append(argv, x.Args...)...)
	if err != nil {
		return nil, "", err
	}
	if err := WaitFTPWith(x.Dialer, p, addr, 10*time.Second); err != nil {
		p.Stop(failedStartGrace)
		return nil, "", fmt.Errorf("%s: %w", x.Name, err)
	}
	return p, addr, nil
}

// StartVsftpd runs vsftpd (binary bin) in the foreground on 127.0.0.1,
// serving root anonymously, with its configuration and log in dir, and
// waits until it answers.
func StartVsftpd(bin, dir, root, pasvPorts string, maxClients int) (*nstest.Proc, string, error) {
	return startVsftpd("vsftpd", bin, dir, root, pasvPorts, maxClients, nil)
}

// startVsftpd is StartVsftpd for the instance name (its config and log
// files are named after it), with TLS when certs is not nil.
func startVsftpd(name, bin, dir, root, pasvPorts string, maxClients int, certs *TLSCerts) (*nstest.Proc, string, error) {
	port, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	empty := filepath.Join(dir, "vsftpd-empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return nil, "", err
	}
	v := Vsftpd{Addr: "127.0.0.1", Port: port, Root: root, Empty: empty,
		PasvPorts: pasvPorts, MaxClients: maxClients}
	conf, err := v.Config()
	if err != nil {
		return nil, "", fmt.Errorf("--server-pasv-ports: %w", err)
	}
	var d benchftp.Dialer
	if certs != nil {
		conf += certs.vsftpdConfig()
		d.TLS = certs.Client()
	}
	confPath := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	p, err := Start(nil, name, filepath.Join(dir, name+".log"), bin, confPath)
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := WaitFTPWith(d, p, addr, 10*time.Second); err != nil {
		p.Stop(failedStartGrace)
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	return p, addr, nil
}
