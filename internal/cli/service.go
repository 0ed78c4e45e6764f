package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/internal/service"
)

// ServiceName is the Windows service name of a program ("relay" or "agent").
func ServiceName(program string) string { return "homeport-" + program }

// ServiceCommand returns the "service" command of program: it installs and
// removes the program as a Windows service. validate loads the
// configuration the service will start with, so that a broken one fails at
// install time rather than in the service log.
func ServiceCommand(program string, validate func(args []string) error) *cobra.Command {
	return ServiceCommandOf(ServiceSpec{Program: program, Command: program}, validate)
}

// ServiceSpec names what a "service" command installs.
type ServiceSpec struct {
	// Program names the service: homeport-Program ("relay", "agent",
	// "visitor").
	Program string
	// Command is how it is run by hand ("agent visit"), for the help.
	Command string
	// Args come before the flags given to install ("visit").
	Args []string
}

// ServiceCommandOf is ServiceCommand for a program that is a subcommand of
// its binary, such as the visitor ("agent visit"): the service it installs
// starts the binary with spec.Args before the flags given.
func ServiceCommandOf(spec ServiceSpec, validate func(args []string) error) *cobra.Command {
	program, name := spec.Program, ServiceName(spec.Program)
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install or remove the " + program + " as a Windows service",
		Long: fmt.Sprintf(`Install or remove the %[1]s as a Windows service named %[2]s, which starts
with Windows (delayed), runs without anyone logged in, and is restarted
by the service manager when it fails. Run from an elevated prompt.

The service does not see this shell's environment: put every setting in
a config file (or in the arguments after "install"), with absolute paths:
a service starts in C:\Windows\System32. Its standard error
goes nowhere, so set log.file (--log-file) to keep a log.

On Linux, use the systemd units in deploy/systemd instead.`, program, name),
	}
	install := &cobra.Command{
		Use:                "install [flags of " + spec.Command + "]",
		Short:              "Install the service; the flags given are the ones it starts with",
		Example:            fmt.Sprintf(`  %s service install --config C:\ProgramData\homeport\%s.yaml`, spec.Command, program),
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if a == "-h" || a == "--help" {
					return cmd.Help()
				}
			}
			if err := validate(args); err != nil {
				return fmt.Errorf("the service would not start: %w", err)
			}
			all := append(append([]string{}, spec.Args...), args...)
			err := service.Install(service.Spec{
				Name:        name,
				DisplayName: "homeport " + program,
				Description: "homeport " + program + ": reverse tunnel for machines behind NAT",
				Args:        all,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed service %s (%s %s); start it with: sc.exe start %s\n", name, spec.Command, strings.Join(args, " "), name)
			return nil
		},
	}
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove the service",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := service.Uninstall(name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed service %s\n", name)
			return nil
		},
	}
	cmd.AddCommand(install, uninstall)
	return cmd
}
