// Package relay is the public side of homeport: it accepts agents on the
// agent port, authenticates them, opens the public ports they register, and
// carries each visitor connection as one stream to the agent.
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/tunnel"
)

// Server is a relay.
type Server struct {
	live atomic.Pointer[liveConfig] // see conf
	id   Identity
	log  *slog.Logger
	hs   *handshakeGuard

	// lns are the agent port's listeners: TCP, and QUIC on the same port
	// number over UDP.
	lns []tunnel.Listener
	// smallBuffers logs small UDP buffers once, however many sockets.
	smallBuffers sync.Once

	// ddns is the dynamic DNS updater (nil: off), run by runDDNS; a
	// reload may replace it (ddnsMu guards both, and where it runs).
	ddnsMu   sync.Mutex
	ddns     *ddns.Updater
	newDDNS  DDNSBuilder     // nil: a ddns section is refused
	ddnsCtx  context.Context // set while Serve runs
	ddnsStop func()

	mu       sync.Mutex
	sessions map[sessionKey]*agentSession
	// retired are sessions replaced by a newer one of their agent that
	// still carry connections (see agentSession.retire).
	retired map[*agentSession]struct{}
	ports   map[portKey]any // public port -> the tunnel holding it
	private map[privateKey]privateTunnel
	// web are the web tunnels by host name (or wildcard), webReserved
	// the names released and kept for their token (cfg.PortReserve).
	web         map[string]*webTunnel
	webReserved map[string]reservation
	// visitorSessions are the logged-in visitors of private tunnels.
	visitorSessions map[*visitorSession]struct{}
	// reserved are released ports kept for the token that held them
	// (cfg.PortReserve); held counts each token's claimed ports.
	reserved map[portKey]reservation
	held     map[string]int
	closing  bool
	serving  bool // Serve has started

	// knownPath is the file of known agent addresses (empty: none kept);
	// learned tells keepKnownAgents to write it.
	knownPath string
	learned   chan struct{}

	// refusals counts agent connections the guard refused since
	// refusalWarned, the last warning about them (see refused).
	refusedMu     sync.Mutex
	refusedCount  int
	refusalWarned time.Time

	handlers sync.WaitGroup // agent connections, in handshake or in session
	visitors sync.WaitGroup // visitor connections being spliced
	// visitCtx is the context of visitor splices; it is cancelled when
	// the shutdown drain time is over.
	visitCtx    context.Context
	visitCancel context.CancelFunc

	// Web tunnels' shared ports (nil: off), their guards, and what
	// terminates TLS on the HTTPS port (nil: nothing; see SetCertificates).
	httpLn, httpsLn net.Listener
	webGuards       []*visitorGuard
	certs           Certificates

	started  time.Time
	refusals refusalLog
	metrics  *metrics
}

// sessionKey names an agent: its token's name and its id. Tokens are
// known by name across reloads.
type sessionKey struct {
	token string
	agent string
}

// New returns a relay for cfg and the identity from LoadIdentity.
func New(cfg config.Relay, id Identity, log *slog.Logger, opts ...Option) (*Server, error) {
	lc, err := newLiveConfig(cfg, id)
	if err != nil {
		return nil, err
	}
	s := &Server{
		id:       id,
		log:      log,
		sessions: make(map[sessionKey]*agentSession),
		retired:  make(map[*agentSession]struct{}),
		ports:    make(map[portKey]any),
		private:  make(map[privateKey]privateTunnel),

		web:         make(map[string]*webTunnel),
		webReserved: make(map[string]reservation),

		visitorSessions: make(map[*visitorSession]struct{}),
		started:         time.Now(),
		metrics:         newMetrics(),
		reserved:        make(map[portKey]reservation),
		held:            make(map[string]int),
	}
	for _, o := range opts {
		o(s)
	}
	s.live.Store(lc)
	s.hs = newHandshakeGuard(lc.Guard)
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
		u, err := s.buildDDNS(cfg.DDNS)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		s.ddns = u
	}
	return s, nil
}

// Option gives New what the configuration does not say.
type Option func(*Server)

// DDNSBuilder makes the dynamic DNS updater that a ddns section
// describes. The program passes one that knows the DNS providers
// (internal/ddnsbuild), so that the relay itself knows none.
type DDNSBuilder func(*config.DDNS) (*ddns.Updater, error)

// WithDDNS lets the relay run the updater of its ddns section; without
// it, a configuration with a ddns section is refused.
func WithDDNS(b DDNSBuilder) Option { return func(s *Server) { s.newDDNS = b } }

// buildDDNS makes the updater c describes.
func (s *Server) buildDDNS(c *config.DDNS) (*ddns.Updater, error) {
	if s.newDDNS == nil {
		return nil, errors.New("ddns: this relay was built without dynamic DNS")
	}
	return s.newDDNS(c)
}

// Listen opens the agent port: TCP, and with QUIC on, UDP with the same
// port number (when listen asks for any free port, one free for both). It
// is separate from Serve so that the caller knows the address (and any
// error) before serving. The address returned is the TCP one.
func (s *Server) Listen() (net.Addr, error) {
	conf := tunnel.ServerTLSConfig(s.id.Cert)
	var quicTr tunnel.QUICTransport
	if s.conf().QUIC {
		key, err := tunnel.StatelessResetKey(s.id.Cert)
		if err != nil {
			return nil, err
		}
		quicTr = tunnel.QUICTransport{Session: s.sessionConfig(), HandshakeTimeout: s.conf().HandshakeTimeout, ResetKey: key,
			// The guard caps logins; this bounds what quic-go holds:
			// the logins, and up to max_handshakes more that the guard
			// pushed out before quic-go handed them over (it cannot end
			// one before), until they time out or arrive.
			MaxHandshakes: 2*s.conf().Guard.MaxHandshakes + trustedReserve,
			Admit: func(a net.Addr) (tunnel.Admission, error) {
				l, why := s.admit(a, "quic", nil)
				if l == nil {
					return nil, errors.New(why)
				}
				return l, nil
			},
			OnSmallBuffers: func(rcv, snd int) {
				s.smallBuffers.Do(func() { tunnel.LogSmallBuffers(s.log, rcv, snd) })
			}}
	}
	host, port, err := net.SplitHostPort(s.conf().Listen)
	if err != nil {
		return nil, fmt.Errorf("agent port %s: %w", s.conf().Listen, err)
	}
	for attempt := 0; ; attempt++ {
		ln, err := tunnel.TCPTransport{}.Listen(s.conf().Listen, conf)
		if err != nil {
			return nil, fmt.Errorf("agent port %s: %w", s.conf().Listen, err)
		}
		if !s.conf().QUIC {
			s.lns = []tunnel.Listener{ln}
			return ln.Addr(), s.listenWebOrClose()
		}
		tcpPort := ln.Addr().(*net.TCPAddr).Port
		qln, err := quicTr.Listen(net.JoinHostPort(host, strconv.Itoa(tcpPort)), conf)
		if err == nil {
			s.lns = []tunnel.Listener{ln, qln}
			return ln.Addr(), s.listenWebOrClose()
		}
		ln.Close()
		if port != "0" || attempt == 10 {
			return nil, fmt.Errorf("agent port %s, UDP for QUIC: %w (set quic: false to accept agents over TCP only)", s.conf().Listen, err)
		}
	}
}

// listenWebOrClose opens the web ports; if it cannot, it closes the agent
// port too.
func (s *Server) listenWebOrClose() error {
	if err := s.listenWeb(); err != nil {
		for _, ln := range s.lns {
			ln.Close()
		}
		s.lns = nil
		return err
	}
	return nil
}

// Serve accepts agents until ctx ends, then shuts down gracefully: it stops
// accepting, closes the public ports, lets visitor connections drain for up
// to cfg.ShutdownTimeout, and ends the sessions. It returns nil after a
// shutdown through ctx.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.lns) == 0 {
		return errors.New("relay: Serve before Listen")
	}
	s.mu.Lock()
	s.serving = true
	s.mu.Unlock()
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

	stopWebAccept, drainWeb := s.serveWeb(ctx)

	var err error
	pending := len(s.lns)
	select {
	case <-ctx.Done():
	case err = <-errc:
		pending--
	}
	stopWebAccept()
	var web sync.WaitGroup
	web.Go(drainWeb)
	s.shutdown()
	web.Wait()
	for ; pending > 0; pending-- {
		err = errors.Join(err, <-errc)
	}
	return err
}

// runDDNS runs the dynamic DNS updater, if configured, until ctx ends;
// the returned function stops it and waits.
func (s *Server) runDDNS(ctx context.Context) (stop func()) {
	s.ddnsMu.Lock()
	s.ddnsCtx = ctx
	s.startDDNSLocked()
	s.ddnsMu.Unlock()
	return func() {
		s.ddnsMu.Lock()
		defer s.ddnsMu.Unlock()
		s.ddnsCtx = nil
		if s.ddnsStop != nil {
			s.ddnsStop()
			s.ddnsStop = nil
		}
	}
}

// startDDNSLocked runs s.ddns, if any, while Serve runs.
func (s *Server) startDDNSLocked() {
	if s.ddns == nil || s.ddnsCtx == nil {
		return
	}
	u := s.ddns
	ctx, cancel := context.WithCancel(s.ddnsCtx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := u.Run(ctx); err != nil {
			s.log.Error("ddns: updater stopped; the relay keeps running", "err", err)
		}
	}()
	s.ddnsStop = func() {
		cancel()
		<-done
	}
}

// replaceDDNS stops the running updater and runs u (nil: none) instead.
func (s *Server) replaceDDNS(u *ddns.Updater) {
	s.ddnsMu.Lock()
	defer s.ddnsMu.Unlock()
	if s.ddnsStop != nil {
		s.ddnsStop()
		s.ddnsStop = nil
	}
	s.ddns = u
	s.startDDNSLocked()
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
		// let a flood starve real agents. A QUIC link was admitted
		// before its handshake (see Listen).
		refuse := c.Refuse
		l, ok := c.Admission().(*login)
		if ok && !s.hs.attach(l, refuse) {
			refuse()
			s.log.Debug("agent connection closed: its login was pushed out by a newer one", "agent_addr", c.RemoteAddr().String(), "transport", transportName(ln))
			continue
		}
		if !ok {
			if l, _ = s.admit(c.RemoteAddr(), transportName(ln), refuse); l == nil {
				refuse()
				continue
			}
		}
		s.handlers.Add(1)
		go func() {
			defer s.handlers.Done()
			s.handleAgent(ctx, c, l, transportName(ln))
		}()
	}
}

// admit asks the handshake guard to count a login from remote, and logs
// what it did: a refusal, a login it pushed out to make room.
func (s *Server) admit(remote net.Addr, transport string, evict func()) (*login, string) {
	l, pushed, why := s.hs.admit(addrOf(remote), evict)
	if l == nil {
		s.refused(remote, transport, why)
		return nil, why
	}
	if pushed.IsValid() {
		s.log.Debug("agent login pushed out by a newer one", "agent_addr", pushed.String(), "new_addr", remote.String(), "transport", transport)
	}
	return l, ""
}

// refusalWarnEvery is how often at most the relay warns about agent
// connections its guard refused: a flood would fill the log otherwise.
// Each refusal is logged at Debug.
const refusalWarnEvery = 10 * time.Second

// refused logs an agent connection refused by the handshake guard.
func (s *Server) refused(remote net.Addr, transport, why string) {
	s.log.Debug("agent connection refused", "agent_addr", remote.String(), "transport", transport, "reason", why)
	now := time.Now()
	s.metrics.logins.WithLabelValues("busy").Inc()
	s.refusals.add(RefusalStatus{Time: now, Where: "agent port", Addr: remote.String(), Reason: why})
	s.refusedMu.Lock()
	s.refusedCount++
	if !s.refusalWarned.IsZero() && now.Sub(s.refusalWarned) < refusalWarnEvery {
		s.refusedMu.Unlock()
		return
	}
	n := s.refusedCount
	s.refusedCount, s.refusalWarned = 0, now
	s.refusedMu.Unlock()
	s.log.Warn("agent connections refused", "count", n, "since", "the last such warning", "last_addr", remote.String(), "transport", transport, "reason", why)
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
	s.mu.Lock()
	visitors := make([]*visitorSession, 0, len(s.visitorSessions))
	for vs := range s.visitorSessions {
		visitors = append(visitors, vs)
	}
	s.mu.Unlock()

	drained := make(chan struct{})
	go func() { s.visitors.Wait(); close(drained) }()
	if n := s.conf().ShutdownTimeout; n > 0 {
		t := time.NewTimer(n)
		select {
		case <-drained:
		case <-t.C:
			s.log.Warn("shutdown: drain time over, closing remaining visitor connections", "timeout", n)
		}
		t.Stop()
	}
	s.visitCancel()
	for _, vs := range visitors {
		vs.end("shutdown", "relay shutting down")
	}
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
func (s *Server) handleAgent(ctx context.Context, c tunnel.Conn, l *login, transport string) {
	remote := c.RemoteAddr().String()
	log := s.log.With("agent_addr", remote)
	// The login ends (for the handshake guard) at the first return or
	// with its verdict.
	result, loginDone := loginAborted, false
	var ban banInfo
	endLogin := func() {
		if loginDone {
			return
		}
		loginDone = true
		ban = s.hs.done(l, result)
		if ban.started {
			log.Warn("agent address banned after failed logins", "ban_for", s.conf().Guard.AuthBanFor)
			s.metrics.bans.WithLabelValues("agent_port").Inc()
		}
	}
	defer endLogin()
	deadline := time.Now().Add(s.conf().HandshakeTimeout)
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	hsCtx, cancel := context.WithDeadline(ctx, deadline)
	err := c.Handshake(hsCtx)
	cancel()
	if err != nil {
		stop()
		c.Close()
		log.Debug("agent TLS handshake failed", "err", err)
		s.metrics.logins.WithLabelValues("failed").Inc()
		return
	}
	// One configuration for the whole login: a reload meanwhile applies
	// to the session once it is up (see Reload).
	lc := s.conf()
	admit := func(a tunnel.Agent) (tunnel.Code, string) {
		if a.Visitor() {
			return s.admitVisitor()
		}
		return s.admitAgent(lc, lc.Tokens[a.Token].Name, a)
	}
	agent, err := tunnel.AuthenticateAgent(c, lc.secrets, remote, tunnel.AuthHooks{Admit: admit, VisitorKeys: lc.visitorKeys, Verdict: func(ok, visitor bool) string {
		if l.banned {
			// The brake on a banned address: its logins, one at a
			// time, are answered no sooner than this.
			t := time.NewTimer(time.Until(l.start.Add(bannedPace)))
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		result = loginFailed
		if ok {
			result = loginOK
		}
		endLogin()
		if ok || ban.left <= 0 {
			return ""
		}
		what := "token"
		if visitor {
			what = "visitor key"
		}
		return fmt.Sprintf("wrong %s; this address is banned from logging in for %v after %d failed logins (a correct %s still gets in)",
			what, ban.left.Round(time.Second), s.conf().Guard.AuthBanAfter, what)
	}})
	// A refusal by admit (quota, id in use) came with the right token.
	var re *tunnel.RejectError
	errors.As(err, &re)
	if err == nil && ban.left > 0 {
		log.Info("agent logged in from a banned address", "agent", agent.ID, "ban_left", ban.left.Round(time.Second))
	}
	if err != nil {
		stop()
		c.Close()
		switch {
		case errors.Is(err, tunnel.ErrAuthFailed):
			result = loginFailed
			log.Warn("agent authentication failed", "err", err)
			// The hello said whether a token or a visitor key was wrong.
			s.metrics.logins.WithLabelValues("wrong_token").Inc()
			s.refusals.add(RefusalStatus{Time: time.Now(), Where: "agent port", Addr: remote, Reason: "wrong token", Banned: ban.started})
		case re != nil && re.Code == tunnel.CodeIDInUse:
			// An agent waiting for its duplicate to leave, every few
			// seconds: the takeover was logged.
			log.Debug("agent login refused", "err", err)
			s.metrics.logins.WithLabelValues("refused").Inc()
		case re != nil:
			log.Warn("agent login refused", "err", err)
			s.metrics.logins.WithLabelValues("refused").Inc()
			s.refusals.add(RefusalStatus{Time: time.Now(), Where: "agent port", Addr: remote, Reason: re.Code.String() + ": " + re.Message})
		default:
			log.Info("agent handshake failed", "err", err)
			s.metrics.logins.WithLabelValues("failed").Inc()
		}
		return
	}
	sc := s.sessionConfig()
	sc.Log = log // the multiplexer's own words, with the agent's address
	sess, err := c.Mux(sc)
	if err != nil {
		stop()
		c.Close()
		log.Error("agent session", "err", err)
		return
	}
	if agent.Visitor() {
		// A visitor opens no control stream: each of its streams
		// begins with a Visit.
		stop()
		_ = c.SetDeadline(time.Time{})
		s.metrics.logins.WithLabelValues("ok").Inc()
		key := lc.Visitors[agent.Token]
		s.serveVisitor(ctx, &visitorSession{srv: s, key: key, id: agent.ID, software: agent.Software, remote: remote, local: c.LocalAddr().String(),
			ip: addrOf(c.RemoteAddr()), transport: transport, waits: agent.Flags&tunnel.FlagWaits != 0, started: time.Now(), sess: sess,
			log: log.With("visitor", agent.ID, "key", key.Name, "token", key.Token)})
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

	token := lc.Tokens[agent.Token]
	as := newAgentSession(s, sess, ctrl, agent, token, transport, log)
	if code, msg := s.addSession(as); code != tunnel.CodeOK {
		// The rare login that raced with another past admit.
		if code != tunnel.CodeShutdown {
			log.Warn("agent login refused", "agent", agent.ID, "token", token.Name, "reason", code.String(), "detail", msg)
		}
		as.end(code, msg)
		return
	}
	s.metrics.logins.WithLabelValues("ok").Inc()
	s.metrics.sessionsUp.WithLabelValues(transport).Inc()
	as.serve(ctx)
}

func (s *Server) sessionConfig() tunnel.SessionConfig {
	return tunnel.SessionConfig{
		KeepAlive:        s.conf().Session.KeepAlive,
		KeepAliveTimeout: s.conf().Session.KeepAliveTimeout,
		StreamWindow:     s.conf().Session.StreamWindow,
	}
}

// maxRetired is how many replaced sessions of one agent may go on
// carrying their connections; a further replacement ends the oldest.
const maxRetired = 2

// Default quotas per token, when the configuration gives none: far above
// what one household runs (an agent per computer, a few tunnels each),
// far below what would let one tenant crowd the others out.
const (
	DefaultMaxAgents  = 10
	DefaultMaxTunnels = 64
)

// quotas returns the agent ids and tunnels the named token may have.
func (lc *liveConfig) quotas(token string) (agents, tunnels int) {
	t, _ := lc.token(token)
	return cmp.Or(t.MaxAgents, lc.MaxAgents), cmp.Or(t.MaxTunnels, lc.MaxTunnels)
}

// admitAgent decides whether an agent whose token matched may log in: a
// standby login (tunnel.FlagStandby) only while no session holds its id,
// and a new id only within the token's max_agents.
func (s *Server) admitAgent(lc *liveConfig, token string, a tunnel.Agent) (tunnel.Code, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admitLocked(lc, token, a)
}

// admitVisitor decides whether a visitor whose key matched may log in.
func (s *Server) admitVisitor() (tunnel.Code, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return tunnel.CodeShutdown, "relay shutting down"
	}
	return tunnel.CodeOK, ""
}

func (s *Server) admitLocked(lc *liveConfig, token string, a tunnel.Agent) (tunnel.Code, string) {
	if s.closing {
		return tunnel.CodeShutdown, "relay shutting down"
	}
	key := sessionKey{token: token, agent: a.ID}
	if cur := s.sessions[key]; cur != nil {
		if a.Flags&tunnel.FlagStandby != 0 {
			return tunnel.CodeIDInUse, fmt.Sprintf("agent id %q is held by a session from %s, up since %s; logging in once it ends",
				a.ID, cur.remote, cur.started.UTC().Format(time.DateTime+" UTC"))
		}
		return tunnel.CodeOK, "" // a replacement: no new id
	}
	n := 0
	for k := range s.sessions {
		if k.token == token {
			n++
		}
	}
	if limit, _ := lc.quotas(token); n >= limit {
		return tunnel.CodeQuota, fmt.Sprintf("token %q has %d agent ids logged in, its max_agents; give the agents of one computer one id, stop one, or raise max_agents (for the token or the relay) in the relay's configuration",
			token, n)
	}
	return tunnel.CodeOK, ""
}

// addSession makes as the session of its agent, unless admit refuses it
// now (a refusal is returned). The older one's ports are free when
// addSession returns. When the agent replaces it make-before-break
// (tunnel.FlagReplacing) the older one is retired and its connections go
// on; otherwise (the agent lost it, or another agent took over the id) it
// is ended.
func (s *Server) addSession(as *agentSession) (tunnel.Code, string) {
	s.mu.Lock()
	if code, msg := s.admitLocked(s.conf(), as.key.token, as.agent); code != tunnel.CodeOK {
		s.mu.Unlock()
		return code, msg
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
	msg := fmt.Sprintf("a newer session of agent %q, from %s, took over", as.key.agent, as.remote)
	switch {
	case old != nil && keep:
		old.log.Info("agent session replaced by a newer one; its open connections go on", "new_addr", as.remote, "connections", max(old.sess.NumStreams()-1, 0))
		old.retire(msg)
	case old != nil:
		old.log.Info("agent session replaced by a newer one", "new_addr", as.remote)
		old.end(tunnel.CodeReplaced, msg)
	}
	return tunnel.CodeOK, ""
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

// reservation keeps a released port for the token that held it.
type reservation struct {
	token string
	until time.Time
}

// claimPort reserves k for owner, a tunnel of token's; it refuses (with
// the code and message for the agent) if another tunnel holds it, if it is
// reserved for another token, or if token has all the tunnels its quota
// allows.
func (s *Server) claimPort(k portKey, owner any, token string) (tunnel.Code, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return tunnel.CodeShutdown, "relay shutting down"
	}
	if h := s.ports[k]; h != nil {
		if t, ok := h.(tunnelOf); ok && t.session().key.token == token {
			return tunnel.CodePortInUse, fmt.Sprintf("%v port %d is already used by tunnel %q of agent %q (same token)", k.proto, k.port, t.tunnelName(), t.session().key.agent)
		}
		return tunnel.CodePortInUse, fmt.Sprintf("%v port %d is already used by another tunnel on this relay", k.proto, k.port)
	}
	now := time.Now()
	if r, ok := s.reserved[k]; ok {
		switch {
		case !now.Before(r.until):
			delete(s.reserved, k)
		case r.token != token:
			return tunnel.CodePortReserved, fmt.Sprintf("%v port %d is reserved for another token's agent, which held it, until %s (the relay's port_reserve)",
				k.proto, k.port, r.until.UTC().Format(time.DateTime+" UTC"))
		}
	}
	if _, limit := s.conf().quotas(token); s.held[token] >= limit {
		return tunnel.CodeQuota, fmt.Sprintf("token %q holds %d tunnels, its max_tunnels; close one, or raise max_tunnels (for the token or the relay) in the relay's configuration",
			token, s.held[token])
	}
	delete(s.reserved, k)
	s.ports[k] = owner
	s.held[token]++
	return tunnel.CodeOK, ""
}

// tunnelOf is a tunnel that knows its session, for messages.
type tunnelOf interface {
	session() *agentSession
	tunnelName() string
}

// releasePort frees k if owner, a tunnel of token's, holds it; with
// reserve, the port then stays reserved to token for cfg.PortReserve.
func (s *Server) releasePort(k portKey, owner any, token string, reserve bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports[k] != owner {
		return
	}
	delete(s.ports, k)
	s.held[token]--
	if !reserve || s.closing || s.conf().PortReserve <= 0 {
		return
	}
	now := time.Now()
	if len(s.reserved) >= 1024 {
		for rk, r := range s.reserved {
			if !now.Before(r.until) {
				delete(s.reserved, rk)
			}
		}
	}
	s.reserved[k] = reservation{token: token, until: now.Add(s.conf().PortReserve)}
}

// portRefusal says why the named token may not use port, or returns "" if it
// may: the port must be in allow_ports; a port listed in a token's ports
// belongs to that token alone; a token without ports may use only the
// ports no token lists.
func (lc *liveConfig) portRefusal(name string, port uint16) string {
	if !lc.AllowPorts.Contains(port) {
		return fmt.Sprintf("port %d is outside the relay's allow_ports (%s); to use it, add it to allow_ports in the relay's configuration", port, lc.AllowPorts)
	}
	token, ok := lc.token(name)
	if !ok {
		return fmt.Sprintf("token %q is no longer in the relay's configuration", name)
	}
	if len(token.Ports) > 0 {
		if token.Ports.Contains(port) {
			return ""
		}
		return fmt.Sprintf("port %d is not in the ports of token %q (%s); to use it, add it to that token's ports in the relay's configuration", port, token.Name, token.Ports)
	}
	for _, t := range lc.Tokens {
		if t.Name != name && t.Ports.Contains(port) {
			return fmt.Sprintf("port %d is in the ports of another token, and only that token's agents may use it; token %q lists no ports, so its agents may use the ports of allow_ports (%s) that no token lists", port, token.Name, lc.AllowPorts)
		}
	}
	return ""
}
