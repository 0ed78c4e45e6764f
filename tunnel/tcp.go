package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
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

var _ Conn = (*tlsLink)(nil)

// Handshake runs the TLS handshake. A relay that refuses the link (see
// Conn.Refuse) closes it before the handshake: the client reads ErrBusy.
func (c *tlsLink) Handshake(ctx context.Context) error {
	err := c.HandshakeContext(ctx)
	if c.client && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		err = fmt.Errorf("%w (or not a homeport relay): closed before the TLS handshake: %w", ErrBusy, err)
	}
	return err
}

// Refuse closes the link before the TLS handshake: the agent reads ErrBusy
// (see Handshake).
func (c *tlsLink) Refuse() { c.Close() }

// Admission is nil: a TCP link is admitted after Accept.
func (c *tlsLink) Admission() Admission { return nil }

// Mux runs the TCP transport's layer over yamux on the link (see
// newYamuxSession); the dialing side is yamux's client.
func (c *tlsLink) Mux(cfg SessionConfig) (Session, error) {
	limitUnsent(c.raw.Conn)
	s, err := newYamuxSession(c.Conn, c.raw, c.client, cfg)
	if err != nil {
		return nil, err
	}
	return s, nil
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
