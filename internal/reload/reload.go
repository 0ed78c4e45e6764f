// Package reload tells a relay or agent when to reload its configuration:
// on SIGHUP (Unix), and when the configuration file's content changes.
//
// The file is watched through its directory, so that the usual ways of
// changing it all count: written in place, replaced by an editor's rename,
// or swapped by a symbolic link (a Kubernetes ConfigMap). A change counts
// once the content differs from what was last seen and has stayed so for
// a moment (Settle), so an editor's half-written save does not trigger a
// reload of its own.
package reload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle is how long the file must stay unchanged after an event before a
// change is announced.
const Settle = 300 * time.Millisecond

// Trigger is why a reload was asked for.
type Trigger string

const (
	Signal Trigger = "SIGHUP"
	File   Trigger = "file changed"
)

// Watch sends a Trigger on the returned channel for each change of file's
// content ("": none), and with hup for each SIGHUP, until ctx ends.
// Triggers that arrive while one is pending are merged. A file that
// cannot be watched (its directory is missing) is logged, and signals
// still work. Without hup, SIGHUP keeps its usual meaning: a program on a
// terminal ends when the terminal goes away.
func Watch(ctx context.Context, file string, hup bool, log *slog.Logger) <-chan Trigger {
	out := make(chan Trigger, 1)
	send := func(t Trigger) {
		select {
		case out <- t:
		default: // one is pending already: it will read the newest file
		}
	}
	var sigs <-chan os.Signal
	stopSigs := func() {}
	if hup {
		sigs, stopSigs = notifyHUP()
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	var w *fsnotify.Watcher
	var last [32]byte
	if file != "" {
		abs, err := filepath.Abs(file)
		if err == nil {
			file = abs
		}
		last = sum(file)
		w, err = fsnotify.NewWatcher()
		if err == nil {
			err = w.Add(filepath.Dir(file))
		}
		if err != nil {
			log.Warn("configuration file not watched: reload with SIGHUP instead", "file", file, "err", err)
			if w != nil {
				w.Close()
				w = nil
			}
		} else {
			events, errs = w.Events, w.Errors
		}
	}
	go func() {
		defer stopSigs()
		if w != nil {
			defer w.Close()
		}
		settle := time.NewTimer(time.Hour)
		settle.Stop()
		defer settle.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sigs:
				send(Signal)
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				// Any event in the directory may be the file's: an
				// editor's rename, a ConfigMap's symlink swap.
				_ = ev
				settle.Reset(Settle)
			case err, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				log.Warn("watching the configuration file", "err", err)
			case <-settle.C:
				now := sum(file)
				if now != last && now != ([32]byte{}) {
					last = now
					send(File)
				}
			}
		}
	}()
	return out
}

// sum is the SHA-256 of the file's content; zero when it cannot be read
// (being replaced, or gone), which never counts as a change.
func sum(file string) [32]byte {
	b, err := os.ReadFile(file)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(bytes.TrimSpace(b))
}
