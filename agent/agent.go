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
	reloadMu     sync.Mutex           // one Reload at a time
	policy       relaydial.QUICPolicy // transport: auto
	smallBuffers sync.Once            // QUIC's small UDP buffers are logged once
	log          *slog.Logger
	software     string
	status       *statusBoard
	started      time.Time
	sessionState sessionBoard
	statsMu      sync.Mutex
	stats        map[string]*tunnelStats // by tunnel name
	metrics      *metrics
	// budgets are every UDP budget made (see settings.udpQueues), closed
	// when Run ends.
	budgetsMu sync.Mutex
	budgets   []*tunnel.UDPBudget

	// live is the session serving now, for Reload to bring its
	// registrations in line (nil: none).
	live atomic.Pointer[registrar]
	// renewAt: sessions made with settings older than this generation are
	// replaced by a new one (make-before-break); renew wakes the watcher.
	renewAt atomic.Uint64
	renew   chan struct{}

	// ddns runs the dynamic DNS updater (none: off); relayAddr feeds its
	// relay source with the address the relay sees this agent at.
	ddns      ddnsRunner
	maps      mapRunner // port mappings on the home router
	relayAddr *ddns.RelayAddr
	newDDNS   DDNSBuilder // nil: a ddns section is refused
	version   string

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

// Backoff settings.
const (
	backoffBase = 500 * time.Millisecond
	// dialBackoffBase and dialBackoffMax set the delay after failing to
	// reach the relay at all: a refused or unanswered connect costs the
	// relay nothing, and a relay that comes back should be used within a
	// second.
	dialBackoffBase = 250 * time.Millisecond
	dialBackoffMax  = time.Second
	// rejectedBackoff is the delay after the relay refused this agent
	// (wrong token): retrying sooner would only hammer the relay.
	rejectedBackoff = 5 * time.Minute
	// refusedBase is the first delay after a refusal that may pass (a
	// quota, or another agent holding this agent's id); the delays double
	// up to reconnect_max.
	refusedBase = time.Second
	// stablePeriod: a session that lived this long resets the backoff;
	// shorter ones (a relay that drops agents at once) keep it growing.
	stablePeriod = 2 * time.Second
)

// New checks cfg and returns an agent. version is reported to the relay.
// An error names every mistake found.
func New(cfg config.Agent, version string, log *slog.Logger, opts ...Option) (*Agent, error) {
	a := &Agent{
		log:       log,
		software:  Software + "/" + version,
		version:   version,
		renew:     make(chan struct{}, 1),
		relayAddr: ddns.NewRelayAddr(),
		WakeEvery: DefaultWakeEvery,
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
// retrying, slowly for such refusals.
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
	var (
		attempt  int
		everUp   bool
		dialFail int
		// lastRefusal is the relay's last refusal of a login that may
		// pass, logged once.
		lastRefusal tunnel.RejectError
		// standby: another agent took over this agent's id; logins ask
		// for it only once that one has left (tunnel.FlagStandby).
		// standbyN counts the waits since, for their backoff.
		standby  bool
		standbyN int
		next     *link          // a session already up, handed over
		retired  sync.WaitGroup // replaced sessions carrying their last connections
	)
	defer func() {
		a.budgetsMu.Lock()
		defer a.budgetsMu.Unlock()
		for _, b := range a.budgets {
			b.Close()
		}
	}()
	defer retired.Wait()
	a.ddns.start(ctx, a.log)
	defer a.ddns.stop()
	a.maps.start(ctx, a, a.conf().cfg.Tunnels)
	defer a.maps.stop()
	for {
		cfg := a.conf().cfg
		start := time.Now()
		l, err := next, error(nil)
		if l == nil {
			a.sessionState.connecting()
			l, err = a.establish(ctx, false, standby, nil)
			if err == nil && standby {
				standby = false
				a.log.Info("the other agent with this agent's id has left; serving the tunnels again", "id", cfg.ID)
			}
		}
		next = nil
		if err == nil {
			err = a.session(ctx, l, &retired)
		}
		var h *handover
		if errors.As(err, &h) && ctx.Err() != nil {
			h.next.sess.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		if !errors.As(err, &h) {
			a.status.down(time.Now())
		}
		var delay time.Duration
		var f *failure
		errors.As(err, &f)
		var re *tunnel.RejectError
		switch {
		case errors.As(err, &h):
			everUp, attempt, dialFail = true, 0, 0
			next = h.next
			continue
		case errors.Is(err, errUpgrade):
			attempt, delay = 0, 0
		case f != nil && f.stage == stageUp:
			everUp = true
			dialFail = 0
			// A session that was up for a while means the relay was fine:
			// the next attempt starts with the shortest delay again.
			if time.Since(start) >= stablePeriod {
				attempt = 0
			}
			if !f.replaced {
				standbyN = 0
			}
			switch {
			case f.replaced:
				// Wait for the other agent to leave, asking with
				// FlagStandby: the relay lets this one in only then, so
				// two agents with one id do not take it from each other.
				standby = true
				delay = jitter(refusedBase, cfg.ReconnectMax, standbyN)
				standbyN++
				a.log.Error("another agent with this agent's id took over; waiting for it to leave; give each agent its own id (--id)",
					"id", cfg.ID, "relay_said", f.err, "retry_in", delay.Round(time.Millisecond))
			case f.definitive:
				delay = rejectedBackoff
				a.log.Error("session ended by the relay", "err", f.err, "retry_in", delay)
			case f.cut:
				// A relay that crashed or restarted, or a link that
				// died: try again as soon as for an unreachable relay,
				// however short the session was.
				delay = jitter(dialBackoffBase, min(dialBackoffMax, cfg.ReconnectMax), attempt)
				if !f.logged {
					a.log.Warn("session lost; reconnecting", "err", f.err, "retry_in", delay.Round(time.Millisecond))
				}
			default:
				delay = jitter(backoffBase, cfg.ReconnectMax, attempt)
				if !f.logged {
					a.log.Warn("session lost; reconnecting", "err", f.err, "retry_in", delay.Round(time.Millisecond))
				}
			}
		case f != nil && f.refused && errors.As(err, &re):
			// Refused for now (a quota, or the other agent still holds
			// the id): try again, slowly, and say so once.
			level, msg := slog.LevelError, "relay refused this agent for now; retrying"
			if re.Code == tunnel.CodeIDInUse {
				delay = jitter(refusedBase, cfg.ReconnectMax, standbyN)
				standbyN++
				level, msg = slog.LevelInfo, "the other agent still holds this agent's id; waiting"
			} else {
				delay = jitter(refusedBase, cfg.ReconnectMax, attempt)
			}
			if *re == lastRefusal {
				level = slog.LevelDebug
			}
			lastRefusal = *re
			a.log.Log(ctx, level, msg, "err", f.err, "retry_in", delay.Round(time.Millisecond))
		case f != nil && f.definitive:
			if !everUp {
				return fmt.Errorf("%w: %w", ErrRejected, f)
			}
			delay = rejectedBackoff
			a.log.Error("relay refused this agent", "err", f, "retry_in", delay)
		case f != nil && f.stage == stageDial:
			delay = jitter(dialBackoffBase, min(dialBackoffMax, cfg.ReconnectMax), attempt)
			if dialFail%30 == 0 { // do not fill the log while the relay is away
				a.log.Warn("relay unreachable; retrying", "relay", cfg.Relay, "err", f.err, "retry_in", delay.Round(time.Millisecond))
			}
			dialFail++
		default:
			delay = jitter(backoffBase, cfg.ReconnectMax, attempt)
			a.log.Warn("connecting to relay failed; retrying", "relay", cfg.Relay, "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		attempt++
		a.sessionState.waiting(err, time.Now().Add(delay))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-a.renew:
			// Settings that make a new session changed (a new token,
			// say): try them at once.
			t.Stop()
			attempt, dialFail = 0, 0
		}
	}
}

// jitter is exponential backoff with full jitter: uniform in
// [0, min(max, base*2^attempt)], never below a tenth of base.
func jitter(base, max time.Duration, attempt int) time.Duration {
	return relaydial.Jitter(base, max, attempt)
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
	since     time.Time // when the session came up
	// upgrade: the agent closes this TCP session for one over QUIC.
	upgrade atomic.Bool
	w       *controlWriter // the control stream
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
}

// handover ends the serving of a session whose link went quiet, once a
// newer session is up in its place (make-before-break, see watchSilence).
type handover struct{ next *link }

func (h *handover) Error() string { return "a newer session took over" }

// establish connects to the relay, authenticates and registers the tunnels.
// replacing says that the agent still holds a session it replaces
// (make-before-break); see tunnel.FlagReplacing. standby says that
// another agent took over this agent's id, and the login must wait for it
// to leave; see tunnel.FlagStandby. handoff, when set, is called once the
// relay has let the agent in, before the tunnels are registered.
func (a *Agent) establish(ctx context.Context, replacing, standby bool, handoff func(*settings)) (*link, error) {
	set := a.conf()
	cfg := &set.cfg
	dctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	c, name, de := a.dialer(set).Dial(dctx)
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
		if errors.Is(err, tunnel.ErrAuthFailed) {
			return nil, &failure{stage: stageSetup, definitive: true, err: fmt.Errorf(
				"relay %s: %w: the token is wrong; copy it from the relay's start-up output or its data directory", cfg.Relay, err)}
		}
		if errors.Is(err, tunnel.ErrBusy) {
			return nil, &failure{stage: stageDial, err: fmt.Errorf("relay %s: %w", cfg.Relay, err)}
		}
		var re *tunnel.RejectError
		if errors.As(err, &re) && (re.Code == tunnel.CodeQuota || re.Code == tunnel.CodeIDInUse) {
			return nil, &failure{stage: stageSetup, refused: true, err: fmt.Errorf("relay %s: %w", cfg.Relay, err)}
		}
		if errors.As(err, &re) || errors.Is(err, tunnel.ErrVersion) {
			return nil, &failure{stage: stageSetup, definitive: true, err: fmt.Errorf("relay %s: %w", cfg.Relay, err)}
		}
		return nil, &failure{stage: stageSetup, err: fmt.Errorf("relay %s: authenticate: %w", cfg.Relay, err)}
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

	a.log.Info("connected to relay", "relay", cfg.Relay, "transport", name, "remote", sess.RemoteAddr().String(), "public_addr", welcome.ObservedAddr)
	if err := a.relayAddr.Set(welcome.ObservedAddr); err != nil && a.ddns.running() {
		a.log.Warn("ddns: relay source", "err", err)
	}
	l := &link{transport: name, sess: sess, since: time.Now(), w: &controlWriter{ctrl: ctrl}, set: set, features: welcome.Features,
		asked: make(map[string]*asked, len(results))}
	now := time.Now()
	for i, r := range results {
		it := &asked{req: reqs[i], up: r.Code == tunnel.CodeOK}
		l.asked[r.Name] = it
		a.logResult(set, r, a.status.result(r, now), true)
		if r.Code != tunnel.CodeOK && retryable(r.Code) {
			l.retry = append(l.retry, it)
		}
	}
	a.sessionState.up(name, welcome.ObservedAddr, sess)
	if a.OnSession != nil {
		a.OnSession(SessionInfo{Transport: name, ObservedAddr: welcome.ObservedAddr, Results: results})
	}
	return l, nil
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

// session serves an established link until it ends, or until a newer
// session replaces it (*handover); the replaced one then goes on carrying
// its open connections in the background, counted in retired.
func (a *Agent) session(ctx context.Context, l *link, retired *sync.WaitGroup) error {
	auto := l.set.cfg.Transport == config.TransportAuto
	start := time.Now()
	// watchers end with the session, or when it is handed over.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watched sync.WaitGroup
	// replacing: a newer session is being opened; tried: one has been.
	var upgraded, replacing, tried atomic.Bool
	if auto && l.transport == config.TransportTCP {
		watched.Go(func() {
			a.watchQUIC(wctx, l.sess, func() {
				if !replacing.Load() {
					upgraded.Store(true)
					l.upgrade.Store(true)
					l.sess.Close()
				}
			})
		})
	}
	newer := make(chan *link, 1)
	watched.Go(func() { a.watchSilence(wctx, l, &replacing, &tried, newer) })
	watched.Go(func() { a.watchRenew(wctx, l, &replacing, &tried, newer) })

	served := make(chan error, 1)
	go func() { served <- a.serve(ctx, l) }()
	var err error
	select {
	case err = <-served:
		if replacing.Load() {
			// A newer session is on its way: it is the next one, unless
			// it fails too. (The relay closes a session it retired as
			// soon as it carries no connection.)
			var f *failure
			if errors.As(err, &f) && f.stage == stageUp && !f.definitive && !f.replaced && ctx.Err() == nil {
				a.log.Warn("session lost; reconnecting", "err", f.err, "new_session", "already being opened")
				f.logged = true
			}
			watched.Wait()
		}
		stopWatch()
		watched.Wait()
		select {
		case next := <-newer:
			return &handover{next: next}
		default:
		}
		var f *failure
		if tried.Load() && errors.As(err, &f) && f.replaced {
			// The relay retired this session for a newer one of ours
			// that then failed: not another agent taking over.
			f.replaced, f.cut = false, true
		}
	case next := <-newer:
		stopWatch()
		watched.Wait()
		retired.Go(func() { a.retire(l, served) })
		return &handover{next: next}
	}
	if upgraded.Load() && ctx.Err() == nil {
		return &failure{stage: stageUp, err: errUpgrade}
	}
	if auto && l.transport == config.TransportQUIC && ctx.Err() == nil {
		if failed, pause := a.policy.Ended(time.Since(start), time.Now()); failed {
			a.log.Warn("QUIC sessions keep ending within a minute; using TCP", "retry_quic_in", pause.Round(time.Second))
		}
	}
	return err
}

// retire lets a replaced session carry its open connections to their end.
// The relay sends no new visitor to it and closes it once it carries no
// connection: it counts the streams it opened, and some of those may not
// have reached this end yet. (After a NAT rebinding, the relay's packets
// reach the old session only once its own next packet has made the home
// router map it again; closing it on an empty count here cut a visitor
// whose stream was on its way.) So this end closes it only after it has
// carried none for retireIdle, in case the relay does not; a link that
// really died ends with the keepalive.
func (a *Agent) retire(l *link, served <-chan error) {
	t := time.NewTicker(retireCheck)
	defer t.Stop()
	var idle time.Duration
	for {
		select {
		case <-served:
			return // serve logged its end
		case <-t.C:
		}
		// The control stream is always open.
		if l.sess.NumStreams() > 1 {
			idle = 0
			continue
		}
		if idle += retireCheck; idle >= retireIdle {
			l.sess.Close()
		}
	}
}

// Make-before-break: a session whose relay has been silent for
// suspectAfter (while the link works the relay answers the agent's pings,
// over TCP, or sends its own heartbeat, over QUIC, every second) may be
// stuck behind a link that went down and came back, with the
// retransmissions on both sides (TCP's, or QUIC's probe timeouts) backed
// off for seconds. The agent then opens a new session beside it; the relay
// gives the newer session the ports, and the old one keeps its
// connections until they end.
const (
	suspectAfter = 3 * time.Second
	silenceCheck = 250 * time.Millisecond
	retireCheck  = 250 * time.Millisecond
	retireIdle   = 10 * time.Second
)

// watchSilence opens a newer session when l goes silent, and sends it on
// newer. It returns when l ends, when ctx ends, or once it has sent one.
func (a *Agent) watchSilence(ctx context.Context, l *link, replacing, tried *atomic.Bool, newer chan<- *link) {
	t := time.NewTicker(silenceCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.sess.Done():
			return
		case <-t.C:
		}
		if isDone(l.sess.Done()) {
			return // a tick and the end were both ready
		}
		d := l.sess.SilentFor()
		if d < suspectAfter {
			continue
		}
		if !replacing.CompareAndSwap(false, true) {
			continue // a new session with reloaded settings is on its way
		}
		a.log.Warn("relay silent; opening a new session beside this one", "silent_for", d.Round(time.Millisecond))
		tried.Store(true)
		next, err := a.establish(ctx, true, false, nil)
		if err == nil {
			newer <- next
			return
		}
		replacing.Store(false)
		a.log.Debug("new session failed; trying again while the relay is silent", "err", err)
		var f *failure
		if errors.As(err, &f) && f.definitive {
			return // the main loop deals with it when this session ends
		}
	}
}

// dialer reaches the relay of set.
func (a *Agent) dialer(set *settings) *relaydial.Dialer {
	return &relaydial.Dialer{Relay: set.cfg.Relay, TLS: set.tls, TCP: set.tcp, QUIC: set.quic,
		Transport: set.cfg.Transport, Policy: &a.policy, Log: a.log}
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
