package rules

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Restored is what one Sync put back into the kernel: empty when it found
// everything of ours in place.
type Restored struct {
	// Objects names each hook, chain, rule, set or route recreated, as
	// "iptables hook INPUT → FTPALG-INPUT", "ip6tables chain FTPALG-INPUT",
	// "set ftpalg-pinholes4", "ipv4 ip rule fwmark 0x1/0x1 lookup 100".
	Objects []string
	// Pinholes is how many pinholes were added again.
	Pinholes int
	// Mappings is how many kernel data path mappings (not used yet, within
	// their lifetime) were added again.
	Mappings int
	// Stray is how many pinholes (or mappings) the kernel held that this
	// process does not hold open (a saved ruleset or set restored with old
	// entries); they were removed.
	Stray int
}

// Empty reports whether r restored nothing.
func (r Restored) Empty() bool {
	return len(r.Objects) == 0 && r.Pinholes == 0 && r.Mappings == 0 && r.Stray == 0
}

// Add records one object restored.
func (r *Restored) Add(format string, args ...any) {
	r.Objects = append(r.Objects, fmt.Sprintf(format, args...))
}

// String reads "iptables hook INPUT → FTPALG-INPUT, iptables chain
// FTPALG-INPUT, 3 pinholes", or "nothing" when r is empty.
func (r Restored) String() string {
	parts := append([]string(nil), r.Objects...)
	if r.Pinholes > 0 {
		parts = append(parts, plural(r.Pinholes, "pinhole"))
	}
	if r.Mappings > 0 {
		parts = append(parts, plural(r.Mappings, "mapping"))
	}
	if r.Stray > 0 {
		parts = append(parts, "removed "+plural(r.Stray, "stray pinhole"))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// Syncer is a holder of kernel objects that can check them and put back
// what went missing: a Backend (its hooks, chains, sets and pinholes) or
// the interception rules of rules/intercept.
type Syncer interface {
	// Name names it in the log: "ipset", "iptables", "intercept".
	Name() string
	// Sync checks, cheaply, that its kernel objects are in place and, when
	// some are gone (a firewall reload replaced the ruleset), restores
	// them from what the process holds in memory, and says what it
	// restored. It runs in the calling thread's network namespace, which
	// must be the one Setup (Install) ran in. Before Setup and after
	// Teardown (Remove) it does nothing.
	Sync(ctx context.Context) (Restored, error)
}

// The messages Watch logs, so that tests and operators' alerting match
// them by name rather than by copied text.
const (
	// MsgWatching (Info) starts a Watch: what it checks and how often.
	MsgWatching = "checking the firewall objects periodically"
	// MsgRestored (Warn) says a Sync found objects of ours gone and put
	// them back; the fields say which ("restored") and whose ("firewall").
	MsgRestored = "firewall objects removed behind our back (ruleset reload?): restored"
	// MsgSyncFailed (Warn) is logged when a Sync fails, once per distinct
	// error: the check repeats every interval and the log should not.
	MsgSyncFailed = "firewall check failed"
	// MsgSyncRecovered (Info) follows MsgSyncFailed when a Sync works
	// again.
	MsgSyncRecovered = "firewall check works again"
)

// DefaultWatchInterval is how often Watch checks unless told otherwise: a
// firewall reload closes every pinhole until the next check, so the
// interval is what "within seconds" means. rules/README.md has the cost of
// a check per backend.
const DefaultWatchInterval = 2 * time.Second

// Watch calls every Syncer's Sync each interval, until ctx ends, and logs
// what they restored (MsgRestored) and how they fail (MsgSyncFailed, once
// per distinct error; MsgSyncRecovered when that passes). It blocks; an
// interval of zero or less returns at once. It must run in the network
// namespace the Syncers were set up in (a program's own namespace, for
// ftpalg).
func Watch(ctx context.Context, interval time.Duration, log *zap.Logger, ss ...Syncer) {
	if interval <= 0 || len(ss) == 0 {
		return
	}
	if log == nil {
		log = zap.NewNop()
	}
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = s.Name()
	}
	log.Info(MsgWatching, zap.Strings("firewall", names), zap.Duration("every", interval))
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := make([]string, len(ss)) // the error each last logged, "" when working
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, s := range ss {
			if ctx.Err() != nil {
				return
			}
			r, err := s.Sync(ctx)
			if !r.Empty() {
				log.Warn(MsgRestored, zap.String("firewall", s.Name()), zap.String("restored", r.String()),
					zap.Int("pinholes", r.Pinholes), zap.Int("mappings", r.Mappings))
			}
			switch {
			case err != nil && ctx.Err() != nil:
				return // cancelled half-way: the owner is tearing down
			case err != nil && err.Error() != failing[i]:
				log.Warn(MsgSyncFailed, zap.String("firewall", s.Name()), zap.Error(err),
					zap.Duration("retry_every", interval))
				failing[i] = err.Error()
			case err == nil && failing[i] != "":
				log.Info(MsgSyncRecovered, zap.String("firewall", s.Name()))
				failing[i] = ""
			}
		}
	}
}

// StartWatch runs Watch on a goroutine of its own, in the process's network
// namespace, and returns the function that ends it: stop cancels the watch and returns once no Sync runs any
// more, so that the owner may then tear the Syncers down without a Sync
// putting back what it removes. stop may be called more than once. With an
// interval of zero or less nothing is started.
func StartWatch(ctx context.Context, interval time.Duration, log *zap.Logger, ss ...Syncer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { Watch(ctx, interval, log, ss...) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// ReconcilePinholes brings the pinholes the kernel holds (have) to those
// this process holds open (held, a snapshot by key): restore adds one that
// is missing, remove takes out a stray, each reporting whether it changed
// the kernel; r counts them. A failure is wrapped with what (as "restore
// 203.0.113.9→192.0.2.1:50012") and the others are still tried. It is the
// pinhole part of a backend's Sync, the same for every backend.
func ReconcilePinholes[H any](r *Restored, have map[Key]Pinhole, held map[Key]H,
	restore func(Key, H) (bool, error), remove func(Pinhole) (bool, error), wrap func(what string, err error) error) []error {
	var errs []error
	for k, h := range held {
		if _, ok := have[k]; ok {
			continue
		}
		added, err := restore(k, h)
		if err != nil {
			errs = append(errs, wrap("restore "+k.Peer.String()+"→"+k.Local.String(), err))
			continue
		}
		if added {
			r.Pinholes++
		}
	}
	for k, p := range have {
		if _, ok := held[k]; ok {
			continue
		}
		removed, err := remove(p)
		if err != nil {
			errs = append(errs, wrap("remove stray "+p.Peer.String()+"→"+p.Local.String(), err))
			continue
		}
		if removed {
			r.Stray++
		}
	}
	return errs
}
