package resume

import (
	"context"
	"crypto/tls"
	"sync"
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
	cc, err := tr.Dial(ctx, ln.Addr().String(), conf)
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
	if client, err = cc.Mux(tunnel.DefaultSessionConfig()); err != nil {
		t.Fatal(err)
	}
	if server, err = r.c.Mux(tunnel.DefaultSessionConfig()); err != nil {
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

	mu           sync.Mutex
	rsess, asess tunnel.Session
	wg           sync.WaitGroup
}

func newLink(t testing.TB, tr tunnel.Transport, cfg Config) *link {
	t.Helper()
	relay, err := NewRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NewRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := &link{t: t, tr: tr, relay: relay, agent: agent,
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
	as, rs := sessionPair(t, l.tr)
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
