//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// Mode is the data connection setup command a client must use.
type Mode string

const (
	PASV Mode = "pasv"
	EPSV Mode = "epsv"
	PORT Mode = "port"
	EPRT Mode = "eprt"
)

var allModes = []Mode{PASV, EPSV, PORT, EPRT}

// LPSV and LPRT (RFC 1639) are sent by none of the clients; the raw
// control client (ctlConn) uses them.
const (
	LPSV Mode = "lpsv"
	LPRT Mode = "lprt"
)

// Command returns the FTP command that sets up a data connection in mode m.
func (m Mode) Command() string { return strings.ToUpper(string(m)) }

// Target is where a client connects to and what it should see.
type Target struct {
	Host     string // address to connect to
	Port     int
	IPv6     bool
	ClientIP string // the client's own address (for curl -P)
	// WantPASVIP is the address a 227 reply must carry ("" = not checked).
	WantPASVIP string
	// TLS makes the client speak FTPS (ftps_harness_test.go); nil: plain
	// FTP.
	TLS *ClientTLS
}

// URLHost is Host:Port, bracketed for IPv6.
func (t Target) URLHost() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// Family is "v4" or "v6".
func (t Target) Family() string {
	if t.IPv6 {
		return "v6"
	}
	return "v4"
}

// OpKind is an operation a client performs in a session.
type OpKind int

const (
	OpList OpKind = iota
	OpGet
	OpPut
)

// Op is one operation: list, get Remote into Local, put Local as Remote.
type Op struct {
	Kind          OpKind
	Remote, Local string
}

// Session describes one client run.
type Session struct {
	Target    Target
	User      string
	Pass      string
	Mode      Mode
	Ops       []Op
	WorkDir   string        // scratch directory for the client
	Timeout   time.Duration // hard limit for the whole client run
	ExtraArgs []string      // client specific (rarely needed)
	// Source is the local address the client binds its control and data
	// connections to ("": the kernel's choice), for a client namespace
	// with several addresses.
	Source string
	// LimitRate > 0 caps each data transfer at this many bytes per second
	// (a transfer that stays in flight long enough to interfere with).
	LimitRate int64
}

// Result of a client run.
type Result struct {
	Listing string // output of the LIST operation(s)
	Log     string // control connection transcript and client messages
	Err     error  // non-nil if the client failed or timed out
}

// Client is an external FTP client program.
type Client interface {
	Name() string
	// Supports reports whether the client can use mode over the family;
	// reason says why not.
	Supports(mode Mode, ipv6 bool) (ok bool, reason string)
	Run(ctx context.Context, ns *nstest.NS, s Session) Result
}

var allClients = []Client{curlClient{}, lftpClient{}, pythonClient{}}

func clientRequirement(c Client) string {
	switch c.(type) {
	case curlClient:
		return reqCurl
	case lftpClient:
		return reqLftp
	case pythonClient:
		return reqPython
	}
	panic("unknown client")
}

// errHardTimeout marks a client that had to be killed.
var errHardTimeout = errors.New("killed after hard timeout")

// runClient runs argv inside ns with a hard timeout and minimal
// environment; stdout and stderr are returned separately.
func runClient(ctx context.Context, ns *nstest.NS, home string, timeout time.Duration, argv ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := ns.Command(ctx, argv[0], argv[1:]...)
	cmd.Env = clientEnv(home)
	cmd.Dir = home
	var o, e bytes.Buffer
	cmd.Stdout = &o
	cmd.Stderr = &e
	err = cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%s: %w %v (%v)", argv[0], errHardTimeout, timeout, err)
	} else if err != nil {
		err = fmt.Errorf("%s: %w", argv[0], err)
	}
	return o.String(), e.String(), err
}

// ---------------------------------------------------------------- curl

type curlClient struct{}

func (curlClient) Name() string { return "curl" }

func (curlClient) Supports(m Mode, ipv6 bool) (bool, string) {
	if ipv6 && (m == PASV || m == PORT) {
		return false, "PASV/PORT are IPv4-only"
	}
	return true, ""
}

func (curlClient) modeArgs(s Session) []string {
	switch s.Mode {
	case PASV:
		// Use the address from the 227 reply (curl ignores it by default),
		// so a wrong advertised address is noticed.
		return []string{"--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"}
	case EPSV:
		return []string{"--ftp-pasv"}
	case PORT:
		return []string{"--ftp-port", s.Target.ClientIP, "--disable-eprt"}
	case EPRT:
		return []string{"--ftp-port", s.Target.ClientIP}
	}
	panic("bad mode")
}

// Run performs all operations in one curl invocation (one control
// connection, like the other clients), separated by --next.
func (c curlClient) Run(ctx context.Context, ns *nstest.NS, s Session) Result {
	common := []string{"--silent", "--show-error", "--verbose", "--globoff",
		"--connect-timeout", "5", "--user", s.User + ":" + s.Pass}
	common = append(common, c.modeArgs(s)...)
	if s.Source != "" {
		common = append(common, "--interface", s.Source)
	}
	if s.LimitRate > 0 {
		common = append(common, "--limit-rate", strconv.FormatInt(s.LimitRate, 10))
	}
	common = append(common, s.ExtraArgs...)
	common = append(common, s.Target.TLS.curlArgs()...)
	url := s.Target.TLS.scheme() + "://" + s.Target.URLHost() + "/"
	argv := []string{"curl", "-q", "--fail-early", "--max-time", strconv.Itoa(int(s.Timeout / time.Second))}
	for i, op := range s.Ops {
		if i > 0 {
			argv = append(argv, "--next")
		}
		argv = append(argv, common...)
		switch op.Kind {
		case OpList:
			argv = append(argv, url)
		case OpGet:
			argv = append(argv, "--output", op.Local, url+op.Remote)
		case OpPut:
			argv = append(argv, "--upload-file", op.Local, url+op.Remote)
		}
	}
	out, errOut, err := runClient(ctx, ns, s.WorkDir, s.Timeout+5*time.Second, argv...)
	return Result{
		Listing: out,
		Log:     "### " + strings.Join(argv, " ") + "\n" + errOut,
		Err:     err,
	}
}

// ---------------------------------------------------------------- lftp

type lftpClient struct{}

func (lftpClient) Name() string { return "lftp" }

func (lftpClient) Supports(m Mode, ipv6 bool) (bool, string) {
	if ipv6 && (m == PASV || m == PORT) {
		return false, "PASV/PORT are IPv4-only"
	}
	if !ipv6 && m == EPRT {
		// lftp 4.9.2 always sends PORT for IPv4 data connections; it only
		// uses EPRT over IPv6 (covered by the IPv6 cases).
		return false, "lftp never sends EPRT over IPv4"
	}
	return true, ""
}

func lftpQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (c lftpClient) Run(ctx context.Context, ns *nstest.NS, s Session) Result {
	passive, epsv := "on", "no"
	switch s.Mode {
	case EPSV:
		epsv = "yes"
	case PORT, EPRT:
		passive = "off"
	}
	secs := strconv.Itoa(int(s.Timeout/time.Second) / 2)
	var script strings.Builder
	for _, l := range []string{
		"set cmd:fail-exit yes",
		"set cmd:interactive no",
		"set net:max-retries 1",
		"set net:persist-retries 0",
		"set net:timeout 10",
		"set net:reconnect-interval-base 1",
		"set ftp:ssl-allow no",
		"set ftp:passive-mode " + passive,
		"set ftp:prefer-epsv " + epsv,
		"set ftp:fix-pasv-address no",
		"set ftp:use-mlsd no",
		"set xfer:clobber on",
		"set xfer:use-temp-file no",
		"set xfer:timeout " + secs,
		"debug 5",
	} {
		script.WriteString(l + "\n")
	}
	if s.Source != "" {
		bind := "net:socket-bind-ipv4"
		if strings.Contains(s.Source, ":") {
			bind = "net:socket-bind-ipv6"
		}
		fmt.Fprintf(&script, "set %s %s\n", bind, s.Source)
	}
	if s.LimitRate > 0 {
		fmt.Fprintf(&script, "set net:limit-rate %d\n", s.LimitRate)
	}
	for _, l := range s.Target.TLS.lftpSettings() {
		script.WriteString(l + "\n")
	}
	fmt.Fprintf(&script, "open -u %s,%s %s://%s\n", lftpQuote(s.User), lftpQuote(s.Pass), s.Target.TLS.scheme(), s.Target.URLHost())
	for _, op := range s.Ops {
		switch op.Kind {
		case OpList:
			script.WriteString("ls\n")
		case OpGet:
			fmt.Fprintf(&script, "get %s -o %s\n", lftpQuote(op.Remote), lftpQuote(op.Local))
		case OpPut:
			fmt.Fprintf(&script, "put %s -o %s\n", lftpQuote(op.Local), lftpQuote(op.Remote))
		}
	}
	script.WriteString("bye\n")
	scriptPath := filepath.Join(s.WorkDir, "lftp-script")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o600); err != nil {
		return Result{Err: err}
	}
	argv := append([]string{"lftp", "--norc"}, s.ExtraArgs...)
	argv = append(argv, "-f", scriptPath)
	out, errOut, err := runClient(ctx, ns, s.WorkDir, s.Timeout, argv...)
	return Result{
		Listing: out,
		Log:     "### lftp script:\n" + script.String() + "### lftp debug output:\n" + errOut,
		Err:     err,
	}
}

// ---------------------------------------------------------------- python

type pythonClient struct{}

func (pythonClient) Name() string { return "python" }

func (pythonClient) Supports(m Mode, ipv6 bool) (bool, string) {
	if ipv6 && (m == PASV || m == PORT) {
		return false, "PASV/PORT are IPv4-only"
	}
	return true, ""
}

func (c pythonClient) Run(ctx context.Context, ns *nstest.NS, s Session) Result {
	var actions []string
	for _, op := range s.Ops {
		switch op.Kind {
		case OpList:
			actions = append(actions, "list")
		case OpGet:
			actions = append(actions, "get", op.Remote, op.Local)
		case OpPut:
			actions = append(actions, "put", op.Local, op.Remote)
		}
	}
	return runPython(ctx, ns, s, actions...)
}

// runPython runs ftpclient.py with raw actions (also used by the abort
// test).
func runPython(ctx context.Context, ns *nstest.NS, s Session, actions ...string) Result {
	script, err := filepath.Abs(filepath.Join("testdata", "ftpclient.py"))
	if err != nil {
		return Result{Err: err}
	}
	argv := []string{pythonPath, "-I", "-u", script,
		"--timeout", strconv.Itoa(int(s.Timeout/time.Second) / 2)}
	if s.Source != "" {
		argv = append(argv, "--source", s.Source)
	}
	if s.LimitRate > 0 {
		argv = append(argv, "--limit-rate", strconv.FormatInt(s.LimitRate, 10))
	}
	argv = append(argv, s.ExtraArgs...)
	argv = append(argv, s.Target.TLS.pythonArgs()...)
	argv = append(argv, s.Target.Host, strconv.Itoa(s.Target.Port), s.User, s.Pass, string(s.Mode))
	argv = append(argv, actions...)
	out, errOut, err := runClient(ctx, ns, s.WorkDir, s.Timeout, argv...)
	var listing strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, "LIST-LINE: "); ok {
			listing.WriteString(rest + "\n")
		}
	}
	return Result{
		Listing: listing.String(),
		Log:     "### " + strings.Join(argv, " ") + "\n" + out + errOut,
		Err:     err,
	}
}

// ---------------------------------------------------------------- transcript checks

// Commands as they appear in the three clients' debug output:
// curl "> PASV", lftp "---> PASV", ftplib "*cmd* 'PASV'".
var (
	dataCmdRE = regexp.MustCompile(`(?m)^(?:> |---> |\*cmd\* ')(PASV|EPSV|PORT|EPRT)\b`)
	reply227  = regexp.MustCompile(`(?m)^(?:< |<--- |\*resp\* ')227 [^(\n]*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	reply230  = regexp.MustCompile(`(?m)^(?:< |<--- |\*resp\* ')230[ -]`)
)

// dataCommands returns the distinct data-connection setup commands in a
// client transcript.
func dataCommands(log string) []string {
	seen := map[string]bool{}
	for _, m := range dataCmdRE.FindAllStringSubmatch(log, -1) {
		seen[m[1]] = true
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkModeUsed verifies the client used exactly mode for its data
// connections (no silent fallback, e.g. EPSV -> PASV).
func checkModeUsed(log string, mode Mode) error {
	got := dataCommands(log)
	if len(got) == 1 && got[0] == mode.Command() {
		return nil
	}
	return fmt.Errorf("client used data commands %v, want only %s", got, mode.Command())
}

// pasvAddrs returns the addresses announced in 227 replies.
func pasvAddrs(log string) []string {
	var out []string
	for _, m := range reply227.FindAllStringSubmatch(log, -1) {
		out = append(out, strings.Join(m[1:5], "."))
	}
	return out
}
