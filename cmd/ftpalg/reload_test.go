package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/internal/testcert"
)

// TestPlanReload goes from the running configuration and the reloaded
// file to what the reload opens, closes, reconfigures, adds and removes,
// or to the error that rejects it.
func TestPlanReload(t *testing.T) {
	const base = `
log-level: info
frontends:
  - name: a
    listen: [127.0.0.1:21]
    upstream: 192.0.2.10:21
    max-sessions: 10
  - name: b
    listen: 127.0.0.1:2121
    upstream: 192.0.2.11:21
    data-ports: 51000-51999
`
	const gateway = `
frontends:
  - name: gw
    mode: transparent
    listen: :2121
    intercept: 198.51.100.0/24
  - name: a
    listen: 127.0.0.1:21
    upstream: 192.0.2.10:21
    data-ports: 51000-51999
`
	type change struct {
		name        string
		open, close []string
		reconfigure bool
	}
	for _, tc := range []struct {
		name      string
		old, next string
		level     zapcore.Level // when not 0 (info): the new level
		change    []change
		add       []string
		remove    []string
		summary   []string // a part of each summary item, in order
		err       []string // parts of the error
	}{
		{name: "nothing", old: base, next: base},
		{name: "comments-only", old: base, next: base + "# a comment\n"},
		{name: "log-level", old: base, next: strings.Replace(base, "log-level: info", "log-level: debug", 1),
			level: zapcore.DebugLevel, summary: []string{"log-level info → debug"}},
		{name: "limit", old: base, next: strings.Replace(base, "max-sessions: 10", "max-sessions: 2", 1),
			change: []change{{name: "a", reconfigure: true}}, summary: []string{`frontend "a": max-sessions 10 → 2`}},
		{name: "epsv", old: base, next: strings.Replace(base, "max-sessions: 10", "max-sessions: 10\n    epsv: refuse", 1),
			change: []change{{name: "a", reconfigure: true}}, summary: []string{`frontend "a": epsv on → refuse`}},
		{name: "limits-from-top", old: base, next: "idle-timeout: 1m\n" + base,
			change:  []change{{name: "a", reconfigure: true}, {name: "b", reconfigure: true}},
			summary: []string{`frontend "a": idle-timeout 15m0s → 1m0s`, `frontend "b": idle-timeout 15m0s → 1m0s`}},
		{name: "listen-added", old: base, next: strings.Replace(base, "[127.0.0.1:21]", "[127.0.0.1:21, 127.0.0.1:22]", 1),
			change:  []change{{name: "a", open: []string{"127.0.0.1:22"}}},
			summary: []string{`frontend "a": listen [127.0.0.1:21] → [127.0.0.1:21 127.0.0.1:22]`}},
		{name: "listen-moved", old: base, next: strings.Replace(base, "[127.0.0.1:21]", "[127.0.0.1:22]", 1),
			change: []change{{name: "a", open: []string{"127.0.0.1:22"}, close: []string{"127.0.0.1:21"}}}},
		{name: "listen-and-upstream", old: base, next: strings.Replace(strings.Replace(base, "[127.0.0.1:21]", "[127.0.0.1:22]", 1), "192.0.2.10:21", "192.0.2.12:21", 1),
			change:  []change{{name: "a", open: []string{"127.0.0.1:22"}, close: []string{"127.0.0.1:21"}, reconfigure: true}},
			summary: []string{`frontend "a": listen`, `frontend "a": upstream 192.0.2.10:21 → 192.0.2.12:21`}},
		{name: "frontend-added", old: base, next: base + "  - name: c\n    listen: 127.0.0.1:2122\n    upstream: 192.0.2.12:21\n    data-ports: 52000-52999\n",
			add: []string{"c"}, summary: []string{`frontend "c" added (listen [127.0.0.1:2122])`}},
		{name: "frontend-removed", old: base, next: base[:strings.Index(base, "  - name: b")],
			remove: []string{"b"}, summary: []string{`frontend "b" removed`}},
		{name: "frontend-renamed-moved", old: base, next: strings.Replace(strings.Replace(base, "name: b", "name: c", 1), "127.0.0.1:2121", "127.0.0.1:2122", 1),
			add: []string{"c"}, remove: []string{"b"}},
		{name: "frontend-renamed", old: base, next: strings.Replace(base, "name: b", "name: c", 1),
			err: []string{`frontend "c": listen 127.0.0.1:2121: front end "b" holds 127.0.0.1:2121 until this reload is done`}},
		{name: "listen-moved-between", old: base, next: strings.Replace(strings.Replace(base, "[127.0.0.1:21]", "[127.0.0.1:21, 127.0.0.1:2121]", 1), "listen: 127.0.0.1:2121", "listen: 127.0.0.1:2122", 1),
			err: []string{`frontend "a": listen 127.0.0.1:2121: front end "b" holds 127.0.0.1:2121`}},
		{name: "listen-respelled", old: base, next: strings.Replace(base, "[127.0.0.1:21]", "[\"[::ffff:127.0.0.1]:21\"]", 1),
			err: []string{`frontend "a": listen [::ffff:127.0.0.1]:21: front end "a" holds 127.0.0.1:21`}},
		{name: "reverse-ignores-interception-keys", old: base, next: "intercept-port: 2100\n" + base},
		{name: "top-level-default", old: "upstream: 192.0.2.10:21\n", next: "upstream: 192.0.2.10:21\nmax-sessions-per-ip: 3\n",
			change: []change{{name: "default", reconfigure: true}}, summary: []string{`frontend "default": max-sessions-per-ip 0 → 3`}},

		{name: "restart-firewall", old: base, next: "firewall: ipset\n" + base, err: []string{`firewall: "auto" → "ipset" needs a restart`}},
		{name: "restart-several", old: base, next: "data-path: splice\nmetrics-listen: 127.0.0.1:9121\nshutdown-grace: 1s\nlog-format: json\nlog-level: debug\n" + base[strings.Index(base, "frontends"):],
			err: []string{"data-path:", "metrics-listen:", "shutdown-grace:", "log-format:"}},
		{name: "restart-instance", old: base, next: "firewall-instance: gw\niptables: legacy\nkeep-firewall-hooks: true\nfirewall-check-interval: 0s\n" + base,
			err: []string{"firewall-instance:", "iptables:", "keep-firewall-hooks:", "firewall-check-interval:"}},
		{name: "restart-mode", old: base, next: strings.Replace(base, "upstream: 192.0.2.11:21", "mode: transparent", 1),
			err: []string{"frontend \"b\": mode: reverse → transparent needs a restart"}},

		{name: "gateway-limit", old: gateway, next: strings.Replace(gateway, "intercept: 198.51.100.0/24", "intercept: 198.51.100.0/24\n    max-sessions: 5\n    upstream-source: client", 1),
			change: []change{{name: "gw", reconfigure: true}}},
		{name: "gateway-intercept", old: gateway, next: strings.Replace(gateway, "198.51.100.0/24", "198.51.100.0/25", 1),
			err: []string{`frontend "gw": intercept: "198.51.100.0/24" → "198.51.100.0/25" needs a restart`}},
		{name: "gateway-listen", old: gateway, next: strings.Replace(gateway, ":2121", ":2122", 1),
			err: []string{`frontend "gw": listen: ":2121" → ":2122" needs a restart`}},
		{name: "gateway-interception", old: gateway, next: strings.Replace(gateway, "mode: transparent", "mode: transparent\n    interception: tproxy\n    divert: false\n    intercept-mark: 0x2\n    intercept-table: 7\n    intercept-port: 2100", 1),
			err: []string{"interception:", "divert:", "intercept-mark:", "intercept-table:", "intercept-port:"}},
		{name: "gateway-added", old: base, next: base + "  - name: gw\n    mode: transparent\n    listen: :2122\n    data-ports: 52000-52999\n",
			err: []string{`frontend "gw": a transparent front end can only be added by a restart`}},
		{name: "gateway-removed", old: gateway, next: gateway[:strings.Index(gateway, "  - name: gw")] + gateway[strings.Index(gateway, "  - name: a"):],
			err: []string{`frontend "gw": the transparent front end can only be removed by a restart`}},
		{name: "gateway-kept-others-change", old: gateway, next: gateway + "  - name: b\n    listen: 127.0.0.1:2123\n    upstream: 192.0.2.11:21\n    data-ports: 52000-52999\n",
			add: []string{"b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, err := parseConfig("old.yaml", []byte(tc.old), nil)
			if err != nil {
				t.Fatalf("old: %v", err)
			}
			next, err := parseConfig("new.yaml", []byte(tc.next), nil)
			if err != nil {
				t.Fatalf("new: %v", err)
			}
			p, err := planReload(old, next)
			if len(tc.err) > 0 {
				if err == nil {
					t.Fatalf("no error, want one with %q; plan %+v", tc.err, p)
				}
				for _, s := range tc.err {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error:\n%v\nwant one containing %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.level == zapcore.InfoLevel && p.level != nil:
				t.Errorf("level %v, want no change", *p.level)
			case tc.level != zapcore.InfoLevel && (p.level == nil || *p.level != tc.level):
				t.Errorf("level %v, want %v", p.level, tc.level)
			}
			var got []change
			for _, c := range p.change {
				got = append(got, change{c.fe.name, c.open, c.close, c.reconfigure})
			}
			if !slices.EqualFunc(got, tc.change, func(a, b change) bool {
				return a.name == b.name && slices.Equal(a.open, b.open) && slices.Equal(a.close, b.close) && a.reconfigure == b.reconfigure
			}) {
				t.Errorf("changes %+v, want %+v", got, tc.change)
			}
			var added []string
			for _, fe := range p.add {
				added = append(added, fe.name)
			}
			if !slices.Equal(added, tc.add) || !slices.Equal(p.remove, tc.remove) {
				t.Errorf("added %q, removed %q; want %q, %q", added, p.remove, tc.add, tc.remove)
			}
			if len(tc.summary) > 0 && len(p.summary) != len(tc.summary) {
				t.Errorf("summary %q, want %d items", p.summary, len(tc.summary))
			}
			for i, s := range tc.summary {
				if i < len(p.summary) && !strings.Contains(p.summary[i], s) {
					t.Errorf("summary[%d] %q, want it to contain %q", i, p.summary[i], s)
				}
			}
			if len(tc.change)+len(tc.add)+len(tc.remove) == 0 && tc.level == zapcore.InfoLevel && len(p.summary) != 0 {
				t.Errorf("summary %q, want nothing", p.summary)
			}
		})
	}
}

// TestReloadRereadsCertificates: a reload reads the TLS files again, so a
// certificate renewed under the same file name reaches new sessions.
func TestReloadRereadsCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewAuthority("reload test CA")
	if err != nil {
		t.Fatal(err)
	}
	write := func() {
		leaf, err := ca.Leaf("ftp.example")
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"cert.pem": leaf.CertPEM, "key.pem": leaf.KeyPEM} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	file := []byte("frontends:\n  - name: a\n    listen: 127.0.0.1:2121\n    upstream: 192.0.2.10:21\n" +
		"    tls-cert: " + filepath.Join(dir, "cert.pem") + "\n    tls-key: " + filepath.Join(dir, "key.pem") + "\n")
	load := func() runConfig {
		rc, err := parseConfig("ftpalg.yaml", file, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	write()
	old := load()
	if p, err := planReload(old, load()); err != nil || len(p.change) != 0 {
		t.Fatalf("the same files: plan %+v, %v; want no change", p, err)
	}
	write() // renewed
	p, err := planReload(old, load())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.change) != 1 || !p.change[0].reconfigure || !slices.ContainsFunc(p.summary, func(s string) bool { return strings.Contains(s, "TLS certificates") }) {
		t.Errorf("renewed certificate: plan %+v, want front end a reconfigured", p)
	}
}
