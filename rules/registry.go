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

// DataPathDriver is how a kernel data path package (rules/nftpath) makes
// itself known to NewDataPath and DetectDataPath, as Driver does for the
// pinhole backends: it registers in its init, and a program links it with
// a blank import.
type DataPathDriver struct {
	// Name is the --data-path name ("nftables").
	Name string
	// Preference orders DetectDataPath's choice: lower is tried first.
	Preference int
	// New builds the data path; it touches no kernel state.
	New func(Options) (DataPath, error)
	// Probe checks, in the calling thread's network namespace, that the
	// data path would work here (kernel features, forwarding, nothing
	// that would drop the forwarded connections), and leaves nothing
	// behind. nil means usable; otherwise an *Error whose Hint says what
	// to change.
	Probe func(ctx context.Context, opts Options) error
}

// Splice is the data path that is no kernel data path: the proxy relays
// data connections through its own sockets (splice(2)). NewDataPath
// returns a nil DataPath for it.
const Splice = "splice"

var (
	dataPathsMu sync.Mutex
	dataPaths   = map[string]DataPathDriver{}
)

// RegisterDataPath makes a kernel data path available to NewDataPath and
// DetectDataPath. It panics on a duplicate or empty name.
func RegisterDataPath(d DataPathDriver) {
	dataPathsMu.Lock()
	defer dataPathsMu.Unlock()
	if d.Name == "" || d.New == nil {
		panic("rules: RegisterDataPath: a driver needs a Name and New")
	}
	if _, dup := dataPaths[d.Name]; dup || d.Name == Splice {
		panic("rules: RegisterDataPath: duplicate data path " + d.Name)
	}
	dataPaths[d.Name] = d
}

// DataPathNames returns the data path names NewDataPath accepts, Splice
// last.
func DataPathNames() []string {
	var out []string
	for _, d := range sortedDataPaths() {
		out = append(out, d.Name)
	}
	return append(out, Splice)
}

func sortedDataPaths() []DataPathDriver {
	dataPathsMu.Lock()
	ds := make([]DataPathDriver, 0, len(dataPaths))
	for _, d := range dataPaths {
		ds = append(ds, d)
	}
	dataPathsMu.Unlock()
	slices.SortFunc(ds, func(a, b DataPathDriver) int {
		if a.Preference != b.Preference {
			return a.Preference - b.Preference
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ds
}

// NewDataPath builds the data path called name: a registered one
// ("nftables"), or Splice, for which it returns nil and no error (the
// proxy's Config.DataPath nil: every data connection is spliced). It
// touches no kernel state; Setup does.
func NewDataPath(name string, opts Options) (DataPath, error) {
	if err := opts.Check(); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if name == Splice {
		return nil, nil
	}
	dataPathsMu.Lock()
	d, ok := dataPaths[name]
	dataPathsMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q: this build knows %s", ErrUnknownDataPath, name, strings.Join(DataPathNames(), ", "))
	}
	return d.New(opts)
}

// DetectDataPath chooses the data path for --data-path auto, in the
// calling thread's network namespace: the first registered kernel data
// path whose probe passes, else Splice. reason says why, naming each data
// path passed over and its error (which carries the fix); it is also
// logged, to opts.Logger. Run it after the pinhole backend's Setup: the
// probe looks for what admits forwarded connections, and the backend's
// FORWARD hook is one such thing.
func DetectDataPath(ctx context.Context, opts Options) (name string, reason string) {
	return detectDataPath(ctx, opts, sortedDataPaths())
}

func detectDataPath(ctx context.Context, opts Options, ds []DataPathDriver) (name string, reason string) {
	log := opts.Log()
	var skipped []string
	for _, d := range ds {
		if d.Probe == nil {
			continue
		}
		err := d.Probe(ctx, opts)
		if err == nil {
			reason = d.Name + " works here"
			if len(skipped) > 0 {
				reason += "; passed over: " + strings.Join(skipped, "; ")
			}
			log.Info("data path detected", zap.String("data_path", d.Name), zap.String("reason", reason))
			return d.Name, reason
		}
		skipped = append(skipped, err.Error())
	}
	reason = "no kernel data path works here: data connections are spliced by ftpalg"
	if len(skipped) > 0 {
		reason += "; " + strings.Join(skipped, "; ")
	}
	log.Warn("data path detected", zap.String("data_path", Splice), zap.String("reason", reason))
	return Splice, reason
}
