package xtables

import (
	"slices"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{`-A INPUT -j FTPALG-INPUT`, []string{"-A", "INPUT", "-j", "FTPALG-INPUT"}},
		{`-A X -m comment --comment "ftpalg session 7" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", "ftpalg session 7", "-j", "ACCEPT"}},
		{`-A X --comment "a \"quoted\" \\ word"  -j  RETURN`, []string{"-A", "X", "--comment", `a "quoted" \ word`, "-j", "RETURN"}},
		{`-A X --comment ""`, []string{"-A", "X", "--comment", ""}},
	} {
		got, err := Split(tc.line)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Split(%s) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
	if _, err := Split(`-A X --comment "open`); err == nil {
		t.Error("Split accepted an unterminated quote")
	}
}

func TestHookSpec(t *testing.T) {
	h := Hooks("-web")[0]
	if h.Builtin != "INPUT" || h.Chain != "FTPALG-INPUT-web" {
		t.Fatalf("Hooks(-web)[0] = %+v", h)
	}
	want := []string{"-p", "tcp", "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-m", "conntrack", "--ctstate", "NEW", "-j", "FTPALG-INPUT-web"}
	if got := canonical(h.Spec()); !slices.Equal(got, want) {
		t.Errorf("canonical(Spec) = %q, want %q", got, want)
	}
	if Target(h.Spec()) != "FTPALG-INPUT-web" {
		t.Errorf("Target(Spec) = %q", Target(h.Spec()))
	}
}
