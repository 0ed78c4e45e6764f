// Package relay is the public side of homeport: it accepts agents on the
// agent port, authenticates them, opens the public ports they register, and
// carries each visitor connection as one stream to the agent.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/ddnsrun"
	"github.com/homeport/homeport/tunnel"
)

// Server is a relay.
type Server struct {
	cfg     config.Relay
	id      Identity
	secrets [][]byte
	log     *slog.Logger
	hs      *handshakeGuard

	// lns are the agent port's listeners: TCP, and QUIC on the same port
	// number over UDP.
	lns []tunnel.Listener
	// smallBuffers logs small UDP buffers once, however many sockets.
	smallBuffers sync.Once

	// ddns is the dynamic DNS updater; nil: off.
	ddns *ddns.Updater

	mu       sync.Mutex
	sessions map[sessionKey]*agentSession
	// retired are sessions replaced by a newer one of their agent that
	// still carry connections (see agentSession.retire).
	retired map[*agentSession]struct{}
	ports   map[portKey]any // public port -> the tunnel holding it
	closing bool

	// knownPath is the file of known agent addresses (empty: none kept);
	// learned tells keepKnownAgents to write it.
	knownPath string
	learned   chan struct{}

	handlers sync.WaitGroup // agent connections, in handshake or in session
	visitors sync.WaitGroup // visitor connections being spliced
	// visitCtx is the context of visitor splices; it is cancelled when
	// the shutdown drain time is over.
	visitCtx    context.Context
	visitCancel context.CancelFunc
}

type sessionKey struct {
	token int
	agent string
}

// New returns a relay for cfg and the identity from LoadIdentity.
func New(cfg config.Relay, id Identity, log *slog.Logger) (*Server, error) {
	if len(id.Tokens) == 0 {
		return nil, errors.New("relay: no token: refusing to start without one")
	}
	s := &Server{
		cfg:      cfg,
		id:       id,
		log:      log,
		sessions: make(map[sessionKey]*agentSession),
		retired:  make(map[*agentSession]struct{}),
		ports:    make(map[portKey]any),
	}
	for i, t := range id.Tokens {
		if t.Secret == "" {
			return nil, fmt.Errorf("relay: tokens[%d] (%s): empty token: refusing to start", i, t.Name)
		}
		s.secrets = append(s.secrets, []byte(t.Secret))
	}
	if s.cfg.HandshakeTimeout <= 0 {
		s.cfg.HandshakeTimeout = 10 * time.Second
	}
	if s.cfg.UDPFlowTimeout <= 0 {
		s.cfg.UDPFlowTimeout = time.Minute
	}
	if s.cfg.UDPMaxFlows <= 0 {
		s.cfg.UDPMaxFlows = 1024
	}
	s.cfg.Guard = withGuardDefaults(s.cfg.Guard)
	s.hs = newHandshakeGuard(s.cfg.Guard)
	// Known agents are kept where the data directory exists (it need not
	// when token and key pair are configured).
	if st, err := os.Stat(cfg.DataDir); cfg.DataDir != "" && err == nil && st.IsDir() {
		s.knownPath = filepath.Join(cfg.DataDir, KnownAgentsFile)
		s.learned = make(chan struct{}, 1)
		known, err := loadKnownAgents(s.knownPath, time.Now())
		if err != nil {
			log.Warn("known agents: damaged entries skipped", "err", err)
		}
		s.hs.trust(known)
		s.hs.learned = func() {
			select {
			case s.learned <- struct{}{}:
			default:
			}
		}
	}
	s.visitCtx, s.visitCancel = context.WithCancel(context.Background())
	if cfg.DDNS != nil {
		u, err := ddnsrun.New(cfg.DDNS, ddnsrun.Options{Log: log})
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		s.ddns = u
	}
	return s, nil
}

// Listen opens the agent port: TCP, and with QUIC on, UDP with the same
// port number (when listen asks for any free port, one free for both). It
// is separate from Serve so that the caller knows the address (and any
// error) before serving. The address returned is the TCP one.
func (s *Server) Listen() (net.Addr, error) {
	conf := tunnel.ServerTLSConfig(s.id.Cert)
	var quicTr tunnel.QUICTransport
	if s.cfg.QUIC {
		key, err := tunnel.StatelessResetKey(s.id.Cert)
		if err != nil {
			return nil, err
		}
		quicTr = tunnel.QUICTransport{Session: s.sessionConfig(), HandshakeTimeout: s.cfg.HandshakeTimeout, ResetKey: key,
			MaxHandshakes: s.cfg.Guard.MaxHandshakes,
			Refuse: func(a net.Addr) bool {
				if !s.hs.banned(addrOf(a)) {
					return false
				}
				s.log.Debug("agent connection refused", "agent_addr", a.String(), "transport", "quic", "reason", "banned after failed logins")
				return true
			},
			OnSmallBuffers: func(rcv, snd int) {
				s.smallBuffers.Do(func() { tunnel.LogSmallBuffers(s.log, rcv, snd) })
			}}
	}
	host, port, err := net.SplitHostPort(s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("agent port %s: %w", s.cfg.Listen, err)
	}
	for attempt := 0; ; attempt++ {
		ln, err := tunnel.TCPTransport{}.Listen(s.cfg.Listen, conf)
		if err != nil {
			return nil, fmt.Errorf("agent port %s: %w", s.cfg.Listen, err)
		}
		if !s.cfg.QUIC {
			s.lns = []tunnel.Listener{ln}
			return ln.Addr(), nil
		}
		tcpPort := ln.Addr().(*net.TCPAddr).Port
		qln, err := quicTr.Listen(net.JoinHostPort(host, strconv.Itoa(tcpPort)), conf)
		if err == nil {
			s.lns = []tunnel.Listener{ln, qln}
			return ln.Addr(), nil
		}
		ln.Close()
		if port != "0" || attempt == 10 {
			return nil, fmt.Errorf("agent port %s, UDP for QUIC: %w (set quic: false to accept agents over TCP only)", s.cfg.Listen, err)
		}
	}
}

// Serve accepts agents until ctx ends, then shuts down gracefully: it stops
// accepting, closes the public ports, lets visitor connections drain for up
// to cfg.ShutdownTimeout, and ends the sessions. It returns nil after a
// shutdown through ctx.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.lns) == 0 {
		return errors.New("relay: Serve before Listen")
	}
	for _, ln := range s.lns {
		s.log.Info("relay listening for agents", "addr", ln.Addr().String(), "transport", transportName(ln), "fingerprint", s.id.Fingerprint)
	}
	errc := make(chan error, len(s.lns))
	for _, ln := range s.lns {
		go func() { errc <- s.acceptLoop(ctx, ln) }()
	}
	defer s.runDDNS(ctx)()
	if s.knownPath != "" {
		kctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.keepKnownAgents(kctx) }()
		defer func() { stop(); <-done }()
	}

	var err error
	pending := len(s.lns)
	select {
	case <-ctx.Done():
	case err = <-errc:
		pending--
	}
	s.shutdown()
	for ; pending > 0; pending-- {
		err = errors.Join(err, <-errc)
	}
	return err
}

// runDDNS runs the dynamic DNS updater, if configured, until ctx ends;
// the returned function stops it and waits.
func (s *Server) runDDNS(ctx context.Context) (stop func()) {
	if s.ddns == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.ddns.Run(ctx); err != nil {
			s.log.Error("ddns: updater stopped; the relay keeps running", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// Run is Listen followed by Serve.
func (s *Server) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	return s.Serve(ctx)
}

func transportName(ln tunnel.Listener) string {
	if _, ok := ln.Addr().(*net.UDPAddr); ok {
		return "quic"
	}
	return "tcp"
}

func (s *Server) acceptLoop(ctx context.Context, ln tunnel.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors and the like: back off, never spin,
			// never give up (the net/http pattern).
			delay = nextAcceptDelay(delay)
			s.log.Warn("accept agent", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		delay = 0
		// Refused at once, before any handshake: a blocking limit would
		// let a flood starve real agents.
		ip := addrOf(c.RemoteAddr())
		if ok, why := s.hs.admit(ip); !ok {
			tunnel.Refuse(c)
			s.log.Debug("agent connection refused", "agent_addr", c.RemoteAddr().String(), "reason", why)
			continue
		}
		s.handlers.Add(1)
		go func() {
			defer s.handlers.Done()
			s.handleAgent(ctx, c, ip)
		}()
	}
}

func nextAcceptDelay(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}

// shutdown stops everything; see Serve.
func (s *Server) shutdown() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Lock()
	s.closing = true
	sessions := make([]*agentSession, 0, len(s.sessions)+len(s.retired))
	for _, as := range s.sessions {
		sessions = append(sessions, as)
	}
	for as := range s.retired {
		sessions = append(sessions, as)
	}
	s.mu.Unlock()
	for _, as := range sessions {
		as.closeTunnels()
	}

	drained := make(chan struct{})
	go func() { s.visitors.Wait(); close(drained) }()
	if n := s.cfg.ShutdownTimeout; n > 0 {
		t := time.NewTimer(n)
		select {
		case <-drained:
		case <-t.C:
			s.log.Warn("shutdown: drain time over, closing remaining visitor connections", "timeout", n)
		}
		t.Stop()
	}
	s.visitCancel()
	<-drained
	// In parallel: ending a session may wait a moment for the agent to
	// take its GoAway (see tunnel's lingering QUIC close).
	var ended sync.WaitGroup
	for _, as := range sessions {
		ended.Go(func() { as.end(tunnel.CodeShutdown, "relay shutting down") })
	}
	ended.Wait()
	s.handlers.Wait()
	s.log.Info("relay stopped")
}

// handleAgent authenticates one agent link and serves its session.
func (s *Server) handleAgent(ctx context.Context, c tunnel.Conn, ip netip.Addr) {
	remote := c.RemoteAddr().String()
	log := s.log.With("agent_addr", remote)
	// The login ends (for the handshake guard) at the first return or
	// once authenticated.
	result, loginDone := loginAborted, false
	endLogin := func() {
		if loginDone {
			return
		}
		loginDone = true
		if s.hs.done(ip, result) {
			log.Warn("agent address banned after failed logins", "ban_for", s.cfg.Guard.AuthBanFor)
		}
	}
	defer endLogin()
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	hsCtx, cancel := context.WithDeadline(ctx, deadline)
	err := c.Handshake(hsCtx)
	cancel()
	if err != nil {
		stop()
		c.Close()
		log.Debug("agent TLS handshake failed", "err", err)
		return
	}
	agent, err := tunnel.AuthenticateAgent(c, s.secrets, remote)
	if err == nil {
		result = loginOK
		endLogin()
	}
	if err != nil {
		stop()
		c.Close()
		if errors.Is(err, tunnel.ErrAuthFailed) {
			result = loginFailed
			log.Warn("agent authentication failed", "err", err)
		} else {
			log.Info("agent handshake failed", "err", err)
		}
		return
	}
	sess, err := c.Mux(s.sessionConfig())
	if err != nil {
		stop()
		c.Close()
		log.Error("agent session", "err", err)
		return
	}
	// The control stream is the first one the agent opens; it must come
	// within the handshake deadline too.
	ctrlCtx, cancel := context.WithDeadline(ctx, deadline)
	ctrl, err := sess.AcceptStream(ctrlCtx)
	cancel()
	stop()
	if err != nil {
		sess.Close()
		log.Info("agent opened no control stream", "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})

	token := s.id.Tokens[agent.Token]
	as := newAgentSession(s, sess, ctrl, agent, token, log)
	if !s.addSession(as) {
		as.end(tunnel.CodeShutdown, "relay shutting down")
		return
	}
	as.serve(ctx)
}

func (s *Server) sessionConfig() tunnel.SessionConfig {
	return tunnel.SessionConfig{
		KeepAlive:        s.cfg.Session.KeepAlive,
		KeepAliveTimeout: s.cfg.Session.KeepAliveTimeout,
		StreamWindow:     s.cfg.Session.StreamWindow,
	}
}

// maxRetired is how many replaced sessions of one agent may go on
// carrying their connections; a further replacement ends the oldest.
const maxRetired = 2

// addSession makes as the session of its agent. The older one's ports are
// free when addSession returns. When the agent replaces it make-before-break
// (tunnel.FlagReplacing) the older one is retired and its connections go on;
// otherwise (the agent lost it, or another agent took over the id) it is
// ended.
func (s *Server) addSession(as *agentSession) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	old := s.sessions[as.key]
	s.sessions[as.key] = as
	var oldest *agentSession
	keep := as.agent.Flags&tunnel.FlagReplacing != 0
	if old != nil && keep {
		n := 0
		for r := range s.retired {
			if r.key != as.key {
				continue
			}
			n++
			if oldest == nil || r.retiredAt.Before(oldest.retiredAt) {
				oldest = r
			}
		}
		if n < maxRetired {
			oldest = nil
		}
		old.retiredAt = time.Now()
		s.retired[old] = struct{}{}
	}
	s.mu.Unlock()
	if oldest != nil {
		oldest.log.Info("closing a replaced session: too many")
		go oldest.end(tunnel.CodeReplaced, "closed: the agent has newer sessions")
	}
	msg := "a newer session of agent " + as.key.agent + " took over"
	switch {
	case old != nil && keep:
		old.log.Info("agent session replaced by a newer one; its open connections go on", "new_addr", as.remote, "connections", max(old.sess.NumStreams()-1, 0))
		old.retire(msg)
	case old != nil:
		old.log.Info("agent session replaced by a newer one", "new_addr", as.remote)
		old.end(tunnel.CodeReplaced, msg)
	}
	return true
}

// removeSession forgets as, the agent's current session or a retired one.
func (s *Server) removeSession(as *agentSession) {
	s.mu.Lock()
	if s.sessions[as.key] == as {
		delete(s.sessions, as.key)
	}
	delete(s.retired, as)
	s.mu.Unlock()
}

// portKey is a public port: TCP and UDP ports of one number are distinct.
type portKey struct {
	proto tunnel.Protocol
	port  uint16
}

// claimPort reserves k for owner; it fails if another tunnel holds it.
func (s *Server) claimPort(k portKey, owner any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.ports[k] != nil {
		return false
	}
	s.ports[k] = owner
	return true
}

func (s *Server) releasePort(k portKey, owner any) {
	s.mu.Lock()
	if s.ports[k] == owner {
		delete(s.ports, k)
	}
	s.mu.Unlock()
}

// allowed reports whether token may use port.
func (s *Server) allowed(token config.Token, port uint16) bool {
	if !s.cfg.AllowPorts.Contains(port) {
		return false
	}
	return len(token.Ports) == 0 || token.Ports.Contains(port)
}
