package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// The relay's side of private tunnels, against peers that speak the wire
// protocol themselves (tunnel.Authenticate, RegisterPrivate, Visit) over
// real TLS and real sessions: the home agent's and the visitor's own
// programs are tested with the relay in private_test.go.

const (
	laptopKey = "laptop-visitor-key-0123456789"
	phoneKey  = "phone-visitor-key-0123456789"
)

func privateRelay(t *testing.T, mutate func(*config.Relay)) *relayHandle {
	return startRelay(t, func(c *config.Relay) {
		c.Visitors = []config.VisitorKey{
			{Name: "laptop", Secret: laptopKey, Token: "default"},
			{Name: "phone", Secret: phoneKey, Token: "default", Tunnels: []string{"ssh"}},
		}
		if mutate != nil {
			mutate(c)
		}
	})
}

// rawLogin logs in to r over TCP with secret, as an agent or (flags with
// FlagVisitor) a visitor, and returns the session.
func rawLogin(t *testing.T, r *relayHandle, secret, id string, flags tunnel.HelloFlags) (tunnel.Session, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := tunnel.TCPTransport{}
	tc, err := tunnel.PinnedTLSConfig(r.id.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.Dial(ctx, r.addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tunnel.Authenticate(c, []byte(secret), id, "test/1", flags|tunnel.FlagFeatures); err != nil {
		c.Close()
		return nil, err
	}
	sess, err := c.Mux(tunnel.DefaultSessionConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess, nil
}

// homePeer is a home agent of the wire protocol: it registers private
// tunnels and answers every visitor stream by echoing it (TCP) or its
// datagrams (UDP), recording the Via of each.
type homePeer struct {
	sess tunnel.Session
	ctrl tunnel.Stream
	vias chan string
}

func startHome(t *testing.T, r *relayHandle, tunnels ...tunnel.PrivateTunnel) (*homePeer, *tunnel.RegisterResult) {
	t.Helper()
	sess, err := rawLogin(t, r, testToken, "home-pc", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteMessage(ctrl, &tunnel.RegisterPrivate{Tunnels: tunnels}); err != nil {
		t.Fatal(err)
	}
	var res tunnel.RegisterResult
	if err := tunnel.ReadInto(ctrl, tunnel.MaxFrameSize, &res); err != nil {
		t.Fatal(err)
	}
	h := &homePeer{sess: sess, ctrl: ctrl, vias: make(chan string, 64)}
	go func() {
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go h.serve(st)
		}
	}()
	return h, &res
}

func (h *homePeer) serve(st tunnel.Stream) {
	defer st.Close()
	m, err := tunnel.ReadMessage(st, tunnel.MaxFrameSize)
	if err != nil {
		return
	}
	switch m := m.(type) {
	case *tunnel.Open:
		h.vias <- m.Via
		tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeOK})
		io.Copy(st, st)
		st.CloseWrite()
		io.Copy(io.Discard, st)
	case *tunnel.OpenFlow:
		h.vias <- m.Via
		tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeOK})
		buf := make([]byte, tunnel.MaxDatagram)
		for {
			n, err := tunnel.ReadDatagram(st, buf)
			if err != nil {
				return
			}
			if tunnel.WriteDatagram(st, buf[:n]) != nil {
				return
			}
		}
	}
}

// visit opens a visitor stream for tunnel name and returns it with the
// relay's answer.
func visit(t *testing.T, sess tunnel.Session, name string, proto tunnel.Protocol, flags tunnel.VisitFlags) (tunnel.Stream, tunnel.OpenResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteMessage(st, &tunnel.Visit{Tunnel: name, Protocol: proto, Flags: flags}); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	var res tunnel.OpenResult
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &res); err != nil {
		t.Fatalf("visit %s: no answer: %v", name, err)
	}
	st.SetReadDeadline(time.Time{})
	return st, res
}

// TestPrivateRelay: what the relay grants and refuses on private tunnels.
func TestPrivateRelay(t *testing.T) {
	leak.Check(t)
	hint := freePort(t)
	r := privateRelay(t, nil)
	home, res := startHome(t, r,
		tunnel.PrivateTunnel{Name: "rdp", Protocol: tunnel.ProtoTCP, Port: hint},
		tunnel.PrivateTunnel{Name: "ssh", Protocol: tunnel.ProtoTCP, Visitors: []string{"laptop"}},
		tunnel.PrivateTunnel{Name: "dns", Protocol: tunnel.ProtoUDP},
		tunnel.PrivateTunnel{Name: "bad name!", Protocol: tunnel.ProtoTCP},
	)
	for i, want := range []tunnel.Code{tunnel.CodeOK, tunnel.CodeOK, tunnel.CodeOK, tunnel.CodeBadRequest} {
		if got := res.Results[i].Code; got != want {
			t.Fatalf("registration %d (%s): %v %q, want %v", i, res.Results[i].Name, got, res.Results[i].Message, want)
		}
	}
	// No public port: nothing listens on the suggested port.
	if open, _ := probe(publicAddr(hint), 2*time.Second); open {
		t.Fatalf("something listens on %d, the private tunnel's suggested port", hint)
	}
	st := r.srv.Status()
	private := 0
	for _, ts := range st.Tunnels {
		if ts.Private {
			private++
		}
	}
	if private != 3 || len(st.Visits) == 0 {
		t.Fatalf("status: %d private tunnels, visits %+v; want 3 and commands", private, st.Visits)
	}

	laptop, err := rawLogin(t, r, laptopKey, "laptop", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	phone, err := rawLogin(t, r, phoneKey, "phone", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	// The metrics: private tunnels up, visitors by key.
	reg := prometheus.NewRegistry()
	if err := r.srv.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "both visitors in the metrics", func() bool {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*dto.MetricFamily{}
		for _, f := range fams {
			byName[f.GetName()] = f
		}
		up, ok1 := metricValue(byName, "homeport_relay_tunnel_up", map[string]string{"tunnel": "rdp", "port": "private"})
		n, ok2 := metricValue(byName, "homeport_relay_visitor_sessions", map[string]string{"key": "laptop", "token": "default"})
		return ok1 && ok2 && up == 1 && n == 1
	})
	tests := []struct {
		name   string
		sess   tunnel.Session
		tunnel string
		proto  tunnel.Protocol
		want   tunnel.Code
		msg    string
	}{
		{"ready", laptop, "rdp", tunnel.ProtoTCP, tunnel.CodeOK, ""},
		{"offline", laptop, "vnc", tunnel.ProtoTCP, tunnel.CodeOffline, `no agent of token "default" serves private tunnel "vnc" now (is the home agent running, with the tunnel marked private?); this key can reach dns, rdp, ssh now`},
		{"relay's list", phone, "rdp", tunnel.ProtoTCP, tunnel.CodeNotAllowed, `visitor key "phone" may not reach tunnel "rdp"`},
		{"agent's list", phone, "ssh", tunnel.ProtoTCP, tunnel.CodeNotAllowed, `does not accept visitor key "phone"`},
		{"protocol", laptop, "dns", tunnel.ProtoTCP, tunnel.CodeBadRequest, `tunnel "dns" is udp, not tcp`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, res := visit(t, tt.sess, tt.tunnel, tt.proto, tunnel.VisitCheck)
			defer st.Close()
			if res.Code != tt.want || !strings.Contains(res.Message, tt.msg) {
				t.Fatalf("got %v %q, want %v %q", res.Code, res.Message, tt.want, tt.msg)
			}
			// A check reaches nothing: the stream ends.
			if n, _ := io.Copy(io.Discard, st); n != 0 {
				t.Fatalf("%d bytes after the answer to a check", n)
			}
		})
	}
	select {
	case via := <-home.vias:
		t.Fatalf("a check or refusal reached the home agent (via %q)", via)
	default:
	}

	// 16 MiB each way through the private TCP tunnel, half-close carried.
	st2, ans := visit(t, laptop, "rdp", tunnel.ProtoTCP, 0)
	if ans.Code != tunnel.CodeOK {
		t.Fatalf("visit: %v %q", ans.Code, ans.Message)
	}
	if via := <-home.vias; via != "laptop" {
		t.Fatalf("the home agent was told via %q, want laptop", via)
	}
	data := make([]byte, 16<<20)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := st2.Write(data)
		errc <- errors.Join(err, st2.CloseWrite())
	}()
	got := sha256.New()
	n, err := io.Copy(got, st2)
	if err != nil || n != int64(len(data)) || !bytes.Equal(got.Sum(nil), sha(data)) {
		t.Fatalf("echo: %d of %d bytes, err %v, sha equal %v", n, len(data), err, bytes.Equal(got.Sum(nil), sha(data)))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	st2.Close()

	// Datagrams through the private UDP tunnel, boundaries kept.
	ud, ans := visit(t, laptop, "dns", tunnel.ProtoUDP, 0)
	if ans.Code != tunnel.CodeOK {
		t.Fatalf("UDP visit: %v %q", ans.Code, ans.Message)
	}
	buf := make([]byte, tunnel.MaxDatagram)
	for _, size := range []int{0, 1, 1200, 9000} {
		p := bytes.Repeat([]byte{byte(size)}, size)
		if err := tunnel.WriteDatagram(ud, p); err != nil {
			t.Fatal(err)
		}
		ud.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := tunnel.ReadDatagram(ud, buf)
		if err != nil || !bytes.Equal(buf[:n], p) {
			t.Fatalf("datagram of %d bytes: back %d, %v", size, n, err)
		}
	}
	ud.Close()
	home.sess.Close()
	laptop.Close()
	phone.Close()
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// TestPrivateKeys: secrets open only their own door, and a visitor whose
// key a reload removes is cut within a second, mid-transfer.
func TestPrivateKeys(t *testing.T) {
	leak.Check(t)
	r := privateRelay(t, nil)
	for _, tt := range []struct {
		name, secret string
		flags        tunnel.HelloFlags
		msg          string
	}{
		{"token as a visitor key", testToken, tunnel.FlagVisitor, "wrong visitor key"},
		{"visitor key as a token", laptopKey, 0, "wrong token"},
		{"wrong visitor key", "not-a-visitor-key-0123456789", tunnel.FlagVisitor, "wrong visitor key"},
	} {
		_, err := rawLogin(t, r, tt.secret, "x", tt.flags)
		var re *tunnel.RejectError
		if !errors.As(err, &re) || re.Message != tt.msg {
			t.Fatalf("%s: %v, want a reject %q", tt.name, err, tt.msg)
		}
	}
	// A visitor cannot register a tunnel: its stream must begin with a
	// Visit, and anything else ends its session.
	intruder, err := rawLogin(t, r, phoneKey, "phone", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ist, err := intruder.OpenStream(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	tunnel.WriteMessage(ist, &tunnel.Register{Tunnels: []tunnel.TunnelRequest{{Name: "web", Protocol: tunnel.ProtoTCP, RemotePort: freePort(t)}}})
	select {
	case <-intruder.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the relay kept a visitor session that sent a Register")
	}
	waitFor(t, 10*time.Second, "the relay's word on the visitor's Register", func() bool {
		return contains(r.logs.String(), "visitor stream without a valid Visit", "cause=protocol_error")
	})
	if st := r.srv.Status(); len(st.Tunnels) != 0 {
		t.Fatalf("a visitor registered %+v", st.Tunnels)
	}

	home, _ := startHome(t, r, tunnel.PrivateTunnel{Name: "rdp", Protocol: tunnel.ProtoTCP})
	laptop, err := rawLogin(t, r, laptopKey, "laptop", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	st, ans := visit(t, laptop, "rdp", tunnel.ProtoTCP, 0)
	if ans.Code != tunnel.CodeOK {
		t.Fatalf("visit: %v %q", ans.Code, ans.Message)
	}
	// A transfer runs: bytes go out and come back.
	stopWrite := make(chan struct{})
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			select {
			case <-stopWrite:
				return
			default:
			}
			if _, err := st.Write(chunk); err != nil {
				return
			}
		}
	}()
	defer close(stopWrite)
	if _, err := io.ReadFull(st, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	cfg := r.cfg
	cfg.Visitors = cfg.Visitors[1:] // laptop's key revoked
	id := r.id
	id.Visitors = cfg.Visitors
	if _, _, err := r.srv.Reload(cfg, id); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	// Generous for a busy machine; the relay ends the session at once.
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, st)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the visitor's transfer went on after its key was revoked")
	}
	<-laptop.Done()
	t.Logf("cut %v after the reload", time.Since(revoked).Round(time.Millisecond))
	if _, err := rawLogin(t, r, laptopKey, "laptop", tunnel.FlagVisitor); err == nil {
		t.Fatal("a revoked key logged in")
	}
	home.sess.Close()
}
