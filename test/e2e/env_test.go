//go:build linux

package e2e

import (
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// Fixed locations of the third-party binaries (see test/deps.sh).
const (
	defaultVsftpd   = "/usr/sbin/vsftpd"
	defaultProftpd  = "/opt/ftpalg-test/root/usr/sbin/proftpd"
	defaultPureFTPd = "/opt/ftpalg-test/root/usr/sbin/pure-ftpd"
	defaultPurePw   = "/opt/ftpalg-test/root/usr/bin/pure-pw"
	pythonPath      = "/usr/bin/python3"
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func vsftpdPath() string   { return envOr("FTPALG_VSFTPD", defaultVsftpd) }
func proftpdPath() string  { return envOr("FTPALG_PROFTPD", defaultProftpd) }
func pureFTPdPath() string { return envOr("FTPALG_PUREFTPD", defaultPureFTPd) }
func purePwPath() string   { return envOr("FTPALG_PUREPW", defaultPurePw) }

// Requirement names understood by requirePrereqs.
const (
	reqCurl     = "curl"
	reqLftp     = "lftp"
	reqPython   = "python3"
	reqIptables = "iptables"
	reqVsftpd   = "vsftpd"
	reqProftpd  = "proftpd"
	reqPureFTPd = "pure-ftpd"
)

// requirePrereqs checks root, iproute2 and the named tools (nstest.Require
// with the servers' and clients' paths), and for a server the system user
// ftp.
func requirePrereqs(t testing.TB, reqs ...string) {
	t.Helper()
	var tools []string
	for _, r := range reqs {
		switch r {
		case reqCurl, reqLftp, reqIptables:
			tools = append(tools, r)
		case reqPython:
			tools = append(tools, pythonPath)
		case reqVsftpd:
			tools = append(tools, vsftpdPath())
		case reqProftpd:
			tools = append(tools, proftpdPath())
		case reqPureFTPd:
			tools = append(tools, pureFTPdPath(), purePwPath())
		default:
			t.Fatalf("unknown requirement %q", r)
		}
	}
	missing := nstest.Missing(tools...)
	for _, r := range reqs {
		if r == reqVsftpd || r == reqProftpd || r == reqPureFTPd {
			if u, err := ftpUser(); err != nil {
				missing = append(missing, "system user 'ftp' (created by the vsftpd package): "+err.Error())
			} else if fi, err := os.Stat(u.Home); err != nil || !fi.IsDir() {
				// vsftpd changes into the home directory before anon_root.
				missing = append(missing, "home directory of user ftp ("+u.Home+")")
			}
			break
		}
	}
	if len(missing) > 0 {
		nstest.Unmet(t, "needs %s", strings.Join(missing, ", "))
	}
}

type uidGid struct {
	UID, GID int
	Home     string
}

// ftpUser returns the system user "ftp" that the servers drop privileges
// to for anonymous / virtual sessions.
func ftpUser() (uidGid, error) {
	u, err := user.Lookup("ftp")
	if err != nil {
		return uidGid{}, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return uidGid{}, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return uidGid{}, err
	}
	return uidGid{UID: uid, GID: gid, Home: u.HomeDir}, nil
}

// clientEnv is the environment external clients run with: nothing from
// the caller (no *_proxy variables, no rc files from $HOME).
func clientEnv(home string) []string {
	return []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"LANG=C",
		"LC_ALL=C",
	}
}

// worldDir creates a fresh directory readable by every user (unlike
// t.TempDir, whose parents are 0700), because the FTP servers drop
// privileges to user ftp before touching their data. Removed in cleanup.
func worldDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mkdir(t testing.TB, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask
		t.Fatal(err)
	}
	return path
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
