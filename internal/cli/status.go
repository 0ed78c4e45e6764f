package cli

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/homeport/homeport/internal/control"
)

// Status is what a status command prints: a relay's or an agent's.
type Status interface {
	WriteText(w io.Writer)
}

// StatusCommand is "relay status" or "agent status": it asks the process
// of role running with the data directory that flags name (registered by
// locateFlags, read by dataDir) and prints its status, as tables or JSON.
func StatusCommand[S Status](role, long string, locateFlags func(*pflag.FlagSet), dataDir func(*pflag.FlagSet) (string, error), stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the running " + role + " is doing",
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := dataDir(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var st S
			if err := control.NewClient(control.Endpoint(dir, role), role).Get(ctx, "/v1/status", &st); err != nil {
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
	locateFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON, for scripts")
	return cmd
}

// ReloadCommand is "relay reload" or "agent reload": it asks the running
// process of role to load its configuration again, and says in one line
// whether it did (exit status 1 if not).
func ReloadCommand(role string, locateFlags func(*pflag.FlagSet), dataDir func(*pflag.FlagSet) (string, error), stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running " + role + " load its configuration again",
		Long: `Asks the ` + role + ` running with this data directory to load its configuration
file again, as SIGHUP does (and as a change of the file does by itself).
A configuration with any mistake is refused as a whole: the running one
stays in force, and the mistakes are printed. Give the same --config or
--data-dir as the running ` + role + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := dataDir(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			if err := control.NewClient(control.Endpoint(dir, role), role).Post(ctx, "/v1/reload", nil, nil); err != nil {
				return err
			}
			_, err = io.WriteString(stdout, "configuration reloaded\n")
			return err
		},
	}
	locateFlags(cmd.Flags())
	return cmd
}
