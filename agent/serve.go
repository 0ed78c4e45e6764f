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

// sessionEnd is how serving a session ended.
type sessionEnd struct {
	shutdown bool           // the agent stopped: it drained and closed the session
	goAway   *tunnel.GoAway // the relay's word on the session's end, if any
	ctrlErr  error          // the control stream from the relay broke
}

// failure is why the session ended, for the backoff (nil: shutdown).
func (e sessionEnd) failure() *failure {
	switch {
	case e.shutdown:
		return nil
	case e.goAway != nil:
		ga := e.goAway
		return &failure{stage: stageUp, err: fmt.Errorf("relay: %s: %s", ga.Code, ga.Message),
			// Another agent with our id took over (unless it was our
			// own newer session, see relayLink.ended): coming straight
			// back would take the ports away from it again, and so on
			// forever.
			replaced: ga.Code == tunnel.CodeReplaced,
			// A relay shutting down is most often restarting: come back
			// as soon as it listens again.
			cut: ga.Code == tunnel.CodeShutdown}
	}
	return &failure{stage: stageUp, cut: true, err: errors.New("session closed")}
}

// describe names the cause of the end, as a metric label, and puts it in
// words; upgraded: the agent closed the session to move it to QUIC.
func (e sessionEnd) describe(upgraded bool) (cause, words string) {
	switch {
	case e.shutdown:
		return "shutdown", "the agent is shutting down"
	case e.goAway != nil:
		return goAwayCause(e.goAway.Code), fmt.Sprintf("the relay said: %s: %s", e.goAway.Code, e.goAway.Message)
	case upgraded:
		return "upgrade", "moved to QUIC"
	case e.ctrlErr != nil:
		return "protocol_error", fmt.Sprintf("control stream from the relay: %v", e.ctrlErr)
	}
	return "", ""
}

// serve handles the relay's streams on l, a session of the link s, until
// the session ends or ctx ends.
//
// When ctx ends, the agent drains: it tells the relay to close its public
// ports, refuses streams that were already on their way, lets the open
// connections finish for up to shutdownDrain, then closes the session.
func (a *Agent) serve(ctx context.Context, s *relayLink, l *link) sessionEnd {
	v := a.newServer(ctx, l)
	defer v.cancel()
	go v.readControl(ctx)
	stopReg := s.startRegistrar(ctx, l, v)
	defer stopReg()
	// UDP flows: datagrams that arrive outside their stream (QUIC) are
	// delivered through the flow table.
	dgDone := make(chan struct{})
	go func() {
		defer close(dgDone)
		v.flows.receive(v.spliceCtx, l.sess)
	}()
	defer func() {
		v.cancel()
		<-dgDone
	}()
	go v.acceptStreams(ctx)

	select {
	case <-ctx.Done():
		v.drain()
		return sessionEnd{shutdown: true}
	case <-l.sess.Done():
	case <-v.acceptErr:
		v.acceptErr <- nil // for the wait in finish
	}
	return v.finish()
}

// startRegistrar starts the registrar of l's session: tunnels the relay
// refused for a reason that may pass are asked for again on this session
// until they are up; a reload brings the session's tunnels in line (sync)
// through the registrar too, once now for one that came while the
// session was being made. The returned func stops it.
func (s *relayLink) startRegistrar(ctx context.Context, l *link, v *server) (stop func()) {
	regCtx, stopReg := context.WithCancel(ctx)
	reg := &registrar{a: s.a, l: l, ctx: regCtx, results: v.results, gone: v.gone}
	if len(l.retry) > 0 {
		reg.retries.Go(func() { reg.retry(l.retry) })
	}
	reg.retries.Go(func() {
		if err := reg.sync(); errors.Is(err, errNoUnregister) {
			s.renew(s.a.conf().gen)
		}
	})
	s.setLive(reg)
	return func() {
		s.clearLive(reg)
		stopReg()
		reg.retries.Wait()
	}
}

// server serves one session: the relay's control messages and its
// visitor streams.
type server struct {
	a         *Agent
	l         *link
	spliceCtx context.Context // the visitors' connections; outlives a drain's ctx
	cancel    context.CancelFunc

	// The control stream carries the relay's later words: GoAway, and
	// answers to the agent's requests. Its one reader (readControl) ends
	// with the session; writes (registrations, the agent's GoAway) go
	// through l.w.
	goaway   chan *tunnel.GoAway
	gone     chan struct{} // closed at the relay's first GoAway
	results  chan *tunnel.RegisterResult
	ctrlErr  error         // the control stream broke; set before ctrlDone closes
	ctrlDone chan struct{} // readControl returned

	flows *flowTable
	// Streams are accepted until the session ends, also while draining,
	// so that a visitor who raced with the shutdown gets a clear refusal
	// instead of waiting. streams counts the served ones; draining,
	// under mu, stops new Adds before streams.Wait begins.
	refusals  sync.WaitGroup // refuse waits up to a second for the relay
	streams   sync.WaitGroup
	mu        sync.Mutex
	draining  bool
	acceptErr chan error
}

func (a *Agent) newServer(ctx context.Context, l *link) *server {
	v := &server{a: a, l: l, goaway: make(chan *tunnel.GoAway, 1), gone: make(chan struct{}),
		results: make(chan *tunnel.RegisterResult, 1), ctrlDone: make(chan struct{}),
		flows: newFlowTable(l.sess), acceptErr: make(chan error, 1)}
	v.spliceCtx, v.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return v
}

// lost reports whether the session ended without the relay announcing
// it: the streams that end with it were cut.
func (v *server) lost() bool { return isDone(v.l.sess.Done()) && !isDone(v.gone) }

// readControl reads the relay's control messages until the session ends.
func (v *server) readControl(ctx context.Context) {
	defer close(v.ctrlDone)
	a, l := v.a, v.l
	for {
		m, err := tunnel.ReadMessage(l.w.ctrl, tunnel.MaxFrameSize)
		if err != nil {
			// A broken control stream leaves the agent deaf to the
			// relay: start over with a new session, unless this one is
			// already ending or draining.
			if ctx.Err() == nil && !isDone(l.sess.Done()) {
				a.log.Warn("control stream from the relay failed; reconnecting", "err", err)
				v.ctrlErr = err
				l.sess.Close()
			}
			return
		}
		switch m := m.(type) {
		case *tunnel.GoAway:
			if !isDone(v.gone) {
				close(v.gone)
			}
			select {
			case v.goaway <- m:
			default:
			}
		case *tunnel.ReachResult:
			if !l.reach.deliver(m) {
				a.log.Warn("relay sent a port mapping check nobody asked for", "addr", m.Addr)
			}
		case *tunnel.RegisterResult:
			// The registrar has at most one request out.
			select {
			case v.results <- m:
			default:
				a.log.Warn("relay sent a registration answer nobody asked for")
			}
		default:
			a.log.Warn("relay sent an unexpected control message", "type", fmt.Sprintf("%T", m))
		}
	}
}

// spawn runs f on a goroutine of its own, counted with the streams: a
// splice that lasts hours should not keep the stack that dialling the
// target grew.
func (v *server) spawn(f func()) {
	v.streams.Add(1) // the caller is a counted stream: never from zero
	go func() {
		defer v.streams.Done()
		f()
	}()
}

// acceptStreams takes the relay's streams until the session ends.
func (v *server) acceptStreams(ctx context.Context) {
	sess := v.l.sess
	for {
		st, err := sess.AcceptStream(context.WithoutCancel(ctx))
		if err != nil {
			v.acceptErr <- err
			return
		}
		v.mu.Lock()
		if v.draining {
			v.mu.Unlock()
			v.refusals.Go(func() { refuse(st, tunnel.CodeShutdown, "agent shutting down") })
			continue
		}
		v.streams.Add(1)
		v.mu.Unlock()
		go func() {
			defer v.streams.Done()
			v.a.handleStream(v.spliceCtx, tunnel.CutAware(st, v.lost), v.l.features, v.flows, v.spawn)
		}()
	}
}

// stopStreams refuses the streams from now on.
func (v *server) stopStreams() {
	v.mu.Lock()
	v.draining = true
	v.mu.Unlock()
}

// drain ends the session for the agent's shutdown (see serve).
func (v *server) drain() {
	a, sess := v.a, v.l.sess
	if err := v.l.w.write(&tunnel.GoAway{Code: tunnel.CodeShutdown, Message: "agent shutting down"}, time.Second); err != nil {
		a.log.Debug("telling the relay about shutdown", "err", err)
	}
	v.stopStreams()
	drained := make(chan struct{})
	go func() {
		v.streams.Wait()
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
	v.cancel()
	sess.Close()
	<-drained
	<-v.acceptErr
	v.refusals.Wait()
	<-v.ctrlDone
}

// finish closes a session that ended, or whose streams can no longer be
// accepted, and says how it ended.
func (v *server) finish() sessionEnd {
	// Give a GoAway that raced with the session's end a moment to land.
	var ga *tunnel.GoAway
	select {
	case ga = <-v.goaway:
	case <-time.After(50 * time.Millisecond):
	}
	v.stopStreams()
	v.l.sess.Close()
	v.cancel()
	v.streams.Wait()
	<-v.acceptErr
	v.refusals.Wait()
	<-v.ctrlDone
	return sessionEnd{goAway: ga, ctrlErr: v.ctrlErr}
}

// logSessionDown logs the end of l's session, in one line, and counts it
// by cause: the agent's own (shutdown, upgrade), the relay's word (a
// GoAway: replaced, relay_shutdown, revoked, go_away), a broken control
// stream (protocol_error), or, when cause is empty, what the link saw
// (see tunnel.EndCode).
func (a *Agent) logSessionDown(l *link, cause, words string) {
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
