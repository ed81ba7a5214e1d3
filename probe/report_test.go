package probe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// jsonFields returns every JSON field path of t ("modes[].list.bytes")
// with its JSON type: string, bool, number, object, array.
func jsonFields(t reflect.Type, prefix string, out map[string]string) {
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		path := prefix + tag
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch ft.Kind() {
		case reflect.String:
			out[path] = "string"
		case reflect.Bool:
			out[path] = "bool"
		case reflect.Int, reflect.Int64, reflect.Float64:
			out[path] = "number"
		case reflect.Struct:
			out[path] = "object"
			jsonFields(ft, path+".", out)
		case reflect.Slice:
			out[path] = "array"
			if ft.Elem().Kind() == reflect.Struct {
				jsonFields(ft.Elem(), path+"[].", out)
			}
		default:
			out[path] = "?" + ft.Kind().String()
		}
	}
}

// documentedFields reads the field list of doc.go's "Report fields".
func documentedFields(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^//\t([a-z_.\[\]]+)\s+(string|bool|number|object|array)\b`)
	out := map[string]string{}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "// # ") {
			in = l == "// # Report fields"
			continue
		}
		if m := line.FindStringSubmatch(l); in && m != nil {
			if _, dup := out[m[1]]; dup {
				t.Errorf("doc.go lists %s twice", m[1])
			}
			out[m[1]] = m[2]
		}
	}
	if len(out) == 0 {
		t.Fatal("no fields found in doc.go's Report fields")
	}
	return out
}

// TestJSONFieldsDocumented: the JSON field names are an interface; every
// one is in doc.go's list with its type, and the list has nothing else.
func TestJSONFieldsDocumented(t *testing.T) {
	code := map[string]string{}
	jsonFields(reflect.TypeFor[Report](), "", code)
	doc := documentedFields(t)
	for p, typ := range code {
		switch d, ok := doc[p]; {
		case !ok:
			t.Errorf("field %s (%s) is not documented in doc.go", p, typ)
		case d != typ:
			t.Errorf("field %s is a %s, doc.go says %s", p, typ, d)
		}
	}
	for p := range doc {
		if _, ok := code[p]; !ok {
			t.Errorf("doc.go documents %s, which the Report does not have", p)
		}
	}
}

// TestJSONEncoding: a report encodes with exactly the documented fields,
// all present (no omitempty), and decodes back strictly.
func TestJSONEncoding(t *testing.T) {
	f := newFake(t)
	f.Feat = "211-Features:\r\n EPSV\r\n AUTH TLS\r\n211 End" // a finding (auth-tls) to encode
	f.start()
	r := probeT(t, f, Options{Active: true})
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var raw any
	if err := json.Unmarshal(js, &raw); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	walkJSON(raw, "", got)
	doc := documentedFields(t)
	for p := range doc {
		if !got[p] {
			t.Errorf("documented field %s missing from the JSON", p)
		}
	}
	for p := range got {
		if _, ok := doc[p]; !ok {
			t.Errorf("JSON field %s is not documented", p)
		}
	}
	// Stable names of the values scripts branch on.
	for _, v := range Verdicts {
		if !regexp.MustCompile(`^[a-z]+(-[a-z]+)*$`).MatchString(string(v)) {
			t.Errorf("verdict %q", v)
		}
	}
	docText, _ := os.ReadFile("doc.go")
	for _, v := range Verdicts {
		if !regexp.MustCompile(`(?m)^//\t` + regexp.QuoteMeta(string(v)) + `\s`).Match(docText) {
			t.Errorf("verdict %s is not documented in doc.go", v)
		}
	}
	codes := []string{FindControlConnect, FindControlGreeting, FindLogin, FindPassiveRefused, FindActiveRefused, FindModeReply, FindPrivilegedPort,
		FindAnnouncedPrivate, FindAnnouncedDiffers, FindDataTimeout, FindDataRefused, FindDataUnreachable, FindDataError,
		FindListFailed, FindActiveNoConnect, FindAuthTLS, FindIncomplete}
	for _, c := range codes {
		if !bytes.Contains(docText, []byte(" "+c+",")) && !bytes.Contains(docText, []byte(" "+c+".")) {
			t.Errorf("finding code %s is not documented in doc.go", c)
		}
	}
	if len(slices.Compact(slices.Sorted(slices.Values(codes)))) != len(codes) {
		t.Errorf("finding codes are not unique: %v", codes)
	}
}

// walkJSON records the paths of a decoded JSON value in the notation of
// doc.go.
func walkJSON(v any, prefix string, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			out[prefix+k] = true
			walkJSON(e, prefix+k+".", out)
		}
	case []any:
		p := strings.TrimSuffix(prefix, ".") + "[]."
		for _, e := range x {
			walkJSON(e, p, out)
		}
	}
}
