// Package relaydial reaches a relay: it picks the transport (QUIC, TLS
// over TCP, or QUIC falling back to TCP), dials, and runs the TLS
// handshake that verifies the relay. The home agent and the visitor both
// log in to the relay this way; what follows the handshake is theirs.
package relaydial

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// Transport choice with transport: auto. QUIC is tried first; when it
// fails for reasons of the network (no answer over UDP: a firewall, a
// relay without QUIC), the client connects over TCP at once and tries QUIC
// again later, with a growing pause so that a network that blocks UDP
// costs one short probe now and then, not a slow start every time.
//
// Two kinds of flapping are avoided: a QUIC that fails is not retried for
// QUICRetryMin (doubling to QUICRetryMax), and QUIC sessions that keep
// dying young count as a QUIC failure, so the client settles on TCP.
const (
	// QUICAttemptTimeout bounds a QUIC attempt in auto mode: how long a
	// blocked UDP path delays the fallback to TCP.
	QUICAttemptTimeout = 3 * time.Second
	QUICRetryMin       = time.Minute
	QUICRetryMax       = 30 * time.Minute
	// QUICYoung: a QUIC session that ends sooner than this is suspect;
	// QUICYoungLimit of them in a row count as a QUIC failure.
	QUICYoung      = time.Minute
	QUICYoungLimit = 3
)

// QUICPolicy remembers, in auto mode, whether QUIC is worth trying. The
// zero value tries QUIC.
type QUICPolicy struct {
	mu      sync.Mutex
	retryAt time.Time // QUIC is not tried before this
	pause   time.Duration
	young   int // QUIC sessions in a row that ended young
}

// Usable reports whether the next attempt should try QUIC.
func (p *QUICPolicy) Usable(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !now.Before(p.retryAt)
}

// Failed records a QUIC failure and returns the pause before QUIC is
// tried again.
func (p *QUICPolicy) Failed(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pause = min(max(2*p.pause, QUICRetryMin), QUICRetryMax)
	// Up to a quarter less, so that many clients do not probe in step.
	d := p.pause - rand.N(p.pause/4)
	p.retryAt = now.Add(d)
	p.young = 0
	return d
}

// Worked records a QUIC handshake that succeeded.
func (p *QUICPolicy) Worked() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retryAt = time.Time{}
}

// Ended records the end of a QUIC session that lasted d, and reports
// whether QUIC is now considered failed.
func (p *QUICPolicy) Ended(d time.Duration, now time.Time) (failed bool, pause time.Duration) {
	p.mu.Lock()
	if d >= QUICYoung {
		p.young, p.pause = 0, 0
		p.mu.Unlock()
		return false, 0
	}
	p.young++
	n := p.young
	p.mu.Unlock()
	if n < QUICYoungLimit {
		return false, 0
	}
	return true, p.Failed(now)
}

// RetryIn is the time left before QUIC is tried again.
func (p *QUICPolicy) RetryIn(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.retryAt.Sub(now), 0)
}

// Jitter is exponential backoff with full jitter: uniform in
// [0, min(max, base*2^attempt)], never below a tenth of base.
func Jitter(base, max time.Duration, attempt int) time.Duration {
	d := base << min(attempt, 16)
	if d <= 0 || d > max {
		d = max
	}
	return base/10 + rand.N(d)
}

// TLSConfig is the TLS configuration that verifies the relay at relay
// (HOST:PORT): by the fingerprint of its key when fingerprint is set, else
// by the CA certificates in the PEM file caFile, for serverName (default:
// the relay's host).
func TLSConfig(relay, fingerprint, caFile, serverName string) (*tls.Config, error) {
	switch {
	case fingerprint != "":
		return tunnel.PinnedTLSConfig(fingerprint)
	case caFile != "":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", caFile)
		}
		name := serverName
		if name == "" {
			host, _, err := net.SplitHostPort(relay)
			if err != nil {
				return nil, fmt.Errorf("relay %q: %w", relay, err)
			}
			name = host
		}
		return tunnel.CATLSConfig(pool, name), nil
	}
	return nil, errors.New("neither fingerprint nor ca_file: the relay cannot be verified")
}

// Transports returns the TCP and QUIC transports for a client whose
// transport setting is transport, with its session settings and handshake
// timeout. onSmallBuffers (nil: nothing) hears of UDP buffers the system
// kept smaller than QUIC asked for.
func Transports(transport string, sess config.Session, handshake time.Duration, onSmallBuffers func(rcv, snd int)) (tcp, quic tunnel.Transport) {
	if transport == config.TransportAuto {
		handshake = min(handshake, QUICAttemptTimeout)
	}
	return tunnel.TCPTransport{}, tunnel.QUICTransport{
		OnSmallBuffers:   onSmallBuffers,
		Session:          SessionConfig(sess, nil),
		HandshakeTimeout: handshake,
	}
}

// SessionConfig is the multiplexer configuration of the session settings.
func SessionConfig(s config.Session, log *slog.Logger) tunnel.SessionConfig {
	return tunnel.SessionConfig{
		KeepAlive:        s.KeepAlive,
		KeepAliveTimeout: s.KeepAliveTimeout,
		StreamWindow:     s.StreamWindow,
		Log:              log,
	}
}

// Stage says how far an attempt to reach the relay got.
type Stage int

const (
	StageDial  Stage = iota // TCP connect, or a QUIC that found no relay
	StageSetup              // TLS
)

// Error is why reaching the relay failed.
type Error struct {
	Stage Stage
	// Definitive: retrying cannot help without a change of configuration
	// (the relay's key does not match the pin; its certificate is not
	// trusted).
	Definitive bool
	Err        error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Dialer reaches one relay.
type Dialer struct {
	Relay     string      // HOST:PORT
	TLS       *tls.Config // verifies the relay
	TCP, QUIC tunnel.Transport
	// Transport is config.TransportAuto, TransportTCP or TransportQUIC.
	Transport string
	// Policy remembers QUIC's failures in auto mode; it must outlive one
	// Dial.
	Policy *QUICPolicy
	Log    *slog.Logger
}

// Dial reaches the relay over the transport the settings and the QUIC
// policy choose, falling back from QUIC to TCP in auto mode, and runs the
// TLS handshake; ctx bounds it all. It returns the transport used.
func (d *Dialer) Dial(ctx context.Context) (tunnel.Conn, string, *Error) {
	auto := d.Transport == config.TransportAuto
	name := config.TransportTCP
	if d.Transport == config.TransportQUIC || auto && d.Policy.Usable(time.Now()) {
		name = config.TransportQUIC
	}
	var c tunnel.Conn
	var f *Error
	if auto && name == config.TransportQUIC {
		// All QUIC attempts together get QUICAttemptTimeout, so that a
		// blocked UDP path delays TCP by no more than that.
		qctx, cancel := context.WithTimeout(ctx, QUICAttemptTimeout)
		c, f = d.Connect(qctx, name)
		cancel()
	} else {
		c, f = d.Connect(ctx, name)
	}
	if f != nil && auto && name == config.TransportQUIC && !f.Definitive && ctx.Err() == nil {
		pause := d.Policy.Failed(time.Now())
		d.Log.Warn("QUIC to the relay failed; using TCP", "relay", d.Relay, "err", f.Err, "retry_quic_in", pause.Round(time.Second))
		name = config.TransportTCP
		c, f = d.Connect(ctx, name)
	}
	if f != nil {
		return nil, name, f
	}
	if name == config.TransportQUIC && auto {
		d.Policy.Worked()
	}
	return c, name, nil
}

// ProbeQUIC checks that the relay answers over QUIC: a QUIC and TLS
// handshake (which verifies the relay), nothing more.
func (d *Dialer) ProbeQUIC(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, QUICAttemptTimeout)
	defer cancel()
	c, err := d.QUIC.Dial(ctx, d.Relay, d.TLS)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Handshake(ctx)
}

// A connection attempt to the relay that has no answer after redialEvery
// gets a fresh one beside it, up to maxAttempts at a time: a TCP SYN or a
// QUIC Initial lost while the link was down is sent again only after
// pauses that double (1, 2, 4 s…), so a link that comes back late in an
// attempt would otherwise wait seconds for its next retransmission.
const (
	redialEvery = time.Second
	maxAttempts = 4
)

// Connect runs connection attempts over the named transport (see
// redialEvery) until one succeeds, one fails definitively, or all have
// failed; a late success is closed.
func (d *Dialer) Connect(ctx context.Context, name string) (tunnel.Conn, *Error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c tunnel.Conn
		f *Error
	}
	results := make(chan result, maxAttempts)
	pending := 0
	attempt := func() {
		pending++
		go func() {
			c, f := d.connectOnce(ctx, name)
			results <- result{c, f}
		}()
	}
	attempt()
	tick := time.NewTicker(redialEvery)
	defer tick.Stop()
	var (
		won  tunnel.Conn
		last *Error
	)
	for pending > 0 && won == nil && (last == nil || !last.Definitive) {
		select {
		case r := <-results:
			pending--
			won, last = r.c, cmp.Or(r.f, last)
		case <-tick.C:
			if pending < maxAttempts && ctx.Err() == nil {
				attempt()
			}
		}
	}
	cancel()
	for ; pending > 0; pending-- {
		if r := <-results; r.c != nil {
			r.c.Close()
		}
	}
	if won != nil {
		return won, nil
	}
	return nil, last
}

// connectOnce dials the relay over the named transport and runs the TLS
// handshake, which verifies the relay.
func (d *Dialer) connectOnce(ctx context.Context, name string) (tunnel.Conn, *Error) {
	tr := d.TCP
	if name == config.TransportQUIC {
		tr = d.QUIC
	}
	c, err := tr.Dial(ctx, d.Relay, d.TLS)
	if err != nil {
		return nil, &Error{Stage: StageDial, Err: fmt.Errorf("dial relay %s (%s): %w", d.Relay, name, err)}
	}
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if err := c.Handshake(ctx); err != nil {
		c.Close()
		if errors.Is(err, tunnel.ErrFingerprintMismatch) {
			return nil, &Error{Stage: StageSetup, Definitive: true, Err: fmt.Errorf(
				"relay %s: %w. If the relay's key was regenerated, copy the new fingerprint from the relay's start-up output; otherwise something is intercepting the connection", d.Relay, err)}
		}
		if errors.Is(err, tunnel.ErrBusy) {
			// Refused at once, as a closed port would be: try again soon.
			return nil, &Error{Stage: StageDial, Err: fmt.Errorf("relay %s (%s): %w", d.Relay, name, err)}
		}
		var ue x509.UnknownAuthorityError
		var he x509.HostnameError
		if errors.As(err, &ue) || errors.As(err, &he) {
			return nil, &Error{Stage: StageSetup, Definitive: true, Err: fmt.Errorf("relay %s: certificate not trusted: %w", d.Relay, err)}
		}
		// Over QUIC, no answer at all is what an unreachable relay
		// looks like (UDP has no connection refused to report).
		var ne net.Error
		if name == config.TransportQUIC && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
			return nil, &Error{Stage: StageDial, Err: fmt.Errorf("relay %s (quic): no answer: %w", d.Relay, err)}
		}
		return nil, &Error{Stage: StageSetup, Err: fmt.Errorf("relay %s (%s): TLS handshake: %w", d.Relay, name, err)}
	}
	return c, nil
}
