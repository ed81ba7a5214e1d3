package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// proc is a child process started by the benchmark.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr string // file with the child's stdout and stderr
	exited chan struct{}
	err    error
	// group: the process forks children of its own (vsftpd), which are
	// ended with its process group.
	group bool
}

// children are the processes started and not yet stopped, for stopAll.
var (
	childMu  sync.Mutex
	children = map[*proc]bool{}
)

// stopAll stops every process the benchmark started and has not stopped.
func stopAll() {
	childMu.Lock()
	ps := make([]*proc, 0, len(children))
	for p := range children {
		ps = append(ps, p)
	}
	childMu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

func startProc(name, logPath string, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = f
	cmd.Stderr = f
	// Its own process group, so that leftover children (vsftpd forks one
	// per session) can be ended with the group at the end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	f.Close()
	p := &proc{name: name, cmd: cmd, stderr: logPath, exited: make(chan struct{})}
	childMu.Lock()
	children[p] = true
	childMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to 5 s, then SIGKILLs the process; for a
// group, it then kills what is left of its process group (session
// processes vsftpd forked: only processes this benchmark started).
func (p *proc) stop() {
	if p == nil {
		return
	}
	childMu.Lock()
	started := children[p]
	delete(children, p)
	childMu.Unlock()
	if !started {
		return // stopped already
	}
	pid := p.pid()
	if p.alive() {
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	if p.group {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// log returns the last lines the process wrote.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.stderr)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines counts the lines the process wrote.
func (p *proc) logLines() int {
	b, _ := os.ReadFile(p.stderr)
	return bytes.Count(b, []byte("\n"))
}

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
func waitFTP(p *proc, addr string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.logTail(20))
		}
		c, err := benchftp.Dial(addr, time.Now().Add(2*time.Second))
		if err == nil {
			err = c.Login()
			if err == nil {
				err = c.Quit()
			}
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

// buildProxy builds ./cmd/ftpalg into dir.
func buildProxy(modRoot, dir string) (string, error) {
	bin := filepath.Join(dir, "ftpalg")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ftpalg")
	cmd.Dir = modRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/ftpalg: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot finds the directory of the main module.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run this from inside the ftpalg module (go run ./test/bench)")
	}
	return filepath.Dir(mod), nil
}

// startProxy runs the proxy binary on 127.0.0.1 in front of upstream.
func startProxy(bin, dir, name, upstream, dataPorts string, maxSessions int) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := startProc(name, filepath.Join(dir, name+".log"), bin, "run",
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
		p.stop()
		return nil, "", fmt.Errorf("proxy: %w", err)
	}
	return p, addr, nil
}

// startVsftpd runs vsftpd in the foreground on 127.0.0.1, serving root
// anonymously.
func startVsftpd(bin, dir, root, pasvPorts string, maxClients int) (*proc, string, error) {
	lo, hi, ok := strings.Cut(pasvPorts, "-")
	if !ok {
		return nil, "", fmt.Errorf("--server-pasv-ports %q: want LO-HI", pasvPorts)
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	empty := filepath.Join(dir, "vsftpd-empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return nil, "", err
	}
	ftpUser := "ftp"
	if _, err := exec.Command("id", "-u", "ftp").Output(); err != nil {
		ftpUser = "nobody"
	}
	// isolate/isolate_network are off: with them vsftpd 3 creates a
	// network and PID namespace per session, which costs more than the
	// whole proxy does and would hide its overhead in the session rate.
	conf := fmt.Sprintf(`listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=%d
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
ftp_username=%s
anon_root=%s
write_enable=NO
anon_world_readable_only=YES
secure_chroot_dir=%s
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
pasv_enable=YES
pasv_min_port=%s
pasv_max_port=%s
port_enable=NO
max_clients=%d
max_per_ip=%d
xferlog_enable=NO
syslog_enable=NO
dual_log_enable=NO
dirmessage_enable=NO
tcp_wrappers=NO
session_support=NO
use_localtime=NO
idle_session_timeout=300
data_connection_timeout=300
`, port, ftpUser, root, empty, lo, hi, maxClients, maxClients)
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	p, err := startProc("vsftpd", filepath.Join(dir, "vsftpd.log"), bin, confPath)
	if err != nil {
		return nil, "", err
	}
	p.group = true
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitFTP(p, addr, 10*time.Second); err != nil {
		p.stop()
		return nil, "", fmt.Errorf("vsftpd: %w", err)
	}
	return p, addr, nil
}

// procStatus reads the numeric fields of /proc/PID/status (VmRSS, VmHWM,
// RssAnon... in KiB).
func procStatus(pid int) (map[string]int64, error) {
	return procStatusFile(fmt.Sprintf("/proc/%d/status", pid))
}

// rssKiB returns VmRSS of pid in KiB.
func rssKiB(pid int) (int64, error) {
	m, err := procStatus(pid)
	if err != nil {
		return 0, err
	}
	v, ok := m["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return v, nil
}

// cpuSeconds returns utime+stime of pid from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after it
	// start at state (field 3).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// fdCount counts the open file descriptors of pid.
func fdCount(pid int) (int, error) {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es), err
}

// nofileLimit returns the soft "Max open files" of pid.
func nofileLimit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			if len(f) >= 5 {
				return f[3] + " (hard " + f[4] + ")"
			}
		}
	}
	return "?"
}

// raiseNofile raises RLIMIT_NOFILE of this process to at least want (as
// root the hard limit can be raised too). Children inherit it: calling
// syscall.Setrlimit also stops os/exec from restoring the original soft
// limit in children.
func raiseNofile(want uint64) (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	if r.Max < want {
		nr := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nr); err == nil {
			return want, nil
		}
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	return r.Cur, nil
}

// cpuSample is the "cpu" line of /proc/stat, in clock ticks.
type cpuSample struct {
	busy, total int64
	at          time.Time
}

// machineCPU reads the whole machine's CPU counters.
func machineCPU() (cpuSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuSample{}, errors.New("malformed /proc/stat")
	}
	s := cpuSample{at: time.Now()}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s, nil
}

// busySecs is the CPU time the machine spent busy between prev and s.
func (s cpuSample) busySecs(prev cpuSample) float64 {
	return float64(s.busy-prev.busy) / clockTicks
}

// busyCPUs is the average number of busy CPUs between prev and s.
func (s cpuSample) busyCPUs(prev cpuSample) float64 {
	secs := s.at.Sub(prev.at).Seconds()
	if secs <= 0 {
		return 0
	}
	return float64(s.busy-prev.busy) / clockTicks / secs
}
