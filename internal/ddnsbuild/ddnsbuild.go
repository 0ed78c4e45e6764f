// Package ddnsbuild builds the dynamic DNS updater from the configuration
// (config.DDNS) for the relay, the agent and "agent ddns": the provider,
// the sources in their order, and the relay source that the agent feeds
// with the address the relay sees it at (ddns.RelayAddr), and the mapping
// sources it feeds with its verified port mappings (ddns.Mappings). It is
// the one
// package that knows every provider; the programs (cmd/) hand its New to
// the relay and the agent, which know none.
package ddnsbuild

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/ddns/libdnsprov"
	"github.com/homeport/homeport/internal/cli"
)

// Options are what the program adds to the configuration.
type Options struct {
	// Log receives the updater's log; nil: none.
	Log *slog.Logger
	// Relay feeds the relay source. Nil where no session to a relay
	// exists ("agent ddns"): relay sources are then left out, with a
	// warning, and it is an error if no other source is configured.
	Relay *ddns.RelayAddr
	// Sessions feeds the connected_relays source: the relays the agent
	// has a session with. Nil where the program opens no sessions
	// ("agent ddns").
	Sessions *ddns.RelaySessions
	// Mappings feeds the mapping sources: the agent's port mappings
	// that the relay verified. Nil where the agent keeps no mappings
	// ("agent ddns"): mapping sources are then left out, with a warning,
	// and it is an error if no other source is configured.
	Mappings *ddns.Mappings
	// UserAgent is sent to providers and "what is my IP" services;
	// "": homeport-ddns/VERSION.
	UserAgent string
}

// callTimeout bounds one read or write at the provider: some libdns
// packages use an HTTP client without a timeout.
const callTimeout = 90 * time.Second

// mappingStopTimeout bounds the updater's last round as the agent stops,
// in which mapping sources withdraw their addresses: long enough for a
// provider's answer, short enough not to hold a service manager's stop.
const mappingStopTimeout = 10 * time.Second

// New builds the updater c describes. It checks what the configuration
// loader cannot (the provider's own checks, such as Route 53's
// credentials) but contacts nobody.
func New(c *config.DDNS, o Options) (*ddns.Updater, error) {
	if c == nil {
		return nil, errors.New("ddns: no configuration")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ua := o.UserAgent
	if ua == "" {
		ua = ddns.UserAgent(cli.Version())
	}
	p, err := provider(c, ua)
	if err != nil {
		return nil, err
	}
	u := &ddns.Updater{
		Provider:         timeoutProvider{p},
		Log:              log,
		Interval:         c.Interval,
		ForceRefresh:     c.ForceRefresh,
		MinWriteInterval: c.MinWriteInterval,
	}
	if c.ForceRefresh == 0 {
		u.ForceRefresh = -1 // never
	}
	var want4, want6 bool
	for _, n := range c.Names {
		u.Names = append(u.Names, ddns.NameConfig{Name: n.Name, IPv4: n.IPv4, IPv6: n.IPv6, TTL: n.TTL})
		want4, want6 = want4 || n.IPv4, want6 || n.IPv6
	}
	var sources []ddns.Source
	// addWake lets a source that learns of changes wake the updater.
	addWake := func(w <-chan struct{}) {
		switch {
		case u.Wake == nil:
			u.Wake = w
		case u.Wake != w && !slices.Contains(u.Wakes, w):
			u.Wakes = append(u.Wakes, w)
		}
	}
	for _, s := range c.Sources {
		switch s.Kind {
		case config.DDNSSourceRelay:
			if o.Relay == nil {
				log.Warn("ddns: the relay source is left out: it needs the agent's session to the relay, which agent ddns does not open")
				continue
			}
			sources = append(sources, o.Relay.Source())
			addWake(o.Relay.Wake())
		case config.DDNSSourceConnectedRelays:
			if o.Sessions == nil {
				log.Warn("ddns: the connected_relays source is left out: it needs the agent's sessions to its relays, which agent ddns does not open")
				continue
			}
			sources = append(sources, o.Sessions.Source())
			addWake(o.Sessions.Wake())
		case config.DDNSSourceMapping:
			if o.Mappings == nil {
				log.Warn("ddns: the mapping source is left out: it needs the agent's port mappings, which agent ddns does not keep", "source", s.String())
				continue
			}
			sources = append(sources, o.Mappings.Source(s.Tunnel))
			addWake(o.Mappings.Wake())
			u.StopTimeout = mappingStopTimeout
		case config.DDNSSourceHTTP:
			urls := c.HTTPURLs
			if len(urls) == 0 {
				urls = config.DefaultHTTPURLs
			}
			// One question per family the names want: a service answers
			// with the address the connection came from, so it is asked
			// over IPv4 and over IPv6.
			if want4 {
				sources = append(sources, named{&ddns.HTTPSource{URLs: urls, Family: 4, UserAgent: ua}, "http (IPv4)"})
			}
			if want6 {
				sources = append(sources, named{&ddns.HTTPSource{URLs: urls, Family: 6, UserAgent: ua}, "http (IPv6)"})
			}
		case config.DDNSSourceInterface:
			sources = append(sources, ddns.InterfaceSource{Interface: s.Interface, Suffix: c.IPv6Suffix})
		case config.DDNSSourceCommand:
			sources = append(sources, ddns.CommandSource{Argv: s.Command})
		default:
			return nil, fmt.Errorf("ddns.sources: unknown source %q", s.Kind)
		}
	}
	switch len(sources) {
	case 0:
		return nil, errors.New("ddns.sources: no source left: the relay and connected_relays sources need the agent's sessions to its relays, and the mapping source the port mappings the agent keeps; add http, interface:NAME or command:COMMAND to run without them")
	case 1:
		u.Source = sources[0]
	default:
		u.Source = ddns.FirstOf(sources...)
	}
	if err := u.Validate(); err != nil {
		return nil, err
	}
	return u, nil
}

// provider builds the configured provider.
func provider(c *config.DDNS, ua string) (ddns.Provider, error) {
	var (
		p   ddns.Provider
		err error
	)
	switch c.Provider {
	case "cloudflare":
		if s := c.Cloudflare; s != nil {
			p, err = libdnsprov.NewCloudflare(libdnsprov.CloudflareConfig{APIToken: string(s.APIToken), ZoneToken: string(s.ZoneToken), Zone: s.Zone})
		}
	case "alidns":
		if s := c.AliDNS; s != nil {
			p, err = libdnsprov.NewAliDNS(libdnsprov.AliDNSConfig{AccessKeyID: s.AccessKeyID, AccessKeySecret: string(s.AccessKeySecret),
				RegionID: s.RegionID, SecurityToken: string(s.SecurityToken), Zone: s.Zone})
		}
	case "route53":
		if s := c.Route53; s != nil {
			p, err = libdnsprov.NewRoute53(libdnsprov.Route53Config{AccessKeyID: s.AccessKeyID, SecretAccessKey: string(s.SecretAccessKey),
				SessionToken: string(s.SessionToken), Profile: s.Profile, Region: s.Region, HostedZoneID: s.HostedZoneID, Zone: s.Zone})
		}
	case "duckdns":
		if s := c.DuckDNS; s != nil {
			p, err = libdnsprov.NewDuckDNS(libdnsprov.DuckDNSConfig{Token: string(s.Token), Resolver: s.Resolver})
		}
	case "dnspod":
		if s := c.DNSPod; s != nil {
			p, err = libdnsprov.NewDNSPod(libdnsprov.DNSPodConfig{SecretID: s.SecretID, SecretKey: string(s.SecretKey),
				SessionToken: string(s.SessionToken), Region: s.Region, Zone: s.Zone})
		}
	case "rfc2136":
		if s := c.RFC2136; s != nil {
			p, err = libdnsprov.NewRFC2136(libdnsprov.RFC2136Config{Server: s.Server, Zone: s.Zone, KeyName: s.KeyName,
				KeyAlgorithm: s.KeyAlgorithm, KeySecret: string(s.KeySecret), DefaultTTL: s.DefaultTTL, Timeout: s.Timeout})
		}
	case "dyndns2":
		if s := c.DynDNS2; s != nil {
			p = &ddns.DynDNS2{Server: s.Server, Username: s.Username, Password: string(s.Password), UserAgent: ua, Nameserver: s.Nameserver}
		}
	case "webhook":
		if s := c.Webhook; s != nil {
			h := make(map[string]string, len(s.Headers))
			for k, v := range s.Headers {
				h[k] = string(v)
			}
			p = &ddns.Webhook{URL: string(s.URL), Method: s.Method, Body: string(s.Body), Headers: h, OKBody: s.OKBody, UserAgent: ua, Nameserver: s.Nameserver}
		}
	default:
		return nil, fmt.Errorf("ddns.provider: unknown provider %q", c.Provider)
	}
	if err != nil {
		// The provider's errors start with its name: "route53: …".
		return nil, fmt.Errorf("ddns: %w", err)
	}
	if p == nil {
		return nil, fmt.Errorf("ddns.%s: missing", c.Provider)
	}
	return p, nil
}

// timeoutProvider bounds each call of a provider.
type timeoutProvider struct{ p ddns.Provider }

func (t timeoutProvider) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return t.p.Get(ctx, name, typ)
}

func (t timeoutProvider) Set(ctx context.Context, want ddns.RecordSet) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return t.p.Set(ctx, want)
}

// named gives a source another name in logs.
type named struct {
	ddns.Source
	name string
}

func (n named) Name() string { return n.name }

// Report writes one line per name and record type, and reports whether
// every record is in sync.
func Report(w io.Writer, sts []ddns.Status) bool {
	ok := len(sts) > 0
	for _, s := range sts {
		switch {
		case s.Synced && s.LastError == nil:
			fmt.Fprintf(w, "%s %s: ok, %s\n", s.Name, s.Type, addrList(s.Current))
		default:
			ok = false
			why := "not in sync"
			if s.LastError != nil {
				why = s.LastError.Error()
			}
			shows := "not read from the provider"
			if !s.LastCheck.IsZero() {
				shows = "the provider shows " + addrList(s.Current)
			}
			fmt.Fprintf(w, "%s %s: FAILED: %s (%s)\n", s.Name, s.Type, why, shows)
		}
	}
	return ok
}

func addrList(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "no address"
	}
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}
