//go:build unix

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/quic-go/quic-go"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/tunnel"
)

// The relay's guard against hostile sources: allow and deny lists,
// per-address limits and bans on public ports, pending-login caps and
// failed-login bans on the agent port, floods of idle, stalled and junk
// connections, running out of descriptors, and PROXY protocol headers as
// a real parser reads them. Sources are told apart by their loopback
// address: 127.0.0.2, 127.0.0.3 and so on, and ::1 where there is IPv6.

// guardFlood is the number of idle agent-port connections in
// TestGuardPreAuthFlood; a fifth as many again stall in the middle of the
// TLS handshake. Raise it by hand for a larger run (the process needs two
// descriptors per connection).
var guardFlood = flag.Int("guard.flood", 1000, "idle agent-port connections in TestGuardPreAuthFlood (a fifth as many more stall mid-TLS)")

// guardMark is the first byte of a flood visitor's connection: the target
// counts those connections apart from the others.
const guardMark = 'F'

// guardNeedSources skips a test where 127.0.0.2 cannot be a source address
// (only 127.0.0.1 is configured on some systems' loopback).
func guardNeedSources(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("127.0.0.2 cannot be used as a source address: %v", err)
	}
	l.Close()
}

// guardHaveIPv6 reports whether ::1 can be used.
func guardHaveIPv6() bool {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// guardFreePort6 returns a TCP port on ::1 that was free a moment ago.
func guardFreePort6(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// guardDial connects to addr from the address from.
func guardDial(from, addr string) (*net.TCPConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// guardRoundTrip is roundTrip from the address from.
func guardRoundTrip(from, addr string, msg []byte) ([]byte, error) {
	c, err := guardDial(from, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testenv.Deadline(20 * time.Second)))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, werr
	}
	return got, rerr
}

// guardExpectEcho checks one echo round trip from the address from and
// returns how long it took.
func guardExpectEcho(t *testing.T, from, addr string) time.Duration {
	t.Helper()
	msg := []byte("ping from " + from)
	start := time.Now()
	got, err := guardRoundTrip(from, addr, msg)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo from %s via %s: got %q, %v", from, addr, got, err)
	}
	return time.Since(start)
}

// guardEnd reads from c until the connection ends or d passes. It returns
// what was read and what ended the reading (io.EOF for a clean close).
func guardEnd(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	got, err := io.ReadAll(c)
	if err == nil {
		err = io.EOF
	}
	return got, err
}

func guardTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// guardEnded reports whether err is the peer closing or resetting.
func guardEnded(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// guardExpectRefused checks that a visitor from the address from is turned
// away by addr: the connection is reset or closed without a byte.
func guardExpectRefused(t *testing.T, from, addr string) {
	t.Helper()
	c, err := guardDial(from, addr)
	if guardEnded(err) {
		return // reset before the connect call returned
	}
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	defer c.Close()
	c.Write([]byte("knock knock")) // may fail: the relay resets refused visitors
	got, err := guardEnd(c, 3*time.Second)
	if len(got) > 0 || !guardEnded(err) {
		t.Fatalf("visitor from %s via %s: got %q, %v; want the connection refused without data", from, addr, got, err)
	}
}

// guardLines returns the log lines that contain every one of subs.
func guardLines(log string, subs ...string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if contains(l, subs...) {
			out = append(out, l)
		}
	}
	return out
}

// guardGoSlack is how many goroutines may come and go besides those a
// test counts.
const guardGoSlack = 10

// guardGoroutines returns the number of goroutines once it holds still
// for 50 ms (at most a second), so that goroutines on their way out do
// not count.
func guardGoroutines() int {
	n := runtime.NumGoroutine()
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			break
		}
		n = m
	}
	return n
}

// guardTarget is an echo target that counts its connections. A connection
// whose first byte is guardMark is a flood visitor's: those are counted
// apart, with how many are open at once.
type guardTarget struct {
	addr    string
	accepts atomic.Int64 // every connection
	marked  atomic.Int64 // flood connections
	open    atomic.Int64 // flood connections open now
	peak    atomic.Int64 // most flood connections open at once
}

func guardServe(t *testing.T) *guardTarget {
	t.Helper()
	g := &guardTarget{}
	g.addr = serve(t, func(c *net.TCPConn) {
		g.accepts.Add(1)
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		if b[0] == guardMark {
			g.marked.Add(1)
			n := g.open.Add(1)
			defer g.open.Add(-1)
			for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
			}
		}
		if _, err := c.Write(b[:]); err != nil {
			return
		}
		echo(c)
	})
	return g
}

// guardUDPDial is udpDial from the address from.
func guardUDPDial(t *testing.T, from string, port uint16) *udpVisitor {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(publicAddr(port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpVisitor{c: c, buf: make([]byte, 1<<16), sent: make(map[string]bool)}
}

// TestGuardAllowDeny: a tunnel's allow and deny lists let the listed
// visitors in (IPv4 and IPv6) and refuse the others before anything
// reaches the agent: the target never sees them, and the relay logs why.
// The same for a UDP tunnel, whose refused sources get no reply.
func TestGuardAllowDeny(t *testing.T) { forEachTransport(t, testGuardAllowDeny) }

func testGuardAllowDeny(t *testing.T, tr string) {
	guardNeedSources(t)
	leak.Check(t)
	target := guardServe(t)
	udpTarget := udpEcho(t, "127.0.0.1:0")
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("::1/128")}
	deny := []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}

	r := startRelayOver(t, tr, nil)
	listedPort, widePort, udpPort := freePort(t), freePort(t), udpFreePort(t)
	listed := tcpTunnel("listed", listedPort, target.addr)
	listed.Allow, listed.Deny = allow, deny
	// Deny wins over a wider allow.
	wide := tcpTunnel("wide", widePort, target.addr)
	wide.Allow, wide.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, deny
	listedUDP := udpTunnel("listed-udp", udpPort, udpTarget.addr())
	listedUDP.Allow, listedUDP.Deny = allow, deny
	a := startAgent(t, agentConfig(r, listed, wide, listedUDP))
	a.waitSession(15 * time.Second)

	echoes := 0
	for _, c := range []struct {
		from string
		port uint16
		ok   bool
	}{
		{"127.0.0.2", listedPort, true},
		{"127.0.0.1", listedPort, false},
		{"127.0.0.3", listedPort, false},
		{"127.0.0.2", widePort, true},
		{"127.0.0.4", widePort, true},
		{"127.0.0.3", widePort, false},
	} {
		if c.ok {
			guardExpectEcho(t, c.from, publicAddr(c.port))
			echoes++
		} else {
			guardExpectRefused(t, c.from, publicAddr(c.port))
		}
	}
	// One more allowed visitor after the refused ones: anything the
	// relay let through would have reached the target by now.
	guardExpectEcho(t, "127.0.0.2", publicAddr(listedPort))
	echoes++
	time.Sleep(100 * time.Millisecond)
	if n := target.accepts.Load(); n != int64(echoes) {
		t.Errorf("target accepted %d connections; want %d, one per allowed visitor", n, echoes)
	}
	log := r.logs.String()
	for _, want := range [][]string{
		{`msg="visitor refused"`, "tunnel=listed ", "visitor=127.0.0.1:", `reason="address not allowed by the tunnel"`},
		{`msg="visitor refused"`, "tunnel=listed ", "visitor=127.0.0.3:", `reason="address denied by the tunnel"`},
		{`msg="visitor refused"`, "tunnel=wide ", "visitor=127.0.0.3:", `reason="address denied by the tunnel"`},
	} {
		if len(guardLines(log, want...)) == 0 {
			t.Errorf("relay log has no line with %q", want)
		}
	}
	if n := len(guardLines(log, `msg="visitor refused"`)); n != 3 {
		t.Errorf("relay logged %d refused visitors, want 3", n)
	}

	// UDP: the allowed source gets its echo; the others get nothing, and
	// the target hears from one flow only.
	if err := guardUDPDial(t, "127.0.0.2", udpPort).exchange([]byte("allowed datagram")); err != nil {
		t.Fatalf("UDP from 127.0.0.2: %v", err)
	}
	for _, from := range []string{"127.0.0.1", "127.0.0.3"} {
		v := guardUDPDial(t, from, udpPort)
		for range 3 {
			if _, err := v.c.Write([]byte("refused datagram")); err != nil {
				t.Fatal(err)
			}
		}
		v.expectSilence(t, 500*time.Millisecond)
	}
	if s := udpTarget.senders(); len(s) != 1 {
		t.Errorf("UDP target heard from %v; want one flow, the allowed visitor's", s)
	}
	log = r.logs.String()
	for _, want := range [][]string{
		{`msg="UDP visitor refused"`, "tunnel=listed-udp", "visitor=127.0.0.1:", `reason="address not allowed by the tunnel"`},
		{`msg="UDP visitor refused"`, "tunnel=listed-udp", "visitor=127.0.0.3:", `reason="address denied by the tunnel"`},
	} {
		if len(guardLines(log, want...)) == 0 {
			t.Errorf("relay log has no line with %q", want)
		}
	}

	// IPv6: a relay whose public ports are on ::1.
	if !guardHaveIPv6() {
		t.Log("no IPv6 loopback: skipping the ::1 visitor")
		return
	}
	r6 := startRelayOver(t, tr, func(c *config.Relay) { c.BindAddr = "::1" })
	okPort, denyPort := guardFreePort6(t), guardFreePort6(t)
	ok6 := tcpTunnel("listed6", okPort, target.addr)
	ok6.Allow, ok6.Deny = allow, deny
	deny6 := tcpTunnel("deny6", denyPort, target.addr)
	deny6.Deny = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	a6 := startAgent(t, agentConfig(r6, ok6, deny6))
	a6.waitSession(15 * time.Second)
	before := target.accepts.Load()
	guardExpectRefused(t, "::1", net.JoinHostPort("::1", strconv.Itoa(int(denyPort))))
	guardExpectEcho(t, "::1", net.JoinHostPort("::1", strconv.Itoa(int(okPort))))
	time.Sleep(100 * time.Millisecond)
	if n := target.accepts.Load() - before; n != 1 {
		t.Errorf("target accepted %d connections from the IPv6 visitors, want 1", n)
	}
	if len(guardLines(r6.logs.String(), `msg="visitor refused"`, "tunnel=deny6", "visitor=[::1]:", `reason="address denied by the tunnel"`)) == 0 {
		t.Errorf("relay log has no refusal of [::1] on deny6")
	}
}

// guardHold makes n connection attempts from the address from to addr,
// each sending guardMark, and keeps the connections open until the test
// ends (or the caller closes them). It returns the connections and how
// many attempts were reset before the connect call returned.
func guardHold(t *testing.T, from, addr string, n int) (conns []*net.TCPConn, reset int) {
	t.Helper()
	var mu sync.Mutex
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c, err := guardDial(from, addr)
		if guardEnded(err) {
			reset++
			continue
		}
		if err != nil {
			t.Errorf("flood connection %d from %s: %v", i+1, from, err)
			return conns, reset
		}
		c.Write([]byte{guardMark}) // a refused connection may be reset already
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	return conns, reset
}

// TestGuardVisitorFlood: one address opening 1000 connections to a public
// port and holding them gets at most visitors.max_conns_per_ip open at
// the target at once and no more new ones than the token bucket allows,
// while another address is served promptly. With visitors.ban_after, the
// flooding address is banned: refused even once its connections are
// closed and its bucket is full again, while the other address is still
// served.
func TestGuardVisitorFlood(t *testing.T) { forEachTransport(t, testGuardVisitorFlood) }

func testGuardVisitorFlood(t *testing.T, tr string) {
	guardNeedSources(t)
	leak.Check(t)
	const (
		attempts = 1000
		maxConns = 16
		rate     = 60 // a minute
		burst    = 20
		flooder  = "127.0.0.5"
		neighbor = "127.0.0.6"
	)
	target := guardServe(t)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Guard = config.Guard{VisitorMaxConns: maxConns, VisitorRate: rate, VisitorBurst: burst, VisitorBanFor: time.Minute}
	})
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("flood", port, target.addr)))
	a.waitSession(15 * time.Second)
	pub := publicAddr(port)
	refusals := func(log string) int {
		return len(guardLines(log, `msg="visitor refused"`, "tunnel=flood", "visitor="+flooder+":"))
	}

	// Phase 1: 1000 connections held open; the neighbour meanwhile.
	start := time.Now()
	var held []*net.TCPConn
	var reset int
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		held, reset = guardHold(t, flooder, pub, attempts)
	}()
	// The neighbour's echoes, as many as fit while the flood goes on (it
	// has a bucket of its own), and one more with the flood held.
	var slowest time.Duration
	during := 0
	for done := false; !done && during < 10; {
		slowest = max(slowest, guardExpectEcho(t, neighbor, pub))
		during++
		select {
		case <-flooded:
			done = true
		case <-time.After(10 * time.Millisecond):
		}
	}
	<-flooded
	floodTime := time.Since(start)
	slowest = max(slowest, guardExpectEcho(t, neighbor, pub))
	if len(held)+reset != attempts {
		t.FailNow()
	}
	waitFor(t, 15*time.Second, "the relay to decide on every flood connection", func() bool {
		return int(target.marked.Load())+refusals(r.logs.String()) >= attempts
	})
	admitted1 := target.marked.Load()
	if got := int(admitted1) + refusals(r.logs.String()); got != attempts {
		t.Errorf("%d flood connections admitted or refused, want %d", got, attempts)
	}
	if p := target.peak.Load(); p != maxConns {
		t.Errorf("at most %d flood connections open at once at the target, want %d (max_conns_per_ip)", p, maxConns)
	}
	if slowest > 2*time.Second {
		t.Errorf("the neighbour's slowest echo during the flood took %v", slowest)
	}
	t.Logf("phase 1: %d connections from %s in %v: %d admitted (at most %d open at once), %d refused; %d echoes for %s during the flood and 1 after, slowest %v",
		attempts, flooder, floodTime.Round(time.Millisecond), admitted1, target.peak.Load(), attempts-int(admitted1), during, neighbor, slowest.Round(time.Millisecond))
	if len(guardLines(r.logs.String(), "visitor="+flooder+":", `reason="too many open connections from this address"`)) == 0 {
		t.Error("relay log has no refusal for too many open connections")
	}

	// Phase 2: the held connections closed, 1000 short ones: the bucket
	// (burst, then rate) decides.
	for _, c := range held {
		c.Close()
	}
	waitFor(t, 10*time.Second, "the flood connections to end at the target", func() bool { return target.open.Load() == 0 })
	var admitted2, refused2 atomic.Int64
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Go(func() {
			for i := w; i < attempts; i += workers {
				c, err := guardDial(flooder, pub)
				if guardEnded(err) {
					refused2.Add(1)
					continue
				}
				if err != nil {
					t.Errorf("short connection %d: %v", i, err)
					return
				}
				c.Write([]byte{guardMark})
				c.CloseWrite()
				got, err := guardEnd(c, 5*time.Second)
				c.Close()
				switch {
				case string(got) == string(guardMark) && errors.Is(err, io.EOF):
					admitted2.Add(1)
				case len(got) == 0 && guardEnded(err):
					refused2.Add(1)
				default:
					t.Errorf("short connection %d: got %q, %v", i, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// The bucket starts full and refills at rate: whatever the timing, no
	// more than this were admitted since the flood began.
	bound := burst + int(elapsed.Seconds()*rate/60) + 1
	total := target.marked.Load()
	t.Logf("phase 2: %d short connections: %d admitted, %d refused; %d admitted in %v in all, bound %d",
		attempts, admitted2.Load(), refused2.Load(), total, elapsed.Round(time.Millisecond), bound)
	if int(total) > bound {
		t.Errorf("%d flood connections admitted in %v; the bucket (burst %d, %d a minute) allows at most %d", total, elapsed, burst, rate, bound)
	}
	if admitted2.Load() == 0 {
		t.Error("no short connection admitted: the bucket never let one through")
	}
	if total-admitted1 != admitted2.Load() {
		t.Errorf("target saw %d short flood connections, the visitor %d", total-admitted1, admitted2.Load())
	}
	if len(guardLines(r.logs.String(), "visitor="+flooder+":", `reason="too many new connections from this address"`)) == 0 {
		t.Error("relay log has no refusal for too many new connections")
	}
	if strings.Contains(r.logs.String(), "visitor address banned") {
		t.Error("a ban without visitors.ban_after")
	}
	guardExpectEcho(t, neighbor, pub)

	// Bans: a relay with ban_after 30 and a quick bucket.
	target2 := guardServe(t)
	const banAfter, fastRate = 30, 1200 // a minute: the bucket is full again after a second
	r2 := startRelayOver(t, tr, func(c *config.Relay) {
		c.Guard = config.Guard{VisitorMaxConns: maxConns, VisitorRate: fastRate, VisitorBurst: burst, VisitorBanAfter: banAfter, VisitorBanFor: time.Minute}
	})
	port2 := freePort(t)
	a2 := startAgent(t, agentConfig(r2, tcpTunnel("flood", port2, target2.addr)))
	a2.waitSession(15 * time.Second)
	pub2 := publicAddr(port2)
	const attempts2 = 100
	held2, _ := guardHold(t, flooder, pub2, attempts2)
	banLines := func() []string {
		return guardLines(r2.logs.String(), `msg="visitor address banned from tunnel"`, "tunnel=flood", "visitor="+flooder+":")
	}
	waitFor(t, 15*time.Second, "the relay to decide on every flood connection", func() bool {
		return int(target2.marked.Load())+refusals(r2.logs.String())+len(banLines()) >= attempts2
	})
	if n := len(banLines()); n != 1 {
		t.Fatalf("relay logged %d bans of %s, want 1", n, flooder)
	}
	banned := len(guardLines(r2.logs.String(), "visitor="+flooder+":", `reason="banned for too many connections"`))
	t.Logf("ban: %d connections held: %d admitted, %d refused before the ban, %d refused as banned; %s",
		attempts2, target2.marked.Load(), attempts2-int(target2.marked.Load())-banned, banned, banLines()[0])
	if want := attempts2 - maxConns - banAfter; banned != want {
		t.Errorf("%d connections refused as banned, want %d (after %d admitted and %d refused)", banned, want, maxConns, banAfter)
	}
	for _, c := range held2 {
		c.Close()
	}
	waitFor(t, 10*time.Second, "the flood connections to end at the target", func() bool { return target2.open.Load() == 0 })
	time.Sleep(time.Duration(float64(burst)/fastRate*float64(time.Minute)) + 200*time.Millisecond)
	before := target2.accepts.Load()
	for range 3 {
		guardExpectRefused(t, flooder, pub2)
	}
	guardExpectEcho(t, neighbor, pub2)
	time.Sleep(100 * time.Millisecond)
	if n := target2.accepts.Load() - before; n != 1 {
		t.Errorf("target accepted %d connections after the ban, want 1 (the neighbour's)", n)
	}
	if n := len(guardLines(r2.logs.String(), "visitor="+flooder+":", `reason="banned for too many connections"`)); n != banned+3 {
		t.Errorf("relay logged %d refusals as banned, want %d", n, banned+3)
	}
}

// guardTLSLink makes a TLS client connection a tunnel.Conn, for
// tunnel.Authenticate.
type guardTLSLink struct{ *tls.Conn }

func (l guardTLSLink) Handshake(ctx context.Context) error { return l.HandshakeContext(ctx) }
func (l guardTLSLink) Refuse()                             { l.Close() }
func (l guardTLSLink) Admission() tunnel.Admission         { return nil }
func (l guardTLSLink) Mux(tunnel.SessionConfig) (tunnel.Session, error) {
	return nil, errors.New("not for sessions")
}

// guardQUICLink makes a QUIC connection's first stream a tunnel.Conn.
type guardQUICLink struct {
	conn *quic.Conn
	st   *quic.Stream
}

func (l guardQUICLink) Read(p []byte) (int, error)           { return l.st.Read(p) }
func (l guardQUICLink) Write(p []byte) (int, error)          { return l.st.Write(p) }
func (l guardQUICLink) Handshake(context.Context) error      { return nil }
func (l guardQUICLink) ConnectionState() tls.ConnectionState { return l.conn.ConnectionState().TLS }
func (l guardQUICLink) SetDeadline(t time.Time) error        { return l.st.SetDeadline(t) }
func (l guardQUICLink) LocalAddr() net.Addr                  { return l.conn.LocalAddr() }
func (l guardQUICLink) RemoteAddr() net.Addr                 { return l.conn.RemoteAddr() }
func (l guardQUICLink) Close() error                         { return l.conn.CloseWithError(0, "") }
func (l guardQUICLink) Refuse()                              { l.Close() }
func (l guardQUICLink) Admission() tunnel.Admission          { return nil }
func (l guardQUICLink) Mux(tunnel.SessionConfig) (tunnel.Session, error) {
	return nil, errors.New("not for sessions")
}

// guardQUICDial runs a QUIC handshake with the relay at addr from a UDP
// socket on the address from. close ends the connection and frees the
// socket.
func guardQUICDial(ctx context.Context, from, addr, fingerprint string) (conn *quic.Conn, close func(), err error) {
	conf, err := tunnel.PinnedTLSConfig(fingerprint)
	if err != nil {
		return nil, nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)})
	if err != nil {
		return nil, nil, err
	}
	qt := &quic.Transport{Conn: udp}
	release := func() {
		qt.Close()
		udp.Close()
	}
	conn, err = qt.Dial(ctx, raddr, conf, &quic.Config{HandshakeIdleTimeout: 5 * time.Second})
	if err != nil {
		release()
		return nil, nil, err
	}
	return conn, func() { conn.CloseWithError(0, ""); release() }, nil
}

// guardLogin logs in to the relay with secret from the address from, over
// tr, and returns the result of tunnel.Authenticate (or what failed
// before it).
func guardLogin(tr, from string, r *relayHandle, secret string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if tr == config.TransportQUIC {
		conn, closeConn, err := guardQUICDial(ctx, from, r.addr, r.id.Fingerprint)
		if err != nil {
			return err
		}
		defer closeConn()
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		st.SetDeadline(deadline)
		if _, err := st.Write([]byte{'h'}); err != nil { // the authentication stream's marker
			return err
		}
		_, err = tunnel.Authenticate(guardQUICLink{conn, st}, []byte(secret), "intruder", "test", 0)
		return err
	}
	conf, err := tunnel.PinnedTLSConfig(r.id.Fingerprint)
	if err != nil {
		return err
	}
	raw, err := guardDial(from, r.addr)
	if err != nil {
		return err
	}
	c := tls.Client(raw, conf)
	defer c.Close()
	c.SetDeadline(deadline)
	if err := c.HandshakeContext(ctx); err != nil {
		return err
	}
	_, err = tunnel.Authenticate(guardTLSLink{c}, []byte(secret), "intruder", "test", 0)
	return err
}

const guardWrongToken = "wrong-token-0123456789abcdef"

// TestGuardAuthBan: agent_port.ban_after wrong tokens from one address ban
// it, and the relay logs the ban with the address. Banned, the address
// gets one login at a time: while one is in progress, its next connection
// is refused at once (over TCP before TLS; over QUIC before the
// handshake). A real agent from another address still logs in. Failed
// logins count even when other connections from the address end in
// between. (TestGuardBanLetsTokenIn: what a banned address's logins get.)
func TestGuardAuthBan(t *testing.T) {
	forEachTransport(t, testGuardAuthBan)
	t.Run("interleaved", testGuardAuthBanInterleaved)
}

func testGuardAuthBan(t *testing.T, tr string) {
	guardNeedSources(t)
	leak.Check(t)
	const intruder = "127.0.0.7"
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Guard = config.Guard{AuthBanAfter: 3, AuthBanFor: time.Minute}
	})
	for i := range 3 {
		if err := guardLogin(tr, intruder, r, guardWrongToken); !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("wrong-token login %d: %v, want an authentication failure", i+1, err)
		}
	}
	waitFor(t, 5*time.Second, "the relay to log the ban", func() bool {
		return len(guardLines(r.logs.String(), `msg="agent address banned after failed logins"`, "agent_addr="+intruder+":")) == 1
	})
	// The last failure is logged after the ban it started (the ban is
	// decided before the agent's answer goes out).
	waitFor(t, 5*time.Second, "the relay to log 3 failed logins", func() bool {
		return len(guardLines(r.logs.String(), `msg="agent authentication failed"`, "agent_addr="+intruder+":")) == 3
	})

	// One login in progress (a connection that says nothing), and the
	// next one is refused at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if tr == config.TransportQUIC {
		conn, closeConn, err := guardQUICDial(ctx, intruder, r.addr, r.id.Fingerprint)
		if err != nil {
			t.Fatalf("first QUIC connection from the banned address: %v", err)
		}
		defer closeConn()
		_, _, err = guardQUICDial(ctx, intruder, r.addr, r.id.Fingerprint)
		var te *quic.TransportError
		if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
			t.Errorf("second QUIC connection from the banned address: %v; want it refused", err)
		}
		conn.CloseWithError(0, "")
	} else {
		c, err := guardDial(intruder, r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := guardEnd(c, 300*time.Millisecond); !guardTimeout(err) {
			t.Fatalf("first connection from the banned address: got %q, %v; want it held for the TLS handshake", got, err)
		}
		start := time.Now()
		c2, err := guardDial(intruder, r.addr)
		if err != nil {
			t.Fatal(err)
		}
		got, err := guardEnd(c2, 5*time.Second)
		c2.Close()
		if len(got) > 0 || !guardEnded(err) {
			t.Errorf("second connection from the banned address: got %q, %v after %v; want it closed at once, before TLS", got, err, time.Since(start))
		}
		c.Close()
	}
	waitFor(t, 2*time.Second, "the relay to log the refusal", func() bool {
		return len(guardLines(r.logs.String(), `msg="agent connection refused"`, "agent_addr="+intruder+":", `reason="banned after failed logins: one login at a time, and one is in progress"`)) > 0
	})

	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, target)))
	a.waitSession(15 * time.Second)
	expectEcho(t, publicAddr(port))
}

// testGuardAuthBanInterleaved: wrong tokens from one address, two at a
// time, with a connection closed before TLS after each pair. Six failed
// logins within ban_for must ban the address (ban_after 3) whatever else
// it did in between.
func testGuardAuthBanInterleaved(t *testing.T) {
	guardNeedSources(t)
	leak.Check(t)
	const intruder = "127.0.0.7"
	r := startRelay(t, func(c *config.Relay) {
		c.Guard = config.Guard{AuthBanAfter: 3, AuthBanFor: time.Minute}
	})
	count := func(msg string) int {
		return len(guardLines(r.logs.String(), `msg="`+msg+`"`, "agent_addr="+intruder+":"))
	}
	banned := func() bool { return count("agent address banned after failed logins") > 0 }
	fails, aborts := 0, 0
	// Two wrong tokens, then a connection closed before TLS; three times,
	// or until the address is banned.
	for step := 0; step < 9 && !banned(); step++ {
		if step%3 == 2 {
			c, err := guardDial(intruder, r.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			aborts++
			waitFor(t, 2*time.Second, "the aborted connection in the relay log", func() bool {
				return count("agent TLS handshake failed") == aborts || banned()
			})
			continue
		}
		err := guardLogin(config.TransportTCP, intruder, r, guardWrongToken)
		if !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("wrong-token login %d: %v, want an authentication failure", fails+1, err)
		}
		fails++
		waitFor(t, 2*time.Second, "the failed login in the relay log", func() bool { return count("agent authentication failed") == fails })
	}
	for deadline := time.Now().Add(testenv.Deadline(0)); !banned() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the ban's log line may follow the last failure's
	}
	if !banned() {
		t.Fatalf("%d failed logins from %s within ban_for did not ban it (ban_after 3): the %d connections that ended before TLS in between reset its count of failures", fails, intruder, aborts)
	}
	if fails != 3 {
		t.Errorf("banned after %d failed logins, want 3", fails)
	}
	var re *tunnel.RejectError
	if err := guardLogin(config.TransportTCP, intruder, r, guardWrongToken); !errors.As(err, &re) || !strings.Contains(re.Message, "this address is banned") {
		t.Errorf("wrong token from the banned address: %v; want it told of the ban", err)
	}
}

// guardPartialHello returns the first n bytes of a real ClientHello.
func guardPartialHello(t *testing.T, fingerprint string, n int) []byte {
	t.Helper()
	conf, err := tunnel.PinnedTLSConfig(fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c1, conf).Handshake()
	}()
	b := make([]byte, n)
	_, err = io.ReadFull(c2, b)
	c2.Close()
	c1.Close()
	<-done
	if err != nil || b[0] != 0x16 {
		t.Fatalf("ClientHello: % x, %v", b, err)
	}
	return b
}

// guardIdle opens n connections from the address from to addr that say
// nothing, and tells apart those the relay closed within d (closed) from
// those it holds (held, open until the test ends).
func guardIdle(t *testing.T, from, addr string, n int, d time.Duration) (held []*net.TCPConn, closed int) {
	t.Helper()
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		c, err := guardDial(from, addr)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	ended := make([]bool, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			got, err := guardEnd(c, d)
			switch {
			case len(got) == 0 && guardEnded(err):
				ended[i] = true
			case !guardTimeout(err):
				t.Errorf("idle connection from %s: got %q, %v", from, got, err)
			}
		})
	}
	wg.Wait()
	for i, c := range conns {
		if ended[i] {
			closed++
		} else {
			held = append(held, c)
		}
	}
	return held, closed
}

// TestGuardPreAuthFlood: idle and half-TLS connections on the agent port.
// Within the caps, a real agent still logs in at once while they are held,
// the relay closes them at its handshake deadline, and its goroutines and
// descriptors come back down. Over the caps, the excess is closed at once.
// The flood is over TCP: over QUIC, quic-go runs the handshakes before
// the relay sees a connection.
func TestGuardPreAuthFlood(t *testing.T) {
	guardNeedSources(t)
	t.Run("caps", testGuardPreAuthCaps)
	t.Run("flood", testGuardPreAuthFlood)
}

func testGuardPreAuthCaps(t *testing.T) {
	leak.Check(t)
	const perIP, all = 16, 40
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.HandshakeTimeout = 30 * time.Second
		c.Guard = config.Guard{MaxHandshakes: all, MaxHandshakesPerIP: perIP}
	})
	// How long a connection may take to be closed at once: a busy
	// machine may not run the relay for a while.
	wait := testenv.Scale(time.Second)
	held30, closed30 := guardIdle(t, "127.0.0.30", r.addr, perIP+8, wait)
	if len(held30) != perIP || closed30 != 8 {
		t.Errorf("24 pending logins from 127.0.0.30: %d held, %d closed at once; want %d held", len(held30), closed30, perIP)
	}
	held31, _ := guardIdle(t, "127.0.0.31", r.addr, perIP, wait)
	held32, _ := guardIdle(t, "127.0.0.32", r.addr, perIP, wait)
	// With every slot taken, a newcomer either is refused or pushes out
	// the oldest login of the address with the most (once it is a second
	// old): never more than the caps are held.
	open := map[string]int{}
	for from, conns := range map[string][]*net.TCPConn{"127.0.0.30": held30, "127.0.0.31": held31, "127.0.0.32": held32} {
		for _, c := range conns {
			if _, err := guardEnd(c, 100*time.Millisecond); guardTimeout(err) {
				open[from]++
			}
		}
	}
	total := open["127.0.0.30"] + open["127.0.0.31"] + open["127.0.0.32"]
	log := r.logs.String()
	refusedAll := len(guardLines(log, `msg="agent connection refused"`, `reason="too many logins in progress"`))
	pushed := len(guardLines(log, `msg="agent login pushed out by a newer one"`))
	if total != all || open["127.0.0.30"] > perIP || open["127.0.0.31"] > perIP {
		t.Errorf("pending logins held: %v; want %d in all, none over %d", open, all, perIP)
	}
	if refusedAll+pushed != 3*perIP-all {
		t.Errorf("relay log: %d refusals for too many logins in all and %d logins pushed out; want %d together", refusedAll, pushed, 3*perIP-all)
	}
	if len(guardLines(log, `msg="agent connection refused"`, "agent_addr=127.0.0.30:", `reason="too many logins in progress from this address"`)) != 8 {
		t.Errorf("relay log: want 8 refusals of 127.0.0.30 for too many logins from the address")
	}
	t.Logf("pending logins held: %v; %d refused for the global cap, %d pushed out", open, refusedAll, pushed)
	for _, c := range slices.Concat(held30, held31, held32) {
		c.Close()
	}

	// With the agent's own address at its cap, it is turned away until
	// those logins end.
	// The relay may not have ended the logins closed above yet, and
	// refuse some of these for the global cap: then try again.
	var held1 []*net.TCPConn
	waitFor(t, 10*time.Second, fmt.Sprintf("%d pending logins from 127.0.0.1 held", perIP), func() bool {
		for _, c := range held1 {
			c.Close()
		}
		var closed int
		held1, closed = guardIdle(t, "127.0.0.1", r.addr, perIP, wait)
		return closed == 0
	})
	refused := func() int {
		return len(guardLines(r.logs.String(), `msg="agent connection refused"`, "agent_addr=127.0.0.1:"))
	}
	refused0 := refused()
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, target)))
	waitFor(t, 5*time.Second, "the agent to be refused", func() bool { return refused() > refused0 })
	// Refused before the TLS handshake, the agent reads the relay as
	// busy and tries again within a second, as for a closed port.
	// (Its log says so at the first failure and every 30th after; its
	// status says so at each.)
	waitFor(t, 20*time.Second, "the agent to read the refusal as busy", func() bool {
		if contains(a.logs.String(), "relay busy") {
			return true
		}
		ss := a.agent.Status().Sessions
		return len(ss) == 1 && contains(ss[0].Error, "relay busy")
	})
	time.Sleep(3 * time.Second) // several refusals: a growing back-off would show now
	start := time.Now()
	for _, c := range held1 {
		c.Close()
	}
	a.waitSession(3 * time.Second)
	t.Logf("with %d pending logins held from its address, the agent was refused; it logged in %v after they closed", perIP, time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
}

func testGuardPreAuthFlood(t *testing.T) {
	leak.Check(t)
	idle := max(*guardFlood, 20)
	stalled := idle / 5
	total := idle + stalled
	const sources = 20 // 127.0.0.100 to 127.0.0.119
	// The handshake deadline leaves the fresh agent below time to log in
	// while the flood is held, however busy the machine; slack is how
	// late after it the relay may close a connection and its reader see
	// it.
	timeout := testenv.Scale(4 * time.Second)
	if total > 2400 {
		timeout = testenv.Scale(time.Duration(total/600) * time.Second)
	}
	slack := testenv.Deadline(0)
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.HandshakeTimeout = timeout
		c.Guard = config.Guard{MaxHandshakes: max(4096, total+64), MaxHandshakesPerIP: (total+sources-1)/sources + 16}
	})
	hello := guardPartialHello(t, r.id.Fingerprint, 50)
	g0, fd0 := guardGoroutines(), leak.OpenFDs()

	type floodConn struct {
		c       *net.TCPConn
		stalled bool
		dialed  time.Time     // connected
		after   time.Duration // from connected to closed by the relay
		got     int
		err     error
	}
	fc := make([]floodConn, total)
	t.Cleanup(func() {
		for _, f := range fc {
			if f.c != nil {
				f.c.Close()
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	const workers = 8
	var failed atomic.Bool
	for w := range workers {
		wg.Go(func() {
			for i := w; i < total && !failed.Load(); i += workers {
				from := fmt.Sprintf("127.0.0.%d", 100+i%sources)
				c, err := guardDial(from, r.addr)
				if err != nil {
					failed.Store(true)
					t.Errorf("flood connection %d from %s: %v", i, from, err)
					return
				}
				f := &fc[i]
				f.c, f.dialed, f.stalled = c, time.Now(), i%6 == 5 && stalled > 0
				if f.stalled {
					if _, err := c.Write(hello); err != nil {
						failed.Store(true)
						t.Errorf("flood connection %d: %v", i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		t.FailNow()
	}
	nStalled := 0
	first := fc[0].dialed
	for _, f := range fc {
		if f.stalled {
			nStalled++
		}
		if f.dialed.Before(first) {
			first = f.dialed
		}
	}
	dialTime := time.Since(start)
	// Every connection has a relay goroutine waiting for its handshake
	// (give or take a few others coming and going).
	for deadline := first.Add(timeout); runtime.NumGoroutine() < g0+total-guardGoSlack; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not take in the flood before its handshake deadline: %d goroutines, %d before the flood; %d connections refused, %d handshakes failed",
				runtime.NumGoroutine(), g0, len(guardLines(r.logs.String(), `msg="agent connection refused"`)), len(guardLines(r.logs.String(), `msg="agent TLS handshake failed"`)))
		}
	}
	gPeak, fdPeak := runtime.NumGoroutine(), leak.OpenFDs()
	t.Logf("flood: %d idle + %d stalled mid-TLS connections from %d addresses, opened in %v, held by the relay after %v",
		total-nStalled, nStalled, sources, dialTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Readers see when the relay closes each one.
	var readers sync.WaitGroup
	for i := range fc {
		f := &fc[i]
		readers.Go(func() {
			f.c.SetReadDeadline(f.dialed.Add(timeout + slack + time.Second))
			n, err := f.c.Read(make([]byte, 64))
			f.after, f.got, f.err = time.Since(f.dialed), n, err
		})
	}

	// A fresh agent logs in while the flood is held.
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, target))
	cfg.ID = "fresh"
	agentStart := time.Now()
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	auth := time.Since(agentStart)
	stillHeld := runtime.NumGoroutine() >= g0+2*total-guardGoSlack
	if !stillHeld || time.Now().After(first.Add(timeout)) {
		t.Errorf("the flood was no longer held when the agent had logged in (%v after the flood began)", time.Since(start))
	}
	expectEcho(t, publicAddr(port))
	t.Logf("agent logged in (session and tunnel) %v after it started, with %d logins pending", auth.Round(time.Millisecond), total)

	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(testenv.Deadline(timeout + slack + 10*time.Second)):
		t.Fatal("readers did not finish")
	}
	var minAfter, maxAfter [2]time.Duration
	bad := 0
	for _, f := range fc {
		k := 0
		if f.stalled {
			k = 1
		}
		if minAfter[k] == 0 || f.after < minAfter[k] {
			minAfter[k] = f.after
		}
		maxAfter[k] = max(maxAfter[k], f.after)
		if f.got > 0 || !guardEnded(f.err) || f.after < timeout-250*time.Millisecond || f.after > timeout+slack {
			if bad++; bad <= 5 {
				t.Errorf("flood connection (stalled %v): read %d bytes, %v, %v after it connected; want closed by the relay %v after it connected", f.stalled, f.got, f.err, f.after, timeout)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... and %d more", bad-5)
	}
	t.Logf("closed by the relay after: idle %v to %v, stalled %v to %v (handshake_timeout %v)",
		minAfter[0].Round(time.Millisecond), maxAfter[0].Round(time.Millisecond), minAfter[1].Round(time.Millisecond), maxAfter[1].Round(time.Millisecond), timeout)

	a.stop()
	for _, f := range fc {
		f.c.Close()
	}
	waitFor(t, 10*time.Second, "goroutines and descriptors near their count before the flood", func() bool {
		return runtime.NumGoroutine() <= g0+guardGoSlack && leak.OpenFDs() <= fd0+5
	})
	t.Logf("goroutines: %d before, %d with the flood held, %d after; descriptors: %d, %d, %d",
		g0, gPeak, runtime.NumGoroutine(), fd0, fdPeak, leak.OpenFDs())
	if n := len(guardLines(r.logs.String(), `msg="agent connection refused"`)); n > 0 {
		t.Errorf("relay refused %d flood connections within the caps", n)
	}
}

// guardJunk is what a junk connection sends after TLS.
var guardJunk = []struct {
	name string
	make func(rng *rand.ChaCha8) []byte
}{
	{"yamux frames", func(rng *rand.ChaCha8) []byte {
		// A yamux client opening stream 1 (window update with SYN),
		// sending 512 bytes on it, and pinging.
		hdr := func(typ byte, flags uint16, stream, length uint32) []byte {
			b := []byte{0, typ}
			b = binary.BigEndian.AppendUint16(b, flags)
			b = binary.BigEndian.AppendUint32(b, stream)
			return binary.BigEndian.AppendUint32(b, length)
		}
		b := hdr(1, 1, 1, 256<<10)
		b = append(b, hdr(0, 0, 1, 512)...)
		data := make([]byte, 512)
		rng.Read(data)
		b = append(b, data...)
		return append(b, hdr(2, 1, 0, 7)...)
	}},
	{"oversized hello", func(rng *rand.ChaCha8) []byte {
		b := make([]byte, 3+1024)
		rng.Read(b)
		b[0], b[1], b[2] = 0x02, 0xff, 0xff
		return b
	}},
	{"unknown frame", func(rng *rand.ChaCha8) []byte {
		b := make([]byte, 3+8)
		rng.Read(b)
		b[0], b[1], b[2] = 0x7f, 0, 8
		return b
	}},
}

// TestGuardPreAuthJunk: junk on the agent port, before and after TLS, is
// closed promptly (long before the handshake deadline); the relay's
// goroutines come back down and the connected agent keeps its session.
func TestGuardPreAuthJunk(t *testing.T) {
	guardNeedSources(t)
	leak.Check(t)
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.HandshakeTimeout = 10 * time.Second
		c.Guard = config.Guard{}
	})
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, target)))
	a.waitSession(15 * time.Second)
	expectEcho(t, publicAddr(port))
	conf, err := tunnel.PinnedTLSConfig(r.id.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	g0, fd0 := guardGoroutines(), leak.OpenFDs()

	const random, afterTLS, workers = 200, 200, 8
	prompt := 2 * time.Second
	var slowest [2]atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		from := fmt.Sprintf("127.0.0.%d", 40+w) // one connection at a time per address
		rng := rand.NewChaCha8([32]byte{byte(w)})
		wg.Go(func() {
			for i := w; i < random+afterTLS; i += workers {
				if err := guardJunkConn(from, r.addr, conf, rng, i, random, prompt, &slowest); err != nil {
					t.Errorf("junk connection %d from %s: %v", i, from, err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections of random bytes and %d of junk after TLS in %v; slowest closed after %v and %v",
		random, afterTLS, time.Since(start).Round(time.Millisecond), time.Duration(slowest[0].Load()).Round(time.Millisecond), time.Duration(slowest[1].Load()).Round(time.Millisecond))

	waitFor(t, 10*time.Second, "goroutines and descriptors near their count before the junk", func() bool {
		return runtime.NumGoroutine() <= g0+guardGoSlack && leak.OpenFDs() <= fd0+5
	})
	t.Logf("goroutines: %d before, %d after; descriptors: %d, %d", g0, runtime.NumGoroutine(), fd0, leak.OpenFDs())
	// The relay closes a failed login's connection before it logs it:
	// give the last lines up to 10 s; the checks below say what is missing.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		log := r.logs.String()
		if len(guardLines(log, `msg="agent TLS handshake failed"`)) >= random &&
			len(guardLines(log, `msg="agent handshake failed"`)) >= afterTLS {
			break
		}
	}
	log := r.logs.String()
	if n := len(guardLines(log, `msg="agent TLS handshake failed"`)); n < random {
		t.Errorf("relay logged %d failed TLS handshakes, want at least %d", n, random)
	}
	if n := len(guardLines(log, `msg="agent handshake failed"`)); n != afterTLS {
		t.Errorf("relay logged %d failed logins after TLS, want %d", n, afterTLS)
	}
	for _, want := range []string{"frame too large", "unexpected frame type"} {
		if len(guardLines(log, `msg="agent handshake failed"`, "read hello", want)) == 0 {
			t.Errorf("relay log has no failed login for %q", want)
		}
	}
	if strings.Contains(log, "agent authentication failed") {
		t.Error("junk counted as a failed login")
	}
	if n := len(guardLines(log, `msg="agent session up"`)); n != 1 || len(a.sessions) != 0 {
		t.Errorf("%d sessions on the relay, %d new ones on the agent; want the first one only", n, len(a.sessions))
	}
	expectEcho(t, publicAddr(port))
}

// guardJunkConn sends one junk connection: connection i < random sends
// random bytes instead of a ClientHello, the others complete TLS and send
// one of guardJunk instead of the hello. The relay must close it within
// prompt; slowest records the longest wait for each kind.
func guardJunkConn(from, addr string, conf *tls.Config, rng *rand.ChaCha8, i, random int, prompt time.Duration, slowest *[2]atomic.Int64) error {
	raw, err := guardDial(from, addr)
	if err != nil {
		return err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	var c net.Conn = raw
	var junk []byte
	kind := 0
	if i < random {
		junk = make([]byte, 64+rng.Uint64()%960)
		rng.Read(junk)
		// Not a handshake or alert record, so that no prefix makes the
		// TLS server wait for a record body.
		if junk[0] == 0x15 || junk[0] == 0x16 || junk[0] == 0x80 {
			junk[0] = 'G'
		}
	} else {
		kind = 1
		tc := tls.Client(raw, conf)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c = tc
		junk = guardJunk[i%len(guardJunk)].make(rng)
	}
	if _, err := c.Write(junk); err != nil && !guardEnded(err) {
		return err
	}
	sent := time.Now()
	got, err := guardEnd(c, prompt+time.Second)
	after := time.Since(sent)
	for p := slowest[kind].Load(); int64(after) > p && !slowest[kind].CompareAndSwap(p, int64(after)); p = slowest[kind].Load() {
	}
	if !guardEnded(err) || after > prompt {
		return fmt.Errorf("sent %d bytes of junk (%s): got %d bytes, %v after %v; want the connection closed within %v", len(junk), guardJunkName(i, random), len(got), err, after, prompt)
	}
	// After TLS the relay speaks first: its challenge, nothing more.
	if kind == 1 && len(got) > 0 && got[0] != 0x01 {
		return fmt.Errorf("after the junk (%s), got % x", guardJunkName(i, random), got)
	}
	return nil
}

func guardJunkName(i, random int) string {
	if i < random {
		return "random bytes"
	}
	return guardJunk[i%len(guardJunk)].name
}

// guardProxyTarget is an echo target behind a real PROXY protocol parser,
// which requires the header.
type guardProxyTarget struct {
	addr string
	seen chan guardProxySeen
}

// guardProxySeen is what the target learned from one connection's header.
type guardProxySeen struct {
	remote, local string
	version       byte
}

func guardServeProxy(t *testing.T) *guardProxyTarget {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{
		Listener: l,
		ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REQUIRE, nil
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	p := &guardProxyTarget{addr: l.Addr().String(), seen: make(chan guardProxySeen, 16)}
	serveOn(t, pl, func(c net.Conn) {
		pc := c.(*proxyproto.Conn)
		h := pc.ProxyHeader()
		if h == nil {
			t.Errorf("PROXY target: no header from %v", pc.Raw().RemoteAddr())
			return
		}
		p.seen <- guardProxySeen{remote: pc.RemoteAddr().String(), local: pc.LocalAddr().String(), version: h.Version}
		io.Copy(pc, pc)
		if tc, ok := pc.TCPConn(); ok {
			tc.CloseWrite()
		}
	})
	return p
}

// TestGuardProxyProtocol: with proxy_protocol v1 or v2, a target behind
// github.com/pires/go-proxyproto sees the visitor's real address and port
// (IPv4 and IPv6) and the relay's public address, then the visitor's data
// byte for byte.
func TestGuardProxyProtocol(t *testing.T) { forEachTransport(t, testGuardProxyProtocol) }

func testGuardProxyProtocol(t *testing.T, tr string) {
	guardNeedSources(t)
	leak.Check(t)
	check := func(r *relayHandle, from, host string, freePort func(*testing.T) uint16) {
		t.Helper()
		targets := map[string]*guardProxyTarget{"v1": guardServeProxy(t), "v2": guardServeProxy(t)}
		ports := map[string]uint16{}
		var tunnels []config.Tunnel
		for _, v := range []string{"v1", "v2"} {
			ports[v] = freePort(t)
			tn := tcpTunnel("pp-"+v, ports[v], targets[v].addr)
			tn.ProxyProtocol = v
			tunnels = append(tunnels, tn)
		}
		a := startAgent(t, agentConfig(r, tunnels...))
		a.waitSession(15 * time.Second)
		msg := make([]byte, 64<<10)
		rand.NewChaCha8([32]byte{9}).Read(msg)
		for _, v := range []string{"v1", "v2"} {
			pub := net.JoinHostPort(host, strconv.Itoa(int(ports[v])))
			c, err := guardDial(from, pub)
			if err != nil {
				t.Fatal(err)
			}
			visitor := c.LocalAddr().String()
			c.SetDeadline(time.Now().Add(testenv.Deadline(20 * time.Second)))
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("%s from %s: %d of %d bytes back, equal %v, %v", v, visitor, len(got), len(msg), bytes.Equal(got, msg), err)
			}
			select {
			case s := <-targets[v].seen:
				want := guardProxySeen{remote: visitor, local: pub, version: v[1] - '0'}
				if s != want {
					t.Errorf("PROXY %s: target saw %+v, want %+v", v, s, want)
				} else {
					t.Logf("PROXY %s: target saw visitor %s, relay address %s", v, s.remote, s.local)
				}
			case <-time.After(testenv.Deadline(5 * time.Second)):
				t.Errorf("PROXY %s: the target saw no connection", v)
			}
		}
	}
	check(startRelayOver(t, tr, nil), "127.0.0.9", "127.0.0.1", freePort)
	if !guardHaveIPv6() {
		t.Log("no IPv6 loopback: skipping the ::1 visitor")
		return
	}
	check(startRelayOver(t, tr, func(c *config.Relay) { c.BindAddr = "::1" }), "::1", "::1", guardFreePort6)
}

// guardBinStartRelay is binStartRelay for a relay limited to nofile open
// descriptors (set by the shell before it runs the relay), with extra
// arguments.
func guardBinStartRelay(t *testing.T, dataDir string, port uint16, nofile int, extra ...string) (*binProc, binBanner) {
	t.Helper()
	path := binPath(t, "relay")
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skipf("no shell to set the descriptor limit: %v", err)
	}
	args := append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), path,
		"--data-dir", dataDir, "--listen", publicAddr(port), "--bind-addr", "127.0.0.1", "--advertise", "127.0.0.1"}, extra...)
	p := binStartVia(t, "relay", sh, args...)
	return p, binAwaitBanner(p, dataDir)
}

// guardCPU returns the CPU time process pid used so far, or -1 where
// /proc does not tell.
func guardCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (100 a second).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(u+k) * 10 * time.Millisecond
}

// guardProcFDs counts the open descriptors of process pid (-1: unknown).
func guardProcFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestGuardEMFILE: a relay out of descriptors (run with a limit of 64 and
// flooded on its agent port and a public port) logs its accept errors and
// backs off, without spinning or exiting; once the flood is gone it
// accepts again, and the agent's session lived through it all.
func TestGuardEMFILE(t *testing.T) {
	guardNeedSources(t)
	leak.Check(t)
	const nofile, flood = 64, 200
	target := serve(t, echo)
	relayPort, public := freePort(t), freePort(t)
	r, b := guardBinStartRelay(t, t.TempDir(), relayPort, nofile,
		"--handshake-timeout", "30s", "--max-handshakes-per-ip", "1000",
		"--visitor-max-conns", "1000", "--visitor-rate", "100000", "--visitor-burst", "100000", "--visitor-ban-after", "0")
	pid := r.cmd.Process.Pid
	a := startAgent(t, config.Agent{
		Relay:            b.relay,
		Transport:        config.TransportTCP,
		Token:            b.token,
		Fingerprint:      b.fingerprint,
		ID:               "home-pc",
		Tunnels:          []config.Tunnel{tcpTunnel("web", public, target)},
		DialTimeout:      2 * time.Second,
		HandshakeTimeout: 5 * time.Second,
		ReconnectMax:     2 * time.Second,
		Session:          config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 5 * time.Second, StreamWindow: 4 << 20},
	})
	a.waitSession(15 * time.Second)
	expectEcho(t, publicAddr(public))
	fdStart := guardProcFDs(pid)

	var conns []*net.TCPConn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range flood {
		for _, to := range []struct{ from, addr string }{
			{fmt.Sprintf("127.0.0.%d", 60+i%4), b.relay},
			{fmt.Sprintf("127.0.0.%d", 70+i%4), publicAddr(public)},
		} {
			c, err := guardDial(to.from, to.addr)
			if err != nil {
				t.Fatalf("flood connection %d to %s: %v", i, to.addr, err)
			}
			conns = append(conns, c)
		}
	}
	r.await(10*time.Second, "accept errors on both ports", func() bool {
		log := r.stderr.String()
		return len(guardLines(log, `msg="accept agent"`, "too many open files")) > 0 &&
			len(guardLines(log, `msg="accept visitor"`, "too many open files")) > 0
	})
	// Out of descriptors, it backs off: little CPU, few log lines.
	cpu0, agentErrs0, visitorErrs0 := guardCPU(pid), r.count(`msg="accept agent"`), r.count(`msg="accept visitor"`)
	const window = 3 * time.Second
	time.Sleep(window)
	cpu := guardCPU(pid) - cpu0
	agentErrs, visitorErrs := r.count(`msg="accept agent"`)-agentErrs0, r.count(`msg="accept visitor"`)-visitorErrs0
	fdFlood := guardProcFDs(pid)
	t.Logf("out of descriptors (%d descriptors open, %d before the flood; limit %d): in %v the relay used %v of CPU and logged %d agent and %d visitor accept errors",
		fdFlood, fdStart, nofile, window, cpu, agentErrs, visitorErrs)
	if cpu0 >= 0 && cpu > window/3 {
		t.Errorf("relay used %v of CPU in %v while out of descriptors: spinning?", cpu, window)
	}
	if agentErrs > 50 || visitorErrs > 50 {
		t.Errorf("relay logged %d agent and %d visitor accept errors in %v: no back-off?", agentErrs, visitorErrs, window)
	}
	if !r.running() {
		t.Fatal("relay exited")
	}

	// The flood ends; the relay accepts again.
	for _, c := range conns {
		c.Close()
	}
	start := time.Now()
	guardExpectEcho(t, "127.0.0.80", publicAddr(public))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a new visitor got its echo only %v after the flood ended", d)
	}
	t.Logf("a new visitor got its echo %v after the flood ended", time.Since(start).Round(time.Millisecond))
	conf, err := tunnel.PinnedTLSConfig(b.fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := guardDial("127.0.0.81", b.relay)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, conf)
	tc.SetDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	if err := tc.Handshake(); err != nil {
		t.Errorf("TLS handshake on the agent port after the flood: %v", err)
	}
	tc.Close()
	t.Logf("agent port: TLS handshake done %v after the flood ended; relay has %d descriptors open", time.Since(start).Round(time.Millisecond), guardProcFDs(pid))
	if n := r.count(`msg="agent session up"`); n != 1 || len(a.sessions) != 0 {
		t.Errorf("relay logged %d sessions, the agent %d new ones; want the first session to have lived through", n, len(a.sessions))
	}
	if !r.running() {
		t.Fatal("relay exited")
	}
}

// TestGuardKnownAgentsAfterRestart: a restarted relay remembers the
// addresses its agents logged in from (known_agents in its data
// directory): while a flood holds every login slot, its agent comes back
// at once, and a stranger does not get in.
func TestGuardKnownAgentsAfterRestart(t *testing.T) {
	guardNeedSources(t)
	leak.Check(t)
	const all = 8
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.HandshakeTimeout = 30 * time.Second
		c.Guard = config.Guard{MaxHandshakes: all, MaxHandshakesPerIP: all}
	})
	port := freePort(t)
	acfg := agentConfig(r, tcpTunnel("web", port, target))
	a := startAgent(t, acfg)
	a.waitSession(10 * time.Second)
	a.stop()
	r.stop()
	known, err := os.ReadFile(filepath.Join(r.cfg.DataDir, relay.KnownAgentsFile))
	if err != nil || !strings.HasPrefix(string(known), "127.0.0.1 ") {
		t.Fatalf("known agents after the relay stopped: %q, %v", known, err)
	}

	cfg := r.cfg
	cfg.Listen = r.addr
	r2 := runRelay(t, cfg, r.id)
	held, _ := guardIdle(t, "127.0.0.40", r2.addr, all, testenv.Scale(time.Second))
	if len(held) != all {
		t.Fatalf("flood holds %d logins, want %d", len(held), all)
	}
	start := time.Now()
	a = startAgent(t, acfg)
	a.waitSession(5 * time.Second)
	t.Logf("with every login slot of the restarted relay held, the known agent logged in %v after its start", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))

	// A stranger gets a slot only by pushing out one of the flood's.
	stranger, _ := guardIdle(t, "127.0.0.41", r2.addr, 1, testenv.Scale(time.Second))
	open := 0
	for _, c := range held {
		if _, err := guardEnd(c, 100*time.Millisecond); guardTimeout(err) {
			open++
		}
	}
	if open+len(stranger) != all {
		t.Fatalf("%d flood logins and %d of the stranger's held; want %d in all", open, len(stranger), all)
	}
}
