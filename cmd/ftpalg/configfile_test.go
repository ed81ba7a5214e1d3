package main

import (
	"bytes"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
)

// everyKey sets every key of `ftpalg run` to a value other than its
// default, as a reverse front end and as a transparent one (whose keys a
// reverse front end ignores). TestConfigFileIsFlags runs both ways.
var everyKey = map[string][][2]string{
	"reverse": {
		{"log-level", "debug"}, {"log-format", "json"}, {"metrics-listen", "127.0.0.1:9121"},
		{"firewall", "ipset"}, {"firewall-instance", "gw"}, {"iptables", "legacy"},
		{"keep-firewall-hooks", "true"}, {"firewall-check-interval", "500ms"}, {"data-path", "splice"},
		{"shutdown-grace", "1s"},
		{"listen", "127.0.0.1:2121"}, {"mode", "reverse"}, {"upstream", "ftp.example:2100"},
		{"advertise", "203.0.113.7"}, {"epsv", "refuse"}, {"data-ports", "0"}, {"trust-pasv-address", "true"},
		{"connect-timeout", "3s"}, {"data-timeout", "4s"}, {"idle-timeout", "-1s"},
		{"data-idle-timeout", "1m"}, {"login-timeout", "-1s"}, {"tcp-keepalive", "30s"},
		{"max-sessions", "-1"}, {"max-sessions-per-ip", "5"},
		{"listen-implicit", "127.0.0.1:9990"}, {"client-tls", "required"}, {"require-tls-reuse", "true"},
		{"tls-cert", "testdata/tls/cert.pem"}, {"tls-key", "testdata/tls/key.pem"},
		{"upstream-tls", "explicit"}, {"upstream-ca", "testdata/tls/ca.pem"}, {"upstream-server-name", "ftp.example"},
		{"upstream-insecure", "true"}, {"upstream-client-cert", "testdata/tls/client-cert.pem"},
		{"upstream-client-key", "testdata/tls/client-key.pem"},
	},
	"transparent": {
		{"firewall-instance", "gw"}, {"iptables", "nft"},
		{"mode", "transparent"}, {"listen", ":2121"}, {"interception", "tproxy"},
		{"intercept", "198.51.100.0/24,lan0"}, {"intercept-port", "2100"}, {"intercept-table", "123"},
		{"intercept-mark", "0x40000"}, {"divert", "false"}, {"upstream-source", "client"},
		{"data-ports", "52000-52999"},
	},
}

// TestConfigFileIsFlags: a file with every key at the top level gives
// the configuration the same flags give.
func TestConfigFileIsFlags(t *testing.T) {
	for name, kvs := range everyKey {
		t.Run(name, func(t *testing.T) {
			var args []string
			var file strings.Builder
			for _, kv := range kvs {
				args = append(args, "--"+kv[0]+"="+kv[1])
				file.WriteString(kv[0] + ": " + yamlQuote(kv[1]) + "\n")
			}
			fromFlags, err := parseRun(args, io.Discard)
			if err != nil {
				t.Fatalf("flags %q: %v", args, err)
			}
			fromFile, err := parseConfig("ftpalg.yaml", []byte(file.String()), nil)
			if err != nil {
				t.Fatalf("file:\n%s: %v", file.String(), err)
			}
			if fe := fromFile.frontends[0]; fe.name != defaultFrontend {
				t.Errorf("front end name %q, want %q", fe.name, defaultFrontend)
			}
			fromFile.file, fromFile.frontends[0].name = "", ""
			if !reflect.DeepEqual(fromFile, fromFlags) {
				t.Errorf("file:\n%s\ngives   %+v\nflags give %+v", file.String(), fromFile, fromFlags)
			}
		})
	}
}

// yamlQuote quotes what YAML would not read as the flag's text.
func yamlQuote(s string) string {
	if strings.HasPrefix(s, ":") || strings.Contains(s, ",") {
		return `"` + s + `"`
	}
	return s
}

// TestKeysMatchFlags: the keys of the file are the flags of `ftpalg run`,
// each in one scope; every one is in the tests above, in the annotated
// example deploy/ftpalg.yaml and in README.md's flag table.
func TestKeysMatchFlags(t *testing.T) {
	var g globalFlags
	var f frontendFlags
	var file string
	fs := runFlagSet("run", io.Discard, &g, &f, &file)
	var flags []string
	fs.VisitAll(func(fl *flag.Flag) { flags = append(flags, fl.Name) })
	var keys []string
	for k := range globalKeys {
		if frontendKeys[k] {
			t.Errorf("key %s is both global and per front end", k)
		}
		keys = append(keys, k)
	}
	for k := range frontendKeys {
		keys = append(keys, k)
	}
	keys = append(keys, "config")
	slices.Sort(keys)
	if !slices.Equal(flags, keys) {
		t.Errorf("flags of run %q\nkeys (and --config) %q", flags, keys)
	}
	tested := map[string]bool{}
	for _, kvs := range everyKey {
		for _, kv := range kvs {
			tested[kv[0]] = true
		}
	}
	example, err := os.ReadFile("../../deploy/ftpalg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k == "config" {
			continue
		}
		if !tested[k] {
			t.Errorf("key %s: not in everyKey", k)
		}
		if !regexp.MustCompile(`(?m)^[ #-]*` + regexp.QuoteMeta(k) + `:`).Match(example) {
			t.Errorf("key %s: not in deploy/ftpalg.yaml", k)
		}
	}
	for _, k := range flags {
		if !bytes.Contains(readme, []byte("| `--"+k)) {
			t.Errorf("flag --%s: not in README.md's flag table", k)
		}
	}
	// The example is valid.
	if _, err := parseConfig("deploy/ftpalg.yaml", example, nil); err != nil {
		t.Errorf("deploy/ftpalg.yaml: %v", err)
	}
}

// TestConfigFile goes from a configuration file and the flags given with
// it to the configuration, or to the error naming file, line, front end
// and key.
func TestConfigFile(t *testing.T) {
	const two = `
idle-timeout: 10m
log-level: warn
frontends:
  - name: public
    listen: [":21", "[::1]:2121"]
    upstream: 192.0.2.10:21
    max-sessions: 100
  - name: partners
    listen: 127.0.0.1:2122
    upstream: 192.0.2.11:21
    data-ports: 51000-51099
    idle-timeout: 1m
`
	pr := func(mod func(*proxy.Config)) proxy.Config {
		c := reverseDefaults()
		mod(&c)
		return c
	}
	for _, tc := range []struct {
		name  string
		file  string
		flags []string
		check func(*testing.T, runConfig)
		err   string // a part of the error; several lines: each must be there
	}{
		{name: "single-top-level", file: "upstream: 192.0.2.10:21\nlisten: 127.0.0.1:2121\n",
			check: func(t *testing.T, rc runConfig) {
				wantFrontends(t, rc, frontend{name: "default", listen: []string{"127.0.0.1:2121"}, proxy: reverseDefaults()})
				if rc.grace != 30*time.Second || rc.logLevel != zapcore.InfoLevel || rc.fw.name != "auto" || rc.dataPath != "auto" || rc.file != "ftpalg.yaml" {
					t.Errorf("globals: %+v", rc)
				}
			}},
		{name: "single-named", file: "name: legacy\nupstream: 192.0.2.10:21\n",
			check: func(t *testing.T, rc runConfig) {
				wantFrontends(t, rc, frontend{name: "legacy", line: 1, listen: []string{":21"}, proxy: reverseDefaults()})
			}},
		{name: "defaults-only-from-flags", file: "", flags: []string{"--upstream", "192.0.2.10:21"},
			check: func(t *testing.T, rc runConfig) {
				wantFrontends(t, rc, frontend{name: "default", listen: []string{":21"}, proxy: reverseDefaults()})
			}},
		{name: "comments-only", file: "# nothing yet\n", err: "ftpalg.yaml: --upstream HOST:PORT is required in reverse mode"},
		{name: "two-frontends", file: two,
			check: func(t *testing.T, rc runConfig) {
				if rc.logLevel != zapcore.WarnLevel {
					t.Errorf("log level %v", rc.logLevel)
				}
				wantFrontends(t, rc,
					frontend{name: "public", line: 5, listen: []string{":21", "[::1]:2121"}, proxy: pr(func(c *proxy.Config) {
						c.IdleTimeout, c.MaxSessions = 10*time.Minute, 100
					})},
					frontend{name: "partners", line: 9, listen: []string{"127.0.0.1:2122"}, proxy: pr(func(c *proxy.Config) {
						c.Upstream, c.IdleTimeout = "192.0.2.11:21", time.Minute
						c.DataPorts = nat.PortRange{Lo: 51000, Hi: 51099}
					})})
			}},
		{name: "flags-override", file: two, flags: []string{"--max-sessions", "7", "--log-level", "debug", "--idle-timeout", "2m"},
			check: func(t *testing.T, rc runConfig) {
				if rc.logLevel != zapcore.DebugLevel {
					t.Errorf("log level %v, want the flag's debug", rc.logLevel)
				}
				for _, fe := range rc.frontends {
					if fe.proxy.MaxSessions != 7 || fe.proxy.IdleTimeout != 2*time.Minute {
						t.Errorf("front end %s: max sessions %d, idle %v; want the flags' 7, 2m", fe.name, fe.proxy.MaxSessions, fe.proxy.IdleTimeout)
					}
				}
				if !reflect.DeepEqual(rc.overrides, []flagValue{{"idle-timeout", "2m0s"}, {"log-level", "debug"}, {"max-sessions", "7"}}) {
					t.Errorf("overrides %v", rc.overrides)
				}
			}},
		{name: "flag-replaces-listen", file: "upstream: 192.0.2.10:21\nlisten: [127.0.0.1:21, 127.0.0.1:22]\n", flags: []string{"--listen", "127.0.0.1:2121"},
			check: func(t *testing.T, rc runConfig) {
				if l := rc.frontends[0].listen; !slices.Equal(l, []string{"127.0.0.1:2121"}) {
					t.Errorf("listen %q, want the flag's alone", l)
				}
			}},
		{name: "frontend-replaces-top-list", file: "listen: [127.0.0.1:21]\nfrontends:\n  - name: a\n    upstream: 192.0.2.10:21\n    listen: 127.0.0.1:2121\n",
			check: func(t *testing.T, rc runConfig) {
				if l := rc.frontends[0].listen; !slices.Equal(l, []string{"127.0.0.1:2121"}) {
					t.Errorf("listen %q", l)
				}
			}},
		{name: "yaml-types", file: "upstream: 192.0.2.10:21\nintercept-mark: 0x40000\nmax-sessions: 10\ntrust-pasv-address: true\n" +
			"data-ports: 0\nadvertise: !!str 203.0.113.7\nidle-timeout: \"90s\"\n",
			check: func(t *testing.T, rc runConfig) {
				wantFrontends(t, rc, frontend{name: "default", listen: []string{":21"}, proxy: pr(func(c *proxy.Config) {
					c.MaxSessions, c.TrustPASVAddress, c.DataPorts = 10, true, nat.PortRange{}
					c.Advertise, c.IdleTimeout = netip.MustParseAddr("203.0.113.7"), 90*time.Second
				})})
			}},
		{name: "epsv", file: "frontends:\n  - name: a\n    upstream: x:21\n    epsv: refuse\n  - name: b\n    upstream: y:21\n    listen: :2121\n    data-ports: 51000-51999\n    epsv: on\n",
			check: func(t *testing.T, rc runConfig) {
				if !rc.frontends[0].proxy.RefuseEPSV || rc.frontends[1].proxy.RefuseEPSV {
					t.Errorf("RefuseEPSV %v, %v; want true (refuse), false (on)", rc.frontends[0].proxy.RefuseEPSV, rc.frontends[1].proxy.RefuseEPSV)
				}
			}},
		{name: "data-ports-any-twice", file: "frontends:\n  - name: a\n    upstream: x:21\n    listen: :21\n    data-ports: 0\n  - name: b\n    upstream: y:21\n    listen: :2121\n    data-ports: 0\n"},
		{name: "same-port-other-addresses", file: "frontends:\n  - name: a\n    upstream: x:21\n    listen: 127.0.0.1:21\n  - name: b\n    upstream: y:21\n    listen: 127.0.0.2:21\n    data-ports: 51000-51999\n"},

		// Syntax and structure.
		{name: "yaml-syntax", file: "upstream: [192.0.2.10:21\n", err: "ftpalg.yaml: [1:"},
		{name: "duplicate-key", file: "upstream: a:21\nupstream: b:21\n", err: `mapping key "upstream" already defined`},
		{name: "two-documents", file: "upstream: a:21\n---\nupstream: b:21\n", err: "2 YAML documents"},
		{name: "not-a-mapping", file: "- upstream\n", err: "ftpalg.yaml:1: want a mapping"},
		{name: "unknown-key", file: "upstream: a:21\nidel-timeout: 5m\n", err: `ftpalg.yaml:2: unknown key "idel-timeout" (did you mean idle-timeout?)`},
		{name: "unknown-key-frontend", file: "frontends:\n  - name: a\n    upstream: a:21\n    colour: blue\n", err: `ftpalg.yaml:4: frontend "a": unknown key "colour"`},
		{name: "global-in-frontend", file: "frontends:\n  - name: a\n    upstream: a:21\n    log-level: debug\n", err: `ftpalg.yaml:4: frontend "a": log-level is a global setting: put it at the top level`},
		{name: "frontends-not-list", file: "frontends:\n  name: a\n", err: "ftpalg.yaml:1: frontends: want a list"},
		{name: "frontends-empty", file: "frontends: []\n", err: "frontends: want a list"},
		{name: "frontend-not-mapping", file: "frontends:\n  - a\n", err: "ftpalg.yaml:2: frontends[0]: want a mapping"},
		{name: "name-missing", file: "frontends:\n  - upstream: a:21\n", err: "ftpalg.yaml:2: frontends[0]: name: missing"},
		{name: "name-duplicate", file: "frontends:\n  - name: a\n    upstream: a:21\n  - name: a\n    upstream: b:21\n", err: `ftpalg.yaml:4: frontend "a": name already used by the front end at line 2`},
		{name: "name-bad", file: "frontends:\n  - name: my front end\n    upstream: a:21\n", err: "ftpalg.yaml:2: frontends[0]: name my front end: want letters"},
		{name: "name-top-with-frontends", file: "name: x\nfrontends:\n  - name: a\n    upstream: a:21\n", err: "ftpalg.yaml:1: name: at the top level only without frontends"},
		{name: "alias", file: "frontends:\n  - name: a\n    upstream: &up a:21\n  - name: b\n    upstream: *up\n    listen: :2121\n", err: "ftpalg.yaml:5: frontend \"b\": upstream: aliases (*up) are not supported"},
		{name: "several-errors", file: "idel-timeout: 5m\nfrontends:\n  - name: a\n    max-sessions: ten\n", err: "ftpalg.yaml:1: unknown key \"idel-timeout\"\nftpalg.yaml:4: frontend \"a\": max-sessions: \"ten\": want a whole number"},

		// Values.
		{name: "wrong-type-number", file: "upstream: a:21\nmax-sessions: ten\n", err: `ftpalg.yaml:2: max-sessions: "ten": want a whole number`},
		{name: "wrong-type-bool", file: "upstream: a:21\ntrust-pasv-address: yes\n", err: `ftpalg.yaml:2: trust-pasv-address: "yes": want true or false`},
		{name: "wrong-type-list", file: "upstream: [a:21, b:21]\n", err: "ftpalg.yaml:1: upstream: want one value, not a list"},
		{name: "wrong-type-mapping", file: "upstream: a:21\nlisten: {a: 1}\n", err: "ftpalg.yaml:2: listen: want a value or a list of values"},
		{name: "wrong-type-nested-list", file: "upstream: a:21\nlisten: [[a]]\n", err: "ftpalg.yaml:2: listen: list item"},
		{name: "bad-duration", file: "upstream: a:21\nidle-timeout: 5\n", err: `ftpalg.yaml:2: idle-timeout: "5": want a duration`},
		{name: "bad-duration-frontend", file: "frontends:\n  - name: a\n    upstream: a:21\n    data-timeout: soon\n", err: `ftpalg.yaml:4: frontend "a": data-timeout: "soon": want a duration`},
		{name: "bad-advertise", file: "frontends:\n  - name: a\n    upstream: a:21\n    advertise: proxy.example\n", err: `ftpalg.yaml:2: frontend "a": --advertise "proxy.example": want an IP address`},
		{name: "bad-epsv", file: "frontends:\n  - name: a\n    upstream: a:21\n    epsv: off\n", err: `ftpalg.yaml:2: frontend "a": --epsv "off": want on or refuse`},
		{name: "bad-upstream", file: "upstream: 192.0.2.10\n", err: `ftpalg.yaml: --upstream "192.0.2.10": want HOST:PORT`},
		{name: "missing-upstream", file: "frontends:\n  - name: a\n  - name: b\n    upstream: b:21\n    listen: :2121\n", err: `ftpalg.yaml:2: frontend "a": --upstream HOST:PORT is required in reverse mode`},
		{name: "bad-data-ports", file: "upstream: a:21\ndata-ports: 5-1\n", err: "--data-ports"},
		{name: "bad-log-level", file: "upstream: a:21\nlog-level: loud\n", err: "ftpalg.yaml: --log-level"},
		{name: "bad-firewall", file: "upstream: a:21\nfirewall: pf\n", err: `ftpalg.yaml: --firewall "pf": want auto, `},
		{name: "bad-intercept", file: "mode: transparent\nintercept: [198.51.100.0/24, 10.0.0.300]\n", err: `selector "10.0.0.300"`},
		{name: "bad-flag-over-file", file: "upstream: a:21\n", flags: []string{"--mode", "bridge"}, err: `--mode "bridge"`},

		// Across front ends.
		{name: "listen-shared", file: "frontends:\n  - name: a\n    upstream: a:21\n    listen: 127.0.0.1:21\n  - name: b\n    upstream: b:21\n    listen: 127.0.0.1:21\n    data-ports: 51000-51999\n",
			err: `ftpalg.yaml:5: frontend "b": listen 127.0.0.1:21: taken by front end "a" (listen 127.0.0.1:21)`},
		{name: "listen-wildcard", file: "frontends:\n  - name: a\n    upstream: a:21\n    listen: 198.51.100.1:21\n  - name: b\n    upstream: b:21\n    listen: \"[::]:21\"\n    data-ports: 51000-51999\n",
			err: `frontend "b": listen [::]:21: taken by front end "a" (listen 198.51.100.1:21)`},
		{name: "listen-default-both", file: "frontends:\n  - name: a\n    upstream: a:21\n  - name: b\n    upstream: b:21\n    data-ports: 51000-51999\n",
			err: `frontend "b": listen :21: taken by front end "a" (listen :21)`},
		{name: "data-ports-overlap", file: "frontends:\n  - name: a\n    upstream: a:21\n    listen: :21\n  - name: b\n    upstream: b:21\n    listen: :2121\n    data-ports: 50999-51999\n",
			err: `frontend "b": data-ports 50999-51999 overlap those of front end "a" (50000-50999)`},
		{name: "two-transparent", file: "mode: transparent\nfrontends:\n  - name: a\n    listen: :2121\n  - name: b\n    listen: :2122\n    data-ports: 51000-51999\n",
			err: `frontends "a", "b": mode transparent: at most one front end may be transparent`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := parseConfig("ftpalg.yaml", []byte(tc.file), flagsGiven(t, tc.flags))
			if tc.err != "" {
				if err == nil {
					t.Fatalf("file:\n%s\nno error, want %q", tc.file, tc.err)
				}
				for _, line := range strings.Split(tc.err, "\n") {
					if !strings.Contains(err.Error(), line) {
						t.Errorf("file:\n%s\nerror:\n%v\nwant one containing %q", tc.file, err, line)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("file:\n%s\n%v", tc.file, err)
			}
			if tc.check != nil {
				tc.check(t, rc)
			}
		})
	}
}

// flagsGiven parses args as `run` does and returns them as overrides.
func flagsGiven(t *testing.T, args []string) []flagValue {
	t.Helper()
	var g globalFlags
	var f frontendFlags
	var file string
	fs := runFlagSet("run", io.Discard, &g, &f, &file)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return given(fs)
}

// wantFrontends compares rc's front ends with want (settings left out).
func wantFrontends(t *testing.T, rc runConfig, want ...frontend) {
	t.Helper()
	var got []frontend
	for _, fe := range rc.frontends {
		if len(fe.settings) != len(frontendKeys) {
			t.Errorf("front end %s: %d settings, want %d", fe.name, len(fe.settings), len(frontendKeys))
		}
		fe.settings = nil
		got = append(got, fe)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("front ends\n%+v\nwant\n%+v", got, want)
	}
}

// TestListenOverlap: which listen addresses two front ends cannot share.
func TestListenOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{":21", ":21", true},
		{":21", "127.0.0.1:21", true},
		{"0.0.0.0:21", "[2001:db8::1]:21", true},
		{"[::]:21", "127.0.0.1:21", true},
		{"127.0.0.1:21", "127.0.0.1:21", true},
		{"127.0.0.1:21", "[::ffff:127.0.0.1]:21", true},
		{"127.0.0.1:21", "127.0.0.2:21", false},
		{":21", ":2121", false},
		{":0", ":0", false},
		{"ftp.example:21", "FTP.example:21", true},
		{"ftp.example:21", "other.example:21", false},
	} {
		if got := listenOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("listenOverlap(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestCheckConfig: `ftpalg check-config FILE [flags]` prints what would
// run, or the error, and says which with its exit status.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("log-level: warn\nfrontends:\n  - name: public\n    listen: [\":21\", \"[::1]:2121\"]\n    upstream: 192.0.2.10:21\n"+
		"  - name: partners\n    listen: 127.0.0.1:2122\n    upstream: 192.0.2.11:21\n    data-ports: 51000-51099\n"), 0o644)
	os.WriteFile(bad, []byte("upstream: 192.0.2.10:21\nmax-sessions: lots\n"), 0o644)
	for _, tc := range []struct {
		args       []string
		code       int
		out, nokey []string // in stdout; not in stdout
		errOut     string
	}{
		{args: []string{good}, code: 0, out: []string{good + ": valid, 2 front ends", `frontend "public" (reverse)`, ":21, [::1]:2121",
			"192.0.2.10:21", `frontend "partners"`, "51000-51099", "log-level                warn"}, nokey: []string{"intercept-port"}},
		{args: []string{good, "--log-level", "debug"}, code: 0, out: []string{"log-level                debug"}},
		{args: []string{"--log-level", "error", "--config", good}, code: 0, out: []string{"log-level                error"}},
		{args: []string{bad}, code: 1, errOut: bad + `:2: max-sessions: "lots": want a whole number`},
		{args: []string{good, "--data-ports", "51050-51060"}, code: 1, errOut: "overlap"},
		{args: []string{filepath.Join(dir, "missing.yaml")}, code: 1, errOut: "no such file"},
		{args: nil, code: 2, errOut: "Usage: ftpalg check-config FILE"},
		{args: []string{good, "extra"}, code: 2, errOut: `unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		code := checkConfigCmd(tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("check-config %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.code, stdout.String(), stderr.String())
			continue
		}
		for _, s := range tc.out {
			if !strings.Contains(stdout.String(), s) {
				t.Errorf("check-config %q: stdout lacks %q:\n%s", tc.args, s, stdout.String())
			}
		}
		for _, s := range tc.nokey {
			if strings.Contains(stdout.String(), s) {
				t.Errorf("check-config %q: stdout has %q:\n%s", tc.args, s, stdout.String())
			}
		}
		if !strings.Contains(stderr.String(), tc.errOut) {
			t.Errorf("check-config %q: stderr lacks %q:\n%s", tc.args, tc.errOut, stderr.String())
		}
	}
}
