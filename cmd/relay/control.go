package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/relay"
)

// serveControl serves the control socket in the data directory until ctx
// ends; the returned function waits for it. A socket that cannot be made
// costs only the status command, with a warning; one that another relay
// answers on is an error.
func serveControl(ctx context.Context, cfg config.Relay, srv *relay.Server, log *slog.Logger) (wait func(), err error) {
	ep := control.Endpoint(cfg.DataDir, "relay")
	ln, err := control.Listen(ep)
	if err != nil {
		if errors.Is(err, control.ErrInUse) {
			return nil, err
		}
		log.Warn("control socket unavailable: relay status will not work", "err", err)
		return func() {}, nil
	}
	loaded := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := srv.Status()
		st.Version = cli.Version()
		st.Config = relay.ConfigStatus{File: cfg.File, Loaded: loaded}
		control.WriteJSON(w, http.StatusOK, st)
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := control.Serve(ctx, ln, mux, log); err != nil {
			log.Warn("control socket", "err", err)
		}
	})
	log.Debug("control socket ready", "path", ep)
	return wg.Wait, nil
}

func statusCommand(stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running relay's agents, tunnels, bans and refusals",
		Long: `Asks the relay running with this data directory (over its control socket,
which only the relay's user and root can open) for its agents, tunnels,
visitors, traffic, bans and recent refusals. Give the same --config or
--data-dir as the running relay.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := config.RelayDataDir(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var st relay.Status
			if err := control.NewClient(control.Endpoint(dir, "relay"), "relay").Get(ctx, "/v1/status", &st); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			st.WriteText(stdout)
			return nil
		},
	}
	config.LocateFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON, for scripts")
	return cmd
}
