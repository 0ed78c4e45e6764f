package agent

import (
	"context"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/relay"
)

var linkLine = regexp.MustCompile(`msg="relay link" .*from=(\S+) to=(\S+) cause=(\S+)`)

// linkSteps are the link's changes of state in the log, as
// "from→to (cause)".
func linkSteps(logs string) []string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if m := linkLine.FindStringSubmatch(line); m != nil {
			out = append(out, m[1]+"→"+m[2]+" ("+m[3]+")")
		}
	}
	return out
}

// TestLinkUpgrade: a link over TCP in auto mode, once QUIC to the relay
// works, goes serving → upgrading → connecting → serving over QUIC.
func TestLinkUpgrade(t *testing.T) {
	leak.Check(t)
	const token = "link-test-token-0123456789"
	rcfg := config.Relay{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		BindAddr:         "127.0.0.1",
		AllowPorts:       config.PortRanges{{Lo: 1024, Hi: 65535}},
		Tokens:           []config.Token{{Name: "default", Secret: token}},
		HandshakeTimeout: 5 * time.Second,
		QUIC:             true,
		Session:          config.Session{KeepAlive: time.Second, KeepAliveTimeout: time.Second},
	}
	id, err := relay.LoadIdentity(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startRelay(t, rcfg, id)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	logs := &logSink{}
	a, err := New(config.Agent{
		Relay: addr, Transport: config.TransportAuto, Token: token, Fingerprint: id.Fingerprint, ID: "link",
		Tunnels:          []config.Tunnel{{Name: "t", Protocol: "tcp", RemotePort: port, Target: "127.0.0.1:9"}},
		HandshakeTimeout: 10 * time.Second, ReconnectMax: 500 * time.Millisecond,
		Session: config.Session{KeepAlive: time.Second, KeepAliveTimeout: time.Second},
	}, "test", slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	// QUIC failed a moment ago: the first session is over TCP.
	a.policy.Failed(time.Now())
	sessions := make(chan SessionInfo, 8)
	a.OnSession = func(si SessionInfo) { sessions <- si }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	next := func(want string, within time.Duration) {
		t.Helper()
		select {
		case si := <-sessions:
			if si.Transport != want {
				t.Fatalf("session over %s, want %s\n%s", si.Transport, want, logs)
			}
		case <-time.After(within):
			t.Fatalf("no session over %s within %v\n%s", want, within, logs)
		}
	}
	next(config.TransportTCP, 10*time.Second)
	a.policy.Worked()
	next(config.TransportQUIC, 2*upgradeCheck+relaydial.QUICAttemptTimeout)

	want := []string{
		"stopped→connecting (start)", "connecting→serving (session_up)",
		"serving→upgrading (upgrade_wanted)", "upgrading→connecting (upgrade)", "connecting→serving (session_up)",
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(linkSteps(logs.String())) < len(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := linkSteps(logs.String()); strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("link steps:\n%s\nwant:\n%s\nlog:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), logs)
	}
	if !regexp.MustCompile(`msg="relay session down" .*transport=tcp cause=upgrade`).MatchString(logs.String()) {
		t.Fatalf("the TCP session's end does not say it moved to QUIC:\n%s", logs)
	}
	if st := a.Status().Sessions[0]; st.Link != "serving" || st.State != "up" || st.Transport != config.TransportQUIC {
		t.Fatalf("status %+v", st)
	}
}
