package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// Private tunnels have no public port: only visitors, logged in with a
// visitor key (see visitor.go), reach them. The relay knows each by its
// token and name: a visitor key reaches one token's private tunnels, so
// an agent of another token can never stand in for one.

// privateKey names a private tunnel on the relay.
type privateKey struct {
	token string
	name  string
}

// privateTunnel is a private tunnel of an agent session: TCP
// (*privateTCP) or UDP (a *udpTunnel without a socket).
type privateTunnel interface {
	portTunnel
	tunnelOf
	protocol() tunnel.Protocol
	// accepts reports whether the agent lets the visitor key named via
	// use the tunnel.
	accepts(via string) bool
	// visitorGuard is the tunnel's guard of visitor addresses.
	visitorGuard() *visitorGuard
	// serveVisit carries one of a visitor's streams, whose Visit was
	// granted, to the agent; ip is the visitor's address, admitted by
	// the guard, released when the stream ends.
	serveVisit(vs *visitorSession, st tunnel.Stream, ip netip.Addr)
}

// registerPrivate answers a RegisterPrivate, tunnel by tunnel.
func (as *agentSession) registerPrivate(reg *tunnel.RegisterPrivate) *tunnel.RegisterResult {
	res := &tunnel.RegisterResult{Results: make([]tunnel.TunnelResult, len(reg.Tunnels))}
	for i, req := range reg.Tunnels {
		r := &res.Results[i]
		r.Name = req.Name
		r.Code, r.Message = as.openPrivate(req)
		if r.Code == tunnel.CodeOK {
			as.log.Info("private tunnel registered", "tunnel", req.Name, "protocol", req.Protocol.String(), "visitors", req.Visitors)
		} else {
			as.log.Warn("private tunnel refused", "tunnel", req.Name, "reason", r.Code.String(), "detail", r.Message)
		}
	}
	return res
}

// openPrivate checks one private tunnel and makes it reachable.
func (as *agentSession) openPrivate(req tunnel.PrivateTunnel) (tunnel.Code, string) {
	switch {
	case !nameRE.MatchString(req.Name):
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel name %q: want 1-64 of A-Z a-z 0-9 . _ -", req.Name)
	case req.Protocol != tunnel.ProtoTCP && req.Protocol != tunnel.ProtoUDP:
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: %v is not supported", req.Name, req.Protocol)
	}
	for _, v := range req.Visitors {
		if !nameRE.MatchString(v) {
			return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: visitor key name %q: want 1-64 of A-Z a-z 0-9 . _ -", req.Name, v)
		}
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.ended {
		return tunnel.CodeShutdown, "session ended"
	}
	if _, dup := as.tunnels[req.Name]; dup {
		return tunnel.CodeDuplicateName, fmt.Sprintf("tunnel name %q is already registered by this agent", req.Name)
	}
	guard := newVisitorGuard(as.srv.conf().Guard, req.Allow, req.Deny)
	var t privateTunnel
	if req.Protocol == tunnel.ProtoUDP {
		t = as.privateUDP(req, guard)
	} else {
		t = &privateTCP{name: req.Name, port: req.Port, owner: as, guard: guard, visitors: req.Visitors, since: time.Now()}
	}
	if code, msg := as.srv.claimPrivate(privateKey{as.key.token, req.Name}, t); code != tunnel.CodeOK {
		t.close()
		return code, msg
	}
	as.tunnels[req.Name] = t
	return tunnel.CodeOK, ""
}

// claimPrivate makes t the private tunnel of k, unless another agent of
// the token serves one of that name, or the token has all the tunnels its
// quota allows. Private tunnels count towards max_tunnels.
func (s *Server) claimPrivate(k privateKey, t privateTunnel) (tunnel.Code, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return tunnel.CodeShutdown, "relay shutting down"
	}
	if h := s.private[k]; h != nil {
		return tunnel.CodePortInUse, fmt.Sprintf("private tunnel %q is already served by agent %q of token %q, from %s; give this one another name",
			k.name, h.session().key.agent, k.token, h.session().remote)
	}
	if _, limit := s.conf().quotas(k.token); s.held[k.token] >= limit {
		return tunnel.CodeQuota, fmt.Sprintf("token %q holds %d tunnels, its max_tunnels; close one, or raise max_tunnels (for the token or the relay) in the relay's configuration",
			k.token, s.held[k.token])
	}
	s.private[k] = t
	s.held[k.token]++
	return tunnel.CodeOK, ""
}

// releasePrivate forgets t, the private tunnel of k, if it still is.
func (s *Server) releasePrivate(k privateKey, t privateTunnel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.private[k] == t {
		delete(s.private, k)
		s.held[k.token]--
	}
}

// lookupPrivate returns the private tunnel of k (nil: none now).
func (s *Server) lookupPrivate(k privateKey) privateTunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.private[k]
}

// privateNames returns the names of the private tunnels that agents of
// token serve now and that allows lets through, sorted.
func (s *Server) privateNames(token string, allows func(string) bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for k := range s.private {
		if k.token == token && allows(k.name) {
			names = append(names, k.name)
		}
	}
	slices.Sort(names)
	return names
}

// privateTCP is a private TCP tunnel.
type privateTCP struct {
	name     string
	port     uint16 // suggested local port for visitors
	owner    *agentSession
	guard    *visitorGuard
	visitors []string // keys the agent accepts (empty: any the relay lets in)
	since    time.Time
	stats    tunnelStats
}

func (t *privateTCP) close() {
	t.owner.srv.releasePrivate(privateKey{t.owner.key.token, t.name}, t)
}
func (t *privateTCP) session() *agentSession         { return t.owner }
func (t *privateTCP) tunnelName() string             { return t.name }
func (t *privateTCP) protocol() tunnel.Protocol      { return tunnel.ProtoTCP }
func (t *privateTCP) accepts(via string) bool        { return acceptsKey(t.visitors, via) }
func (t *privateTCP) visitorGuard() *visitorGuard    { return t.guard }
func (t *privateTCP) setLimits(cfg config.Guard)     { t.guard.setConfig(cfg) }
func (t *privateTCP) bans(now time.Time) []BanStatus { return t.guard.bans(now, t.name) }

func (t *privateTCP) status() TunnelStatus {
	ts := TunnelStatus{Name: t.name, Protocol: "tcp", Port: t.port, Private: true, VisitorKeys: t.visitors,
		Token: t.owner.token.Name, Agent: t.owner.agent.ID, Since: t.since}
	t.stats.fill(&ts)
	return ts
}

func acceptsKey(list []string, via string) bool {
	return len(list) == 0 || slices.Contains(list, via)
}

// serveVisit opens a stream to the agent for a visitor's stream, tells the
// visitor the agent's answer, and splices the two.
func (t *privateTCP) serveVisit(vs *visitorSession, st tunnel.Stream, ip netip.Addr) {
	as := t.owner
	start := time.Now()
	ctx := as.srv.visitCtx
	defer t.guard.release(ip)
	ast, err := as.sess.OpenStream(ctx)
	if err != nil {
		vs.answer(st, tunnel.CodeOffline, fmt.Sprintf("the agent of tunnel %q cannot take a connection now: %v", t.name, err))
		st.Close()
		return
	}
	err = tunnel.WriteMessage(ast, &tunnel.Open{Tunnel: t.name, Visitor: vs.remote, Public: vs.local, Via: vs.key.Name})
	var res tunnel.OpenResult
	if err == nil {
		_ = ast.SetReadDeadline(time.Now().Add(agentAnswerTimeout))
		err = tunnel.ReadInto(ast, tunnel.MaxFrameSize, &res)
		if err == nil && res.Code == tunnel.CodeWaking {
			// The agent wakes the target: one notice, then the answer
			// within tunnel.MaxWakeWait. A visitor that knows the notice
			// hears it and waits as long.
			if vs.waits {
				_ = vs.answer(st, tunnel.CodeWaking, res.Message)
			}
			_ = ast.SetReadDeadline(time.Now().Add(tunnel.MaxWakeWait))
			err = tunnel.ReadInto(ast, tunnel.MaxFrameSize, &res)
			if err == nil && res.Code == tunnel.CodeWaking {
				err = fmt.Errorf("a second waking notice: %w", tunnel.ErrUnexpected)
			}
		}
		_ = ast.SetReadDeadline(time.Time{})
	}
	if err != nil {
		res = tunnel.OpenResult{Code: tunnel.CodeOffline, Message: fmt.Sprintf("the agent of tunnel %q did not answer: %v", t.name, err)}
	}
	as.openTime.Observe(time.Since(start).Seconds())
	if err := vs.answer(st, res.Code, res.Message); err != nil || res.Code != tunnel.CodeOK {
		ast.Close()
		st.Close()
		as.log.Warn("private visitor refused", "tunnel", t.name, "via", vs.key.Name, "visitor", vs.remote, "reason", res.Code.String(), "detail", res.Message)
		return
	}
	t.stats.visitors.Add(1)
	t.stats.accepted.Add(1)
	in, out, err := tunnel.SpliceCounted(ctx, tunnel.CutAware(st, vs.lost), tunnel.CutAware(ast, as.lost), &t.stats.bytesIn, &t.stats.bytesOut)
	t.stats.visitors.Add(-1)
	level := slog.LevelDebug
	if as.srv.conf().AccessLog {
		level = slog.LevelInfo
	}
	as.log.Log(context.Background(), level, "private visitor connection", "tunnel", t.name, "via", vs.key.Name, "visitor", vs.remote,
		"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond), "err", err)
}

// agentAnswerTimeout bounds the wait for an agent's OpenResult on a
// private tunnel's stream (it dials its target meanwhile), or for its
// CodeWaking notice, after which tunnel.MaxWakeWait bounds the answer.
const agentAnswerTimeout = time.Minute

// visitorKey returns the visitor key named name in force.
func (lc *liveConfig) visitorKey(name string) (config.VisitorKey, bool) {
	for _, k := range lc.Visitors {
		if k.Name == name {
			return k, true
		}
	}
	return config.VisitorKey{}, false
}
