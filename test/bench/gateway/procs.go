//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a long-running child process (vsftpd, ftpalg) started by the
// benchmark in a namespace.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string // file with the child's stdout and stderr
	exited chan struct{}
	err    error
	// group: the process forks children of its own (vsftpd), which are
	// ended with its process group (created for it by Setpgid).
	group bool
}

// children are the processes started and not yet stopped, for stopAll.
var (
	childMu     sync.Mutex
	children    = map[*proc]bool{}
	childClosed bool // stopAll ran: start nothing more
)

// stopAll stops every process the benchmark started and has not stopped,
// and prevents new ones.
func stopAll() {
	childMu.Lock()
	childClosed = true
	ps := make([]*proc, 0, len(children))
	for p := range children {
		ps = append(ps, p)
	}
	childMu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

// startInNetns runs argv in namespace ns (`ip netns exec` execs it, so the
// PID is the program's own), in a process group of its own, output to
// logPath.
func startInNetns(ns, name, logPath string, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	childMu.Lock()
	defer childMu.Unlock()
	if childClosed {
		return nil, errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	children[p] = true
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

// stop sends SIGTERM, waits up to 10 s, then SIGKILLs the process; for a
// group, it then kills what is left of the process group it leads
// (vsftpd's session processes). It returns the exit error.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	childMu.Lock()
	started := children[p]
	delete(children, p)
	childMu.Unlock()
	if !started {
		<-p.exited
		return p.err
	}
	pid := p.pid()
	if p.alive() {
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	if p.group {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	return p.err
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// logTail returns the last n lines the process wrote.
func (p *proc) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logText(), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// workers are the client processes running now, for the signal handler.
var (
	workerMu     sync.Mutex
	workers      = map[*os.Process]bool{}
	workerClosed bool
)

// shutdownWorkers kills the client processes running now (by PID) and
// prevents new ones.
func shutdownWorkers() {
	workerMu.Lock()
	defer workerMu.Unlock()
	workerClosed = true
	for p := range workers {
		p.Kill()
	}
}

// runWorker runs one client job in namespace ns and returns its result.
// The job's own error (r.Err) is returned as an error too.
func runWorker(ns string, j job, limit time.Duration) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	arg, _ := json.Marshal(j)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, self, "--worker", string(arg))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	workerMu.Lock()
	if workerClosed {
		workerMu.Unlock()
		return result{}, errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		workerMu.Unlock()
		return result{}, err
	}
	workers[cmd.Process] = true
	workerMu.Unlock()
	err = cmd.Wait()
	workerMu.Lock()
	delete(workers, cmd.Process)
	workerMu.Unlock()
	var r result
	if jerr := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &r); jerr != nil {
		return r, fmt.Errorf("client %s: %v (%v)\n%s%s", j.Mode, err, jerr, out.String(), errb.String())
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
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
		return "", errors.New("run this from inside the ftpalg module (go run ./test/bench/gateway)")
	}
	return filepath.Dir(mod), nil
}

// vsftpdConf is the server's configuration: anonymous downloads from
// root, on serverIP:21, passive ports pasvLo-pasvHi, active mode allowed
// (for the verification), no per-session namespaces (see
// docs/benchmarks.md: isolation costs more CPU per session than anything
// measured here).
func vsftpdConf(serverIP, root, emptyDir, pasvLo, pasvHi string) string {
	ftpUser := "ftp"
	if _, err := exec.Command("id", "-u", "ftp").Output(); err != nil {
		ftpUser = "nobody"
	}
	return fmt.Sprintf(`listen=YES
listen_ipv6=NO
listen_address=%s
listen_port=21
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
port_enable=YES
connect_from_port_20=NO
max_clients=100000
max_per_ip=100000
xferlog_enable=NO
syslog_enable=NO
dual_log_enable=NO
dirmessage_enable=NO
tcp_wrappers=NO
session_support=NO
use_localtime=NO
idle_session_timeout=300
data_connection_timeout=300
`, serverIP, ftpUser, root, emptyDir, pasvLo, pasvHi)
}

// makeFiles writes the files the server serves: bigFile of size bytes (a
// 1 MiB random block repeated, real data, not a sparse file) and smallFile
// of 4 KiB.
func makeFiles(dir string, size int64) error {
	block := make([]byte, 1<<20)
	if _, err := rand.Read(block); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, smallFile), block[:smallSize], 0o644); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(dir, bigFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(block)))
		if _, err := out.Write(block[:n]); err != nil {
			out.Close()
			return err
		}
		left -= n
	}
	return out.Close()
}
