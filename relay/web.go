package relay

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// Web tunnels have no port of their own: the relay serves them on its
// shared http_addr and https_addr by host name (webproxy.go, sni.go). A
// name is held by one web tunnel at a time, relay-wide; a token may claim
// the names its hosts cover (see hostRefusal).

// Certificates terminates TLS for the HTTP names the relay serves.
type Certificates interface {
	// TLSConfig is used for every TLS connection the relay terminates on https_addr
	// (GetCertificate, NextProtos with h2 and http/1.1, and acme-tls/1 answering).
	TLSConfig() *tls.Config
	// HTTPHandler wraps the http_addr handler so that ACME HTTP-01 challenges are answered.
	HTTPHandler(next http.Handler) http.Handler
	// Prepare starts, in the background, getting a certificate for name, which
	// an agent has just registered and its token may claim. It does not block.
	Prepare(name string)
}

// SetCertificates makes c terminate TLS for the relay's http tunnels on
// https_addr (nil: none, the default). Call it before Serve (after
// Listen, so that the manager knows the ports the challenges are answered
// on): the manager is made with the relay's ServesHost, so it cannot be an
// argument of New.
func (s *Server) SetCertificates(c Certificates) { s.certs = c }

// ErrHostNotServed is ServesHost's answer for a name the relay does not
// serve as an http tunnel now.
var ErrHostNotServed = errors.New("host name not served by an http tunnel")

// ServesHost returns nil only for a name that a connected agent has
// registered as an http tunnel (itself, or under a wildcard it registered)
// and whose token may claim it. It is cheap and safe for any name: the
// certificate manager asks it before getting a certificate.
func (s *Server) ServesHost(name string) error {
	if len(name) > config.MaxHostLen+1 {
		return fmt.Errorf("%w: name too long", ErrHostNotServed)
	}
	host, err := config.NormalizeHost(name, false, false)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHostNotServed, err)
	}
	t, _ := s.lookupWeb(host)
	if t == nil || t.proto != tunnel.ProtoHTTP {
		return fmt.Errorf("%w: %q", ErrHostNotServed, host)
	}
	if why := s.conf().hostRefusal(t.owner.key.token, t.host); why != "" {
		return fmt.Errorf("%w: %s", ErrHostNotServed, why)
	}
	return nil
}

// terminating reports whether the relay terminates TLS for http tunnels.
func (s *Server) terminating() bool { return s.certs != nil && s.httpsLn != nil }

// hostRefusal says why the named token may not serve host, or returns ""
// if it may: a token with hosts may serve the names they cover, and those
// belong to it alone; a token without hosts may serve the names one label
// under the relay's domain that no token's hosts cover.
func (lc *liveConfig) hostRefusal(name, host string) string {
	token, ok := lc.token(name)
	if !ok {
		return fmt.Sprintf("token %q is no longer in the relay's configuration", name)
	}
	if len(token.Hosts) > 0 {
		for _, p := range token.Hosts {
			if config.HostCovers(p, host) {
				return ""
			}
		}
		return fmt.Sprintf("host %q is not in the hosts of token %q (%s); to serve it, add it to that token's hosts in the relay's configuration",
			host, token.Name, strings.Join(token.Hosts, ", "))
	}
	label, under := strings.CutSuffix(host, "."+lc.Domain)
	switch {
	case lc.Domain == "":
		return fmt.Sprintf("token %q lists no hosts and the relay has no domain, so it may serve no host names; to serve %q, add it to that token's hosts in the relay's configuration", token.Name, host)
	case !under || strings.Contains(label, ".") || label == "*":
		return fmt.Sprintf("token %q lists no hosts, so its agents may serve only names one label under the relay's domain (like nas.%s); to serve %q, add it to that token's hosts in the relay's configuration", token.Name, lc.Domain, host)
	}
	for _, t := range lc.Tokens {
		for _, p := range t.Hosts {
			if t.Name != name && config.HostCovers(p, host) {
				return fmt.Sprintf("host %q is in the hosts of another token, and only that token's agents may serve it", host)
			}
		}
	}
	return ""
}

// webTunnel is a host name served on the shared web ports, and the agent
// session behind it.
type webTunnel struct {
	name  string
	proto tunnel.Protocol // ProtoHTTP or ProtoHTTPS
	host  string
	owner *agentSession
	guard *visitorGuard
	auth  tunnel.WebAuth
	since time.Time
	stats tunnelStats
	// proxy carries an http tunnel's requests over streams to the agent;
	// its transport keeps idle streams for the next requests.
	proxy     *httputil.ReverseProxy
	transport *http.Transport
}

func (t *webTunnel) session() *agentSession         { return t.owner }
func (t *webTunnel) tunnelName() string             { return t.name }
func (t *webTunnel) setLimits(cfg config.Guard)     { t.guard.setConfig(cfg) }
func (t *webTunnel) bans(now time.Time) []BanStatus { return t.guard.bans(now, t.name) }

func (t *webTunnel) close() {
	t.owner.srv.releaseHost(t, true)
	if t.transport != nil {
		t.transport.CloseIdleConnections()
	}
}

func (t *webTunnel) status() TunnelStatus {
	ts := TunnelStatus{Name: t.name, Protocol: t.proto.String(), Host: t.host, Token: t.owner.token.Name, Agent: t.owner.agent.ID, Since: t.since}
	t.stats.fill(&ts)
	return ts
}

// checkAuth reports whether r carries the tunnel's basic authentication
// (always true for a tunnel without). The password is compared as its
// HMAC under the agent's salt, in constant time.
func (t *webTunnel) checkAuth(r *http.Request) bool {
	if t.auth.User == "" {
		return true
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	m := hmac.New(sha256.New, t.auth.Salt)
	m.Write([]byte(pass))
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(t.auth.User))
	passOK := subtle.ConstantTimeCompare(m.Sum(nil), t.auth.Hash)
	return userOK&passOK == 1
}

// registerWeb answers a RegisterWeb, tunnel by tunnel. A tunnel accepted
// is answered with the host name it is served under.
func (as *agentSession) registerWeb(reg *tunnel.RegisterWeb) *tunnel.RegisterResult {
	res := &tunnel.RegisterResult{Results: make([]tunnel.TunnelResult, len(reg.Tunnels))}
	var prepare []string
	for i, req := range reg.Tunnels {
		r := &res.Results[i]
		r.Name = req.Name
		var t *webTunnel
		t, r.Code, r.Message = as.openWeb(req)
		if r.Code != tunnel.CodeOK {
			as.log.Warn("web tunnel refused", "tunnel", req.Name, "host", req.Host, "reason", r.Code.String(), "detail", r.Message)
			continue
		}
		r.Message = t.host
		as.log.Info("web tunnel registered", "tunnel", req.Name, "protocol", req.Protocol.String(), "host", t.host, "auth", req.Auth.User != "")
		if t.proto == tunnel.ProtoHTTP && !strings.HasPrefix(t.host, "*.") {
			prepare = append(prepare, t.host)
		}
	}
	if as.srv.terminating() {
		for _, h := range prepare {
			as.srv.certs.Prepare(h)
		}
	}
	return res
}

// openWeb checks one web tunnel and makes its host name served.
func (as *agentSession) openWeb(req tunnel.WebTunnel) (*webTunnel, tunnel.Code, string) {
	switch {
	case !nameRE.MatchString(req.Name):
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel name %q: want 1-64 of A-Z a-z 0-9 . _ -", req.Name)
	case req.Protocol != tunnel.ProtoHTTP && req.Protocol != tunnel.ProtoHTTPS:
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: %v is not a web protocol", req.Name, req.Protocol)
	case req.Auth.User != "" && req.Protocol != tunnel.ProtoHTTP:
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: basic authentication is only for http tunnels", req.Name)
	case req.Auth.User != "" && (len(req.Auth.Salt) != tunnel.AuthSaltLen || len(req.Auth.Hash) != tunnel.AuthHashLen):
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: basic authentication needs a %d-byte salt and a %d-byte hash", req.Name, tunnel.AuthSaltLen, tunnel.AuthHashLen)
	case req.Auth.User == "" && (len(req.Auth.Salt) != 0 || len(req.Auth.Hash) != 0):
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: a password hash without a user", req.Name)
	}
	lc := as.srv.conf()
	host, err := config.NormalizeHost(req.Host, true, true)
	if err != nil {
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: %v", req.Name, err)
	}
	if !strings.Contains(host, ".") {
		if lc.Domain == "" {
			return nil, tunnel.CodeHostNotAllowed, fmt.Sprintf("tunnel %q: host %q is a bare label, and the relay has no domain to put it under; give a full name", req.Name, host)
		}
		host += "." + lc.Domain
	}
	if why := lc.hostRefusal(as.key.token, host); why != "" {
		return nil, tunnel.CodeHostNotAllowed, why
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.ended {
		return nil, tunnel.CodeShutdown, "session ended"
	}
	if _, dup := as.tunnels[req.Name]; dup {
		return nil, tunnel.CodeDuplicateName, fmt.Sprintf("tunnel name %q is already registered by this agent", req.Name)
	}
	t := &webTunnel{name: req.Name, proto: req.Protocol, host: host, owner: as, auth: req.Auth, since: time.Now(),
		guard: newVisitorGuard(lc.Guard, req.Allow, req.Deny)}
	if t.proto == tunnel.ProtoHTTP {
		as.srv.makeProxy(t)
	}
	if code, msg := as.srv.claimHost(t); code != tunnel.CodeOK {
		return nil, code, msg
	}
	as.tunnels[req.Name] = t
	return t, tunnel.CodeOK, ""
}

// claimHost makes t the tunnel of its host name, unless another tunnel
// serves it, it is reserved for another token, or the token has all the
// tunnels its quota allows. Web tunnels count towards max_tunnels.
func (s *Server) claimHost(t *webTunnel) (tunnel.Code, string) {
	token := t.owner.key.token
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return tunnel.CodeShutdown, "relay shutting down"
	}
	if h := s.web[t.host]; h != nil {
		if h.owner.key.token == token {
			return tunnel.CodeHostInUse, fmt.Sprintf("host %q is already served by tunnel %q of agent %q (same token)", t.host, h.name, h.owner.key.agent)
		}
		return tunnel.CodeHostInUse, fmt.Sprintf("host %q is already served by another agent on this relay", t.host)
	}
	now := time.Now()
	if r, ok := s.webReserved[t.host]; ok {
		switch {
		case !now.Before(r.until):
			delete(s.webReserved, t.host)
		case r.token != token:
			return tunnel.CodePortReserved, fmt.Sprintf("host %q is reserved for another token's agent, which served it, until %s (the relay's port_reserve)",
				t.host, r.until.UTC().Format(time.DateTime+" UTC"))
		}
	}
	if _, limit := s.conf().quotas(token); s.held[token] >= limit {
		return tunnel.CodeQuota, fmt.Sprintf("token %q holds %d tunnels, its max_tunnels; close one, or raise max_tunnels (for the token or the relay) in the relay's configuration",
			token, s.held[token])
	}
	delete(s.webReserved, t.host)
	s.web[t.host] = t
	s.held[token]++
	return tunnel.CodeOK, ""
}

// releaseHost frees t's host name if t holds it; with reserve, the name
// then stays reserved to its token for cfg.PortReserve, and its visitors
// get 502 (not 404) meanwhile.
func (s *Server) releaseHost(t *webTunnel, reserve bool) {
	token := t.owner.key.token
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.web[t.host] != t {
		return
	}
	delete(s.web, t.host)
	s.held[token]--
	if !reserve || s.closing || s.conf().PortReserve <= 0 {
		return
	}
	now := time.Now()
	if len(s.webReserved) >= 1024 {
		for h, r := range s.webReserved {
			if !now.Before(r.until) {
				delete(s.webReserved, h)
			}
		}
	}
	s.webReserved[t.host] = reservation{token: token, until: now.Add(s.conf().PortReserve)}
}

// lookupWeb returns the web tunnel that serves host (normalized): its own,
// else the longest wildcard's. A name (or wildcard) whose tunnel's agent
// is gone but which is still reserved to its token is reported as
// reserved, with no tunnel.
func (s *Server) lookupWeb(host string) (t *webTunnel, reserved bool) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	config.HostCandidates(host, func(h string) bool {
		if t = s.web[h]; t != nil {
			return true
		}
		if r, ok := s.webReserved[h]; ok && now.Before(r.until) {
			reserved = true
			return true
		}
		return false
	})
	return t, reserved
}

// dialAgent opens a stream to the agent for a visitor of t, and reads the
// agent's answer: the stream then carries the target's bytes.
func (t *webTunnel) dialAgent(ctx context.Context, visitor, public string) (tunnel.Stream, error) {
	as := t.owner
	start := time.Now()
	st, err := as.sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream to agent: %w", err)
	}
	if err := tunnel.WriteMessage(st, &tunnel.Open{Tunnel: t.name, Visitor: visitor, Public: public}); err != nil {
		st.Close()
		return nil, fmt.Errorf("write to agent: %w", err)
	}
	var res tunnel.OpenResult
	_ = st.SetReadDeadline(time.Now().Add(agentAnswerTimeout))
	stop := context.AfterFunc(ctx, func() { _ = st.SetReadDeadline(time.Unix(1, 0)) })
	err = tunnel.ReadInto(st, tunnel.MaxFrameSize, &res)
	stop()
	_ = st.SetReadDeadline(time.Time{})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("agent answer: %w", err)
	}
	as.openTime.Observe(time.Since(start).Seconds())
	if res.Code != tunnel.CodeOK {
		st.Close()
		return nil, &tunnel.OpenError{Code: res.Code, Message: res.Message}
	}
	return tunnel.CutAware(st, as.lost), nil
}

// webListenAddr is the host:port a listener's address is reached at, for
// redirects: the port is left out where it is the scheme's default.
func webPortSuffix(ln net.Listener, def int) string {
	if ln == nil {
		return ""
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok && a.Port != def {
		return fmt.Sprintf(":%d", a.Port)
	}
	return ""
}
