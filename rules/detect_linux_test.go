package rules_test

import (
	"context"
	"slices"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
	_ "github.com/ftpalg/ftpalg/rules/ipset"
	_ "github.com/ftpalg/ftpalg/rules/iptables"
)

// TestDetect: on this kind of host (ipset in the kernel) Detect picks ipset,
// and its probe leaves the namespace as it found it.
func TestDetect(t *testing.T) {
	nstest.Require(t, "iptables", "iptables-save", "ipset")
	ns := nstest.New(t)
	nstest.DefaultDrop(t, ns, "")
	before := ns.Save(t, "4", "")
	var name, reason string
	ns.Do(t, func() { name, reason = rules.Detect(context.Background(), zaptest.NewLogger(t)) })
	if name != "ipset" {
		t.Errorf("Detect = %q (%s), want ipset", name, reason)
	}
	t.Logf("Detect: %s: %s", name, reason)
	if after := ns.Save(t, "4", ""); after != before {
		t.Errorf("Detect left rules behind:\n%s", after)
	}
	if sets := ns.Sets(t); len(sets) != 0 {
		t.Errorf("Detect left sets behind: %v", sets)
	}
}

func TestNewRegistered(t *testing.T) {
	if got, want := rules.Names(), []string{"ipset", "iptables", "none"}; !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	for _, name := range rules.Names() {
		b, err := rules.New(name, rules.Options{})
		if err != nil || b.Name() != name {
			t.Errorf("New(%q) = %v, %v", name, b, err)
			continue
		}
		if _, ok := b.(rules.Lister); !ok {
			t.Errorf("%s is not a rules.Lister", name)
		}
	}
}
