package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// TCPTransport carries sessions over TCP + TLS 1.3 + yamux.
type TCPTransport struct{}

var _ Transport = TCPTransport{}

// tcpKeepAlive is the kernel keepalive on the TCP link, a second line
// behind the session's own pings.
const tcpKeepAlive = 15 * time.Second

// Dial connects to a relay over TCP. The TLS handshake runs in Handshake.
func (TCPTransport) Dial(ctx context.Context, addr string, conf *tls.Config) (Conn, error) {
	d := net.Dialer{KeepAlive: tcpKeepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	bc := &batchConn{Conn: raw}
	return &tlsLink{Conn: tls.Client(bc, conf), raw: bc, client: true}, nil
}

// Listen accepts agents on a TCP address.
func (TCPTransport) Listen(addr string, conf *tls.Config) (Listener, error) {
	lc := net.ListenConfig{KeepAlive: tcpKeepAlive}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tcpListener{l: l, conf: conf}, nil
}

type tcpListener struct {
	l    net.Listener
	conf *tls.Config
}

// Accept returns the next link. Accept does not honour ctx while blocked;
// Close unblocks it.
func (l *tcpListener) Accept(ctx context.Context) (Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := l.l.Accept()
	if err != nil {
		return nil, err
	}
	bc := &batchConn{Conn: raw}
	return &tlsLink{Conn: tls.Server(bc, l.conf), raw: bc}, nil
}

func (l *tcpListener) Addr() net.Addr { return l.l.Addr() }
func (l *tcpListener) Close() error   { return l.l.Close() }

// tlsLink is a TLS connection before and while it becomes a yamux session.
type tlsLink struct {
	*tls.Conn
	raw    *batchConn // the TCP connection under TLS
	client bool
}

// Handshake runs the TLS handshake. A relay that refuses the link (see
// Refuse) closes it before the handshake: the client reads ErrBusy.
func (c *tlsLink) Handshake(ctx context.Context) error {
	err := c.HandshakeContext(ctx)
	if c.client && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		err = fmt.Errorf("%w (or not a homeport relay): closed before the TLS handshake: %w", ErrBusy, err)
	}
	return err
}

func (c *tlsLink) Mux(cfg SessionConfig) (Session, error) {
	cfg = normalizeSessionConfig(cfg)
	yc := yamuxConfig(cfg)
	var s *yamux.Session
	var err error
	heard := newHeardClock()
	ys := &yamuxSession{heard: heard, end: &endRecord{}, idle: idleTimeout(cfg)}
	ys.end.streams = ys.numStreams
	wins := newRecvWindows(cfg)
	sends := newSendWindows()
	rxs := newRxTable()
	link := &linkConn{Conn: c.Conn, heard: heard, end: ys.end}
	fr := &frameReader{Conn: link, sends: sends, rxs: rxs, end: ys.end}
	conn := &frameWriter{Conn: fr, raw: c.raw, wins: wins, sends: sends, rxs: rxs}
	if c.client {
		s, err = yamux.Client(conn, yc)
	} else {
		s, err = yamux.Server(conn, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	ys.s, ys.fw, ys.fr, ys.sends, ys.rxs = s, conn, fr, sends, rxs
	ys.ready.Store(true)
	// The agent pings every second: what it hears back tells it early
	// that the link went quiet (see SilentFor), and its own packets keep
	// the home router's NAT mapping alive. The relay pings less often.
	// Each answer measures the round trip for the receive windows. These
	// pings are the keepalive too (see watch): both ping at least every
	// keepalive interval.
	period := min(cfg.KeepAlive, heartbeatMax)
	if !c.client {
		period = min(cfg.KeepAlive, relayPingPeriod)
	}
	go ys.heartbeat(period)
	go ys.watch()
	return ys, nil
}

// idleTimeout is how long a session may hear nothing from its peer
// before it is declared dead, on both transports.
func idleTimeout(cfg SessionConfig) time.Duration { return cfg.KeepAlive + cfg.KeepAliveTimeout }

// heardClock remembers when the peer was last heard from.
type heardClock struct {
	since time.Time    // monotonic base of last
	last  atomic.Int64 // nanoseconds after since
}

func newHeardClock() *heardClock { return &heardClock{since: time.Now()} }

func (c *heardClock) touch() { c.last.Store(int64(time.Since(c.since))) }

// silentFor is the time since the peer was last heard from.
func (c *heardClock) silentFor() time.Duration {
	return time.Since(c.since) - time.Duration(c.last.Load())
}

// linkConn is the link under yamux and this package's frames: it notes
// when it last delivered bytes, and why it failed first (see endRecord).
type linkConn struct {
	net.Conn
	heard *heardClock
	end   *endRecord
}

func (c *linkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard.touch()
	}
	if err != nil {
		c.end.noteLink("read", err)
	}
	return n, err
}

func (c *linkConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.end.noteLink("write", err)
	}
	return n, err
}

// Close is called by yamux when the session ends; when nothing else said
// why by then, yamux ended it on its own.
func (c *linkConn) Close() error {
	c.end.note(errMuxClosed)
	return c.Conn.Close()
}

// yamuxConfig is the yamux configuration for cfg, normalized.
func yamuxConfig(cfg SessionConfig) *yamux.Config {
	return &yamux.Config{
		AcceptBacklog: cfg.AcceptBacklog,
		// Not yamux's keepalive: its ping's answer waits behind all the
		// data the peer has queued on the link, so on a slow link it
		// declares dead a session whose data is still arriving (see
		// yamuxSession.watch, which replaces it).
		EnableKeepAlive:   false,
		KeepAliveInterval: cfg.KeepAlive,
		// How long one of yamux's frames (a ping, a stream's opening or
		// end, a small write) may wait to be written. It fails only that
		// frame's caller, and must not fail on a link that is slow but
		// alive: the idle timeout, which ends a link that is not.
		ConnectionWriteTimeout: idleTimeout(cfg),
		// recvWindows grants the credit (at most the stream window),
		// and the data never reaches yamux (see streamRx); what yamux
		// would grant on its own is rewritten.
		MaxStreamWindowSize: cfg.StreamWindow,
		// A stream whose peer never acknowledges it within this time
		// means the peer is stuck: yamux then ends the session.
		StreamOpenTimeout: 30 * time.Second,
		// No close timeout: a half-closed stream may legitimately carry
		// data the other way for hours. Splice bounds a stalled peer.
		StreamCloseTimeout: 0,
		Logger:             log.New(yamuxLog{cfg.Log}, "", 0),
	}
}
