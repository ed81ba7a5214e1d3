package benchkit

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The files the server serves.
const (
	BigFile   = "big.bin"   // the throughput download
	SmallFile = "small.bin" // the session script's download
	SmallSize = 4 << 10
)

// MakeFiles writes BigFile of size bytes (a 1 MiB random block repeated,
// so every page is real data, not a hole) and SmallFile into dir.
func MakeFiles(dir string, size int64) error {
	block := make([]byte, 1<<20)
	if _, err := rand.Read(block); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, SmallFile), block[:SmallSize], 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, BigFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(block)))
		if _, err := f.Write(block[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	return f.Close()
}

// Workdir makes a run's temporary directory (named ftpalg-NAME-…) and
// the directory the server serves, dir/root, both readable by vsftpd's
// unprivileged user. The caller removes dir.
func Workdir(name string) (dir, root string, err error) {
	dir, err = os.MkdirTemp("", "ftpalg-"+name+"-")
	if err != nil {
		return "", "", err
	}
	root = filepath.Join(dir, "root")
	if err := errors.Join(os.Chmod(dir, 0o755), os.Mkdir(root, 0o755)); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return dir, root, nil
}

// Setup is what a benchmark on loopback prepares first: RLIMIT_NOFILE
// raised for its idle sessions and its temporary directory (Workdir).
type Setup struct {
	Dir, Root string
	// Nofile is RLIMIT_NOFILE now, of this process and of the children
	// it starts.
	Nofile uint64
	// Notes are for the program to print: a limit still too low, the
	// directory kept.
	Notes []string
	keep  bool
}

// idleSpare is the descriptors a process holding idle sessions needs
// besides them.
const idleSpare = 200

// NewSetup prepares a run of the benchmark name with idle sessions: it
// raises RLIMIT_NOFILE (RaiseNofile) for them, with both of their ends
// in one process, and room to spare; keep leaves the directory in place
// at Close.
func NewSetup(name string, idle int, keep bool) (*Setup, error) {
	limit, err := RaiseNofile(uint64(2*idle + 4096))
	if err != nil {
		return nil, fmt.Errorf("raising RLIMIT_NOFILE: %w", err)
	}
	s := &Setup{Nofile: limit, keep: keep}
	if s.Dir, s.Root, err = Workdir(name); err != nil {
		return nil, err
	}
	if s.IdleFit(idle) < idle {
		s.Notes = append(s.Notes, fmt.Sprintf("warning: the open-file limit %d (the hard limit, which this process cannot raise) carries %d idle sessions, not %d",
			limit, s.IdleFit(idle), idle))
	}
	if keep {
		s.Notes = append(s.Notes, "temporary directory (kept): "+s.Dir)
	}
	return s, nil
}

// IdleFit is how many of n idle sessions the open-file limit carries in
// a process that holds both ends of each (the proxy; this process when it
// also runs the server).
func (s *Setup) IdleFit(n int) int {
	return max(min(n, (int(s.Nofile)-idleSpare)/2), 0)
}

// Close removes the directory unless it is to be kept.
func (s *Setup) Close() {
	if !s.keep {
		os.RemoveAll(s.Dir)
	}
}

// BuildProxy builds ./cmd/ftpalg of the module the current directory is
// in into dir and returns the binary's path.
func BuildProxy(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run this from inside the ftpalg module (go run ./test/bench...)")
	}
	bin := filepath.Join(dir, "ftpalg")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ftpalg")
	cmd.Dir = filepath.Dir(mod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ftpalg: %v\n%s", err, out)
	}
	return bin, nil
}

// Vsftpd is the benchmarks' vsftpd: anonymous downloads from Root, in the
// foreground, no logs.
type Vsftpd struct {
	Addr       string // listen_address
	Port       int
	Root       string // anon_root, readable by user ftp
	Empty      string // secure_chroot_dir, an empty directory
	PasvPorts  string // LO-HI
	Active     bool   // allow PORT (from any port, not 20)
	MaxClients int    // in total and per address
}

// Config is the configuration file. isolate and isolate_network are off:
// with them vsftpd 3 creates a network and PID namespace per session,
// which costs more CPU per session than anything measured here and would
// hide the proxy's overhead in the session rate.
func (v Vsftpd) Config() (string, error) {
	lo, hi, err := ParseRange(v.PasvPorts)
	if err != nil {
		return "", err
	}
	ftpUser := "ftp"
	if _, err := exec.Command("id", "-u", "ftp").Output(); err != nil {
		ftpUser = "nobody"
	}
	active := "port_enable=NO\n"
	if v.Active {
		active = "port_enable=YES\nconnect_from_port_20=NO\n"
	}
	return fmt.Sprintf(`listen=YES
listen_ipv6=NO
listen_address=%s
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
pasv_min_port=%d
pasv_max_port=%d
%smax_clients=%d
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
`, v.Addr, v.Port, ftpUser, v.Root, v.Empty, lo, hi, active, v.MaxClients, v.MaxClients), nil
}
