package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/control"
)

// serveControl serves the control socket in the data directory until ctx
// ends; the returned function waits for it.
func serveControl(ctx context.Context, cfg config.Agent, status func() agent.Status, rl *cli.Reloader[agent.Changes], log *slog.Logger) (wait func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, status())
	})
	// A refused configuration is an answer, not a failure of the call:
	// the result lists its mistakes.
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		ch, mistakes := rl.Reload("agent reload")
		control.WriteJSON(w, http.StatusOK, ReloadResult{Reloaded: mistakes == nil, Changes: ch, Errors: mistakes})
	})
	return control.Start(ctx, cfg.DataDir, "agent", mux, log)
}

func statusCommand(stdout io.Writer) *cobra.Command {
	return cli.StatusCommand[agent.Status]("agent", `Asks the agent running with this data directory (over its control socket,
which only the agent's user and root can open; on Windows, Administrators)
for its session to the relay, its tunnels and their visitors, traffic
and last errors, and its DDNS names. Give the same --config or
--data-dir as the running agent.`, config.LocateFlags, config.AgentDataDir, stdout)
}
