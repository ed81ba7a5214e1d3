package nstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// cmdTimeout bounds every short command run inside a namespace.
const cmdTimeout = 30 * time.Second

// NS is a named network namespace (/run/netns/Name) created by a test or a
// benchmark.
type NS struct {
	Name string
	h    netns.NsHandle
}

// RandomName returns prefix-XXXXXXXX with eight random hex digits, a name
// no other run uses.
func RandomName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Create creates the namespace name with lo up. Delete removes it.
func Create(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NS{Name: name, h: -1}
	h, err := netns.GetFromName(name)
	if err == nil {
		n.h = h
		_, err = n.Try("ip", "link", "set", "lo", "up")
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("namespace %s: %w", name, err), n.Delete())
	}
	return n, nil
}

// New creates a namespace named ftpalg-t-XXXXXXXX for t and deletes it
// when t ends.
func New(t testing.TB) *NS {
	t.Helper()
	return NewNamed(t, RandomName("ftpalg-t"))
}

// NewNamed creates the namespace name for t (see RandomName) and deletes
// it when t ends.
func NewNamed(t testing.TB, name string) *NS {
	t.Helper()
	n, err := Create(name)
	if err != nil {
		Unmet(t, "cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

// Delete kills what still runs in n (processes keep a namespace alive
// after "ip netns del"; only ones the caller started, and their children,
// can be there) and deletes it, and with it its links, addresses, routes
// and firewall rules.
func (n *NS) Delete() error {
	if n.h >= 0 {
		n.h.Close()
		n.h = -1
	}
	for range 20 {
		pids := n.PIDs()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if pid > 1 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PIDs returns the processes running in n.
func (n *NS) PIDs() []int {
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

// Handle is n's namespace file, for netlink.NewHandleAt and netns.Set.
// It is closed by Delete.
func (n *NS) Handle() netns.NsHandle { return n.h }

// Inode is the inode number of n, as /proc/PID/ns/net shows it
// ("net:[INODE]").
func (n *NS) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+n.Name, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Try runs a short command inside n (at most 30 s) and returns its
// combined output. "ip" commands run as "ip -n NAME ...".
func (n *NS) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	argv := append([]string{"netns", "exec", n.Name}, args...)
	if args[0] == "ip" {
		argv = append([]string{"-n", n.Name}, args[1:]...)
	}
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("[%s] %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Run runs a short command inside n, fails t if it fails and returns its
// output.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// IP runs "ip args..." inside n.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return n.Run(t, append([]string{"ip"}, args...)...)
}

// Sysctl sets a sysctl inside n.
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	n.Run(t, "sysctl", "-q", "-w", key+"="+value)
}

// Command returns a command that runs inside n in a process group of its
// own; when ctx ends the whole group is killed.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 3 * time.Second
	return cmd
}

// Enter locks the calling goroutine to its OS thread and moves the thread
// into n; exit moves it back and unlocks. Binaries the goroutine starts
// meanwhile (iptables) and sockets it creates live in n. If the thread
// cannot be moved back it stays locked, and the runtime discards it when
// the goroutine ends.
func (n *NS) Enter() (exit func(), err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	if err := netns.Set(n.h); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter %s: %w", n.Name, err)
	}
	return func() {
		err := netns.Set(orig)
		orig.Close()
		if err == nil {
			runtime.UnlockOSThread()
		}
	}, nil
}

// Do runs fn on the calling goroutine inside n (fn may call t.Fatal).
func (n *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	exit, err := n.Enter()
	if err != nil {
		t.Fatal(err)
	}
	defer exit()
	fn()
}

// DoIsolated runs fn on a goroutine of its own, locked to an OS thread
// that has joined n, and waits for it. The thread is never unlocked: the
// runtime discards it when fn returns, so whatever else fn changes about
// it (its capabilities) never reaches another goroutine. fn must not call
// t.Fatal.
func (n *NS) DoIsolated(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n.Name, err)
			return
		}
		returned := false
		defer func() {
			if !returned {
				errc <- fmt.Errorf("in %s: function did not return (runtime.Goexit)", n.Name)
			}
		}()
		fn()
		returned = true
		errc <- nil
	}()
	return <-errc
}
