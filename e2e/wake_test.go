//go:build unix

package e2e

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/internal/wol"
)

// Waking a sleeping target with Wake-on-LAN: the target is a TCP port
// that is closed ("asleep") until a UDP listener on loopback receives a
// magic packet for its MAC address; the tunnel's wake sends there
// (broadcast 127.0.0.1, the listener's port).

var (
	wakeMAC  = wol.MAC{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	wrongMAC = wol.MAC{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
)

// sleeper is a target asleep until its magic packet comes.
type sleeper struct {
	target  string        // the TCP address, closed while asleep
	wakeAt  uint16        // the UDP port magic packets go to
	packets atomic.Int64  // magic packets received, for any MAC
	mine    atomic.Int64  // magic packets for its MAC
	awake   chan struct{} // closed once it listens
}

// startSleeper makes a target that wakes delay after the first magic
// packet for mac and then echoes. Its port is bound from the start, not
// listening (a connection is refused), so that nothing else takes it.
func startSleeper(t *testing.T, mac wol.MAC, delay time.Duration) *sleeper {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	s := &sleeper{target: publicAddr(uint16(sa.(*syscall.SockaddrInet4).Port)), awake: make(chan struct{})}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	s.wakeAt = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	var wg sync.WaitGroup
	var woke atomic.Bool // fd is the listener's once set
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m, err := wol.ParsePacket(buf[:n])
			if err != nil {
				continue
			}
			s.packets.Add(1)
			if m != mac {
				continue
			}
			s.mine.Add(1)
			if woke.Swap(true) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(delay) // the machine boots
				f := os.NewFile(uintptr(fd), "sleeper")
				defer f.Close()
				if err := syscall.Listen(fd, 128); err != nil {
					t.Errorf("target wakes: %v", err)
					return
				}
				l, err := net.FileListener(f)
				if err != nil {
					t.Errorf("target wakes: %v", err)
					return
				}
				close(s.awake)
				serveOn(t, l, func(c net.Conn) { echo(c.(*net.TCPConn)) })
			}()
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
		if !woke.Load() {
			syscall.Close(fd)
		}
	})
	return s
}

// wakeOf is the wake setting that reaches s.
func (s *sleeper) wakeOf(mac wol.MAC) *config.Wake {
	return &config.Wake{MAC: mac, Broadcast: netip.MustParseAddr("127.0.0.1"), Port: s.wakeAt}
}

// echoSHA sends size random bytes through c, half-closes, and checks
// that the same come back (sha256).
func echoSHA(t *testing.T, c net.Conn, size int64) {
	t.Helper()
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
		if _, err := io.Copy(c, src); err != nil {
			t.Error(err)
		}
		c.(*net.TCPConn).CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || [32]byte(h.Sum(nil)) != <-sent {
		t.Fatalf("got %d of %d bytes back, or a different sha256", n, size)
	}
}

func lastWake(a *agentHandle, name string) *agent.WakeStatus {
	for _, ts := range a.agent.Status().Tunnels {
		if ts.Name == name {
			return ts.LastWake
		}
	}
	return nil
}

// TestWakeSleepingTarget: a visitor connects to a tunnel whose target
// sleeps; the agent wakes it and the visitor's bytes go through, 4 MiB
// each way, once it answers.
func TestWakeSleepingTarget(t *testing.T) { forEachTransport(t, testWakeSleepingTarget) }

func testWakeSleepingTarget(t *testing.T, tr string) {
	leak.Check(t)
	s := startSleeper(t, wakeMAC, 300*time.Millisecond)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	tun := tcpTunnel("pc", port, s.target)
	tun.Wake = s.wakeOf(wakeMAC)
	cfg := agentConfig(r, tun)
	cfg.WakeTime = testenv.Deadline(30 * time.Second)
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	start := time.Now()
	c := dial(t, publicAddr(port))
	echoSHA(t, c, 4<<20)
	t.Logf("connect to last byte, with the wake: %v", time.Since(start).Round(time.Millisecond))
	if s.mine.Load() == 0 {
		t.Fatal("the target woke without a magic packet")
	}
	waitFor(t, 10*time.Second, "the wake's log lines", func() bool {
		l := a.logs.String()
		return contains(l, "waking target (Wake-on-LAN)", "tunnel=pc", "mac="+wakeMAC.String(), "sent=\"udp 127.0.0.1:"+strconv.Itoa(int(s.wakeAt))) &&
			contains(l, "target woke", "tunnel=pc", "took=")
	})
	if w := lastWake(a, "pc"); w == nil || w.Result != agent.WakeWoke || w.Took <= 0 || w.MAC != wakeMAC.String() {
		t.Fatalf("status of the last wake: %+v", w)
	}
	if v, ok := metricValue(gather(t, a.agent.RegisterMetrics), "homeport_agent_wakes_total",
		map[string]string{"tunnel": "pc", "result": agent.WakeWoke}); !ok || v != 1 {
		t.Errorf("wakes_total{pc,woke} = %v (%v)", v, ok)
	}
	// Awake now: the next visitor is carried without a wake.
	before := s.packets.Load()
	expectEcho(t, publicAddr(port))
	if n := s.packets.Load(); n != before {
		t.Fatalf("%d more magic packets for a target that answers", n-before)
	}
}

// TestWakeWrongMAC: a target that never wakes (the packet names another
// card); the visitor is closed after wake_time with a clear log line.
func TestWakeWrongMAC(t *testing.T) {
	leak.Check(t)
	s := startSleeper(t, wakeMAC, 0)
	r := startRelay(t, nil)
	port := freePort(t)
	tun := tcpTunnel("pc", port, s.target)
	tun.Wake = s.wakeOf(wrongMAC)
	cfg := agentConfig(r, tun)
	cfg.WakeTime = 2 * time.Second
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	c.Write([]byte("hello"))
	n, err := c.Read(make([]byte, 16))
	var ne net.Error
	if n > 0 || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("visitor read %d bytes, %v; want its connection closed", n, err)
	}
	waitFor(t, 10*time.Second, "the failed wake's log lines", func() bool {
		l := a.logs.String()
		return contains(l, "target did not wake", "tunnel=pc", "mac="+wrongMAC.String(), "wake_time=2s") &&
			contains(l, "target unreachable", "tunnel=pc")
	})
	if s.packets.Load() == 0 {
		t.Fatal("no magic packet was sent")
	}
	if w := lastWake(a, "pc"); w == nil || w.Result != agent.WakeNoAnswer {
		t.Fatalf("status of the last wake: %+v", w)
	}
	if v, ok := metricValue(gather(t, a.agent.RegisterMetrics), "homeport_agent_wakes_total",
		map[string]string{"tunnel": "pc", "result": agent.WakeNoAnswer}); !ok || v != 1 {
		t.Errorf("wakes_total{pc,no_answer} = %v (%v)", v, ok)
	}
}

// TestWakeRateLimit: many visitors waiting at once for a target that does
// not wake send one burst between them, not one each.
func TestWakeRateLimit(t *testing.T) {
	leak.Check(t)
	s := startSleeper(t, wakeMAC, 0)
	r := startRelay(t, nil)
	port := freePort(t)
	tun := tcpTunnel("pc", port, s.target)
	tun.Wake = s.wakeOf(wrongMAC)
	cfg := agentConfig(r, tun)
	cfg.WakeTime = 3 * time.Second
	// One burst per minute: every visitor below waits within one.
	a := startAgent(t, cfg, func(a *agent.Agent) { a.WakeEvery = time.Minute })
	a.waitSession(10 * time.Second)

	const visitors = 8
	var wg sync.WaitGroup
	for range visitors {
		wg.Go(func() {
			if got, err := roundTrip(publicAddr(port), []byte("x")); len(got) > 0 {
				t.Errorf("visitor got %q, %v; want a refusal", got, err)
			}
		})
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "every visitor refused", func() bool {
		return strings.Count(a.logs.String(), "target unreachable") == visitors
	})
	if n := s.packets.Load(); n != 1 {
		t.Fatalf("%d visitors sent %d magic packets, want 1", visitors, n)
	}
}

// TestWakeNotForDenied: a visitor the relay's deny list refuses never
// reaches the agent, so it wakes nothing.
func TestWakeNotForDenied(t *testing.T) {
	leak.Check(t)
	s := startSleeper(t, wakeMAC, 0)
	r := startRelay(t, nil)
	port := freePort(t)
	tun := tcpTunnel("pc", port, s.target)
	tun.Wake = s.wakeOf(wakeMAC)
	tun.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	a := startAgent(t, agentConfig(r, tun))
	a.waitSession(10 * time.Second)

	expectClosed(t, publicAddr(port), 10*time.Second)
	waitFor(t, 10*time.Second, "the relay's refusal", func() bool {
		return contains(r.logs.String(), "visitor refused", "tunnel=pc")
	})
	if n := s.packets.Load(); n != 0 {
		t.Fatalf("a denied visitor: %d magic packets", n)
	}
	// The allowed path does wake (so the fixture sees packets when they
	// come): a second tunnel without the deny list, to the same target.
	port2 := freePort(t)
	open := tcpTunnel("pc-open", port2, s.target)
	open.Wake = s.wakeOf(wakeMAC)
	cfg := a.cfg
	cfg.Tunnels = append(cfg.Tunnels, open)
	if _, err := a.reload(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a visitor through the second tunnel", func() bool {
		open, _ := probe(publicAddr(port2), 2*time.Second)
		return open
	})
	if w := lastWake(a, "pc-open"); w == nil || w.Result != agent.WakeWoke || s.packets.Load() == 0 {
		t.Fatalf("the allowed visitor's wake: %+v, %d packets", w, s.packets.Load())
	}
	// Had the denied visitor reached the agent, its wake would show.
	reached := false
	for _, line := range strings.Split(a.logs.String(), "\n") {
		reached = reached || contains(line, "tunnel=pc ", "visitor=")
	}
	if w := lastWake(a, "pc"); w != nil || reached {
		t.Fatalf("the denied visitor reached the agent: last wake %+v\nagent log:\n%s", w, a.logs)
	}
}

// TestWakePrivate: a private tunnel's visitor waits for the wake longer
// than its handshake_timeout (the relay passes the agent's notice on).
func TestWakePrivate(t *testing.T) {
	leak.Check(t)
	s := startSleeper(t, wakeMAC, 3*time.Second)
	r := privateRelay(t, nil)
	tun := privateTunnel("pc", "tcp", s.target)
	tun.Wake = s.wakeOf(wakeMAC)
	cfg := agentConfig(r, tun)
	cfg.WakeTime = testenv.Deadline(30 * time.Second)
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	listen := freeListen(t)
	vcfg := visitorConfig(r, config.Visit{Tunnel: "pc", Protocol: "tcp", Listen: listen})
	vcfg.Key = laptopKey
	vcfg.HandshakeTimeout = 2 * time.Second // shorter than the wake
	v := startVisitor(t, vcfg)
	v.awaitLog(20*time.Second, "tunnel pc ready: connect to "+listen)

	c := dial(t, listen)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("visitor log:\n%s\nagent log:\n%s\nrelay log:\n%s", v.logs, a.logs, r.logs)
		}
	})
	echoSHA(t, c, 2<<20)
	c.Close()
	if !contains(v.logs.String(), "the home agent is waking the target") {
		t.Errorf("the visitor did not log the wake\nvisitor log:\n%s", v.logs)
	}
	if w := lastWake(a, "pc"); w == nil || w.Result != agent.WakeWoke || time.Duration(w.Took) < 2*time.Second {
		t.Fatalf("status of the last wake: %+v", w)
	}
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
