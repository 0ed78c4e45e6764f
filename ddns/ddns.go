// Package ddns keeps DNS names pointing at a changing public address. It
// learns the address from sources (the relay's view of the agent, a
// network interface, "what is my IP" URLs, a command), checks the records
// at the provider (never the local resolver), writes only on change, reads
// the records back to confirm, and retries with backoff.
//
// Providers are behind Provider: RFC 2136 servers (BIND, Knot, PowerDNS)
// and API providers through the libdns ecosystem, and hand-written clients
// for dyndns2 (No-IP, DynDNS, Oray-compatible and self-hosted servers) and
// generic webhooks.
package ddns

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Record types.
const (
	TypeA    = "A"
	TypeAAAA = "AAAA"
)

// RecordSet is the wanted or current state of one name and type: the
// addresses it points at.
type RecordSet struct {
	Name  string // fully qualified, without the trailing dot: "home.example.com"
	Type  string // TypeA or TypeAAAA
	Addrs []netip.Addr
	TTL   time.Duration // 0: the provider's default
}

// Provider reads and writes address records at a DNS provider.
type Provider interface {
	// Get returns the addresses name has for typ at the provider itself
	// (its API, or the zone's authoritative server), not from a caching
	// resolver. No record is an empty set, not an error.
	Get(ctx context.Context, name, typ string) ([]netip.Addr, error)
	// Set makes want the complete set of typ records of name: it adds,
	// replaces and removes records of that name and type only, and leaves
	// every other record alone.
	Set(ctx context.Context, want RecordSet) error
}

// Errors a Provider reports, checked with errors.Is.
var (
	// ErrAuth: the provider refused the credentials. Retrying cannot help.
	ErrAuth = errors.New("provider refused the credentials")
	// ErrNoHost: the provider does not know the name (or the zone).
	ErrNoHost = errors.New("provider does not know the name")
	// ErrAbuse: the provider blocked the account for abuse.
	ErrAbuse = errors.New("provider blocked the client for abuse")
)

// RetryAfterError asks the caller to wait before the next attempt (an
// HTTP 429 or 503 with Retry-After, a dyndns2 "911").
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// Source tells the public addresses of this host (or of the host the
// names are for). A source may know only one family; it returns an empty
// slice for the other.
type Source interface {
	// Name describes the source for logs: "relay", "interface eth0",
	// "http https://…", "command …".
	Name() string
	Addrs(ctx context.Context) ([]netip.Addr, error)
}
