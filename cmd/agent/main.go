// Command agent is homeport's home side: run it on the machine behind NAT.
// It dials out to the relay and carries visitors to local services.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/ddnsbuild"
	"github.com/homeport/homeport/internal/metrics"
	"github.com/homeport/homeport/internal/service"
)

func main() {
	// quic-go prints its own unstructured warning about small UDP
	// buffers; homeport logs it, with the fix, through OnSmallBuffers.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ctx, stop := signal.NotifyContext(context.Background(), cli.StopSignals()...)
	defer stop()
	// Started by the Windows service manager: it stops us, not signals.
	// "agent visit" is a service of its own, homeport-visitor.
	name := cli.ServiceName("agent")
	if len(os.Args) > 1 && os.Args[1] == "visit" {
		name = cli.ServiceName("visitor")
	}
	handled, err := service.Run(name, func(ctx context.Context) error {
		return newCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	})
	if !handled {
		err = newCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "homeport agent: reach this machine's services through a relay",
		Long: `The agent runs on the machine behind NAT. It dials out to the relay, proves
it knows the token, verifies the relay by its key fingerprint (or a CA),
and registers its tunnels. Each tunnel is REMOTE_PORT:HOST:PORT, as in
ssh -R: a connection to the relay's REMOTE_PORT reaches HOST:PORT as
dialed from this machine. The agent reconnects by itself forever.

The relay prints the exact command on its first start (on a terminal).
Give the token by HOMEPORT_TOKEN, --token-file or the config file rather
than --token, which other users can read in the process list.

Settings come from defaults < --config file < HOMEPORT_* environment
variables < flags.`,
		Example: `  HOMEPORT_TOKEN=T agent --relay vps.example.com:7000 --fingerprint sha256:... --tunnel 3390:127.0.0.1:3389
  agent --relay vps.example.com:7000 --token-file /etc/homeport/agent.token --fingerprint sha256:... --tunnel rdp=3390:127.0.0.1:3389 --tunnel ssh=2222:127.0.0.1:22
  agent --config agent.yaml`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadAgent(cmd.Flags())
			if err != nil {
				return err
			}
			return run(cmd.Context(), cfg, cmd.Flags(), stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	config.AgentFlags(cmd.Flags())
	cmd.AddCommand(cli.ServiceCommand("agent", func(args []string) error {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		config.AgentFlags(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		_, err := config.LoadAgent(fs)
		return err
	}))
	cmd.AddCommand(ddnsCommand(stdout, stderr))
	cmd.AddCommand(portmapCommand(stdout, stderr))
	cmd.AddCommand(visitCommand(stdout, stderr))
	cmd.AddCommand(statusCommand(stdout))
	cmd.AddCommand(reloadCommand(stdout))
	cmd.AddCommand(wakeCommand(stdout))
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "homeport agent", cli.Version())
		},
	})
	return cmd
}

// run runs the agent with cfg, loaded from fs (and the environment and
// the --config file), which a reload reads again.
func run(ctx context.Context, cfg config.Agent, fs *pflag.FlagSet, stderr io.Writer) error {
	log, level, closeLog, err := cli.OpenLogLevel(stderr, cfg.Log)
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
	// The port mappings the relay verified, for the ddns mapping sources.
	mappings, sessions := ddns.NewMappings(), ddns.NewRelaySessions()
	a, err := agent.New(cfg, cli.Version(), log, agent.WithMappings(mappings), agent.WithRelaySessions(sessions), agent.WithDDNS(func(c *config.DDNS, relay *ddns.RelayAddr) (*ddns.Updater, error) {
		return ddnsbuild.New(c, ddnsbuild.Options{Log: log, Relay: relay, Mappings: mappings, Sessions: sessions, UserAgent: ddns.UserAgent(cli.Version())})
	}))
	if err != nil {
		return err
	}
	// The side servers (control socket, metrics) stop with the agent.
	ctx, stopSide := context.WithCancel(ctx)
	var waits []func()
	defer func() {
		stopSide()
		for _, wait := range waits {
			wait()
		}
	}()
	rl := newReloader(a, fs, cfg, log, level)
	status := func() agent.Status {
		st := a.Status()
		st.Version = cli.Version()
		loaded, n, lastErr, lastFail := rl.State()
		st.Config = agent.ConfigStatus{File: cfg.File, Loaded: loaded, Reloads: n, LastErr: lastErr, LastFail: lastFail}
		return st
	}
	waits = append(waits, rl.Watch(ctx))
	// Another agent with this data directory keeps the socket: this one
	// runs on without, since agents (unlike relays) share a machine.
	if waitControl, err := serveControl(ctx, cfg, status, a.Wake, rl, log); err != nil {
		log.Warn("control socket taken by another agent: agent status shows that one; give this agent its own data_dir", "err", err)
	} else {
		waits = append(waits, waitControl)
	}
	if cfg.MetricsAddr != "" {
		waitMetrics, err := metrics.Start(ctx, cfg.MetricsAddr, "agent", cli.Version(), a.RegisterMetrics, a.Ready, log)
		if err != nil {
			return err
		}
		waits = append(waits, waitMetrics)
	}
	return a.Run(ctx)
}

// ddnsCommand is "agent ddns": the dynamic DNS updater alone.
func ddnsCommand(stdout, stderr io.Writer) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "ddns",
		Short: "Run only the dynamic DNS updater of the config file's ddns section",
		Long: `Runs only the dynamic DNS updater, from the ddns section of the agent's
configuration file: no relay, token or tunnels are needed, and the
agent's other settings are ignored. It keeps the names pointing at this
host's public address until stopped.

The relay source needs the agent's session to the relay, so it is left
out here; sources default to http.

With --once it runs one round, prints the state of every name and
record type, and exits with status 1 if any is not in sync: a way to
test a configuration.`,
		Example: `  agent ddns --config agent.yaml
  agent ddns --config agent.yaml --once`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadAgentDDNS(cmd.Flags())
			if err != nil {
				return err
			}
			return runDDNS(cmd.Context(), cfg, once, stdout, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	config.AgentDDNSFlags(cmd.Flags())
	cmd.Flags().BoolVar(&once, "once", false, "run one round, print the state of every name and exit: 0 if all are in sync, 1 if not")
	return cmd
}

// errNotSynced ends "agent ddns --once" with status 1 after the report.
var errNotSynced = errors.New("ddns: not every record is in sync")

func runDDNS(ctx context.Context, cfg config.AgentDDNS, once bool, stdout, stderr io.Writer) error {
	log, closeLog, err := cli.OpenLog(stderr, cfg.Log)
	if err != nil {
		return err
	}
	defer closeLog.Close()
	u, err := ddnsbuild.New(cfg.DDNS, ddnsbuild.Options{Log: log})
	if err != nil {
		return err
	}
	if !once {
		return u.Run(ctx)
	}
	if !ddnsbuild.Report(stdout, u.Sync(ctx)) {
		return errNotSynced
	}
	return nil
}
