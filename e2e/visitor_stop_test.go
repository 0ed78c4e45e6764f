package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestVisitorStopsDuringLogin: a visitor told to stop while a relay holds
// its login (TLS done, no challenge yet) stops at once, not when the
// login's deadline (handshake_timeout, a minute here) runs out.
func TestVisitorStopsDuringLogin(t *testing.T) {
	leak.Check(t)
	cert, fp := relayCert(t)
	ln, err := tunnel.TCPTransport{}.Listen("127.0.0.1:0", tunnel.ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan tunnel.Conn, 1)
	go func() {
		c, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		if c.Handshake(context.Background()) == nil {
			held <- c // and say nothing
			return
		}
		c.Close()
	}()
	cfg := config.Visitor{Relay: ln.Addr().String(), Transport: config.TransportTCP, Key: testVisitorKey, Fingerprint: fp, ID: "laptop",
		Visits:           []config.Visit{{Tunnel: "rdp", Protocol: "tcp", Listen: freeListen(t)}},
		HandshakeTimeout: time.Minute, ReconnectMax: 2 * time.Second}
	v := startVisitor(t, cfg)
	var c tunnel.Conn
	select {
	case c = <-held:
	case <-time.After(30 * time.Second):
		t.Fatalf("the visitor did not reach the login\n%s", v.logs)
	}
	defer c.Close()
	stopped := time.Now()
	v.stop() // fails the test after 15 s, well inside the minute
	t.Logf("stopped %v after being told, during a login", time.Since(stopped).Round(time.Millisecond))
}
