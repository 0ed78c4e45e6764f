package cli

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/homeport/homeport/internal/reload"
)

// Reloader runs a program's configuration reloads, one at a time, from
// every trigger (SIGHUP, the file's changes, the control socket), and
// keeps what the status shows of them. T is what a reload reports of its
// changes.
type Reloader[T any] struct {
	File string // the configuration file, "" for none
	Log  *slog.Logger
	// HUP: SIGHUP reloads. Off for a program on a terminal, whose
	// SIGHUP means the terminal went away (see NewReloader).
	HUP bool
	// Apply loads the configuration again and puts it in force, or
	// changes nothing and returns every mistake (errors.Join). attrs
	// describe the changes for the log line.
	Apply func() (changes T, attrs []any, err error)

	mu       sync.Mutex
	loaded   time.Time
	count    int
	lastErr  string
	lastFail time.Time
}

// NewReloader returns a reloader whose first load is now. SIGHUP reloads
// unless standard input is a terminal: there it keeps meaning that the
// terminal went away (the program stops), and `relay reload`, `agent
// reload` or saving the file reload instead.
func NewReloader[T any](file string, log *slog.Logger, apply func() (T, []any, error)) *Reloader[T] {
	return &Reloader[T]{File: file, Log: log, Apply: apply, loaded: time.Now(), HUP: !IsTerminal(os.Stdin)}
}

// State returns when the configuration in force was loaded, how many
// reloads succeeded, and the last refusal since (if any) and when.
func (r *Reloader[T]) State() (loaded time.Time, count int, lastErr string, lastFail time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loaded, r.count, r.lastErr, r.lastFail
}

// Reload loads and applies the configuration once. A refusal logs every
// mistake on a line of its own and returns them, one each.
func (r *Reloader[T]) Reload(trigger string) (changes T, mistakes []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changes, attrs, err := r.Apply()
	if err != nil {
		mistakes = SplitErrors(err)
		for _, m := range mistakes {
			r.Log.Error("configuration reload refused; the running configuration stays in force", "trigger", trigger, "file", r.File, "err", m)
		}
		r.lastErr, r.lastFail = strings.Join(mistakes, "; "), time.Now()
		return changes, mistakes
	}
	r.count++
	r.loaded = time.Now()
	if len(attrs) == 0 {
		attrs = []any{"changes", "none"}
	}
	r.Log.Info("configuration reloaded", append([]any{"trigger", trigger}, attrs...)...)
	return changes, nil
}

// Watch reloads on SIGHUP and changes of the file until ctx ends; the
// returned function waits for it to stop.
func (r *Reloader[T]) Watch(ctx context.Context) (wait func()) {
	triggers := reload.Watch(ctx, r.File, r.HUP, r.Log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case t := <-triggers:
				r.Reload(string(t))
			}
		}
	}()
	return func() { <-done }
}

// SplitErrors lists the mistakes joined in err (errors.Join), one each.
func SplitErrors(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		// Only a join itself is split: a mistake that wraps several
		// causes stays one mistake.
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				out = append(out, line)
			}
		}
	}
	walk(err)
	return out
}
