package agent

import (
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsstatus"
)

// Status is a snapshot of a running agent: what `agent status` prints.
// No secret is in it.
type Status struct {
	Version  string                  `json:"version"`
	ID       string                  `json:"id"`
	Started  time.Time               `json:"started"`
	Now      time.Time               `json:"now"`
	Sessions []SessionStatus         `json:"sessions"`
	Tunnels  []TunnelStatus          `json:"tunnels"`
	DDNS     []ddnsstatus.NameStatus `json:"ddns,omitempty"`
	Config   ConfigStatus            `json:"config"`
}

// SessionStatus is the session to one relay.
type SessionStatus struct {
	Relay string `json:"relay"`
	// State is "up", "connecting", "waiting" (backing off after a
	// failure; Error says why) or "stopped".
	State string `json:"state"`
	// Link is the state of the agent's link to the relay, by name:
	// connecting, serving, replacing (a new session is being made beside
	// the one serving), upgrading (the TCP session closes, for one over
	// QUIC), backing_off or stopped.
	Link      string    `json:"link"`
	Transport string    `json:"transport,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	// PublicAddr is this agent's address as the relay sees it.
	PublicAddr string           `json:"public_addr,omitempty"`
	RTT        control.Duration `json:"rtt"`
	Streams    int              `json:"streams"`
	// Reconnects counts sessions made after the first.
	Reconnects int    `json:"reconnects"`
	Error      string `json:"error,omitempty"`
	// RetryAt is when the agent tries again, while waiting.
	RetryAt time.Time `json:"retry_at,omitzero"`
}

// TunnelStatus is one configured tunnel.
type TunnelStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	// Port is the public port; for a private tunnel, the port suggested
	// to visitors (0: none).
	Port   uint16 `json:"remote_port"`
	Target string `json:"target"`
	// Host is a web tunnel's host name: the one the relay serves it
	// under once it is up, else the one configured.
	Host string `json:"host,omitempty"`
	// Private: the tunnel has no public port; visitors with a visitor
	// key reach it. VisitorKeys are the only keys the agent lets through
	// (empty: any the relay lets through).
	Private     bool     `json:"private,omitempty"`
	VisitorKeys []string `json:"visitor_keys,omitempty"`
	// State is "up" (registered at the relay), "retrying" (refused for a
	// reason that may pass; asked again at NextRetry), "refused" (only a
	// change of configuration helps; Error says why), or "down" (no
	// session).
	State     string    `json:"state"`
	Since     time.Time `json:"since,omitzero"`
	NextRetry time.Time `json:"next_retry,omitzero"`
	Error     string    `json:"error,omitempty"`
	// Visitors is connections (UDP: flows) open now, Accepted all since
	// the agent started.
	Visitors int64 `json:"visitors"`
	Accepted int64 `json:"accepted"`
	// BytesIn is from visitors to the target, BytesOut back.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// DialFailures counts failures to reach the target; DialError is the
	// last one, and when.
	DialFailures  int64     `json:"dial_failures"`
	DialError     string    `json:"last_dial_error,omitempty"`
	DialErrorTime time.Time `json:"last_dial_error_time,omitzero"`
	// Dropped counts the target's UDP datagrams dropped while the relay
	// took them slower than they came.
	Dropped int64 `json:"dropped,omitempty"`
	// PortMapping is the tunnel's port mapping on the home router (nil:
	// none configured).
	PortMapping *MappingStatus `json:"port_mapping,omitempty"`
	// WakeMAC is the MAC address the agent wakes the target by ("": no
	// wake setting); LastWake is its last wake (nil: none yet).
	WakeMAC  string      `json:"wake_mac,omitempty"`
	LastWake *WakeStatus `json:"last_wake,omitempty"`
}

// ConfigStatus says which configuration is in force.
type ConfigStatus struct {
	File     string    `json:"file,omitempty"`
	Loaded   time.Time `json:"loaded"`
	Reloads  int       `json:"reloads"`
	LastErr  string    `json:"last_error,omitempty"`
	LastFail time.Time `json:"last_failure,omitzero"`
}
