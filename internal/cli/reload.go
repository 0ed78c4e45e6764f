package cli

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/homeport/homeport/internal/reload"
)

// Reloads runs a program's configuration reloads, one at a time, and
// keeps what the status shows of them.
type Reloads struct {
	File  string // the configuration file, "" for none
	Apply func() (changes, restartOnly []string, err error)
	Log   *slog.Logger

	mu       sync.Mutex
	loaded   time.Time
	count    int
	lastErr  string
	lastFail time.Time
}

// State returns when the configuration in force was loaded, how many
// reloads succeeded, and the last refusal (if any) and when.
func (r *Reloads) State() (loaded time.Time, count int, lastErr string, lastFail time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loaded, r.count, r.lastErr, r.lastFail
}

// Started records the first load.
func (r *Reloads) Started() {
	r.mu.Lock()
	r.loaded = time.Now()
	r.mu.Unlock()
}

// Reload loads and applies the configuration once, logging the outcome:
// every mistake of a refused one on a line of its own, every change of an
// applied one, and each setting that waits for a restart.
func (r *Reloads) Reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	changes, restartOnly, err := r.Apply()
	if err != nil {
		r.lastErr, r.lastFail = strings.ReplaceAll(err.Error(), "\n", "; "), time.Now()
		r.Log.Error("configuration reload refused; the running configuration stays in force", "trigger", trigger, "file", r.File)
		for _, line := range strings.Split(err.Error(), "\n") {
			r.Log.Error("configuration reload refused: mistake", "err", line)
		}
		return err
	}
	r.count++
	r.loaded = time.Now()
	r.lastErr, r.lastFail = "", time.Time{}
	if len(changes) == 0 {
		changes = []string{"nothing"}
	}
	r.Log.Info("configuration reloaded", "trigger", trigger, "file", r.File, "changed", strings.Join(changes, "; "))
	for _, s := range restartOnly {
		r.Log.Warn("changed setting takes effect at the next restart", "setting", s)
	}
	return nil
}

// Watch reloads on SIGHUP and changes of the file until ctx ends; the
// returned function waits for it to stop.
func (r *Reloads) Watch(ctx context.Context) (wait func()) {
	triggers := reload.Watch(ctx, r.File, r.Log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case t := <-triggers:
				_ = r.Reload(string(t))
			}
		}
	}()
	return func() { <-done }
}
