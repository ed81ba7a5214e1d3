//go:build linux

package e2e

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// ServerKind names one of the FTP server implementations.
type ServerKind string

const (
	Vsftpd   ServerKind = "vsftpd"
	Proftpd  ServerKind = "proftpd"
	PureFTPd ServerKind = "pureftpd"
)

var allServers = []ServerKind{Vsftpd, Proftpd, PureFTPd}

func (k ServerKind) requirement() string {
	switch k {
	case Vsftpd:
		return reqVsftpd
	case Proftpd:
		return reqProftpd
	case PureFTPd:
		return reqPureFTPd
	}
	panic("unknown server " + string(k))
}

// Passive port range of all servers.
const (
	serverPasvMin = 40000
	serverPasvMax = 40100
)

// DataFile is a file in a server's data directory.
type DataFile struct {
	Name   string
	Size   int64
	SHA256 string
}

// Standard test files in every server's root.
var standardFiles = []struct {
	name string
	size int64
}{
	{"empty.bin", 0},
	{"one.bin", 1},
	{"small.bin", 4096},
	{"big.bin", 10 << 20},
}

// uploadDirName is the only directory of a server's root the FTP user may
// write to.
const uploadDirName = "upload"

// Server is a running FTP server (one process per address family where the
// implementation cannot listen on two specific addresses at once).
type Server struct {
	Kind      ServerKind
	Root      string // served directory
	UploadDir string // Root/upload, writable
	User      string
	Pass      string
	Files     map[string]DataFile
	// TLS is how the server speaks FTPS (ftps_harness_test.go); nil:
	// plain FTP.
	TLS       *ServerTLS
	tlsArgs   []string // pure-ftpd's TLS flags
	procs     []*nstest.Proc
	extraLogs []string // log files written by the servers themselves
	// cmdLogs are the log files in which the server records every command
	// it receives (vsftpd: log_ftp_protocol; proftpd: ExtendedLog); none
	// for pure-ftpd.
	cmdLogs []string

	addr4, addr6     string // listen addresses
	only6            bool   // no IPv4 listener
	port             int    // control port
	pasvMin, pasvMax int    // passive port range
	maxClients       int    // 0: the configuration's defaults
}

// ServerOptions configure StartServer.
type ServerOptions struct {
	// IPv6 also listens on [ServerIP6]:21.
	IPv6 bool
	// IPv6Only listens on [ServerIP6]:21 only, not on IPv4 (implies IPv6).
	IPv6Only bool
	// Config is appended to the server's configuration file (vsftpd and
	// proftpd only; for proftpd at server level, after <Anonymous>).
	Config string
	// Extra files: name -> size; created sparse (all zeros), no checksum.
	SparseFiles map[string]int64
	// Addr4, Addr6 and Port are where the server listens; default
	// ServerIP4, ServerIP6 and 21.
	Addr4, Addr6 string
	Port         int
	// PasvMin-PasvMax is the server's passive port range; default
	// 40000-40100.
	PasvMin, PasvMax int
	// MaxClients > 0 sets the server's limits on concurrent sessions, in
	// total and per client address (only implemented for vsftpd).
	MaxClients int
	// TLS makes the server require FTPS (ftps_harness_test.go); nil:
	// plain FTP.
	TLS *ServerTLS
}

// StartServer writes the data files and configuration and starts the
// server in the server namespace, listening on ServerIP4:21 (and
// [ServerIP6]:21), or where opt says. It waits until the server greets.
func StartServer(t testing.TB, topo *Topology, kind ServerKind, opt ServerOptions) *Server {
	t.Helper()
	base := worldDir(t, "ftpalg-e2e-"+string(kind)+"-")
	s := &Server{
		Kind:       kind,
		Root:       mkdir(t, filepath.Join(base, "root"), 0o755),
		Files:      map[string]DataFile{},
		addr4:      cmp.Or(opt.Addr4, ServerIP4),
		addr6:      cmp.Or(opt.Addr6, ServerIP6),
		port:       cmp.Or(opt.Port, 21),
		pasvMin:    cmp.Or(opt.PasvMin, serverPasvMin),
		pasvMax:    cmp.Or(opt.PasvMax, serverPasvMax),
		maxClients: opt.MaxClients,
		only6:      opt.IPv6Only,
	}
	if opt.IPv6Only {
		opt.IPv6 = true
	}
	if opt.Config != "" && kind == PureFTPd {
		t.Fatalf("ServerOptions.Config is not implemented for %s", kind)
	}
	if s.maxClients > 0 && kind != Vsftpd {
		t.Fatalf("ServerOptions.MaxClients is only implemented for vsftpd, not %s", kind)
	}
	s.UploadDir = mkdir(t, filepath.Join(s.Root, uploadDirName), 0o777)
	etc := mkdir(t, filepath.Join(base, "etc"), 0o755)
	if opt.TLS != nil {
		opt.Config = s.setupTLS(t, kind, etc, opt.TLS) + opt.Config
	}
	for i, f := range standardFiles {
		s.Files[f.name] = writeRandomFile(t, filepath.Join(s.Root, f.name), f.size, uint64(i+1))
	}
	for name, size := range opt.SparseFiles {
		p := filepath.Join(s.Root, name)
		writeFile(t, p, "", 0o644)
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		s.Files[name] = DataFile{Name: name, Size: size}
	}

	ftp, err := ftpUser()
	if err != nil {
		nstest.Unmet(t, "system user ftp: %v", err)
	}

	switch kind {
	case Vsftpd:
		s.User, s.Pass = "anonymous", "test@example.org"
		empty := mkdir(t, filepath.Join(base, "empty"), 0o755)
		if !s.only6 {
			s.startVsftpd(t, topo, etc, empty, false, opt.Config)
		}
		if opt.IPv6 {
			s.startVsftpd(t, topo, etc, empty, true, opt.Config)
		}
	case Proftpd:
		s.User, s.Pass = "anonymous", "test@example.org"
		s.startProftpd(t, topo, etc, opt.IPv6, opt.Config)
	case PureFTPd:
		s.User, s.Pass = "ftptest", "secret"
		pdb := s.pureDB(t, etc, ftp)
		if !s.only6 {
			s.startPureFTPd(t, topo, etc, pdb, false)
		}
		if opt.IPv6 {
			s.startPureFTPd(t, topo, etc, pdb, true)
		}
	default:
		t.Fatalf("unknown server kind %q", kind)
	}

	var addrs []string
	if !s.only6 {
		addrs = append(addrs, s.Addr4())
	}
	if opt.IPv6 {
		addrs = append(addrs, s.Addr6())
	}
	wait := waitBanner
	if s.TLS != nil && s.TLS.Implicit {
		wait = s.TLS.waitBanner
	}
	for _, a := range addrs {
		if err := wait(topo.Server, a, 15*time.Second, s.Alive); err != nil {
			t.Fatalf("%s did not come up: %v\n%s", kind, err, s.Logs())
		}
	}
	return s
}

// Addr4 and Addr6 are the server's control addresses, HOST:PORT.
func (s *Server) Addr4() string { return net.JoinHostPort(s.addr4, strconv.Itoa(s.port)) }
func (s *Server) Addr6() string { return net.JoinHostPort(s.addr6, strconv.Itoa(s.port)) }

// Alive returns an error if one of the server processes exited.
func (s *Server) Alive() error {
	for _, p := range s.procs {
		if err := p.Alive(); err != nil {
			return err
		}
	}
	return nil
}

// Logs returns the tails of the server logs.
func (s *Server) Logs() string {
	var b strings.Builder
	for _, p := range s.procs {
		if out := p.Log(); out != "" {
			fmt.Fprintf(&b, "--- %s output (%s) ---\n%s\n", p.Name, p.LogPath, nstest.Tail(out, 20))
		}
	}
	for _, l := range s.extraLogs {
		out, _ := os.ReadFile(l)
		fmt.Fprintf(&b, "--- %s ---\n%s\n", l, nstest.Tail(string(out), 40))
	}
	return b.String()
}

func (s *Server) startVsftpd(t testing.TB, topo *Topology, etc, empty string, v6 bool, extra string) {
	t.Helper()
	fam := "4"
	listen := "listen=YES\nlisten_ipv6=NO\nlisten_address=" + s.addr4 + "\n"
	if v6 {
		fam = "6"
		listen = "listen=NO\nlisten_ipv6=YES\nlisten_address6=" + s.addr6 + "\n"
	}
	if s.maxClients > 0 {
		listen += fmt.Sprintf("max_clients=%d\nmax_per_ip=%d\n", s.maxClients, s.maxClients)
	}
	logPath := filepath.Join(etc, "vsftpd"+fam+".log")
	conf := filepath.Join(etc, "vsftpd"+fam+".conf")
	writeFile(t, conf, listen+fmt.Sprintf(`listen_port=%d
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
ftp_username=ftp
anon_root=%s
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
anon_world_readable_only=YES
anon_umask=022
secure_chroot_dir=%s
seccomp_sandbox=NO
pasv_enable=YES
pasv_min_port=%d
pasv_max_port=%d
port_enable=YES
connect_from_port_20=NO
async_abor_enable=YES
idle_session_timeout=120
data_connection_timeout=60
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=%s
syslog_enable=NO
dual_log_enable=NO
hide_ids=NO
use_localtime=NO
`, s.port, s.Root, empty, s.pasvMin, s.pasvMax, logPath)+extra, 0o600)
	s.procs = append(s.procs, nstest.Start(t, topo.Server, "vsftpd-ipv"+fam,
		filepath.Join(etc, "vsftpd"+fam+".out"), clientEnv(os.TempDir()), vsftpdPath(), conf))
	s.extraLogs = append(s.extraLogs, logPath) // protocol log
	s.cmdLogs = append(s.cmdLogs, logPath)
}

func (s *Server) startProftpd(t testing.TB, topo *Topology, etc string, v6 bool, extra string) {
	t.Helper()
	var addrs []string
	if !s.only6 {
		addrs = append(addrs, s.addr4)
	}
	if v6 {
		addrs = append(addrs, s.addr6)
	}
	logPath := filepath.Join(etc, "proftpd.log")
	cmdLog := filepath.Join(etc, "proftpd.cmd.log")
	conf := filepath.Join(etc, "proftpd.conf")
	writeFile(t, conf, fmt.Sprintf(`ServerName "ftpalg e2e"
ServerType standalone
Port %d
UseIPv6 on
DefaultAddress %s
SocketBindTight on
User root
Group root
WtmpLog off
RequireValidShell off
UseFtpUsers off
UseReverseDNS off
ScoreboardFile %s
PidFile %s
SystemLog %s
DelayTable none
DelayEngine off
TransferLog none
LogFormat ftpalgcmd "%%a \"%%r\" %%s"
ExtendedLog %s ALL ftpalgcmd
<IfModule mod_ctrls.c>
  ControlsEngine off
  ControlsSocket %s
</IfModule>
PassivePorts %d %d
TimeoutIdle 120
<Anonymous %s>
  User ftp
  Group nogroup
  UserAlias anonymous ftp
  <Limit WRITE>
    AllowAll
  </Limit>
</Anonymous>
`, s.port, strings.Join(addrs, " "), filepath.Join(etc, "proftpd.scoreboard"), filepath.Join(etc, "proftpd.pid"), logPath,
		cmdLog, filepath.Join(etc, "proftpd.ctrls"), s.pasvMin, s.pasvMax, s.Root)+extra, 0o600)
	s.procs = append(s.procs, nstest.Start(t, topo.Server, "proftpd", filepath.Join(etc, "proftpd.out"),
		clientEnv(os.TempDir()), proftpdPath(), "-n", "-q", "-c", conf))
	s.extraLogs = append(s.extraLogs, logPath, cmdLog)
	s.cmdLogs = append(s.cmdLogs, cmdLog)
}

// pureDB creates the virtual user database (a cheap SHA-512 crypt hash:
// pure-pw's default argon2 costs seconds per login).
func (s *Server) pureDB(t testing.TB, etc string, ftp uidGid) string {
	t.Helper()
	// crypt("secret", "$6$ftpalgtest$")
	const hash = "$6$ftpalgtest$78RLnDR73c7G34dEoSlk3nzhq6QSsSizIjM/ICav1ZFu9hog0XgJu/FWQ6OPQdL4MLBCmxiokpoG1q5oMlglj1"
	passwd := filepath.Join(etc, "pureftpd.passwd")
	pdb := filepath.Join(etc, "pureftpd.pdb")
	writeFile(t, passwd, fmt.Sprintf("%s:%s:%d:%d::%s/./::::::::::::\n", s.User, hash, ftp.UID, ftp.GID, s.Root), 0o600)
	if out, err := exec.Command(purePwPath(), "mkdb", pdb, "-f", passwd).CombinedOutput(); err != nil {
		t.Fatalf("pure-pw mkdb: %v\n%s", err, out)
	}
	return pdb
}

func (s *Server) startPureFTPd(t testing.TB, topo *Topology, etc, pdb string, v6 bool) {
	t.Helper()
	fam, bind := "4", s.addr4+","+strconv.Itoa(s.port)
	if v6 {
		fam, bind = "6", s.addr6+","+strconv.Itoa(s.port)
	}
	args := append([]string{pureFTPdPath(),
		"--bind", bind,
		"--passiveportrange", fmt.Sprintf("%d:%d", s.pasvMin, s.pasvMax),
		"--noanonymous",
		"--login", "puredb:" + pdb,
		"--chrooteveryone",
		"--dontresolve",
		"--minuid", "1",
		"--maxidletime", "2",
		"--syslogfacility", "none",
	}, s.tlsArgs...)
	s.procs = append(s.procs, nstest.Start(t, topo.Server, "pure-ftpd-ipv"+fam,
		filepath.Join(etc, "pure-ftpd"+fam+".log"), clientEnv(os.TempDir()), args...))
}

// writeRandomFile writes size deterministic pseudo-random bytes.
func writeRandomFile(t testing.TB, path string, size int64, seed uint64) DataFile {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var key [32]byte
	key[0] = byte(seed)
	r := rand.NewChaCha8(key)
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return DataFile{Name: filepath.Base(path), Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
}

// fileSHA256 returns the checksum and size of a file on disk.
func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// checkFile compares a file on disk against want.
func checkFile(path string, want DataFile) error {
	got, n, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if n != want.Size || got != want.SHA256 {
		return fmt.Errorf("%s: got %d bytes sha256 %s, want %d bytes sha256 %s", path, n, short(got), want.Size, short(want.SHA256))
	}
	return nil
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
