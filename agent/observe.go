package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsstatus"
	"github.com/homeport/homeport/tunnel"
)

// What the agent keeps for `agent status` and its metrics: the state of
// its session to the relay, and counters per tunnel that outlive sessions.

// sessionBoard is the state of the agent's link to a relay, and of its
// session, for `agent status`; the link writes it.
type sessionBoard struct {
	mu         sync.Mutex
	link       linkState
	transport  string
	since      time.Time
	publicAddr string
	sess       tunnel.Session // the session up now, for RTT and streams
	ups        int            // sessions made
	err        string
	retryAt    time.Time
}

// enter records the link's state.
func (b *sessionBoard) enter(s linkState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.link = s
}

func (b *sessionBoard) connecting() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.since, b.sess, b.retryAt = time.Now(), nil, time.Time{}
}

// up records a session that came up (the first, a reconnect, or one that
// replaced another).
func (b *sessionBoard) up(transport, publicAddr string, sess tunnel.Session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.transport, b.since, b.publicAddr, b.sess = transport, time.Now(), publicAddr, sess
	b.err, b.retryAt = "", time.Time{}
	b.ups++
}

// waiting records why the agent has no session and when it tries again.
func (b *sessionBoard) waiting(err error, retryAt time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.since, b.sess, b.retryAt = time.Now(), nil, retryAt
	if err != nil {
		b.err = err.Error()
	}
}

func (b *sessionBoard) snapshot(relay string) SessionStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := SessionStatus{Relay: relay, State: "connecting", Link: b.link.String(), Transport: b.transport, Since: b.since,
		PublicAddr: b.publicAddr, Reconnects: max(b.ups-1, 0), Error: b.err, RetryAt: b.retryAt}
	switch {
	case b.sess != nil && !isDone(b.sess.Done()):
		st.State = "up"
		st.RTT = control.Duration(b.sess.RTT())
		st.Streams = max(b.sess.NumStreams()-1, 0)
		st.Error = ""
	case b.link == linkBackingOff:
		st.State = "waiting"
	case b.link == linkStopped:
		st.State = "stopped"
	}
	return st
}

// tunnelStats counts one tunnel's visitors and traffic, across sessions.
type tunnelStats struct {
	visitors atomic.Int64 // open now (UDP: flows)
	accepted atomic.Int64
	bytesIn  atomic.Int64 // from visitors to the target
	bytesOut atomic.Int64
	dialFail atomic.Int64

	mu          sync.Mutex
	dialErr     string
	dialErrTime time.Time
	wake        *WakeStatus // the last wake; nil: none
}

func (s *tunnelStats) dialFailed(err error) {
	s.dialFail.Add(1)
	s.mu.Lock()
	s.dialErr, s.dialErrTime = err.Error(), time.Now()
	s.mu.Unlock()
}

// statsOf returns the counters of the named tunnel (nil: none such).
func (a *Agent) statsOf(name string) *tunnelStats {
	a.statsMu.Lock()
	defer a.statsMu.Unlock()
	return a.stats[name]
}

// Status returns a snapshot of the agent. Version and Config are the
// caller's to fill in.
func (a *Agent) Status() Status {
	set := a.conf()
	st := Status{ID: set.cfg.ID, Started: a.started, Now: time.Now(), Tunnels: []TunnelStatus{}}
	st.Sessions = []SessionStatus{a.link.board.snapshot(set.cfg.Relay)}
	regs := map[string]Registration{}
	for _, r := range a.Registrations() {
		regs[r.Name] = r
	}
	for _, t := range set.cfg.Tunnels {
		ts := TunnelStatus{Name: t.Name, Protocol: t.Protocol, Port: t.RemotePort, Target: t.Target, State: string(TunnelDown),
			Private: t.Private, VisitorKeys: t.Visitors, Host: t.Host}
		if t.Wake != nil {
			ts.WakeMAC = t.Wake.MAC.String()
		}
		if r, ok := regs[t.Name]; ok {
			ts.State, ts.Since, ts.NextRetry = string(r.State), r.Since, r.NextRetry
			if r.State == TunnelUp && r.Served != "" && t.Web() {
				ts.Host = r.Served
			}
			if r.State != TunnelUp && r.Code != tunnel.CodeOK {
				ts.Error = r.Code.String() + ": " + r.Message
			}
		}
		if s := a.statsOf(t.Name); s != nil {
			ts.Visitors, ts.Accepted = s.visitors.Load(), s.accepted.Load()
			ts.BytesIn, ts.BytesOut = s.bytesIn.Load(), s.bytesOut.Load()
			ts.DialFailures = s.dialFail.Load()
			s.mu.Lock()
			ts.DialError, ts.DialErrorTime = s.dialErr, s.dialErrTime
			ts.LastWake = s.wake
			s.mu.Unlock()
		}
		if q := set.udpQueues[t.Name]; q != nil {
			d := q.Drops()
			ts.Dropped = int64(d.FlowFull + d.TunnelFull)
		}
		ts.PortMapping = a.maps.status(t.Name)
		st.Tunnels = append(st.Tunnels, ts)
	}
	st.DDNS = ddnsstatus.Snapshot(a.ddns.updater())
	return st
}
