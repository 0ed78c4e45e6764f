package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/homeport/homeport/internal/leak"
)

// linkProxy sits on the TCP link between a client and a listener: it can
// slow the client's bytes to the server down (a slow link with a deep
// queue, as a congested path has), stop forwarding either way (a link
// that went dark), or reset both connections.
type linkProxy struct {
	ln     net.Listener
	target string
	// rate is the pace, in bytes a second, of the client's bytes to the
	// server; 0: as fast as they come.
	rate int

	dark    atomic.Bool   // forward nothing
	resets  atomic.Bool   // reset: no FIN on the way
	light   chan struct{} // closed when the proxy ends
	mu      sync.Mutex
	conns   []*net.TCPConn
	wg      sync.WaitGroup
	closing sync.Once
}

func newLinkProxy(t testing.TB, target string, rate int) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, target: target, rate: rate, light: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *linkProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c.(*net.TCPConn), s.(*net.TCPConn))
		p.mu.Unlock()
		p.wg.Go(func() { p.forward(s.(*net.TCPConn), c, p.rate) })
		p.wg.Go(func() { p.forward(c.(*net.TCPConn), s, 0) })
	}
}

// forward copies from to to, at rate bytes a second (0: no limit). A slow
// link queues: what it cannot send yet is read all the same and waits.
func (p *linkProxy) forward(to *net.TCPConn, from net.Conn, rate int) {
	defer func() {
		if !p.resets.Load() {
			to.CloseWrite()
		}
	}()
	// The link's queue: 16 reads of at most 32 KiB.
	q := make(chan []byte, 16)
	go func() {
		defer close(q)
		for {
			if !p.waitLight() {
				return
			}
			b := make([]byte, 32<<10)
			n, err := from.Read(b)
			if n > 0 {
				q <- b[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	start, sent := time.Now(), 0
	for b := range q {
		for len(b) > 0 {
			if !p.waitLight() {
				return
			}
			n := len(b)
			if rate > 0 {
				n = min(n, 4<<10)
				// The link's pace: the bytes sent so far are due at
				// sent/rate after the start.
				if d := time.Until(start.Add(time.Duration(sent) * time.Second / time.Duration(rate))); d > 0 {
					time.Sleep(d)
				}
			}
			if _, err := to.Write(b[:n]); err != nil {
				return
			}
			b, sent = b[n:], sent+n
		}
	}
}

// waitLight waits while the link is dark; false once the proxy ends.
func (p *linkProxy) waitLight() bool {
	for p.dark.Load() {
		select {
		case <-p.light:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case <-p.light:
		return false
	default:
		return true
	}
}

// reset ends both connections with a TCP reset.
func (p *linkProxy) reset() {
	p.resets.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.SetLinger(0)
		c.Close()
	}
}

func (p *linkProxy) close() {
	p.closing.Do(func() {
		close(p.light)
		p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

// proxiedPair is sessionPair over TCP through a linkProxy at rate, with
// cfg on both ends.
func proxiedPair(t *testing.T, rate int, cfg SessionConfig) (client, server Session, p *linkProxy) {
	t.Helper()
	cert, fp := testCert(t)
	tr := TCPTransport{}
	ln, err := tr.Listen("127.0.0.1:0", ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p = newLinkProxy(t, ln.Addr().String(), rate)
	conf, err := PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		s   Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		if err := c.Handshake(ctx); err != nil {
			c.Close()
			ch <- res{nil, err}
			return
		}
		s, err := c.Mux(cfg)
		ch <- res{s, err}
	}()
	c, err := tr.Dial(ctx, p.ln.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	if client, err = c.Mux(cfg); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	server = r.s
	t.Cleanup(func() { client.Close(); server.Close(); p.close() })
	return client, server, p
}

// shortKeepAlive is a session configuration that gives up on a silent
// peer within a second and a half.
func shortKeepAlive() SessionConfig {
	cfg := DefaultSessionConfig()
	cfg.KeepAlive = 500 * time.Millisecond
	cfg.KeepAliveTimeout = time.Second
	return cfg
}

// TestSlowLinkStaysUp: a session whose link is slow, with a queue of
// seconds' worth of data (a congested path), carries a transfer to its
// end although every ping's answer waits behind that queue for far longer
// than the keepalive timeout: data keeps arriving, so the peer is alive.
// (With yamux's keepalive, the receiving end declared the session dead
// within a few seconds, mid-transfer.)
func TestSlowLinkStaysUp(t *testing.T) {
	leak.Check(t)
	const (
		rate = 128 << 10 // bytes a second: the proxy's queue takes up to 4 s
		size = 1 << 20
	)
	cfg := shortKeepAlive()
	client, server, _ := proxiedPair(t, rate, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accepted := make(chan Stream, 1)
	go func() {
		st, err := server.AcceptStream(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- st
	}()
	st, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := st.Write(make([]byte, size))
		if err == nil {
			err = st.CloseWrite()
		}
		wrote <- err
	}()
	sst := <-accepted
	if sst == nil {
		t.FailNow()
	}
	defer sst.Close()
	n, err := io.Copy(io.Discard, sst)
	if err != nil || n != size {
		t.Fatalf("the server read %d of %d bytes: %v; the server's session: %v; the client's: %v",
			n, size, err, endedWith(server), endedWith(client))
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	for _, s := range []Session{client, server} {
		if isClosed(s.Done()) {
			t.Fatalf("a session ended: %v", s.EndCause())
		}
	}
}

// endedWith says why s ended, or that it has not.
func endedWith(s Session) string {
	if !isClosed(s.Done()) {
		return "up"
	}
	return s.EndCause().String()
}

// waitEnd waits for s to end and returns why.
func waitEnd(t *testing.T, s Session, what string) EndCause {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the session did not end", what)
	}
	return s.EndCause()
}

// TestEndCauseTCP: each way a TCP session ends is told apart, at both ends,
// on real sessions over a real link.
func TestEndCauseTCP(t *testing.T) {
	type want struct {
		code   EndCode
		errnos []syscall.Errno // any of these; none: no errno
		// or: another code this end may see first (a reset that a
		// ping's write meets before the blocked read wakes)
		or EndCode
	}
	for _, c := range []struct {
		name           string
		end            func(t *testing.T, client, server Session, p *linkProxy)
		client, server want
	}{
		{"client closes", func(t *testing.T, client, _ Session, _ *linkProxy) { client.Close() },
			want{code: EndClosed}, want{code: EndPeerClosed}},
		{"server closes", func(t *testing.T, _, server Session, _ *linkProxy) { server.Close() },
			want{code: EndPeerClosed}, want{code: EndClosed}},
		{"reset", func(t *testing.T, _, _ Session, p *linkProxy) { p.reset() },
			want{EndReadError, []syscall.Errno{syscall.ECONNRESET, syscall.EPIPE}, EndWriteError},
			want{EndReadError, []syscall.Errno{syscall.ECONNRESET, syscall.EPIPE}, EndWriteError}},
		{"link dark", func(t *testing.T, _, _ Session, p *linkProxy) { p.dark.Store(true) },
			want{code: EndKeepAliveTimeout}, want{code: EndKeepAliveTimeout}},
	} {
		t.Run(c.name, func(t *testing.T) {
			leak.Check(t)
			client, server, p := proxiedPair(t, 0, shortKeepAlive())
			// One open stream: the end cuts it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := client.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			sst, err := server.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer sst.Close()
			if _, err := io.ReadFull(sst, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			c.end(t, client, server, p)
			for _, end := range []struct {
				what string
				s    Session
				want want
			}{{"client", client, c.client}, {"server", server, c.server}} {
				got := waitEnd(t, end.s, end.what)
				t.Logf("%s: %v", end.what, EndLog("", "", 0, got, 0))
				if got.Code != end.want.code && (end.want.or == "" || got.Code != end.want.or) {
					t.Errorf("%s: ended with %q (%s), want %q", end.what, got.Code, got, end.want.code)
				}
				if got.Streams != 1 {
					t.Errorf("%s: %d streams cut, want 1", end.what, got.Streams)
				}
				if len(end.want.errnos) == 0 && got.Errno != 0 || len(end.want.errnos) > 0 && !hasErrno(end.want.errnos, got.Errno) {
					t.Errorf("%s: errno %v, want one of %v", end.what, got.Errno, end.want.errnos)
				}
				if got.Code == EndKeepAliveTimeout && got.Silent < idleTimeout(shortKeepAlive()) {
					t.Errorf("%s: timed out after %v of silence, before the idle timeout", end.what, got.Silent)
				}
			}
		})
	}
}

func hasErrno(es []syscall.Errno, e syscall.Errno) bool {
	for _, x := range es {
		if x == e {
			return true
		}
	}
	return false
}

// TestEndCauseProtocolError: a frame of another yamux version ends the
// session as a protocol error, saying which.
func TestEndCauseProtocolError(t *testing.T) {
	c, s := pinnedPair(t, TCPTransport{})
	sess, err := c.Mux(DefaultSessionConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := s.Write([]byte{7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	got := waitEnd(t, sess, "client")
	if got.Code != EndProtocolError || got.String() != "protocol error: invalid protocol version: 7" {
		t.Fatalf("ended with %q: %s", got.Code, got)
	}
}

// TestEndCauseQUIC: each way a QUIC session ends is told apart.
func TestEndCauseQUIC(t *testing.T) {
	for _, c := range []struct {
		name           string
		end            func(client, server *quicSession)
		client, server EndCode
		serverErr      func(error) bool
	}{
		{"client closes", func(client, _ *quicSession) { client.Close() }, EndClosed, EndPeerClosed, nil},
		{"server closes", func(_, server *quicSession) { server.Close() }, EndPeerClosed, EndClosed, nil},
		{"application error", func(client, _ *quicSession) { client.conn.CloseWithError(7, "seven") }, EndProtocolError, EndProtocolError,
			func(err error) bool {
				var ae *quic.ApplicationError
				return errors.As(err, &ae) && ae.ErrorCode == 7 && ae.Remote
			}},
		// The client's socket goes away without a word: the server hears
		// nothing more, and times out.
		{"client gone", func(client, _ *quicSession) { client.sock.udp.Close() }, "", EndKeepAliveTimeout,
			func(err error) bool {
				var it *quic.IdleTimeoutError
				return errors.As(err, &it)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			leak.Check(t)
			tr := QUICTransport{Session: shortKeepAlive()}
			cs, ss := sessionPair(t, tr)
			client, server := cs.(*quicSession), ss.(*quicSession)
			c.end(client, server)
			for _, end := range []struct {
				what string
				s    Session
				want EndCode
				err  func(error) bool
			}{{"client", client, c.client, nil}, {"server", server, c.server, c.serverErr}} {
				if end.want == "" {
					continue
				}
				got := waitEnd(t, end.s, end.what)
				t.Logf("%s: %v", end.what, EndLog("", "", 0, got, 0))
				if got.Code != end.want {
					t.Errorf("%s: ended with %q (%s), want %q", end.what, got.Code, got, end.want)
				}
				if end.err != nil && !end.err(got.Err) {
					t.Errorf("%s: error %v", end.what, got.Err)
				}
			}
		})
	}
}
