package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/portmap"
)

// portmapCommand is "agent portmap": ask the home router for a port
// mapping and keep it, to find out whether (and how) the router maps
// ports before a tunnel relies on it.
func portmapCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		port, external          uint16
		protocol, gw, level     string
		methods                 []string
		lifetime, check, giveUp time.Duration
		once                    bool
	)
	cmd := &cobra.Command{
		Use:   "portmap --port PORT",
		Short: "Ask the home router for a port mapping (PCP, NAT-PMP or UPnP) and keep it",
		Long: `Ask the home router to forward a port of its outside address to this
machine, with PCP, NAT-PMP or UPnP-IGD (tried in that order), and keep
the mapping: renew it, make it again if the router forgets it, and
remove it on exit (Ctrl-C). Each change is printed on standard output.

A mapping says only what the router agreed to: behind a carrier-grade
NAT the router's outside address is itself private and the mapping
reaches nobody. Check it from outside before you rely on it.`,
		Example: `  agent portmap --port 3389
  agent portmap --port 3389 --once       # map, print, remove, exit
  agent portmap --port 51820 --protocol udp --method upnp`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, closeLog, err := cli.OpenLog(stderr, config.Log{Level: level})
			if err != nil {
				return err
			}
			defer closeLog.Close()
			pc := portmap.Config{
				Request: portmap.Request{Protocol: strings.ToLower(protocol), InternalPort: port, ExternalPort: external,
					Lifetime: lifetime, Description: "homeport " + cli.Version()},
				Check: check,
				Log:   log,
			}
			if port == 0 {
				return errors.New("portmap: --port is required: the local port the mapping leads to")
			}
			for _, m := range methods {
				meth, err := portmap.ParseMethod(m)
				if err != nil {
					return fmt.Errorf("--method: %w", err)
				}
				pc.Methods = append(pc.Methods, meth)
			}
			if gw != "" {
				a, err := netip.ParseAddr(gw)
				if err != nil {
					return fmt.Errorf("--gateway %q: not an IP address", gw)
				}
				pc.Gateway = a
			}
			return runPortmap(cmd.Context(), pc, once, giveUp, stdout)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	f := cmd.Flags()
	f.Uint16Var(&port, "port", 0, "local port the mapping leads to (on this machine's address toward the router)")
	f.Uint16Var(&external, "external", 0, "outside port wanted (default: the same as --port); the router may give another")
	f.StringVar(&protocol, "protocol", "tcp", "tcp or udp")
	f.StringSliceVar(&methods, "method", nil, "methods to try, in order: pcp, nat-pmp, upnp (default all, in that order)")
	f.StringVar(&gw, "gateway", "", "the router's address (default: the default route's gateway)")
	f.DurationVar(&lifetime, "lifetime", 2*time.Hour, "lease to ask for; the mapping is renewed before it ends")
	f.DurationVar(&check, "check", 0, "how often to check the mapping (default: half the lease, at most a minute)")
	f.DurationVar(&giveUp, "timeout", 30*time.Second, "with --once: give up after this long")
	f.BoolVar(&once, "once", false, "make the mapping, print it, remove it and exit: 0 if the router mapped the port, 1 if not")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// errNotMapped ends "agent portmap --once" with status 1.
var errNotMapped = errors.New("portmap: the router did not map the port")

func runPortmap(ctx context.Context, pc portmap.Config, once bool, timeout time.Duration, stdout io.Writer) error {
	if once {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		m, err := portmap.Map(ctx, pc)
		if err != nil {
			fmt.Fprintf(stdout, "not mapped: %v\n", err)
			return errNotMapped
		}
		printMapping(stdout, m)
		rctx, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel2()
		if err := m.Remove(rctx); err != nil {
			return fmt.Errorf("portmap: removing the mapping again: %w", err)
		}
		fmt.Fprintf(stdout, "unmapped %s %v\n", m.Protocol, m.External)
		return nil
	}
	pc.OnChange = func(m portmap.Mapping, ok bool) {
		if ok {
			printMapping(stdout, m)
			return
		}
		fmt.Fprintf(stdout, "unmapped %s %v\n", m.Protocol, m.External)
	}
	k, err := portmap.Keep(ctx, pc)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return k.Close()
}

func printMapping(w io.Writer, m portmap.Mapping) {
	fmt.Fprintf(w, "mapped %s %v -> %v via %s (%s)\n", m.Protocol, m.External, m.Internal, m.Method, leaseText(m.Lifetime))
}

func leaseText(d time.Duration) string {
	if d == 0 {
		return "until removed"
	}
	return "lease " + d.String()
}
