package libdnsprov

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/homeport/homeport/ddns"
	"github.com/miekg/dns"
)

// RFC2136Config configures dynamic updates (RFC 2136) signed with TSIG
// (RFC 8945), as BIND, Knot DNS and PowerDNS accept them.
type RFC2136Config struct {
	// Server is the zone's primary server: "ns1.example.com:53",
	// "192.0.2.1" or "[2001:db8::1]:5353". The port defaults to 53.
	Server string
	// Zone the names are in: "example.com.".
	Zone string
	// KeyName, KeyAlgorithm and KeySecret are the TSIG key the server
	// allows to update the zone. KeyAlgorithm defaults to hmac-sha256;
	// hmac-sha1, hmac-sha224, hmac-sha384 and hmac-sha512 are accepted.
	// KeySecret is base64, as in a BIND key statement.
	KeyName      string
	KeyAlgorithm string
	KeySecret    string
	// DefaultTTL is used when a RecordSet has no TTL and the name has no
	// record of the type yet (one that has keeps its TTL). Default 5 min.
	DefaultTTL time.Duration
	// Timeout bounds one exchange with the server. Default 10 s.
	Timeout time.Duration
}

// RFC2136 is a ddns.Provider that reads records by asking the zone's
// server directly (not a resolver) and writes them with one atomic update
// per Set: delete the RRset of the name and type, add the wanted records.
type RFC2136 struct {
	server     string
	zone       string // lower case, trailing dot
	keyName    string // fully qualified
	keyAlg     string
	keySecret  string
	defaultTTL time.Duration
	timeout    time.Duration
}

var _ ddns.Provider = (*RFC2136)(nil)

var tsigAlgorithms = map[string]string{
	"hmac-sha1":   dns.HmacSHA1,
	"hmac-sha224": dns.HmacSHA224,
	"hmac-sha256": dns.HmacSHA256,
	"hmac-sha384": dns.HmacSHA384,
	"hmac-sha512": dns.HmacSHA512,
}

// NewRFC2136 checks cfg and returns the provider. It does not contact the
// server.
func NewRFC2136(cfg RFC2136Config) (*RFC2136, error) {
	if strings.TrimSpace(cfg.Server) == "" {
		return nil, errors.New("rfc2136: missing server")
	}
	server, err := hostPort(strings.TrimSpace(cfg.Server), "53")
	if err != nil {
		return nil, fmt.Errorf("rfc2136: server: %w", err)
	}
	if strings.TrimSpace(cfg.Zone) == "" {
		return nil, errors.New("rfc2136: missing zone")
	}
	zone, err := normalizeZone(cfg.Zone)
	if err != nil {
		return nil, fmt.Errorf("rfc2136: %w", err)
	}
	if strings.TrimSpace(cfg.KeyName) == "" {
		return nil, errors.New("rfc2136: missing TSIG key name")
	}
	if strings.TrimSpace(cfg.KeySecret) == "" {
		return nil, errors.New("rfc2136: missing TSIG key secret")
	}
	if _, err := base64.StdEncoding.DecodeString(cfg.KeySecret); err != nil {
		return nil, fmt.Errorf("rfc2136: TSIG key secret is not base64: %w", err)
	}
	algName := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(cfg.KeyAlgorithm), "."))
	if algName == "" {
		algName = "hmac-sha256"
	}
	alg, ok := tsigAlgorithms[algName]
	if !ok {
		return nil, fmt.Errorf("rfc2136: unsupported TSIG algorithm %q", cfg.KeyAlgorithm)
	}
	if cfg.DefaultTTL < 0 || cfg.Timeout < 0 {
		return nil, errors.New("rfc2136: negative TTL or timeout")
	}
	p := &RFC2136{
		server:     server,
		zone:       zone,
		keyName:    dns.CanonicalName(strings.TrimSpace(cfg.KeyName)),
		keyAlg:     alg,
		keySecret:  cfg.KeySecret,
		defaultTTL: cfg.DefaultTTL,
		timeout:    cfg.Timeout,
	}
	if p.defaultTTL == 0 {
		p.defaultTTL = 5 * time.Minute
	}
	if p.timeout == 0 {
		p.timeout = 10 * time.Second
	}
	return p, nil
}

// hostPort adds the default port to a host without one.
func hostPort(s, port string) (string, error) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		if h == "" || p == "" {
			return "", fmt.Errorf("invalid address %q", s)
		}
		return s, nil
	}
	h := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if h == "" || strings.ContainsAny(h, " /") {
		return "", fmt.Errorf("invalid address %q", s)
	}
	return net.JoinHostPort(h, port), nil
}

// fqdn checks that name is in the zone and returns it fully qualified.
func (p *RFC2136) fqdn(name string) (string, error) {
	n, err := normalizeName(name)
	if err != nil {
		return "", err
	}
	zone := strings.TrimSuffix(p.zone, ".")
	if n != zone && !strings.HasSuffix(n, "."+zone) {
		return "", fmt.Errorf("%w: %s is not in zone %s", ddns.ErrNoHost, n, p.zone)
	}
	return n + ".", nil
}

func rrType(typ string) (uint16, error) {
	switch typ {
	case ddns.TypeA:
		return dns.TypeA, nil
	case ddns.TypeAAAA:
		return dns.TypeAAAA, nil
	}
	return 0, fmt.Errorf("unsupported record type %q", typ)
}

// Get implements ddns.Provider.
func (p *RFC2136) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	addrs, _, err := p.get(ctx, name, typ)
	if err != nil {
		return nil, fmt.Errorf("rfc2136: get %s %s: %w", name, typ, err)
	}
	return addrs, nil
}

// get returns the addresses and the TTL of the RRset (0 if none).
func (p *RFC2136) get(ctx context.Context, name, typ string) ([]netip.Addr, time.Duration, error) {
	qtype, err := rrType(typ)
	if err != nil {
		return nil, 0, err
	}
	fqdn, err := p.fqdn(name)
	if err != nil {
		return nil, 0, err
	}
	r, err := p.exchange(ctx, func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(fqdn, qtype)
		m.RecursionDesired = false
		return m
	})
	if err != nil {
		return nil, 0, err
	}
	if r.Rcode == dns.RcodeNameError {
		return nil, 0, nil
	}
	if !r.Authoritative {
		return nil, 0, fmt.Errorf("%w: %s is not authoritative for %s", ddns.ErrNoHost, p.server, fqdn)
	}
	var addrs []netip.Addr
	var ttl time.Duration
	for _, rr := range r.Answer {
		if !strings.EqualFold(rr.Header().Name, fqdn) {
			continue
		}
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA {
				ip = v.A
			}
		case *dns.AAAA:
			if qtype == dns.TypeAAAA {
				ip = v.AAAA
			}
		}
		if ip == nil {
			continue
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if qtype == dns.TypeA {
			addr = addr.Unmap()
		}
		addrs = append(addrs, addr)
		ttl = time.Duration(rr.Header().Ttl) * time.Second
	}
	return sortedUnique(addrs), ttl, nil
}

// Set implements ddns.Provider: one update message that deletes the
// RRset of the name and type and adds the wanted records, applied by the
// server atomically.
func (p *RFC2136) Set(ctx context.Context, want ddns.RecordSet) error {
	if err := p.set(ctx, want); err != nil {
		return fmt.Errorf("rfc2136: set %s %s: %w", want.Name, want.Type, err)
	}
	return nil
}

func (p *RFC2136) set(ctx context.Context, want ddns.RecordSet) error {
	addrs, err := checkSet(want)
	if err != nil {
		return err
	}
	qtype, err := rrType(want.Type)
	if err != nil {
		return err
	}
	fqdn, err := p.fqdn(want.Name)
	if err != nil {
		return err
	}
	ttl := want.TTL
	if ttl == 0 && len(addrs) > 0 {
		_, cur, err := p.get(ctx, want.Name, want.Type)
		if err != nil {
			return err
		}
		ttl = cur
		if ttl == 0 {
			ttl = p.defaultTTL
		}
	}
	secs := uint32(ttl / time.Second)
	rrs := make([]dns.RR, 0, len(addrs))
	for _, ip := range addrs {
		hdr := dns.RR_Header{Name: fqdn, Rrtype: qtype, Class: dns.ClassINET, Ttl: secs}
		if qtype == dns.TypeA {
			rrs = append(rrs, &dns.A{Hdr: hdr, A: ip.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
		}
	}
	_, err = p.exchange(ctx, func() *dns.Msg {
		m := new(dns.Msg)
		m.SetUpdate(p.zone)
		m.RemoveRRset([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: fqdn, Rrtype: qtype, Class: dns.ClassINET}}})
		if len(rrs) > 0 {
			m.Insert(rrs)
		}
		return m
	})
	return err
}

// exchange sends the message build makes, signed, over UDP, and again
// over TCP if the answer was truncated. It returns an error for any
// response code but NOERROR and NXDOMAIN.
func (p *RFC2136) exchange(ctx context.Context, build func() *dns.Msg) (*dns.Msg, error) {
	for _, network := range []string{"udp", "tcp"} {
		m := build()
		m.SetTsig(p.keyName, p.keyAlg, 300, time.Now().Unix())
		c := &dns.Client{
			Net:        network,
			Timeout:    p.timeout,
			TsigSecret: map[string]string{p.keyName: p.keySecret},
		}
		r, _, err := c.ExchangeContext(ctx, m, p.server)
		if r != nil {
			if rerr := rcodeError(r); rerr != nil {
				// Servers answer a refused signature unsigned, so the
				// client's verification error adds nothing here.
				return nil, rerr
			}
		}
		if err != nil {
			if r != nil {
				return nil, fmt.Errorf("%s: response failed TSIG verification: %w", p.server, err)
			}
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr
			}
			return nil, fmt.Errorf("%s: %w", p.server, err)
		}
		if r.Truncated && network == "udp" {
			continue
		}
		return r, nil
	}
	return nil, fmt.Errorf("%s: answer truncated over TCP", p.server)
}

// rcodeError maps a response's code (and TSIG error) to an error.
func rcodeError(r *dns.Msg) error {
	tsigErr := uint16(0)
	if t := r.IsTsig(); t != nil {
		tsigErr = t.Error
	}
	if r.Rcode == dns.RcodeSuccess && tsigErr == 0 {
		return nil
	}
	if r.Rcode == dns.RcodeNameError && tsigErr == 0 {
		return nil
	}
	desc := "server answered " + rcodeName(r.Rcode)
	if tsigErr != 0 {
		desc += " (TSIG " + tsigErrorName(tsigErr) + ")"
	}
	switch {
	case tsigErr == dns.RcodeBadSig || tsigErr == dns.RcodeBadKey:
		return fmt.Errorf("%s: the key name, algorithm or secret is wrong: %w", desc, ddns.ErrAuth)
	case tsigErr == dns.RcodeBadTime:
		return fmt.Errorf("%s: the clocks of this host and the server differ: %w", desc, ddns.ErrAuth)
	case r.Rcode == dns.RcodeNotAuth || r.Rcode == dns.RcodeRefused:
		return fmt.Errorf("%s: the key may not update this zone, or the server is not its primary: %w", desc, ddns.ErrAuth)
	case r.Rcode == dns.RcodeNotZone:
		return fmt.Errorf("%s: %w", desc, ddns.ErrNoHost)
	}
	return errors.New(desc)
}

func rcodeName(c int) string {
	if s, ok := dns.RcodeToString[c]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", c)
}

func tsigErrorName(e uint16) string {
	switch e {
	case dns.RcodeBadSig:
		return "BADSIG"
	case dns.RcodeBadKey:
		return "BADKEY"
	case dns.RcodeBadTime:
		return "BADTIME"
	case dns.RcodeBadTrunc:
		return "BADTRUNC"
	}
	return rcodeName(int(e))
}
