package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// The fleet measure answers "how many homes does one relay hold": one
// real relay binary, and --agents agents in this process, each with a
// session of its own (its own TCP+TLS+yamux connection, or QUIC
// connection and UDP socket) and one tunnel with a public port of its
// own, as a home with one service has. It reads the relay's resident
// memory and CPU time idle, with every agent logged in and idle, and
// with one visitor connection held open (idle) through every tunnel.

// fleetBase is the first public port of the fleet's tunnels: below
// Linux's ephemeral range (32768-60999), so that the fleet's own
// outgoing connections do not take them.
const fleetBase = 20000

// fleetMax is the most agents --agents allows: the ports from fleetBase
// up to the ephemeral range.
const fleetMax = 32768 - fleetBase

// fleetDialing bounds the agents logging in at once, under the relay's
// --max-handshakes-per-ip given below (all agents come from 127.0.0.1).
const fleetDialing = 16

// fleetUpWait bounds the wait for all agents to log in.
const fleetUpWait = 5 * time.Minute

// fleetRun is what one fleet run measured.
type fleetRun struct {
	relayIdle, relayAgents, relayVisitors int64 // KiB
	// CPU is the share of one core the relay used during the idle
	// window with agents only, and with agents and visitors.
	cpuAgents, cpuVisitors float64
	up                     time.Duration // until the last agent was in
	// relogins counts sessions agents made again after their first,
	// from the first reading on: a session lost to the machine's load
	// (a keepalive missed) disturbs the figures.
	relogins int64
}

// fleet measures the relay with opts.agents idle agent sessions and as
// many idle visitor connections, opts.repeat times, each run on a fresh
// relay.
func (e *env) fleet(ctx context.Context, tr string) ([]row, []string, error) {
	var runs []fleetRun
	for r := range e.opts.repeat {
		fr, err := e.fleetRun(ctx, tr)
		if err != nil {
			return nil, nil, fmt.Errorf("fleet run %d: %w", r+1, err)
		}
		runs = append(runs, fr)
	}
	n := float64(e.opts.agents)
	col := func(f func(fleetRun) float64) []float64 {
		out := make([]float64, len(runs))
		for i, fr := range runs {
			out[i] = f(fr)
		}
		return out
	}
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	a := e.opts.agents
	rows := []row{
		newRow(tr, "relay RSS idle", "MiB", col(func(f fleetRun) float64 { return mib(f.relayIdle) }), nil, nil),
		newRow(tr, fmt.Sprintf("relay RSS, %d agent sessions", a), "MiB", col(func(f fleetRun) float64 { return mib(f.relayAgents) }), nil, nil),
		newRow(tr, fmt.Sprintf("relay RSS, %d sessions + %d visitor conns", a, a), "MiB", col(func(f fleetRun) float64 { return mib(f.relayVisitors) }), nil, nil),
		newRow(tr, "relay memory per idle agent session", "KiB", col(func(f fleetRun) float64 { return float64(f.relayAgents-f.relayIdle) / n }), nil, nil),
		newRow(tr, "relay memory per idle visitor conn", "KiB", col(func(f fleetRun) float64 { return float64(f.relayVisitors-f.relayAgents) / n }), nil, nil),
		newRow(tr, fmt.Sprintf("relay CPU, %d idle agent sessions", a), "% core", col(func(f fleetRun) float64 { return 100 * f.cpuAgents }), nil, nil),
		newRow(tr, "relay CPU per 1000 idle agent sessions", "% core", col(func(f fleetRun) float64 { return 100 * f.cpuAgents * 1000 / n }), nil, nil),
		newRow(tr, "relay CPU per 1000 idle visitor conns", "% core", col(func(f fleetRun) float64 { return 100 * (f.cpuVisitors - f.cpuAgents) * 1000 / n }), nil, nil),
		newRow(tr, fmt.Sprintf("time until %d agents logged in", a), "s", col(func(f fleetRun) float64 { return f.up.Seconds() }), nil, nil),
		newRow(tr, "agent sessions made again while measuring", "sessions", col(func(f fleetRun) float64 { return float64(f.relogins) }), nil, nil),
	}
	var notes []string
	for i, f := range runs {
		if f.relogins > 0 {
			notes = append(notes, fmt.Sprintf("%s: fleet run %d: %d agent sessions were made again while measuring (keepalives missed on a loaded machine): its figures include their logins", tr, i+1, f.relogins))
		}
	}
	return rows, notes, nil
}

// fleetRun starts a relay, measures it idle, logs opts.agents agents in,
// measures, opens a visitor connection through every tunnel, measures,
// and stops everything.
func (e *env) fleetRun(ctx context.Context, tr string) (fr fleetRun, err error) {
	n := e.opts.agents
	if need := uint64(4*n + 1024); e.fileLimit < need {
		return fr, fmt.Errorf("%d agents need about %d file descriptors, the limit is %d (ulimit -n)", n, need, e.fileLimit)
	}
	for i := range n {
		if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(fleetBase+i))); err != nil {
			return fr, fmt.Errorf("public port %d is taken: the fleet needs %d-%d free", fleetBase+i, fleetBase, fleetBase+n-1)
		} else {
			ln.Close()
		}
	}
	dir, err := os.MkdirTemp(e.workDir, "fleet-"+tr+"-")
	if err != nil {
		return fr, err
	}
	relay, err := startProc("relay", e.bins.relay, dir, append([]string{
		"--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:0",
		"--bind-addr", "127.0.0.1",
		"--advertise", "127.0.0.1",
		"--allow-ports", fmt.Sprintf("%d-%d", fleetBase, fleetBase+n-1),
		"--max-agents", strconv.Itoa(n),
		"--max-tunnels", strconv.Itoa(n),
		"--max-handshakes-per-ip", "1024",
		// Every agent comes from 127.0.0.1: on a loaded machine a few
		// logins time out, and a relay's defaults would ban the address
		// of all of them. The measure is of sessions, not of logins.
		"--auth-ban-after", "0",
		"--handshake-timeout", "30s",
		"--shutdown-timeout", "1s",
		"--visitor-max-conns", visitorLimit,
		"--visitor-rate", visitorLimit,
		"--visitor-burst", visitorLimit,
		"--visitor-ban-after", "0",
	}, e.pairArgs()...)...)
	if err != nil {
		return fr, err
	}
	defer relay.stop()
	var relayAddr, token, fingerprint string
	err = relay.await(ctx, 20*time.Second, "relay banner", func() bool {
		out, _ := os.ReadFile(relay.stdout)
		var ok bool
		relayAddr, token, fingerprint, ok = parseBanner(string(out), filepath.Join(dir, "data"))
		return ok
	})
	if err != nil {
		return fr, err
	}
	if err := sleep(ctx, time.Second); err != nil {
		return fr, err
	}
	if fr.relayIdle, err = stableRSS(ctx, relay.pid()); err != nil {
		return fr, err
	}

	start := time.Now()
	var relogins atomic.Int64
	ports := make([]int, n)
	for i := range ports {
		ports[i] = fleetBase + i
	}
	stopAgents, err := startFleet(ctx, tr, relayAddr, token, fingerprint, e.target.addr, ports, &relogins)
	if err != nil {
		return fr, fmt.Errorf("%w\nrelay: %s", err, relay.logTail())
	}
	defer stopAgents()
	fr.up = time.Since(start)
	e.logf("%s: %d agents logged in in %v", tr, n, fr.up.Round(time.Millisecond))
	before := relogins.Load()
	if fr.relayAgents, fr.cpuAgents, err = e.fleetIdle(ctx, relay); err != nil {
		return fr, err
	}

	// A visitor that finds its agent between two sessions tries again.
	conns, err := holdEach(ctx, n, func(i int) string {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(fleetBase+i))
	}, 3)
	if err != nil {
		return fr, err
	}
	defer func() {
		closeAll(conns)
		_ = e.target.awaitIdle(ctx, idleWait)
	}()
	if fr.relayVisitors, fr.cpuVisitors, err = e.fleetIdle(ctx, relay); err != nil {
		return fr, err
	}
	fr.relogins = relogins.Load() - before
	if !relay.running() {
		return fr, fmt.Errorf("relay exited (%v)\n%s", relay.cmd.ProcessState, relay.logTail())
	}
	e.logf("%s: relay RSS %d KiB idle, %d KiB with %d agents, %d KiB with as many visitors; CPU %.2f%% with agents, %.2f%% with visitors; %d sessions made again",
		tr, fr.relayIdle, fr.relayAgents, n, fr.relayVisitors, 100*fr.cpuAgents, 100*fr.cpuVisitors, fr.relogins)
	return fr, nil
}

// fleetIdle lets the relay settle, reads its resident memory, and its CPU
// time over an idle window of opts.fleetWindow (keepalives are all it
// does then), as the share of one core.
func (e *env) fleetIdle(ctx context.Context, relay *proc) (rss int64, cpu float64, err error) {
	if err := sleep(ctx, 2*time.Second); err != nil {
		return 0, 0, err
	}
	if rss, err = stableRSS(ctx, relay.pid()); err != nil {
		return 0, 0, err
	}
	c0, err := readCPU(relay.pid())
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	if err := sleep(ctx, e.opts.fleetWindow); err != nil {
		return 0, 0, err
	}
	c1, err := readCPU(relay.pid())
	if err != nil {
		return 0, 0, err
	}
	return rss, float64(c1-c0) / float64(time.Since(t0)), nil
}

// startFleet runs an agent in this process for each of ports, agent i
// with the tunnel ports[i] to target, at most fleetDialing of them
// logging in at once,
// and waits until each has registered its tunnel. Every later session an
// agent makes adds one to relogins. stop ends them all.
func startFleet(ctx context.Context, tr, relayAddr, token, fingerprint, target string, ports []int, relogins *atomic.Int64) (stop func(), err error) {
	n := len(ports)
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg    sync.WaitGroup
		slots = make(chan struct{}, fleetDialing)
		up    = make(chan error, n)
	)
	stop = func() {
		cancel()
		wg.Wait()
	}
	log := slog.New(slog.DiscardHandler)
	deadline := time.NewTimer(fleetUpWait)
	defer deadline.Stop()
	pending := 0
	wait := func() error { // for one agent to report
		select {
		case err := <-up:
			pending--
			<-slots
			return err
		case <-deadline.C:
			return fmt.Errorf("agents not all logged in after %v (%d waiting)", fleetUpWait, pending)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i := range n {
		for len(slots) == cap(slots) {
			if err := wait(); err != nil {
				stop()
				return nil, err
			}
		}
		cfg := config.Agent{
			Relay:       relayAddr,
			Transport:   tr,
			Token:       token,
			Fingerprint: fingerprint,
			ID:          fmt.Sprintf("fleet-%d", i),
			Tunnels: []config.Tunnel{{
				Name: "home", Protocol: "tcp", RemotePort: uint16(ports[i]), Target: target,
			}},
			DialTimeout:      10 * time.Second,
			HandshakeTimeout: 30 * time.Second,
			ReconnectMax:     5 * time.Second,
			// The relay's defaults, as a real agent has them.
			Session: config.Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 16 << 20},
		}
		a, err := agent.New(cfg, "load", log)
		if err != nil {
			stop()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		var (
			once  sync.Once
			first atomic.Bool
		)
		a.OnSession = func(si agent.SessionInfo) {
			if first.Swap(true) {
				relogins.Add(1)
			}
			once.Do(func() {
				var err error
				if si.Transport != tr {
					err = fmt.Errorf("agent %d: connected over %s, not %s", i, si.Transport, tr)
				}
				for _, r := range si.Results {
					if r.Code != tunnel.CodeOK {
						err = fmt.Errorf("agent %d: tunnel %s refused: %s", i, r.Name, r.Message)
					}
				}
				up <- err
			})
		}
		slots <- struct{}{}
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				once.Do(func() { up <- fmt.Errorf("agent %d: %w", i, err) })
			}
		}()
	}
	for pending > 0 {
		if err := wait(); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}
