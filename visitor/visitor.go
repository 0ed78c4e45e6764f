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
	"sync/atomic"
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

// Visitor keeps a session to the relay and serves its visits.
type Visitor struct {
	cfg      config.Visitor
	log      *slog.Logger
	software string
	dialer   *relaydial.Dialer
	policy   relaydial.QUICPolicy
	// smallBuffers: QUIC's small UDP buffers are logged once.
	smallBuffers sync.Once
	box          sessionBox

	// UDPIdle ends a UDP flow without a datagram either way for this
	// long, and UDPMaxFlows caps one UDP visit's flows; New sets them to
	// UDPIdleTimeout and UDPMaxFlows, and tests may lower them before Run.
	UDPIdle     time.Duration
	UDPMaxFlows int

	// OnSession, when set, is called with the transport of every session
	// that comes up; tests use it.
	OnSession func(transport string)
}

// Defaults of UDP visits.
const (
	UDPIdleTimeout = 60 * time.Second
	UDPMaxFlows    = 1024
)

// New checks cfg and returns a visitor. version is reported to the relay.
func New(cfg config.Visitor, version string, log *slog.Logger) (*Visitor, error) {
	var errs []error
	if cfg.Key == "" {
		errs = append(errs, errors.New("visitor: key: empty"))
	}
	if len(cfg.Visits) == 0 {
		errs = append(errs, errors.New("visitor: no visits"))
	}
	for i, vis := range cfg.Visits {
		if vis.Protocol != "tcp" && vis.Protocol != "udp" {
			errs = append(errs, fmt.Errorf("visitor: visit %d (tunnel %q): protocol %q: want tcp or udp", i+1, vis.Tunnel, vis.Protocol))
		}
	}
	tlsConf, err := relaydial.TLSConfig(cfg.Relay, cfg.Fingerprint, cfg.CAFile, cfg.ServerName)
	if err != nil {
		errs = append(errs, fmt.Errorf("visitor: %w", err))
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = 30 * time.Second
	}
	switch cfg.Transport {
	case "":
		cfg.Transport = config.TransportAuto
	case config.TransportAuto, config.TransportTCP, config.TransportQUIC:
	default:
		errs = append(errs, fmt.Errorf("visitor: transport %q: want auto, tcp or quic", cfg.Transport))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	v := &Visitor{cfg: cfg, log: log, software: Software + "/" + version, UDPIdle: UDPIdleTimeout, UDPMaxFlows: UDPMaxFlows}
	v.box.changed = make(chan struct{})
	tcp, quic := relaydial.Transports(cfg.Transport, cfg.Session, cfg.HandshakeTimeout, func(rcv, snd int) {
		v.smallBuffers.Do(func() { tunnel.LogSmallBuffers(log, rcv, snd) })
	})
	v.dialer = &relaydial.Dialer{Relay: cfg.Relay, TLS: tlsConf, TCP: tcp, QUIC: quic,
		Transport: cfg.Transport, Policy: &v.policy, Log: log}
	return v, nil
}

// Run opens the visits' local listeners, keeps a session to the relay and
// carries the listeners' connections until ctx ends; it returns nil then.
// It returns an error at once when a listener cannot be opened, when the
// very first login is refused definitively (see ErrRejected), or when no
// visit can work (ErrNoVisit).
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
		wg   sync.WaitGroup
		dead atomic.Int32
		mu   sync.Mutex
		why  []error
	)
	// A visit that cannot work ends; when none is left, Run ends.
	gone := func(err error) {
		mu.Lock()
		why = append(why, err)
		all := errors.Join(why...)
		mu.Unlock()
		if int(dead.Add(1)) == len(visits) {
			cancel(fmt.Errorf("%w: %w", ErrNoVisit, all))
		}
	}
	for _, vis := range visits {
		wg.Go(func() { v.serve(ctx, vis, &wg) })
		wg.Go(func() {
			if err := v.watch(ctx, vis); err != nil {
				vis.close()
				gone(err)
			}
		})
	}
	v.log.Info("visitor started", "relay", v.cfg.Relay, "id", v.cfg.ID, "visits", len(visits))
	err = v.keep(ctx)
	cancel(err)
	for _, vis := range visits {
		vis.close()
	}
	wg.Wait()
	if err == nil {
		if cause := context.Cause(ctx); errors.Is(cause, ErrNoVisit) {
			err = cause
		}
	}
	v.log.Info("visitor stopped")
	return err
}

// open opens a visit's local listener.
func (v *Visitor) open(c config.Visit) (*visit, error) {
	vis := &visit{cfg: c, proto: tunnel.ProtoTCP, log: v.log.With("tunnel", c.Tunnel), recheck: make(chan struct{}, 1)}
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
	// recheck asks watch to check the tunnel again (a connection found it
	// offline).
	recheck   chan struct{}
	closeOnce sync.Once
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

// sessionBox holds the session up now, if any.
type sessionBox struct {
	mu   sync.Mutex
	sess tunnel.Session
	// changed is closed, and replaced, when sess changes.
	changed chan struct{}
}

func (b *sessionBox) set(s tunnel.Session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sess = s
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *sessionBox) get() (tunnel.Session, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sess, b.changed
}

// session waits for a live session until ctx ends.
func (v *Visitor) session(ctx context.Context) (tunnel.Session, error) {
	for {
		s, changed := v.box.get()
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

// keep keeps a session to the relay until ctx ends (nil), or until the
// first login is refused definitively.
func (v *Visitor) keep(ctx context.Context) error {
	var (
		attempt  int
		everUp   bool
		dialFail int
		refused  tunnel.RejectError
	)
	for {
		start := time.Now()
		sess, transport, f := v.establish(ctx)
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
			v.box.set(sess)
			v.log.Info("connected to relay", "relay", v.cfg.Relay, "transport", transport, "remote", sess.RemoteAddr().String())
			if v.OnSession != nil {
				v.OnSession(transport)
			}
			select {
			case <-ctx.Done():
			case <-sess.Done():
			}
			v.box.set(nil)
			sess.Close()
			if ctx.Err() != nil {
				v.log.Info("relay session down", tunnel.EndLog("shutdown", "the visitor is stopping", time.Since(start), sess.EndCause(), 0)...)
				return nil
			}
			lived := time.Since(start)
			v.log.Info("relay session down", tunnel.EndLog("", "", lived, sess.EndCause(), 0)...)
			if v.cfg.Transport == config.TransportAuto && transport == config.TransportQUIC {
				if failed, pause := v.policy.Ended(lived, time.Now()); failed {
					v.log.Warn("QUIC sessions keep ending within a minute; using TCP", "retry_quic_in", pause.Round(time.Second))
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
			v.log.Warn("session lost; reconnecting", "relay", v.cfg.Relay, "retry_in", delay.Round(time.Millisecond))
		case f.definitive:
			if !everUp {
				return fmt.Errorf("%w: %w", ErrRejected, f.err)
			}
			delay = rejectedBackoff
			v.log.Error("relay refused this visitor", "err", f.err, "retry_in", delay)
		case f.refused && errors.As(f.err, &re):
			delay = relaydial.Jitter(time.Second, v.cfg.ReconnectMax, attempt)
			level := slog.LevelError
			if *re == refused {
				level = slog.LevelDebug
			}
			refused = *re
			v.log.Log(ctx, level, "relay refused this visitor for now; retrying", "err", f.err, "retry_in", delay.Round(time.Millisecond))
		case f.dial:
			delay = relaydial.Jitter(dialBackoffBase, min(dialBackoffMax, v.cfg.ReconnectMax), attempt)
			if dialFail%30 == 0 { // do not fill the log while the relay is away
				v.log.Warn("relay unreachable; retrying", "relay", v.cfg.Relay, "err", f.err, "retry_in", delay.Round(time.Millisecond))
			}
			dialFail++
		default:
			delay = relaydial.Jitter(backoffBase, v.cfg.ReconnectMax, attempt)
			v.log.Warn("connecting to relay failed; retrying", "relay", v.cfg.Relay, "err", f.err, "retry_in", delay.Round(time.Millisecond))
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
func (v *Visitor) establish(ctx context.Context) (tunnel.Session, string, *failure) {
	relay := v.cfg.Relay
	dctx, cancel := context.WithTimeout(ctx, v.cfg.HandshakeTimeout)
	defer cancel()
	c, transport, de := v.dialer.Dial(dctx)
	if de != nil {
		return nil, transport, &failure{dial: de.Stage == relaydial.StageDial, definitive: de.Definitive, err: de.Err}
	}
	// A stop during the login ends it at once, not at the link's deadline.
	stop := context.AfterFunc(dctx, func() { c.Close() })
	welcome, err := tunnel.Authenticate(c, []byte(v.cfg.Key), v.cfg.ID, v.software, tunnel.FlagVisitor|tunnel.FlagFeatures|tunnel.FlagWaits)
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
	sess, err := c.Mux(relaydial.SessionConfig(v.cfg.Session, v.log.With("relay", relay)))
	if err != nil {
		c.Close()
		return nil, transport, &failure{err: fmt.Errorf("relay %s: %w", relay, err)}
	}
	return sess, transport, nil
}
