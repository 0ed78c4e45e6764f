package tunnel

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// QUICTransport carries sessions over QUIC (RFC 9000), whose TLS 1.3
// handshake is the same as over TCP: same certificate, same pinning, same
// ALPN. Each visitor connection is one QUIC stream.
//
// QUIC applies keepalive and idle timeout when a connection is made, not
// when it becomes a session, so they are part of the transport: Session
// here wins over the SessionConfig given to Mux.
type QUICTransport struct {
	// Session sets keepalive (QUIC's default is none, and NATs forget idle
	// UDP flows after about 30 s), idle timeout (KeepAlive +
	// KeepAliveTimeout) and stream windows.
	Session SessionConfig
	// HandshakeTimeout bounds the QUIC handshake (10 s when zero).
	HandshakeTimeout time.Duration
	// ResetKey, on the relay, is the stateless reset key: an agent whose
	// connection the relay no longer knows (after a restart) learns so at
	// its next packet (within a keepalive period, see heartbeat) instead
	// of an idle timeout. Keep it across restarts; nil disables stateless
	// resets.
	ResetKey *quic.StatelessResetKey
	// MaxHandshakes, on the relay, caps QUIC handshakes in progress
	// (before a connection reaches Accept); more are refused at once.
	// Above a quarter of it, new clients must first prove their address
	// with a Retry, so a flood from spoofed addresses builds no state.
	// 0: no cap.
	MaxHandshakes int
	// Admit, on the relay, when set, is asked about each client before
	// its handshake starts (before any crypto work, and after the Retry
	// above): an error refuses the client at once (it reads ErrBusy).
	// What it returns comes back with the link (Conn.Admission); if the
	// handshake fails before Accept, its Abort is called instead.
	Admit func(remote net.Addr) (Admission, error)
	// OnSmallBuffers, when set, is called for a UDP socket whose kernel
	// buffers stayed below what QUIC needs for full speed (quic-go asks
	// for 7 MiB; the kernel caps it at net.core.rmem_max/wmem_max).
	OnSmallBuffers func(rcv, snd int)
}

// quicWantBuffer is the UDP buffer size quic-go asks the kernel for.
const quicWantBuffer = 7 << 20

// UDPBufferHint is the advice to log with OnSmallBuffers.
const UDPBufferHint = "raise the kernel's UDP buffer limits for QUIC: sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000 (and put them in /etc/sysctl.d/ to keep them)"

// LogSmallBuffers logs what OnSmallBuffers reports: as a warning with
// UDPBufferHint where this process could apply the fix, and as
// information where it cannot (not root, a container), since there the
// operator of this process has nothing to do.
func LogSmallBuffers(log *slog.Logger, rcv, snd int) {
	const msg = "UDP buffers are small for QUIC"
	if err := udpLimitsWritable(); err != nil {
		log.Info(msg, "receive_kib", rcv>>10, "send_kib", snd>>10,
			"note", "QUIC works, more slowly on fast links; the kernel's limits cannot be raised from this process: "+err.Error())
		return
	}
	log.Warn(msg, "receive_kib", rcv>>10, "send_kib", snd>>10, "hint", UDPBufferHint)
}

// checkBuffers calls OnSmallBuffers if udp's buffers are small. quic-go
// sets them when the socket is first used.
func (t QUICTransport) checkBuffers(udp *net.UDPConn) {
	if t.OnSmallBuffers == nil {
		return
	}
	rcv, snd, err := udpBuffers(udp)
	if err == nil && (rcv < quicWantBuffer || snd < quicWantBuffer) {
		t.OnSmallBuffers(rcv, snd)
	}
}

var _ Transport = QUICTransport{}

// Stream limits. The relay opens one stream per visitor, so the agent
// accepts many; the agent opens only its control stream (and a few for
// future use), so the relay accepts few.
const (
	quicAgentMaxIncomingStreams = 1 << 16
	quicRelayMaxIncomingStreams = 16
)

// quicAuthMarker is the first byte on the authentication stream: a QUIC
// stream is invisible to the peer until data is sent on it, and the relay
// speaks first.
const quicAuthMarker = 'h'

// QUIC error codes sent on connections and streams.
const (
	quicCodeClosed quic.ApplicationErrorCode = 0
	quicCodeAbort  quic.StreamErrorCode      = 1
	// quicCodeBusy closes a link the relay refuses before authentication
	// (see Conn.Refuse).
	quicCodeBusy quic.ApplicationErrorCode = 2
)

func (t QUICTransport) config(relay bool) *quic.Config {
	cfg := normalizeSessionConfig(t.Session)
	hs := t.HandshakeTimeout
	if hs <= 0 {
		hs = 10 * time.Second
	}
	incoming := int64(quicAgentMaxIncomingStreams)
	keepAlive := cfg.KeepAlive
	if relay {
		incoming = quicRelayMaxIncomingStreams
		// The idle timer restarts at the first ack-eliciting packet sent
		// after the last one received (RFC 9000 §10.1); on an idle relay
		// that is its keepalive PING, so a PING a full period late would
		// make a dead agent's ports free up to a period late. The agent
		// sends its heartbeat every second; the relay answers as often.
		keepAlive = min(keepAlive, heartbeatMax)
	}
	return &quic.Config{
		HandshakeIdleTimeout: hs,
		MaxIdleTimeout:       cfg.KeepAlive + cfg.KeepAliveTimeout,
		KeepAlivePeriod:      keepAlive,
		// A stream starts with the window a yamux stream has, and quic-go
		// grows it as its reader keeps up. The connection's window is
		// whole from the start: started small (quic-go grows it with the
		// largest stream's), two streams whose readers took nothing would
		// fill it. See stallGuard for what fills it later.
		InitialStreamReceiveWindow:     baseWindow,
		MaxStreamReceiveWindow:         uint64(cfg.StreamWindow),
		InitialConnectionReceiveWindow: sessionWindow(cfg),
		MaxConnectionReceiveWindow:     sessionWindow(cfg),
		MaxIncomingStreams:             incoming,
		MaxIncomingUniStreams:          -1,
		EnableDatagrams:                true,
	}
}

// Dial prepares a QUIC link to a relay: it resolves the address and opens
// a UDP socket. The QUIC and TLS handshakes run in Handshake.
func (t QUICTransport) Dial(ctx context.Context, addr string, conf *tls.Config) (Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, "udp", port)
	if err != nil {
		return nil, err
	}
	ip := ips[0]
	for _, a := range ips {
		if a.Is4() || a.Is4In6() {
			ip = a
			break
		}
	}
	raddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip.Unmap(), uint16(pn)))
	network := "udp6"
	if raddr.IP.To4() != nil {
		network = "udp4"
	}
	udp, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, err
	}
	return &quicLink{
		client:  true,
		check:   t.checkBuffers,
		tr:      newQUICSocket(udp, nil),
		raddr:   raddr,
		tlsConf: conf,
		qconf:   t.config(false),
	}, nil
}

// Listen accepts agents on a UDP address. quic-go runs the handshakes in
// its own goroutines; Accept returns links whose QUIC handshake is done.
func (t QUICTransport) Listen(addr string, conf *tls.Config) (Listener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	sock := newQUICSocket(udp, t.ResetKey)
	hs := &handshakes{}
	if t.MaxHandshakes > 0 || t.Admit != nil {
		limit, retryAbove := int64(t.MaxHandshakes), int64(max(t.MaxHandshakes/4, 1))
		if limit <= 0 {
			limit, retryAbove = 1<<62, 1<<62
		}
		sock.tr.VerifySourceAddress = func(net.Addr) bool { return hs.n.Load() >= retryAbove }
		sock.tr.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
			if hs.n.Add(1) > limit {
				hs.n.Add(-1)
				return nil, errTooManyHandshakes
			}
			tok := &handshakeToken{n: &hs.n}
			if t.Admit != nil {
				adm, err := t.Admit(info.RemoteAddr)
				if err != nil {
					hs.n.Add(-1)
					return nil, err
				}
				tok.adm = adm
			}
			context.AfterFunc(ctx, func() { tok.end(false) }) // a handshake that failed
			return context.WithValue(ctx, handshakeKey{}, tok), nil
		}
	}
	qconf := t.config(true)
	ln, err := sock.tr.Listen(conf, qconf)
	if err != nil {
		sock.release()
		return nil, err
	}
	t.checkBuffers(udp)
	return &quicListener{ln: ln, sock: sock, qconf: qconf}, nil
}

var errTooManyHandshakes = errors.New("too many QUIC handshakes in progress")

// handshakes counts QUIC handshakes in progress on a listener.
type handshakes struct{ n atomic.Int64 }

type handshakeKey struct{}

// handshakeToken is one handshake in progress; it ends once, when the
// connection is accepted or when it failed.
type handshakeToken struct {
	n        *atomic.Int64
	adm      Admission
	once     sync.Once
	accepted bool
}

// end ends the handshake; it reports whether this call did, for an
// accepted one (a handshake that failed first is Aborted).
func (h *handshakeToken) end(accepted bool) (ok bool) {
	h.once.Do(func() {
		h.n.Add(-1)
		h.accepted, ok = accepted, true
		if !accepted && h.adm != nil {
			h.adm.Abort()
		}
	})
	return ok
}

// quicSocket is a UDP socket with its quic.Transport, shared by a listener
// and the connections it accepted. Closing the transport would end every
// connection, so the socket closes when its last user is done: a relay
// that stops accepting agents can still drain the sessions it has.
type quicSocket struct {
	udp  *net.UDPConn
	tr   *quic.Transport
	mu   sync.Mutex
	refs int
}

func newQUICSocket(udp *net.UDPConn, key *quic.StatelessResetKey) *quicSocket {
	return &quicSocket{udp: udp, tr: &quic.Transport{Conn: udp, StatelessResetKey: key}, refs: 1}
}

func (s *quicSocket) acquire() {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
}

func (s *quicSocket) release() {
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if last {
		s.tr.Close()
		s.udp.Close()
	}
}

type quicListener struct {
	ln     *quic.Listener
	sock   *quicSocket
	qconf  *quic.Config
	closed sync.Once
}

func (l *quicListener) Accept(ctx context.Context) (Conn, error) {
	for {
		c, err := l.ln.Accept(ctx)
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) {
				return nil, fmt.Errorf("%w: %w", net.ErrClosed, err)
			}
			return nil, err
		}
		var adm Admission
		if tok, ok := c.Context().Value(handshakeKey{}).(*handshakeToken); ok {
			if !tok.end(true) {
				// The connection failed on its way here, and its
				// admission was aborted.
				c.CloseWithError(quicCodeBusy, "relay busy")
				continue
			}
			adm = tok.adm
		}
		l.sock.acquire()
		return &quicLink{conn: c, sock: l.sock, qconf: l.qconf, adm: adm}, nil
	}
}

func (l *quicListener) Addr() net.Addr { return l.ln.Addr() }

func (l *quicListener) Close() error {
	var err error
	l.closed.Do(func() {
		err = l.ln.Close()
		l.sock.release()
	})
	return err
}

// quicLink is a QUIC connection before it becomes a session. Its
// handshake channel is the first bidirectional stream, opened by the agent.
type quicLink struct {
	client  bool
	raddr   *net.UDPAddr // client: where to dial
	tlsConf *tls.Config
	qconf   *quic.Config       // as the link was made with
	check   func(*net.UDPConn) // client: buffer check once the socket is set up

	// sock is the UDP socket: the client's own, or the listener's.
	sock *quicSocket
	adm  Admission   // relay: what the listener's Admit returned
	tr   *quicSocket // client only, until Handshake hands it to sock

	wrote atomic.Bool // something was written: Close lingers for it

	mu       sync.Mutex
	conn     *quic.Conn
	auth     *quic.Stream
	deadline time.Time
	closed   bool
}

var _ Conn = (*quicLink)(nil)

func (l *quicLink) Handshake(ctx context.Context) error {
	l.mu.Lock()
	dl := l.deadline
	l.mu.Unlock()
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	if l.client {
		return l.clientHandshake(ctx)
	}
	return l.serverHandshake(ctx)
}

func (l *quicLink) clientHandshake(ctx context.Context) error {
	l.mu.Lock()
	sock := l.tr
	l.tr, l.sock = nil, sock
	closed := l.closed
	l.mu.Unlock()
	if closed || sock == nil {
		return net.ErrClosed
	}
	c, err := sock.tr.Dial(ctx, l.raddr, l.tlsConf, l.qconf)
	if err != nil {
		var te *quic.TransportError
		if errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused {
			// The relay refused the handshake before it began (see
			// Admit and MaxHandshakes).
			err = fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return err
	}
	if l.check != nil {
		l.check(sock.udp)
	}
	if !l.setConn(c) {
		return net.ErrClosed
	}
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	l.setAuth(st)
	if _, err := st.Write([]byte{quicAuthMarker}); err != nil {
		return err
	}
	return nil
}

func (l *quicLink) serverHandshake(ctx context.Context) error {
	st, err := l.conn.AcceptStream(ctx)
	if err != nil {
		return err
	}
	l.setAuth(st)
	var b [1]byte
	if _, err := st.Read(b[:]); err != nil {
		return err
	}
	if b[0] != quicAuthMarker {
		return fmt.Errorf("%w: bad first byte %#x on the authentication stream", ErrMalformed, b[0])
	}
	return nil
}

func (l *quicLink) setConn(c *quic.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.CloseWithError(quicCodeClosed, "")
		return false
	}
	l.conn = c
	return true
}

func (l *quicLink) setAuth(st *quic.Stream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.auth = st
	if !l.deadline.IsZero() {
		_ = st.SetDeadline(l.deadline)
	}
}

func (l *quicLink) stream() (*quic.Stream, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.auth == nil {
		return nil, errors.New("QUIC link: handshake not done")
	}
	return l.auth, nil
}

func (l *quicLink) Read(p []byte) (int, error) {
	st, err := l.stream()
	if err != nil {
		return 0, err
	}
	n, err := st.Read(p)
	return n, quicWords(err)
}

// Admission is what Admit returned for the link (nil on the client, or
// without Admit).
func (l *quicLink) Admission() Admission { return l.adm }

// Refuse closes the link as refused before authentication: the agent reads
// ErrBusy.
func (l *quicLink) Refuse() {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	if c != nil {
		c.CloseWithError(quicCodeBusy, "relay busy")
	}
	l.Close()
}

func (l *quicLink) Write(p []byte) (int, error) {
	st, err := l.stream()
	if err != nil {
		return 0, err
	}
	l.wrote.Store(true)
	return st.Write(p)
}

func (l *quicLink) ConnectionState() tls.ConnectionState {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return tls.ConnectionState{}
	}
	return l.conn.ConnectionState().TLS
}

func (l *quicLink) SetDeadline(t time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deadline = t
	if l.auth != nil {
		return l.auth.SetDeadline(t)
	}
	return nil
}

func (l *quicLink) LocalAddr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.conn != nil:
		return l.conn.LocalAddr()
	case l.tr != nil:
		return l.tr.udp.LocalAddr()
	}
	return l.sock.udp.LocalAddr()
}

func (l *quicLink) RemoteAddr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return l.conn.RemoteAddr()
	}
	return l.raddr
}

func (l *quicLink) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	c, sock, tr := l.conn, l.sock, l.tr
	l.mu.Unlock()
	if c != nil {
		if l.wrote.Load() {
			closeConn(c)
		} else {
			c.CloseWithError(quicCodeClosed, "")
		}
	}
	if sock != nil {
		sock.release()
	}
	if tr != nil {
		tr.release()
	}
	return nil
}

// Mux ends the authentication stream and returns the connection as a
// Session. Of cfg only Log is used (for the client's congestion resets,
// see quicpath.go): the transport's Session applied at connect.
func (l *quicLink) Mux(cfg SessionConfig) (Session, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.conn == nil || l.auth == nil {
		return nil, errors.New("QUIC link: Mux before a complete handshake")
	}
	// Everything written so far (the last authentication message) is
	// still delivered; nothing more is read.
	l.auth.CancelRead(quicCodeAbort)
	_ = l.auth.Close()
	l.closed = true // the session owns conn and socket now
	period := heartbeatMax
	if l.qconf.KeepAlivePeriod > 0 {
		period = min(l.qconf.KeepAlivePeriod, heartbeatMax)
	}
	go heartbeat(l.conn, period)
	g := newStallGuard(l.qconf.InitialStreamReceiveWindow, l.qconf.MaxStreamReceiveWindow, l.qconf.MaxConnectionReceiveWindow)
	go g.run(l.conn.Context().Done())
	s := &quicSession{conn: l.conn, sock: l.sock, heard: newHeardClock(), guard: g, end: &endRecord{}}
	if l.client {
		// quic-go's Conn.LocalAddr and RemoteAddr race with its move
		// to another path on a client: the session answers from its own
		// copies, which the resetter updates.
		s.remote = l.conn.RemoteAddr()
		s.local.Store(&localAddr{l.conn.LocalAddr()})
		s.resetter = newPathResetter(l.conn, l.sock, cfg.Log)
		s.resetter.moved = func(a net.Addr) { s.local.Store(&localAddr{a}) }
		go s.resetter.run()
	}
	s.end.streams = s.NumStreams
	context.AfterFunc(l.conn.Context(), s.ended)
	return s, nil
}

// heartbeat sends a padded session datagram of flow 0 (no flow has that
// number) every period, both ways. QUIC's own keepalive PING makes a
// packet too small for a stateless reset (quic-go answers packets of more
// than 42 bytes only), so an idle agent would not learn of a relay restart
// before its idle timeout; this one does, within a period. It also keeps
// NAT mappings fresh, so a router that lost them learns them again at
// once; and what arrives tells each side that the other is there (see
// Session.SilentFor).
func heartbeat(c *quic.Conn, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	b := AppendFlowDatagram(nil, 0, make([]byte, heartbeatPad))
	for {
		select {
		case <-c.Context().Done():
			return
		case <-t.C:
			_ = c.SendDatagram(b)
		}
	}
}

// heartbeatPad makes the heartbeat's packet comfortably larger than the
// smallest one a stateless reset answers. heartbeatMax is the longest
// period between heartbeats: how long an idle agent may take to notice a
// restarted relay (a relay that comes back is used within about that),
// at the cost of one small packet (about 80 bytes on the wire) a second.
const (
	heartbeatPad = 40
	heartbeatMax = time.Second
)

type quicSession struct {
	conn    *quic.Conn
	sock    *quicSocket
	heard   *heardClock // datagrams and stream data received
	guard   *stallGuard
	streams atomic.Int64
	once    sync.Once
	end     *endRecord // why the session ended
	// resetter, on the client, resets congestion control when the
	// direction of traffic changes (see quicpath.go).
	resetter *pathResetter
	// On the client: the addresses (see Mux).
	local  atomic.Pointer[localAddr]
	remote net.Addr
}

type localAddr struct{ net.Addr }

// ended notes why the connection ended, unless this end closed it.
func (s *quicSession) ended() { s.end.note(context.Cause(s.conn.Context())) }

// EndCause is why the session ended; see Session.
func (s *quicSession) EndCause() EndCause {
	if s.conn.Context().Err() != nil {
		s.ended() // if the AfterFunc has not run yet
	}
	n, err := s.end.get()
	c := classifyEnd(err)
	c.Streams, c.RTT = n, s.conn.ConnectionStats().LatestRTT
	return c
}

// SilentFor is the time since a datagram (the peer's heartbeat, every
// second) or stream data last arrived; see Session.
func (s *quicSession) SilentFor() time.Duration { return s.heard.silentFor() }

var _ Session = (*quicSession)(nil)

func (s *quicSession) SendDatagram(b []byte) error {
	err := s.conn.SendDatagram(b)
	var tl *quic.DatagramTooLargeError
	if errors.As(err, &tl) {
		return fmt.Errorf("%w (%d bytes, path allows %d)", ErrDatagramTooLarge, len(b), tl.MaxDatagramPayloadSize)
	}
	return err
}

func (s *quicSession) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	b, err := s.conn.ReceiveDatagram(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, s.mapErr(err)
	}
	s.heard.touch()
	return b, nil
}

func (s *quicSession) wrap(st *quic.Stream) Stream {
	s.streams.Add(1)
	qs := &quicStream{st: st, heard: s.heard, guard: s.guard, local: s.LocalAddr(), remote: s.RemoteAddr()}
	qs.done = func() {
		s.guard.remove(qs)
		s.streams.Add(-1)
	}
	s.guard.add(qs)
	return qs
}

func (s *quicSession) mapErr(err error) error {
	err = quicWords(err)
	if s.conn.Context().Err() != nil && !errors.Is(err, ErrSessionClosed) {
		return fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	return err
}

// quicWords puts a QUIC connection close with one of homeport's codes in
// words: quic-go's own text ("Application error 0x0 (remote)") tells a
// user nothing. The error still wraps quic-go's.
func quicWords(err error) error {
	var ae *quic.ApplicationError
	if err == nil || !errors.As(err, &ae) {
		return err
	}
	var words error
	switch {
	case ae.ErrorCode == quicCodeClosed && ae.Remote:
		words = ErrPeerClosed
	case ae.ErrorCode == quicCodeClosed:
		words = ErrSessionClosed
	case ae.ErrorCode == quicCodeBusy && ae.Remote:
		words = ErrBusy
	default:
		return err
	}
	return &wordedError{words: words, err: err}
}

// wordedError is err, told as words.
type wordedError struct{ words, err error }

func (e *wordedError) Error() string   { return e.words.Error() }
func (e *wordedError) Unwrap() []error { return []error{e.words, e.err} }

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, s.mapErr(err)
	}
	return s.wrap(st), nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.AcceptStream(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, s.mapErr(err)
	}
	return s.wrap(st), nil
}

func (s *quicSession) Done() <-chan struct{} { return s.conn.Context().Done() }
func (s *quicSession) NumStreams() int       { return int(s.streams.Load()) }
func (s *quicSession) RTT() time.Duration    { return s.conn.ConnectionStats().SmoothedRTT }

func (s *quicSession) LocalAddr() net.Addr {
	if a := s.local.Load(); a != nil {
		return a.Addr
	}
	return s.conn.LocalAddr()
}

func (s *quicSession) RemoteAddr() net.Addr {
	if s.remote != nil {
		return s.remote
	}
	return s.conn.RemoteAddr()
}

// Close ends the session; unless it had ended already, this end closed it
// (closeConn waits a moment for the peer to close first: that is still
// this end's close).
func (s *quicSession) Close() error {
	if s.conn.Context().Err() != nil {
		s.ended()
	} else {
		s.end.note(errLocalClose)
	}
	s.once.Do(func() {
		closeConn(s.conn)
		s.sock.release()
	})
	return nil
}

// Lingering close: quic-go's CloseWithError drops stream data that is not
// sent yet, so a Reject or GoAway written just before closing could be
// lost. The receiver of such a final message closes the connection when it
// has read it; so the closer waits for that, a few round trips at most.
const (
	lingerMin = 50 * time.Millisecond
	lingerMax = time.Second
)

func closeConn(c *quic.Conn) {
	select {
	case <-c.Context().Done():
		return
	default:
	}
	d := min(max(4*c.ConnectionStats().SmoothedRTT, lingerMin), lingerMax)
	t := time.NewTimer(d)
	select {
	case <-c.Context().Done():
	case <-t.C:
	}
	t.Stop()
	c.CloseWithError(quicCodeClosed, "")
}

// quicStream adapts a QUIC stream to Stream. QUIC's Close is a half-close
// (FIN), which is our CloseWrite. Our Close ends both directions: reading
// stops at once (STOP_SENDING to the peer), and the write side ends with a
// FIN after the data already written, or with a reset when a Write is
// still in progress, since that can only be an abort (quic-go forbids
// closing a stream concurrently with a Write).
type quicStream struct {
	st            *quic.Stream
	heard         *heardClock
	guard         *stallGuard
	local, remote net.Addr
	done          func()

	// For the stall guard: bytes read, and the guard's time since the
	// reader left Read (0 while it is in Read, and after the end).
	nread    atomic.Uint64
	outSince atomic.Int64
	stalled  atomic.Bool                 // the guard reset the stream
	cut      atomic.Pointer[func(error)] // see OnCut

	peek [1]byte // for WaitRead, by the reader only

	wmu     sync.Mutex // held by Write and CloseWrite
	finSent bool       // under wmu
	closed  atomic.Bool
}

var _ Stream = (*quicStream)(nil)

func (s *quicStream) Read(p []byte) (int, error) {
	s.outSince.Store(0)
	n, err := s.st.Read(p)
	if n > 0 {
		s.heard.touch()
		s.nread.Add(uint64(n))
	}
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		s.outSince.Store(s.guard.now()) // until the next Read
	}
	return n, s.readErr(err)
}

// WaitRead waits with quic-go's Peek of one byte, which takes nothing. For
// the stall guard, the reader waits in Read meanwhile.
func (s *quicStream) WaitRead() error {
	s.outSince.Store(0)
	_, err := s.st.Peek(s.peek[:])
	return s.readErr(err)
}

// errQUICShrink: quic-go grows a stream's receive window and never
// shrinks it; the stall guard bounds what the windows hold together.
var errQUICShrink = fmt.Errorf("shrink a QUIC stream's receive window: %w", ErrNotSupported)

// Shrink fails with ErrNotSupported; see errQUICShrink.
func (s *quicStream) Shrink() error { return errQUICShrink }

func (s *quicStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() || s.finSent {
		return 0, s.mapErr(net.ErrClosed)
	}
	n, err := s.st.Write(p)
	return n, s.mapErr(err)
}

// readErr is mapErr for a read, which also tells the peer's reset
// (ErrStreamReset) from an end of stream.
func (s *quicStream) readErr(err error) error {
	if err == nil {
		return nil // before se, which escapes: no allocation per Read
	}
	err = s.mapErr(err)
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return &wordedError{words: ErrStreamReset, err: err}
	}
	return err
}

// mapErr tells the stall guard's reset from others, and puts the
// session's close in words.
func (s *quicStream) mapErr(err error) error {
	if err != nil && s.stalled.Load() {
		return ErrStalled
	}
	return quicWords(err)
}

// OnCut sets what a reset by the stall guard calls: a splice ends, and
// resets both its ends. Without it the guard resets the stream alone.
func (s *quicStream) OnCut(f func(error)) { s.cut.Store(&f) }

// cutStalled is the stall guard's reset.
func (s *quicStream) cutStalled() {
	s.stalled.Store(true)
	if f := s.cut.Load(); f != nil {
		(*f)(ErrStalled)
		return
	}
	s.Abort()
}

func (s *quicStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() || s.finSent {
		return nil
	}
	s.finSent = true
	return s.st.Close()
}

func (s *quicStream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	defer s.done()
	s.st.CancelRead(quicCodeAbort)
	if !s.wmu.TryLock() {
		s.st.CancelWrite(quicCodeAbort)
		return nil
	}
	defer s.wmu.Unlock()
	if s.finSent {
		return nil
	}
	s.finSent = true
	err := s.st.Close()
	var se *quic.StreamError
	if err != nil && errors.As(context.Cause(s.st.Context()), &se) && se.Remote {
		// The peer stopped reading first (STOP_SENDING, as its own
		// Close sends): there was nothing left to end, as when a TCP
		// connection is closed after its peer.
		err = nil
	}
	return err
}

// Abort resets both directions: the peer sees an error, not an end of
// stream, so a cut transfer never looks complete.
func (s *quicStream) Abort() {
	if s.closed.Swap(true) {
		return
	}
	defer s.done()
	s.st.CancelRead(quicCodeAbort)
	s.st.CancelWrite(quicCodeAbort)
}

func (s *quicStream) LocalAddr() net.Addr                { return s.local }
func (s *quicStream) RemoteAddr() net.Addr               { return s.remote }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

// StatelessResetKey derives the relay's QUIC stateless reset key from its
// private key, so that it survives restarts without a file of its own and
// changes when the key does.
func StatelessResetKey(cert tls.Certificate) (*quic.StatelessResetKey, error) {
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	m := hmac.New(sha256.New, der)
	m.Write([]byte("homeport quic stateless reset key v1"))
	var k quic.StatelessResetKey
	copy(k[:], m.Sum(nil))
	return &k, nil
}
