package main

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/intercept"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// reverseDefaults is the proxy.Config of `run --upstream 192.0.2.10:21`.
func reverseDefaults() proxy.Config {
	return proxy.Config{
		Upstream:          "192.0.2.10:21",
		DataPorts:         nat.PortRange{Lo: 50000, Hi: 50999},
		ConnectTimeout:    proxy.DefaultConnectTimeout,
		DataAcceptTimeout: proxy.DefaultDataAcceptTimeout,
		IdleTimeout:       proxy.DefaultIdleTimeout,
		DataIdleTimeout:   proxy.DefaultDataIdleTimeout,
		LoginTimeout:      proxy.DefaultLoginTimeout,
		KeepAlive:         proxy.DefaultKeepAlive,
		MaxSessionsPerIP:  proxy.DefaultMaxSessionsPerIP,
	}
}

// transparentDefaults is the proxy.Config of `run --mode transparent`.
func transparentDefaults() proxy.Config {
	c := reverseDefaults()
	c.Upstream = ""
	c.Transparent = true
	return c
}

// interceptDefaults is the intercept.Config of `run --mode transparent`.
func interceptDefaults() intercept.Config {
	return intercept.Config{Mode: nat.ModeRedirect, Divert: true, Port: intercept.DefaultPort,
		Table: intercept.DefaultTable, Mark: intercept.DefaultMark}
}

// TestRunConfig goes from the flags of `ftpalg run` to the proxy.Config
// and intercept.Config it starts with, or the error it stops with.
func TestRunConfig(t *testing.T) {
	tp := []string{"--mode", "transparent"}
	for _, tc := range []struct {
		name string
		args []string
		// want* are compared when err is empty.
		proxy     func(*proxy.Config)          // changes to the mode's defaults
		intercept func(*intercept.Config) bool // changes to interceptDefaults; false: no interception (reverse)
		check     func(*testing.T, runConfig)  // anything else
		err       string                       // a part of the error
	}{
		{name: "reverse-defaults", args: []string{"--upstream", "192.0.2.10:21"},
			check: func(t *testing.T, rc runConfig) {
				if !reflect.DeepEqual(rc.frontends[0].listen, []string{":21"}) || rc.frontends[0].mode != 0 || rc.grace != 30*time.Second || rc.fw.name != "auto" ||
					rc.logFormat != "console" || rc.logLevel != zapcore.InfoLevel || rc.firewallCheck != 2*time.Second {
					t.Errorf("listen %q, mode %v, grace %v, firewall %q, log %s/%s, firewall check %v",
						rc.frontends[0].listen, rc.frontends[0].mode, rc.grace, rc.fw.name, rc.logFormat, rc.logLevel, rc.firewallCheck)
				}
			}},
		{name: "reverse-everything", args: []string{"--upstream", "ftp.example:2100", "--listen", "127.0.0.1:2121",
			"--advertise", "203.0.113.7", "--data-ports", "0", "--trust-pasv-address", "--connect-timeout", "3s",
			"--data-timeout", "4s", "--idle-timeout", "-1s", "--max-sessions", "-1", "--max-sessions-per-ip", "5",
			"--data-idle-timeout", "1m", "--login-timeout", "-1s", "--tcp-keepalive", "30s",
			"--shutdown-grace", "1s", "--firewall", "ipset", "--firewall-instance", "gw", "--iptables", "legacy",
			"--keep-firewall-hooks", "--firewall-check-interval", "500ms", "--metrics-listen", "127.0.0.1:9121",
			"--log-format", "json", "--log-level", "debug"},
			proxy: func(c *proxy.Config) {
				c.Upstream = "ftp.example:2100"
				c.Advertise = netip.MustParseAddr("203.0.113.7")
				c.DataPorts = nat.PortRange{}
				c.TrustPASVAddress = true
				c.ConnectTimeout, c.DataAcceptTimeout, c.IdleTimeout = 3*time.Second, 4*time.Second, -time.Second
				c.MaxSessions, c.MaxSessionsPerIP = -1, 5
				c.DataIdleTimeout, c.LoginTimeout, c.KeepAlive = time.Minute, -time.Second, 30*time.Second
			},
			check: func(t *testing.T, rc runConfig) {
				if want := (firewallFlags{name: "ipset", instance: "gw", iptables: "legacy", keepHooks: true}); rc.fw != want {
					t.Errorf("firewall flags %+v, want %+v", rc.fw, want)
				}
				if !reflect.DeepEqual(rc.frontends[0].listen, []string{"127.0.0.1:2121"}) || rc.grace != time.Second || rc.logFormat != "json" || rc.logLevel != zapcore.DebugLevel ||
					rc.firewallCheck != 500*time.Millisecond || rc.metricsListen != "127.0.0.1:9121" {
					t.Errorf("listen %q, grace %v, log %s/%s, firewall check %v", rc.frontends[0].listen, rc.grace, rc.logFormat, rc.logLevel, rc.firewallCheck)
				}
			}},
		// Transparent-mode flags are not looked at in reverse mode.
		{name: "reverse-ignores-transparent-flags", args: []string{"--upstream", "192.0.2.10:21", "--interception", "dnat", "--intercept", "10.0.0.300"}},
		{name: "reverse-needs-upstream", args: nil, err: "--upstream HOST:PORT is required"},
		{name: "data-path", args: []string{"--upstream", "192.0.2.10:21", "--data-path", "splice"},
			check: func(t *testing.T, rc runConfig) {
				if rc.dataPath != "splice" {
					t.Errorf("data path %q", rc.dataPath)
				}
			}},
		{name: "bad-data-path", args: []string{"--upstream", "192.0.2.10:21", "--data-path", "ebpf"}, err: `--data-path "ebpf": want kernel, splice or auto`},
		{name: "listen-repeated", args: []string{"--upstream", "192.0.2.10:21", "--listen", "192.0.2.1:21", "--listen", "[2001:db8::1]:21,127.0.0.1:2121"},
			check: func(t *testing.T, rc runConfig) {
				if want := []string{"192.0.2.1:21", "[2001:db8::1]:21", "127.0.0.1:2121"}; !reflect.DeepEqual(rc.frontends[0].listen, want) {
					t.Errorf("listen %q, want %q", rc.frontends[0].listen, want)
				}
			}},
		{name: "listen-empty", args: []string{"--upstream", "192.0.2.10:21", "--listen", ","}, err: "--listen: no address"},
		{name: "tls-default-with-cert", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/cert.pem", "--tls-key", "testdata/tls/key.pem", "--listen-implicit", "127.0.0.1:990"},
			proxy: func(c *proxy.Config) { c.ClientTLS = proxy.ClientTLSOptional },
			check: func(t *testing.T, rc runConfig) {
				fe := rc.frontends[0]
				if fe.tls == nil || len(fe.tls.certPEM) == 0 || !slices.Equal(fe.listen, []string{":21", "127.0.0.1:990"}) ||
					!slices.Equal(fe.implicit, []string{"127.0.0.1:990"}) || !slices.Equal(fe.plainListen(), []string{":21"}) {
					t.Errorf("listen %q, implicit %q, TLS material loaded: %v", fe.listen, fe.implicit, fe.tls != nil)
				}
			}},
		{name: "tls-offload-to-tls", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/cert.pem", "--tls-key", "testdata/tls/key.pem", "--client-tls", "required", "--upstream-tls", "auto",
			"--upstream-ca", "testdata/tls/ca.pem", "--upstream-server-name", "ftp.example", "--require-tls-reuse"},
			proxy: func(c *proxy.Config) {
				c.ClientTLS, c.UpstreamTLS, c.RequireTLSReuse = proxy.ClientTLSRequired, proxy.UpstreamTLSAuto, true
			}},
		{name: "tls-plain-client-to-tls-server", args: []string{"--upstream", "192.0.2.10:21", "--client-tls", "off", "--upstream-tls", "implicit"},
			proxy: func(c *proxy.Config) { c.ClientTLS, c.UpstreamTLS = proxy.ClientTLSOff, proxy.UpstreamTLSImplicit }},
		{name: "tls-required-without-cert", args: []string{"--upstream", "192.0.2.10:21", "--client-tls", "required"}, err: "--client-tls required needs --tls-cert and --tls-key"},
		{name: "tls-cert-without-key", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/cert.pem"}, err: "--tls-cert and --tls-key go together"},
		{name: "tls-key-not-the-certs", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/cert.pem", "--tls-key", "testdata/tls/client-key.pem"},
			err: "--tls-cert/--tls-key: tls: private key does not match public key"},
		{name: "tls-cert-missing", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/none.pem", "--tls-key", "testdata/tls/key.pem"},
			err: "--tls-cert: open testdata/tls/none.pem"},
		{name: "tls-ca-not-pem", args: []string{"--upstream", "192.0.2.10:21", "--upstream-tls", "explicit", "--client-tls", "off", "--upstream-ca", "testdata/tls/README.md"},
			err: "--upstream-ca: no PEM certificate"},
		{name: "tls-implicit-without-termination", args: []string{"--upstream", "192.0.2.10:21", "--listen-implicit", ":990"},
			err: "--listen-implicit needs --client-tls optional or required (now passthrough)"},
		{name: "tls-implicit-also-plain", args: []string{"--upstream", "192.0.2.10:21", "--tls-cert", "testdata/tls/cert.pem", "--tls-key", "testdata/tls/key.pem", "--listen", ":990", "--listen-implicit", ":990"},
			err: "--listen-implicit :990: also in --listen"},
		{name: "tls-upstream-with-passthrough", args: []string{"--upstream", "192.0.2.10:21", "--upstream-tls", "explicit"},
			err: "--upstream-tls needs ftpalg to terminate the client's TLS too"},
		{name: "tls-upstream-options-without-tls", args: []string{"--upstream", "192.0.2.10:21", "--client-tls", "off", "--upstream-insecure"},
			err: "need --upstream-tls"},
		{name: "tls-reuse-without-termination", args: []string{"--upstream", "192.0.2.10:21", "--require-tls-reuse"}, err: "--require-tls-reuse needs"},
		{name: "tls-bad-mode", args: []string{"--upstream", "192.0.2.10:21", "--client-tls", "maybe"}, err: `--client-tls: client TLS "maybe"`},
		{name: "tls-transparent", args: append(tp, "--tls-cert", "testdata/tls/cert.pem", "--tls-key", "testdata/tls/key.pem"), err: "transparent mode relays FTPS as it is"},
		{name: "transparent-one-listen", args: append(tp, "--listen", ":2121", "--listen", ":2122"), err: "transparent mode takes one listen address"},
		{name: "bad-mode", args: []string{"--mode", "gateway"}, err: `--mode "gateway": want reverse or transparent`},
		{name: "upstream-with-transparent", args: append(tp, "--upstream", "192.0.2.10:21"), err: "--upstream makes no sense with --mode transparent"},
		{name: "bad-advertise", args: []string{"--upstream", "192.0.2.10:21", "--advertise", "proxy.example"}, err: `--advertise "proxy.example": want an IP address`},
		{name: "advertise-per-network", args: []string{"--upstream", "192.0.2.10:21", "--advertise", "203.0.113.7,10.0.0.0/8=10.0.0.11"},
			proxy: func(c *proxy.Config) {
				c.Advertise = netip.MustParseAddr("203.0.113.7")
				c.AdvertiseFor = []nat.AdvertiseRule{{Clients: netip.MustParsePrefix("10.0.0.0/8"), Addr: netip.MustParseAddr("10.0.0.11")}}
			}},
		{name: "advertise-family-mismatch", args: []string{"--upstream", "192.0.2.10:21", "--advertise", "10.0.0.0/8=2001:db8::1"}, err: "--advertise \"10.0.0.0/8=2001:db8::1\": clients in 10.0.0.0/8 cannot be told an address of the other family"},
		{name: "bad-advertise-prefix", args: []string{"--upstream", "192.0.2.10:21", "--advertise", "203.0.113.7/32"}, err: "--advertise"},
		{name: "epsv-refuse", args: []string{"--upstream", "192.0.2.10:21", "--epsv", "refuse"},
			proxy: func(c *proxy.Config) { c.RefuseEPSV = true }},
		{name: "epsv-on", args: []string{"--upstream", "192.0.2.10:21", "--epsv", "on"}},
		{name: "bad-epsv", args: []string{"--upstream", "192.0.2.10:21", "--epsv", "no"}, err: `--epsv "no": want on or refuse`},
		{name: "bad-data-ports-order", args: []string{"--upstream", "192.0.2.10:21", "--data-ports", "50999-50000"}, err: "--data-ports"},
		{name: "bad-data-ports-junk", args: []string{"--upstream", "192.0.2.10:21", "--data-ports", "many"}, err: "--data-ports"},
		{name: "bad-log-level", args: []string{"--upstream", "192.0.2.10:21", "--log-level", "loud"}, err: "--log-level"},
		{name: "bad-log-format", args: []string{"--upstream", "192.0.2.10:21", "--log-format", "xml"}, err: "--log-format"},
		{name: "unknown-flag", args: []string{"--upstream", "192.0.2.10:21", "--colour"}, err: "flag provided but not defined"},
		{name: "bad-duration", args: []string{"--upstream", "192.0.2.10:21", "--idle-timeout", "5"}, err: "idle-timeout"},
		{name: "extra-argument", args: []string{"--upstream", "192.0.2.10:21", "now"}, err: `unexpected argument "now"`},
		{name: "firewall-check-off", args: []string{"--upstream", "192.0.2.10:21", "--firewall-check-interval", "0"},
			check: func(t *testing.T, rc runConfig) {
				if rc.firewallCheck != 0 {
					t.Errorf("firewall check %v, want 0 (off)", rc.firewallCheck)
				}
			}},
		{name: "firewall-check-negative", args: []string{"--upstream", "192.0.2.10:21", "--firewall-check-interval", "-1s"},
			err: "--firewall-check-interval -1s: want 0 (off) or more"},
		{name: "firewall-check-not-a-duration", args: []string{"--upstream", "192.0.2.10:21", "--firewall-check-interval", "2"},
			err: "firewall-check-interval"},

		{name: "transparent-defaults", args: tp, intercept: func(*intercept.Config) bool { return true },
			check: func(t *testing.T, rc runConfig) {
				if rc.frontends[0].mode != nat.ModeRedirect {
					t.Errorf("mode %v, want redirect", rc.frontends[0].mode)
				}
			}},
		{name: "transparent-everything", args: append(tp, "--interception", "tproxy", "--listen", ":2121",
			"--intercept", "198.51.100.0/24, lan0,2001:db8:1::7,wg+", "--intercept-port", "2100",
			"--intercept-table", "123", "--intercept-mark", "0x40000", "--divert=false", "--upstream-source", "client",
			"--firewall-instance", "gw", "--iptables", "nft"),
			proxy: func(c *proxy.Config) { c.UpstreamSourceClient = true },
			intercept: func(c *intercept.Config) bool {
				c.Mode = nat.ModeTProxy
				c.Sources = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::7/128")}
				c.Interfaces = []string{"lan0", "wg+"}
				c.Port, c.Table, c.Mark, c.Divert = 2100, 123, 0x40000, false
				c.Instance, c.Iptables = "gw", "nft"
				return true
			},
			check: func(t *testing.T, rc runConfig) {
				if rc.frontends[0].mode != nat.ModeTProxy || !reflect.DeepEqual(rc.frontends[0].listen, []string{":2121"}) {
					t.Errorf("mode %v, listen %q", rc.frontends[0].mode, rc.frontends[0].listen)
				}
			}},
		{name: "bad-interception", args: append(tp, "--interception", "dnat"), err: `--interception: nat: interception mode "dnat"`},
		{name: "bad-upstream-source", args: append(tp, "--upstream-source", "server"), err: `--upstream-source "server": want router or client`},
		{name: "intercept-mistyped-address", args: append(tp, "--intercept", "198.51.100.0/24,10.0.0.300"), err: `--intercept: ` + rules.ErrInvalid.Error() + `: selector "10.0.0.300"`},
		{name: "intercept-bad-interface", args: append(tp, "--intercept", "lan0/24"), err: `selector "lan0/24"`},
		{name: "intercept-long-interface", args: append(tp, "--intercept", "averyveryverylongname"), err: "--intercept"},
		{name: "intercept-port-high", args: append(tp, "--intercept-port", "70000"), err: "--intercept-port 70000: want 1 to 65535"},
		{name: "intercept-port-zero", args: append(tp, "--intercept-port", "0"), err: "--intercept-port 0"},
		{name: "intercept-mark-33-bits", args: append(tp, "--intercept-mark", "0x100000000"), err: "--intercept-mark 0x100000000"},
		{name: "intercept-table-main", args: append(tp, "--intercept-table", "254"), err: "routing table 254"},
		{name: "intercept-bad-instance", args: append(tp, "--firewall-instance", "Gateway-1"), err: "run: interception:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			rc, err := parseRun(tc.args, &out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("run %q: error %v, want one containing %q", tc.args, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("run %q: %v\n%s", tc.args, err, out.String())
			}
			wantProxy := reverseDefaults()
			if rc.frontends[0].mode != 0 {
				wantProxy = transparentDefaults()
			}
			if tc.proxy != nil {
				tc.proxy(&wantProxy)
			}
			if !reflect.DeepEqual(rc.frontends[0].proxy, wantProxy) {
				t.Errorf("run %q:\nproxy.Config %+v\nwant         %+v", tc.args, rc.frontends[0].proxy, wantProxy)
			}
			wantIcpt := interceptDefaults()
			if tc.intercept == nil || !tc.intercept(&wantIcpt) {
				if rc.frontends[0].intercept != nil {
					t.Errorf("run %q: intercept.Config %+v, want none", tc.args, *rc.frontends[0].intercept)
				}
			} else if rc.frontends[0].intercept == nil || !reflect.DeepEqual(*rc.frontends[0].intercept, wantIcpt) {
				t.Errorf("run %q:\nintercept.Config %+v\nwant             %+v", tc.args, rc.frontends[0].intercept, wantIcpt)
			}
			if tc.check != nil {
				tc.check(t, rc)
			}
		})
	}
}

// TestRunConfigLeavesToStart: what needs the running process (the
// firewall backend, the director, the logger) is not in the config.
func TestRunConfigLeavesToStart(t *testing.T) {
	rc, err := parseRun([]string{"--mode", "transparent", "--intercept", "lan0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if rc.frontends[0].proxy.Firewall != nil || rc.frontends[0].proxy.Director != nil || rc.frontends[0].proxy.Logger != nil || rc.frontends[0].intercept.Logger != nil ||
		rc.frontends[0].intercept.ListenPort != 0 || rc.frontends[0].intercept.OnIP != nil {
		t.Errorf("config has start-time fields set: %+v, %+v", rc.frontends[0].proxy, *rc.frontends[0].intercept)
	}
}

func TestRunHelp(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseRun([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	for _, s := range []string{"Usage: ftpalg run", "-intercept-table", "(default 100)", "-intercept-port", "-firewall-check-interval", "(default 2s)"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("help lacks %q:\n%s", s, out.String())
		}
	}
}

// TestListeningOn: the interception follows the listener: its port, and
// for TPROXY its address (both wildcards for a wildcard listener).
func TestListeningOn(t *testing.T) {
	v4, v6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	for _, tc := range []struct {
		at   string
		onIP []netip.Addr
	}{
		{"0.0.0.0:2121", []netip.Addr{v4, v6}},
		{"[::]:2121", []netip.Addr{v4, v6}},
		{"127.0.0.1:2121", []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
		{"[::ffff:127.0.0.1]:2121", []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
		{"[::1]:2121", []netip.Addr{netip.IPv6Loopback()}},
	} {
		in := interceptDefaults()
		c := listeningOn(in, netip.MustParseAddrPort(tc.at))
		want := in
		want.ListenPort, want.OnIP = 2121, tc.onIP
		if !reflect.DeepEqual(c, want) {
			t.Errorf("listeningOn(%s) = %+v, want %+v", tc.at, c, want)
		}
	}
}

// TestRulesConfig: `rules cleanup` removes the policy route of the table
// the run used, and names the same objects as the run's flags.
func TestRulesConfig(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		verb    string
		fw      firewallFlags
		cleanup intercept.Config
		err     string
	}{
		{args: []string{"cleanup"}, verb: "cleanup", fw: firewallFlags{name: "auto"},
			cleanup: intercept.Config{Table: intercept.DefaultTable, Mark: intercept.DefaultMark}},
		{args: []string{"cleanup", "--intercept-table", "123", "--intercept-mark", "0x40000", "--firewall-instance", "gw", "--iptables", "legacy"},
			verb: "cleanup", fw: firewallFlags{name: "auto", instance: "gw", iptables: "legacy"},
			cleanup: intercept.Config{Table: 123, Mark: 0x40000, Instance: "gw", Iptables: "legacy"}},
		{args: []string{"show", "--firewall", "ipset"}, verb: "show", fw: firewallFlags{name: "ipset"},
			cleanup: intercept.Config{Table: intercept.DefaultTable, Mark: intercept.DefaultMark}},
		{args: nil, err: "show, flush or cleanup?"},
		{args: []string{"--firewall", "ipset"}, err: "show, flush or cleanup?"},
		{args: []string{"purge"}, err: `unknown command "purge"`},
		{args: []string{"cleanup", "--intercept-mark", "0x100000000"}, err: "--intercept-mark"},
		{args: []string{"flush", "now"}, err: `unexpected argument "now"`},
	} {
		rc, err := parseRules(tc.args, &bytes.Buffer{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("rules %q: error %v, want one containing %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("rules %q: %v", tc.args, err)
			continue
		}
		if rc.verb != tc.verb || rc.fw != tc.fw || !reflect.DeepEqual(rc.cleanup, tc.cleanup) {
			t.Errorf("rules %q = %q, %+v, %+v; want %q, %+v, %+v", tc.args, rc.verb, rc.fw, rc.cleanup, tc.verb, tc.fw, tc.cleanup)
		}
	}
}

// TestWatched: the firewall watch keeps the backend in place unless it is
// "none", and the interception when there is one.
func TestWatched(t *testing.T) {
	if ss := watched(rules.None{}, nil, nil); len(ss) != 0 {
		t.Errorf("watched(none) = %v, want nothing", ss)
	}
	fw := rulestest.NewFake()
	if ss := watched(fw, nil, nil); len(ss) != 1 || ss[0] != rules.Syncer(fw) {
		t.Errorf("watched(fake) = %v, want the backend", ss)
	}
}
