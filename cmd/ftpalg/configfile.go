package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// The configuration file (--config) is YAML whose keys are the flags of
// `ftpalg run` without their dashes: the global ones (globalKeys) at the
// top level, the per-front-end ones (frontendKeys) in the entries of
// `frontends`, each with a unique `name`:
//
//	log-level: info
//	frontends:
//	  - name: public
//	    listen: [":21"]
//	    upstream: 10.0.0.5:21
//
// Without `frontends` the front-end keys at the top level describe one
// front end ("default"); with it they are defaults for every entry. The
// value of a key is read by its flag, so it takes what the flag takes; a
// list key (listen, intercept) also takes a YAML list. Layers, each
// replacing the one before: the flags' defaults, the top level, the
// front end's entry, the flags given on the command line (a global flag
// sets the global value, a front-end flag the value of every front end).
// deploy/ftpalg.yaml is the annotated example.

// defaultFrontend is the name of the front end the top level describes
// in a file without `frontends`.
const defaultFrontend = "default"

// frontendName is what a front end's name may be: it appears in logs and
// error messages.
var frontendName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$`)

// loadConfig reads the configuration file path and applies the flags
// given on the command line over it.
func loadConfig(path string, overrides []flagValue) (runConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return runConfig{}, fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, data, overrides)
}

// entry is one key of a YAML mapping.
type entry struct {
	key   string
	line  int
	value ast.Node
}

// parseConfig turns the configuration file data (read from path, for the
// messages) and the command-line overrides into a runConfig, checked as
// parseRun checks the flags, and across front ends (checkFrontends).
// Every error names the file, the line where it can, the front end and
// the key.
func parseConfig(path string, data []byte, overrides []flagValue) (runConfig, error) {
	rc := runConfig{file: path, overrides: overrides}
	doc, err := parser.ParseBytes(data, 0)
	if err != nil {
		return rc, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Docs) > 1 {
		return rc, fmt.Errorf("%s: %d YAML documents: want one", path, len(doc.Docs))
	}
	var top []entry
	if len(doc.Docs) == 1 && doc.Docs[0].Body != nil {
		if top, err = entries(path, "", doc.Docs[0].Body); err != nil {
			return rc, err
		}
	}
	var (
		errs    []error
		g       globalFlags
		gfs     = scopeFlagSet(g.register)
		shared  []entry // front-end keys at the top level
		check   = scopeFlagSet(new(frontendFlags).register)
		list    *entry // frontends
		topName *entry // name at the top level
	)
	for _, e := range top {
		switch {
		case e.key == "frontends":
			list = &e
		case e.key == "name":
			topName = &e
		case globalKeys[e.key]:
			errs = append(errs, setKey(path, "", gfs, e))
		case frontendKeys[e.key]:
			// Checked here once; each front end sets it again.
			errs = append(errs, setKey(path, "", check, e))
			shared = append(shared, e)
		default:
			errs = append(errs, unknownKey(path, "", e))
		}
	}
	for _, o := range overrides {
		if globalKeys[o.name] {
			errs = append(errs, override(gfs, o))
		}
	}
	var sources []source
	switch {
	case list == nil:
		s := source{name: defaultFrontend}
		if topName != nil {
			name, err := nameOf(path, "", *topName)
			errs = append(errs, err)
			s.name, s.line = name, topName.line
		}
		sources = append(sources, s)
	case topName != nil:
		errs = append(errs, fmt.Errorf("%s:%d: name: at the top level only without frontends (each entry of frontends has its own)", path, topName.line))
	default:
		var serrs []error
		sources, serrs = frontendSources(path, list)
		errs = append(errs, serrs...)
	}
	type built struct {
		source
		f  *frontendFlags
		fs *flag.FlagSet
	}
	var fronts []built
	for _, s := range sources {
		b := built{source: s, f: new(frontendFlags)}
		b.fs = scopeFlagSet(b.f.register)
		for _, e := range shared {
			setKey(path, "", b.fs, e) // checked above
		}
		for _, e := range s.keys {
			switch {
			case e.key == "name":
			case globalKeys[e.key]:
				errs = append(errs, fmt.Errorf("%s:%d: %s%s is a global setting: put it at the top level", path, e.line, s.where, e.key))
			case frontendKeys[e.key]:
				errs = append(errs, setKey(path, s.where, b.fs, e))
			default:
				errs = append(errs, unknownKey(path, s.where, e))
			}
		}
		for _, o := range overrides {
			if frontendKeys[o.name] {
				errs = append(errs, override(b.fs, o))
			}
		}
		fronts = append(fronts, b)
	}
	if err := errors.Join(errs...); err != nil {
		return rc, err
	}
	// The values are all there: check them, as parseRun does the flags.
	rc, err = g.config()
	if err != nil {
		return rc, fmt.Errorf("%s: %w", path, err)
	}
	rc.file, rc.overrides, rc.settings = path, overrides, values(gfs, globalKeys)
	for _, b := range fronts {
		fe, err := b.f.config(rc.fw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s%w", at(path, b.line), b.where, err))
			continue
		}
		fe.name, fe.line, fe.settings = b.name, b.line, values(b.fs, frontendKeys)
		rc.frontends = append(rc.frontends, fe)
	}
	if err := errors.Join(errs...); err != nil {
		return rc, err
	}
	if err := checkFrontends(path, rc.frontends); err != nil {
		return rc, err
	}
	return rc, nil
}

// source is a front end as the file describes it.
type source struct {
	name  string
	where string // "frontend \"NAME\": " for messages; empty for the top level's
	line  int
	keys  []entry // all of its entry's, name included
}

// frontendSources reads the entries of `frontends`.
func frontendSources(path string, list *entry) ([]source, []error) {
	seq, ok := unwrap(list.value).(*ast.SequenceNode)
	if !ok || len(seq.Values) == 0 {
		return nil, []error{fmt.Errorf("%s:%d: frontends: want a list of front ends (- name: NAME, listen: ..., upstream: ...)", path, list.line)}
	}
	var (
		out  []source
		errs []error
		seen = map[string]int{}
	)
	for i, item := range seq.Values {
		s := source{where: fmt.Sprintf("frontends[%d]: ", i), line: item.GetToken().Position.Line}
		es, err := entries(path, s.where, item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		named := false
		for _, e := range es {
			if e.key != "name" {
				continue
			}
			name, err := nameOf(path, s.where, e)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			s.name, s.where, s.line, named = name, fmt.Sprintf("frontend %q: ", name), e.line, true
			if first, dup := seen[name]; dup {
				errs = append(errs, fmt.Errorf("%s:%d: %sname already used by the front end at line %d", path, e.line, s.where, first))
			}
			seen[name] = e.line
		}
		if !named {
			errs = append(errs, fmt.Errorf("%s:%d: %sname: missing (each front end needs a unique name)", path, s.line, s.where))
		}
		s.keys = es
		out = append(out, s)
	}
	return out, errs
}

// at is path:line, or path when line is 0.
func at(path string, line int) string {
	if line == 0 {
		return path
	}
	return path + ":" + strconv.Itoa(line)
}

// scopeFlagSet is a flag set with what register registers: the keys of
// one scope, with their defaults.
func scopeFlagSet(register func(*flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	register(fs)
	return fs
}

// entries returns the keys of the mapping n, in order (the parser has
// refused duplicates).
func entries(path, where string, n ast.Node) ([]entry, error) {
	var mvs []*ast.MappingValueNode
	switch m := unwrap(n).(type) {
	case *ast.MappingNode:
		mvs = m.Values
	case *ast.MappingValueNode:
		mvs = []*ast.MappingValueNode{m}
	default:
		return nil, fmt.Errorf("%s:%d: %swant a mapping of settings (key: value)", path, n.GetToken().Position.Line, where)
	}
	out := make([]entry, 0, len(mvs))
	for _, mv := range mvs {
		line := mv.Key.GetToken().Position.Line
		k, ok := unwrap(mv.Key).(*ast.StringNode)
		if !ok {
			return nil, fmt.Errorf("%s:%d: %skey %s: want a setting's name", path, line, where, mv.Key.String())
		}
		out = append(out, entry{key: k.Value, line: line, value: mv.Value})
	}
	return out, nil
}

// unwrap returns what a tag or an anchor stands before.
func unwrap(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case *ast.TagNode:
			n = v.Value
		case *ast.AnchorNode:
			n = v.Value
		default:
			return n
		}
	}
}

// scalar is the text of a scalar value as its flag reads it.
func scalar(n ast.Node) (string, bool) {
	switch v := unwrap(n).(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		return strings.TrimSpace(v.Value.Value), true
	case *ast.NullNode:
		return "", true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return v.GetToken().Value, true
	}
	return "", false
}

// nameOf reads a front end's name.
func nameOf(path, where string, e entry) (string, error) {
	s, ok := scalar(e.value)
	if !ok || !frontendName.MatchString(s) {
		return "", fmt.Errorf("%s:%d: %sname %s: want letters, digits, '-', '_' or '.', up to 32", path, e.line, where, strings.TrimSpace(e.value.String()))
	}
	return s, nil
}

// setKey sets e's flag in fs from its YAML value. where names the front
// end for the message.
func setKey(path, where string, fs *flag.FlagSet, e entry) error {
	fl := fs.Lookup(e.key)
	pre := fmt.Sprintf("%s:%d: %s%s", path, e.line, where, e.key)
	list, isList := fl.Value.(*listFlag)
	switch v := unwrap(e.value).(type) {
	case *ast.AliasNode:
		return fmt.Errorf("%s: aliases (*%s) are not supported: put settings shared by front ends at the top level", pre, v.Value)
	case *ast.SequenceNode:
		if !isList {
			return fmt.Errorf("%s: want one value, not a list", pre)
		}
		list.values, list.set = nil, true
		for _, item := range v.Values {
			s, ok := scalar(item)
			if !ok {
				return fmt.Errorf("%s: list item %s: want a single value", pre, strings.TrimSpace(item.String()))
			}
			list.Set(s)
		}
		return nil
	}
	s, ok := scalar(e.value)
	if !ok {
		if isList {
			return fmt.Errorf("%s: want a value or a list of values", pre)
		}
		return fmt.Errorf("%s: want a single value", pre)
	}
	if isList {
		list.reset()
	}
	if err := fl.Value.Set(s); err != nil {
		return fmt.Errorf("%s: %q: %s", pre, s, want(fl.Value, err))
	}
	return nil
}

// override sets a flag given on the command line over what the file
// said: all of a list's values.
func override(fs *flag.FlagSet, o flagValue) error {
	if l, ok := fs.Lookup(o.name).Value.(*listFlag); ok {
		l.reset()
	}
	return fs.Set(o.name, o.value)
}

// want explains what a flag's value should have been.
func want(v flag.Value, err error) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return err.Error()
	}
	switch g.Get().(type) {
	case bool:
		return "want true or false"
	case time.Duration:
		return "want a duration such as 500ms, 30s, 15m or 1h"
	case int, uint:
		return "want a whole number"
	}
	return err.Error()
}

// unknownKey explains an unknown key, naming the one probably meant.
func unknownKey(path, where string, e entry) error {
	msg := fmt.Sprintf("%s:%d: %sunknown key %q", path, e.line, where, e.key)
	best, dist := "", 3
	for _, scope := range []map[string]bool{globalKeys, frontendKeys, {"frontends": true, "name": true}} {
		for k := range scope {
			if d := editDistance(e.key, k); d < dist || d == dist && k < best {
				best, dist = k, d
			}
		}
	}
	if best != "" && dist < 3 {
		msg += fmt.Sprintf(" (did you mean %s?)", best)
	}
	return errors.New(msg)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// checkFrontends checks what front ends share on one host: their listen
// addresses, their data ports, and the interception, of which a process
// has one.
func checkFrontends(path string, fes []frontend) error {
	var errs []error
	var transparent []string
	for i, a := range fes {
		if a.proxy.Transparent {
			transparent = append(transparent, a.name)
		}
		for _, b := range fes[:i] {
			for _, la := range a.listen {
				for _, lb := range b.listen {
					if listenOverlap(la, lb) {
						errs = append(errs, fmt.Errorf("%s: frontend %q: listen %s: taken by front end %q (listen %s)", at(path, a.line), a.name, la, b.name, lb))
					}
				}
			}
			ra, rb := a.proxy.DataPorts, b.proxy.DataPorts
			if ra.Lo != 0 && rb.Lo != 0 && ra.Lo <= rb.Hi && rb.Lo <= ra.Hi {
				errs = append(errs, fmt.Errorf("%s: frontend %q: data-ports %s overlap those of front end %q (%s): front ends share the host's ports", at(path, a.line), a.name, ra, b.name, rb))
			}
		}
	}
	if len(transparent) > 1 {
		errs = append(errs, fmt.Errorf("%s: frontends %s: mode transparent: at most one front end may be transparent (a process has one interception)", path, strings.Join(quoted(transparent), ", ")))
	}
	return errors.Join(errs...)
}

func quoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

// listenOverlap reports whether listen addresses a and b cannot both be
// bound: the same port on the same address, or on a wildcard (":PORT",
// 0.0.0.0, ::), which takes the port on every address.
func listenOverlap(a, b string) bool {
	ha, pa, erra := net.SplitHostPort(a)
	hb, pb, errb := net.SplitHostPort(b)
	if erra != nil || errb != nil {
		return a == b
	}
	if pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool {
		ip, err := netip.ParseAddr(h)
		return h == "" || err == nil && ip.IsUnspecified()
	}
	if wild(ha) || wild(hb) {
		return true
	}
	ia, ea := netip.ParseAddr(ha)
	ib, eb := netip.ParseAddr(hb)
	if ea == nil && eb == nil {
		return ia.Unmap() == ib.Unmap()
	}
	return strings.EqualFold(ha, hb)
}

const checkConfigUsage = `Usage: ftpalg check-config FILE [flags of ftpalg run]

Reads FILE as ftpalg run --config FILE would, with the flags given over it,
checks it, and prints what would run. Exit status 0 when it is valid.
`

// leadingKeys are shown first in a front end's summary.
var leadingKeys = []string{"mode", "listen", "upstream", "advertise", "data-ports"}

// checkConfigCmd is `ftpalg check-config FILE [flags]`: it loads the
// file as `run --config` does and prints a summary of what would run, or
// the error. It returns the exit status.
func checkConfigCmd(args []string, stdout, stderr io.Writer) int {
	var (
		g    globalFlags
		f    frontendFlags
		file string
	)
	fs := runFlagSet("ftpalg check-config", stderr, &g, &f, &file)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), checkConfigUsage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ftpalg check-config: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if file == "" {
		fmt.Fprint(stderr, checkConfigUsage)
		return 2
	}
	rc, err := loadConfig(file, given(fs))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	printSummary(stdout, rc)
	return 0
}

// printSummary prints what rc runs: the global settings, then each front
// end's (the keys a reverse front end ignores left out).
func printSummary(w io.Writer, rc runConfig) {
	n := len(rc.frontends)
	fmt.Fprintf(w, "%s: valid, %d front end%s\n", rc.file, n, map[bool]string{true: "s"}[n != 1])
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\nglobal")
	for _, k := range sortedKeys(rc.settings) {
		fmt.Fprintf(tw, "  %s\t%s\n", k, orNone(rc.settings[k]))
	}
	for _, fe := range rc.frontends {
		mode := "reverse"
		if fe.proxy.Transparent {
			mode = "transparent, " + fe.mode.String()
		}
		fmt.Fprintf(tw, "\nfrontend %q (%s)\n", fe.name, mode)
		keys := append([]string(nil), leadingKeys...)
		for _, k := range sortedKeys(fe.settings) {
			if !slices.Contains(leadingKeys, k) && (fe.proxy.Transparent || !transparentOnlyKeys[k]) {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			v := fe.settings[k]
			switch {
			case k == "listen":
				v = strings.Join(fe.plainListen(), ", ")
			case k == "listen-implicit":
				v = strings.Join(fe.implicit, ", ")
			case k == "upstream" && fe.proxy.Transparent:
				v = "(each connection's original destination)"
			}
			fmt.Fprintf(tw, "  %s\t%s\n", k, orNone(v))
		}
	}
	tw.Flush()
}
