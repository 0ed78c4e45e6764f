package libdnsprov

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/homeport/homeport/ddns"
	"github.com/libdns/duckdns"
	"github.com/libdns/libdns"
)

// DuckDNSConfig configures Duck DNS.
type DuckDNSConfig struct {
	// Token is the account's token (a UUID).
	Token string
	// Resolver is the DNS server Get asks: "host:port". Default
	// ns1.duckdns.org:53, one of Duck DNS's own servers, so that Get does
	// not see a cache.
	Resolver string
}

// DefaultDuckDNSResolver is the server DuckDNS reads from by default.
const DefaultDuckDNSResolver = "ns1.duckdns.org:53"

// DuckDNS is a ddns.Provider for Duck DNS names ("myhost.duckdns.org")
// through github.com/libdns/duckdns.
//
// Duck DNS keeps at most one address per family for a name, so a set of
// more than one address is refused. Its API cannot clear one family
// alone: removing the last A (or AAAA) record clears both and then writes
// back the other family's address.
type DuckDNS struct {
	p     *duckdns.Provider
	token string
	sem   chan struct{}
}

var _ ddns.Provider = (*DuckDNS)(nil)

// NewDuckDNS checks cfg and returns the provider.
func NewDuckDNS(cfg DuckDNSConfig) (*DuckDNS, error) {
	tok := strings.TrimSpace(cfg.Token)
	if tok == "" {
		return nil, errors.New("duckdns: missing token")
	}
	if !isUUID(tok) {
		return nil, errors.New("duckdns: the token must be the 36-character UUID shown on the Duck DNS account page")
	}
	resolver := cfg.Resolver
	if resolver == "" {
		resolver = DefaultDuckDNSResolver
	}
	resolver, err := hostPort(resolver, "53")
	if err != nil {
		return nil, fmt.Errorf("duckdns: resolver: %w", err)
	}
	return &DuckDNS{
		p:     &duckdns.Provider{APIToken: tok, Resolver: resolver},
		token: tok,
		sem:   make(chan struct{}, 1),
	}, nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// zone checks that name is a Duck DNS name and returns it as the zone
// the package takes: "myhost.duckdns.org.".
func (d *DuckDNS) zone(name string) (string, error) {
	n, err := normalizeName(name)
	if err != nil {
		return "", err
	}
	label, ok := strings.CutSuffix(n, ".duckdns.org")
	if !ok || label == "" || strings.Contains(label, ".") {
		return "", fmt.Errorf("%w: %s is not a Duck DNS name (myhost.duckdns.org)", ddns.ErrNoHost, n)
	}
	return n + ".", nil
}

func (d *DuckDNS) lock(ctx context.Context) error {
	select {
	case d.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *DuckDNS) unlock() { <-d.sem }

func (d *DuckDNS) wrap(op, name, typ string, err error) error {
	return redact(fmt.Errorf("duckdns: %s %s %s: %w", op, name, typ, err), []string{d.token})
}

// records reads the name's records; a name without addresses (or
// without TXT) is not an error.
func (d *DuckDNS) records(ctx context.Context, zone string) ([]libdns.Record, error) {
	recs, err := d.p.GetRecords(ctx, zone)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return recs, nil
		}
		return nil, err
	}
	return recs, nil
}

func addrsOf(recs []libdns.Record, typ string) []netip.Addr {
	var out []netip.Addr
	for _, r := range recs {
		if r.RR().Type != typ {
			continue
		}
		if ip, err := recordAddr(r); err == nil {
			out = append(out, ip)
		}
	}
	return sortedUnique(out)
}

// Get implements ddns.Provider.
func (d *DuckDNS) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	if err := checkType(typ); err != nil {
		return nil, d.wrap("get", name, typ, err)
	}
	zone, err := d.zone(name)
	if err != nil {
		return nil, d.wrap("get", name, typ, err)
	}
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.unlock()
	recs, err := guard(func() ([]libdns.Record, error) { return d.records(ctx, zone) })
	if err != nil {
		return nil, d.wrap("get", name, typ, classifyDuck(err))
	}
	return addrsOf(recs, typ), nil
}

// Set implements ddns.Provider.
func (d *DuckDNS) Set(ctx context.Context, want ddns.RecordSet) error {
	addrs, err := checkSet(want)
	if err != nil {
		return d.wrap("set", want.Name, want.Type, err)
	}
	if len(addrs) > 1 {
		return d.wrap("set", want.Name, want.Type, fmt.Errorf("%d addresses given, and Duck DNS keeps one per family", len(addrs)))
	}
	zone, err := d.zone(want.Name)
	if err != nil {
		return d.wrap("set", want.Name, want.Type, err)
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	_, err = guard(func() (struct{}, error) { return struct{}{}, d.set(ctx, zone, want.Type, addrs) })
	if err != nil {
		return d.wrap("set", want.Name, want.Type, classifyDuck(err))
	}
	return nil
}

func (d *DuckDNS) set(ctx context.Context, zone, typ string, addrs []netip.Addr) error {
	if len(addrs) == 1 {
		// An update with ip= (or ipv6=) alone leaves the other family.
		_, err := d.p.SetRecords(ctx, zone, []libdns.Record{libdns.Address{Name: "@", IP: addrs[0]}})
		return err
	}
	recs, err := d.records(ctx, zone)
	if err != nil {
		return err
	}
	cur := addrsOf(recs, typ)
	if len(cur) == 0 {
		return nil
	}
	other := ddns.TypeAAAA
	if typ == ddns.TypeAAAA {
		other = ddns.TypeA
	}
	keep := addrsOf(recs, other)
	if _, err := d.p.DeleteRecords(ctx, zone, []libdns.Record{libdns.Address{Name: "@", IP: cur[0]}}); err != nil {
		return err
	}
	if len(keep) > 0 {
		if _, err := d.p.SetRecords(ctx, zone, []libdns.Record{libdns.Address{Name: "@", IP: keep[0]}}); err != nil {
			return fmt.Errorf("cleared both families, restoring %s %s: %w", other, keep[0], err)
		}
	}
	return nil
}

// classifyDuck: Duck DNS answers "KO" for a wrong token or a name not in
// the account.
func classifyDuck(err error) error {
	if err != nil && strings.Contains(err.Error(), "but got (KO)") {
		return fmt.Errorf("the token was refused for this name (Duck DNS answered KO): %w", ddns.ErrAuth)
	}
	return err
}
