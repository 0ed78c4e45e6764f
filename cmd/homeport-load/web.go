package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The web measure: the relay's HTTP path (http_addr, a web tunnel routed
// by Host) against nginx directly. Keep-alive HTTP/1.1 GETs of a small
// file on 1 and on 16 connections, each for the run's duration: requests
// per second and the latency of each request.

const (
	webFile     = "small.bin"
	webFileSize = 1 << 10
	webHost     = "bench.load.test"
)

// nginx is an nginx process serving webFile on loopback.
type nginx struct {
	addr string
	cmd  *exec.Cmd
}

// startNginx runs nginx from the system (Debian package nginx) in dir.
func startNginx(ctx context.Context, dir string) (*nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, fmt.Errorf("nginx not found (Debian package nginx): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	www := filepath.Join(dir, "www")
	for _, d := range []string{www, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	body := make([]byte, webFileSize)
	for i := range body {
		body[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(www, webFile), body, 0o644); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := fmt.Sprintf(`# homeport-load: the web measure's target
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	client_body_temp_path %[1]s/tmp/body;
	proxy_temp_path %[1]s/tmp/proxy;
	fastcgi_temp_path %[1]s/tmp/fastcgi;
	uwsgi_temp_path %[1]s/tmp/uwsgi;
	scgi_temp_path %[1]s/tmp/scgi;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, dir, addr, www)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	// One -g: nginx reads only the last, and without "daemon off" it
	// forks into the background, beyond stop's reach.
	global := "daemon off;"
	if os.Geteuid() == 0 {
		global += " user root;"
	}
	args := []string{"-e", "stderr", "-p", dir, "-c", confPath, "-g", global}
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(dir, "nginx.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &nginx{addr: addr, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := getOnce(ctx, "http://"+addr+"/"+webFile, ""); err == nil {
			return n, nil
		}
		if time.Now().After(deadline) {
			n.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "nginx.log"))
			return nil, fmt.Errorf("nginx does not answer on %s: %s", addr, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *nginx) stop() {
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
}

// getOnce fetches url with a fresh connection.
func getOnce(ctx context.Context, url, host string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// webResult is one run of keep-alive GETs.
type webResult struct {
	requests int64
	elapsed  time.Duration
	samples  []time.Duration
	failures int64
	lastErr  error
}

// webRun sends GETs for url (with Host host, if set) on conns keep-alive
// connections, one request at a time on each, for d.
func webRun(ctx context.Context, url, host string, conns int, d time.Duration) webResult {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true,
		ResponseHeaderTimeout: ioLimit}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(ctx, d+ioLimit)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		res      webResult
		requests atomic.Int64
	)
	start := time.Now()
	end := start.Add(d)
	for range conns {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				err := get(ctx, client, url, host)
				if err != nil {
					mu.Lock()
					res.failures++
					res.lastErr = err
					mu.Unlock()
					continue
				}
				requests.Add(1)
				if len(mine) < maxSamples/conns {
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			res.samples = append(res.samples, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res.requests = requests.Load()
	res.elapsed = time.Since(start)
	return res
}

func get(ctx context.Context, c *http.Client, url, host string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s", resp.Status)
	case n != webFileSize:
		return fmt.Errorf("%d bytes, want %d", n, webFileSize)
	}
	return nil
}

// web measures the relay's HTTP path against nginx directly.
func (e *env) web(ctx context.Context, tr string) ([]row, []string, error) {
	dir, err := os.MkdirTemp(e.workDir, "nginx-")
	if err != nil {
		return nil, nil, err
	}
	ng, err := startNginx(ctx, dir)
	if err != nil {
		return nil, nil, err
	}
	defer ng.stop()
	httpPort, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	relayHTTP := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	p, err := startPair(ctx, e.bins, tr, e.target.addr, e.workDir, pairOptions{
		args:      e.pairArgs(),
		relayArgs: []string{"--http-addr", relayHTTP, "--domain", "load.test"},
		tunnels:   []string{"web=http:bench:" + ng.addr},
	})
	if err != nil {
		return nil, nil, err
	}
	defer p.stop()
	var (
		rows  []row
		notes []string
	)
	for _, conns := range []int{1, 16} {
		what := fmt.Sprintf("HTTP GET 1 KiB, %d keep-alive conn", conns)
		if conns > 1 {
			what += "s"
		}
		// [tunnel, direct] × [requests/s, p50, p99], one value per run.
		var runs [2][3][]float64
		for r := range e.opts.repeat {
			targets := []struct {
				name, url, host string
				tunnel          bool
			}{
				{"tunnel", "http://" + relayHTTP + "/" + webFile, webHost, true},
				{"direct", "http://" + ng.addr + "/" + webFile, "", false},
			}
			if r%2 == 1 {
				targets[0], targets[1] = targets[1], targets[0]
			}
			for _, t := range targets {
				res := webRun(ctx, t.url, t.host, conns, e.opts.duration)
				if err := ctx.Err(); err != nil {
					return nil, nil, err
				}
				if res.requests == 0 {
					return nil, nil, fmt.Errorf("%s, %s: no request completed: %v", what, t.name, res.lastErr)
				}
				if res.failures > 0 {
					notes = append(notes, fmt.Sprintf("%s: %s, %s, run %d: %d requests failed (last: %v)", tr, what, t.name, r+1, res.failures, res.lastErr))
				}
				l := summarize(res.samples)
				rate := float64(res.requests) / res.elapsed.Seconds()
				i := 1
				if t.tunnel {
					i = 0
				}
				runs[i][0] = append(runs[i][0], rate)
				runs[i][1] = append(runs[i][1], micros(l.p50))
				runs[i][2] = append(runs[i][2], micros(l.p99))
				e.logf("%s: %s, %s: %.0f requests/s, p50 %.0f µs, p99 %.0f µs", tr, what, t.name, rate, micros(l.p50), micros(l.p99))
				if err := p.check(); err != nil {
					return nil, nil, err
				}
			}
		}
		rows = append(rows,
			newRow(tr, what+", requests/s", "req/s", runs[0][0], runs[1][0], nil),
			newRow(tr, what+", p50", "µs", runs[0][1], runs[1][1], nil),
			newRow(tr, what+", p99", "µs", runs[0][2], runs[1][2], nil))
	}
	if err := p.check(); err != nil {
		return nil, nil, err
	}
	return rows, notes, nil
}
