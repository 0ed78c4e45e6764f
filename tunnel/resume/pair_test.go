package resume

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// transports lists every transport; each test runs over all of them.
var transports = []struct {
	name string
	tr   tunnel.Transport
}{
	{"tcp", tunnel.TCPTransport{}},
	{"quic", tunnel.QUICTransport{}},
}

// sessionPair returns a fresh multiplexed session pair over tr on
// loopback, the client (the agent's) first: the same construction as
// tunnel's own tests.
func sessionPair(t testing.TB, tr tunnel.Transport) (client, server tunnel.Session) {
	t.Helper()
	return sessionPairVia(t, tr, nil, tunnel.DefaultSessionConfig())
}

// sessionPairVia is sessionPair with the client dialing the address via
// returns for the server's (nil: the server's own), and with cfg.
func sessionPairVia(t testing.TB, tr tunnel.Transport, via func(addr string) string, cfg tunnel.SessionConfig) (client, server tunnel.Session) {
	t.Helper()
	if q, ok := tr.(tunnel.QUICTransport); ok {
		q.Session = cfg
		tr = q
	}
	certPEM, keyPEM, err := tunnel.GenerateCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := tunnel.CertificateFingerprint(cert)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen("127.0.0.1:0", tunnel.ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conf, err := tunnel.PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	type res struct {
		c   tunnel.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			err = c.Handshake(ctx)
		}
		ch <- res{c, err}
	}()
	addr := ln.Addr().String()
	if via != nil {
		addr = via(addr)
	}
	cc, err := tr.Dial(ctx, addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if client, err = cc.Mux(cfg); err != nil {
		t.Fatal(err)
	}
	if server, err = r.c.Mux(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// link is a relay's registry and an agent's, over the sessions of one
// transport that the test replaces at will: the relay opens the streams,
// and resumes them; the agent accepts them.
type link struct {
	t            testing.TB
	tr           tunnel.Transport
	relay, agent *Registry
	accepted     chan *Conn // the agent's new streams
	handleErrs   chan error // what Handle refused, on either side

	// pair makes the next session pair, the agent's first; nil:
	// sessionPair.
	pair func() (agent, relay tunnel.Session)

	mu           sync.Mutex
	rsess, asess tunnel.Session
	wg           sync.WaitGroup
}

func newLink(t testing.TB, tr tunnel.Transport, cfg Config) *link {
	t.Helper()
	return newLinkOn(t, tr, cfg, nil)
}

// newLinkOn is newLink whose first sessions pair makes.
func newLinkOn(t testing.TB, tr tunnel.Transport, cfg Config, pair func() (agent, relay tunnel.Session)) *link {
	t.Helper()
	rcfg, acfg := cfg, cfg
	if cfg.Log != nil {
		rcfg.Log, acfg.Log = cfg.Log.With("side", "relay"), cfg.Log.With("side", "agent")
	}
	relay, err := NewRegistry(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NewRegistry(acfg)
	if err != nil {
		t.Fatal(err)
	}
	l := &link{t: t, tr: tr, relay: relay, agent: agent, pair: pair,
		accepted: make(chan *Conn, 16), handleErrs: make(chan error, 64)}
	t.Cleanup(func() {
		l.relay.Close()
		l.agent.Close()
		l.mu.Lock()
		rs, as := l.rsess, l.asess
		l.mu.Unlock()
		if rs != nil {
			rs.Close()
			as.Close()
		}
		l.wg.Wait()
	})
	l.connect()
	return l
}

// connect makes a new session pair and attaches both registries to it.
func (l *link) connect() {
	t := l.t
	t.Helper()
	var as, rs tunnel.Session
	if l.pair != nil {
		as, rs = l.pair()
		l.pair = nil
	} else {
		as, rs = sessionPair(t, l.tr)
	}
	l.mu.Lock()
	l.rsess, l.asess = rs, as
	l.mu.Unlock()
	l.serve(rs, l.relay, nil)
	l.serve(as, l.agent, l.accepted)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	if err := l.agent.Attach(ctx, as); err != nil {
		t.Fatal(err)
	}
	if err := l.relay.Attach(ctx, rs); err != nil {
		t.Fatal(err)
	}
}

// serve accepts the streams of sess for reg until sess ends.
func (l *link) serve(sess tunnel.Session, reg *Registry, accepted chan *Conn) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				c, err := reg.Handle(context.Background(), sess, st)
				switch {
				case err != nil:
					select {
					case l.handleErrs <- err:
					default:
					}
				case c != nil && accepted != nil:
					accepted <- c
				case c != nil:
					c.Abort()
				}
			}()
		}
	}()
}

// kill ends both sessions at once, as a dead link does.
func (l *link) kill() {
	l.mu.Lock()
	rs, as := l.rsess, l.asess
	l.mu.Unlock()
	go as.Close()
	rs.Close()
	<-as.Done()
	<-rs.Done()
}

// open opens a stream from the relay and returns both ends.
func (l *link) open() (relayEnd, agentEnd *Conn) {
	t := l.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	rc, err := l.relay.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ac := <-l.accepted:
		if ac.ID() != rc.ID() {
			t.Fatalf("accepted stream %016x, opened %016x", ac.ID(), rc.ID())
		}
		return rc, ac
	case <-ctx.Done():
		t.Fatal("the agent did not accept the stream")
	}
	return nil, nil
}

// blackhole forwards TCP connections or UDP datagrams to one address
// until drop is set; it then drops whatever arrives, both ways, and
// keeps the connections open: a link that went silent.
type blackhole struct {
	drop atomic.Bool
	addr string // where the client dials
}

// newBlackhole forwards to target over tr's protocol on loopback.
func newBlackhole(t testing.TB, tr tunnel.Transport, target string) *blackhole {
	t.Helper()
	bh := &blackhole{}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	if _, ok := tr.(tunnel.QUICTransport); ok {
		front, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		back, err := net.Dial("udp", target)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { front.Close(); back.Close() })
		bh.addr = front.LocalAddr().String()
		var client atomic.Pointer[net.Addr]
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, from, err := front.ReadFrom(buf)
				if err != nil {
					return
				}
				client.Store(&from)
				if !bh.drop.Load() {
					back.Write(buf[:n])
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := back.Read(buf)
				if err != nil {
					return
				}
				if to := client.Load(); to != nil && !bh.drop.Load() {
					front.WriteTo(buf[:n], *to)
				}
			}
		}()
		return bh
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bh.addr = ln.Addr().String()
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	copyTo := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if !bh.drop.Load() {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, d)
			mu.Unlock()
			wg.Add(2)
			go copyTo(d, c)
			go copyTo(c, d)
		}
	}()
	return bh
}
