// Package tunnel holds what the relay and the agent share: the wire
// protocol (frames, authentication), the Transport/Session/Stream
// abstraction over TCP+TLS+yamux, TLS identity and pinning, and Splice.
//
// A connection between agent and relay goes through three steps:
//
//  1. Transport: an encrypted link (TLS 1.3 over TCP) is set up; the agent
//     verifies the relay by its pinned public key or a CA.
//  2. Authentication: on that link, before any multiplexer exists, the relay
//     challenges the agent to prove it knows the token (AuthenticateAgent,
//     Authenticate).
//  3. Session: the link becomes a multiplexed Session; the agent opens one
//     control stream, and the relay opens one stream per visitor.
//
// Conn, Session and Stream are the whole contract of a transport: the
// TCP transport (tcp.go, yamux*.go) and QUIC (quic.go) implement every
// method, and the conformance suite (conformance_test.go) runs each over
// both. Nothing is found by type assertion. What a transport cannot do
// (session datagrams over TCP, giving back a QUIC stream's window) fails
// with an error that wraps ErrNotSupported, and callers fall back. A
// wrapper of a stream embeds it, so that what it does not change passes
// through. Settings reach a transport once: the SessionConfig given to
// Mux (TCP) or to QUICTransport (QUIC, whose settings apply when the
// connection is made).
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"
)

// Transport creates encrypted links between agent and relay.
type Transport interface {
	// Dial connects to a relay. The TLS handshake has not run yet.
	Dial(ctx context.Context, addr string, conf *tls.Config) (Conn, error)
	// Listen accepts agents. Accepted links have not run their TLS
	// handshake, so the accept loop never blocks on a slow peer.
	Listen(addr string, conf *tls.Config) (Listener, error)
}

// Listener accepts links from agents.
type Listener interface {
	Accept(ctx context.Context) (Conn, error)
	Addr() net.Addr
	Close() error
}

// Conn is an encrypted link whose peer is not authenticated yet. Reads and
// writes go over the link's handshake channel, used for authentication
// only; Mux then turns the link into a Session.
type Conn interface {
	io.ReadWriter
	// Handshake runs the TLS handshake (and, for the client, verifies the
	// relay). It is bounded by the deadline set with SetDeadline and by ctx.
	Handshake(ctx context.Context) error
	// ConnectionState is valid after Handshake.
	ConnectionState() tls.ConnectionState
	SetDeadline(t time.Time) error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	Close() error
	// Refuse closes a link that the relay will not serve, telling the
	// agent it is busy (ErrBusy): QUIC with an application close code,
	// TCP by closing before the TLS handshake, which the agent reads as
	// busy too.
	Refuse()
	// Admission is what the listener admitted the link with before its
	// handshake (see QUICTransport.Admit); nil where it admitted none (a
	// TCP link is admitted after Accept).
	Admission() Admission
	// Mux turns the authenticated link into a multiplexed session. The
	// dialing side is the client.
	Mux(cfg SessionConfig) (Session, error)
}

// Admission is what a listener admitted a link with before its handshake.
type Admission interface {
	// Abort ends an admission whose handshake failed before Accept.
	Abort()
}

// Session is one authenticated, multiplexed link between agent and relay.
//
// Every method is part of every transport. Where a transport cannot do
// what one asks (session datagrams over TCP), the method fails at once
// with an error that wraps ErrNotSupported, and the caller falls back
// (a UDP flow's datagrams go on its stream).
type Session interface {
	// OpenStream opens a new stream to the peer.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for a stream opened by the peer.
	AcceptStream(ctx context.Context) (Stream, error)
	// Done is closed when the session has ended, for whatever reason.
	Done() <-chan struct{}
	// Close ends the session and every stream in it.
	Close() error
	// EndCause is why the session ended; valid once Done is closed.
	EndCause() EndCause
	// SilentFor is how long the peer has sent nothing at all. A client
	// session hears from the relay at least every second while the link
	// works (the relay answers its pings over TCP, and sends its own
	// heartbeat over QUIC), so a longer silence means the link is in
	// trouble well before the keepalive declares it dead.
	SilentFor() time.Duration
	// SendDatagram sends b as one unreliable datagram, or fails with
	// ErrDatagramTooLarge where it does not fit on the path, or with
	// ErrNotSupported where the session carries no datagrams (TCP).
	SendDatagram(b []byte) error
	// ReceiveDatagram waits for the next datagram; it fails at once with
	// ErrNotSupported where the session carries none.
	ReceiveDatagram(ctx context.Context) ([]byte, error)
	// NumStreams is the number of open streams.
	NumStreams() int
	// RTT is the session's smoothed round-trip time; 0 until measured.
	RTT() time.Duration
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// Stream is one bidirectional byte stream within a Session. Every method
// is part of every transport; one the transport cannot carry out fails
// with an error that wraps ErrNotSupported. A wrapper of a stream (see
// CutAware) embeds it, so that what it does not change passes through.
type Stream interface {
	net.Conn
	// CloseWrite sends EOF to the peer; reading goes on.
	CloseWrite() error
	// Abort resets the stream both ways: the peer reads ErrStreamReset,
	// never an end of stream, so that a cut transfer does not look
	// complete. Close still follows, as for every stream.
	Abort()
	// WaitRead waits until the stream has data to read or has ended,
	// without a buffer to read into, so that a reader that mostly waits
	// holds none (see Splice). An error it returns comes again from the
	// Read that follows; the read deadline applies.
	WaitRead() error
	// Shrink gives back what the stream holds for a reader that drained
	// it and has read nothing since shrinkAfter: the TCP transport's
	// grown receive window (see recvWindows). It fails with
	// ErrNotSupported where the transport keeps nothing it can give back
	// (QUIC: quic-go's windows only grow; its stall guard bounds them).
	Shrink() error
	// OnCut sets what is called, with the reason, when the transport
	// itself cuts the stream while the session lives (QUIC's stall
	// guard, see ErrStalled), in place of a plain reset: Splice then
	// ends and resets both its ends. A transport that never cuts a
	// stream (TCP, whose streams share the session by receive windows
	// alone) never calls it.
	OnCut(f func(reason error))
}

// SessionConfig tunes a Session.
type SessionConfig struct {
	// KeepAlive is the longest interval between pings.
	KeepAlive time.Duration
	// KeepAliveTimeout: a session from which nothing at all was heard for
	// KeepAlive + KeepAliveTimeout is declared dead (see idleTimeout).
	KeepAliveTimeout time.Duration
	// StreamWindow is the per-stream receive window in bytes.
	StreamWindow uint32
	// AcceptBacklog is the number of streams that may wait for
	// AcceptStream, and of opened streams not yet acknowledged.
	AcceptBacklog int
	// Log receives what the multiplexer itself says (yamux's log, for the
	// TCP transport); nil: nothing.
	Log *slog.Logger
}

// DefaultSessionConfig returns the settings used when none are given.
func DefaultSessionConfig() SessionConfig {
	return SessionConfig{
		KeepAlive:        10 * time.Second,
		KeepAliveTimeout: 10 * time.Second,
		StreamWindow:     16 << 20,
		AcceptBacklog:    1024,
	}
}

// normalizeSessionConfig replaces unset or unusable values with defaults.
func normalizeSessionConfig(cfg SessionConfig) SessionConfig {
	def := DefaultSessionConfig()
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = def.KeepAlive
	}
	if cfg.KeepAliveTimeout <= 0 {
		cfg.KeepAliveTimeout = def.KeepAliveTimeout
	}
	if cfg.StreamWindow < 256<<10 {
		cfg.StreamWindow = def.StreamWindow
	}
	if cfg.AcceptBacklog <= 0 {
		cfg.AcceptBacklog = def.AcceptBacklog
	}
	return cfg
}

// ALPN is the TLS application protocol of homeport's control links.
const ALPN = "homeport/1"

// ErrBusy is read by an agent whose link the relay refused before
// authentication: too many logins pending, from everywhere or from the
// agent's address. Nothing is wrong with the agent; it tries again soon.
var ErrBusy = errors.New("relay busy")

// ErrNotSupported is wrapped by the error of a method that the transport
// cannot carry out (session datagrams over TCP). Callers check it with
// errors.Is and fall back.
var ErrNotSupported = errors.New("not supported by this transport")

// ErrStreamReset is read from a stream that the peer reset (Abort): the
// data was cut, not complete.
var ErrStreamReset = errors.New("stream reset by the peer")

// ErrSessionClosed is returned by OpenStream and AcceptStream on a session
// that has ended.
var ErrSessionClosed = errors.New("session closed")

// ErrPeerClosed is read from a session, or a stream of it, that the peer
// closed on purpose (an agent or relay that stops), not on a failure.
// (QUIC: the connection close with code 0.)
var ErrPeerClosed = errors.New("peer closed the session")
