// Package agent is the home side of homeport: it dials out to the relay,
// keeps one authenticated session up (reconnecting forever), registers its
// tunnels, and connects each visitor stream to that tunnel's local target.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/internal/wol"
	"github.com/homeport/homeport/tunnel"
)

// Software is sent to the relay in the hello; cmd/agent sets the version.
const Software = "homeport-agent"

// Agent keeps a session to the relay and serves its tunnels.
type Agent struct {
	// set is the configuration in force, replaced whole by Reload: each
	// visitor, session and retry reads it once and works with what it got.
	set          atomic.Pointer[settings]
	reloadMu     sync.Mutex            // one Reload at a time
	policy       *relaydial.QUICPolicy // transport: auto; the link's
	smallBuffers sync.Once             // QUIC's small UDP buffers are logged once
	log          *slog.Logger
	software     string
	status       *statusBoard
	started      time.Time
	statsMu      sync.Mutex
	stats        map[string]*tunnelStats // by tunnel name
	metrics      *metrics
	// budgets are every UDP budget made (see settings.udpQueues), closed
	// when Run ends.
	budgetsMu sync.Mutex
	budgets   []*tunnel.UDPBudget

	// link is the agent's link to its relay: it owns the sessions' life.
	link *relayLink

	// ddns runs the dynamic DNS updater (none: off); relayAddr feeds its
	// relay source with the address the relay sees this agent at.
	ddns      ddnsRunner
	maps      mapRunner // port mappings on the home router
	relayAddr *ddns.RelayAddr
	// relaySessions feeds the connected_relays source (nil: none).
	relaySessions *ddns.RelaySessions
	newDDNS       DDNSBuilder // nil: a ddns section is refused
	version       string

	// wakers send each MAC address's magic packets (see waker).
	wakeMu sync.Mutex
	wakers map[wol.MAC]*waker
	// WakeEvery is the least time between two magic packets for one MAC
	// address (DefaultWakeEvery); tests may change it before Run.
	WakeEvery time.Duration

	// OnSession, when set, is called after every successful registration
	// with the relay's answer; tests and status reporting use it.
	OnSession func(SessionInfo)
}

// SessionInfo describes an established session.
type SessionInfo struct {
	Transport    string // config.TransportTCP or config.TransportQUIC
	ObservedAddr string // this agent's address as the relay sees it
	Results      []tunnel.TunnelResult
}

// New checks cfg and returns an agent. version is reported to the relay.
// An error names every mistake found.
func New(cfg config.Agent, version string, log *slog.Logger, opts ...Option) (*Agent, error) {
	a := &Agent{
		log:       log,
		software:  Software + "/" + version,
		version:   version,
		relayAddr: ddns.NewRelayAddr(),
		WakeEvery: DefaultWakeEvery,
		policy:    &relaydial.QUICPolicy{},
	}
	for _, o := range opts {
		o(a)
	}
	set, u, err := a.prepare(cfg, nil)
	if err != nil {
		return nil, err
	}
	a.set.Store(set)
	names := make([]string, 0, len(cfg.Tunnels))
	for _, t := range cfg.Tunnels {
		names = append(names, t.Name)
	}
	a.status = newStatusBoard(names, time.Now())
	a.started = time.Now()
	a.stats = make(map[string]*tunnelStats, len(names))
	for _, n := range names {
		a.stats[n] = &tunnelStats{}
	}
	a.metrics = newMetrics()
	a.ddns.u = u
	a.link = newRelayLink(a, a.policy)
	return a, nil
}

// conf returns the configuration in force.
func (a *Agent) conf() *settings { return a.set.Load() }

// ErrRejected wraps a definitive refusal on the first connection attempt.
var ErrRejected = errors.New("relay refused this agent")

// Run keeps a session to the relay until ctx ends; it returns nil then.
// If the very first attempt is refused definitively (wrong token, or the
// relay's key does not match the pin), Run returns that error with the fix,
// since retrying cannot help; after a session has once been up, it keeps
// retrying, slowly for such refusals. The session's life is the link's
// (see relayLink); what its sessions share runs here.
func (a *Agent) Run(ctx context.Context) (err error) {
	// Stopping takes a moment (the relay is told, connections drain):
	// say when it starts and when it is done, as the relay does.
	said := make(chan struct{})
	stopping := context.AfterFunc(ctx, func() {
		a.log.Info("agent shutting down")
		close(said)
	})
	defer func() {
		if stopping() {
			return // still running: Run failed
		}
		<-said
		if err == nil {
			a.log.Info("agent stopped")
		}
	}()
	defer func() {
		a.budgetsMu.Lock()
		defer a.budgetsMu.Unlock()
		for _, b := range a.budgets {
			b.Close()
		}
	}()
	a.ddns.start(ctx, a.log)
	defer a.ddns.stop()
	a.maps.start(ctx, a, a.conf().cfg.Tunnels)
	defer a.maps.stop()
	return a.link.run(ctx)
}

type stage int

const (
	stageDial  stage = iota // TCP connect
	stageSetup              // TLS, authentication, registration
	stageUp                 // the session was up and ended
)

// failure is why one session attempt ended.
type failure struct {
	stage      stage
	definitive bool // retrying cannot help without a change of config
	// replaced: the relay ended the session because another session
	// with this agent's id took over.
	replaced bool
	// refused: the relay refused the login for now (a Reject that may
	// pass, such as a quota); retried with backoff.
	refused bool
	logged  bool // the end of the session was logged already
	// cut: the session ended because the relay or the link went away
	// (no GoAway: its process or the link died; or GoAway with
	// CodeShutdown), not by the relay's choice about this agent.
	cut bool
	err error
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// link is an established session: authenticated, its tunnels registered.
type link struct {
	transport string
	sess      tunnel.Session
	since     time.Time      // when the session came up
	w         *controlWriter // the control stream
	// set is the configuration the session was made with.
	set *settings
	// features are what the relay announced in its Welcome.
	features tunnel.Features
	// asked are the tunnels asked for on this session, by name, with the
	// relay's answers; after establish, only the session's registrar
	// touches them.
	asked map[string]*asked
	// retry are the tunnels the relay refused for a reason that may
	// pass: the session registers them again (registrar.retry).
	retry []*asked
	// reach are the port mapping checks waiting for the relay's answer.
	reach reachWaiters
	// served is closed when serving the session has ended.
	served chan struct{}
}

// establish connects to the relay, authenticates and registers the tunnels.
// replacing says that the agent still holds a session it replaces
// (make-before-break); see tunnel.FlagReplacing. standby says that
// another agent took over this agent's id, and the login must wait for it
// to leave; see tunnel.FlagStandby. handoff, when set, is called once the
// relay has let the agent in, before the tunnels are registered.
func (s *relayLink) establish(ctx context.Context, replacing, standby bool, handoff func(*settings)) (*link, error) {
	a := s.a
	set := a.conf()
	cfg := &set.cfg
	dctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	c, name, de := s.dialer(set).Dial(dctx)
	if de != nil {
		f := &failure{stage: stageSetup, definitive: de.Definitive, err: de.Err}
		if de.Stage == relaydial.StageDial {
			f.stage = stageDial
		}
		return nil, f
	}
	flags := tunnel.FlagFeatures
	if replacing {
		flags |= tunnel.FlagReplacing
	}
	if standby {
		flags |= tunnel.FlagStandby
	}
	welcome, err := tunnel.Authenticate(c, []byte(cfg.Token), cfg.ID, a.software, flags)
	if err != nil {
		c.Close()
		return nil, authFailure(cfg.Relay, err)
	}
	sess, err := c.Mux(tunnel.SessionConfig{
		KeepAlive:        cfg.Session.KeepAlive,
		KeepAliveTimeout: cfg.Session.KeepAliveTimeout,
		StreamWindow:     cfg.Session.StreamWindow,
		Log:              a.log.With("relay", cfg.Relay),
	})
	if err != nil {
		c.Close()
		return nil, &failure{stage: stageSetup, err: err}
	}
	if handoff != nil {
		handoff(set)
	}
	reqs := set.requests()
	ctrl, results, err := a.register(dctx, sess, reqs, welcome.Features)
	if err != nil {
		sess.Close()
		return nil, &failure{stage: stageSetup, err: err}
	}
	_ = c.SetDeadline(time.Time{})

	return s.newLink(set, name, sess, &welcome, ctrl, reqs, results), nil
}

// newLink records a session that came up: over transport name, welcomed by
// the relay with w, its tunnels reqs answered with results.
func (s *relayLink) newLink(set *settings, name string, sess tunnel.Session, w *tunnel.Welcome, ctrl tunnel.Stream,
	reqs []request, results []tunnel.TunnelResult) *link {
	a, cfg := s.a, &set.cfg
	a.log.Info("connected to relay", "relay", cfg.Relay, "transport", name, "remote", sess.RemoteAddr().String(), "public_addr", w.ObservedAddr)
	if err := a.relayAddr.Set(w.ObservedAddr); err != nil && a.ddns.running() {
		a.log.Warn("ddns: relay source", "err", err)
	}
	// The connected_relays source publishes the relay while this session
	// lives.
	if down, err := a.relaySessions.Up(cfg.Relay, sess.RemoteAddr().String()); err != nil {
		a.log.Warn("ddns: connected_relays source", "err", err)
	} else {
		go func() {
			<-sess.Done()
			down()
		}()
	}
	l := &link{transport: name, sess: sess, since: time.Now(), w: &controlWriter{ctrl: ctrl}, set: set, features: w.Features,
		asked: make(map[string]*asked, len(results)), served: make(chan struct{})}
	now := time.Now()
	for i, r := range results {
		it := &asked{req: reqs[i], up: r.Code == tunnel.CodeOK}
		l.asked[r.Name] = it
		a.logResult(set, r, a.status.result(r, now), true)
		if r.Code != tunnel.CodeOK && retryable(r.Code) {
			l.retry = append(l.retry, it)
		}
	}
	s.board.up(name, w.ObservedAddr, sess)
	if a.OnSession != nil {
		a.OnSession(SessionInfo{Transport: name, ObservedAddr: w.ObservedAddr, Results: results})
	}
	return l
}

// authFailure says why the relay did not let the agent in.
func authFailure(relay string, err error) *failure {
	if errors.Is(err, tunnel.ErrAuthFailed) {
		return &failure{stage: stageSetup, definitive: true, err: fmt.Errorf(
			"relay %s: %w: the token is wrong; copy it from the relay's start-up output or its data directory", relay, err)}
	}
	if errors.Is(err, tunnel.ErrBusy) {
		return &failure{stage: stageDial, err: fmt.Errorf("relay %s: %w", relay, err)}
	}
	var re *tunnel.RejectError
	if errors.As(err, &re) && (re.Code == tunnel.CodeQuota || re.Code == tunnel.CodeIDInUse) {
		return &failure{stage: stageSetup, refused: true, err: fmt.Errorf("relay %s: %w", relay, err)}
	}
	if errors.As(err, &re) || errors.Is(err, tunnel.ErrVersion) {
		return &failure{stage: stageSetup, definitive: true, err: fmt.Errorf("relay %s: %w", relay, err)}
	}
	return &failure{stage: stageSetup, err: fmt.Errorf("relay %s: authenticate: %w", relay, err)}
}

// register opens the control stream and registers the tunnels on it,
// for a relay with the features f. It returns the relay's answers in
// reqs' order.
func (a *Agent) register(ctx context.Context, sess tunnel.Session, reqs []request, f tunnel.Features) (tunnel.Stream, []tunnel.TunnelResult, error) {
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("open control stream: %w", err)
	}
	// One message per frame's worth of tunnels; the relay answers each.
	call := func(m tunnel.Message, n int) (*tunnel.RegisterResult, error) {
		if err := tunnel.WriteMessage(ctrl, m); err != nil {
			return nil, err
		}
		var res tunnel.RegisterResult
		if err := tunnel.ReadInto(ctrl, tunnel.MaxFrameSize, &res); err != nil {
			return nil, err
		}
		if len(res.Results) != n {
			return nil, fmt.Errorf("the relay answered %d of %d", len(res.Results), n)
		}
		return &res, nil
	}
	results := make([]tunnel.TunnelResult, len(reqs))
	err = ask(reqs, f, call, func(i int, r tunnel.TunnelResult) error {
		results[i] = r
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("register tunnels: %w", err)
	}
	return ctrl, results, nil
}

// Option gives New what the configuration does not say.
type Option func(*Agent)

// DDNSBuilder makes the dynamic DNS updater that a ddns section
// describes; relay feeds its relay source. The program passes one that
// knows the DNS providers (internal/ddnsbuild), so that the agent itself
// knows none.
type DDNSBuilder func(c *config.DDNS, relay *ddns.RelayAddr) (*ddns.Updater, error)

// WithDDNS lets the agent run the updater of its ddns section; without
// it, a configuration with a ddns section is refused.
func WithDDNS(b DDNSBuilder) Option { return func(a *Agent) { a.newDDNS = b } }

// WithRelaySessions makes the agent report each session to a relay to rs,
// from when it comes up until it ends. The ddns section's
// connected_relays source publishes from the same rs.
func WithRelaySessions(rs *ddns.RelaySessions) Option {
	return func(a *Agent) { a.relaySessions = rs }
}
