package main

import (
	"context"
	"fmt"
	"time"
)

// wanWarmup is the part of each run over a delaying path that is not
// counted: at a 50 ms round trip TCP and QUIC leave slow start, and
// QUIC's windows grow to their size, well within it.
const wanWarmup = time.Second

// wanBulk measures one bulk stream each way over a delaying path, at each
// rate: through the tunnel, with the agent reaching the relay through a
// delaying forwarder (visitors and target stay on plain loopback), and
// plain TCP through a forwarder of the same model to the target.
func (e *env) wanBulk(ctx context.Context, tr string) ([]row, []string, error) {
	if e.opts.wanRTT <= 0 {
		return nil, nil, nil
	}
	var (
		rows  []row
		notes []string
	)
	for _, mbit := range e.opts.wanRates {
		w := wan{rate: float64(mbit) * 1e6 / 8, delay: e.opts.wanRTT / 2, queue: e.opts.wanQueue}
		r, n, err := e.wanBulkAt(ctx, tr, w)
		if err != nil {
			return nil, nil, fmt.Errorf("over a path of %v: %w", w, err)
		}
		rows, notes = append(rows, r...), append(notes, n...)
	}
	return rows, notes, nil
}

// wanBulkAt measures over one path model, on a pair of its own.
func (e *env) wanBulkAt(ctx context.Context, tr string, w wan) ([]row, []string, error) {
	var udp *udpForwarder // QUIC's path, for its drop count
	via := func(ctx context.Context, relay string) (string, func(), error) {
		if tr == "quic" {
			f, err := startUDPForwarder(ctx, relay, w)
			if err != nil {
				return "", nil, err
			}
			udp = f
			return f.Addr(), func() { f.Close() }, nil
		}
		f, err := startTCPForwarder(ctx, relay, w)
		if err != nil {
			return "", nil, err
		}
		return f.Addr(), func() { f.Close() }, nil
	}
	p, err := startPair(ctx, e.bins, tr, e.target.addr, e.workDir, pairOptions{via: via, args: e.pairArgs()})
	if err != nil {
		return nil, nil, err
	}
	defer p.stop()
	plain, err := startTCPForwarder(ctx, e.target.addr, w)
	if err != nil {
		return nil, nil, err
	}
	defer plain.Close()
	type transfer func(ctx context.Context, addr string, warmup, d time.Duration) (int64, time.Duration, error)
	transfers := map[string]transfer{"download": steadyDownload, "upload": steadyUpload}
	// A single stream over a path with a round trip must not be capped
	// by the multiplexer's window.
	want := goal{ratio: true, limit: 0.8}
	dirs := []string{"download", "upload"}
	type result struct{ tun, direct []float64 }
	results := map[string]*result{}
	for _, dir := range dirs {
		results[dir] = &result{}
	}
	what := func(dir string) string {
		return fmt.Sprintf("bulk %s, 1 stream, %v RTT, %s", dir, 2*w.delay, formatRate(w.rate))
	}
	// one measures a direction's run r: the tunnel and plain TCP, in an
	// order that alternates with r.
	one := func(dir string, r int) error {
		res := results[dir]
		for _, pa := range paths(p.public, plain.Addr(), r) {
			n, elapsed, err := transfers[dir](ctx, pa.addr, wanWarmup, e.opts.duration)
			name := pa.name
			if !pa.tunnel {
				name = "plain TCP"
			}
			if err != nil {
				return fmt.Errorf("%s, %s: %w", what(dir), name, err)
			}
			mbps := float64(n) / elapsed.Seconds() / 1e6
			if pa.tunnel {
				res.tun = append(res.tun, mbps)
			} else {
				res.direct = append(res.direct, mbps)
			}
			e.logf("%s: %s, %s: %.1f MB/s", tr, what(dir), name, mbps)
			if err := e.settle(ctx, p); err != nil {
				return err
			}
		}
		return nil
	}
	if e.opts.wanAlternate {
		// Each tunnel run but the first follows one the other way.
		for r := range e.opts.repeat {
			for _, dir := range dirs {
				if err := one(dir, r); err != nil {
					return nil, nil, err
				}
			}
		}
	} else {
		for _, dir := range dirs {
			for r := range e.opts.repeat {
				if err := one(dir, r); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	var rows []row
	for _, dir := range dirs {
		rows = append(rows, newRow(tr, what(dir), "MB/s", results[dir].tun, results[dir].direct, &want))
	}
	var notes []string
	if udp != nil {
		fw, dr := udp.counts()
		notes = append(notes, fmt.Sprintf("%s: the path of %v dropped %d of %d datagrams at its full queue", tr, w, dr, fw+dr))
	}
	if err := p.check(); err != nil {
		return nil, nil, err
	}
	for _, wn := range p.warnings() {
		notes = append(notes, fmt.Sprintf("%s, path of %v: %s", tr, w, wn))
	}
	return rows, notes, nil
}
