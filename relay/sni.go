package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// The HTTPS port of web tunnels routes each TLS connection by the server
// name (SNI) of its ClientHello: an https tunnel's connections pass
// through untouched, an http tunnel's are terminated here (with
// Certificates) and served as HTTP.
//
// The ClientHello is read with crypto/tls's own parser, through a
// connection that records the bytes it reads and writes nothing
// (peekClientHello), rather than with a parser of our own: the standard
// library's handles fragmented records and every extension layout, is
// fuzzed and maintained upstream, and its handshake stops at the first
// callback that sees the parsed hello. The recorded bytes are then played
// back first to whoever takes the connection. Reading is bounded by
// maxHelloBytes and by the caller's deadline.

// maxHelloBytes bounds what is read before the ClientHello is parsed:
// crypto/tls accepts handshake messages up to 64 KiB, in records of
// 16 KiB plus their headers.
const maxHelloBytes = 64<<10 + 5*(5+256)

// helloTimeout bounds the time from accept to the parsed ClientHello.
const helloTimeout = 10 * time.Second

// errHelloRead stops crypto/tls once it has parsed the ClientHello.
var errHelloRead = errors.New("client hello read")

// errHelloTooLarge: more than maxHelloBytes came before a ClientHello.
var errHelloTooLarge = errors.New("client hello too large")

// clientHello is what routing needs of a ClientHello.
type clientHello struct {
	ServerName string
	ALPN       []string
}

// recorder is the connection crypto/tls parses a ClientHello from: it
// reads from r, keeping every byte, and discards what is written (an
// alert), so the visitor sees nothing of the parse.
type recorder struct {
	net.Conn // for the addresses; never read, written or closed
	r        io.Reader
	buf      bytes.Buffer
}

func (c *recorder) Read(p []byte) (int, error) {
	if left := maxHelloBytes - c.buf.Len(); left <= 0 {
		return 0, errHelloTooLarge
	} else if len(p) > left {
		p = p[:left]
	}
	n, err := c.r.Read(p)
	c.buf.Write(p[:n])
	return n, err
}

func (c *recorder) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recorder) Close() error                     { return nil }
func (c *recorder) SetDeadline(time.Time) error      { return nil }
func (c *recorder) SetReadDeadline(time.Time) error  { return nil }
func (c *recorder) SetWriteDeadline(time.Time) error { return nil }

// peekClientHello reads the ClientHello from r (whose addresses c gives)
// and returns it with every byte read, to be played back.
func peekClientHello(c net.Conn, r io.Reader) (clientHello, []byte, error) {
	rec := &recorder{Conn: c, r: r}
	var hello clientHello
	var got bool
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello, got = clientHello{ServerName: h.ServerName, ALPN: slices.Clone(h.SupportedProtos)}, true
		return nil, errHelloRead
	}}).Handshake()
	if !got {
		if err == nil {
			err = errors.New("handshake ended without a ClientHello")
		}
		return clientHello{}, nil, fmt.Errorf("no TLS ClientHello: %w", err)
	}
	return hello, rec.buf.Bytes(), nil
}

// peekedConn plays back the bytes read for the ClientHello, then reads
// the connection on.
type peekedConn struct {
	*webConn
	head []byte
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.webConn.Read(p)
}

// acceptTLS accepts the HTTPS port's connections until it closes.
func (s *Server) acceptTLS(ctx context.Context, g *visitorGuard, tlsLn *chanListener) {
	var delay time.Duration
	for {
		c, err := s.httpsLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			delay = nextAcceptDelay(delay)
			s.log.Warn("accept web visitor", "port", "https port", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		wc := s.admitWeb(c.(*net.TCPConn), g, "https port")
		if wc == nil {
			continue
		}
		s.visitors.Add(1)
		go func() {
			defer s.visitors.Done()
			s.serveTLSConn(wc, tlsLn)
		}()
	}
}

// serveTLSConn routes one connection of the HTTPS port by its SNI.
func (s *Server) serveTLSConn(c *webConn, tlsLn *chanListener) {
	_ = c.SetDeadline(time.Now().Add(helloTimeout))
	hello, head, err := peekClientHello(c, c.TCPConn)
	if err != nil {
		c.Close()
		s.log.Debug("web visitor sent no TLS ClientHello", "visitor", c.state.remote, "err", err)
		return
	}
	var t *webTunnel
	if host, err := config.NormalizeHost(hello.ServerName, false, false); err == nil {
		t, _ = s.lookupWeb(host)
	}
	if t == nil || t.proto == tunnel.ProtoHTTP && s.certs == nil {
		// Unknown name, or none: nothing was asked of anyone.
		_ = c.SetLinger(0)
		c.Close()
		s.log.Debug("web visitor asked for a name not served", "visitor", c.state.remote, "sni", hello.ServerName)
		return
	}
	if ok, why, banned := c.state.admit(t); !ok {
		_ = c.SetLinger(0)
		c.Close()
		t.refused(c.state.remote, why, banned)
		return
	}
	pc := &peekedConn{webConn: c, head: head}
	if t.proto == tunnel.ProtoHTTPS {
		_ = c.SetDeadline(time.Time{})
		t.passThrough(pc)
		return
	}
	tc := tls.Server(pc, s.certs.TLSConfig())
	if slices.Contains(hello.ALPN, "acme-tls/1") {
		// A TLS-ALPN-01 challenge: the certificate manager answers it in
		// the handshake, and no request follows.
		ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		tc.Close()
		s.log.Debug("ACME TLS-ALPN challenge answered", "host", t.host, "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	tlsLn.hand(tc)
}

// passThrough splices a TLS connection of an https tunnel, its
// ClientHello first, to a stream to the agent.
func (t *webTunnel) passThrough(c *peekedConn) {
	as := t.owner
	start := time.Now()
	ctx := as.srv.visitCtx
	st, err := t.dialAgent(ctx, c.state.remote, c.state.local)
	if err != nil {
		c.Close()
		as.log.Warn("web visitor refused", "tunnel", t.name, "host", t.host, "visitor", c.state.remote, "err", err)
		return
	}
	t.stats.visitors.Add(1)
	t.stats.accepted.Add(1)
	in, out, err := tunnel.SpliceCounted(ctx, c, st, &t.stats.bytesIn, &t.stats.bytesOut)
	t.stats.visitors.Add(-1)
	level := slog.LevelDebug
	if as.srv.conf().AccessLog {
		level = slog.LevelInfo
	}
	as.log.Log(context.Background(), level, "visitor connection", "tunnel", t.name, "host", t.host, "visitor", c.state.remote,
		"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond), "err", err)
}
