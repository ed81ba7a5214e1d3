package benchkit

import (
	"fmt"
	"strings"
)

// Table is a benchmark's summary table: a column per configuration (those
// not measured stay blank), then a column per ratio of two
// configurations. R is the program's result of one configuration.
type Table[R any] struct {
	strings.Builder
	rowFmt string
	cols   []string
	ratios [][2]string
	by     map[string]R
}

// NewTable starts a table with rowFmt (the name's cell, then one per
// column and ratio), the configurations' columns in order, the ratios
// (each {a, b}: a/b), and the results measured by configuration.
func NewTable[R any](rowFmt string, cols []string, ratios [][2]string, by map[string]R) *Table[R] {
	t := &Table[R]{rowFmt: rowFmt, cols: cols, ratios: ratios, by: by}
	head := append([]string{"measurement"}, cols...)
	for _, p := range ratios {
		head = append(head, p[0]+"/"+p[1])
	}
	t.Line(head...)
	return t
}

// Line writes one row of cells, missing ones blank.
func (t *Table[R]) Line(cells ...string) {
	args := make([]any, 1+len(t.cols)+len(t.ratios))
	for i := range args {
		args[i] = ""
		if i < len(cells) {
			args[i] = cells[i]
		}
	}
	t.WriteString(strings.TrimRight(fmt.Sprintf(t.rowFmt, args...), " ") + "\n")
}

// Row writes a figure per configuration in which keep (nil: all) holds,
// and its ratios with prec decimals (prec < 0: no ratios).
func (t *Table[R]) Row(name string, val func(R) float64, format func(float64) string, prec int, keep func(string) bool) {
	cells := []string{name}
	for _, k := range t.cols {
		r, ok := t.by[k]
		if ok && (keep == nil || keep(k)) {
			cells = append(cells, format(val(r)))
		} else {
			cells = append(cells, "")
		}
	}
	for _, p := range t.ratios {
		a, okA := t.by[p[0]]
		b, okB := t.by[p[1]]
		if !okA || !okB || prec < 0 || keep != nil {
			cells = append(cells, "")
			continue
		}
		cells = append(cells, Ratio(val(a), val(b), prec))
	}
	t.Line(cells...)
}

// Text writes a text per configuration, without ratios.
func (t *Table[R]) Text(name string, val func(R) string) {
	cells := []string{name}
	for _, k := range t.cols {
		if r, ok := t.by[k]; ok {
			cells = append(cells, val(r))
		} else {
			cells = append(cells, "")
		}
	}
	t.Line(cells...)
}
