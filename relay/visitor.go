package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// A visitor logs in on the agent port with a visitor key (FlagVisitor)
// and opens a stream per connection, each beginning with a Visit that
// names a private tunnel (docs/wire.md, "Private tunnels"). The relay
// grants it only for a private tunnel of the key's token that the key may
// reach and whose agent accepts the key, and within the tunnel's guard of
// visitor addresses; it then carries the stream to the agent.

// visitHeaderTimeout bounds the wait for a visitor stream's Visit.
const visitHeaderTimeout = 10 * time.Second

// visitorSession is one logged-in visitor.
type visitorSession struct {
	srv       *Server
	key       config.VisitorKey
	id        string // the visitor's id (its hello), for logs
	software  string
	remote    string
	local     string
	ip        netip.Addr
	transport string
	waits     bool // the visitor reads CodeWaking notices (tunnel.FlagWaits)
	started   time.Time
	sess      tunnel.Session
	log       *slog.Logger

	refusals atomic.Int32 // visits refused for a reason that will not pass
	closing  atomic.Bool  // the relay ended the session (revoked, shutdown)
	endWhy   atomic.Value // [2]string: the code and words of why the relay ended it
	offline  sync.Map     // tunnel names whose offline refusal was logged at Info
	streams  sync.WaitGroup
}

// lost reports whether the session ended without the relay ending it.
func (vs *visitorSession) lost() bool {
	select {
	case <-vs.sess.Done():
		return !vs.closing.Load()
	default:
		return false
	}
}

// end closes the session and its streams; code and why say why, for the
// log (revoked, shutdown, protocol_error, refused_visits).
func (vs *visitorSession) end(code, why string) {
	if !vs.closing.Swap(true) {
		vs.endWhy.Store([2]string{code, why})
	}
	vs.sess.Close()
}

// serveVisitor serves a logged-in visitor's streams until its session
// ends.
func (s *Server) serveVisitor(ctx context.Context, vs *visitorSession) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		vs.sess.Close()
		return
	}
	s.visitorSessions[vs] = struct{}{}
	s.mu.Unlock()
	vs.log.Info("visitor session up", "software", vs.software)
	defer func() {
		s.mu.Lock()
		delete(s.visitorSessions, vs)
		s.mu.Unlock()
	}()
	for {
		st, err := vs.sess.AcceptStream(ctx)
		if err != nil {
			break
		}
		vs.streams.Add(1)
		s.visitors.Add(1)
		go func() {
			defer s.visitors.Done()
			defer vs.streams.Done()
			vs.handle(st)
		}()
	}
	vs.sess.Close()
	vs.streams.Wait()
	// The relay's own reason, when it ended the session; else the link's.
	link := vs.sess.EndCause()
	cause, words := "", ""
	if why, ok := vs.endWhy.Load().([2]string); ok {
		cause, words = why[0], why[1]
	}
	vs.log.Info("visitor session down", tunnel.EndLog(cause, words, time.Since(vs.started), link, 0)...)
}

// answer writes the relay's answer to a Visit.
func (vs *visitorSession) answer(st tunnel.Stream, code tunnel.Code, msg string) error {
	_ = st.SetWriteDeadline(time.Now().Add(visitHeaderTimeout))
	defer st.SetWriteDeadline(time.Time{})
	return tunnel.WriteMessage(st, &tunnel.OpenResult{Code: code, Message: msg})
}

// handle reads one stream's Visit and serves it.
func (vs *visitorSession) handle(st tunnel.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(visitHeaderTimeout))
	var v tunnel.Visit
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &v); err != nil {
		st.Close()
		if !errors.Is(err, tunnel.ErrStreamCut) {
			vs.log.Warn("visitor stream without a valid Visit; closing the session", "err", err)
			vs.end("protocol_error", "malformed Visit")
		}
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	t, code, msg := vs.grant(v)
	if code != tunnel.CodeOK {
		_ = vs.answer(st, code, msg)
		st.Close()
		vs.refused(v, code, msg)
		return
	}
	ok, why, banned := t.visitorGuard().admit(vs.ip)
	if !ok {
		t.session().srv.metrics.refused.WithLabelValues(t.session().key.token, v.Tunnel, refusalReason(why)).Inc()
		t.session().logRefusal(v.Tunnel, vs.remote, why, banned)
		_ = vs.answer(st, tunnel.CodeNotAllowed, fmt.Sprintf("tunnel %q refuses this address: %s", v.Tunnel, why))
		st.Close()
		return
	}
	if v.Flags&tunnel.VisitCheck != 0 {
		t.visitorGuard().release(vs.ip)
		_ = vs.answer(st, tunnel.CodeOK, "")
		st.Close()
		return
	}
	t.serveVisit(vs, st, vs.ip)
}

// grant decides a Visit: the private tunnel it may reach, or why not.
func (vs *visitorSession) grant(v tunnel.Visit) (privateTunnel, tunnel.Code, string) {
	lc := vs.srv.conf()
	key, ok := lc.visitorKey(vs.key.Name)
	if !ok || key.Secret != vs.key.Secret {
		vs.end("revoked", "visitor key removed from the relay's configuration")
		return nil, tunnel.CodeAuthFailed, fmt.Sprintf("visitor key %q was removed from the relay's configuration", vs.key.Name)
	}
	switch {
	case !nameRE.MatchString(v.Tunnel):
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel name %q: want 1-64 of A-Z a-z 0-9 . _ -", v.Tunnel)
	case v.Protocol != tunnel.ProtoTCP && v.Protocol != tunnel.ProtoUDP:
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: %v is not supported", v.Tunnel, v.Protocol)
	case !key.Allows(v.Tunnel):
		return nil, tunnel.CodeNotAllowed, fmt.Sprintf("visitor key %q may not reach tunnel %q: the relay's visitor_keys entry for it lists %v", key.Name, v.Tunnel, key.Tunnels)
	}
	t := vs.srv.lookupPrivate(privateKey{key.Token, v.Tunnel})
	switch {
	case t == nil:
		msg := fmt.Sprintf("no agent of token %q serves private tunnel %q now (is the home agent running, with the tunnel marked private?)", key.Token, v.Tunnel)
		if names := vs.srv.privateNames(key.Token, key.Allows); len(names) > 0 {
			// A home agent is up: a misspelt name shows here.
			msg += fmt.Sprintf("; this key can reach %s now", strings.Join(names, ", "))
		}
		return nil, tunnel.CodeOffline, msg
	case t.protocol() != v.Protocol:
		return nil, tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q is %v, not %v", v.Tunnel, t.protocol(), v.Protocol)
	case !t.accepts(key.Name):
		return nil, tunnel.CodeNotAllowed, fmt.Sprintf("the home agent of tunnel %q does not accept visitor key %q (its visitors list)", v.Tunnel, key.Name)
	}
	return t, tunnel.CodeOK, ""
}

// refused logs a visit refused and counts it against the visitor's
// address like a failed login, except for a tunnel that is only offline
// now; the session ends after as many refusals as ban an address.
func (vs *visitorSession) refused(v tunnel.Visit, code tunnel.Code, msg string) {
	if code == tunnel.CodeOffline {
		// A waiting visitor asks again and again: said once a tunnel.
		level := slog.LevelDebug
		if _, said := vs.offline.LoadOrStore(v.Tunnel, true); !said {
			level = slog.LevelInfo
		}
		vs.log.Log(context.Background(), level, "visit refused", "tunnel", v.Tunnel, "reason", code.String(), "detail", msg)
		return
	}
	vs.log.Warn("visit refused", "tunnel", v.Tunnel, "reason", code.String(), "detail", msg)
	vs.srv.refusals.add(RefusalStatus{Time: time.Now(), Where: "private " + v.Tunnel, Addr: vs.remote, Reason: code.String() + ": " + msg})
	if code == tunnel.CodeAuthFailed {
		return
	}
	if l, _, _ := vs.srv.hs.admit(vs.ip, nil); l != nil {
		if ban := vs.srv.hs.done(l, loginFailed); ban.started {
			vs.log.Warn("visitor address banned after refused visits", "ban_for", vs.srv.conf().Guard.AuthBanFor)
			vs.srv.metrics.bans.WithLabelValues("agent_port").Inc()
		}
	}
	if limit := vs.srv.conf().Guard.AuthBanAfter; limit > 0 && int(vs.refusals.Add(1)) >= limit {
		vs.end("refused_visits", fmt.Sprintf("%d visits refused", limit))
	}
}

// VisitorStatus is a logged-in visitor, for status.
type VisitorStatus struct {
	Key       string    `json:"key"`
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Transport string    `json:"transport"`
	Software  string    `json:"software"`
	Since     time.Time `json:"since"`
	Streams   int       `json:"streams"`
}

// VisitorKeyStatus is a configured visitor key, for status: never its
// secret.
type VisitorKeyStatus struct {
	Name    string   `json:"name"`
	Token   string   `json:"token"`
	Tunnels []string `json:"tunnels,omitempty"` // empty: all of the token's
	File    string   `json:"file,omitempty"`
}

// VisitSetup is how a visitor reaches a private tunnel with a key.
type VisitSetup struct {
	Tunnel  string `json:"tunnel"`
	Key     string `json:"key"`
	Command string `json:"command"`
}

// visitorStatus fills in the visitor keys, the visitors and the visit
// commands of st, whose tunnels and listeners are filled in.
func (s *Server) visitorStatus(st *Status) {
	lc := s.conf()
	st.VisitorKeys, st.Visitors = []VisitorKeyStatus{}, []VisitorStatus{}
	for _, k := range lc.Visitors {
		st.VisitorKeys = append(st.VisitorKeys, VisitorKeyStatus{Name: k.Name, Token: k.Token, Tunnels: k.Tunnels, File: k.File})
	}
	s.mu.Lock()
	for vs := range s.visitorSessions {
		st.Visitors = append(st.Visitors, VisitorStatus{Key: vs.key.Name, Token: vs.key.Token, ID: vs.id, Addr: vs.remote,
			Transport: vs.transport, Software: vs.software, Since: vs.started, Streams: vs.sess.NumStreams()})
	}
	s.mu.Unlock()
	slices.SortFunc(st.Visitors, func(a, b VisitorStatus) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), a.Since.Compare(b.Since))
	})
	relayAddr := lc.Advertise
	if relayAddr == "" && len(st.Listen) > 0 {
		relayAddr = st.Listen[0].Addr
	}
	for _, t := range st.Tunnels {
		if !t.Private {
			continue
		}
		for _, k := range lc.Visitors {
			if k.Token != t.Token || !k.Allows(t.Name) || !acceptsKey(t.VisitorKeys, k.Name) {
				continue
			}
			st.Visits = append(st.Visits, VisitSetup{Tunnel: t.Name, Key: k.Name, Command: visitCommand(relayAddr, st.Fingerprint, k, t)})
		}
	}
}

// visitCommand is the command a visitor runs to reach private tunnel t
// with key k; the key itself is never in it.
func visitCommand(relayAddr, fingerprint string, k config.VisitorKey, t TunnelStatus) string {
	keyFile := k.File
	if keyFile == "" {
		keyFile = "<file with key " + k.Name + ">"
	}
	port := t.Port
	if port == 0 {
		port = 3390
	}
	cmd := fmt.Sprintf("agent visit %s --relay %s --fingerprint %s --key-file %s --listen 127.0.0.1:%d", t.Name, relayAddr, fingerprint, keyFile, port)
	if t.Protocol == "udp" {
		cmd += " --udp"
	}
	return cmd
}
