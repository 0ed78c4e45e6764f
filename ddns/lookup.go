package ddns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// LookupFunc reads the addresses of name for typ (TypeA or TypeAAAA). No
// record is an empty result, not an error.
type LookupFunc func(ctx context.Context, name, typ string) ([]netip.Addr, error)

// AuthoritativeLookup returns a LookupFunc that asks one DNS server, the
// zone's authoritative one ("ns1.example.com:53"; port 53 if none given),
// instead of the system's caching resolver, so a write shows at once
// rather than after the old record's TTL.
//
// It is Go's own resolver with every query sent to that server, which
// means it still reads the hosts file first: a name the hosts file lists
// is answered from there.
func AuthoritativeLookup(server string) LookupFunc {
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "53")
	}
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
	return func(ctx context.Context, name, typ string) ([]netip.Addr, error) {
		var network string
		switch typ {
		case TypeA:
			network = "ip4"
		case TypeAAAA:
			network = "ip6"
		default:
			return nil, fmt.Errorf("lookup %s %s: unsupported type", name, typ)
		}
		// The trailing dot keeps search domains out.
		addrs, err := r.LookupNetIP(ctx, network, strings.TrimSuffix(name, ".")+".")
		if err != nil {
			var de *net.DNSError
			if errors.As(err, &de) && de.IsNotFound {
				return nil, nil
			}
			return nil, fmt.Errorf("lookup %s %s at %s: %w", name, typ, server, err)
		}
		var out []netip.Addr
		for _, a := range addrs {
			a = a.Unmap()
			if a.Is4() == (typ == TypeA) {
				out = append(out, a)
			}
		}
		return out, nil
	}
}

// readBack is how the write-only providers (dyndns2, webhook) implement
// Get: through lookup if set, else through the authoritative server.
func readBack(ctx context.Context, lookup LookupFunc, nameserver, name, typ string) ([]netip.Addr, error) {
	if lookup == nil {
		if nameserver == "" {
			return nil, errors.New("no nameserver configured to read the records back from")
		}
		lookup = AuthoritativeLookup(nameserver)
	}
	if typ != TypeA && typ != TypeAAAA {
		return nil, fmt.Errorf("unsupported record type %q", typ)
	}
	return lookup(ctx, name, typ)
}
