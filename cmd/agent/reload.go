package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/reload"
)

// reloader reloads the agent's configuration from the sources it was
// started with (the same flags, environment and --config file), on
// SIGHUP, when the file changes, and when asked over the control socket.
type reloader struct {
	a     *agent.Agent
	fs    *pflag.FlagSet
	log   *slog.Logger
	level *slog.LevelVar

	mu  sync.Mutex
	cfg config.Agent // in force
	st  agent.ConfigStatus
}

func newReloader(a *agent.Agent, fs *pflag.FlagSet, cfg config.Agent, log *slog.Logger, level *slog.LevelVar) *reloader {
	return &reloader{a: a, fs: fs, cfg: cfg, log: log, level: level, st: agent.ConfigStatus{File: cfg.File, Loaded: time.Now()}}
}

// ReloadResult is the answer of POST /v1/reload.
type ReloadResult struct {
	Reloaded bool          `json:"reloaded"`
	Changes  agent.Changes `json:"changes"`
	// Errors are the configuration's mistakes, one each, when refused.
	Errors []string `json:"errors,omitempty"`
}

// watch reloads at every trigger of reload.Watch until ctx ends; the
// returned function waits for it.
func (r *reloader) watch(ctx context.Context) (wait func()) {
	triggers := reload.Watch(ctx, r.cfg.File, r.log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case t := <-triggers:
				r.reload(string(t))
			}
		}
	}()
	return func() { <-done }
}

// reload loads the configuration again and puts it in force, or, if it
// has any mistake, logs each and keeps the running one.
func (r *reloader) reload(trigger string) ReloadResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg, err := config.LoadAgent(r.fs)
	var ch agent.Changes
	if err == nil {
		ch, err = r.a.Reload(cfg)
	}
	if err != nil {
		mistakes := splitErrors(err)
		for _, m := range mistakes {
			r.log.Error("configuration reload refused; the running configuration stays in force", "trigger", trigger, "err", m)
		}
		r.st.LastErr, r.st.LastFail = strings.Join(mistakes, "; "), time.Now()
		return ReloadResult{Errors: mistakes}
	}
	old := r.cfg
	r.cfg = cfg
	r.st.Loaded = time.Now()
	r.st.Reloads++
	cli.LogWarnings(r.log, cfg.Warnings)
	if cfg.Log.Level != old.Log.Level {
		if l, err := cli.ParseLevel(cfg.Log.Level); err == nil {
			r.level.Set(l)
			ch.Other = append(ch.Other, "log.level")
		}
	}
	for _, f := range []struct {
		key     string
		changed bool
	}{
		{"data_dir", cfg.DataDir != old.DataDir},
		{"metrics_addr", cfg.MetricsAddr != old.MetricsAddr},
		{"debug_addr", cfg.DebugAddr != old.DebugAddr},
		{"log.file", cfg.Log.File != old.Log.File},
		{"log.format", cfg.Log.Format != old.Log.Format},
	} {
		if f.changed {
			r.log.Warn(f.key + " changed: restart the agent to apply")
		}
	}
	attrs := append([]any{"trigger", trigger}, ch.Attrs()...)
	if ch.Empty() {
		attrs = append(attrs, "changes", "none")
	}
	r.log.Info("configuration reloaded", attrs...)
	return ReloadResult{Reloaded: true, Changes: ch}
}

// status is the configuration's part of the agent's status.
func (r *reloader) status() agent.ConfigStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// splitErrors lists the mistakes joined in err (errors.Join), one each.
func splitErrors(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
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

// errRefused ends "agent reload" with status 1.
var errRefused = errors.New("configuration reload refused; the running configuration stays in force")

// reloadCommand is "agent reload": it asks the running agent to reload its
// configuration, and prints the outcome in one line.
func reloadCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running agent reload its configuration",
		Long: `Asks the agent running with this data directory (over its control socket)
to load its configuration again from the sources it was started with, as
SIGHUP does (on Windows, where there is no SIGHUP, this is the way besides
changing the file). Prints what changed, or every mistake of a refused
configuration (the running one then stays in force) and exits with
status 1. Give the same --config or --data-dir as the running agent.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := config.AgentDataDir(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			var res ReloadResult
			if err := control.NewClient(control.Endpoint(dir, "agent"), "agent").Post(ctx, "/v1/reload", nil, &res); err != nil {
				return err
			}
			if !res.Reloaded {
				return fmt.Errorf("%w: %s", errRefused, strings.Join(res.Errors, "; "))
			}
			fmt.Fprintln(stdout, "configuration reloaded:", describe(res.Changes))
			return nil
		},
	}
	config.LocateFlags(cmd.Flags())
	return cmd
}

// describe says what changed, in words.
func describe(c agent.Changes) string {
	var parts []string
	for _, f := range []struct {
		what string
		list []string
	}{{"tunnels added", c.Added}, {"tunnels removed", c.Removed}, {"tunnels changed", c.Changed},
		{"new session for", c.NewSession}, {"next session", c.NextSession}, {"changed", c.Other}} {
		if len(f.list) > 0 {
			parts = append(parts, f.what+" "+strings.Join(f.list, ", "))
		}
	}
	if len(parts) == 0 {
		return "nothing changed"
	}
	return strings.Join(parts, "; ")
}
