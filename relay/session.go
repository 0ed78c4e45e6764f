package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// agentSession is one authenticated agent and the public ports it holds.
type agentSession struct {
	srv    *Server
	key    sessionKey
	token  config.Token
	remote string
	// started is when the session was logged in.
	started time.Time
	agent   tunnel.Agent
	sess    tunnel.Session
	log     *slog.Logger
	// transport is tcp or quic; openTime observes its visitors' time to
	// the agent's answer.
	transport string
	openTime  prometheus.Observer

	ctrlMu sync.Mutex // serialises writes on ctrl
	ctrl   tunnel.Stream
	// leaving is set once the agent announced its end (GoAway): a
	// session that ends after that ended cleanly.
	leaving   atomic.Bool
	goAwayMsg atomic.Pointer[string] // what the agent's GoAway said
	// endCode is the first code the relay ended or retired the session
	// with (0: it did not; the agent or the link did).
	endCode atomic.Uint32

	// UDP flows of this session by number, for session datagrams.
	nextFlow atomic.Uint32
	flowMu   sync.Mutex
	flows    map[uint32]*udpFlow

	mu      sync.Mutex
	tunnels map[string]portTunnel // by name
	ended   bool

	retiredAt time.Time // under srv.mu; see retire

	reach reachLimit // port mapping checks (CheckReach)
}

func newAgentSession(s *Server, sess tunnel.Session, ctrl tunnel.Stream, a tunnel.Agent, token config.Token, transport string, log *slog.Logger) *agentSession {
	return &agentSession{
		srv:       s,
		key:       sessionKey{token: token.Name, agent: a.ID},
		token:     token,
		remote:    sess.RemoteAddr().String(),
		started:   time.Now(),
		agent:     a,
		sess:      sess,
		ctrl:      ctrl,
		log:       log.With("agent", a.ID, "token", token.Name),
		tunnels:   make(map[string]portTunnel),
		flows:     make(map[uint32]*udpFlow),
		transport: transport,
		openTime:  s.metrics.streamOpen.WithLabelValues(transport),
	}
}

// serve reads control messages until the session ends.
func (as *agentSession) serve(ctx context.Context) {
	as.log.Info("agent session up", "software", as.agent.Software)
	defer as.srv.removeSession(as)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		as.refuseStreams(ctx)
	}()
	go func() {
		defer wg.Done()
		as.receiveDatagrams(ctx)
	}()

	reason := "agent closed the session"
	for {
		m, err := tunnel.ReadMessage(as.ctrl, tunnel.MaxFrameSize)
		if err != nil {
			// A session's end may reach its streams a moment before
			// Done: wait that moment before blaming the control stream.
			t := time.NewTimer(controlGrace)
			select {
			case <-as.sess.Done():
				reason = "session ended"
			case <-t.C:
				reason = fmt.Sprintf("control stream: %v", err)
			}
			t.Stop()
			break
		}
		if ga, ok := m.(*tunnel.GoAway); ok {
			// The agent is shutting down: no new visitors, while the
			// open connections drain until it closes the session.
			as.goAwayMsg.Store(&ga.Message)
			as.leaving.Store(true)
			as.closeTunnels()
			as.log.Info("agent going away; its ports are closed", "detail", ga.Message)
			continue
		}
		if cr, ok := m.(*tunnel.CheckReach); ok {
			as.checkReach(ctx, &wg, cr)
			continue
		}
		var res *tunnel.RegisterResult
		switch m := m.(type) {
		case *tunnel.Register:
			res = as.register(m)
		case *tunnel.RegisterPrivate:
			res = as.registerPrivate(m)
		case *tunnel.RegisterWeb:
			res = as.registerWeb(m)
		case *tunnel.Unregister:
			res = as.unregister(m)
		}
		if res == nil {
			reason = fmt.Sprintf("control stream: unexpected %T", m)
			as.log.Warn("agent sent an unexpected control message; closing session", "type", fmt.Sprintf("%T", m))
			break
		}
		as.ctrlMu.Lock()
		err = tunnel.WriteMessage(as.ctrl, res)
		as.ctrlMu.Unlock()
		if err != nil {
			reason = fmt.Sprintf("control stream: %v", err)
			break
		}
	}
	as.end(tunnel.CodeOK, "")
	wg.Wait()
	link := as.sess.EndCause()
	cause, words := as.endCause(reason, link)
	as.srv.metrics.sessionsEnded.WithLabelValues(as.transport, cause).Inc()
	attrs := tunnel.EndLog(cause, words, time.Since(as.started), link, 1) // 1: the control stream
	as.log.Info("agent session down", attrs...)
}

// controlGrace is how long a failed read of the control stream waits for
// the session's end before it is taken for the control stream's failure.
const controlGrace = 100 * time.Millisecond

// endCause names why the session ended, for logs and metrics, and says it
// in words: the relay's own reasons (replaced, revoked, shutdown), the
// agent's goodbye (agent_left), a control stream that broke the protocol
// (protocol_error), or else what the link saw (see tunnel.EndCode:
// keepalive_timeout, peer_closed, read_error, ...).
func (as *agentSession) endCause(reason string, link tunnel.EndCause) (cause, words string) {
	switch tunnel.Code(as.endCode.Load()) {
	case tunnel.CodeReplaced:
		return "replaced", "replaced by a newer session"
	case tunnel.CodeAuthFailed:
		return "revoked", "its token was revoked"
	case tunnel.CodeShutdown:
		return "shutdown", "the relay is shutting down"
	}
	switch {
	case as.leaving.Load():
		words := "the agent said goodbye"
		if m := as.goAwayMsg.Load(); m != nil && *m != "" {
			words += ": " + *m
		}
		return "agent_left", words
	case reason != "session ended" && reason != "agent closed the session":
		return "protocol_error", reason
	}
	return string(link.Code), link.String()
}

// refuseStreams closes every stream the agent opens after the control
// stream: visitor streams are opened by the relay only.
func (as *agentSession) refuseStreams(ctx context.Context) {
	for {
		st, err := as.sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		as.log.Warn("agent opened an unexpected stream; closing it")
		st.Close()
	}
}

// end closes the session's public ports, tells the agent why (when code is
// not CodeOK) and closes the session. The ports are free when end returns.
func (as *agentSession) end(code tunnel.Code, msg string) {
	if code != tunnel.CodeOK {
		as.endCode.CompareAndSwap(0, uint32(code))
	}
	as.closeTunnels()
	if code != tunnel.CodeOK {
		as.goAway(code, msg)
	}
	as.sess.Close()
}

// goAway tells the agent why its session ends, giving the write a second.
func (as *agentSession) goAway(code tunnel.Code, msg string) {
	as.ctrlMu.Lock()
	defer as.ctrlMu.Unlock()
	_ = as.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
	_ = tunnel.WriteMessage(as.ctrl, &tunnel.GoAway{Code: code, Message: msg})
}

// retireCheck is how often a retired session checks whether its last
// connection has ended.
const retireCheck = 250 * time.Millisecond

// retire makes way for a newer session of the same agent, which the agent
// opens beside this one when it loses touch with the relay
// (make-before-break, tunnel.FlagReplacing). The public ports close at once,
// for the newer session to take; the agent is told with a GoAway; the
// connections still open go on until they end, and then the session is
// closed. A link that really died is ended by the keepalive meanwhile.
func (as *agentSession) retire(msg string) {
	as.endCode.CompareAndSwap(0, uint32(tunnel.CodeReplaced))
	as.closeTunnels()
	go func() {
		as.goAway(tunnel.CodeReplaced, msg)
		t := time.NewTicker(retireCheck)
		defer t.Stop()
		for {
			select {
			case <-as.sess.Done():
				return
			case <-t.C:
			}
			// The control stream is always open.
			if as.sess.NumStreams() <= 1 {
				as.sess.Close()
				return
			}
		}
	}()
}

// lost reports whether the session ended without the agent saying so.
func (as *agentSession) lost() bool {
	select {
	case <-as.sess.Done():
		return !as.leaving.Load()
	default:
		return false
	}
}

// closeTunnels closes the public listeners and marks the session ended,
// so no tunnel is registered later.
func (as *agentSession) closeTunnels() {
	as.mu.Lock()
	as.ended = true
	ts := as.tunnels
	as.tunnels = map[string]portTunnel{}
	as.mu.Unlock()
	for _, t := range ts {
		t.close()
	}
}

// unregister answers an Unregister: each named tunnel of this session is
// closed (its public port released, with the usual reservation, and its
// visitor guard dropped); the connections open on it go on until they end.
func (as *agentSession) unregister(m *tunnel.Unregister) *tunnel.RegisterResult {
	res := &tunnel.RegisterResult{Results: make([]tunnel.TunnelResult, len(m.Names))}
	for i, name := range m.Names {
		r := &res.Results[i]
		r.Name = name
		as.mu.Lock()
		t, ok := as.tunnels[name]
		delete(as.tunnels, name)
		as.mu.Unlock()
		if !ok {
			r.Code, r.Message = tunnel.CodeUnknownTunnel, fmt.Sprintf("this session has no tunnel %q", name)
			as.log.Debug("agent closed a tunnel it does not have", "tunnel", name)
			continue
		}
		t.close()
		as.log.Info("tunnel closed by the agent", "tunnel", name, "port", t.status().Port)
	}
	return res
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// register answers a Register message, tunnel by tunnel.
func (as *agentSession) register(reg *tunnel.Register) *tunnel.RegisterResult {
	res := &tunnel.RegisterResult{Results: make([]tunnel.TunnelResult, len(reg.Tunnels))}
	for i, req := range reg.Tunnels {
		r := &res.Results[i]
		r.Name = req.Name
		r.Code, r.Message = as.open(req)
		if r.Code == tunnel.CodeOK {
			as.log.Info("tunnel registered", "tunnel", req.Name, "port", req.RemotePort)
		} else {
			as.log.Warn("tunnel refused", "tunnel", req.Name, "port", req.RemotePort, "reason", r.Code.String(), "detail", r.Message)
		}
	}
	return res
}

// open checks one tunnel request and opens its public port.
func (as *agentSession) open(req tunnel.TunnelRequest) (tunnel.Code, string) {
	switch {
	case !nameRE.MatchString(req.Name):
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel name %q: want 1-64 of A-Z a-z 0-9 . _ -", req.Name)
	case req.Protocol != tunnel.ProtoTCP && req.Protocol != tunnel.ProtoUDP:
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: %v is not supported", req.Name, req.Protocol)
	case req.RemotePort == 0:
		return tunnel.CodeBadRequest, fmt.Sprintf("tunnel %q: port 0", req.Name)
	}
	if why := as.srv.conf().portRefusal(as.key.token, req.RemotePort); why != "" {
		return tunnel.CodePortNotAllowed, why
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.ended {
		return tunnel.CodeShutdown, "session ended"
	}
	if _, dup := as.tunnels[req.Name]; dup {
		return tunnel.CodeDuplicateName, fmt.Sprintf("tunnel name %q is already registered by this agent", req.Name)
	}
	key := portKey{req.Protocol, req.RemotePort}
	var owner any = req.Name + "@" + as.remote // placeholder until the tunnel exists
	if code, msg := as.srv.claimPort(key, owner, as.key.token); code != tunnel.CodeOK {
		return code, msg
	}
	addr := net.JoinHostPort(as.srv.conf().BindAddr, strconv.Itoa(int(req.RemotePort)))
	var t portTunnel
	var err error
	guard := newVisitorGuard(as.srv.conf().Guard, req.Allow, req.Deny)
	if req.Protocol == tunnel.ProtoUDP {
		t, err = as.listenUDP(req.Name, req.RemotePort, addr, guard)
	} else {
		t, err = as.listenTCP(req.Name, req.RemotePort, addr, guard)
	}
	if err != nil {
		as.srv.releasePort(key, owner, as.key.token, false)
		return listenRefusal(req.Protocol, req.RemotePort, addr, err)
	}
	as.srv.mu.Lock()
	as.srv.ports[key] = t
	as.srv.mu.Unlock()
	as.tunnels[req.Name] = t
	return tunnel.CodeOK, ""
}

// listenRefusal is the answer to a tunnel whose public port the relay
// could not open.
func listenRefusal(proto tunnel.Protocol, port uint16, addr string, err error) (tunnel.Code, string) {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return tunnel.CodePortInUse, fmt.Sprintf("%v port %d is in use by another program on the relay host", proto, port)
	case errors.Is(err, syscall.EACCES) && port < 1024:
		// Retrying cannot help: the relay's owner has to act.
		return tunnel.CodePortNotAllowed, fmt.Sprintf("the relay may not open %v port %d (permission denied): ports below 1024 need the relay to run as root or with CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), or sysctl net.ipv4.ip_unprivileged_port_start=%d on the relay host", proto, port, port)
	case errors.Is(err, syscall.EACCES):
		return tunnel.CodePortNotAllowed, fmt.Sprintf("the relay may not open %v port %d (permission denied by the relay host: a firewall or security policy there)", proto, port)
	}
	return tunnel.CodeInternal, fmt.Sprintf("listen on %v %s: %v", proto, addr, err)
}

// portTunnel is a tunnel's public port, TCP or UDP.
type portTunnel interface {
	close() // stop serving and free the port
	status() TunnelStatus
	bans(now time.Time) []BanStatus
	setLimits(cfg config.Guard) // a reload's new visitor limits
}

func (as *agentSession) listenTCP(name string, port uint16, addr string, guard *visitorGuard) (portTunnel, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	t := &publicTunnel{name: name, port: port, owner: as, ln: ln, guard: guard, done: make(chan struct{}), since: time.Now()}
	go t.acceptLoop()
	return t, nil
}

// publicTunnel is one public port and the agent session behind it.
type publicTunnel struct {
	name  string
	port  uint16
	owner *agentSession
	ln    net.Listener
	guard *visitorGuard
	done  chan struct{} // closed when acceptLoop has returned
	since time.Time
	stats tunnelStats
}

func (t *publicTunnel) setLimits(cfg config.Guard) { t.guard.setConfig(cfg) }

func (t *publicTunnel) close() {
	t.ln.Close()
	<-t.done
	t.owner.srv.releasePort(portKey{tunnel.ProtoTCP, t.port}, t, t.owner.key.token, true)
}

func (t *publicTunnel) session() *agentSession { return t.owner }
func (t *publicTunnel) tunnelName() string     { return t.name }

func (t *publicTunnel) acceptLoop() {
	defer close(t.done)
	srv := t.owner.srv
	var delay time.Duration
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = nextAcceptDelay(delay)
			t.owner.log.Warn("accept visitor", "tunnel", t.name, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc := c.(*net.TCPConn)
		ip := addrOf(c.RemoteAddr())
		if ok, why, banned := t.guard.admit(ip); !ok {
			// A reset, not a clean close: nothing was served.
			_ = tc.SetLinger(0)
			tc.Close()
			t.stats.refusal(banned)
			t.owner.srv.metrics.refused.WithLabelValues(t.owner.key.token, t.name, refusalReason(why)).Inc()
			t.owner.logRefusal(t.name, c.RemoteAddr().String(), why, banned)
			continue
		}
		srv.visitors.Add(1)
		go func() {
			defer srv.visitors.Done()
			defer t.guard.release(ip)
			t.serveVisitor(tc)
		}()
	}
}

// serveVisitor carries one visitor connection over a new stream.
func (t *publicTunnel) serveVisitor(c *net.TCPConn) {
	as := t.owner
	start := time.Now()
	visitor := c.RemoteAddr().String()
	ctx := as.srv.visitCtx
	st, err := as.sess.OpenStream(ctx)
	if err != nil {
		c.Close()
		as.log.Warn("visitor refused: cannot open stream to agent", "tunnel", t.name, "visitor", visitor, "err", err)
		return
	}
	if err := tunnel.WriteMessage(st, &tunnel.Open{Tunnel: t.name, Visitor: visitor, Public: c.LocalAddr().String()}); err != nil {
		c.Close()
		st.Close()
		as.log.Warn("visitor refused: cannot write to agent", "tunnel", t.name, "visitor", visitor, "err", err)
		return
	}
	// The visitor's first bytes flow at once; the agent's answer is read
	// before anything goes back to the visitor.
	st = tunnel.CutAware(st, as.lost)
	t.stats.visitors.Add(1)
	t.stats.accepted.Add(1)
	answered := func() { as.openTime.Observe(time.Since(start).Seconds()) }
	in, out, err := tunnel.SpliceCounted(ctx, c, &openResultReader{Stream: st, answered: answered}, &t.stats.bytesIn, &t.stats.bytesOut)
	t.stats.visitors.Add(-1)
	level := slog.LevelDebug
	if as.srv.conf().AccessLog {
		level = slog.LevelInfo
	}
	var oe *tunnel.OpenError
	if errors.As(err, &oe) || errors.Is(err, tunnel.ErrStalled) {
		level = slog.LevelWarn
	}
	as.log.Log(context.Background(), level, "visitor connection", "tunnel", t.name, "visitor", visitor,
		"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond), "err", err)
}

// openResultReader reads the agent's OpenResult before the first byte of
// the target's data; a refusal becomes the read error, which ends the
// splice and closes the visitor's connection.
type openResultReader struct {
	tunnel.Stream
	read     bool
	answered func() // called when the agent has answered (nil: nothing)
}

func (r *openResultReader) Read(p []byte) (int, error) {
	if !r.read {
		r.read = true
		var res tunnel.OpenResult
		if err := tunnel.ReadInto(r.Stream, tunnel.MaxFrameSize, &res); err != nil {
			return 0, fmt.Errorf("agent answer: %w", err)
		}
		if res.Code == tunnel.CodeWaking {
			// The agent wakes the target; its answer follows (the
			// visitor waits, as for a slow connect). One notice only.
			if err := tunnel.ReadInto(r.Stream, tunnel.MaxFrameSize, &res); err != nil {
				return 0, fmt.Errorf("agent answer after waking the target: %w", err)
			}
			if res.Code == tunnel.CodeWaking {
				return 0, fmt.Errorf("agent answer: a second waking notice: %w", tunnel.ErrUnexpected)
			}
		}
		if r.answered != nil {
			r.answered()
		}
		if res.Code != tunnel.CodeOK {
			return 0, &tunnel.OpenError{Code: res.Code, Message: res.Message}
		}
	}
	return r.Stream.Read(p)
}

// WaitRead waits for the target's data without a buffer once the answer
// has been read (see tunnel.Splice); until then, Read reads the answer.
func (r *openResultReader) WaitRead() error {
	if !r.read {
		return nil
	}
	return r.Stream.WaitRead()
}

// logRefusal logs a visitor the guard turned away: at the access log's
// level, and a ban always.
func (as *agentSession) logRefusal(tunnelName, visitor, why string, banned bool) {
	as.srv.refusals.add(RefusalStatus{Time: time.Now(), Where: tunnelName, Addr: visitor, Reason: why, Banned: banned})
	if banned {
		as.srv.metrics.bans.WithLabelValues("tunnel").Inc()
		as.log.Warn("visitor address banned from tunnel", "tunnel", tunnelName, "visitor", visitor, "reason", why, "ban_for", as.srv.conf().Guard.VisitorBanFor)
		return
	}
	level := slog.LevelDebug
	if as.srv.conf().AccessLog {
		level = slog.LevelInfo
	}
	as.log.Log(context.Background(), level, "visitor refused", "tunnel", tunnelName, "visitor", visitor, "reason", why)
}
