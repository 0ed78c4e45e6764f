// Command relay is homeport's public side: run it on a host with a public
// address; agents dial out to it and it opens their public ports.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/ddnsbuild"
	"github.com/homeport/homeport/internal/metrics"
	"github.com/homeport/homeport/internal/service"
	"github.com/homeport/homeport/relay"
)

func main() {
	// quic-go prints its own unstructured warning about small UDP
	// buffers; homeport logs it, with the fix, through OnSmallBuffers.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ctx, stop := signal.NotifyContext(context.Background(), cli.StopSignals()...)
	defer stop()
	// Started by the Windows service manager: it stops us, not signals.
	handled, err := service.Run(cli.ServiceName("relay"), func(ctx context.Context) error {
		return newCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	})
	if !handled {
		err = newCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "homeport relay: public ports for machines behind NAT",
		Long: `The relay runs on a host with a public address (a VPS). Agents on machines
behind NAT dial out to it on the agent port (default :7000), prove they
know a token, and register tunnels; the relay then listens on each
tunnel's public port and carries every connection to the agent.

With no settings at all it creates its data directory, generates a token
and a TLS key (kept there and reused on every start), and prints the
exact agent command to run on the home machine. The token itself is
shown on that first start only, and only on a terminal: later, and in
a service's log, the command has <token> in its place, and the token is
read from the data directory's token file.

Settings come from defaults < --config file < HOMEPORT_* environment
variables < flags.`,
		Example: `  relay
  relay --listen :7000 --allow-ports 3390,8000-8100
  relay --config /etc/homeport/relay.yaml`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadRelay(cmd.Flags())
			if err != nil {
				return err
			}
			return run(cmd.Context(), cmd.Flags(), cfg, stdout, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	config.RelayFlags(cmd.Flags())
	cmd.AddCommand(cli.ServiceCommand("relay", func(args []string) error {
		fs := pflag.NewFlagSet("relay", pflag.ContinueOnError)
		config.RelayFlags(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		_, err := config.LoadRelay(fs)
		return err
	}))
	cmd.AddCommand(statusCommand(stdout))
	cmd.AddCommand(reloadCommand(stdout))
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "homeport relay", cli.Version())
		},
	})
	return cmd
}

// run serves the relay of cfg, loaded from the flags in fs (and the
// file and environment they name), which a reload reads again.
func run(ctx context.Context, fs *pflag.FlagSet, cfg config.Relay, stdout, stderr io.Writer) error {
	log, closeLog, err := cli.OpenLog(stderr, cfg.Log)
	if err != nil {
		return err
	}
	defer closeLog.Close()
	cli.LogWarnings(log, cfg.Warnings)
	stopDebug, err := cli.ServeDebug(cfg.DebugAddr, log)
	if err != nil {
		return err
	}
	defer stopDebug()
	id, err := relay.LoadIdentity(cfg)
	if err != nil {
		return err
	}
	for _, f := range id.Created {
		log.Info("generated", "file", f)
	}
	srv, err := relay.New(cfg, id, log, relay.WithDDNS(func(c *config.DDNS) (*ddns.Updater, error) {
		return ddnsbuild.New(c, ddnsbuild.Options{Log: log})
	}))
	if err != nil {
		return err
	}
	addr, err := srv.Listen()
	if err != nil {
		return err
	}
	certs, err := startCertificates(ctx, cfg, srv, log)
	if err != nil {
		return err
	}
	if certs != nil {
		defer certs.Close()
	}
	// The side servers (control socket, metrics) stop with the relay.
	ctx, stopSide := context.WithCancel(ctx)
	var waits []func()
	defer func() {
		stopSide()
		for _, wait := range waits {
			wait()
		}
	}()
	reloads := cli.NewReloader(cfg.File, log, func() (struct{}, []any, error) {
		next, err := config.LoadRelay(fs)
		if err != nil {
			return struct{}{}, nil, err
		}
		id, err := relay.LoadIdentity(next)
		if err != nil {
			return struct{}{}, nil, err
		}
		changes, restartOnly, err := srv.Reload(next, id)
		if err != nil {
			return struct{}{}, nil, err
		}
		cli.LogWarnings(log, next.Warnings)
		for _, k := range restartOnly {
			log.Warn(k + " changed: restart the relay to apply")
		}
		if len(changes) == 0 {
			return struct{}{}, nil, nil
		}
		return struct{}{}, []any{"changed", strings.Join(changes, "; ")}, nil
	})
	status := func() relay.Status {
		st := srv.Status()
		st.Version = cli.Version()
		st.Certificates = certStatus(certs)
		loaded, n, lastErr, lastFail := reloads.State()
		st.Config = relay.ConfigStatus{File: cfg.File, Loaded: loaded, Reloads: n, LastErr: lastErr, LastFail: lastFail}
		return st
	}
	waitControl, err := serveControl(ctx, cfg, status, reloads.Reload, log)
	if err != nil {
		return err // the process ends, and with it the agent port
	}
	waits = append(waits, waitControl)
	waitDashboard, err := serveDashboard(ctx, cfg, status, log)
	if err != nil {
		return err
	}
	waits = append(waits, waitDashboard)
	if cfg.MetricsAddr != "" {
		waitMetrics, err := metrics.Start(ctx, cfg.MetricsAddr, "relay", cli.Version(), srv.RegisterMetrics, srv.Ready, log)
		if err != nil {
			return err
		}
		waits = append(waits, waitMetrics)
	}
	waits = append(waits, reloads.Watch(ctx))
	f, isFile := stdout.(*os.File)
	newBanner(cfg, id, addr, isFile && cli.IsTerminal(f)).print(stdout)
	return srv.Serve(ctx)
}
