// Package visitor is the laptop side of private tunnels: it logs in to
// the relay with a visitor key, keeps one session up (making it again when
// it ends), and carries the connections to its local listeners, one
// stream each, to private tunnels of home agents (docs/wire.md, "Private
// tunnels").
package visitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/tunnel"
)

// Software is sent to the relay in the hello; cmd/agent sets the version.
const Software = "homeport-visitor"

// Backoff, as for the home agent (see agent.Run).
const (
	backoffBase = 500 * time.Millisecond
	// dialBackoffBase and dialBackoffMax: a relay that cannot be reached,
	// or whose session was cut (a restart), is tried again within a
	// second.
	dialBackoffBase = 250 * time.Millisecond
	dialBackoffMax  = time.Second
	// rejectedBackoff is the delay after a definitive refusal once a
	// session has been up: retrying sooner would only hammer the relay.
	rejectedBackoff = 5 * time.Minute
	// stablePeriod: a session that lived this long resets the backoff.
	stablePeriod = 2 * time.Second
)

// ErrRejected wraps a definitive refusal on the first attempt: a wrong
// visitor key, a relay key that does not match the pin, a certificate not
// trusted, a relay that does not serve private tunnels.
var ErrRejected = errors.New("relay refused this visitor")

// ErrNoVisit is returned by Run when no visit can work: each tunnel is
// unknown or not allowed for this key.
var ErrNoVisit = errors.New("no tunnel can be visited")

// Visitor keeps a session to each of its relays and serves its visits.
type Visitor struct {
	cfg      config.Visitor
	log      *slog.Logger
	software string
	relays   []*relayConn // in the order connections try them
	// smallBuffers: QUIC's small UDP buffers are logged once.
	smallBuffers sync.Once
	live         liveSessions

	// UDPIdle ends a UDP flow without a datagram either way for this
	// long, and UDPMaxFlows caps one UDP visit's flows; New sets them to
	// UDPIdleTimeout and UDPMaxFlows, and tests may lower them before Run.
	UDPIdle     time.Duration
	UDPMaxFlows int

	// OnSession, when set, is called with the relay's address and the
	// transport of every session that comes up; tests use it.
	OnSession func(relay, transport string)
}

// Defaults of UDP visits.
const (
	UDPIdleTimeout = 60 * time.Second
	UDPMaxFlows    = 1024
)

// New checks cfg and returns a visitor. version is reported to the relay.
func New(cfg config.Visitor, version string, log *slog.Logger) (*Visitor, error) {
	var errs []error
	if len(cfg.Visits) == 0 {
		errs = append(errs, errors.New("visitor: no visits"))
	}
	for i, vis := range cfg.Visits {
		if vis.Protocol != "tcp" && vis.Protocol != "udp" {
			errs = append(errs, fmt.Errorf("visitor: visit %d (tunnel %q): protocol %q: want tcp or udp", i+1, vis.Tunnel, vis.Protocol))
		}
	}
	if len(cfg.Relays) == 0 {
		cfg.Relays = []config.RelayEndpoint{{Address: cfg.Relay, Fingerprint: cfg.Fingerprint, CAFile: cfg.CAFile,
			ServerName: cfg.ServerName, Transport: cfg.Transport, Secret: cfg.Key}}
	}
	for i, r := range cfg.Relays {
		if r.Secret == "" {
			errs = append(errs, fmt.Errorf("visitor: relay %s: key: empty", r.Address))
		}
		switch r.Transport {
		case "":
			cfg.Relays[i].Transport = config.TransportAuto
		case config.TransportAuto, config.TransportTCP, config.TransportQUIC:
		default:
			errs = append(errs, fmt.Errorf("visitor: relay %s: transport %q: want auto, tcp or quic", r.Address, r.Transport))
		}
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = 30 * time.Second
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	v := &Visitor{cfg: cfg, log: log, software: Software + "/" + version, UDPIdle: UDPIdleTimeout, UDPMaxFlows: UDPMaxFlows}
	v.live.init(len(cfg.Relays))
	for i, r := range cfg.Relays {
		rc := &relayConn{v: v, index: i, ep: r, log: log.With("relay", r.Address)}
		tlsConf, err := relaydial.TLSConfig(r.Address, r.Fingerprint, r.CAFile, r.ServerName)
		if err != nil {
			errs = append(errs, fmt.Errorf("visitor: %w", err))
			continue
		}
		tcp, quic := relaydial.Transports(r.Transport, cfg.Session, cfg.HandshakeTimeout, func(rcv, snd int) {
			v.smallBuffers.Do(func() { tunnel.LogSmallBuffers(log, rcv, snd) })
		})
		rc.dialer = &relaydial.Dialer{Relay: r.Address, TLS: tlsConf, TCP: tcp, QUIC: quic,
			Transport: r.Transport, Policy: &rc.policy, Log: log}
		v.relays = append(v.relays, rc)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return v, nil
}

// Run opens the visits' local listeners, keeps a session to each relay
// and carries the listeners' connections until ctx ends; it returns nil
// then. It returns an error at once when a listener cannot be opened, when
// every relay refused the very first login definitively (see ErrRejected),
// or when no visit can work through any relay (ErrNoVisit).
func (v *Visitor) Run(ctx context.Context) (err error) {
	visits := make([]*visit, 0, len(v.cfg.Visits))
	defer func() {
		for _, vis := range visits {
			vis.close()
		}
	}()
	for _, c := range v.cfg.Visits {
		vis, err := v.open(c)
		if err != nil {
			return err
		}
		visits = append(visits, vis)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		why      []error // of visits that cannot work
		dead     int     // visits that cannot work
		refused  []error // of relays that refused the first login
		rejected int
	)
	// A visit that cannot work through any relay ends; when none is left,
	// Run ends.
	gone := func(vis *visit, err error) {
		vis.close()
		mu.Lock()
		defer mu.Unlock()
		why = append(why, err)
		if dead++; dead == len(visits) {
			cancel(fmt.Errorf("%w: %w", ErrNoVisit, errors.Join(why...)))
		}
	}
	for _, vis := range visits {
		wg.Go(func() { v.serve(ctx, vis, &wg) })
	}
	for _, rc := range v.relays {
		rctx, rcancel := context.WithCancelCause(ctx)
		for _, vis := range visits {
			wg.Go(func() {
				err := v.watch(rctx, vis, rc)
				if err == nil && ctx.Err() == nil {
					err = context.Cause(rctx) // the relay refused the visitor
				}
				if err != nil && vis.cannot(err) == len(v.relays) {
					gone(vis, vis.reasons())
				}
			})
		}
		wg.Go(func() {
			err := rc.keep(rctx)
			if err == nil {
				return
			}
			// Run ends with the refusals before the visits hear that
			// this relay is gone.
			mu.Lock()
			refused = append(refused, err)
			if rejected++; rejected == len(v.relays) {
				cancel(fmt.Errorf("%w: %w", ErrRejected, errors.Join(refused...)))
			} else {
				rc.log.Error("relay refused this visitor; the others go on", "err", err)
			}
			mu.Unlock()
			rcancel(err)
		})
		defer rcancel(nil)
	}
	v.log.Info("visitor started", "relays", v.relayNames(), "id", v.cfg.ID, "visits", len(visits))
	<-ctx.Done()
	for _, vis := range visits {
		vis.close()
	}
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrNoVisit) || errors.Is(cause, ErrRejected) {
		err = cause
	}
	v.log.Info("visitor stopped")
	return err
}

// relayNames lists the relays' addresses, for the log.
func (v *Visitor) relayNames() []string {
	out := make([]string, len(v.relays))
	for i, rc := range v.relays {
		out[i] = rc.ep.Address
	}
	return out
}

// open opens a visit's local listener.
func (v *Visitor) open(c config.Visit) (*visit, error) {
	vis := &visit{cfg: c, proto: tunnel.ProtoTCP, log: v.log.With("tunnel", c.Tunnel), recheck: make([]chan struct{}, len(v.relays))}
	for i := range vis.recheck {
		vis.recheck[i] = make(chan struct{}, 1)
	}
	var err error
	if c.Protocol == "udp" {
		vis.proto = tunnel.ProtoUDP
		var addr *net.UDPAddr
		if addr, err = net.ResolveUDPAddr("udp", c.Listen); err == nil {
			vis.pc, err = net.ListenUDP("udp", addr)
		}
		if err == nil {
			vis.budget, err = tunnel.NewUDPBudget(tunnel.FlowQueueBudget, tunnel.TunnelQueueBudget, vis.log,
				"UDP datagrams to the relay dropped: it takes them slower than they come")
			if err != nil {
				vis.pc.Close()
			}
		}
	} else {
		vis.ln, err = net.Listen("tcp", c.Listen)
	}
	if err != nil {
		return nil, fmt.Errorf("tunnel %q: listen %s on %s: %w", c.Tunnel, c.Protocol, c.Listen, err)
	}
	return vis, nil
}

// visit is one visit's local listener and state.
type visit struct {
	cfg    config.Visit
	proto  tunnel.Protocol
	log    *slog.Logger
	ln     net.Listener      // TCP
	pc     *net.UDPConn      // UDP
	budget *tunnel.UDPBudget // UDP: datagrams queued toward the relay
	// recheck asks the watch of a relay (by index) to check the tunnel
	// again: a connection found it offline there.
	recheck   []chan struct{}
	closeOnce sync.Once

	mu   sync.Mutex
	nots []error // why relays cannot carry the visit, one per relay
}

// cannot notes that a relay cannot carry the visit, and returns how many
// relays cannot.
func (vis *visit) cannot(err error) int {
	vis.mu.Lock()
	defer vis.mu.Unlock()
	vis.nots = append(vis.nots, err)
	return len(vis.nots)
}

// reasons says why no relay can carry the visit.
func (vis *visit) reasons() error {
	vis.mu.Lock()
	defer vis.mu.Unlock()
	return errors.Join(vis.nots...)
}

func (vis *visit) close() {
	vis.closeOnce.Do(func() {
		if vis.ln != nil {
			vis.ln.Close()
		}
		if vis.pc != nil {
			vis.pc.Close()
		}
		if vis.budget != nil {
			vis.budget.Close()
		}
	})
}

// serve carries the visit's local connections (TCP) or flows (UDP) until
// its listener is closed; their goroutines are counted in wg.
func (v *Visitor) serve(ctx context.Context, vis *visit, wg *sync.WaitGroup) {
	if vis.pc != nil {
		v.serveUDP(ctx, vis, wg)
		return
	}
	v.serveTCP(ctx, vis, wg)
}

// liveSessions holds each relay's session while it is up.
type liveSessions struct {
	mu   sync.Mutex
	sess []tunnel.Session // by relay index; nil while down
	// changed is closed, and replaced, when a session comes or goes.
	changed chan struct{}
}

func (l *liveSessions) init(n int) {
	l.sess = make([]tunnel.Session, n)
	l.changed = make(chan struct{})
}

func (l *liveSessions) set(i int, s tunnel.Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sess[i] = s
	close(l.changed)
	l.changed = make(chan struct{})
}

// upSession is a relay's session that is up.
type upSession struct {
	relay int // index in Visitor.relays
	sess  tunnel.Session
}

// up returns the sessions that are up, in the relays' order, except that
// sessions whose relay has been silent for a while come last: their link
// may be dead and not yet known to be. changed is closed when that
// changes.
func (l *liveSessions) up() (up []upSession, changed <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var quiet []upSession
	for i, s := range l.sess {
		if s == nil || isDone(s.Done()) {
			continue
		}
		if s.SilentFor() > suspectSilence {
			quiet = append(quiet, upSession{i, s})
			continue
		}
		up = append(up, upSession{i, s})
	}
	return append(up, quiet...), l.changed
}

// suspectSilence: a client session hears from its relay at least every
// second while the link works; one silent for longer is tried last.
const suspectSilence = 2 * time.Second

// sessions waits until a session to some relay is up, or ctx ends, and
// returns the sessions up (see liveSessions.up).
func (v *Visitor) sessions(ctx context.Context) ([]upSession, error) {
	for {
		up, changed := v.live.up()
		if len(up) > 0 {
			return up, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// session waits for relay i's session until ctx ends.
func (v *Visitor) session(ctx context.Context, i int) (tunnel.Session, error) {
	for {
		v.live.mu.Lock()
		s, changed := v.live.sess[i], v.live.changed
		v.live.mu.Unlock()
		if s != nil && !isDone(s.Done()) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		case <-doneOf(s):
		}
	}
}

func doneOf(s tunnel.Session) <-chan struct{} {
	if s == nil {
		return nil
	}
	return s.Done()
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// relayConn is the visitor's link to one relay.
type relayConn struct {
	v      *Visitor
	index  int // in Visitor.relays
	ep     config.RelayEndpoint
	log    *slog.Logger // with the relay's address
	dialer *relaydial.Dialer
	policy relaydial.QUICPolicy
}

// keep keeps a session to the relay until ctx ends (nil), or until the
// first login is refused definitively.
func (rc *relayConn) keep(ctx context.Context) error {
	v := rc.v
	var (
		attempt  int
		everUp   bool
		dialFail int
		refused  tunnel.RejectError
	)
	for {
		start := time.Now()
		sess, transport, f := rc.establish(ctx)
		if ctx.Err() != nil {
			if sess != nil {
				sess.Close()
			}
			return nil
		}
		var delay time.Duration
		var re *tunnel.RejectError
		switch {
		case f == nil:
			everUp, dialFail = true, 0
			v.live.set(rc.index, sess)
			rc.log.Info("connected to relay", "transport", transport, "remote", sess.RemoteAddr().String())
			if v.OnSession != nil {
				v.OnSession(rc.ep.Address, transport)
			}
			select {
			case <-ctx.Done():
			case <-sess.Done():
			}
			v.live.set(rc.index, nil)
			sess.Close()
			if ctx.Err() != nil {
				rc.log.Info("relay session down", tunnel.EndLog("shutdown", "the visitor is stopping", time.Since(start), sess.EndCause(), 0)...)
				return nil
			}
			lived := time.Since(start)
			rc.log.Info("relay session down", tunnel.EndLog("", "", lived, sess.EndCause(), 0)...)
			if rc.ep.Transport == config.TransportAuto && transport == config.TransportQUIC {
				if failed, pause := rc.policy.Ended(lived, time.Now()); failed {
					rc.log.Warn("QUIC sessions keep ending within a minute; using TCP", "retry_quic_in", pause.Round(time.Second))
				}
			}
			// A session cut (a relay restart, a dead link) is made again
			// within a second; one that keeps ending young backs off.
			if lived >= stablePeriod {
				attempt = 0
				delay = relaydial.Jitter(dialBackoffBase, min(dialBackoffMax, v.cfg.ReconnectMax), attempt)
			} else {
				delay = relaydial.Jitter(backoffBase, v.cfg.ReconnectMax, attempt)
			}
			rc.log.Warn("session lost; reconnecting", "retry_in", delay.Round(time.Millisecond))
		case f.definitive:
			if !everUp {
				return fmt.Errorf("%w: %w", ErrRejected, f.err)
			}
			delay = rejectedBackoff
			rc.log.Error("relay refused this visitor", "err", f.err, "retry_in", delay)
		case f.refused && errors.As(f.err, &re):
			delay = relaydial.Jitter(time.Second, v.cfg.ReconnectMax, attempt)
			level := slog.LevelError
			if *re == refused {
				level = slog.LevelDebug
			}
			refused = *re
			rc.log.Log(ctx, level, "relay refused this visitor for now; retrying", "err", f.err, "retry_in", delay.Round(time.Millisecond))
		case f.dial:
			delay = relaydial.Jitter(dialBackoffBase, min(dialBackoffMax, v.cfg.ReconnectMax), attempt)
			if dialFail%30 == 0 { // do not fill the log while the relay is away
				rc.log.Warn("relay unreachable; retrying", "err", f.err, "retry_in", delay.Round(time.Millisecond))
			}
			dialFail++
		default:
			delay = relaydial.Jitter(backoffBase, v.cfg.ReconnectMax, attempt)
			rc.log.Warn("connecting to relay failed; retrying", "err", f.err, "retry_in", delay.Round(time.Millisecond))
		}
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// failure is why one login attempt failed.
type failure struct {
	dial       bool // the relay was not reached (or was busy)
	definitive bool // retrying cannot help without a change of config
	refused    bool // a Reject that may pass
	err        error
}

// establish connects to the relay and logs in as a visitor.
func (rc *relayConn) establish(ctx context.Context) (tunnel.Session, string, *failure) {
	v, relay := rc.v, rc.ep.Address
	dctx, cancel := context.WithTimeout(ctx, v.cfg.HandshakeTimeout)
	defer cancel()
	c, transport, de := rc.dialer.Dial(dctx)
	if de != nil {
		return nil, transport, &failure{dial: de.Stage == relaydial.StageDial, definitive: de.Definitive, err: de.Err}
	}
	// A stop during the login ends it at once, not at the link's deadline.
	stop := context.AfterFunc(dctx, func() { c.Close() })
	welcome, err := tunnel.Authenticate(c, []byte(rc.ep.Secret), v.cfg.ID, v.software, tunnel.FlagVisitor|tunnel.FlagFeatures|tunnel.FlagWaits)
	stopped := !stop()
	if err == nil && stopped {
		err = dctx.Err()
	}
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, transport, &failure{err: ctx.Err()}
		}
		var re *tunnel.RejectError
		switch {
		case errors.Is(err, tunnel.ErrAuthFailed):
			return nil, transport, &failure{definitive: true, err: fmt.Errorf(
				"relay %s: %w: the visitor key is wrong; copy the one the relay printed with its visit command (its data directory's visitor.key), or the secret of its entry in the relay's visitor_keys; a token is not a visitor key", relay, err)}
		case errors.Is(err, tunnel.ErrBusy):
			return nil, transport, &failure{dial: true, err: fmt.Errorf("relay %s: %w", relay, err)}
		case errors.As(err, &re) && (re.Code == tunnel.CodeQuota || re.Code == tunnel.CodeIDInUse):
			return nil, transport, &failure{refused: true, err: fmt.Errorf("relay %s: %w", relay, err)}
		case errors.As(err, &re) || errors.Is(err, tunnel.ErrVersion):
			return nil, transport, &failure{definitive: true, err: fmt.Errorf("relay %s: %w", relay, err)}
		}
		return nil, transport, &failure{err: fmt.Errorf("relay %s: authenticate: %w", relay, err)}
	}
	if welcome.Features&tunnel.FeaturePrivate == 0 {
		c.Close()
		return nil, transport, &failure{definitive: true, err: fmt.Errorf(
			"relay %s does not serve private tunnels: it is older than this visitor; update the relay", relay)}
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := c.Mux(relaydial.SessionConfig(v.cfg.Session, rc.log))
	if err != nil {
		c.Close()
		return nil, transport, &failure{err: fmt.Errorf("relay %s: %w", relay, err)}
	}
	return sess, transport, nil
}
