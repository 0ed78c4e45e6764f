package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/relaydial"
)

// The agent's link to one relay. A relayLink owns the life of the
// sessions to that relay: it makes one, serves it, replaces it when it
// goes silent or a reload changes how to reach the relay (make before
// break), closes it to move it to QUIC, and backs off after a failure.
// One goroutine, run's, owns the link's state and makes every change of
// it; the goroutines it starts (making a session, serving one, watching
// one) only report what they saw, as events on one channel.
//
// What the agent's sessions share lives outside the link, in Agent: the
// configuration in force, the tunnels' status and counters, DDNS, port
// mappings.
//
//	stopped     ──start───────────────▶ connecting
//	connecting  ──session up──────────▶ serving
//	connecting  ──failed──────────────▶ backing off (or stopped: refused on the first attempt)
//	serving     ──link silent, reload─▶ replacing
//	serving     ──upgrade wanted──────▶ upgrading
//	serving     ──session down────────▶ backing off
//	replacing   ──replacement ready───▶ serving (the old session retires)
//	replacing   ──replacement failed──▶ serving (or backing off, if the old one ended meanwhile)
//	upgrading   ──session down────────▶ connecting
//	backing off ──delay over, reload──▶ connecting
//	any         ──context done────────▶ stopped

// linkState is the state of a link to a relay.
type linkState int

// Link states.
const (
	linkConnecting linkState = iota // making a session
	linkServing                     // a session serves the tunnels
	linkReplacing                   // a session serves; a newer one is being made beside it
	linkUpgrading                   // the TCP session is closing, for one over QUIC
	linkBackingOff                  // no session: waiting before the next attempt
	linkStopped                     // the agent stopped
)

var linkStateNames = [...]string{"connecting", "serving", "replacing", "upgrading", "backing_off", "stopped"}

func (s linkState) String() string { return linkStateNames[s] }

// eventKind is what a link's event reports.
type eventKind int

// Events.
const (
	evSessionUp         eventKind = iota // a session was made (l)
	evConnectFailed                      // making a session failed (err)
	evSessionDown                        // a session stopped serving (l, end)
	evLinkSilent                         // l's relay has been silent for silent
	evReplacementReady                   // a session beside l was made (l, next)
	evReplacementFailed                  // making a session beside l failed (l, err)
	evUpgradeWanted                      // l (over TCP) may move to QUIC
	evReload                             // sessions made before generation gen are to be replaced
	evBackoffOver                        // the delay before the next attempt is over
	evRenewDue                           // the delay before trying a reload's session again is over
	evContextDone                        // the agent stops
)

// event is one report to the link's supervisor.
type event struct {
	kind   eventKind
	l      *link
	next   *link
	err    error
	end    sessionEnd
	gen    uint64
	silent time.Duration
}

// final reports whether the event is a worker's last word (see spawn).
func (k eventKind) final() bool {
	switch k {
	case evSessionUp, evConnectFailed, evSessionDown, evReplacementReady, evReplacementFailed:
		return true
	}
	return false
}

// replaceReason is why a link is replacing its session.
type replaceReason int

const (
	replaceSilent replaceReason = iota // the relay went silent
	replaceReload                      // a reload changed how to reach the relay
)

// relayLink is the agent's link to one relay. Today the agent has one,
// to the relay of its configuration; a reload that changes the relay's
// address makes the link replace its session with one to the new address.
type relayLink struct {
	a      *Agent
	log    *slog.Logger
	policy *relaydial.QUICPolicy // transport: auto
	events chan event            // from the link's workers and watchers
	reload chan uint64           // see renew
	board  sessionBoard

	// live is the registrar of the session serving now, for Reload and
	// port mapping checks (nil: none).
	liveMu sync.Mutex
	live   *registrar

	// The rest is run's alone.
	ctx      context.Context
	state    linkState
	err      error // what run returns
	pending  int   // workers whose final event is still to come
	failures int   // attempts at a session that failed in a row
	watchers sync.WaitGroup
	retries  retries
	// cur is the session serving (serving, replacing, upgrading), since
	// start; curEnd is its end, when it ended while replacing.
	cur       *link
	curEnd    *failure
	start     time.Time
	stopWatch context.CancelFunc // stops cur's watchers
	replacing replaceReason
	tried     bool // a session was tried beside cur
	// silentGaveUp: a session beside cur, silent, was refused for good.
	silentGaveUp bool
	// wantGen: sessions made with settings older than this generation
	// are replaced; gaveUpGen is the one a refusal gave up on, for cur.
	wantGen, gaveUpGen uint64
	renewAttempt       int
	renewRetry         *time.Timer // the next try of a reload's session
	backoff            *time.Timer // backing off: the next attempt
	// kick: a reload came while connecting; a failure retries at once.
	kick bool
}

// newRelayLink makes the link of a; policy remembers whether QUIC to its
// relay is worth trying.
func newRelayLink(a *Agent, policy *relaydial.QUICPolicy) *relayLink {
	return &relayLink{a: a, log: a.log, policy: policy, events: make(chan event), reload: make(chan uint64, 1), state: linkStopped}
}

// relay is the address of the link's relay.
func (s *relayLink) relay() string { return s.a.conf().cfg.Relay }

// renew asks for sessions made with settings older than gen to be
// replaced. It never blocks: a request waiting for the supervisor is
// merged with this one.
func (s *relayLink) renew(gen uint64) {
	for {
		select {
		case s.reload <- gen:
			return
		case old := <-s.reload:
			gen = max(gen, old)
		}
	}
}

// registrar returns the registrar of the session serving now (nil: none).
func (s *relayLink) registrar() *registrar {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	return s.live
}

// setLive makes r the live registrar; clearLive forgets it if it still is.
func (s *relayLink) setLive(r *registrar) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	s.live = r
}

func (s *relayLink) clearLive(r *registrar) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if s.live == r {
		s.live = nil
	}
}

// run keeps a session to the relay until ctx ends; it returns nil then,
// or the refusal of the very first attempt (see Agent.Run).
func (s *relayLink) run(ctx context.Context) error {
	s.ctx = ctx
	s.start = time.Now()
	s.connect("start")
	for s.state != linkStopped || s.pending > 0 {
		s.handle(s.next())
	}
	s.stopWatching()
	s.watchers.Wait()
	return s.err
}

// next waits for the next event. Once stopped, only the workers' last
// words are awaited.
func (s *relayLink) next() event {
	if s.state == linkStopped {
		return <-s.events
	}
	var backoff, renew <-chan time.Time
	if s.backoff != nil {
		backoff = s.backoff.C
	}
	if s.renewRetry != nil {
		renew = s.renewRetry.C
	}
	select {
	case ev := <-s.events:
		return ev
	case gen := <-s.reload:
		return event{kind: evReload, gen: gen}
	case <-backoff:
		return event{kind: evBackoffOver}
	case <-renew:
		return event{kind: evRenewDue}
	case <-s.ctx.Done():
		return event{kind: evContextDone}
	}
}

// handle makes the transition that ev calls for in the present state.
func (s *relayLink) handle(ev event) {
	if ev.kind.final() {
		s.pending--
	}
	if s.state != linkStopped && s.ctx.Err() != nil {
		s.stop() // before anything that came with it
	}
	switch ev.kind {
	case evSessionUp:
		s.sessionUp(ev.l)
	case evConnectFailed:
		s.connectFailed(ev.err)
	case evSessionDown:
		s.sessionDown(ev.l, ev.end)
	case evLinkSilent:
		s.linkSilent(ev.l, ev.silent)
	case evReplacementReady:
		s.replacementReady(ev.l, ev.next)
	case evReplacementFailed:
		s.replacementFailed(ev.l, ev.err)
	case evUpgradeWanted:
		s.upgradeWanted(ev.l)
	case evReload:
		s.reloaded(ev.gen)
	case evBackoffOver:
		s.backoff = nil
		s.connect("backoff_over")
	case evRenewDue:
		s.renewRetry = nil
		s.renewIfDue()
	case evContextDone:
	}
}

// enter moves the link to state to, and says so in one line: at level
// info, but for the rounds of connecting and backing off after the first
// failure in a row, which would fill the log while the relay is away.
func (s *relayLink) enter(to linkState, cause string, attrs ...any) {
	from := s.state
	s.state = to
	s.board.enter(to)
	level := slog.LevelInfo
	if s.failures > 1 && (from == linkBackingOff && to == linkConnecting || from == linkConnecting && to == linkBackingOff) {
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, "relay link",
		append([]any{"relay", s.relay(), "from", from.String(), "to", to.String(), "cause", cause}, attrs...)...)
}

// spawn runs a worker whose last word is a final event.
func (s *relayLink) spawn(f func()) {
	s.pending++
	go f()
}

// send passes a watcher's event on, unless ctx ends first.
func (s *relayLink) send(ctx context.Context, ev event) bool {
	select {
	case s.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// connect makes a new session.
func (s *relayLink) connect(cause string) {
	s.enter(linkConnecting, cause)
	s.board.connecting()
	s.cur, s.start = nil, time.Now()
	standby := s.retries.standby
	s.spawn(func() {
		l, err := s.establish(s.ctx, false, standby, nil)
		if err != nil {
			s.events <- event{kind: evConnectFailed, err: err}
			return
		}
		s.events <- event{kind: evSessionUp, l: l}
	})
}

func (s *relayLink) sessionUp(l *link) {
	if s.state == linkStopped {
		s.spawnServe(l) // it drains at once, telling the relay
		return
	}
	if s.retries.standby {
		s.retries.standby = false
		s.log.Info("the other agent with this agent's id has left; serving the tunnels again", "id", l.set.cfg.ID)
	}
	s.serveNow(l, "session_up")
}

func (s *relayLink) connectFailed(err error) {
	if s.state == linkStopped {
		return
	}
	s.failures++
	s.a.status.down(time.Now())
	delay, refused := s.retries.afterConnect(s.ctx, err, s.a.conf().cfg, s.log)
	if refused != nil {
		s.err = refused
		s.enter(linkStopped, "refused")
		return
	}
	s.backOff(delay, err, "connect_failed")
}

// serveNow makes l the session serving, and watches it.
func (s *relayLink) serveNow(l *link, cause string) {
	s.cur, s.curEnd, s.tried, s.silentGaveUp, s.failures = l, nil, false, false, 0
	s.gaveUpGen, s.renewAttempt, s.kick = 0, 0, false
	stopTimer(&s.renewRetry)
	s.enter(linkServing, cause, "transport", l.transport)
	s.spawnServe(l)
	s.watch(l)
	s.renewIfDue()
}

// spawnServe serves l until it ends.
func (s *relayLink) spawnServe(l *link) {
	s.spawn(func() {
		end := s.a.serve(s.ctx, s, l)
		close(l.served)
		s.events <- event{kind: evSessionDown, l: l, end: end}
	})
}

// watch starts l's watchers: for silence, and (auto over TCP) for QUIC.
func (s *relayLink) watch(l *link) {
	ctx, cancel := context.WithCancel(s.ctx)
	s.stopWatch = cancel
	s.watchers.Go(func() { s.watchSilence(ctx, l) })
	if l.set.cfg.Transport == config.TransportAuto && l.transport == config.TransportTCP {
		s.watchers.Go(func() {
			s.watchQUIC(ctx, l.sess, func() { s.send(ctx, event{kind: evUpgradeWanted, l: l}) })
		})
	}
}

func (s *relayLink) stopWatching() {
	if s.stopWatch != nil {
		s.stopWatch()
		s.stopWatch = nil
	}
}

func (s *relayLink) sessionDown(l *link, end sessionEnd) {
	upgrading := l == s.cur && s.state == linkUpgrading
	s.a.sessionDown(l, end, upgrading)
	if l != s.cur || s.state == linkStopped {
		return // a retired session, or the agent stopping
	}
	s.stopWatching()
	f := end.failure()
	switch s.state {
	case linkUpgrading:
		s.a.status.down(time.Now())
		s.retries.attempt = 0
		s.connect("upgrade")
	case linkReplacing:
		// A newer session is on its way: it is the next one, unless it
		// fails too. (The relay closes a session it retired as soon as
		// it carries no connection.)
		if !f.definitive && !f.replaced {
			s.log.Warn("session lost; reconnecting", "err", f.err, "new_session", "already being opened")
			f.logged = true
		}
		s.curEnd = f
	default:
		s.ended(l, f)
	}
}

// ended backs off after the end of l, the session serving, with no
// newer one to take over.
func (s *relayLink) ended(l *link, f *failure) {
	if s.tried && f.replaced {
		// The relay retired this session for a newer one of ours that
		// then failed: not another agent taking over.
		f.replaced, f.cut = false, true
	}
	if l.set.cfg.Transport == config.TransportAuto && l.transport == config.TransportQUIC {
		if failed, pause := s.policy.Ended(time.Since(s.start), time.Now()); failed {
			s.log.Warn("QUIC sessions keep ending within a minute; using TCP", "retry_quic_in", pause.Round(time.Second))
		}
	}
	s.a.status.down(time.Now())
	delay := s.retries.afterSession(f, time.Since(s.start), s.a.conf().cfg, s.log)
	s.backOff(delay, f, "session_down")
}

// backOff waits delay before the next attempt; err is why.
func (s *relayLink) backOff(delay time.Duration, err error, cause string) {
	s.retries.attempt++
	s.cur = nil
	if s.kick {
		// A reload came while connecting: try it at once.
		s.kick = false
		s.retries.attempt, s.retries.dialFail = 0, 0
		delay = 0
	}
	s.board.waiting(err, time.Now().Add(delay))
	s.enter(linkBackingOff, cause, "retry_in", delay.Round(time.Millisecond))
	s.backoff = time.NewTimer(delay)
}

func (s *relayLink) upgradeWanted(l *link) {
	if s.state != linkServing || l != s.cur {
		return
	}
	s.enter(linkUpgrading, "upgrade_wanted")
	l.sess.Close()
}

func (s *relayLink) reloaded(gen uint64) {
	s.wantGen = max(s.wantGen, gen)
	switch s.state {
	case linkServing:
		s.renewIfDue()
	case linkConnecting, linkUpgrading:
		s.kick = true
	case linkBackingOff:
		// Settings that make a new session changed (a new token, say):
		// try them at once.
		stopTimer(&s.backoff)
		s.retries.attempt, s.retries.dialFail = 0, 0
		s.connect("reload")
	}
}

// stop ends the link: the workers see ctx end, and run waits for them.
func (s *relayLink) stop() {
	stopTimer(&s.backoff)
	stopTimer(&s.renewRetry)
	s.stopWatching()
	s.enter(linkStopped, "context_done")
}

func stopTimer(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}

// dialer reaches the relay of set.
func (s *relayLink) dialer(set *settings) *relaydial.Dialer {
	return &relaydial.Dialer{Relay: set.cfg.Relay, TLS: set.tls, TCP: set.tcp, QUIC: set.quic,
		Transport: set.cfg.Transport, Policy: s.policy, Log: s.log}
}

// sessionDown logs the end of l's session; upgraded: the agent closed it
// to move to QUIC.
func (a *Agent) sessionDown(l *link, end sessionEnd, upgraded bool) {
	cause, words := end.describe(upgraded)
	a.logSessionDown(l, cause, words)
}
