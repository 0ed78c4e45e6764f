// Command homeport-load measures homeport's tunnel against a direct
// loopback connection to the same target, in the same run: bulk
// throughput, request/response latency, connection churn, memory per
// connection and CPU time per gigabyte; and one bulk stream with the
// agent's link to the relay over a delaying path (a 50 ms round trip at
// a given rate, see delay.go) against plain TCP over the same path.
//
// It builds (or takes) the real relay and agent binaries, starts them on
// loopback with a tunnel to a target it serves itself (echo, sink and
// source) in a process of its own, and prints one table: each figure through the tunnel, the same
// figure over the direct path, their ratio, and the target figure it
// should meet.
//
//	go run ./cmd/homeport-load                      # both transports, defaults
//	go run ./cmd/homeport-load --quick              # a short smoke run
//	go run ./cmd/homeport-load --transport tcp --json load.json
//	go run ./cmd/homeport-load --wan-only           # one stream over a 50 ms path only
//	go run ./cmd/homeport-load --web-only           # the relay's HTTP path against nginx only
//	go run ./cmd/homeport-load --quick --profile prof  # and relay's and agent's profiles
//	go run ./cmd/homeport-load --agents 2000        # one relay, 2000 agent sessions (fleet.go)
//
// Memory and CPU figures come from Linux's /proc; elsewhere the command
// says it is not supported.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command's settings.
type options struct {
	transports   []string
	duration     time.Duration
	repeat       int
	rtts         int
	conns        []int
	streams      int
	churnWorkers int
	jsonPath     string
	relayBin     string
	agentBin     string
	keep         bool
	wanRTT       time.Duration // 0: no runs over a delaying path
	wanRates     []int         // Mbit/s
	wanQueue     time.Duration
	wanAlternate bool          // the delaying path's runs alternate download and upload
	streamWindow string        // relay's and agent's --stream-window; "": theirs
	wanOnly      bool          // only the runs over a delaying path
	webOnly      bool          // only the web measure (web.go)
	profileDir   string        // record relay's and agent's profiles here; "": none
	agents       int           // >0: only the fleet measure, with this many agents (fleet.go)
	fleetWindow  time.Duration // the fleet measure's idle CPU window
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == targetArg {
		if err := runTarget(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "homeport-load target:", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "homeport-load:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, opts, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "homeport-load:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("homeport-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		opts      options
		transport = fs.String("transport", "both", "agent transport to measure: tcp, quic or both")
		conns     = fs.String("conns", "1000,10000", "levels of idle tunneled connections for the memory figures, comma-separated")
		quick     = fs.Bool("quick", false, "a short smoke run: --duration 1s --repeat 1 --conns 1000 --rtts 2000 --wan-rates 1000 (flags given win)")
		wanRates  = fs.String("wan-rates", "100,1000", "link rates of the delaying path's runs in Mbit/s, comma-separated")
	)
	fs.DurationVar(&opts.duration, "duration", 5*time.Second, "length of each bulk and churn run")
	fs.IntVar(&opts.repeat, "repeat", 3, "runs of each measurement; the table shows the median")
	fs.IntVar(&opts.rtts, "rtts", 20000, "round trips per latency run, spread over its connections")
	fs.IntVar(&opts.streams, "streams", 8, "parallel streams of the multi-stream bulk runs")
	fs.IntVar(&opts.churnWorkers, "churn-workers", 16, "workers of the churn runs")
	fs.StringVar(&opts.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&opts.relayBin, "relay-bin", "", "relay binary to run (default: build ./cmd/relay)")
	fs.StringVar(&opts.agentBin, "agent-bin", "", "agent binary to run (default: build ./cmd/agent)")
	fs.BoolVar(&opts.keep, "keep", false, "keep the working directory (relay and agent logs) and print its path")
	fs.DurationVar(&opts.wanRTT, "wan-rtt", 50*time.Millisecond, "round trip of the delaying path between agent and relay for the single-stream bulk runs over it (0: no such runs)")
	fs.DurationVar(&opts.wanQueue, "wan-queue", 20*time.Millisecond, "drop-tail queue of the delaying path, as time at its link rate")
	fs.BoolVar(&opts.wanAlternate, "wan-alternate", false, "over the delaying path, alternate download and upload runs (each after one the other way) instead of all downloads, then all uploads")
	fs.StringVar(&opts.streamWindow, "stream-window", "", "session.stream_window for relay and agent, such as 8MiB (default: theirs)")
	fs.BoolVar(&opts.wanOnly, "wan-only", false, "only the single-stream bulk runs over the delaying path")
	fs.BoolVar(&opts.webOnly, "web-only", false, "only the web measure: HTTP requests through the relay's http_addr against nginx directly")
	fs.IntVar(&opts.agents, "agents", 0, "only the fleet measure: this many agents in this process, each with its own session and public port, and a visitor connection through each; the relay's memory and CPU per idle session and per idle visitor connection")
	fs.DurationVar(&opts.fleetWindow, "fleet-window", 20*time.Second, "the fleet measure's window for the relay's idle CPU time")
	fs.StringVar(&opts.profileDir, "profile", "", "record relay's and agent's CPU profiles (first tunnel run of each bulk and churn measure) and heap profiles (each memory level) in this directory, for go tool pprof; their figures are then not for publishing")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: homeport-load [flags]\n\n"+
			"Runs a relay and an agent on loopback and measures the tunnel against a\n"+
			"direct connection to the same target. Needs Linux.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["duration"] {
			opts.duration = time.Second
		}
		if !set["repeat"] {
			opts.repeat = 1
		}
		if !set["conns"] {
			*conns = "1000"
		}
		if !set["rtts"] {
			opts.rtts = 2000
		}
		if !set["wan-rates"] {
			*wanRates = "1000"
		}
	}
	switch *transport {
	case "both":
		opts.transports = []string{"tcp", "quic"}
	case "tcp", "quic":
		opts.transports = []string{*transport}
	default:
		return opts, fmt.Errorf("--transport %q: want tcp, quic or both", *transport)
	}
	var err error
	if opts.conns, err = parseLevels(*conns); err != nil {
		return opts, fmt.Errorf("--conns: %w", err)
	}
	if opts.wanRates, err = parseLevels(*wanRates); err != nil {
		return opts, fmt.Errorf("--wan-rates: %w", err)
	}
	switch {
	case opts.duration < 100*time.Millisecond || opts.duration > time.Hour:
		return opts, fmt.Errorf("--duration %v: want 100ms to 1h", opts.duration)
	case opts.repeat < 1 || opts.repeat > 100:
		return opts, fmt.Errorf("--repeat %d: want 1 to 100", opts.repeat)
	case opts.rtts < 100 || opts.rtts > 10_000_000:
		return opts, fmt.Errorf("--rtts %d: want 100 to 10000000", opts.rtts)
	case opts.streams < 2 || opts.streams > 1024:
		return opts, fmt.Errorf("--streams %d: want 2 to 1024", opts.streams)
	case opts.churnWorkers < 1 || opts.churnWorkers > 1024:
		return opts, fmt.Errorf("--churn-workers %d: want 1 to 1024", opts.churnWorkers)
	case opts.wanRTT < 0 || opts.wanRTT > 10*time.Second:
		return opts, fmt.Errorf("--wan-rtt %v: want 0 to 10s", opts.wanRTT)
	case opts.wanOnly && opts.webOnly:
		return opts, errors.New("--wan-only and --web-only: choose one")
	case opts.wanOnly && opts.wanRTT == 0:
		return opts, errors.New("--wan-only with --wan-rtt 0 measures nothing")
	case opts.wanRTT > 0 && len(opts.wanRates) == 0:
		return opts, errors.New("--wan-rates: want at least one rate, or --wan-rtt 0")
	case opts.wanQueue < time.Millisecond || opts.wanQueue > 10*time.Second:
		return opts, fmt.Errorf("--wan-queue %v: want 1ms to 10s", opts.wanQueue)
	case opts.agents < 0 || opts.agents > fleetMax:
		return opts, fmt.Errorf("--agents %d: want 0 to %d", opts.agents, fleetMax)
	case opts.fleetWindow < time.Second || opts.fleetWindow > 10*time.Minute:
		return opts, fmt.Errorf("--fleet-window %v: want 1s to 10m", opts.fleetWindow)
	case (opts.relayBin == "") != (opts.agentBin == ""):
		return opts, errors.New("--relay-bin and --agent-bin go together")
	}
	return opts, nil
}

// parseLevels parses a comma-separated list of connection counts (or
// rates); an empty list measures no memory with connections.
func parseLevels(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 1_000_000 {
			return nil, fmt.Errorf("%q: want numbers from 1 to 1000000", f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// run measures and reports. It stops the processes it started and
// removes its files before it returns, also when ctx ends (Ctrl-C).
func run(ctx context.Context, opts options, stdout, progress io.Writer) (err error) {
	if err := supported(); err != nil {
		return err
	}
	m := machine{
		Cores: runtime.NumCPU(),
		Go:    runtime.Version(),
		Date:  time.Now().UTC().Format("2006-01-02 15:04 UTC"),
	}
	describeSystem(&m)
	var notes []string

	// Each idle connection holds a descriptor here, in the relay, the
	// agent and the target, which inherit the limit.
	want := uint64(4096)
	switch {
	case opts.agents > 0:
		// The fleet alone: per agent, this process holds its session,
		// its visitor's connection and its connection to the target.
		want += 4 * uint64(opts.agents)
	case len(opts.conns) > 0:
		want += uint64(slices.Max(opts.conns))
	}
	limit, lerr := raiseFileLimit(want)
	if lerr != nil {
		fmt.Fprintln(progress, "homeport-load:", lerr)
		notes = append(notes, lerr.Error())
	}
	m.FileLimit = limit

	if opts.profileDir != "" {
		if err := os.MkdirAll(opts.profileDir, 0o755); err != nil {
			return fmt.Errorf("--profile: %w", err)
		}
		notes = append(notes, "profiled run (--profile "+opts.profileDir+"): profiling costs relay and agent some CPU, so these figures are not for publishing")
	}
	workDir, err := os.MkdirTemp("", "homeport-load-")
	if err != nil {
		return err
	}
	defer func() {
		if opts.keep {
			fmt.Fprintln(progress, "homeport-load: logs kept in", workDir)
			return
		}
		if rerr := os.RemoveAll(workDir); rerr != nil && err == nil {
			err = rerr
		}
	}()

	bins := binaries{relay: opts.relayBin, agent: opts.agentBin}
	if bins.relay == "" {
		start := time.Now()
		fmt.Fprintln(progress, "building relay and agent…")
		bins.relay, bins.agent, err = buildBinaries(ctx, filepath.Join(workDir, "bin"))
		if err != nil {
			return err
		}
		fmt.Fprintf(progress, "built in %v\n", time.Since(start).Round(100*time.Millisecond))
	}
	if err := bins.check(); err != nil {
		return err
	}

	tg, err := startTargetProc(progress)
	if err != nil {
		return err
	}
	defer tg.close()

	e := &env{opts: opts, bins: bins, target: tg, workDir: workDir, progress: progress, fileLimit: limit}
	rep := report{
		Machine: m,
		Settings: settings{
			Transports:   opts.transports,
			Duration:     opts.duration.String(),
			Repeat:       opts.repeat,
			RoundTrips:   opts.rtts,
			Conns:        opts.conns,
			Streams:      opts.streams,
			ChurnWorkers: opts.churnWorkers,
			StreamWindow: opts.streamWindow,
			Agents:       opts.agents,
			FleetWindow:  opts.fleetWindow.String(),
		},
		Notes: notes,
	}
	if opts.wanRTT > 0 {
		rep.Settings.WAN = &wanRuns{RTT: opts.wanRTT.String(), RatesMbit: opts.wanRates, Queue: opts.wanQueue.String(), Warmup: wanWarmup.String()}
	}
	failed := 0
	for _, tr := range opts.transports {
		start := time.Now()
		fmt.Fprintf(progress, "== %s\n", tr)
		measure := e.measure
		if opts.agents > 0 {
			measure = e.fleet
		}
		rows, trNotes, err := measure(ctx, tr)
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted; relay, agent and files cleaned up")
		}
		if err != nil {
			failed++
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: not measured: %v", tr, err))
			fmt.Fprintf(progress, "%s failed: %v\n", tr, err)
			continue
		}
		rep.Results = append(rep.Results, rows...)
		rep.Notes = append(rep.Notes, trNotes...)
		fmt.Fprintf(progress, "%s done in %v\n", tr, time.Since(start).Round(time.Second))
	}
	fmt.Fprintln(progress)
	if err := writeTable(stdout, rep); err != nil {
		return err
	}
	if opts.jsonPath != "" {
		if err := writeJSON(opts.jsonPath, rep); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d transports could not be measured (see notes)", failed, len(opts.transports))
	}
	return nil
}
