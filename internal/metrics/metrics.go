// Package metrics serves a relay's or agent's Prometheus metrics and its
// health endpoints on the opt-in metrics_addr:
//
//	/metrics  the process's registry, in the Prometheus text format
//	/healthz  200 while the process runs (liveness)
//	/readyz   200 when it can carry traffic, else 503 with the reason
//
// Every program builds its own registry (no global one), with the build
// info, Go runtime and process collectors added here.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry holding the standard collectors and a
// homeport_build_info gauge for program ("relay" or "agent").
func NewRegistry(program, version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "homeport_build_info",
		Help:        "Always 1; the labels name the program and its version.",
		ConstLabels: prometheus.Labels{"program": program, "version": version},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// Handler returns the metrics and health endpoints. ready reports why the
// process cannot carry traffic yet (nil: it can).
func Handler(g prometheus.Gatherer, ready func() error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             20 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Serve listens on addr and serves h until ctx ends. The listener is open
// when Serve returns; the returned function waits for the server to stop
// after ctx has ended.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (wait func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_addr %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	log.Info("serving metrics", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return wg.Wait, nil
}

// Start serves, on addr, program's registry (with what register adds to
// it), its health and its readiness, until ctx ends; the returned
// function waits for the server to stop.
func Start(ctx context.Context, addr, program, version string, register func(prometheus.Registerer) error, ready func() error, log *slog.Logger) (wait func(), err error) {
	reg := NewRegistry(program, version)
	if err := register(reg); err != nil {
		return nil, err
	}
	return Serve(ctx, addr, Handler(reg, ready, log), log)
}
