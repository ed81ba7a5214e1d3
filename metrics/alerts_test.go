package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

// TestAlertRulesMatchMetrics: every ftpalg_ metric the shipped alerting
// rules (deploy/prometheus) query is one this package exports, so the
// rules cannot silently watch nothing after a rename.
func TestAlertRulesMatchMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/prometheus/ftpalg-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	m := New()
	// Every vector needs a sample to be gathered: touch each once.
	o := m.Observer()
	o.SessionStarted()
	o.SessionEnded("x")
	o.SessionRefused("x")
	o.UpstreamConnected(0)
	o.Rewritten("x")
	o.Translated("x")
	o.DataConnection("x", "x", "x")
	o.Transfer("x", 0, 0, 0)
	o.Violation("x")
	o.TLSHandshake("x", "x", false, false)
	m.fwOps.WithLabelValues("x", "x", "x")
	m.fwDuration.WithLabelValues("x", "x")
	m.fwActive.WithLabelValues("x")
	m.fwRestored.WithLabelValues("x")
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	name := regexp.MustCompile(`\bftpalg_[a-z0-9_]+`)
	n := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				t.Errorf("rule %q has no expr", r.Alert)
			}
			for _, used := range name.FindAllString(r.Expr, -1) {
				base := used
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if b, ok := strings.CutSuffix(used, suffix); ok && have[b] {
						base = b
					}
				}
				if !have[base] {
					t.Errorf("rule %q uses %s, which ftpalg does not export", r.Alert, used)
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Fatal("no ftpalg_ metric in the rules: the file was not read right")
	}
}
