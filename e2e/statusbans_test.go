//go:build unix

package e2e

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/tunnel"
)

// TestRelayStatusBans: the status lists the addresses banned now, on the
// agent port and from a tunnel, until when.
func TestRelayStatusBans(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	guardNeedSources(t)
	const intruder = "127.0.0.9"
	r := startRelay(t, func(c *config.Relay) {
		c.Guard.AuthBanAfter, c.Guard.AuthBanFor = 2, time.Minute
		c.Guard.VisitorMaxConns, c.Guard.VisitorBanAfter, c.Guard.VisitorBanFor = 1, 2, time.Minute
	})
	target := serve(t, echo)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, target)))
	a.waitSession(20 * time.Second)

	for range 2 {
		if err := guardLogin(config.TransportTCP, intruder, r, guardWrongToken); !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("wrong token: %v", err)
		}
	}
	// One connection is the limit; two more are refused, and banned.
	c := dial(t, publicAddr(port))
	expectEchoOn(t, c)
	for range 2 {
		probe(publicAddr(port), 5*time.Second)
	}
	var bans []relay.BanStatus
	waitFor(t, 10*time.Second, "both bans in the status", func() bool {
		bans = r.srv.Status().Bans
		return len(bans) == 2
	})
	if bans[0].Where != "agent port" || bans[0].Addr != intruder || bans[1].Where != "web" || bans[1].Addr != "127.0.0.1" {
		t.Fatalf("bans: %+v", bans)
	}
	for _, b := range bans {
		if left := time.Until(b.Until); left <= 0 || left > time.Minute {
			t.Fatalf("ban %+v ends in %v", b, left)
		}
	}
}

// expectEchoOn checks that the echo target answers on c.
func expectEchoOn(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}
