package main

import "fmt"

// faultResult is one fault: what was done, what the client saw, what the
// proxy logged and how long it took to happen.
type faultResult struct {
	name       string
	did        string
	client     string
	logged     string
	after      string
	unexpected []string
}

func (r *faultResult) expect(ok bool, format string, args ...any) {
	if !ok {
		r.unexpected = append(r.unexpected, fmt.Sprintf(format, args...))
	}
}

func (r *faultResult) print() {
	fmt.Printf("\n-- %s: %s\n   client: %s\n   proxy:  %s\n   after:  %s\n", r.name, r.did, r.client, r.logged, r.after)
	for _, u := range r.unexpected {
		fmt.Printf("   UNEXPECTED: %s\n", u)
	}
}

// runFaults runs the faults --faults names, each against a fresh proxy. A
// fault that could not be run says so in its result.
func (e *env) runFaults() []faultResult {
	fmt.Printf("\n== faults (each against a fresh proxy: --log-format json --log-level info --firewall none) ==\n")
	var out []faultResult
	for _, f := range []struct {
		name string
		run  func() (faultResult, error)
	}{
		{"sigterm", e.faultSigterm},
		{"server-gone", e.faultServerGone},
		{"server-killed", e.faultServerKilled},
		{"client-stalls", e.faultClientStalls},
		{"slowloris", e.faultSlowloris},
		{"garbage", e.faultGarbage},
		{"nofile", func() (faultResult, error) { return e.faultNofile(e.o.fdLimit) }},
		{"nofile", func() (faultResult, error) { return e.faultNofile(e.o.fdLimit + 1) }},
	} {
		if !e.o.faults[f.name] {
			continue
		}
		r, err := f.run()
		if r.name == "" {
			r.name = f.name
		}
		if err != nil {
			r.unexpected = append(r.unexpected, "could not run: "+err.Error())
		}
		r.print()
		out = append(out, r)
	}
	return out
}
