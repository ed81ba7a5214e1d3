package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/probe"
)

// TestProbeConfig goes from the arguments of `ftpalg probe` to the
// probe.Options it runs with, or the error it stops with.
func TestProbeConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want probeConfig
		err  string // a part of the error
	}{
		{name: "defaults", args: []string{"ftp://192.0.2.10"},
			want: probeConfig{opts: probe.Options{URL: "ftp://192.0.2.10", Timeout: 20 * time.Second}}},
		{name: "everything", args: []string{"--active", "--json", "--timeout", "5s", "ftp://bob:pw@192.0.2.10:2121/pub"},
			want: probeConfig{json: true, opts: probe.Options{URL: "ftp://bob:pw@192.0.2.10:2121/pub", Active: true, Timeout: 5 * time.Second}}},
		{name: "flags-after-url", args: []string{"ftp://192.0.2.10", "--json", "-timeout=2s"},
			want: probeConfig{json: true, opts: probe.Options{URL: "ftp://192.0.2.10", Timeout: 2 * time.Second}}},
		{name: "no-url", args: []string{"--json"}, err: "which server"},
		{name: "two-urls", args: []string{"ftp://a", "ftp://b"}, err: "one URL, not 2"},
		{name: "zero-timeout", args: []string{"--timeout", "0s", "ftp://a"}, err: "--timeout 0s"},
		{name: "negative-timeout", args: []string{"--timeout", "-1s", "ftp://a"}, err: "want more than 0"},
		{name: "bad-timeout", args: []string{"--timeout", "soon", "ftp://a"}, err: "invalid value"},
		{name: "unknown-flag", args: []string{"--passive", "ftp://a"}, err: "flag provided but not defined"},
		{name: "help", args: []string{"-h"}, err: flag.ErrHelp.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			got, err := parseProbe(tc.args, &out)
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want one with %q", err, tc.err)
				}
			case err != nil:
				t.Errorf("error %v", err)
			case got.json != tc.want.json || got.opts.URL != tc.want.opts.URL || got.opts.Active != tc.want.opts.Active ||
				got.opts.Timeout != tc.want.opts.Timeout || got.opts.Dial != nil || got.opts.Listen != nil:
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if errors.Is(err, flag.ErrHelp) && !strings.Contains(out.String(), "Exit status: 0 data transfers work") {
				t.Errorf("help text:\n%s", out.String())
			}
		})
	}
}

// TestProbeExitStatus: 2 for usage errors, 1 when data transfers do not
// work (here: nothing listens), with the report on stdout.
func TestProbeExitStatus(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		args   []string
		status int
		stdout string // a part of it
		stderr string
	}{
		{[]string{}, probeExitUsage, "", "which server"},
		{[]string{"ftps://192.0.2.10"}, probeExitUsage, "", "only plain FTP"},
		{[]string{"ftp://bob:s3cret@" + closed}, probeExitFail, "control-failed: no FTP control connection", ""},
		{[]string{"--json", "ftp://bob:s3cret@" + closed}, probeExitFail, `"verdict": "control-failed"`, ""},
		{[]string{"--help"}, probeExitOK, "", "Usage: ftpalg probe"},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := probeCmd(append([]string{"--timeout", "2s"}, tc.args...), &stdout, &stderr)
			if status != tc.status || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("status %d, want %d\nstdout:\n%s\nstderr:\n%s", status, tc.status, stdout.String(), stderr.String())
			}
			if strings.Contains(stdout.String()+stderr.String(), "s3cret") {
				t.Errorf("the password was printed")
			}
			if strings.Contains(tc.stdout, `"verdict"`) {
				dec := json.NewDecoder(&stdout)
				dec.DisallowUnknownFields()
				var r probe.Report
				if err := dec.Decode(&r); err != nil || r.Verdict != probe.VerdictControlFailed || r.User != "bob" {
					t.Errorf("report %+v, %v", r, err)
				}
			}
		})
	}
}
