package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"time"
)

// env is what every measurement shares.
type env struct {
	opts      options
	bins      binaries
	target    *targetProc
	workDir   string
	progress  io.Writer
	fileLimit uint64
}

func (e *env) logf(format string, args ...any) { fmt.Fprintf(e.progress, format+"\n", args...) }

// idleWait bounds the wait for the target to finish with a run's
// connections before the next run starts.
const idleWait = 30 * time.Second

// path is where a run connects: through the tunnel or straight to the
// target.
type path struct {
	name   string // "tunnel" or "direct"
	addr   string
	tunnel bool
}

// paths returns both paths, in an order that alternates with run r so
// that a slow moment of a noisy machine does not always hit the same one.
func paths(tunnelAddr, directAddr string, r int) []path {
	p := []path{{"tunnel", tunnelAddr, true}, {"direct", directAddr, false}}
	if r%2 == 1 {
		p[0], p[1] = p[1], p[0]
	}
	return p
}

// pairArgs are the flags every relay and agent gets.
func (e *env) pairArgs() []string {
	var args []string
	if e.opts.streamWindow != "" {
		args = append(args, "--stream-window", e.opts.streamWindow)
	}
	if e.opts.profileDir != "" {
		args = append(args, "--debug-addr", "127.0.0.1:0")
	}
	return args
}

// measure takes every figure for one transport: throughput, latency and
// churn on one relay and agent, bulk over a delaying path on another pair
// for each rate, then memory, each level on a fresh pair.
func (e *env) measure(ctx context.Context, transport string) ([]row, []string, error) {
	if e.opts.wanOnly {
		return e.wanBulk(ctx, transport)
	}
	if e.opts.webOnly {
		return e.web(ctx, transport)
	}
	perf, notes, err := e.perf(ctx, transport)
	if err != nil {
		return nil, nil, err
	}
	slow, slowNotes, err := e.wanBulk(ctx, transport)
	if err != nil {
		return nil, nil, err
	}
	mem, memNotes, err := e.memory(ctx, transport)
	if err != nil {
		return nil, nil, err
	}
	web, webNotes, err := e.web(ctx, transport)
	var missing *exec.Error
	switch {
	case errors.As(err, &missing):
		webNotes = []string{transport + ": web path not measured: " + err.Error()}
	case err != nil:
		return nil, nil, err
	}
	rows := append(append(append(perf, slow...), mem...), web...)
	return rows, append(append(append(notes, slowNotes...), memNotes...), webNotes...), nil
}

// perf measures throughput, CPU, latency and churn on one relay and
// agent.
func (e *env) perf(ctx context.Context, tr string) ([]row, []string, error) {
	p, err := startPair(ctx, e.bins, tr, e.target.addr, e.workDir, pairOptions{args: e.pairArgs()})
	if err != nil {
		return nil, nil, err
	}
	defer p.stop()
	var rows []row
	bulk, err := e.bulk(ctx, tr, p)
	if err != nil {
		return nil, nil, err
	}
	rows = append(rows, bulk...)
	lat, err := e.latency(ctx, tr, p)
	if err != nil {
		return nil, nil, err
	}
	rows = append(rows, lat...)
	ch, notes, err := e.churn(ctx, tr, p)
	if err != nil {
		return nil, nil, err
	}
	rows = append(rows, ch...)
	if err := p.check(); err != nil {
		return nil, nil, err
	}
	for _, w := range p.warnings() {
		notes = append(notes, tr+": "+w)
	}
	return rows, notes, nil
}

// settle waits for the target to be idle and checks that relay and agent
// still run.
func (e *env) settle(ctx context.Context, p *pair) error {
	if err := e.target.awaitIdle(ctx, idleWait); err != nil {
		return err
	}
	return p.check()
}

// processCPU returns the CPU time relay and agent have used so far.
func processCPU(p *pair) (relay, agent time.Duration, err error) {
	if relay, err = readCPU(p.relay.pid()); err != nil {
		return 0, 0, err
	}
	agent, err = readCPU(p.agent.pid())
	return relay, agent, err
}

// bulk measures throughput, and the relay's and agent's CPU time per
// gigabyte over all of the tunnel's bulk runs.
func (e *env) bulk(ctx context.Context, tr string, p *pair) ([]row, error) {
	type transfer func(ctx context.Context, addr string, streams int, d time.Duration) (int64, time.Duration, error)
	var (
		rows               []row
		relayCPU, agentCPU time.Duration
		tunnelBytes        int64
		oneStream          = goal{ratio: true, limit: 0.35}
		manyStreams        = goal{ratio: true, limit: 0.35}
		cpuPerGB           = goal{atMost: true, limit: 0.8}
		streamCounts       = []int{1, e.opts.streams}
		directions         = []string{"upload", "download"}
		transfers          = map[string]transfer{"upload": upload, "download": download}
	)
	if tr == "quic" {
		oneStream.limit = 0.20
	}
	for _, dir := range directions {
		for _, streams := range streamCounts {
			what := fmt.Sprintf("bulk %s, %d stream", dir, streams)
			if streams > 1 {
				what += "s"
			}
			var tun, direct []float64
			for r := range e.opts.repeat {
				for _, pa := range paths(p.public, e.target.addr, r) {
					r0, a0, err := processCPU(p)
					if err != nil {
						return nil, err
					}
					profiled := e.profileRun(ctx, p, pa, r, fmt.Sprintf("%s-bulk-%s-%d", tr, dir, streams))
					n, elapsed, err := transfers[dir](ctx, pa.addr, streams, e.opts.duration)
					if err != nil {
						return nil, fmt.Errorf("%s, %s: %w", what, pa.name, err)
					}
					if err := profiled(); err != nil {
						return nil, err
					}
					r1, a1, err := processCPU(p)
					if err != nil {
						return nil, err
					}
					mbps := float64(n) / elapsed.Seconds() / 1e6
					if pa.tunnel {
						tun = append(tun, mbps)
						relayCPU += r1 - r0
						agentCPU += a1 - a0
						tunnelBytes += n
					} else {
						direct = append(direct, mbps)
					}
					e.logf("%s: %s, %s: %.0f MB/s", tr, what, pa.name, mbps)
					if err := e.settle(ctx, p); err != nil {
						return nil, err
					}
				}
			}
			g := &manyStreams
			if streams == 1 {
				g = &oneStream
			}
			rows = append(rows, newRow(tr, what, "MB/s", tun, direct, g))
		}
	}
	gb := float64(tunnelBytes) / 1e9
	rows = append(rows,
		newRow(tr, "relay CPU per GB (bulk runs)", "s/GB", []float64{relayCPU.Seconds() / gb}, nil, &cpuPerGB),
		newRow(tr, "agent CPU per GB (bulk runs)", "s/GB", []float64{agentCPU.Seconds() / gb}, nil, &cpuPerGB))
	return rows, nil
}

// latency measures 64-byte ping-pong on one connection and on 32 at once.
func (e *env) latency(ctx context.Context, tr string, p *pair) ([]row, error) {
	var rows []row
	for _, conns := range []int{1, 32} {
		what := fmt.Sprintf("ping-pong 64 B, %d conn", conns)
		if conns > 1 {
			what += "s"
		}
		// [tunnel, direct] × [p50, p99, p999], one value per run.
		var runs [2][3][]float64
		for r := range e.opts.repeat {
			for _, pa := range paths(p.public, e.target.addr, r) {
				samples, err := pingPong(ctx, pa.addr, conns, e.opts.rtts)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", what, pa.name, err)
				}
				l := summarize(samples)
				i := 1
				if pa.tunnel {
					i = 0
				}
				for j, v := range []time.Duration{l.p50, l.p99, l.p999} {
					runs[i][j] = append(runs[i][j], micros(v))
				}
				e.logf("%s: %s, %s: p50 %.0f µs, p99 %.0f µs, p999 %.0f µs (%d round trips)",
					tr, what, pa.name, micros(l.p50), micros(l.p99), micros(l.p999), l.n)
				if err := e.settle(ctx, p); err != nil {
					return nil, err
				}
			}
		}
		goals := []*goal{{ratio: true, atMost: true, limit: 5}, {ratio: true, atMost: true, limit: 4}, nil}
		for j, q := range []string{"p50", "p99", "p999"} {
			rows = append(rows, newRow(tr, what+", "+q, "µs", runs[0][j], runs[1][j], goals[j]))
		}
	}
	return rows, nil
}

// churn measures new connections per second (connect, 1-byte echo,
// close) and their connect-to-first-byte time.
func (e *env) churn(ctx context.Context, tr string, p *pair) ([]row, []string, error) {
	var (
		rate, firstByte [2][]float64 // [tunnel, direct], one value per run
		notes           []string
	)
	for r := range e.opts.repeat {
		for _, pa := range paths(p.public, e.target.addr, r) {
			profiled := e.profileRun(ctx, p, pa, r, tr+"-churn")
			res := churn(ctx, pa.addr, e.opts.churnWorkers, e.opts.duration)
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			if err := profiled(); err != nil {
				return nil, nil, err
			}
			if res.conns == 0 {
				return nil, nil, fmt.Errorf("churn, %s: no connection completed: %v", pa.name, res.lastErr)
			}
			if res.failures > 0 {
				notes = append(notes, fmt.Sprintf("%s: churn, %s, run %d: %d of %d connections failed (last: %v)",
					tr, pa.name, r+1, res.failures, res.failures+res.conns, res.lastErr))
			}
			slices.Sort(res.firstB)
			i := 1
			if pa.tunnel {
				i = 0
			}
			perSec := float64(res.conns) / res.elapsed.Seconds()
			p99 := percentile(res.firstB, 99)
			rate[i] = append(rate[i], perSec)
			firstByte[i] = append(firstByte[i], micros(p99))
			e.logf("%s: churn, %s: %.0f conn/s, connect to first byte p99 %.0f µs", tr, pa.name, perSec, micros(p99))
			if err := e.settle(ctx, p); err != nil {
				return nil, nil, err
			}
		}
	}
	what := fmt.Sprintf("churn, %d workers: connect, 1-byte echo, close", e.opts.churnWorkers)
	return []row{
		newRow(tr, what, "conn/s", rate[0], rate[1], &goal{ratio: true, limit: 0.40}),
		newRow(tr, "churn: connect to first byte, p99", "µs", firstByte[0], firstByte[1], nil),
	}, notes, nil
}

// memLevel is the memory taken at one level of idle connections.
type memLevel struct {
	conns                int
	relayIdle, agentIdle int64 // KiB
	relayWith, agentWith int64 // KiB
}

// memory measures the resident memory of relay and agent idle and with
// each level of idle tunneled connections, each level on a fresh pair.
func (e *env) memory(ctx context.Context, tr string) ([]row, []string, error) {
	var (
		levels []memLevel
		notes  []string
	)
	for _, n := range e.opts.conns {
		// This process, relay, agent and target each hold a descriptor
		// per connection.
		if need := uint64(n + 1024); e.fileLimit < need {
			notes = append(notes, fmt.Sprintf("%s: memory with %d connections skipped: it needs about %d file descriptors, the limit is %d (ulimit -n)",
				tr, n, need, e.fileLimit))
			continue
		}
		l, err := e.memoryLevel(ctx, tr, n)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			notes = append(notes, fmt.Sprintf("%s: memory with %d connections skipped: %v", tr, n, err))
			continue
		}
		levels = append(levels, l)
	}
	if len(levels) == 0 {
		return nil, notes, nil
	}
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	perConn := goal{atMost: true, limit: 12}
	var rows []row
	for _, who := range []string{"relay", "agent"} {
		var idle []float64
		for _, l := range levels {
			idle = append(idle, mib(pick(who, l.relayIdle, l.agentIdle)))
		}
		rows = append(rows, newRow(tr, who+" RSS idle", "MiB", idle, nil, nil))
		for _, l := range levels {
			rows = append(rows, newRow(tr, fmt.Sprintf("%s RSS, %d idle conns", who, l.conns), "MiB",
				[]float64{mib(pick(who, l.relayWith, l.agentWith))}, nil, nil))
		}
		for _, l := range levels {
			grew := pick(who, l.relayWith-l.relayIdle, l.agentWith-l.agentIdle)
			rows = append(rows, newRow(tr, fmt.Sprintf("%s memory per conn, %d idle conns", who, l.conns), "KiB/conn",
				[]float64{float64(grew) / float64(l.conns)}, nil, &perConn))
		}
	}
	return rows, notes, nil
}

func pick[T any](who string, relay, agent T) T {
	if who == "relay" {
		return relay
	}
	return agent
}

// memoryLevel starts a relay and an agent, reads their memory idle, opens
// n connections through the tunnel and reads it again.
func (e *env) memoryLevel(ctx context.Context, tr string, n int) (memLevel, error) {
	l := memLevel{conns: n}
	p, err := startPair(ctx, e.bins, tr, e.target.addr, e.workDir, pairOptions{args: e.pairArgs()})
	if err != nil {
		return l, err
	}
	defer p.stop()
	if err := sleep(ctx, time.Second); err != nil {
		return l, err
	}
	if l.relayIdle, l.agentIdle, err = pairRSS(ctx, p); err != nil {
		return l, err
	}
	start := time.Now()
	conns, err := hold(ctx, p.public, n)
	if err != nil {
		return l, err
	}
	defer func() {
		closeAll(conns)
		_ = e.target.awaitIdle(ctx, idleWait)
	}()
	e.logf("%s: %d idle connections open in %v", tr, n, time.Since(start).Round(time.Millisecond))
	if err := sleep(ctx, time.Second); err != nil {
		return l, err
	}
	if l.relayWith, l.agentWith, err = pairRSS(ctx, p); err != nil {
		return l, err
	}
	if err := e.profileHeap(ctx, p, fmt.Sprintf("%s-idle-%d", tr, n)); err != nil {
		return l, err
	}
	if err := p.check(); err != nil {
		return l, err
	}
	e.logf("%s: RSS relay %d KiB idle, %d KiB with %d connections; agent %d KiB idle, %d KiB with them",
		tr, l.relayIdle, l.relayWith, n, l.agentIdle, l.agentWith)
	return l, nil
}

// pairRSS reads relay's and agent's resident memory once it has stopped
// moving.
func pairRSS(ctx context.Context, p *pair) (relay, agent int64, err error) {
	if relay, err = stableRSS(ctx, p.relay.pid()); err != nil {
		return 0, 0, err
	}
	agent, err = stableRSS(ctx, p.agent.pid())
	return relay, agent, err
}

// stableRSS reads the resident memory of pid every 200 ms until two
// readings are within 1% of each other, for up to 3 s, and returns the
// last reading.
func stableRSS(ctx context.Context, pid int) (int64, error) {
	prev, err := readRSS(pid)
	if err != nil {
		return 0, err
	}
	for range 15 {
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return 0, err
		}
		cur, err := readRSS(pid)
		if err != nil {
			return 0, err
		}
		if d := cur - prev; d*100 <= cur && -d*100 <= cur {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
