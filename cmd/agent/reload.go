package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/control"
)

// ReloadResult is the answer of POST /v1/reload.
type ReloadResult struct {
	Reloaded bool          `json:"reloaded"`
	Changes  agent.Changes `json:"changes"`
	// Errors are the configuration's mistakes, one each, when refused.
	Errors []string `json:"errors,omitempty"`
}

// newReloader reloads the agent's configuration from the sources it was
// started with (the same flags, environment and --config file).
func newReloader(a *agent.Agent, fs *pflag.FlagSet, cfg config.Agent, log *slog.Logger, level *slog.LevelVar) *cli.Reloader[agent.Changes] {
	inForce := cfg
	return cli.NewReloader(cfg.File, log, func() (agent.Changes, []any, error) {
		next, err := config.LoadAgent(fs)
		if err != nil {
			return agent.Changes{}, nil, err
		}
		ch, err := a.Reload(next)
		if err != nil {
			return agent.Changes{}, nil, err
		}
		old := inForce
		inForce = next
		cli.LogWarnings(log, next.Warnings)
		if next.Log.Level != old.Log.Level {
			if l, err := cli.ParseLevel(next.Log.Level); err == nil {
				level.Set(l)
				ch.Other = append(ch.Other, "log.level")
			}
		}
		for _, f := range []struct {
			key     string
			changed bool
		}{
			{"data_dir", next.DataDir != old.DataDir},
			{"metrics_addr", next.MetricsAddr != old.MetricsAddr},
			{"debug_addr", next.DebugAddr != old.DebugAddr},
			{"log.file", next.Log.File != old.Log.File},
			{"log.format", next.Log.Format != old.Log.Format},
		} {
			if f.changed {
				log.Warn(f.key + " changed: restart the agent to apply")
			}
		}
		if ch.Empty() {
			return ch, nil, nil
		}
		return ch, ch.Attrs(), nil
	})
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
