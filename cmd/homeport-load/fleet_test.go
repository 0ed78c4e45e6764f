package main

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/relay"
)

// TestFleet runs a small fleet against a relay in this process, over each
// transport: every agent must hold a session of its own (the relay lists
// each agent id once, over the transport asked for) and carry a visitor
// connection to the target through its own public port.
func TestFleet(t *testing.T) {
	for _, tr := range []string{config.TransportTCP, config.TransportQUIC} {
		t.Run(tr, func(t *testing.T) { testFleet(t, tr) })
	}
}

func testFleet(t *testing.T, tr string) {
	leak.Check(t)
	const n = 6
	ports := make([]int, n)
	var allow config.PortRanges
	for i := range ports {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
		allow = append(allow, config.PortRange{Lo: uint16(p), Hi: uint16(p)})
	}
	tg, err := startTarget()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.close)

	cfg := config.Relay{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		BindAddr:         "127.0.0.1",
		AllowPorts:       allow,
		HandshakeTimeout: 10 * time.Second,
		ShutdownTimeout:  time.Second,
		QUIC:             true,
		MaxAgents:        n,
		MaxTunnels:       n,
		Guard:            config.Guard{MaxHandshakes: 1024, MaxHandshakesPerIP: 1024, VisitorMaxConns: 1 << 20, VisitorRate: 1 << 20, VisitorBurst: 1 << 20},
		Session:          config.Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 16 << 20},
	}
	id, err := relay.LoadIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg, id, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("relay: %v", err)
		}
	})

	var relogins atomic.Int64
	stop, err := startFleet(ctx, tr, addr.String(), id.Tokens[0].Secret, id.Fingerprint, tg.addr(), ports, &relogins)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)

	st := srv.Status()
	var ids []string
	for _, a := range st.Agents {
		if a.Transport != tr {
			t.Errorf("agent %s over %s, want %s", a.ID, a.Transport, tr)
		}
		ids = append(ids, a.ID)
	}
	slices.Sort(ids)
	if len(slices.Compact(ids)) != n || len(st.Agents) != n {
		t.Fatalf("relay lists agents %q, want %d distinct ones", ids, n)
	}

	conns, err := holdEach(ctx, n, func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }, 1)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(conns)
	if r := relogins.Load(); r != 0 {
		t.Errorf("%d sessions made again on an idle loopback", r)
	}
}
