// Package portmap asks the home router for a port mapping, the classic
// way to make a service at home reachable from outside, and keeps it:
// with PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP-IGD (versions 1 and 2),
// whichever the router speaks, tried in that order.
//
// A mapping says only what the router agreed to. Behind a carrier-grade
// NAT the router's "external" address is itself private, and a mapping
// on it reaches nobody; whoever uses a mapping must check it from
// outside first.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Method is a port mapping protocol.
type Method string

// The methods, in the order Keep tries them.
const (
	PCP    Method = "pcp"
	NATPMP Method = "nat-pmp"
	UPnP   Method = "upnp"
)

// Methods is the default order: the two small UDP protocols first, since
// a router that speaks them answers in one round trip, then UPnP, which
// needs a multicast search and HTTP.
var Methods = []Method{PCP, NATPMP, UPnP}

// ParseMethod reads a method's name.
func ParseMethod(s string) (Method, error) {
	switch m := Method(strings.ToLower(strings.TrimSpace(s))); m {
	case PCP, NATPMP, UPnP:
		return m, nil
	case "natpmp", "nat_pmp", "pmp":
		return NATPMP, nil
	}
	return "", fmt.Errorf("port mapping method %q: want pcp, nat-pmp or upnp", s)
}

// Request is the mapping wanted.
type Request struct {
	// Protocol is "tcp" or "udp".
	Protocol string
	// InternalPort is the port at home that the mapping leads to, on the
	// address this host has toward the router.
	InternalPort uint16
	// ExternalPort is the router's port wanted (0: the internal port's
	// number). The router may give another.
	ExternalPort uint16
	// Lifetime is the lease asked for; the router may shorten it.
	Lifetime time.Duration
	// Description names the mapping in the router's list (UPnP).
	Description string
}

func (r Request) check() error {
	switch r.Protocol {
	case "tcp", "udp":
	default:
		return fmt.Errorf("port mapping: protocol %q: want tcp or udp", r.Protocol)
	}
	if r.InternalPort == 0 {
		return errors.New("port mapping: internal port 0")
	}
	if r.Lifetime < time.Second {
		return fmt.Errorf("port mapping: lifetime %v: want at least 1s", r.Lifetime)
	}
	return nil
}

func (r Request) wantExternal() uint16 {
	if r.ExternalPort != 0 {
		return r.ExternalPort
	}
	return r.InternalPort
}

// Mapping is what the router granted.
type Mapping struct {
	Method   Method
	Protocol string
	// Internal is this host's address toward the router and the port.
	Internal netip.AddrPort
	// External is the router's outside address and the port it opened.
	External netip.AddrPort
	// Lifetime is the lease granted; 0 with UPnP means until removed.
	Lifetime time.Duration
	// Granted is when the router answered.
	Granted time.Time

	// handle removes or renews the mapping with the protocol that made it.
	handle mapper
	// epoch is the router's epoch (PCP, NAT-PMP) at Granted, in seconds.
	epoch uint32
	// nonce identifies a PCP mapping to its router.
	nonce [12]byte
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s %s %v -> %v (%s)", m.Method, m.Protocol, m.External, m.Internal, lifetimeText(m.Lifetime))
}

func lifetimeText(d time.Duration) string {
	if d == 0 {
		return "until removed"
	}
	return "lease " + d.String()
}

// Errors a mapping attempt can end with, for errors.Is.
var (
	// ErrNoRouter: nothing answered the protocol (no such router, or it
	// does not speak it).
	ErrNoRouter = errors.New("no router answered")
	// ErrRefused: the router answered and refused the mapping.
	ErrRefused = errors.New("router refused the mapping")
)

// mapper is one protocol's client for one router.
type mapper interface {
	method() Method
	// mapPort asks for r; prev, when not nil, is the mapping to renew.
	mapPort(ctx context.Context, r Request, prev *Mapping) (Mapping, error)
	// unmap removes m.
	unmap(ctx context.Context, m Mapping) error
	// present reports whether the router still holds m, where the
	// protocol can tell without renewing it (UPnP); ok false otherwise.
	present(ctx context.Context, m Mapping) (held, ok bool, err error)
}
