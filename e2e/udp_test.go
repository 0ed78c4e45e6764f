package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// UDP tunnels: each visitor address on the relay's public UDP port is a
// flow with a socket of its own on the agent's side. Loopback UDP may drop
// datagrams under load, so visitors resend a bounded number of times
// instead of asserting that nothing is lost; what arrives must always be
// exactly what was sent, one datagram for one datagram.

const (
	udpWait     = 2 * time.Second // on average, for one echo before a resend
	udpAttempts = 4               // one send and up to 3 resends
)

func udpTunnel(name string, port uint16, target string) config.Tunnel {
	return config.Tunnel{Name: name, Protocol: "udp", RemotePort: port, Target: target}
}

// udpFreePort returns a port number that was free a moment ago on
// 127.0.0.1 for both UDP and TCP.
func udpFreePort(t *testing.T) uint16 {
	t.Helper()
	for range 50 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		l, err := net.Listen("tcp", publicAddr(port))
		pc.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no port number free for both UDP and TCP")
	return 0
}

// udpPortFree reports whether the UDP port addr can be bound now.
func udpPortFree(addr netip.AddrPort) bool {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// udpDrops returns how many datagrams the kernel dropped for the UDP
// socket on 127.0.0.1:port because its receive buffer was full, or -1
// where that is unknown.
func udpDrops(port uint16) int {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return -1
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 13 && f[1] == local {
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// udpServer is a UDP target on loopback that remembers who sent to it.
type udpServer struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	peers []netip.AddrPort // distinct senders, in order of their first datagram
}

// udpServe runs handle for every datagram to a new UDP socket on addr
// until the test ends. handle runs in the read loop, one call at a time.
func udpServe(t *testing.T, addr string, handle func(pc *net.UDPConn, from netip.AddrPort, p []byte)) *udpServer {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetReadBuffer(4 << 20)
	pc.SetWriteBuffer(4 << 20)
	s := &udpServer{pc: pc}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			s.mu.Lock()
			seen := false
			for _, p := range s.peers {
				seen = seen || p == from
			}
			if !seen {
				s.peers = append(s.peers, from)
			}
			s.mu.Unlock()
			handle(pc, from, buf[:n])
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return s
}

// udpEcho is a UDP target that sends every datagram back to its sender.
func udpEcho(t *testing.T, addr string) *udpServer {
	t.Helper()
	return udpServe(t, addr, func(pc *net.UDPConn, from netip.AddrPort, p []byte) {
		pc.WriteToUDPAddrPort(p, from)
	})
}

func (s *udpServer) addr() string { return s.pc.LocalAddr().String() }

// senders returns the distinct addresses that sent to s so far.
func (s *udpServer) senders() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.peers...)
}

// udpVisitor is one visitor address on a tunnel's public UDP port.
type udpVisitor struct {
	c     *net.UDPConn
	buf   []byte
	sent  map[string]bool // messages already echoed: later copies are late echoes
	sends int             // datagrams sent, resends included
	most  int             // most sends of one message
}

func udpDial(t *testing.T, port uint16) *udpVisitor {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(publicAddr(port))))
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return &udpVisitor{c: c, buf: make([]byte, 1<<16), sent: make(map[string]bool)}
}

// exchange sends msg and waits for its echo, resending after about
// udpWait, up to udpAttempts sends in all.
// Every datagram read must be msg itself or a late echo of one of the
// visitor's earlier messages, byte for byte.
func (v *udpVisitor) exchange(msg []byte) error {
	for attempt := 1; attempt <= udpAttempts; attempt++ {
		if _, err := v.c.Write(msg); err != nil {
			return fmt.Errorf("send %d bytes: %w", len(msg), err)
		}
		v.sends++
		v.most = max(v.most, attempt)
		// A random wait, so that visitors whose datagrams were dropped
		// together do not all resend together.
		v.c.SetReadDeadline(time.Now().Add(udpWait/2 + rand.N(udpWait)))
		for {
			got, err := v.recv()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break // resend
			}
			if err != nil {
				return fmt.Errorf("waiting for the echo of %d bytes: %w", len(msg), err)
			}
			if bytes.Equal(got, msg) {
				v.sent[string(msg)] = true
				return nil
			}
			if !v.sent[string(got)] {
				return fmt.Errorf("sent %d bytes, got back %d bytes this visitor never sent: %s", len(msg), len(got), udpShow(got))
			}
		}
	}
	return fmt.Errorf("no echo of %d bytes after %d sends", len(msg), udpAttempts)
}

// recv reads one datagram; the result is valid until the next read.
func (v *udpVisitor) recv() ([]byte, error) {
	n, err := v.c.Read(v.buf)
	return v.buf[:n], err
}

// expectSilence fails the test if anything arrives within d.
func (v *udpVisitor) expectSilence(t *testing.T, d time.Duration) {
	t.Helper()
	v.c.SetReadDeadline(time.Now().Add(d))
	got, err := v.recv()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return
	}
	t.Fatalf("expected nothing for %v, got %s, %v", d, udpShow(got), err)
}

func (v *udpVisitor) addr() netip.AddrPort { return v.c.LocalAddr().(*net.UDPAddr).AddrPort() }

// udpShow describes a datagram briefly.
func udpShow(p []byte) string {
	if len(p) > 24 {
		return fmt.Sprintf("%q... (%d bytes)", p[:24], len(p))
	}
	return fmt.Sprintf("%q", p)
}

// udpFlowLines returns a log's "UDP visitor flow" lines of one tunnel.
func udpFlowLines(log, name string) []string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `msg="UDP visitor flow"`) && strings.Contains(l, " tunnel="+name+" ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// udpLogDuration returns the duration= field of a log line.
func udpLogDuration(t *testing.T, line string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(` duration=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no duration in %q", line)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("duration in %q: %v", line, err)
	}
	return d
}

// TestUDPManyVisitors: 50 visitors at once, each with datagrams of its own
// from 1 byte to 65000 bytes, get back exactly their own datagrams, each
// as one datagram. Over QUIC the small ones travel as QUIC datagrams and
// the large ones on the flow's stream.
func TestUDPManyVisitors(t *testing.T) { forEachTransport(t, testUDPManyVisitors) }

func testUDPManyVisitors(t *testing.T, tr string) {
	leak.Check(t)
	const n, rounds = 50, 2
	sizes := []int{1, 100, 1200, 1400, 8 << 10, 65000}
	target := udpEcho(t, "127.0.0.1:0")
	r := startRelayOver(t, tr, nil)
	port := udpFreePort(t)
	a := startAgent(t, agentConfig(r, udpTunnel("echo", port, target.addr())))
	a.waitSession(10 * time.Second)

	visitors := make([]*udpVisitor, n)
	for i := range visitors {
		visitors[i] = udpDial(t, port)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, v := range visitors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range rounds {
				for _, size := range sizes {
					// The first byte tells visitor and round apart, so that
					// even the 1-byte datagrams are all different.
					msg := make([]byte, size)
					rand.NewChaCha8([32]byte{byte(i), byte(round), byte(size), byte(size >> 8)}).Read(msg)
					msg[0] = byte(i + 128*round)
					if err := v.exchange(msg); err != nil {
						errs <- fmt.Errorf("visitor %d, round %d: %w", i, round, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	sends, most := 0, 0
	for _, v := range visitors {
		sends += v.sends
		most = max(most, v.most)
	}
	t.Logf("%d visitors, %d datagrams each, in %v; %d resent, at most %d sends of one; the relay's public socket dropped %d",
		n, rounds*len(sizes), time.Since(start).Round(time.Millisecond), sends-n*rounds*len(sizes), most, udpDrops(port))
	// One flow, and so one socket on the agent's side, per visitor.
	if got := len(target.senders()); got != n {
		t.Errorf("the target saw %d senders, want %d", got, n)
	}
}

// TestUDPFlowExpiry: a flow ends after udp_flow_timeout without a
// datagram either way, on both sides; a datagram in either direction
// keeps it; the same visitor address then gets a new flow.
func TestUDPFlowExpiry(t *testing.T) { forEachTransport(t, testUDPFlowExpiry) }

func testUDPFlowExpiry(t *testing.T, tr string) {
	leak.Check(t)
	// Ten times the gap between the datagrams of a flow that lasts, so
	// that a busy machine's delays do not end it (300 ms did).
	timeout := testenv.Scale(time.Second)
	target := udpEcho(t, "127.0.0.1:0")
	// The talker answers any datagram with 10 of its own, 100 ms apart.
	talker := udpServe(t, "127.0.0.1:0", func(pc *net.UDPConn, from netip.AddrPort, p []byte) {
		for k := range 10 {
			if k > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := pc.WriteToUDPAddrPort([]byte("tick "+strconv.Itoa(k)), from); err != nil {
				return
			}
		}
	})
	r := startRelayOver(t, tr, func(c *config.Relay) { c.UDPFlowTimeout = timeout })
	pEcho, pTalk := udpFreePort(t), udpFreePort(t)
	a := startAgent(t, agentConfig(r, udpTunnel("echo", pEcho, target.addr()), udpTunnel("talk", pTalk, talker.addr())))
	a.waitSession(10 * time.Second)

	// A visitor talks, then goes quiet. An empty datagram is one too.
	v := udpDial(t, pEcho)
	for _, msg := range []string{"", "first flow"} {
		if err := v.exchange([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	quiet := time.Now()
	waitFor(t, 5*time.Second, "relay log of the idle flow's end", func() bool {
		return len(udpFlowLines(r.logs.String(), "echo")) == 1
	})
	if d := time.Since(quiet); d < timeout-50*time.Millisecond {
		t.Errorf("flow ended %v after its last datagram; udp_flow_timeout is %v", d, timeout)
	}
	line := udpFlowLines(r.logs.String(), "echo")[0]
	want := []string{"visitor=" + v.addr().String(), fmt.Sprintf("datagrams_in=%d ", v.sends), "end=idle"}
	if !contains(line, want...) {
		t.Errorf("relay log %q, want %q", line, want)
	}
	waitFor(t, 5*time.Second, "agent log of the flow's end", func() bool {
		return len(udpFlowLines(a.logs.String(), "echo")) == 1
	})
	senders := target.senders()
	if len(senders) != 1 {
		t.Fatalf("target senders %v, want the flow's socket only", senders)
	}
	if !udpPortFree(senders[0]) {
		t.Errorf("the agent still holds the ended flow's socket %v", senders[0])
	}

	// The same visitor address gets a new flow, which lasts as long as the
	// visitor keeps sending: 10 datagrams 100 ms apart.
	firstSends := v.sends
	for k := range 10 {
		if k > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err := v.exchange([]byte("second flow " + strconv.Itoa(k))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(udpFlowLines(r.logs.String(), "echo")); n != 1 {
		t.Fatalf("%d flow ends while the visitor kept sending:\n%s", n, r.logs)
	}
	waitFor(t, 5*time.Second, "relay log of the second flow's end", func() bool {
		return len(udpFlowLines(r.logs.String(), "echo")) == 2
	})
	line = udpFlowLines(r.logs.String(), "echo")[1]
	if want := fmt.Sprintf("datagrams_in=%d ", v.sends-firstSends); !contains(line, want, "end=idle") {
		t.Errorf("relay log %q, want %q and end=idle", line, want)
	}
	if s := target.senders(); len(s) != 2 {
		t.Errorf("target senders %v, want one socket per flow", s)
	}
	waitFor(t, 5*time.Second, "agent log of the second flow's end", func() bool {
		return len(udpFlowLines(a.logs.String(), "echo")) == 2
	})
	// The agent counts datagrams that came as QUIC datagrams too.
	if line := udpFlowLines(a.logs.String(), "echo")[1]; !contains(line, fmt.Sprintf("datagrams_in=%d ", v.sends-firstSends)) {
		t.Errorf("agent log %q, want datagrams_in=%d", line, v.sends-firstSends)
	}

	// A flow also lasts while only the target sends.
	w := udpDial(t, pTalk)
	if _, err := w.c.Write([]byte("talk to me")); err != nil {
		t.Fatal(err)
	}
	w.c.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	for k := range 10 {
		got, err := w.recv()
		if err != nil || string(got) != "tick "+strconv.Itoa(k) {
			t.Fatalf("datagram %d from the talker: %s, %v", k, udpShow(got), err)
		}
	}
	waitFor(t, 5*time.Second, "relay log of the talker flow's end", func() bool {
		return len(udpFlowLines(r.logs.String(), "talk")) == 1
	})
	line = udpFlowLines(r.logs.String(), "talk")[0]
	if !contains(line, "datagrams_in=1 ", "datagrams_out=10 ", "end=idle") {
		t.Errorf("relay log %q, want 1 datagram in, 10 out, end=idle", line)
	}
	if d := udpLogDuration(t, line); d < 900*time.Millisecond+timeout {
		t.Errorf("talker flow lasted %v, want at least %v", d, 900*time.Millisecond+timeout)
	}
}

// TestUDPFlowCap: a tunnel at udp_max_flows drops datagrams from new
// visitors, and serves them once a flow has ended.
func TestUDPFlowCap(t *testing.T) { forEachTransport(t, testUDPFlowCap) }

func testUDPFlowCap(t *testing.T, tr string) {
	leak.Check(t)
	// Longer than the checks below take on a busy machine (1.5 s was not).
	timeout := testenv.Scale(4 * time.Second)
	target := udpEcho(t, "127.0.0.1:0")
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.UDPMaxFlows = 3
		c.UDPFlowTimeout = timeout
	})
	port := udpFreePort(t)
	a := startAgent(t, agentConfig(r, udpTunnel("echo", port, target.addr())))
	a.waitSession(10 * time.Second)

	var vs []*udpVisitor
	for i := range 4 {
		vs = append(vs, udpDial(t, port))
		if i < 3 {
			if err := vs[i].exchange([]byte("visitor " + strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	fourth := vs[3]
	if _, err := fourth.c.Write([]byte("dropped at the limit")); err != nil {
		t.Fatal(err)
	}
	fourth.expectSilence(t, 500*time.Millisecond)
	waitFor(t, time.Second, "relay log of the flow limit", func() bool {
		return contains(r.logs.String(), "flow limit", "udp_max_flows=3")
	})
	if n := len(udpFlowLines(r.logs.String(), "echo")); n != 0 {
		t.Fatalf("%d flows ended before their timeout of %v", n, timeout)
	}
	if s := target.senders(); len(s) != 3 {
		t.Fatalf("target senders %v, want the 3 flows' sockets", s)
	}

	waitFor(t, 10*time.Second, "the 3 flows ending", func() bool {
		return len(udpFlowLines(r.logs.String(), "echo")) == 3
	})
	// The dropped datagram stays dropped: the first echo is of the next one.
	if err := fourth.exchange([]byte("after the others expired")); err != nil {
		t.Fatal(err)
	}
	if s := target.senders(); len(s) != 4 {
		t.Errorf("target senders %v, want 4", s)
	}
}

// TestUDPSharesPortWithTCP: a TCP tunnel and a UDP tunnel on one port
// number, used at the same time; another agent cannot take either.
func TestUDPSharesPortWithTCP(t *testing.T) { forEachTransport(t, testUDPSharesPortWithTCP) }

func testUDPSharesPortWithTCP(t *testing.T, tr string) {
	leak.Check(t)
	tcpTarget := serve(t, echo)
	udpTarget := "127.0.0.1:0"
	if udpPortFree(netip.MustParseAddrPort("[::1]:0")) {
		udpTarget = "[::1]:0" // an IPv6 target, where the machine has one
	}
	target := udpEcho(t, udpTarget)
	r := startRelayOver(t, tr, nil)
	port := udpFreePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, tcpTarget), udpTunnel("game", port, target.addr())))
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	v := udpDial(t, port)
	done := make(chan error, 1)
	go func() {
		msg := bytes.Repeat([]byte("tcp "), 1<<18)
		got, err := roundTrip(publicAddr(port), msg)
		if err == nil && !bytes.Equal(got, msg) {
			err = fmt.Errorf("TCP echo: %d of %d bytes, or other bytes", len(got), len(msg))
		}
		done <- err
	}()
	buf := make([]byte, 16)
	for k := range 20 {
		msg := []byte("udp " + strconv.Itoa(k))
		if err := v.exchange(msg); err != nil {
			t.Fatal(err)
		}
		// An open TCP connection on the same port number, in between.
		line := fmt.Sprintf("tcp %02d", k)
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf[:len(line)]); err != nil || string(buf[:len(line)]) != line {
			t.Fatalf("TCP echo: %q, %v", buf[:len(line)], err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Both ports belong to the first agent.
	cfg := agentConfig(r, tcpTunnel("web", port, tcpTarget), udpTunnel("game", port, target.addr()))
	cfg.ID = "other-pc"
	other := startAgent(t, cfg)
	si := other.waitAny(10 * time.Second)
	for _, res := range si.Results {
		if res.Code != tunnel.CodePortInUse {
			t.Errorf("second agent's tunnel %s: %v (%s), want %v", res.Name, res.Code, res.Message, tunnel.CodePortInUse)
		}
	}
	other.stop()
	expectEcho(t, publicAddr(port))
	if err := v.exchange([]byte("still mine")); err != nil {
		t.Fatal(err)
	}
}

// TestUDPDNS: a real DNS server (dnsmasq) answers the real dig client
// through the tunnel: a short answer, and one larger than 1400 bytes,
// which over QUIC takes the flow's stream instead of a QUIC datagram.
func TestUDPDNS(t *testing.T) { forEachTransport(t, testUDPDNS) }

func testUDPDNS(t *testing.T, tr string) {
	leak.Check(t)
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		dnsmasq, err = exec.LookPath("/usr/sbin/dnsmasq")
	}
	if err != nil {
		t.Skip("needs dnsmasq (Debian package dnsmasq-base)")
	}
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("needs dig (Debian package bind9-dnsutils)")
	}

	// 8 strings of 240 bytes: an answer of about 2 KB.
	var chunks []string
	for k := range 8 {
		chunks = append(chunks, fmt.Sprintf("chunk%d-%s", k, strings.Repeat(string(rune('a'+k)), 233)))
	}
	dnsPort := udpFreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	out := &logBuf{}
	cmd := exec.CommandContext(ctx, dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--log-facility=-",
		"--port="+strconv.Itoa(int(dnsPort)), "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--edns-packet-max=4096",
		"--address=/home.test/192.0.2.55", "--txt-record=big.home.test,"+strings.Join(chunks, ","))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cancel() // kills dnsmasq
		<-exited
	})
	waitFor(t, 10*time.Second, "dnsmasq to start", func() bool {
		select {
		case <-exited:
			t.Fatalf("dnsmasq exited: %s\n%s", cmd.ProcessState, out)
		default:
		}
		return contains(out.String(), "started")
	})

	r := startRelayOver(t, tr, nil)
	port := udpFreePort(t)
	a := startAgent(t, agentConfig(r, udpTunnel("dns", port, publicAddr(dnsPort))))
	a.waitSession(10 * time.Second)

	query := func(server uint16, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args = append([]string{"@127.0.0.1", "-p", strconv.Itoa(int(server)), "+time=2", "+tries=3"}, args...)
		b, err := exec.CommandContext(ctx, dig, args...).CombinedOutput()
		if err != nil || !contains(string(b), "status: NOERROR") {
			t.Fatalf("dig %s: %v\n%s\ndnsmasq:\n%s", strings.Join(args, " "), err, b, out)
		}
		return string(b)
	}
	aRecord := regexp.MustCompile(`(?m)^pc\.home\.test\.\s+\d+\s+IN\s+A\s+192\.0\.2\.55$`)
	query(dnsPort, "A", "pc.home.test") // the server itself answers
	if got := query(port, "A", "pc.home.test"); !aRecord.MatchString(got) {
		t.Fatalf("no A record 192.0.2.55 through the tunnel:\n%s", got)
	}

	// +ignore: a truncated answer would be kept, not retried over TCP.
	got := query(port, "+bufsize=4096", "+notcp", "+ignore", "TXT", "big.home.test")
	m := regexp.MustCompile(`MSG SIZE\s+rcvd: (\d+)`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("no message size in dig's output:\n%s", got)
	}
	if size, _ := strconv.Atoi(m[1]); size <= 1400 {
		t.Fatalf("TXT answer of %d bytes, want more than 1400:\n%s", size, got)
	}
	if regexp.MustCompile(`flags:[^;]*\btc\b`).MatchString(got) {
		t.Fatalf("truncated answer:\n%s", got)
	}
	for _, c := range chunks {
		if !strings.Contains(got, `"`+c+`"`) {
			t.Fatalf("TXT answer lacks %q:\n%s", c[:8], got)
		}
	}
	t.Logf("TXT answer of %s bytes through the tunnel", m[1])
}

// TestUDPSessionLoss: when the agent goes away, the relay ends its flows
// and frees the UDP port; a new agent can register it and serve the same
// visitor.
func TestUDPSessionLoss(t *testing.T) { forEachTransport(t, testUDPSessionLoss) }

func testUDPSessionLoss(t *testing.T, tr string) {
	leak.Check(t)
	target := udpEcho(t, "127.0.0.1:0")
	r := startRelayOver(t, tr, nil)
	port := udpFreePort(t)
	cfg := agentConfig(r, udpTunnel("echo", port, target.addr()))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	v := udpDial(t, port)
	if err := v.exchange([]byte("before")); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	a.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("agent with an open UDP flow took %v to stop", d)
	}
	waitFor(t, 5*time.Second, "relay log of the flow's end", func() bool {
		return len(udpFlowLines(r.logs.String(), "echo")) == 1
	})
	waitFor(t, 5*time.Second, "agent log of the flow's end", func() bool {
		return len(udpFlowLines(a.logs.String(), "echo")) == 1
	})
	public := netip.MustParseAddrPort(publicAddr(port))
	waitFor(t, 5*time.Second, "relay freeing the UDP port", func() bool { return udpPortFree(public) })

	b := startAgent(t, cfg)
	b.waitSession(10 * time.Second)
	if err := v.exchange([]byte("after")); err != nil {
		t.Fatal(err)
	}
}
