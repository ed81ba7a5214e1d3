package benchkit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/stat and of utime and stime in
// /proc/PID/stat. It is 100 on every Linux architecture Go supports.
const clockTicks = 100

// StatFields returns the fields of /proc/PID/stat after the command name,
// starting with the state (field 3).
func StatFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f, nil
}

// CPUSeconds returns utime+stime of pid (0 for pid 0).
func CPUSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	f, err := StatFields(pid)
	if err != nil {
		return 0, err
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// Syscalls is the number of read and write system calls process pid has
// made, as /proc/PID/io counts them (syscr + syscw: read(2), write(2),
// readv(2), writev(2), sendfile(2), whatever each moved); 0 for pid 0.
func Syscalls(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && (k == "syscr" || k == "syscw") {
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("malformed /proc/%d/io", pid)
			}
			n += x
		}
	}
	return n, nil
}

// ProcCPU is the CPU time (s) of processes by PID.
type ProcCPU map[int]float64

// OthersCPU reads utime+stime of every process that is in none of the
// namespaces ours (inode numbers), is not ourPID and not a kernel thread:
// the interference during a measurement.
func OthersCPU(ours []uint64, ourPID int) ProcCPU {
	m := ProcCPU{}
	if len(ours) == 0 {
		return m
	}
	netns := map[string]bool{}
	for _, n := range ours {
		netns[fmt.Sprintf("net:[%d]", n)] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return m
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == ourPID {
			continue
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil || netns[ns] {
			continue
		}
		f, err := StatFields(pid)
		if err != nil {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64) // field 9
		if flags&0x00200000 != 0 {                  // PF_KTHREAD
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		m[pid] = float64(ut+st) / clockTicks
	}
	return m
}

// Since is the CPU time used after p (processes new since p count fully).
func (m ProcCPU) Since(p ProcCPU) float64 {
	var s float64
	for pid, c := range m {
		s += c - p[pid]
	}
	return s
}

// Descendants returns the processes below pid (its children, theirs
// ...): the session processes of a forking server such as vsftpd, which
// puts them in sessions of their own.
func Descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, err := StatFields(p); err == nil {
			if ppid, err := strconv.Atoi(f[1]); err == nil { // field 4
				children[ppid] = append(children[ppid], p)
			}
		}
	}
	var out []int
	for todo := children[pid]; len(todo) > 0; todo = todo[1:] {
		out = append(out, todo[0])
		todo = append(todo, children[todo[0]]...)
	}
	return out
}

// StatusFile reads a "Key: number ..." file such as /proc/meminfo or
// /proc/PID/status (VmRSS, VmHWM, RssAnon ... in KiB).
func StatusFile(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if f := strings.Fields(v); len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				m[k] = n
			}
		}
	}
	return m, nil
}

// ProcStatus reads the numeric fields of /proc/PID/status.
func ProcStatus(pid int) (map[string]int64, error) {
	return StatusFile(fmt.Sprintf("/proc/%d/status", pid))
}

// RSSKiB returns VmRSS of pid in KiB.
func RSSKiB(pid int) (int64, error) {
	m, err := ProcStatus(pid)
	if err != nil {
		return 0, err
	}
	v, ok := m["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return v, nil
}

// FDCount counts the open file descriptors of pid.
func FDCount(pid int) (int, error) {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es), err
}

// FDKinds counts the open file descriptors of pid by kind: "socket",
// "pipe", "anon_inode" (epoll, eventfd ...) or "file".
func FDKinds(pid int) map[string]int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	m := map[string]int{}
	for _, e := range es {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		kind, _, ok := strings.Cut(target, ":")
		if !ok || strings.HasPrefix(target, "/") {
			kind = "file"
		}
		m[kind]++
	}
	return m
}

// NofileLimit returns the soft "Max open files" of pid, and the hard one
// in parentheses.
func NofileLimit(pid int) string {
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

// RaiseNofile raises RLIMIT_NOFILE of this process to at least want (as
// root the hard limit can be raised too). Children inherit it: calling
// syscall.Setrlimit also stops os/exec from restoring the original soft
// limit in children.
func RaiseNofile(want uint64) (uint64, error) {
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

// CPUSample is the "cpu" line of /proc/stat (the whole machine), in clock
// ticks.
type CPUSample struct {
	busy, softirq, sys, user, steal int64
	at                              time.Time
}

// CPUDelta is the machine's CPU use over an interval, in seconds.
type CPUDelta struct {
	Wall    float64 // elapsed
	Busy    float64 // CPU seconds busy, all CPUs (not idle, iowait or steal)
	User    float64 // user+nice
	Sys     float64 // system
	Softirq float64 // irq+softirq
	Steal   float64 // taken by the hypervisor for other guests (not in Busy)
}

// CPUs is the average number of busy CPUs.
func (d CPUDelta) CPUs() float64 {
	if d.Wall <= 0 {
		return 0
	}
	return d.Busy / d.Wall
}

// MachineCPU reads the machine's CPU counters.
func MachineCPU() (CPUSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUSample{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return CPUSample{}, errors.New("malformed /proc/stat")
	}
	s := CPUSample{at: time.Now()}
	for i, v := range f[1:] {
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch i {
		case 0, 1:
			s.user += n
		case 2:
			s.sys += n
		case 5, 6:
			s.softirq += n
		case 7:
			s.steal += n
		}
		if i != 3 && i != 4 && i != 7 { // idle, iowait, steal
			s.busy += n
		}
	}
	return s, nil
}

// Sub is the CPU use from p to s.
func (s CPUSample) Sub(p CPUSample) CPUDelta {
	t := func(n int64) float64 { return float64(n) / clockTicks }
	return CPUDelta{Wall: s.at.Sub(p.at).Seconds(), Busy: t(s.busy - p.busy), User: t(s.user - p.user),
		Sys: t(s.sys - p.sys), Softirq: t(s.softirq - p.softirq), Steal: t(s.steal - p.steal)}
}

// Background measures the machine's CPU use over one second, before a
// benchmark starts.
func Background() (CPUDelta, error) {
	m0, err := MachineCPU()
	if err != nil {
		return CPUDelta{}, err
	}
	time.Sleep(time.Second)
	m1, err := MachineCPU()
	if err != nil {
		return CPUDelta{}, err
	}
	return m1.Sub(m0), nil
}
