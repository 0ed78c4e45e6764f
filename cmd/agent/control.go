package main

import (
	"context"
	"encoding/json"
	"errors"
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
func serveControl(ctx context.Context, cfg config.Agent, status func() agent.Status, wake func(context.Context, string) (agent.WakeStatus, error), rl *cli.Reloader[agent.Changes], log *slog.Logger) (wait func(), err error) {
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
	// A wake that fails is an answer too: the result says why.
	mux.HandleFunc("POST /v1/wake", func(w http.ResponseWriter, r *http.Request) {
		var req WakeRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			control.WriteJSON(w, http.StatusBadRequest, control.Problem{Error: "wake: " + err.Error()})
			return
		}
		ws, err := wake(r.Context(), req.Tunnel)
		switch {
		case errors.Is(err, agent.ErrUnknownTunnel), errors.Is(err, agent.ErrNoWake):
			control.WriteJSON(w, http.StatusNotFound, control.Problem{Error: err.Error()})
			return
		}
		control.WriteJSON(w, http.StatusOK, ws)
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
