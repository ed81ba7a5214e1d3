package nstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a long-running process (a server, ftpalg) started in a
// namespace, in a process group of its own, its output in LogPath.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	mu      sync.Mutex
	stopped bool
}

// ErrKilled is returned by Stop when SIGTERM was not enough.
var ErrKilled = errors.New("did not exit after SIGTERM, killed")

// Spawn starts argv inside n (nil: in the caller's namespace) with env
// (nil: the caller's), stdout and stderr appended to logPath. `ip netns
// exec` execs the program, so the PID is the program's own and leads its
// process group, which Stop ends.
func Spawn(n *NS, name, logPath string, env []string, argv ...string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if n != nil {
		argv = append([]string{"ip", "netns", "exec", n.Name}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Start is Spawn for a test: it fails t if the process does not start,
// and stops it when t ends.
func Start(t testing.TB, n *NS, name, logPath string, env []string, argv ...string) *Proc {
	t.Helper()
	p, err := Spawn(n, name, logPath, env, argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(5 * time.Second); err != nil {
			t.Logf("cleanup: %s: %v", name, err)
		}
	})
	return p
}

// PID of the process and id of its process group.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Alive returns an error, with the end of the log, if the process exited.
func (p *Proc) Alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v\n--- %s log ---\n%s", p.Name, p.waitErr, p.Name, Tail(p.Log(), 60))
	default:
		return nil
	}
}

// Log returns the output written so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogSize remembers where the lines written from now on start.
func (p *Proc) LogSize() int64 {
	fi, err := os.Stat(p.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns the output written after offset off (see LogSize).
func (p *Proc) LogSince(off int64) string {
	b, _ := os.ReadFile(p.LogPath)
	if off > int64(len(b)) {
		off = 0
	}
	return string(b[off:])
}

// Stop sends SIGTERM to the process group, waits up to grace, then kills
// the group; what is left of the group (children the process forked) is
// killed in any case. It returns ErrKilled if SIGKILL was needed. Only the
// first call does anything; later ones return nil.
func (p *Proc) Stop(grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	pgid := p.PID()
	defer syscall.Kill(-pgid, syscall.SIGKILL) // stray children
	select {
	case <-p.done:
		return nil
	default:
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s: pid %d survives SIGKILL", p.Name, pgid)
	}
	return ErrKilled
}

// ExitErr waits for the process to exit and returns how it ended.
func (p *Proc) ExitErr() error {
	<-p.done
	return p.waitErr
}

// Tail returns the last n lines of s, saying how many it left out.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("[... %d lines omitted ...]\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}
