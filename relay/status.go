package relay

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsstatus"
)

// Status is a snapshot of a running relay: what `relay status` prints and
// the dashboard shows. It names tokens by their names only; no secret is
// in it.
type Status struct {
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Now is when the snapshot was taken, by the relay's clock.
	Now         time.Time               `json:"now"`
	Fingerprint string                  `json:"fingerprint"`
	Listen      []ListenStatus          `json:"listen"`
	Agents      []AgentStatus           `json:"agents"`
	Tunnels     []TunnelStatus          `json:"tunnels"`
	Refusals    []RefusalStatus         `json:"refusals"` // most recent last
	Bans        []BanStatus             `json:"bans"`
	DDNS        []ddnsstatus.NameStatus `json:"ddns,omitempty"`
	// VisitorKeys are the configured keys of private tunnels, Visitors
	// the visitors logged in, and Visits the command that reaches each
	// private tunnel with each key that may.
	VisitorKeys []VisitorKeyStatus `json:"visitor_keys"`
	Visitors    []VisitorStatus    `json:"visitors"`
	Visits      []VisitSetup       `json:"visits,omitempty"`
	// Certificates are those of the web names whose TLS the relay
	// terminates (acme), filled in by the program that runs the relay.
	Certificates []CertificateStatus `json:"certificates,omitempty"`
	// Config is where the running configuration came from and when it was
	// last (re)loaded.
	Config ConfigStatus `json:"config"`
}

// ListenStatus is one listener of the agent port.
type ListenStatus struct {
	Addr      string `json:"addr"`
	Transport string `json:"transport"` // tcp or quic
}

// AgentStatus is one agent session.
type AgentStatus struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Transport string    `json:"transport"`
	Software  string    `json:"software"`
	Since     time.Time `json:"since"`
	// RTT is the session's round-trip time as last measured; 0: not yet.
	RTT control.Duration `json:"rtt"`
	// Streams is the open visitor streams (the control stream not
	// counted).
	Streams int `json:"streams"`
	// Retired: replaced by a newer session of the same agent, still
	// carrying its last connections.
	Retired bool `json:"retired,omitempty"`
}

// TunnelStatus is one public port.
type TunnelStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	// Port is the public port; for a private tunnel, which has none, the
	// local port suggested to visitors (0: none).
	Port uint16 `json:"port"`
	// Host is a web tunnel's host name (protocol http or https), served
	// on the relay's shared web ports.
	Host string `json:"host,omitempty"`
	// Private marks a tunnel that only visitors reach; VisitorKeys are
	// the keys its agent accepts (none: any the relay lets in).
	Private     bool      `json:"private,omitempty"`
	VisitorKeys []string  `json:"visitor_keys,omitempty"`
	Token       string    `json:"token"`
	Agent       string    `json:"agent"`
	Since       time.Time `json:"since"`
	// Visitors is open connections (UDP: flows) now.
	Visitors int64 `json:"visitors"`
	// Accepted counts visitors let through since the tunnel opened.
	Accepted int64 `json:"accepted"`
	// BytesIn is from visitors to the agent, BytesOut back.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// Refused counts visitors turned away by the tunnel's guard, Banned
	// the bans it started.
	Refused int64 `json:"refused"`
	Banned  int64 `json:"banned"`
	// Dropped counts UDP datagrams dropped (over budget or flow limit).
	Dropped int64 `json:"dropped,omitempty"`
}

// RefusalStatus is one recent refusal on the agent port or a public port.
type RefusalStatus struct {
	Time   time.Time `json:"time"`
	Where  string    `json:"where"` // "agent port" or the tunnel's name
	Addr   string    `json:"addr"`
	Reason string    `json:"reason"`
	Banned bool      `json:"banned,omitempty"` // this refusal started a ban
}

// BanStatus is an address banned now.
type BanStatus struct {
	Where string    `json:"where"` // "agent port" or the tunnel's name
	Addr  string    `json:"addr"`  // an IPv4 address or an IPv6 /64
	Until time.Time `json:"until"`
}

// ConfigStatus says which configuration is in force.
type ConfigStatus struct {
	File     string    `json:"file,omitempty"`
	Loaded   time.Time `json:"loaded"`
	Reloads  int       `json:"reloads"`
	LastErr  string    `json:"last_error,omitempty"` // the last refused reload
	LastFail time.Time `json:"last_failure,omitzero"`
}

// tunnelStats counts what passes through one public port.
type tunnelStats struct {
	visitors atomic.Int64 // open now
	accepted atomic.Int64
	bytesIn  atomic.Int64 // from visitors
	bytesOut atomic.Int64 // to visitors
	refused  atomic.Int64
	banned   atomic.Int64
	dropped  atomic.Int64 // UDP datagrams
}

// refusal counts a visitor the guard turned away.
func (st *tunnelStats) refusal(banned bool) {
	st.refused.Add(1)
	if banned {
		st.banned.Add(1)
	}
}

// fill copies the counters into ts.
func (st *tunnelStats) fill(ts *TunnelStatus) {
	ts.Visitors = st.visitors.Load()
	ts.Accepted = st.accepted.Load()
	ts.BytesIn = st.bytesIn.Load()
	ts.BytesOut = st.bytesOut.Load()
	ts.Refused = st.refused.Load()
	ts.Banned = st.banned.Load()
	ts.Dropped = st.dropped.Load()
}

// maxRefusals is how many recent refusals a relay remembers.
const maxRefusals = 100

// refusalLog keeps the most recent refusals, oldest first.
type refusalLog struct {
	mu   sync.Mutex
	ring [maxRefusals]RefusalStatus
	next int // where the next one goes
	n    int // how many are kept
}

func (l *refusalLog) add(r RefusalStatus) {
	l.mu.Lock()
	l.ring[l.next] = r
	l.next = (l.next + 1) % maxRefusals
	l.n = min(l.n+1, maxRefusals)
	l.mu.Unlock()
}

func (l *refusalLog) snapshot() []RefusalStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]RefusalStatus, 0, l.n)
	for i := range l.n {
		out = append(out, l.ring[(l.next-l.n+i+maxRefusals)%maxRefusals])
	}
	return out
}

// Status returns a snapshot of the relay. Version and Config are the
// caller's to fill in (the relay knows neither).
func (s *Server) Status() Status {
	now := time.Now()
	st := Status{Started: s.started, Now: now, Fingerprint: s.id.Fingerprint,
		Agents: []AgentStatus{}, Tunnels: []TunnelStatus{}, Bans: []BanStatus{}}
	for _, ln := range s.lns {
		st.Listen = append(st.Listen, ListenStatus{Addr: ln.Addr().String(), Transport: transportName(ln)})
	}
	s.mu.Lock()
	sessions := make([]*agentSession, 0, len(s.sessions)+len(s.retired))
	for _, as := range s.sessions {
		sessions = append(sessions, as)
	}
	for as := range s.retired {
		sessions = append(sessions, as)
	}
	s.mu.Unlock()
	for _, as := range sessions {
		s.mu.Lock()
		_, retired := s.retired[as]
		s.mu.Unlock()
		st.Agents = append(st.Agents, AgentStatus{
			Token: as.token.Name, ID: as.agent.ID, Addr: as.remote, Transport: as.transport,
			Software: as.agent.Software, Since: as.started, Streams: max(as.sess.NumStreams()-1, 0), Retired: retired,
			RTT: control.Duration(as.sess.RTT()),
		})
		as.mu.Lock()
		for _, t := range as.tunnels {
			st.Tunnels = append(st.Tunnels, t.status())
		}
		as.mu.Unlock()
	}
	slices.SortFunc(st.Agents, func(a, b AgentStatus) int {
		return cmp.Or(cmp.Compare(a.Token, b.Token), cmp.Compare(a.ID, b.ID), a.Since.Compare(b.Since))
	})
	slices.SortFunc(st.Tunnels, func(a, b TunnelStatus) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
	})
	st.Bans = append(st.Bans, s.hs.bans(now)...)
	for _, as := range sessions {
		as.mu.Lock()
		for _, t := range as.tunnels {
			st.Bans = append(st.Bans, t.bans(now)...)
		}
		as.mu.Unlock()
	}
	slices.SortFunc(st.Bans, func(a, b BanStatus) int {
		return cmp.Or(cmp.Compare(a.Where, b.Where), cmp.Compare(a.Addr, b.Addr))
	})
	s.visitorStatus(&st)
	st.Refusals = s.refusals.snapshot()
	s.ddnsMu.Lock()
	u := s.ddns
	s.ddnsMu.Unlock()
	st.DDNS = ddnsstatus.Snapshot(u)
	return st
}

func (t *publicTunnel) bans(now time.Time) []BanStatus { return t.guard.bans(now, t.name) }

func (t *publicTunnel) status() TunnelStatus {
	ts := TunnelStatus{Name: t.name, Protocol: "tcp", Port: t.port, Token: t.owner.token.Name, Agent: t.owner.agent.ID, Since: t.since}
	t.stats.fill(&ts)
	return ts
}

// CertificateStatus is one web name's certificate.
type CertificateStatus struct {
	Name string `json:"name"`
	// State is obtaining, valid, expired or failed.
	State       string    `json:"state"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	NextRenewal time.Time `json:"next_renewal,omitzero"`
	Error       string    `json:"error,omitempty"`
}
