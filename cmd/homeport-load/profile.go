package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// With --profile, relay and agent run with --debug-addr and the tool
// records their profiles (go tool pprof FILE) while it measures: CPU
// during the first tunnel run of each bulk and churn measure, heap with
// the idle connections of each memory level.

// profilerURL matches the profiler's address in a relay's or agent's log.
var profilerURL = regexp.MustCompile(`msg="profiler listening" url=(\S+)`)

// profiler returns the base URL of pr's profiler, as its log gave it.
func profiler(pr *proc) (string, error) {
	m := profilerURL.FindStringSubmatch(pr.logText())
	if m == nil {
		return "", fmt.Errorf("%s logged no profiler address (does it have --debug-addr?)", pr.name)
	}
	return m[1], nil
}

// profileCPU starts recording the CPU profiles of p's relay and agent for
// d, as files named for what in the profile directory, and returns a
// function that waits for both and reports the first failure. Without
// --profile it records nothing.
func (e *env) profileCPU(ctx context.Context, p *pair, what string, d time.Duration) func() error {
	if e.opts.profileDir == "" {
		return func() error { return nil }
	}
	secs := max(1, int(math.Ceil(d.Seconds())))
	errs := make(chan error, 2)
	for _, pr := range []*proc{p.relay, p.agent} {
		go func() {
			errs <- e.fetchProfile(ctx, pr, fmt.Sprintf("profile?seconds=%d", secs), what+"-"+pr.name+".cpu.pprof", time.Duration(secs+30)*time.Second)
		}()
	}
	return func() error { return errors.Join(<-errs, <-errs) }
}

// profileRun records the CPU profiles of a run of e.opts.duration on path
// pa, repeat r, if it is the first through the tunnel (see profileCPU).
func (e *env) profileRun(ctx context.Context, p *pair, pa path, r int, what string) func() error {
	if !pa.tunnel || r > 0 {
		return func() error { return nil }
	}
	return e.profileCPU(ctx, p, what, e.opts.duration)
}

// profileHeap records the heap profiles of p's relay and agent now.
func (e *env) profileHeap(ctx context.Context, p *pair, what string) error {
	if e.opts.profileDir == "" {
		return nil
	}
	var errs []error
	for _, pr := range []*proc{p.relay, p.agent} {
		errs = append(errs, e.fetchProfile(ctx, pr, "heap?gc=1", what+"-"+pr.name+".heap.pprof", 30*time.Second))
	}
	return errors.Join(errs...)
}

// fetchProfile gets path from pr's profiler into file in the profile
// directory, within timeout.
func (e *env) fetchProfile(ctx context.Context, pr *proc, path, file string, timeout time.Duration) error {
	base, err := profiler(pr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s profile %s: %w", pr.name, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s profile %s: %s", pr.name, path, resp.Status)
	}
	f, err := os.Create(filepath.Join(e.opts.profileDir, file))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("%s profile %s: %w", pr.name, path, err)
	}
	return f.Close()
}
