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

// registry holds the registered drivers of one kind (pinhole backends,
// kernel data paths) by name.
type registry[D any] struct {
	fn      string                // the registering function, for its panics
	builtin string                // the name no driver may take ("none", Splice)
	key     func(D) (string, int) // a driver's name and preference
	ok      func(D) bool          // whether a driver is complete
	mu      sync.Mutex
	m       map[string]D
}

// register adds d. It panics on a duplicate or empty name: that is a
// programming error found at init.
func (r *registry[D]) register(d D) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name, _ := r.key(d)
	if name == "" || !r.ok(d) {
		panic("rules: " + r.fn + ": a driver needs a Name and New")
	}
	if _, dup := r.m[name]; dup || name == r.builtin {
		panic("rules: " + r.fn + ": duplicate " + name)
	}
	if r.m == nil {
		r.m = map[string]D{}
	}
	r.m[name] = d
}

func (r *registry[D]) get(name string) (D, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.m[name]
	return d, ok
}

// sorted returns the drivers by preference (lower first), then name.
func (r *registry[D]) sorted() []D {
	r.mu.Lock()
	ds := make([]D, 0, len(r.m))
	for _, d := range r.m {
		ds = append(ds, d)
	}
	r.mu.Unlock()
	slices.SortFunc(ds, func(a, b D) int {
		an, ap := r.key(a)
		bn, bp := r.key(b)
		if ap != bp {
			return ap - bp
		}
		return strings.Compare(an, bn)
	})
	return ds
}

// names returns the drivers' names in order, the built-in one last.
func (r *registry[D]) names() []string {
	var out []string
	for _, d := range r.sorted() {
		name, _ := r.key(d)
		out = append(out, name)
	}
	return append(out, r.builtin)
}

var drivers = registry[Driver]{fn: "Register", builtin: "none",
	key: func(d Driver) (string, int) { return d.Name, d.Preference },
	ok:  func(d Driver) bool { return d.New != nil }}

// Register makes a backend available to New and Detect. It panics on a
// duplicate or empty name: that is a programming error found at init.
func Register(d Driver) { drivers.register(d) }

// Names returns the backend names New accepts, "none" last.
func Names() []string { return drivers.names() }

// New builds the backend called name: "none" or a registered one ("ipset",
// "iptables"). It touches no kernel state; Setup does.
func New(name string, opts Options) (Backend, error) {
	if err := opts.Check(); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if name == "none" {
		return None{}, nil
	}
	d, ok := drivers.get(name)
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
	return detect(ctx, log, drivers.sorted())
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

var dataPaths = registry[DataPathDriver]{fn: "RegisterDataPath", builtin: Splice,
	key: func(d DataPathDriver) (string, int) { return d.Name, d.Preference },
	ok:  func(d DataPathDriver) bool { return d.New != nil }}

// RegisterDataPath makes a kernel data path available to NewDataPath and
// DetectDataPath. It panics on a duplicate or empty name.
func RegisterDataPath(d DataPathDriver) { dataPaths.register(d) }

// DataPathNames returns the data path names NewDataPath accepts, Splice
// last.
func DataPathNames() []string { return dataPaths.names() }

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
	d, ok := dataPaths.get(name)
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
	return detectDataPath(ctx, opts, dataPaths.sorted())
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
