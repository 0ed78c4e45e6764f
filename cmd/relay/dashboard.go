package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/relay/dashboard"
)

// serveDashboard serves the web dashboard on cfg.Dashboard.Addr, when set,
// until ctx ends; the returned function waits for it to stop. An address
// that cannot be listened on is an error: the operator asked for it.
func serveDashboard(ctx context.Context, cfg config.Relay, status func() relay.Status, log *slog.Logger) (wait func(), err error) {
	dc := cfg.Dashboard
	if dc.Addr == "" {
		return func() {}, nil
	}
	log = log.With("component", "dashboard")
	d, err := dashboard.New(status, dashboard.Options{Password: string(dc.Password), Log: log})
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if dc.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(dc.TLSCert, dc.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("dashboard_tls_cert %s, dashboard_tls_key %s: %w", dc.TLSCert, dc.TLSKey, err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", dc.Addr)
	if err != nil {
		return nil, fmt.Errorf("dashboard_addr: %w", err)
	}
	scheme := "http"
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
		scheme = "https"
	}
	srv := &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// No WriteTimeout: the event stream lasts; it sets a deadline on
		// each write instead.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = d.Run(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx) // open event streams end with ctx
	})
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dashboard stopped", "err", err)
		}
	})
	log.Info("dashboard listening", "url", scheme+"://"+ln.Addr().String()+"/", "login", dc.Password != "")
	return wg.Wait, nil
}
