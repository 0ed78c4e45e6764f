package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/wol"
)

// WakeRequest is the body of POST /v1/wake.
type WakeRequest struct {
	Tunnel string `json:"tunnel"`
}

// wakeCommand is "agent wake NAME": it wakes a tunnel's target through
// the running agent, which records the wake in its status; with no agent
// running, it sends the magic packet itself, from the configuration.
func wakeCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wake TUNNEL",
		Short: "Wake a tunnel's target by Wake-on-LAN now",
		Long: `Sends the magic packet of the tunnel's wake setting (its target's MAC
address), through the agent running with this data directory, so that
agent status shows the wake. It does not wait for the target to answer.
When no agent runs, it reads the configuration (--config, HOMEPORT_*) and
sends the packet itself, and says so. Give the same --config or
--data-dir as the running agent.`,
		Args:          cobra.ExactArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			dir, err := config.AgentDataDir(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var ws agent.WakeStatus
			err = control.NewClient(control.Endpoint(dir, "agent"), "agent").Post(ctx, "/v1/wake", WakeRequest{Tunnel: name}, &ws)
			switch {
			case err == nil && ws.Error != "":
				return fmt.Errorf("tunnel %q: %s", name, ws.Error)
			case err == nil:
				fmt.Fprintf(stdout, "woke tunnel %q through the running agent: magic packet for %s sent (%s)\n", name, ws.MAC, ws.Sent)
				return nil
			case !errors.Is(err, control.ErrNotRunning):
				return err
			}
			// No agent runs: send from the configuration.
			cfg, lerr := config.LoadAgent(cmd.Flags())
			if lerr != nil {
				return fmt.Errorf("%w; and the configuration to send the packet from cannot be read: %w", err, lerr)
			}
			var t *config.Tunnel
			for i := range cfg.Tunnels {
				if cfg.Tunnels[i].Name == name {
					t = &cfg.Tunnels[i]
				}
			}
			switch {
			case t == nil:
				return fmt.Errorf("no agent runs, and the configuration has no tunnel %q", name)
			case t.Wake == nil:
				return fmt.Errorf("no agent runs, and tunnel %q has no wake setting (wake: MAC)", name)
			}
			sent, serr := wol.Send(ctx, agent.WolTarget(ctx, *t))
			if serr != nil {
				return fmt.Errorf("no agent runs; sending the magic packet from the configuration: %w", serr)
			}
			fmt.Fprintf(stdout, "no agent runs (%v): sent the magic packet for %s from the configuration directly (%s); no status records it\n", err, t.Wake.MAC, sent)
			return nil
		},
	}
	config.LocateFlags(cmd.Flags())
	return cmd
}
