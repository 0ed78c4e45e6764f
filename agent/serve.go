package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

const (
	// openTimeout bounds reading a visitor stream's Open frame.
	openTimeout = 10 * time.Second
	// shutdownDrain bounds how long visitor connections may finish after
	// the agent was told to stop.
	shutdownDrain = 10 * time.Second
)

// serve handles the relay's streams until the session ends or ctx ends.
// It always returns a *failure of stageUp, or nil when ctx ended.
//
// When ctx ends, the agent drains: it tells the relay to close its public
// ports, refuses streams that were already on their way, lets the open
// connections finish for up to shutdownDrain, then closes the session.
func (a *Agent) serve(ctx context.Context, l *link) error {
	sess, ctrl := l.sess, l.w.ctrl
	spliceCx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()

	// The control stream carries the relay's later words: GoAway, and
	// answers to the agent's requests. Its one reader ends with the
	// session; writes (registrations, the agent's GoAway) go through l.w.
	w := l.w
	goaway := make(chan *tunnel.GoAway, 1)
	gone := make(chan struct{}) // closed at the relay's first GoAway
	results := make(chan *tunnel.RegisterResult, 1)
	// leaving is set once the relay announced the session's end; streams
	// that end with a session that ended otherwise were cut.
	var leaving atomic.Bool
	lost := func() bool { return isDone(sess.Done()) && !leaving.Load() }
	var ctrlErr atomic.Pointer[error] // the control stream broke
	ctrlDone := make(chan struct{})
	go func() {
		defer close(ctrlDone)
		for {
			m, err := tunnel.ReadMessage(ctrl, tunnel.MaxFrameSize)
			if err != nil {
				// A broken control stream leaves the agent deaf to the
				// relay: start over with a new session, unless this one
				// is already ending or draining.
				if ctx.Err() == nil && !isDone(sess.Done()) {
					a.log.Warn("control stream from the relay failed; reconnecting", "err", err)
					ctrlErr.Store(&err)
					sess.Close()
				}
				return
			}
			switch m := m.(type) {
			case *tunnel.GoAway:
				if !leaving.Swap(true) {
					close(gone)
				}
				select {
				case goaway <- m:
				default:
				}
			case *tunnel.ReachResult:
				if !l.reach.deliver(m) {
					a.log.Warn("relay sent a port mapping check nobody asked for", "addr", m.Addr)
				}
			case *tunnel.RegisterResult:
				// The registrar has at most one request out.
				select {
				case results <- m:
				default:
					a.log.Warn("relay sent a registration answer nobody asked for")
				}
			default:
				a.log.Warn("relay sent an unexpected control message", "type", fmt.Sprintf("%T", m))
			}
		}
	}()

	// Tunnels the relay refused for a reason that may pass are asked for
	// again on this session until they are up; a reload brings the
	// session's tunnels in line (sync) through the registrar too, once
	// now for one that came while the session was being made.
	regCtx, stopReg := context.WithCancel(ctx)
	reg := &registrar{a: a, l: l, ctx: regCtx, results: results, gone: gone}
	if len(l.retry) > 0 {
		reg.retries.Go(func() { reg.retry(l.retry) })
	}
	reg.retries.Go(func() {
		if err := reg.sync(); errors.Is(err, errNoUnregister) {
			a.renewSessions(a.conf().gen)
		}
	})
	a.live.Store(reg)
	defer func() {
		a.live.CompareAndSwap(reg, nil)
		stopReg()
		reg.retries.Wait()
	}()

	// UDP flows: datagrams that arrive outside their stream (QUIC) are
	// delivered through the flow table.
	flows := newFlowTable(sess)
	dgDone := make(chan struct{})
	go func() {
		defer close(dgDone)
		flows.receive(spliceCx, sess)
	}()
	defer func() {
		cancel()
		<-dgDone
	}()

	// Streams are accepted until the session ends, also while draining,
	// so that a visitor who raced with the shutdown gets a clear refusal
	// instead of waiting. streams counts the served ones; draining,
	// under mu, stops new Adds before streams.Wait begins.
	var (
		refusals  sync.WaitGroup // refuse waits up to a second for the relay
		streams   sync.WaitGroup
		mu        sync.Mutex
		draining  bool
		acceptErr = make(chan error, 1)
	)
	// spawn runs f on a goroutine of its own, counted with the streams:
	// a splice that lasts hours should not keep the stack that dialling
	// the target grew.
	spawn := func(f func()) {
		streams.Add(1) // the caller is a counted stream: never from zero
		go func() {
			defer streams.Done()
			f()
		}()
	}
	go func() {
		for {
			st, err := sess.AcceptStream(context.WithoutCancel(ctx))
			if err != nil {
				acceptErr <- err
				return
			}
			mu.Lock()
			if draining {
				mu.Unlock()
				refusals.Add(1)
				go func() {
					defer refusals.Done()
					refuse(st, tunnel.CodeShutdown, "agent shutting down")
				}()
				continue
			}
			streams.Add(1)
			mu.Unlock()
			go func() {
				defer streams.Done()
				a.handleStream(spliceCx, tunnel.CutAware(st, lost), l.features, flows, spawn)
			}()
		}
	}()
	stopStreams := func() {
		mu.Lock()
		draining = true
		mu.Unlock()
	}

	select {
	case <-ctx.Done():
		if err := w.write(&tunnel.GoAway{Code: tunnel.CodeShutdown, Message: "agent shutting down"}, time.Second); err != nil {
			a.log.Debug("telling the relay about shutdown", "err", err)
		}
		stopStreams()
		drained := make(chan struct{})
		go func() {
			streams.Wait()
			close(drained)
		}()
		t := time.NewTimer(shutdownDrain)
		select {
		case <-drained:
		case <-t.C:
			a.log.Warn("shutdown: drain time over, closing remaining connections")
		case <-sess.Done():
		}
		t.Stop()
		cancel()
		sess.Close()
		<-drained
		<-acceptErr
		refusals.Wait()
		<-ctrlDone
		a.sessionDown(l, "shutdown", "the agent is shutting down")
		return nil
	case <-sess.Done():
	case <-acceptErr:
		acceptErr <- nil // for the wait below
	}
	// Give a GoAway that raced with the session's end a moment to land.
	var ga *tunnel.GoAway
	select {
	case ga = <-goaway:
	case <-time.After(50 * time.Millisecond):
	}
	stopStreams()
	sess.Close()
	cancel()
	streams.Wait()
	<-acceptErr
	refusals.Wait()
	<-ctrlDone
	switch p := ctrlErr.Load(); {
	case ga != nil:
		a.sessionDown(l, goAwayCause(ga.Code), fmt.Sprintf("the relay said: %s: %s", ga.Code, ga.Message))
	case l.upgrade.Load():
		a.sessionDown(l, "upgrade", "moved to QUIC")
	case p != nil:
		a.sessionDown(l, "protocol_error", fmt.Sprintf("control stream from the relay: %v", *p))
	default:
		a.sessionDown(l, "", "")
	}
	if ga != nil {
		f := &failure{stage: stageUp, err: fmt.Errorf("relay: %s: %s", ga.Code, ga.Message)}
		// Another agent with our id took over (unless it was our own
		// newer session, see session): coming straight back would take
		// the ports away from it again, and so on forever.
		f.replaced = ga.Code == tunnel.CodeReplaced
		// A relay shutting down is most often restarting: come back as
		// soon as it listens again.
		f.cut = ga.Code == tunnel.CodeShutdown
		return f
	}
	return &failure{stage: stageUp, cut: true, err: errors.New("session closed")}
}

// sessionDown logs the end of l's session, in one line, and counts it by
// cause: the agent's own (shutdown, upgrade), the relay's word (a GoAway:
// replaced, relay_shutdown, revoked, go_away), a broken control stream
// (protocol_error), or, when cause is empty, what the link saw (see
// tunnel.EndCode).
func (a *Agent) sessionDown(l *link, cause, words string) {
	end := l.sess.EndCause()
	attrs := tunnel.EndLog(cause, words, time.Since(l.since), end, 1) // 1: the control stream
	a.metrics.sessionsEnded.WithLabelValues(l.set.cfg.Relay, l.transport, cmp.Or(cause, string(end.Code))).Inc()
	a.log.Info("relay session down", append([]any{"relay", l.set.cfg.Relay, "transport", l.transport}, attrs...)...)
}

// goAwayCause names the relay's reason for ending a session, as a metric
// label.
func goAwayCause(c tunnel.Code) string {
	switch c {
	case tunnel.CodeReplaced:
		return "replaced"
	case tunnel.CodeShutdown:
		return "relay_shutdown"
	case tunnel.CodeAuthFailed:
		return "revoked"
	}
	return "go_away"
}

// refuse answers a visitor stream with a refusal and closes it. It ends
// its sending side first and lets the relay read the answer and close
// (within a second): closing at once stops reading, which over QUIC makes
// the relay's pending writes fail before it has read why.
func refuse(st tunnel.Stream, code tunnel.Code, msg string) {
	_ = st.SetWriteDeadline(time.Now().Add(time.Second))
	if tunnel.WriteMessage(st, &tunnel.OpenResult{Code: code, Message: msg}) == nil && st.CloseWrite() == nil {
		_ = st.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, st)
	}
	st.Close()
}

// handleStream connects one visitor stream to its tunnel's target.
// f are the relay's features (a wake's notice needs tunnel.FeatureWake).
func (a *Agent) handleStream(ctx context.Context, st tunnel.Stream, f tunnel.Features, flows *flowTable, spawn func(func())) {
	start := time.Now()
	_ = st.SetReadDeadline(start.Add(openTimeout))
	m, err := tunnel.ReadMessage(st, tunnel.MaxFrameSize)
	if err != nil {
		st.Close()
		a.log.Warn("bad stream from relay", "err", err)
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	var open tunnel.Open
	switch m := m.(type) {
	case *tunnel.Open:
		open = *m
	case *tunnel.OpenFlow:
		a.handleFlow(ctx, st, m, flows)
		return
	default:
		st.Close()
		a.log.Warn("bad stream from relay", "err", fmt.Errorf("first frame %T: %w", m, tunnel.ErrUnexpected))
		return
	}
	// Not a logger With these: it would format them for every
	// connection, and keep them for its whole life, to log rarely.
	who := []any{"tunnel", open.Tunnel, "visitor", open.Visitor}
	if open.Via != "" {
		who = append(who, "via", open.Via)
	}
	set := a.conf()
	t, ok := set.tunnels[open.Tunnel]
	stats := a.statsOf(open.Tunnel)
	if !ok || t.Protocol == "udp" || stats == nil {
		refuse(st, tunnel.CodeUnknownTunnel, fmt.Sprintf("agent has no tunnel %q", open.Tunnel))
		a.log.Warn("relay asked for an unknown tunnel", who...)
		return
	}
	if code, msg := admitVia(t, open.Via); code != tunnel.CodeOK {
		refuse(st, code, msg)
		a.log.Warn("visitor refused", append(who, "reason", code.String(), "detail", msg)...)
		return
	}
	d := net.Dialer{Timeout: set.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", t.Target)
	if err != nil && t.Wake != nil {
		c, err = a.wakeAndDial(ctx, st, t, set.cfg, f, err, who)
	}
	if err != nil {
		stats.dialFailed(err)
		msg := fmt.Sprintf("tunnel %q: dial %s: %v", t.Name, t.Target, err)
		refuse(st, tunnel.CodeDialFailed, msg)
		a.log.Warn("target unreachable", append(who, "target", t.Target, "err", err)...)
		return
	}
	a.metrics.streamOpen.Observe(time.Since(start).Seconds())
	if t.ProxyProtocol != "" {
		if err := writeProxyHeader(c, t.ProxyProtocol, open); err != nil {
			c.Close()
			refuse(st, tunnel.CodeDialFailed, fmt.Sprintf("tunnel %q: %v", t.Name, err))
			a.log.Warn("PROXY header not sent", append(who, "target", t.Target, "err", err)...)
			return
		}
	}
	if err := tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeOK}); err != nil {
		c.Close()
		st.Close()
		a.log.Debug("stream closed before the target answered", append(who, "err", err)...)
		return
	}
	stats.visitors.Add(1)
	stats.accepted.Add(1)
	spawn(func() {
		defer stats.visitors.Add(-1)
		in, out, err := tunnel.SpliceCounted(ctx, st, c.(*net.TCPConn), &stats.bytesIn, &stats.bytesOut)
		level := slog.LevelDebug
		if a.conf().cfg.AccessLog {
			level = slog.LevelInfo
		}
		if errors.Is(err, tunnel.ErrStalled) {
			level = slog.LevelWarn
		}
		a.log.Log(context.Background(), level, "visitor connection", append(who, "target", t.Target,
			"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond), "err", err)...)
	})
}

// admitVia checks the visitor key (by name, via) of a stream of tunnel t:
// a private tunnel's streams name one, which must be among t.Visitors
// when the tunnel lists any; a public tunnel's name none. Anything else is
// refused before the target is dialed.
func admitVia(t config.Tunnel, via string) (tunnel.Code, string) {
	switch {
	case t.Private && via == "":
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q is private: the relay must name the visitor key", t.Name)
	case !t.Private && via != "":
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q is public: a visitor key (%q) has no place on its streams", t.Name, via)
	case len(t.Visitors) > 0 && !slices.Contains(t.Visitors, via):
		return tunnel.CodeNotAllowed, fmt.Sprintf("visitor key %q is not allowed for tunnel %q by the home agent", via, t.Name)
	}
	return tunnel.CodeOK, ""
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeProxyHeader sends the PROXY protocol header for a visitor to c,
// within the dial timeout's bounds. A private tunnel's visitor reached no
// public port: without one from the relay, the header's destination is
// the unspecified address, port 0.
func writeProxyHeader(c net.Conn, version string, open tunnel.Open) error {
	visitor, err := netip.ParseAddrPort(open.Visitor)
	if err != nil {
		return fmt.Errorf("visitor address %q: %w", open.Visitor, err)
	}
	var public netip.AddrPort
	switch {
	case open.Public == "" && open.Via != "" && visitor.Addr().Unmap().Is4():
		public = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	case open.Public == "" && open.Via != "":
		public = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	default:
		if public, err = netip.ParseAddrPort(open.Public); err != nil {
			return fmt.Errorf("relay address %q: %w", open.Public, err)
		}
	}
	h, err := proxyHeader(version, visitor, public)
	if err != nil {
		return err
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(h)
	_ = c.SetWriteDeadline(time.Time{})
	return err
}
