// Package rulestest provides a stateful fake rules.Backend for other
// packages' tests. It lives in a normal file so any test can import it.
package rulestest

import (
	"context"
	"fmt"
	"sync"

	"github.com/ftpalg/ftpalg/rules"
)

// Fake records pinholes in memory and can be told to fail.
type Fake struct {
	mu       sync.Mutex
	open     map[rules.Pinhole]int
	opened   int
	closed   int
	FailOpen error // returned by Open when set
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{open: map[rules.Pinhole]int{}} }

func (f *Fake) Name() string                   { return "fake" }
func (f *Fake) Setup(context.Context) error    { return nil }
func (f *Fake) Teardown(context.Context) error { return nil }

// Open records p. Opening the same pinhole twice is a bug in the caller and
// is reported as an error.
func (f *Fake) Open(_ context.Context, p rules.Pinhole) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailOpen != nil {
		return f.FailOpen
	}
	if f.open[p] > 0 {
		return fmt.Errorf("rulestest: pinhole %s opened twice", p)
	}
	f.open[p]++
	f.opened++
	return nil
}

// Close forgets p; closing an unknown pinhole is fine, as for real backends.
func (f *Fake) Close(_ context.Context, p rules.Pinhole) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open[p] > 0 {
		delete(f.open, p)
		f.closed++
	}
	return nil
}

// Pinholes returns the pinholes open now.
func (f *Fake) Pinholes() []rules.Pinhole {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]rules.Pinhole, 0, len(f.open))
	for p := range f.open {
		out = append(out, p)
	}
	return out
}

// Counts returns how many pinholes were opened and closed in all.
func (f *Fake) Counts() (opened, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opened, f.closed
}

// List returns the pinholes open now, as a rules.Lister.
func (f *Fake) List(context.Context) ([]rules.Pinhole, error) { return f.Pinholes(), nil }

// Flush forgets every open pinhole, as a rules.Lister.
func (f *Fake) Flush(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.open)
	return nil
}

var _ rules.Lister = (*Fake)(nil)
