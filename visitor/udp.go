package visitor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// A UDP visit carries each local client address as one flow: a stream
// that begins with a Visit and then carries datagrams framed both ways
// (tunnel.WriteDatagram). The client's datagrams wait for the stream in a
// queue within the visit's budget (tunnel.UDPBudget): what does not fit
// is dropped, as a router would.
const (
	// refusedHold: after the relay refused a flow, the client's datagrams
	// are dropped for this long before a new flow is asked for, so that a
	// chatty client does not make a stream per datagram.
	refusedHold = time.Second
	// fullLogEvery is the shortest time between two log lines about
	// clients turned away because the visit has its most flows.
	fullLogEvery = 10 * time.Second
)

// flow is one local client address's datagrams.
type flow struct {
	addr netip.AddrPort
	q    *tunnel.DatagramQueue
	last atomic.Int64 // time of the last datagram either way, Unix ns
	done chan struct{}
	once sync.Once
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }
func (f *flow) end()   { f.once.Do(func() { close(f.done) }) }

// serveUDP reads the visit's UDP socket until it is closed, and carries
// each client address's datagrams as a flow.
func (v *Visitor) serveUDP(ctx context.Context, vis *visit, wg *sync.WaitGroup) {
	var (
		mu       sync.Mutex
		flows    = map[netip.AddrPort]*flow{}
		fullLog  time.Time
		turnedAt int
	)
	idleFor, maxFlows := v.UDPIdle, v.UDPMaxFlows
	if idleFor <= 0 {
		idleFor = UDPIdleTimeout
	}
	if maxFlows <= 0 {
		maxFlows = UDPMaxFlows
	}
	sweepEvery := max(min(idleFor/4, 5*time.Second), 10*time.Millisecond)
	sweepDone := make(chan struct{})
	stopSweep := make(chan struct{})
	go func() {
		defer close(sweepDone)
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-stopSweep:
				return
			case <-t.C:
			}
			idle := time.Now().Add(-idleFor).UnixNano()
			mu.Lock()
			for _, f := range flows {
				if f.last.Load() < idle {
					f.end()
				}
			}
			mu.Unlock()
		}
	}()
	defer func() {
		close(stopSweep)
		<-sweepDone
		mu.Lock()
		for _, f := range flows {
			f.end()
		}
		mu.Unlock()
	}()

	buf := make([]byte, tunnel.MaxDatagram+1)
	errs := 0
	for {
		n, addr, err := vis.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// An ICMP error for an earlier reply: UDP goes on, without
			// spinning on an error that stays.
			if errs++; errs > 3 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		errs = 0
		if n > tunnel.MaxDatagram {
			continue
		}
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		mu.Lock()
		f := flows[addr]
		if f == nil {
			if len(flows) >= maxFlows {
				turnedAt++
				if now := time.Now(); now.Sub(fullLog) >= fullLogEvery {
					vis.log.Warn("UDP client turned away: the visit has its most flows open", "max_flows", maxFlows, "client", addr.String(), "turned_away", turnedAt)
					fullLog, turnedAt = now, 0
				}
				mu.Unlock()
				continue
			}
			f = &flow{addr: addr, q: vis.budget.NewQueue(), done: make(chan struct{})}
			f.touch()
			flows[addr] = f
			wg.Go(func() {
				v.runFlow(ctx, vis, f)
				mu.Lock()
				if flows[addr] == f {
					delete(flows, addr)
				}
				mu.Unlock()
			})
		}
		mu.Unlock()
		f.touch()
		f.q.Push(buf[:n])
	}
}

// runFlow carries one flow until it ends: idle, ended by the relay, the
// session lost, or the visit closed.
func (v *Visitor) runFlow(ctx context.Context, vis *visit, f *flow) {
	defer f.q.Close()
	defer f.end()
	start := time.Now()
	log := vis.log.With("client", f.addr.String())
	hold := func() {
		t := time.NewTimer(refusedHold)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-f.done:
		case <-t.C:
		}
	}
	st, _, relay, res, err := v.connect(ctx, vis, true, log)
	switch {
	case errors.Is(err, errNoSession):
		log.Warn("UDP flow dropped: no session to the relay within handshake_timeout")
		return
	case err != nil:
		if ctx.Err() == nil {
			log.Warn("UDP flow dropped: the relay did not answer", "err", err)
			hold()
		}
		return
	case st == nil:
		log.Warn("UDP flow refused", "reason", res.Code.String(), "relay_said", res.Message)
		hold()
		return
	}
	log = log.With("relay", relay)
	log.Debug("UDP flow carried")
	// The flow's end wakes both directions.
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		select {
		case <-ctx.Done():
		case <-f.done:
		}
		_ = st.SetDeadline(time.Now())
		st.Close()
	}()
	var out, in atomic.Int64
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for {
			select {
			case <-f.done:
				return
			case <-f.q.Ready():
			}
			for {
				p, ok := f.q.Pop()
				if !ok {
					break
				}
				err := tunnel.WriteDatagram(st, p)
				f.q.Done(p)
				if err != nil {
					f.end()
					return
				}
				out.Add(1)
			}
		}
	}()
	buf := make([]byte, tunnel.MaxDatagram)
	for {
		n, err := tunnel.ReadDatagram(st, buf)
		if err != nil {
			break
		}
		f.touch()
		in.Add(1)
		_, _ = vis.pc.WriteToUDPAddrPort(buf[:n], f.addr)
	}
	f.end()
	<-ended
	<-sent
	log.Debug("UDP flow ended", "datagrams_out", out.Load(), "datagrams_in", in.Load(), "duration", time.Since(start).Round(time.Millisecond))
}
