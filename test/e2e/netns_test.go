//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a named network namespace (/run/netns/NAME) created by a test.
type Netns struct {
	Name string
}

// newNetns creates a namespace with lo up. Cleanup kills whatever still
// runs inside it (only processes this test started can be there) and
// deletes it, which also deletes its veth ends and firewall rules.
func newNetns(t testing.TB, name string) *Netns {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot create network namespace %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	n := &Netns{Name: name}
	t.Cleanup(func() { n.destroy(t) })
	n.IP(t, "link", "set", "lo", "up")
	return n
}

func (n *Netns) destroy(t testing.TB) {
	// Processes keep a namespace alive after "ip netns del"; kill any
	// leftovers (children of servers we started) first.
	for i := 0; i < 20; i++ {
		pids := n.pids()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		t.Errorf("cleanup: ip netns del %s: %v: %s", n.Name, err, out)
	}
}

func (n *Netns) pids() []int {
	out, err := exec.Command("ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// IP runs "ip -n NAME args..." and fails the test on error.
func (n *Netns) IP(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a short command inside the namespace and fails the test on
// error.
func (n *Netns) Exec(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Sysctl sets a sysctl inside the namespace.
func (n *Netns) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	n.Exec(t, "sysctl", "-q", "-w", key+"="+value)
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// Command returns a command that runs inside the namespace in its own
// process group; when ctx ends the whole group is killed.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 3 * time.Second
	return cmd
}

// Dial opens a TCP connection from inside the namespace. The socket is
// created on an OS thread that has joined the namespace; that thread is
// thrown away afterwards (the goroutine exits while still locked).
func (n *Netns) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread ends with the goroutine.
		f, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", n.Name, err)}
			return
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.Dial(network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// waitBanner polls addr from inside n until something answers with an FTP
// 220 greeting, the deadline passes, or alive reports the serving process
// died.
func (n *Netns) waitBanner(addr string, deadline time.Duration, alive func() error) error {
	end := time.Now().Add(deadline)
	var last error
	for time.Now().Before(end) {
		if err := alive(); err != nil {
			return err
		}
		c, err := n.Dial("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			if rerr == nil && strings.HasPrefix(line, "220") {
				// Be polite: say goodbye so servers do not log errors.
				_, _ = c.Write([]byte("QUIT\r\n"))
				c.Close()
				return nil
			}
			c.Close()
			if rerr != nil {
				err = fmt.Errorf("connected but no greeting: %w", rerr)
			} else {
				err = fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
			}
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s (from netns %s) not ready after %v: %v", addr, n.Name, deadline, last)
}

// Proc is a long-running process (server, proxy) started by a test inside
// a namespace, in its own process group. Output goes to LogPath.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	stopped bool
}

// startProc starts argv inside ns. Cleanup stops it (SIGTERM to its process
// group, SIGKILL after a grace period).
func startProc(t testing.TB, ns *Netns, name, logPath string, argv ...string) *Proc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = clientEnv(os.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.Stop(5 * time.Second); err != nil {
			t.Logf("cleanup: %s: %v", name, err)
		}
	})
	return p
}

// PID of the process (ip netns exec execs the program, so this is the
// program itself and the id of its process group).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Alive returns an error (including the log tail) if the process exited.
func (p *Proc) Alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v\n--- %s log ---\n%s", p.Name, p.waitErr, p.Name, tail(p.Log(), 60))
	default:
		return nil
	}
}

// Log returns the output captured so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogSize is used to remember where a sub-test's log lines start.
func (p *Proc) LogSize() int64 {
	fi, err := os.Stat(p.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns the log written after offset off.
func (p *Proc) LogSince(off int64) string {
	b, _ := os.ReadFile(p.LogPath)
	if off > int64(len(b)) {
		off = 0
	}
	return string(b[off:])
}

// errNoGracefulExit is returned by Stop when SIGTERM was not enough.
var errNoGracefulExit = errors.New("did not exit after SIGTERM, killed")

// Stop sends SIGTERM to the process group, waits up to grace, then kills
// the group. It returns errNoGracefulExit if SIGKILL was needed.
func (p *Proc) Stop(grace time.Duration) error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	pgid := p.PID()
	select {
	case <-p.done:
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // stray children
		return nil
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("pid %d survives SIGKILL", pgid)
	}
	return errNoGracefulExit
}

// ExitErr is the result of Wait once the process has exited.
func (p *Proc) ExitErr() error {
	<-p.done
	return p.waitErr
}
