package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// The home agent's side of private tunnels, against wireRelay: a relay
// reduced to the wire protocol over real TLS and real yamux or QUIC
// sessions, which announces the features a test gives it (an older
// relay's, or one that serves private tunnels) and lets the test open the
// visitor streams it likes, as a relay would for its visitors.

// wireRelay logs agents in with testToken, accepts every registration,
// and records the agent's control messages.
type wireRelay struct {
	t        *testing.T
	addr     string
	fp       string
	features tunnel.Features

	mu   sync.Mutex
	msgs []tunnel.Message // the agent's control messages, in order
	sess tunnel.Session   // the latest session
	all  []tunnel.Session
}

// relayCert returns a newly generated relay certificate and its
// fingerprint, for relays that tests play themselves.
func relayCert(t *testing.T) (tls.Certificate, string) {
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
	return cert, fp
}

func startWireRelay(t *testing.T, tr string, features tunnel.Features) *wireRelay {
	t.Helper()
	cert, fp := relayCert(t)
	ln, err := transportFor(tr).Listen("127.0.0.1:0", tunnel.ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	r := &wireRelay{t: t, addr: ln.Addr().String(), fp: fp, features: features}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() { r.serve(ctx, c) })
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		r.mu.Lock()
		for _, s := range r.all {
			s.Close()
		}
		r.mu.Unlock()
		wg.Wait()
	})
	return r
}

func (r *wireRelay) serve(ctx context.Context, c tunnel.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(ctx); err != nil {
		return
	}
	fc := &featureConn{Conn: c, features: r.features}
	if _, err := tunnel.AuthenticateAgent(fc, [][]byte{[]byte(testToken)}, "127.0.0.1:1", tunnel.AuthHooks{}); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := c.Mux(tunnel.DefaultSessionConfig())
	if err != nil {
		return
	}
	defer sess.Close()
	r.mu.Lock()
	r.all = append(r.all, sess)
	r.mu.Unlock()
	ctrl, err := sess.AcceptStream(ctx)
	if err != nil {
		return
	}
	r.mu.Lock()
	r.sess = sess
	r.mu.Unlock()
	for {
		m, err := tunnel.ReadMessage(ctrl, tunnel.MaxFrameSize)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
		var names []string
		switch m := m.(type) {
		case *tunnel.Register:
			for _, q := range m.Tunnels {
				names = append(names, q.Name)
			}
		case *tunnel.RegisterPrivate:
			for _, q := range m.Tunnels {
				names = append(names, q.Name)
			}
		case *tunnel.Unregister:
			names = m.Names
		default:
			continue
		}
		res := &tunnel.RegisterResult{}
		for _, n := range names {
			res.Results = append(res.Results, tunnel.TunnelResult{Name: n, Code: tunnel.CodeOK})
		}
		if tunnel.WriteMessage(ctrl, res) != nil {
			return
		}
	}
}

// messages returns the agent's control messages so far.
func (r *wireRelay) messages() []tunnel.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// open opens a visitor stream on the latest session, sends first (an
// Open or OpenFlow) and returns the stream with the agent's answer.
func (r *wireRelay) open(first tunnel.Message) (tunnel.Stream, tunnel.OpenResult) {
	r.t.Helper()
	r.mu.Lock()
	sess := r.sess
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.t.Context(), 10*time.Second)
	defer cancel()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { st.Close() })
	if err := tunnel.WriteMessage(st, first); err != nil {
		r.t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var res tunnel.OpenResult
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &res); err != nil {
		r.t.Fatalf("%+v: no answer: %v", first, err)
	}
	_ = st.SetReadDeadline(time.Time{})
	return st, res
}

// agentConfig is an agent's configuration for r.
func (r *wireRelay) agentConfig(tr string, tunnels ...config.Tunnel) config.Agent {
	return config.Agent{
		Relay: r.addr, Transport: tr, Token: testToken, Fingerprint: r.fp, ID: "home-pc",
		Tunnels:     tunnels,
		DialTimeout: 2 * time.Second, HandshakeTimeout: 5 * time.Second, ReconnectMax: 2 * time.Second,
		Session: config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 2 * time.Second, StreamWindow: 4 << 20},
	}
}

// featureConn makes the relay's Welcome announce features (when it
// announces any: to an agent that asks, tunnel.FlagFeatures).
type featureConn struct {
	tunnel.Conn
	features tunnel.Features
}

func (c *featureConn) Write(p []byte) (int, error) {
	m, err := tunnel.ReadMessage(bytes.NewReader(p), tunnel.MaxAuthFrameSize)
	w, ok := m.(*tunnel.Welcome)
	if err != nil || !ok || w.Features == 0 {
		return c.Conn.Write(p)
	}
	w.Features = c.features
	var b bytes.Buffer
	if err := tunnel.WriteMessage(&b, w); err != nil {
		return 0, err
	}
	if _, err := c.Conn.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// countingEcho is an echo target that counts the connections it accepts.
func countingEcho(t *testing.T) (addr string, accepted *atomic.Int64) {
	accepted = new(atomic.Int64)
	return serve(t, func(c *net.TCPConn) {
		accepted.Add(1)
		echo(c)
	}), accepted
}

// TestPrivateAgentOldRelay: a relay without FeaturePrivate is sent no
// RegisterPrivate; the agent's private tunnel is refused by the agent
// itself, with the reason in its status, and its public tunnel works.
func TestPrivateAgentOldRelay(t *testing.T) { forEachTransport(t, testPrivateAgentOldRelay) }

func testPrivateAgentOldRelay(t *testing.T, tr string) {
	leak.Check(t)
	target, _ := countingEcho(t)
	r := startWireRelay(t, tr, tunnel.FeatureUnregister)
	port := freePort(t)
	a := startAgent(t, r.agentConfig(tr, tcpTunnel("web", port, target),
		config.Tunnel{Name: "desk", Protocol: "tcp", RemotePort: 3389, Target: target, Private: true, Visitors: []string{"laptop"}}))
	si := a.waitAny(10 * time.Second)
	want := []tunnel.TunnelResult{
		{Name: "web", Code: tunnel.CodeOK},
		{Name: "desk", Code: tunnel.CodeVersion, Message: "the relay does not serve private tunnels: upgrade it"},
	}
	if !slices.Equal(si.Results, want) {
		t.Fatalf("results %+v; want %+v", si.Results, want)
	}
	for _, m := range r.messages() {
		switch m := m.(type) {
		case *tunnel.RegisterPrivate:
			t.Errorf("an old relay was sent %+v", m)
		case *tunnel.Register:
			if len(m.Tunnels) != 1 || m.Tunnels[0].Name != "web" {
				t.Errorf("register %+v; want web only", m.Tunnels)
			}
		}
	}
	// The public tunnel carries a visitor.
	st, res := r.open(&tunnel.Open{Tunnel: "web", Visitor: "192.0.2.1:1000", Public: "127.0.0.1:1"})
	if res.Code != tunnel.CodeOK {
		t.Fatalf("public tunnel: %+v", res)
	}
	expectStreamEcho(t, st)

	regs := a.agent.Registrations()
	if len(regs) != 2 || regs[0].State != agent.TunnelUp || regs[1].State != agent.TunnelRefused || regs[1].Code != tunnel.CodeVersion {
		t.Fatalf("registrations %+v", regs)
	}
	var b strings.Builder
	a.agent.Status().WriteText(&b)
	if !contains(b.String(), "private/tcp (visitors laptop)", "refused: unsupported version: the relay does not serve private tunnels: upgrade it",
		"web", "up") {
		t.Errorf("status:\n%s", b.String())
	}
	if !contains(a.logs.String(), "tunnel refused by relay", "tunnel=desk", "private=true") {
		t.Errorf("agent log does not say why desk is refused:\n%s", a.logs)
	}
}

// expectStreamEcho sends a line on a visitor stream whose target echoes.
func expectStreamEcho(t *testing.T, st tunnel.Stream) {
	t.Helper()
	msg := []byte("hello through the tunnel\n")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, %v", got, err)
	}
	// Half-close: the target closes its side in turn, and the agent ends
	// the connection (and logs it).
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(st); err != nil || len(rest) != 0 {
		t.Fatalf("after the echo: %q, %v", rest, err)
	}
	st.Close()
}

// TestPrivateAgentVisitors: with a relay that serves private tunnels, the
// agent registers its private tunnels in a RegisterPrivate (and only its
// public ones in the Register), and carries a visitor stream of a private
// tunnel only when it names a visitor key the tunnel lets through. A key
// not in the tunnel's visitors, a private stream without a key, and a
// public stream with one are refused, and nothing is dialed. A reload
// closes and registers private tunnels as it does public ones.
func TestPrivateAgentVisitors(t *testing.T) { forEachTransport(t, testPrivateAgentVisitors) }

func testPrivateAgentVisitors(t *testing.T, tr string) {
	leak.Check(t)
	target, accepted := countingEcho(t)
	r := startWireRelay(t, tr, tunnel.FeatureUnregister|tunnel.FeaturePrivate)
	port := freePort(t)
	desk := config.Tunnel{Name: "desk", Protocol: "tcp", RemotePort: 3389, Target: target, Private: true, Visitors: []string{"laptop", "tablet"},
		Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	any := config.Tunnel{Name: "any", Protocol: "tcp", Target: target, Private: true}
	dns := config.Tunnel{Name: "dns", Protocol: "udp", Target: "127.0.0.1:53", Private: true, Visitors: []string{"laptop"}}
	// A PROXY header to a private tunnel's target: the visitor's address
	// as the relay saw it, and no public address (none was reached).
	headers := make(chan string, 1)
	ppTarget := serve(t, func(c *net.TCPConn) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line := make([]byte, 0, 108)
		for b := make([]byte, 1); len(line) < cap(line) && !bytes.HasSuffix(line, []byte("\r\n")); {
			if _, err := c.Read(b); err != nil {
				break
			}
			line = append(line, b[0])
		}
		headers <- string(line)
	})
	pp := config.Tunnel{Name: "pp", Protocol: "tcp", Target: ppTarget, Private: true, ProxyProtocol: "v1"}
	cfg := r.agentConfig(tr, tcpTunnel("web", port, target), desk, any, dns, pp)
	cfg.AccessLog = true
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	var pub []tunnel.TunnelRequest
	var priv []tunnel.PrivateTunnel
	for _, m := range r.messages() {
		switch m := m.(type) {
		case *tunnel.Register:
			pub = append(pub, m.Tunnels...)
		case *tunnel.RegisterPrivate:
			priv = append(priv, m.Tunnels...)
		}
	}
	if len(pub) != 1 || pub[0].Name != "web" || pub[0].RemotePort != port {
		t.Errorf("public registrations %+v; want web only", pub)
	}
	wantPriv := []tunnel.PrivateTunnel{
		{Name: "desk", Protocol: tunnel.ProtoTCP, Port: 3389, Allow: desk.Allow, Visitors: []string{"laptop", "tablet"}},
		{Name: "any", Protocol: tunnel.ProtoTCP},
		{Name: "dns", Protocol: tunnel.ProtoUDP, Visitors: []string{"laptop"}},
		{Name: "pp", Protocol: tunnel.ProtoTCP},
	}
	if len(priv) != len(wantPriv) {
		t.Fatalf("private registrations %+v; want %+v", priv, wantPriv)
	}
	for i := range priv {
		p, w := priv[i], wantPriv[i]
		if p.Name != w.Name || p.Protocol != w.Protocol || p.Port != w.Port || !slices.Equal(p.Allow, w.Allow) ||
			len(p.Deny) != 0 || !slices.Equal(p.Visitors, w.Visitors) {
			t.Errorf("private registration %d: %+v; want %+v", i, p, w)
		}
	}

	// Allowed visitor keys reach the target.
	for _, o := range []*tunnel.Open{
		{Tunnel: "desk", Visitor: "192.0.2.7:5000", Via: "laptop"},
		{Tunnel: "any", Visitor: "192.0.2.7:5001", Via: "whoever"},
	} {
		st, res := r.open(o)
		if res.Code != tunnel.CodeOK {
			t.Fatalf("%+v: %+v", o, res)
		}
		expectStreamEcho(t, st)
	}
	if _, res := r.open(&tunnel.Open{Tunnel: "pp", Visitor: "192.0.2.7:5010", Via: "laptop"}); res.Code != tunnel.CodeOK {
		t.Fatalf("pp: %+v", res)
	}
	select {
	case h := <-headers:
		if h != "PROXY TCP4 192.0.2.7 0.0.0.0 5010 0\r\n" {
			t.Errorf("PROXY header %q", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no PROXY header")
	}
	waitFor(t, 10*time.Second, "the access log's via", func() bool {
		return contains(a.logs.String(), "visitor connection", "tunnel=desk", "via=laptop")
	})
	dialed := accepted.Load()
	if dialed != 2 {
		t.Fatalf("target accepted %d connections; want 2", dialed)
	}

	// Refusals: nothing is dialed.
	for _, c := range []struct {
		first tunnel.Message
		code  tunnel.Code
		msg   string
	}{
		{&tunnel.Open{Tunnel: "desk", Visitor: "192.0.2.7:5002", Via: "phone"}, tunnel.CodeNotAllowed,
			`visitor key "phone" is not allowed for tunnel "desk" by the home agent`},
		{&tunnel.Open{Tunnel: "desk", Visitor: "192.0.2.7:5003"}, tunnel.CodeBadRequest, `tunnel "desk" is private: the relay must name the visitor key`},
		{&tunnel.Open{Tunnel: "web", Visitor: "192.0.2.7:5004", Public: "127.0.0.1:1", Via: "laptop"}, tunnel.CodeBadRequest,
			`tunnel "web" is public: a visitor key ("laptop") has no place on its streams`},
		{&tunnel.OpenFlow{Tunnel: "dns", Visitor: "192.0.2.7:5005", Flow: 1, Via: "phone"}, tunnel.CodeNotAllowed,
			`visitor key "phone" is not allowed for tunnel "dns" by the home agent`},
		{&tunnel.OpenFlow{Tunnel: "dns", Visitor: "192.0.2.7:5006", Flow: 2}, tunnel.CodeBadRequest, `tunnel "dns" is private: the relay must name the visitor key`},
	} {
		_, res := r.open(c.first)
		if res.Code != c.code || res.Message != c.msg {
			t.Errorf("%+v: answered %v %q; want %v %q", c.first, res.Code, res.Message, c.code, c.msg)
		}
	}
	// refuse logs once the relay has read the answer.
	waitFor(t, 10*time.Second, "the refused visitor key in the log", func() bool {
		return contains(a.logs.String(), "visitor refused", "via=phone", "reason=\"not allowed\"")
	})
	if n := accepted.Load(); n != dialed {
		t.Errorf("target accepted %d connections after the refusals; want %d", n, dialed)
	}

	var b strings.Builder
	a.agent.Status().WriteText(&b)
	if !contains(b.String(), "private/tcp (visitors laptop, tablet)", "private/udp (visitors laptop)") {
		t.Errorf("status:\n%s", b.String())
	}
	for _, ts := range a.agent.Status().Tunnels {
		if ts.Name == "desk" && (!ts.Private || !slices.Equal(ts.VisitorKeys, desk.Visitors) || ts.State != string(agent.TunnelUp)) {
			t.Errorf("desk status %+v", ts)
		}
	}

	// Reload: any goes, desk's visitors change (closed, registered
	// again), web stays as it was.
	before := len(r.messages())
	desk2 := desk
	desk2.Visitors = []string{"phone"}
	cfg2 := r.agentConfig(tr, tcpTunnel("web", port, target), desk2, dns, pp)
	ch, err := a.reload(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Removed, []string{"any"}) || !slices.Equal(ch.Changed, []string{"desk"}) {
		t.Errorf("changes %+v", ch)
	}
	var after []tunnel.Message
	waitFor(t, 10*time.Second, "the reload's messages", func() bool {
		after = r.messages()[before:]
		return len(after) >= 2
	})
	un, ok1 := after[0].(*tunnel.Unregister)
	rp, ok2 := after[1].(*tunnel.RegisterPrivate)
	if !ok1 || !slices.Equal(un.Names, []string{"any", "desk"}) || !ok2 || len(rp.Tunnels) != 1 ||
		rp.Tunnels[0].Name != "desk" || !slices.Equal(rp.Tunnels[0].Visitors, []string{"phone"}) || len(after) != 2 {
		t.Errorf("reload sent %+v", after)
	}
	st, res := r.open(&tunnel.Open{Tunnel: "desk", Visitor: "192.0.2.7:5007", Via: "phone"})
	if res.Code != tunnel.CodeOK {
		t.Fatalf("phone after the reload: %+v", res)
	}
	expectStreamEcho(t, st)
	if _, res := r.open(&tunnel.Open{Tunnel: "desk", Visitor: "192.0.2.7:5008", Via: "laptop"}); res.Code != tunnel.CodeNotAllowed {
		t.Errorf("laptop after the reload: %+v", res)
	}
}

// TestPrivateAgentRelay: the home agent with the relay. Its private
// tunnel registers beside a public one, the relay opens no port for it
// (not even the suggested one), a visitor key the tunnel lists reaches the
// target with the key's name in the agent's access log, and a key that the
// relay lets reach the tunnel but the tunnel does not list is refused (not
// allowed), with nothing dialed. The relay applies the list the agent sent
// in RegisterPrivate, so it refuses that key before the agent sees it;
// the agent's own check of a stream that gets through anyway is
// TestPrivateAgentVisitors.
func TestPrivateAgentRelay(t *testing.T) { forEachTransport(t, testPrivateAgentRelay) }

func testPrivateAgentRelay(t *testing.T, tr string) {
	leak.Check(t)
	target, accepted := countingEcho(t)
	r := privateRelay(t, func(c *config.Relay) {
		c.Visitors[1].Tunnels = nil // phone's key: every tunnel of the token, for the relay
	})
	r.transport = tr
	port, hint := freePort(t), freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, target),
		config.Tunnel{Name: "desk", Protocol: "tcp", RemotePort: hint, Target: target, Private: true, Visitors: []string{"laptop"}})
	cfg.AccessLog = true
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	if open, _ := probe(publicAddr(hint), 2*time.Second); open {
		t.Fatalf("something listens on %d, the private tunnel's suggested port", hint)
	}
	var desk bool
	for _, ts := range r.srv.Status().Tunnels {
		if ts.Name == "desk" {
			desk = ts.Private
		}
	}
	if !desk {
		t.Fatalf("the relay does not list desk as private: %+v", r.srv.Status().Tunnels)
	}
	expectEcho(t, publicAddr(port))
	if n := accepted.Load(); n != 1 {
		t.Fatalf("target accepted %d connections; want 1", n)
	}

	laptop, err := rawLogin(t, r, laptopKey, "laptop", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	st, res := visit(t, laptop, "desk", tunnel.ProtoTCP, 0)
	if res.Code != tunnel.CodeOK {
		t.Fatalf("laptop: %v %q", res.Code, res.Message)
	}
	expectStreamEcho(t, st)
	waitFor(t, 10*time.Second, "the access log's via", func() bool {
		return contains(a.logs.String(), "visitor connection", "tunnel=desk", "via=laptop")
	})
	if n := accepted.Load(); n != 2 {
		t.Fatalf("target accepted %d connections; want 2", n)
	}

	phone, err := rawLogin(t, r, phoneKey, "phone", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	st, res = visit(t, phone, "desk", tunnel.ProtoTCP, 0)
	st.Close()
	if res.Code != tunnel.CodeNotAllowed || !contains(res.Message, `visitor key "phone"`) {
		t.Fatalf("phone: %v %q; want not allowed", res.Code, res.Message)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("target accepted %d connections after phone's refusal; want 2", n)
	}
	regs := a.agent.Registrations()
	if len(regs) != 2 || regs[1].Name != "desk" || regs[1].State != agent.TunnelUp {
		t.Errorf("registrations %+v", regs)
	}
	laptop.Close()
	phone.Close()
}
