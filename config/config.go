// Package config loads and validates the settings of the relay and the agent.
//
// Settings come from, in increasing order of precedence: built-in defaults, a
// YAML/TOML/JSON file (--config), environment variables (HOMEPORT_…), and
// command-line flags. Every error names the setting (and the file) it is about.
package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Relay is the validated configuration of a relay.
type Relay struct {
	// File is the configuration file read, "" for none.
	File string
	// DataDir holds the generated token and the TLS key pair, and the
	// control socket.
	DataDir string
	// Listen is the address agents connect to ("listen", default ":7000").
	Listen string
	// BindAddr is the host public listeners bind to ("bind_addr", default all).
	BindAddr string
	// AllowPorts are the public ports any token may use ("allow_ports").
	AllowPorts PortRanges
	// Tokens are the accepted agent credentials. Empty means: use the
	// token stored in DataDir, generating it on first start.
	Tokens []Token
	// Visitors are the accepted visitor keys of private tunnels
	// ("visitor_keys"). Empty with Tokens empty means: use the key stored in
	// DataDir, generating it on first start.
	Visitors []VisitorKey
	// TLSCert and TLSKey name a PEM certificate and key to use instead of
	// the generated self-signed pair.
	TLSCert, TLSKey string
	// Advertise is the host:port printed in the agent command.
	Advertise string
	// HTTPAddr and HTTPSAddr are the shared ports of web tunnels
	// ("http_addr", "https_addr"; "": off): requests are routed by their
	// Host, TLS connections by their server name (SNI).
	HTTPAddr, HTTPSAddr string
	// Domain is the domain under which an agent's bare host label is
	// served ("domain"; "": none). A token without Hosts may claim the
	// names one label under it that no token lists.
	Domain string
	// HandshakeTimeout bounds the time from accept to authenticated.
	HandshakeTimeout time.Duration
	// Session holds the multiplexer settings shared with the agent.
	Session Session
	// ShutdownTimeout bounds how long streams may drain on shutdown.
	ShutdownTimeout time.Duration
	// AccessLog logs every visitor connection at Info.
	AccessLog bool
	// QUIC also accepts agents over QUIC on UDP, same port number as
	// Listen ("quic", default true).
	QUIC bool
	// UDPFlowTimeout is how long a UDP tunnel keeps a visitor address's
	// flow without a datagram either way ("udp_flow_timeout").
	UDPFlowTimeout time.Duration
	// UDPMaxFlows caps the flows of one UDP tunnel ("udp_max_flows").
	UDPMaxFlows int
	// MaxAgents and MaxTunnels are each token's quotas, unless the token
	// sets its own: agent ids with a live session ("max_agents"), and
	// tunnels open across all of the token's sessions ("max_tunnels").
	// 0 in a Relay built without LoadRelay: the defaults.
	MaxAgents, MaxTunnels int
	// PortReserve is how long a released public port stays reserved to
	// the token whose agent held it ("port_reserve"); 0: not at all.
	PortReserve time.Duration
	// Guard limits what one source may do on the agent port and on the
	// public ports.
	Guard Guard
	// DDNS configures the dynamic DNS updater ("ddns"); nil: off.
	DDNS *DDNS
	// ACME configures the certificates of the web tunnels' names
	// ("acme.*").
	ACME ACME
	// Log selects level and format of the process log.
	Log Log
	// DebugAddr, when set, is the loopback address where Go's profiler
	// (net/http/pprof) is served.
	DebugAddr string
	// MetricsAddr, when set, is where Prometheus metrics and the health
	// checks are served ("metrics_addr").
	MetricsAddr string
	// Warnings are problems that do not stop the relay, for its log.
	Warnings []Warning
	// Dashboard configures the web dashboard (off unless Dashboard.Addr).
	Dashboard Dashboard
}

// Token is one accepted agent credential.
type Token struct {
	// Name identifies the token in logs; never the secret itself.
	Name string
	// Secret is the shared secret. It never crosses the wire.
	Secret string
	// File is the file the secret was read from (token_file,
	// secret_file); "" when it was given itself.
	File string
	// Ports, when not empty, further limits the public ports of agents
	// that log in with this token (intersected with Relay.AllowPorts),
	// and reserves them to it: no other token may use them.
	Ports PortRanges
	// Hosts are the host names (and wildcards "*.example.com") the
	// token's agents may serve as web tunnels; each belongs to this token
	// alone. Empty: the names one label under the relay's Domain that no
	// token lists (none without a Domain).
	Hosts []string
	// MaxAgents and MaxTunnels override the relay's quotas for this
	// token ("max_agents", "max_tunnels" in its item); 0: the relay's.
	MaxAgents, MaxTunnels int
	// Visit lets the token also log in as a visitor key named after it,
	// to its own agents' private tunnels ("visit").
	Visit bool
}

// String hides the secret.
func (t Token) String() string { return fmt.Sprintf("token %q", t.Name) }

// Guard holds the relay's limits against hostile sources.
type Guard struct {
	// MaxHandshakes caps agent connections not yet authenticated, in
	// all ("agent_port.max_handshakes") and from one IP address (or IPv6
	// /64) ("agent_port.max_handshakes_per_ip"). Connections over the cap
	// are closed at once.
	MaxHandshakes, MaxHandshakesPerIP int
	// AuthBanAfter failed authentications from one address within
	// AuthBanFor ban it for AuthBanFor ("agent_port.ban_after",
	// "agent_port.ban_for"); 0 disables.
	AuthBanAfter int
	AuthBanFor   time.Duration
	// VisitorMaxConns caps one visitor address's open connections (UDP:
	// flows) per tunnel ("visitors.max_conns_per_ip").
	VisitorMaxConns int
	// VisitorRate and VisitorBurst limit one visitor address's new
	// connections per tunnel: VisitorRate a minute on average, up to
	// VisitorBurst at once ("visitors.rate", "visitors.burst").
	VisitorRate, VisitorBurst int
	// VisitorBanAfter refusals ban the address from the tunnel for
	// VisitorBanFor ("visitors.ban_after", "visitors.ban_for"); 0 disables.
	VisitorBanAfter int
	VisitorBanFor   time.Duration
}

// Agent transports.
const (
	TransportAuto = "auto"
	TransportTCP  = "tcp"
	TransportQUIC = "quic"
)

// Agent is the validated configuration of an agent.
type Agent struct {
	// File is the configuration file read, "" for none.
	File string
	// DataDir holds the agent's control socket.
	DataDir string
	// Relays are the relays the agent keeps a session to, in the order
	// given: the relays list, or the one relay of the settings below.
	Relays []RelayEndpoint
	// Relay is the (first) relay's agent address, host:port; it and
	// Transport, Token, Fingerprint, CAFile and ServerName repeat
	// Relays[0].
	Relay string
	// Transport is how the agent reaches the relay: TransportAuto (the
	// default), TransportTCP or TransportQUIC.
	Transport string
	// Token is the shared secret (token, or read from token_file).
	Token string
	// Fingerprint pins the relay's public key ("sha256:<hex>").
	Fingerprint string
	// CAFile and ServerName verify the relay by a CA instead of a pin.
	CAFile, ServerName string
	// ID names this agent; a newer session with the same ID and token
	// replaces an older one on the relay. Default: the host name.
	ID string
	// Tunnels are the services this agent exposes.
	Tunnels []Tunnel
	// DialTimeout bounds dialing a tunnel's target.
	DialTimeout time.Duration
	// WakeTime bounds waking a tunnel's target (Tunnel.Wake) and dialing
	// it again until it answers ("wake_time").
	WakeTime time.Duration
	// HandshakeTimeout bounds connecting and authenticating to the relay.
	HandshakeTimeout time.Duration
	// ReconnectMax caps the reconnect backoff.
	ReconnectMax time.Duration
	// Session holds the multiplexer settings shared with the relay.
	Session Session
	// AccessLog logs every stream at Info.
	AccessLog bool
	// DDNS configures the dynamic DNS updater ("ddns"); nil: off.
	DDNS *DDNS
	// Log selects level and format of the process log.
	Log Log
	// DebugAddr, when set, is the loopback address where Go's profiler
	// (net/http/pprof) is served.
	DebugAddr string
	// MetricsAddr, when set, is where Prometheus metrics and the health
	// checks are served ("metrics_addr").
	MetricsAddr string
	// Warnings are problems that do not stop the agent, for its log.
	Warnings []Warning
}

// Tunnel is one exposed service.
type Tunnel struct {
	// Name identifies the tunnel on the wire and in logs.
	Name string
	// Protocol is "tcp", "udp", or for a web tunnel "http" (the relay
	// proxies HTTP, and terminates TLS) or "https" (the relay passes TLS
	// through, routed by its server name).
	Protocol string
	// Host is a web tunnel's host name: a name, a wildcard
	// "*.example.com", or a bare label the relay puts under its domain.
	Host string
	// Auth is an http tunnel's basic authentication, "user:password",
	// checked at the relay ("auth", or "auth_file"); "": none.
	Auth string
	// RemotePort is the public port on the relay; for a private tunnel,
	// the port a visitor's local listener takes by default (0: none).
	RemotePort uint16
	// Target is the host:port the agent dials for each visitor.
	Target string
	// Allow, when not empty, lists the only visitor networks the relay
	// lets in; Deny lists networks it keeps out (Deny wins). The relay
	// refuses other visitors before any byte reaches the agent.
	Allow, Deny []netip.Prefix
	// ProxyProtocol is "", "v1" or "v2": send a PROXY protocol header with
	// the visitor's address to the target (TCP tunnels).
	ProxyProtocol string
	// Private: the relay opens no public port; only visitors (logged in
	// with a visitor key) reach the tunnel, by its name.
	Private bool
	// Visitors, for a private tunnel, are the only visitor keys (by name)
	// the agent lets through; empty: whichever the relay lets through.
	Visitors []string
	// PortMapping, when set, asks the home router to forward a port of
	// its outside address straight to the target ("port_mapping"), as a
	// direct way in beside the relay; nil: none.
	PortMapping *PortMapping
	// Wake, when set, wakes the target by Wake-on-LAN when a visitor
	// comes and the target does not answer (TCP tunnels).
	Wake *Wake
}

// PortMapping is a tunnel's port mapping on the home router (package
// portmap): the router forwards External on its outside address to the
// target's port on this machine.
type PortMapping struct {
	// External is the outside port wanted (0: the target's port).
	External uint16
	// Methods are the protocols tried, in order: pcp, nat-pmp, upnp
	// (empty: all three, in that order).
	Methods []string
}

// MaxWakeTime bounds wake_time: a relay waits at most this long (plus
// the dial timeout) for a waking target (tunnel.MaxWakeWait).
const MaxWakeTime = 5 * time.Minute

// MaxPrefixes is the most networks one tunnel's Allow or Deny may list.
const MaxPrefixes = 32

// Session configures the multiplexed session between relay and agent.
type Session struct {
	// KeepAlive is the interval between keepalive pings.
	KeepAlive time.Duration
	// KeepAliveTimeout: a session from which nothing was heard for
	// KeepAlive + KeepAliveTimeout is declared dead.
	KeepAliveTimeout time.Duration
	// StreamWindow is the per-stream receive window in bytes.
	StreamWindow uint32
}

// Log selects the process log's level and format.
type Log struct {
	Level  string // debug, info, warn, error
	Format string // text, json
	File   string // append to this file; "" means standard error
}
