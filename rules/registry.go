package rules

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// Driver is how a backend package makes itself known to New and Detect. The
// backends live in packages of their own (rules/ipset, rules/iptables) that
// import this one, so this one cannot import them: each registers in its
// init, and a program links the backends it wants with a blank import:
//
//	import (
//		_ "github.com/ftpalg/ftpalg/rules/ipset"
//		_ "github.com/ftpalg/ftpalg/rules/iptables"
//	)
type Driver struct {
	// Name is the --firewall name.
	Name string
	// Preference orders Detect's choice: lower is tried first.
	Preference int
	// New builds the backend; it touches no kernel state.
	New func(Options) (Backend, error)
	// Probe checks, in the calling thread's network namespace, that the
	// backend would work here, and leaves nothing behind. nil means usable.
	Probe func(ctx context.Context, opts Options) error
}

var (
	driversMu sync.Mutex
	drivers   = map[string]Driver{}
)

// Register makes a backend available to New and Detect. It panics on a
// duplicate or empty name: that is a programming error found at init.
func Register(d Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if d.Name == "" || d.New == nil {
		panic("rules: Register: a driver needs a Name and New")
	}
	if _, dup := drivers[d.Name]; dup || d.Name == "none" {
		panic("rules: Register: duplicate backend " + d.Name)
	}
	drivers[d.Name] = d
}

// Names returns the backend names New accepts, "none" last.
func Names() []string {
	ds := sortedDrivers()
	out := make([]string, 0, len(ds)+1)
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return append(out, "none")
}

func sortedDrivers() []Driver {
	driversMu.Lock()
	ds := make([]Driver, 0, len(drivers))
	for _, d := range drivers {
		ds = append(ds, d)
	}
	driversMu.Unlock()
	slices.SortFunc(ds, func(a, b Driver) int {
		if a.Preference != b.Preference {
			return a.Preference - b.Preference
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ds
}

// New builds the backend called name: "none" or a registered one ("ipset",
// "iptables"). It touches no kernel state; Setup does.
func New(name string, opts Options) (Backend, error) {
	if err := opts.Check(); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if name == "none" {
		return None{}, nil
	}
	driversMu.Lock()
	d, ok := drivers[name]
	driversMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q: this build knows %s", ErrUnknownBackend, name, strings.Join(Names(), ", "))
	}
	return d.New(opts)
}

// Detect chooses the best backend that works on this host, in the calling
// thread's network namespace: the registered backends in order of
// preference (ipset, then iptables), each probed (the ipset probe creates
// and destroys a throwaway hash:ip,port,ip set and a chain matching it),
// else "none". reason says why, naming each backend passed over and its
// error; it is also logged.
func Detect(ctx context.Context, log *zap.Logger) (name string, reason string) {
	return detect(ctx, log, sortedDrivers())
}

func detect(ctx context.Context, log *zap.Logger, ds []Driver) (name string, reason string) {
	if log == nil {
		log = zap.NewNop()
	}
	var skipped []string
	for _, d := range ds {
		if d.Probe == nil {
			continue
		}
		err := d.Probe(ctx, Options{Logger: log})
		if err == nil {
			reason = d.Name + " works here"
			if len(skipped) > 0 {
				reason += "; passed over: " + strings.Join(skipped, "; ")
			}
			log.Info("firewall backend detected", zap.String("backend", d.Name), zap.String("reason", reason))
			return d.Name, reason
		}
		skipped = append(skipped, err.Error())
	}
	reason = "no pinhole backend works here: open --data-ports statically"
	if len(skipped) > 0 {
		reason += "; " + strings.Join(skipped, "; ")
	}
	log.Warn("firewall backend detected", zap.String("backend", "none"), zap.String("reason", reason))
	return "none", reason
}
