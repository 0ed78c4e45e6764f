package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/relay"
)

// serveControl serves the control socket in the data directory until ctx
// ends; the returned function waits for it.
func serveControl(ctx context.Context, cfg config.Relay, status func() relay.Status, reload func(trigger string) (struct{}, []string), log *slog.Logger) (wait func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, status())
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		if _, mistakes := reload("relay reload"); mistakes != nil {
			control.WriteJSON(w, http.StatusUnprocessableEntity, control.Problem{Error: "configuration reload refused; the running configuration stays in force: " + strings.Join(mistakes, "; ")})
			return
		}
		control.WriteJSON(w, http.StatusOK, struct{}{})
	})
	return control.Start(ctx, cfg.DataDir, "relay", mux, log)
}

func reloadCommand(stdout io.Writer) *cobra.Command {
	return cli.ReloadCommand("relay", config.LocateFlags, config.RelayDataDir, stdout)
}

func statusCommand(stdout io.Writer) *cobra.Command {
	return cli.StatusCommand[relay.Status]("relay", `Asks the relay running with this data directory (over its control socket,
which only the relay's user and root can open) for its agents, tunnels,
visitors, traffic, bans and recent refusals. Give the same --config or
--data-dir as the running relay.`, config.LocateFlags, config.RelayDataDir, stdout)
}
