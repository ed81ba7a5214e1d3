package main

import (
	"errors"
	"fmt"
	"reflect"
	"slices"

	"go.uber.org/zap/zapcore"
)

// A reload (SIGHUP with --config) reads the file again with the same
// command-line flags over it, and either applies all of the new
// configuration or none of it. planReload works out what changes, as a
// pure function of the running and the new configuration; run carries
// the plan out (run.go, applyReload).
//
// What a reload changes:
//   - log-level;
//   - a front end's proxy settings (upstream, advertise, data-ports,
//     limits, timeouts, upstream-source...): sessions admitted from then
//     on get them, running sessions keep theirs (proxy.Server.Reconfigure);
//   - a front end's TLS certificates, keys and CA files, read again on
//     every reload (sessions admitted from then on get them);
//   - a reverse front end's listen addresses: new ones are opened before
//     anything else changes (a failure to bind rejects the reload), the
//     ones no longer listed are closed; sessions accepted on them go on;
//   - front ends: new ones start; removed ones stop accepting and their
//     sessions drain in the background, for the shutdown grace.
//
// What needs a restart, and rejects the reload when it changed: every
// other global key (the firewall backend, its instance and iptables
// variant, the data path, metrics-listen, the log format, the firewall
// check interval, shutdown-grace, keep-firewall-hooks), a front end's
// mode, and the transparent front end's interception (its listen
// address and the interception keys), including adding or removing a
// transparent front end.

// reloadableGlobal are the global keys a reload may change.
var reloadableGlobal = map[string]bool{"log-level": true}

// interceptionKeys are the keys of a transparent front end that only a
// restart changes: its interception rules are installed at start, for its
// listener.
var interceptionKeys = []string{"listen", "interception", "intercept", "intercept-port", "intercept-table", "intercept-mark", "divert"}

// transparentOnlyKeys are the keys a reverse front end does not use.
var transparentOnlyKeys = map[string]bool{"interception": true, "intercept": true, "intercept-port": true,
	"intercept-table": true, "intercept-mark": true, "divert": true, "upstream-source": true}

// reloadPlan is what a reload changes in the running process.
type reloadPlan struct {
	// level is the new log level, when it changed.
	level *zapcore.Level
	// change lists the front ends that stay and change, in the new
	// configuration's order.
	change []frontendChange
	// add are the new front ends, remove the names of those gone.
	add    []frontend
	remove []string
	// summary says what changes, one item per change, for the log.
	summary []string
}

// frontendChange is what a reload changes in a running front end.
type frontendChange struct {
	fe frontend // its new configuration
	// open and close are listen addresses to open and to close.
	open, close []string
	// reconfigure is set when new sessions get another proxy.Config.
	reconfigure bool
}

// planReload returns what going from the running configuration old to
// next changes, or, when next changes something only a restart can, an
// error naming each such key (the running configuration then stays).
func planReload(old, next runConfig) (reloadPlan, error) {
	var p reloadPlan
	var errs []error
	for _, k := range sortedKeys(next.settings) {
		o, n := old.settings[k], next.settings[k]
		if o == n {
			continue
		}
		if !reloadableGlobal[k] {
			errs = append(errs, fmt.Errorf("%s: %q → %q needs a restart", k, o, n))
			continue
		}
		p.summary = append(p.summary, fmt.Sprintf("%s %s → %s", k, o, n))
	}
	if old.logLevel != next.logLevel {
		lvl := next.logLevel
		p.level = &lvl
	}
	running := map[string]frontend{}
	for _, fe := range old.frontends {
		running[fe.name] = fe
	}
	kept := map[string]bool{}
	for _, fe := range next.frontends {
		was, ok := running[fe.name]
		if !ok {
			if fe.proxy.Transparent {
				errs = append(errs, fmt.Errorf("frontend %q: a transparent front end can only be added by a restart (its interception is installed at start)", fe.name))
				continue
			}
			p.add = append(p.add, fe)
			p.summary = append(p.summary, fmt.Sprintf("frontend %q added (listen %s)", fe.name, joinList(fe.listen)))
			continue
		}
		kept[fe.name] = true
		c, summary, err := planFrontend(was, fe)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(summary) > 0 {
			p.change = append(p.change, c)
			p.summary = append(p.summary, summary...)
		}
	}
	for _, fe := range old.frontends {
		if kept[fe.name] {
			continue
		}
		if fe.proxy.Transparent {
			errs = append(errs, fmt.Errorf("frontend %q: the transparent front end can only be removed by a restart (its interception stays until then)", fe.name))
			continue
		}
		p.remove = append(p.remove, fe.name)
		p.summary = append(p.summary, fmt.Sprintf("frontend %q removed (its sessions drain)", fe.name))
	}
	errs = append(errs, checkHandover(old, p)...)
	if err := errors.Join(errs...); err != nil {
		return reloadPlan{}, err
	}
	return p, nil
}

// checkHandover refuses to open an address that one the reload closes
// still holds: new addresses are bound before old ones are closed, so a
// front end renamed with its addresses, an address moved between front
// ends or respelled (":21" as "0.0.0.0:21") takes two reloads.
func checkHandover(old runConfig, p reloadPlan) []error {
	type held struct{ frontend, addr string }
	var closing []held
	for _, c := range p.change {
		for _, a := range c.close {
			closing = append(closing, held{c.fe.name, a})
		}
	}
	for _, fe := range old.frontends {
		if slices.Contains(p.remove, fe.name) {
			for _, a := range fe.listen {
				closing = append(closing, held{fe.name, a})
			}
		}
	}
	var errs []error
	check := func(name string, addrs []string) {
		for _, a := range addrs {
			for _, h := range closing {
				if listenOverlap(a, h.addr) {
					errs = append(errs, fmt.Errorf("frontend %q: listen %s: front end %q holds %s until this reload is done "+
						"(new addresses are opened first): move it in two reloads, one that closes it and one that opens it", name, a, h.frontend, h.addr))
				}
			}
		}
	}
	for _, c := range p.change {
		check(c.fe.name, c.open)
	}
	for _, fe := range p.add {
		check(fe.name, fe.listen)
	}
	return errs
}

// planFrontend is what changes in a front end that stays, with one
// summary item per changed key.
func planFrontend(was, fe frontend) (frontendChange, []string, error) {
	c := frontendChange{fe: fe}
	if was.proxy.Transparent != fe.proxy.Transparent {
		return c, nil, fmt.Errorf("frontend %q: mode: %s → %s needs a restart", fe.name, was.settings["mode"], fe.settings["mode"])
	}
	var errs []error
	if fe.proxy.Transparent {
		for _, k := range interceptionKeys {
			if was.settings[k] != fe.settings[k] {
				errs = append(errs, fmt.Errorf("frontend %q: %s: %q → %q needs a restart (the transparent front end's interception is set up at start)", fe.name, k, was.settings[k], fe.settings[k]))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, nil, err
	}
	var summary []string
	for _, a := range fe.listen {
		if !slices.Contains(was.listen, a) {
			c.open = append(c.open, a)
		}
	}
	for _, a := range was.listen {
		if !slices.Contains(fe.listen, a) {
			c.close = append(c.close, a)
		}
	}
	if len(c.open) > 0 || len(c.close) > 0 {
		summary = append(summary, fmt.Sprintf("frontend %q: listen %s → %s", fe.name, joinList(was.listen), joinList(fe.listen)))
	}
	for _, k := range sortedKeys(fe.settings) {
		if k == "listen" || !fe.proxy.Transparent && transparentOnlyKeys[k] || was.settings[k] == fe.settings[k] {
			continue
		}
		summary = append(summary, fmt.Sprintf("frontend %q: %s %s → %s", fe.name, k, orNone(was.settings[k]), orNone(fe.settings[k])))
	}
	c.reconfigure = !reflect.DeepEqual(was.proxy, fe.proxy)
	if !reflect.DeepEqual(was.tls, fe.tls) {
		// Also when only the files' content changed (a renewed
		// certificate under the same name).
		c.reconfigure = true
		summary = append(summary, fmt.Sprintf("frontend %q: TLS certificates and keys read again", fe.name))
	}
	if c.reconfigure && len(summary) == 0 {
		summary = append(summary, fmt.Sprintf("frontend %q: settings", fe.name))
	}
	return c, summary, nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func joinList(ss []string) string {
	if len(ss) == 0 {
		return "(none)"
	}
	return fmt.Sprint(ss)
}

func orNone(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
