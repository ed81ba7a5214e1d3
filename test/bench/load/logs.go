package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// Lines of the proxy's log the benchmark looks for.
const (
	txtNofileShort  = proxy.MsgFDLimitLow
	txtOutOfFDs     = proxy.MsgOutOfFDs
	txtAcceptFailed = proxy.MsgAcceptFailed
	txtDataIdle     = proxy.MsgDataIdle
	txtRefusedLine  = proxy.MsgBadLine
	reasonLogin     = "login timeout" // MsgSessionEnded's reason
)

// logLine is one line of the proxy's JSON log.
type logLine map[string]any

func (l logLine) msg() string { return l.str("msg") }

func (l logLine) str(k string) string {
	switch v := l[k].(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprint(v)
	}
}

func (l logLine) num(k string) int64 {
	v, _ := l[k].(float64)
	return int64(v)
}

// time is the line's timestamp (zap's ISO 8601 with milliseconds).
func (l logLine) time() time.Time {
	t, _ := time.Parse("2006-01-02T15:04:05.000Z0700", l.str("ts"))
	return t
}

// logSince parses what px logged after offset off; lines that are not
// JSON (a panic, the runtime's messages) come back as {"msg": line}.
func logSince(px *nstest.Proc, off int64) []logLine {
	var out []logLine
	for _, s := range strings.Split(px.LogSince(off), "\n") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		var l logLine
		if json.Unmarshal([]byte(s), &l) != nil {
			l = logLine{"msg": s}
		}
		out = append(out, l)
	}
	return out
}

// waitLog waits up to timeout for a line after off that match accepts.
func waitLog(px *nstest.Proc, off int64, timeout time.Duration, match func(logLine) bool) (logLine, bool) {
	end := time.Now().Add(timeout)
	for {
		for _, l := range logSince(px, off) {
			if match(l) {
				return l, true
			}
		}
		if time.Now().After(end) {
			return nil, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isMsg matches lines with message m.
func isMsg(m string) func(logLine) bool {
	return func(l logLine) bool { return l.msg() == m }
}

// hasMsg matches lines whose message contains s.
func hasMsg(s string) func(logLine) bool {
	return func(l logLine) bool { return strings.Contains(l.msg(), s) }
}

// count counts the lines match accepts.
func count(lines []logLine, match func(logLine) bool) int {
	n := 0
	for _, l := range lines {
		if match(l) {
			n++
		}
	}
	return n
}

// tally counts the values of field k over the lines match accepts,
// "reason ×n, reason ×m", most frequent first.
func tally(lines []logLine, match func(logLine) bool, k string) string {
	m := map[string]int{}
	for _, l := range lines {
		if match(l) {
			m[l.str(k)]++
		}
	}
	keys := make([]string, 0, len(m))
	for v := range m {
		keys = append(keys, v)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	var parts []string
	for _, v := range keys {
		parts = append(parts, fmt.Sprintf("%q ×%d", v, m[v]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// transferLine is the short form of a transfer report: its message and
// bytes, and reason or code when it has them.
func transferLine(l logLine) string {
	s := fmt.Sprintf("%q bytes_to_client=%d", l.msg(), l.num("bytes_to_client"))
	if r := l.str("reason"); r != "" {
		s += fmt.Sprintf(" reason=%q", r)
	}
	if _, ok := l["code"]; ok {
		s += fmt.Sprintf(" code=%d", l.num("code"))
	}
	return s
}
