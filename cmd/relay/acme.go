package main

import (
	"context"
	"log/slog"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/relay/acme"
)

// startCertificates gives the relay's HTTPS port certificates over ACME
// for the names its agents register (the acme section). It runs only
// when https_addr is open, and after Listen: the challenges are answered
// on the relay's own listeners, so certmagic must find them taken.
func startCertificates(ctx context.Context, cfg config.Relay, srv *relay.Server, log *slog.Logger) (*acme.Manager, error) {
	httpAddr, httpsAddr := srv.WebAddrs()
	if httpsAddr == nil {
		return nil, nil
	}
	c := acme.Config{
		Dir:     acme.StorageDir(cfg.DataDir),
		Email:   cfg.ACME.Email,
		CA:      cfg.ACME.CA,
		CARoots: cfg.ACME.CARoots,
		Allow: func(_ context.Context, name string) error {
			return srv.ServesHost(name)
		},
		Logger:           log.With("part", "acme"),
		HTTPSAddr:        httpsAddr.String(),
		DisableHTTP01:    !cfg.ACME.HTTP01,
		DisableTLSALPN01: !cfg.ACME.TLSALPN01,
	}
	if httpAddr != nil {
		c.HTTPAddr = httpAddr.String()
	}
	m, err := acme.New(ctx, c)
	if err != nil {
		return nil, err
	}
	srv.SetCertificates(m)
	return m, nil
}

// certStatus is the certificates' part of the relay's status.
func certStatus(m *acme.Manager) []relay.CertificateStatus {
	if m == nil {
		return nil
	}
	var out []relay.CertificateStatus
	for _, c := range m.Status() {
		out = append(out, relay.CertificateStatus{Name: c.Name, State: string(c.State), NotAfter: c.NotAfter,
			NextRenewal: c.NextRenewal, Error: c.LastError})
	}
	return out
}
