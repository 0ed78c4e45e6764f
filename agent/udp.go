package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// flowSocketBuffer is the kernel receive buffer asked for a flow's socket.
const flowSocketBuffer = 1 << 20

// flowTable holds a session's UDP flows by number, for datagrams that the
// relay sends outside their stream (QUIC DATAGRAM frames).
type flowTable struct {
	sess  tunnel.Session
	mu    sync.Mutex
	flows map[uint32]*agentFlow
}

// agentFlow is a flow's socket toward the target.
type agentFlow struct {
	c       *net.UDPConn
	in, out atomic.Int64 // datagrams to and from the target
	stats   *tunnelStats // the tunnel's, for bytes
}

// toTarget sends a visitor's datagram to the target.
func (f *agentFlow) toTarget(p []byte) {
	f.in.Add(1)
	f.stats.bytesIn.Add(int64(len(p)))
	_, _ = f.c.Write(p)
}

func newFlowTable(sess tunnel.Session) *flowTable {
	return &flowTable{sess: sess, flows: make(map[uint32]*agentFlow)}
}

func (ft *flowTable) add(id uint32, f *agentFlow) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if ft.flows[id] != nil {
		return false
	}
	ft.flows[id] = f
	return true
}

func (ft *flowTable) remove(id uint32, f *agentFlow) {
	ft.mu.Lock()
	if ft.flows[id] == f {
		delete(ft.flows, id)
	}
	ft.mu.Unlock()
}

// receive hands session datagrams to their flows' targets until the
// session or ctx ends.
func (ft *flowTable) receive(ctx context.Context, sess tunnel.Session) {
	tunnel.ReceiveFlowDatagrams(ctx, sess, func(id uint32, p []byte) {
		ft.mu.Lock()
		f := ft.flows[id]
		ft.mu.Unlock()
		if f != nil {
			f.toTarget(p)
		}
	})
}

// handleFlow carries one UDP flow: the visitor's datagrams go to the
// target from a socket of the flow's own, and the target's replies go back
// on the stream, or as session datagrams where they fit. The flow ends when
// the relay ends the stream (the visitor went quiet) or the session ends.
func (a *Agent) handleFlow(ctx context.Context, st tunnel.Stream, open *tunnel.OpenFlow, flows *flowTable) {
	start := time.Now()
	log := a.log.With("tunnel", open.Tunnel, "visitor", open.Visitor)
	if open.Via != "" {
		log = log.With("via", open.Via)
	}
	set := a.conf()
	t, ok := set.tunnels[open.Tunnel]
	stats := a.statsOf(open.Tunnel)
	q0 := set.udpQueues[open.Tunnel]
	if !ok || t.Protocol != "udp" || stats == nil || q0 == nil {
		refuse(st, tunnel.CodeUnknownTunnel, fmt.Sprintf("agent has no UDP tunnel %q", open.Tunnel))
		log.Warn("relay asked for an unknown UDP tunnel")
		return
	}
	if code, msg := admitVia(t, open.Via); code != tunnel.CodeOK {
		refuse(st, code, msg)
		log.Warn("visitor refused", "reason", code.String(), "detail", msg)
		return
	}
	raddr, err := net.ResolveUDPAddr("udp", t.Target)
	var c *net.UDPConn
	if err == nil {
		c, err = net.DialUDP("udp", nil, raddr)
	}
	if err != nil {
		stats.dialFailed(err)
		refuse(st, tunnel.CodeDialFailed, fmt.Sprintf("tunnel %q: %s: %v", t.Name, t.Target, err))
		log.Warn("UDP target unusable", "target", t.Target, "err", err)
		return
	}
	defer c.Close()
	// Kernel buffers are only used while datagrams wait, so a generous
	// limit costs an idle flow nothing.
	_ = c.SetReadBuffer(flowSocketBuffer)
	f := &agentFlow{c: c, stats: stats}
	if !flows.add(open.Flow, f) {
		refuse(st, tunnel.CodeBadRequest, fmt.Sprintf("flow %d is already open", open.Flow))
		return
	}
	defer flows.remove(open.Flow, f)
	if err := tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeOK}); err != nil {
		st.Close()
		return
	}
	stats.visitors.Add(1)
	stats.accepted.Add(1)
	defer stats.visitors.Add(-1)
	stop := context.AfterFunc(ctx, func() { st.Close(); c.Close() })
	defer stop()

	// Target to relay: a reader takes the target's datagrams into the
	// flow's queue at once, within the tunnel's budget (see
	// tunnel.UDPBudget), and a sender sends them on; while the relay does
	// not take them as fast as they come, what is over budget is dropped.
	q := q0.NewQueue()
	quit := make(chan struct{})
	replies := make(chan error, 1)
	go func() { replies <- flowSend(st, q, open.Flow, flows.sess, &f.out, &stats.bytesOut, quit) }()
	received := make(chan struct{})
	go func() {
		defer close(received)
		flowReceive(c, q)
	}()

	// Relay to target: datagrams framed on the stream (session datagrams
	// go through flows.receive).
	buf := make([]byte, tunnel.MaxDatagram)
	end := "relay ended the flow"
	for {
		n, err := tunnel.ReadDatagram(st, buf)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				end = err.Error()
			}
			break
		}
		f.toTarget(buf[:n])
	}
	c.Close() // ends flowReceive
	close(quit)
	st.Close() // ends a blocked send
	<-received
	if err := <-replies; err != nil {
		end = "to relay: " + err.Error()
	}
	q.Close()
	level := slog.LevelDebug
	if a.conf().cfg.AccessLog {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "UDP visitor flow", "target", t.Target,
		"datagrams_in", f.in.Load(), "datagrams_out", f.out.Load(), "duration", time.Since(start).Round(time.Millisecond), "end", end)
}

// flowReceive queues the target's datagrams for the relay until the
// flow's socket is closed.
func flowReceive(c *net.UDPConn, q *tunnel.DatagramQueue) {
	buf := make([]byte, tunnel.MaxDatagram+1)
	errs := 0
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP port unreachable from the target: nobody listens
			// (yet); UDP goes on, without spinning on an error that stays.
			if errs++; errs > 3 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		errs = 0
		if n > tunnel.MaxDatagram {
			continue
		}
		q.Push(buf[:n])
	}
}

// flowSend sends the flow's queued datagrams to the relay, as session
// datagrams where they fit, until quit is closed or sending fails; then
// the queue takes no more.
func flowSend(st tunnel.Stream, q *tunnel.DatagramQueue, id uint32, sess tunnel.Session, out, outBytes *atomic.Int64, quit <-chan struct{}) error {
	var dg []byte
	dgrams := true // until the session says it has none (TCP)
	for {
		select {
		case <-quit:
			return nil
		case <-q.Ready():
		}
		for {
			p, ok := q.Pop()
			if !ok {
				break
			}
			out.Add(1)
			outBytes.Add(int64(len(p)))
			var err error
			dg, err = sendReply(st, sess, &dgrams, dg, id, p)
			q.Done(p)
			if err != nil {
				q.Close()
				return err
			}
		}
	}
}

// sendReply sends one of the target's datagrams to the relay. dg is for
// the session datagram, returned for the next. *dgrams is cleared once the
// session tells it carries no datagrams: the flow then uses the stream.
func sendReply(st tunnel.Stream, sess tunnel.Session, dgrams *bool, dg []byte, id uint32, p []byte) ([]byte, error) {
	if *dgrams {
		dg = tunnel.AppendFlowDatagram(dg[:0], id, p)
		err := sess.SendDatagram(dg)
		switch {
		case errors.Is(err, tunnel.ErrNotSupported):
			*dgrams = false
		case err == nil || !errors.Is(err, tunnel.ErrDatagramTooLarge):
			return dg, err
		}
	}
	return dg, tunnel.WriteDatagram(st, p)
}
