package e2e

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/ddnsbuild"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/tunnel"
)

const testToken = "test-token-0123456789abcdef"

// logBuf is a concurrency-safe log sink whose contents tests can search.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond every 10 ms for up to testenv.Deadline(d).
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	d = testenv.Deadline(d)
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parallel: a test marked t.Parallel runs only beside the other parallel
// tests, after every other test of the package has ended, so that
// leak.Check, which counts the whole process's goroutines, never sees
// theirs. A parallel test makes no leak check of its own, sets no
// environment and uses no address or port that another test may use.

// transports are the agent transports every in-process end-to-end test
// runs over; the relay serves both at once.
var transports = []string{config.TransportTCP, config.TransportQUIC}

// forEachTransport runs test once per transport, as a subtest.
func forEachTransport(t *testing.T, test func(t *testing.T, tr string)) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) { test(t, tr) })
	}
}

// transportFor returns the tunnel.Transport of an agent transport name.
func transportFor(tr string) tunnel.Transport {
	if tr == config.TransportQUIC {
		return tunnel.QUICTransport{}
	}
	return tunnel.TCPTransport{}
}

type relayHandle struct {
	t *testing.T
	// transport is what agentConfig makes agents use.
	transport string
	cfg       config.Relay
	id        relay.Identity
	addr      string
	srv       *relay.Server
	logs      *logBuf
	cancel    context.CancelFunc
	done      chan error
}

func relayConfig(t *testing.T) config.Relay {
	return config.Relay{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		BindAddr:         "127.0.0.1",
		AllowPorts:       config.PortRanges{{Lo: 1024, Hi: 65535}},
		Tokens:           []config.Token{{Name: "default", Secret: testToken}},
		HandshakeTimeout: 5 * time.Second,
		ShutdownTimeout:  2 * time.Second,
		QUIC:             true,
		// Tests play many visitors from one loopback address: limits
		// per source are off unless a test sets them.
		Guard:   config.Guard{MaxHandshakesPerIP: 1 << 20, VisitorMaxConns: 1 << 20, VisitorRate: 1 << 20, VisitorBurst: 1 << 20},
		Session: config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 2 * time.Second, StreamWindow: 4 << 20},
		Log:     config.Log{Level: "debug", Format: "text"},
	}
}

// startRelayOver is startRelay whose agents (from agentConfig) use tr.
func startRelayOver(t *testing.T, tr string, mutate func(*config.Relay)) *relayHandle {
	t.Helper()
	r := startRelay(t, mutate)
	r.transport = tr
	return r
}

// startRelay runs a relay in this process; mutate adjusts the config.
func startRelay(t *testing.T, mutate func(*config.Relay)) *relayHandle {
	t.Helper()
	cfg := relayConfig(t)
	if mutate != nil {
		mutate(&cfg)
	}
	id, err := relay.LoadIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return runRelay(t, cfg, id)
}

func runRelay(t *testing.T, cfg config.Relay, id relay.Identity) *relayHandle {
	t.Helper()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := relay.New(cfg, id, log, relay.WithDDNS(func(c *config.DDNS) (*ddns.Updater, error) {
		return ddnsbuild.New(c, ddnsbuild.Options{Log: log})
	}))
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &relayHandle{t: t, cfg: cfg, id: id, addr: addr.String(), srv: srv, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { h.stop() })
	return h
}

// stop shuts the relay down and waits for it.
func (h *relayHandle) stop() {
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("relay Serve: %v", err)
		}
		h.done <- nil // later stops return at once
	case <-time.After(testenv.Deadline(15 * time.Second)):
		h.t.Errorf("relay did not stop")
	}
}

type agentHandle struct {
	t        *testing.T
	agent    *agent.Agent
	cfg      config.Agent
	logs     *logBuf
	sessions chan agent.SessionInfo
	cancel   context.CancelFunc
	done     chan error
}

func agentConfig(r *relayHandle, tunnels ...config.Tunnel) config.Agent {
	return config.Agent{
		Relay:            r.addr,
		Transport:        cmp.Or(r.transport, config.TransportTCP),
		Token:            testToken,
		Fingerprint:      r.id.Fingerprint,
		ID:               "home-pc",
		Tunnels:          tunnels,
		DialTimeout:      2 * time.Second,
		HandshakeTimeout: 5 * time.Second,
		ReconnectMax:     2 * time.Second,
		Session:          config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 2 * time.Second, StreamWindow: 4 << 20},
	}
}

// startAgent runs an agent in this process. It does not wait for the
// session; use waitSession.
// setup, when given, adjusts the agent before it runs.
func startAgent(t *testing.T, cfg config.Agent, setup ...func(*agent.Agent)) *agentHandle {
	t.Helper()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sessions := ddns.NewRelaySessions()
	a, err := agent.New(cfg, "test", log, agent.WithRelaySessions(sessions), agent.WithDDNS(func(c *config.DDNS, relay *ddns.RelayAddr) (*ddns.Updater, error) {
		return ddnsbuild.New(c, ddnsbuild.Options{Log: log, Relay: relay, Sessions: sessions, UserAgent: ddns.UserAgent("test")})
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(a)
	}
	h := &agentHandle{t: t, agent: a, cfg: cfg, logs: logs, sessions: make(chan agent.SessionInfo, 16), done: make(chan error, 1)}
	a.OnSession = func(si agent.SessionInfo) {
		select {
		case h.sessions <- si:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(func() { h.stop() })
	return h
}

func (h *agentHandle) stop() {
	h.cancel()
	select {
	case <-h.done:
		h.done <- nil
	case <-time.After(testenv.Deadline(15 * time.Second)):
		h.t.Errorf("agent did not stop")
	}
}

// reload puts cfg in force in the running agent (agent.Reload).
func (h *agentHandle) reload(cfg config.Agent) (agent.Changes, error) {
	ch, err := h.agent.Reload(cfg)
	if err == nil {
		h.cfg = cfg
	}
	return ch, err
}

// waitSession waits for the agent's next registration and fails the test
// unless every tunnel was accepted.
func (h *agentHandle) waitSession(d time.Duration) agent.SessionInfo {
	h.t.Helper()
	si := h.waitAny(d)
	for _, r := range si.Results {
		if r.Code != tunnel.CodeOK {
			h.t.Fatalf("tunnel %s refused: %v: %s", r.Name, r.Code, r.Message)
		}
	}
	return si
}

func (h *agentHandle) waitAny(d time.Duration) agent.SessionInfo {
	h.t.Helper()
	d = testenv.Deadline(d)
	select {
	case si := <-h.sessions:
		return si
	case err := <-h.done:
		h.t.Fatalf("agent stopped: %v\nagent log:\n%s", err, h.logs)
	case <-time.After(d):
		h.t.Fatalf("no session within %v\nagent log:\n%s", d, h.logs)
	}
	return agent.SessionInfo{}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// freePort returns a loopback port that is free for TCP and for UDP (a
// relay's agent port takes both) and that no other test of this binary
// was given. It picks below Linux's ephemeral range (32768-60999), so
// that the system does not hand the port to an outgoing connection
// between the check and its use.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for range 1000 {
		p := uint16(20000 + rand.IntN(12000))
		givenMu.Lock()
		taken := given[p]
		givenMu.Unlock()
		if taken {
			continue
		}
		tl, err := net.Listen("tcp", publicAddr(p))
		if err != nil {
			continue
		}
		ul, err := net.ListenPacket("udp", publicAddr(p))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		givenMu.Lock()
		taken = given[p]
		given[p] = true
		givenMu.Unlock()
		if !taken {
			return p
		}
	}
	t.Fatal("no free loopback port for TCP and UDP in 20000-31999")
	return 0
}

// given are the ports freePort handed out in this test binary.
var (
	givenMu sync.Mutex
	given   = map[uint16]bool{}
)

func tcpTunnel(name string, port uint16, target string) config.Tunnel {
	return config.Tunnel{Name: name, Protocol: "tcp", RemotePort: port, Target: target}
}

func publicAddr(port uint16) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))) }

// serve runs handle for every connection to a new loopback listener until
// the test ends, and returns the listener's address.
func serve(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, l, func(c net.Conn) { handle(c.(*net.TCPConn)) })
	return l.Addr().String()
}

// serveOn runs handle for every connection l accepts until the test ends,
// then closes l and the connections still open and waits for handle.
func serveOn(t *testing.T, l net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echo copies everything back and half-closes when the client does.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// dial connects to addr with a deadline for the whole exchange.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testenv.Deadline(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testenv.Deadline(60 * time.Second)))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends msg, half-closes, and returns everything read back.
func roundTrip(addr string, msg []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, testenv.Deadline(5*time.Second))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// Long enough for the last of 500 visitors at once (TestConcurrentVisitors).
	c.SetDeadline(time.Now().Add(testenv.Deadline(time.Minute)))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, werr
	}
	return got, rerr
}

// expectEcho checks one echo round trip through addr.
func expectEcho(t *testing.T, addr string) {
	t.Helper()
	msg := []byte("ping through the tunnel")
	got, err := roundTrip(addr, msg)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo via %s: got %q, %v", addr, got, err)
	}
}

// expectClosed checks that within d connections to addr are refused or
// closed without data. It retries, since a port closes asynchronously.
func expectClosed(t *testing.T, addr string, d time.Duration) {
	t.Helper()
	d = testenv.Deadline(d)
	deadline := time.Now().Add(d)
	for {
		open, why := probe(addr, time.Until(deadline))
		if !open {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection to %s: %s after %v", addr, why, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe reports whether addr accepts a connection and answers a byte.
func probe(addr string, d time.Duration) (open bool, why string) {
	d = max(d, 100*time.Millisecond)
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return false, ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	c.Write([]byte("x"))
	n, err := c.Read(make([]byte, 16))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true, "still open"
	}
	if n > 0 {
		return true, "returned data"
	}
	return false, ""
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
