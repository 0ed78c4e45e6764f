package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/visitor"
)

// visitCommand is "agent visit": the visitor of private tunnels.
func visitCommand(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "visit [TUNNEL] --listen HOST:PORT",
		Short: "Reach a private tunnel from this machine through the relay",
		Long: `Runs the visitor of private tunnels, on the machine you connect from (a
laptop). A private tunnel has no public port on the relay: only visitors
reach it. The visitor logs in to the relay with a visitor key (not the
token), listens on a local address, and carries each connection to it
through the relay to the private tunnel of a home agent. It keeps its
session to the relay by itself and waits while the home agent is away.

The relay prints the visit command, with its visitor key, on its first
start. Give the key by HOMEPORT_KEY, --key-file or the config file rather
than --key, which other users can read in the process list.

One tunnel: name it and give --listen (and --udp for a UDP tunnel).
Several: a config file with a visits list (see deploy/visitor.example.yaml).

Settings come from defaults < --config file < HOMEPORT_* environment
variables < flags.`,
		Example: `  HOMEPORT_KEY=K agent visit rdp --relay vps.example.com:7000 --fingerprint sha256:... --listen 127.0.0.1:3390
  agent visit rdp-udp --udp --listen 127.0.0.1:3390 --key-file ~/.config/homeport/visitor.key --relay vps.example.com:7000 --fingerprint sha256:...
  agent visit --config visitor.yaml
  agent visit service install --config C:\ProgramData\homeport\visitor.yaml`,
		Args:          cobra.MaximumNArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadVisitor(cmd.Flags())
			if err != nil {
				return err
			}
			return runVisit(cmd.Context(), cfg, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	config.VisitorFlags(cmd.Flags())
	cmd.AddCommand(cli.ServiceCommandOf(cli.ServiceSpec{
		Program: "visitor",
		Command: "agent visit",
		Args:    []string{"visit"},
	}, func(args []string) error {
		fs := pflag.NewFlagSet("visitor", pflag.ContinueOnError)
		config.VisitorFlags(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		_, err := config.LoadVisitor(fs)
		return err
	}))
	return cmd
}

func runVisit(ctx context.Context, cfg config.Visitor, stderr io.Writer) error {
	log, closeLog, err := cli.OpenLog(stderr, cfg.Log)
	if err != nil {
		return err
	}
	defer closeLog.Close()
	cli.LogWarnings(log, cfg.Warnings)
	v, err := visitor.New(cfg, cli.Version(), log)
	if err != nil {
		return err
	}
	return v.Run(ctx)
}
