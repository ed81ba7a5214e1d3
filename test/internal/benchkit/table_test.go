package benchkit

import (
	"strings"
	"testing"
)

// TestTable: blank cells for configurations not measured and for the
// ratios that need them, ratios with their precision, no ratios where asked
// or where keep picks columns, text rows, and no trailing blanks.
func TestTable(t *testing.T) {
	by := map[string]float64{"a": 2, "c": 1}
	tb := NewTable("%-8s %6s %6s %6s %8s %8s", []string{"a", "b", "c"}, [][2]string{{"a", "c"}, {"b", "c"}}, by)
	v := func(r float64) float64 { return r }
	tb.Row("x", v, F1, 2, nil)
	tb.Row("y", v, F1, -1, nil)
	tb.Row("z", v, F1, 2, func(k string) bool { return k == "c" })
	tb.Text("t", func(r float64) string { return strings.Repeat("*", int(r)) })
	want := "" +
		"measurement      a      b      c      a/c      b/c\n" +
		"x           2.0           1.0     2.00\n" +
		"y           2.0           1.0\n" +
		"z                         1.0\n" +
		"t            **             *\n"
	if got := tb.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
