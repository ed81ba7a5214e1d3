// Package ftptest loads the FTP control-channel test vectors
// (testdata/*vectors*.json, format in docs/ftp-vectors.md) for the codec and
// relay tests of other packages.
package ftptest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Vector is one test case: a reply or command line with its expected parse
// and the action a correct ALG takes.
type Vector struct {
	ID        string   `json:"id"`
	Kind      string   `json:"kind"` // "reply" or "command"
	Direction string   `json:"direction"`
	Bytes     string   `json:"bytes"` // Latin-1: each rune is one byte
	Chunks    []string `json:"chunks"`
	Source    string   `json:"source"`
	Expect    Expect   `json:"expect"`
	Context   Context  `json:"context"`
	File      string   `json:"-"`
	// Erratum explains a correction applied from testdata/errata.json.
	Erratum string `json:"-"`
}

// Expect is a vector's expected outcome.
type Expect struct {
	Parse      string   `json:"parse"` // pasv epsv eprt port lprt lpsv none error
	IP         *string  `json:"ip"`
	Port       *int     `json:"port"`
	Family     *int     `json:"family"`
	Code       *int     `json:"code"`
	Action     string   `json:"action"` // rewrite pass-through no-pinhole reject close
	Acceptable []string `json:"acceptable"`
	Forbidden  any      `json:"forbidden"`
	Multiline  bool     `json:"multiline"`
	Lines      *int     `json:"lines"`
	DataTarget string   `json:"data_target"`
}

// Context is what the line answers or where it comes from.
type Context struct {
	Request       string `json:"request"`
	ControlFamily int    `json:"control_family"`
	ClientAddr    string `json:"client_addr"`
	EPSVAll       bool   `json:"epsv_all"`
}

// Raw returns the vector's bytes decoded from Latin-1.
func (v *Vector) Raw() []byte { return latin1(v.Bytes) }

// RawChunks returns the reads to feed, one chunk per read.
func (v *Vector) RawChunks() [][]byte {
	if len(v.Chunks) == 0 {
		return [][]byte{v.Raw()}
	}
	out := make([][]byte, len(v.Chunks))
	for i, c := range v.Chunks {
		out[i] = latin1(c)
	}
	return out
}

// Allows reports whether action is the expected action or an acceptable
// alternative.
func (v *Vector) Allows(action string) bool {
	if action == v.Expect.Action {
		return true
	}
	for _, a := range v.Expect.Acceptable {
		if a == action {
			return true
		}
	}
	return false
}

func latin1(s string) []byte {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		b = append(b, byte(r))
	}
	return b
}

// Load reads every *vectors*.json file in dir, in name order. Dropping
// another vector file of the same format into the folder adds its cases.
func Load(dir string) ([]Vector, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*vectors*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("ftptest: no vector files in %s", dir)
	}
	var all []Vector
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var vs []Vector
		if err := json.Unmarshal(data, &vs); err != nil {
			return nil, fmt.Errorf("ftptest: %s: %w", f, err)
		}
		for i := range vs {
			vs[i].File = filepath.Base(f)
			for _, r := range vs[i].Bytes {
				if r > 0xFF {
					return nil, fmt.Errorf("ftptest: %s: %s: rune %U is not Latin-1", f, vs[i].ID, r)
				}
			}
		}
		all = append(all, vs...)
	}
	return all, applyErrata(dir, all)
}

// erratum corrects a published case whose expectation contradicts its own
// bytes. Only the fields named are replaced; Why is mandatory.
type erratum struct {
	Lines *int   `json:"lines"`
	Why   string `json:"why"`
}

func applyErrata(dir string, vs []Vector) error {
	data, err := os.ReadFile(filepath.Join(dir, "errata.json"))
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	var errata map[string]erratum
	if err := json.Unmarshal(data, &errata); err != nil {
		return fmt.Errorf("ftptest: errata.json: %w", err)
	}
	for i := range vs {
		e, ok := errata[vs[i].ID]
		if !ok {
			continue
		}
		if e.Why == "" {
			return fmt.Errorf("ftptest: erratum for %s gives no reason", vs[i].ID)
		}
		if e.Lines != nil {
			vs[i].Expect.Lines = e.Lines
		}
		vs[i].Erratum = e.Why
	}
	return nil
}
