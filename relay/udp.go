package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// A UDP tunnel: one public UDP socket; each visitor address is a flow,
// carried to the agent as one stream (see tunnel/udp.go), which dials the
// target from a socket of its own per flow, so replies find their visitor.
// Flows end after udp_flow_timeout without a datagram either way, and a
// tunnel serves at most udp_max_flows of them; datagrams from further
// visitors are dropped until a flow ends. Datagrams waiting for a flow's
// stream (an agent that does not take them as fast as they come) are held
// within the budgets of tunnel.UDPBudget; more are dropped, as a congested
// network would, and counted.

// udpSocketBuffer is the kernel buffer asked for a public UDP socket.
const udpSocketBuffer = 4 << 20

type udpTunnel struct {
	name  string
	port  uint16
	owner *agentSession
	pc    *net.UDPConn      // the public socket; nil for a private tunnel
	guard *visitorGuard     // per visitor address: lists, flows, rate
	queue *tunnel.UDPBudget // datagrams waiting for the agent; drops
	// visitors are the visitor keys the agent accepts on a private
	// tunnel (empty: any the relay lets in).
	visitors []string

	mu       sync.Mutex
	flows    map[flowKey]*udpFlow
	nextPriv uint64 // numbers private flows, which share an address
	dropped  int    // datagrams dropped since the last warning
	closed   bool

	wg   sync.WaitGroup // read loop, janitor, flows
	stop chan struct{}

	since time.Time
	stats tunnelStats
}

func (as *agentSession) listenUDP(name string, port uint16, addr string, guard *visitorGuard) (portTunnel, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	// Bursts of visitors' datagrams wait here for the read loop; the
	// kernel's default (about 200 KiB) holds only three large ones. The
	// kernel caps this at net.core.rmem_max.
	_ = pc.SetReadBuffer(udpSocketBuffer)
	_ = pc.SetWriteBuffer(udpSocketBuffer)
	budget, err := tunnel.NewUDPBudget(tunnel.FlowQueueBudget, tunnel.TunnelQueueBudget,
		as.log.With("tunnel", name), "UDP datagrams to the agent dropped: it takes them slower than they come")
	if err != nil {
		pc.Close()
		return nil, err
	}
	t := &udpTunnel{name: name, port: port, owner: as, pc: pc, guard: guard, queue: budget, flows: make(map[flowKey]*udpFlow), stop: make(chan struct{}), since: time.Now()}
	t.wg.Add(2)
	go t.readLoop()
	go t.janitor()
	return t, nil
}

// flowKey names a flow of a UDP tunnel: a public one by its visitor's
// address; a private one by its visitor session's address and a number,
// since one visitor session carries several.
type flowKey struct {
	addr netip.AddrPort
	n    uint64
}

func (t *udpTunnel) setLimits(cfg config.Guard) { t.guard.setConfig(cfg) }

func (t *udpTunnel) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	flows := make([]*udpFlow, 0, len(t.flows))
	for _, f := range t.flows {
		flows = append(flows, f)
	}
	t.mu.Unlock()
	close(t.stop)
	if t.pc == nil {
		t.owner.srv.releasePrivate(privateKey{t.owner.key.token, t.name}, t)
	} else {
		t.pc.Close()
	}
	for _, f := range flows {
		f.end("tunnel closed")
	}
	t.wg.Wait()
	t.queue.Close()
	if t.pc != nil {
		t.owner.srv.releasePort(portKey{tunnel.ProtoUDP, t.port}, t, t.owner.key.token, true)
	}
}

// privateUDP returns a private UDP tunnel: no socket; each of a visitor's
// streams is one flow (see serveVisit).
func (as *agentSession) privateUDP(req tunnel.PrivateTunnel, guard *visitorGuard) *udpTunnel {
	// The budget's only error is for a limit of zero.
	budget, _ := tunnel.NewUDPBudget(tunnel.FlowQueueBudget, tunnel.TunnelQueueBudget,
		as.log.With("tunnel", req.Name), "UDP datagrams to the agent dropped: it takes them slower than they come")
	t := &udpTunnel{name: req.Name, port: req.Port, owner: as, guard: guard, queue: budget, visitors: req.Visitors,
		flows: make(map[flowKey]*udpFlow), stop: make(chan struct{}), since: time.Now()}
	t.wg.Add(1)
	go t.janitor()
	return t
}

func (t *udpTunnel) protocol() tunnel.Protocol   { return tunnel.ProtoUDP }
func (t *udpTunnel) accepts(via string) bool     { return acceptsKey(t.visitors, via) }
func (t *udpTunnel) visitorGuard() *visitorGuard { return t.guard }

// serveVisit carries a visitor's stream of a private UDP tunnel as one
// flow: its framed datagrams to the agent, the target's back framed on
// it. The flow ends when the visitor closes the stream or after
// udp_flow_timeout without a datagram either way.
func (t *udpTunnel) serveVisit(vs *visitorSession, st tunnel.Stream, ip netip.Addr) {
	var wmu sync.Mutex
	toVisitor := func(p []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = st.SetWriteDeadline(time.Now().Add(visitHeaderTimeout))
		_ = tunnel.WriteDatagram(st, p)
	}
	t.mu.Lock()
	var f *udpFlow
	if !t.closed && t.roomLocked() {
		t.nextPriv++
		key := flowKey{addr: netip.AddrPortFrom(ip, addrPortOf(vs.remote)), n: t.nextPriv}
		f = t.startFlowLocked(key, vs.key.Name, toVisitor)
	}
	t.mu.Unlock()
	if f == nil {
		t.guard.release(ip)
		_ = vs.answer(st, tunnel.CodeQuota, fmt.Sprintf("tunnel %q serves udp_max_flows flows now", t.name))
		st.Close()
		return
	}
	var res tunnel.OpenResult
	select {
	case res = <-f.answered:
	case <-f.done:
		res = tunnel.OpenResult{Code: tunnel.CodeOffline, Message: fmt.Sprintf("tunnel %q: %s", t.name, f.reason)}
	}
	wmu.Lock()
	err := vs.answer(st, res.Code, res.Message)
	wmu.Unlock()
	if err != nil || res.Code != tunnel.CodeOK {
		f.end("refused")
		st.Close()
		return
	}
	stop := context.AfterFunc(t.owner.srv.visitCtx, func() { f.end("relay shutting down") })
	defer stop()
	go func() {
		<-f.done
		st.Close()
	}()
	buf := make([]byte, tunnel.MaxDatagram)
	for {
		n, err := tunnel.ReadDatagram(st, buf)
		if err != nil {
			f.end("visitor closed the flow")
			return
		}
		f.enqueue(buf[:n])
	}
}

// addrPortOf returns the port of a host:port text (0 if none).
func addrPortOf(hostport string) uint16 {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return 0
	}
	return ap.Port()
}

func (t *udpTunnel) session() *agentSession { return t.owner }
func (t *udpTunnel) tunnelName() string     { return t.name }

func (t *udpTunnel) readLoop() {
	defer t.wg.Done()
	buf := make([]byte, tunnel.MaxDatagram+1)
	errs := 0
	for {
		n, from, err := t.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors from earlier sends and the like: go on,
			// without spinning on an error that stays.
			if errs++; errs > 3 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		errs = 0
		if n > tunnel.MaxDatagram {
			continue
		}
		f := t.flow(from.Addr().Unmap(), from.Port())
		if f == nil {
			continue
		}
		f.enqueue(buf[:n])
	}
}

// flow returns the flow of a visitor address, creating it if the cap
// allows; nil means the datagram is dropped.
func (t *udpTunnel) flow(addr netip.Addr, port uint16) *udpFlow {
	visitor := netip.AddrPortFrom(addr, port)
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.flows[flowKey{addr: visitor}]; f != nil {
		return f
	}
	if t.closed || !t.roomLocked() {
		return nil
	}
	if ok, why, banned := t.guard.admit(addr); !ok {
		t.stats.refusal(banned)
		t.owner.srv.metrics.refused.WithLabelValues(t.owner.key.token, t.name, refusalReason(why)).Inc()
		// Every datagram of a refused source comes here: log bans only.
		if banned {
			t.owner.logRefusal(t.name, visitor.String(), why, banned)
		} else {
			t.owner.log.Debug("UDP visitor refused", "tunnel", t.name, "visitor", visitor.String(), "reason", why)
		}
		return nil
	}
	return t.startFlowLocked(flowKey{addr: visitor}, "", nil)
}

// roomLocked reports whether the tunnel may start another flow, and
// warns (once a burst) when it may not.
func (t *udpTunnel) roomLocked() bool {
	srv := t.owner.srv
	if len(t.flows) >= srv.conf().UDPMaxFlows {
		t.stats.dropped.Add(1)
		if t.dropped++; t.dropped == 1 {
			t.owner.log.Warn("UDP tunnel at its flow limit; dropping datagrams from new visitors", "tunnel", t.name, "flows", len(t.flows), "udp_max_flows", srv.conf().UDPMaxFlows)
		}
		return false
	}
	t.dropped = 0
	return true
}

// startFlowLocked starts the flow of key, whose visitor address the guard
// has admitted. via is the visitor key of a private tunnel's flow, and
// toVisitor carries the target's datagrams to it (nil: the public socket).
func (t *udpTunnel) startFlowLocked(key flowKey, via string, toVisitor func([]byte)) *udpFlow {
	f := &udpFlow{t: t, key: key, visitor: key.addr, via: via, toVisitor: toVisitor, id: t.owner.nextFlow.Add(1),
		queue: t.queue.NewQueue(), done: make(chan struct{}), answered: make(chan tunnel.OpenResult, 1), start: time.Now()}
	f.touch()
	t.flows[key] = f
	t.stats.visitors.Add(1)
	t.stats.accepted.Add(1)
	t.owner.addFlow(f)
	t.wg.Add(1)
	go f.run()
	return f
}

func (t *udpTunnel) remove(f *udpFlow) {
	t.mu.Lock()
	if t.flows[f.key] == f {
		delete(t.flows, f.key)
	}
	t.mu.Unlock()
	t.stats.visitors.Add(-1)
	t.owner.removeFlow(f)
	t.guard.release(f.visitor.Addr())
}

// janitor ends flows that have been idle for udp_flow_timeout.
func (t *udpTunnel) janitor() {
	defer t.wg.Done()
	timeout := t.owner.srv.conf().UDPFlowTimeout
	tick := time.NewTicker(min(max(timeout/4, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		var idle []*udpFlow
		t.mu.Lock()
		for _, f := range t.flows {
			if time.Since(f.lastActive()) >= timeout {
				idle = append(idle, f)
			}
		}
		t.mu.Unlock()
		for _, f := range idle {
			f.end("idle")
		}
	}
}

// udpFlow is one visitor address on a UDP tunnel.
type udpFlow struct {
	t       *udpTunnel
	key     flowKey
	visitor netip.AddrPort
	id      uint32
	// via and toVisitor are set for a private tunnel's flow (see
	// startFlowLocked); answered then gets the agent's answer.
	via       string
	toVisitor func([]byte)
	answered  chan tunnel.OpenResult
	queue     *tunnel.DatagramQueue // the visitor's datagrams for the agent
	start     time.Time

	last    atomic.Int64 // unix nanoseconds of the last datagram either way
	ready   atomic.Bool  // the agent accepted the flow: datagrams may bypass the stream
	in, out atomic.Int64 // datagrams from and to the visitor

	once   sync.Once
	done   chan struct{}
	reason string // why the flow ended, set before done is closed
}

func (f *udpFlow) touch()                { f.last.Store(time.Now().UnixNano()) }
func (f *udpFlow) lastActive() time.Time { return time.Unix(0, f.last.Load()) }

// enqueue hands a visitor's datagram to the flow, or drops it when the
// flow is behind (see tunnel.UDPBudget).
func (f *udpFlow) enqueue(p []byte) {
	f.touch()
	f.queue.Push(p)
}

// end ends the flow. It leaves the tunnel's table at once, so that the
// visitor's next datagram starts a new flow and the cap counts live flows.
func (f *udpFlow) end(reason string) {
	f.once.Do(func() {
		f.reason = reason
		close(f.done)
		f.queue.Close()
		f.t.mu.Lock()
		if f.t.flows[f.key] == f {
			delete(f.t.flows, f.key)
		}
		f.t.mu.Unlock()
	})
}

// run opens the flow's stream and carries datagrams to the agent; a
// second goroutine carries the agent's datagrams back.
func (f *udpFlow) run() {
	t := f.t
	as := t.owner
	defer t.wg.Done()
	defer t.remove(f)
	ctx, cancel := context.WithCancel(as.srv.visitCtx)
	defer cancel()
	go func() {
		select {
		case <-f.done:
		case <-as.sess.Done():
			f.end("session ended")
		}
		cancel()
	}()

	st, err := as.sess.OpenStream(ctx)
	if err != nil {
		f.end("cannot open stream to agent: " + err.Error())
		as.log.Warn("UDP visitor dropped: cannot open stream to agent", "tunnel", t.name, "visitor", f.visitor.String(), "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	defer st.Close()
	if err := tunnel.WriteMessage(st, &tunnel.OpenFlow{Tunnel: t.name, Visitor: f.visitor.String(), Flow: f.id, Via: f.via}); err != nil {
		f.end("cannot write to agent: " + err.Error())
		f.logEnd()
		return
	}
	replies := make(chan struct{})
	go func() {
		defer close(replies)
		f.readReplies(st)
	}()

	var buf []byte
	dgrams := true // until the session says it has none (TCP)
	for {
		select {
		case <-f.done:
			st.Close() // the agent sees the end and frees its socket
			<-replies
			f.logEnd()
			return
		case <-f.queue.Ready():
			for {
				p, ok := f.queue.Pop()
				if !ok {
					break
				}
				f.in.Add(1)
				t.stats.bytesIn.Add(int64(len(p)))
				buf = f.send(st, as.sess, &dgrams, buf, p)
				f.queue.Done(p)
			}
		}
	}
}

// send sends one of the visitor's datagrams to the agent: as a session
// datagram where it fits, on the stream otherwise. buf is for the session
// datagram, returned for the next. *dgrams is cleared once the session
// tells it carries no datagrams: the flow then uses the stream only.
func (f *udpFlow) send(st tunnel.Stream, sess tunnel.Session, dgrams *bool, buf, p []byte) []byte {
	if *dgrams && f.ready.Load() {
		buf = tunnel.AppendFlowDatagram(buf[:0], f.id, p)
		err := sess.SendDatagram(buf)
		switch {
		case err == nil:
			return buf
		case errors.Is(err, tunnel.ErrNotSupported):
			*dgrams = false
		case !errors.Is(err, tunnel.ErrDatagramTooLarge):
			f.end("session datagram: " + err.Error())
			return buf
		}
	}
	if err := tunnel.WriteDatagram(st, p); err != nil {
		f.end("stream to agent: " + err.Error())
	}
	return buf
}

// readReplies reads the agent's answer, then its datagrams for the
// visitor, until the stream ends.
func (f *udpFlow) readReplies(st tunnel.Stream) {
	var res tunnel.OpenResult
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &res); err != nil {
		f.answered <- tunnel.OpenResult{Code: tunnel.CodeOffline, Message: fmt.Sprintf("the agent of tunnel %q did not answer: %v", f.t.name, err)}
		f.end("agent answer: " + err.Error())
		return
	}
	f.answered <- res
	if res.Code != tunnel.CodeOK {
		f.end((&tunnel.OpenError{Code: res.Code, Message: res.Message}).Error())
		return
	}
	f.ready.Store(true)
	buf := make([]byte, tunnel.MaxDatagram)
	for {
		n, err := tunnel.ReadDatagram(st, buf)
		if err != nil {
			f.end("stream from agent ended")
			return
		}
		f.reply(buf[:n])
	}
}

// reply sends one of the target's datagrams to the visitor.
func (f *udpFlow) reply(p []byte) {
	f.touch()
	f.out.Add(1)
	f.t.stats.bytesOut.Add(int64(len(p)))
	if f.toVisitor != nil {
		f.toVisitor(p)
		return
	}
	_, _ = f.t.pc.WriteToUDPAddrPort(p, f.visitor)
}

func (f *udpFlow) logEnd() {
	as := f.t.owner
	level := slog.LevelDebug
	if as.srv.conf().AccessLog {
		level = slog.LevelInfo
	}
	as.log.Log(context.Background(), level, "UDP visitor flow", "tunnel", f.t.name, "visitor", f.visitor.String(), "via", f.via,
		"datagrams_in", f.in.Load(), "datagrams_out", f.out.Load(), "duration", time.Since(f.start).Round(time.Millisecond), "end", f.reason)
}

// Session-level bookkeeping of flows, for datagrams that arrive outside
// their stream.

func (as *agentSession) addFlow(f *udpFlow) {
	as.flowMu.Lock()
	as.flows[f.id] = f
	as.flowMu.Unlock()
}

func (as *agentSession) removeFlow(f *udpFlow) {
	as.flowMu.Lock()
	if as.flows[f.id] == f {
		delete(as.flows, f.id)
	}
	as.flowMu.Unlock()
}

// receiveDatagrams delivers the agent's session datagrams to their flows
// until the session ends.
func (as *agentSession) receiveDatagrams(ctx context.Context) {
	tunnel.ReceiveFlowDatagrams(ctx, as.sess, func(id uint32, p []byte) {
		as.flowMu.Lock()
		f := as.flows[id]
		as.flowMu.Unlock()
		if f != nil {
			f.reply(p)
		}
	})
}

func (t *udpTunnel) bans(now time.Time) []BanStatus { return t.guard.bans(now, t.name) }

func (t *udpTunnel) status() TunnelStatus {
	ts := TunnelStatus{Name: t.name, Protocol: "udp", Port: t.port, Private: t.pc == nil, VisitorKeys: t.visitors,
		Token: t.owner.token.Name, Agent: t.owner.agent.ID, Since: t.since}
	t.stats.fill(&ts)
	d := t.queue.Drops()
	ts.Dropped += int64(d.FlowFull + d.TunnelFull)
	return ts
}
