package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DDNS configures the dynamic DNS updater ("ddns", config file only): it
// keeps Names at Provider pointing at the public addresses the Sources
// report. Only the section of the chosen provider is set.
type DDNS struct {
	Names []DDNSName
	// Sources are asked in order, per address family: the first that
	// gives a public address of a family wins. Default: the relay source
	// in the agent, http in the relay and in "agent ddns".
	Sources []DDNSSource
	// HTTPURLs are the "what is my IP" services of the http source.
	HTTPURLs []string
	// IPv6Suffix, if valid, makes interface sources report each public
	// /64 prefix of the interface joined with this suffix (another host
	// on the same network) instead of the interface's own addresses.
	IPv6Suffix netip.Addr
	// Interval is the time between rounds.
	Interval time.Duration
	// ForceRefresh writes unchanged records again this long after the
	// last confirmed write; 0: never.
	ForceRefresh time.Duration
	// MinWriteInterval is the least time between two writes of one name
	// and record type.
	MinWriteInterval time.Duration
	// Provider is one of DDNSProviders.
	Provider string

	Cloudflare *DDNSCloudflare
	AliDNS     *DDNSAliDNS
	Route53    *DDNSRoute53
	DuckDNS    *DDNSDuckDNS
	DNSPod     *DDNSDNSPod
	RFC2136    *DDNSRFC2136
	DynDNS2    *DDNSDynDNS2
	Webhook    *DDNSWebhook
}

// DDNSName is one name the updater keeps up to date.
type DDNSName struct {
	Name       string // lower case, without a trailing dot
	IPv4, IPv6 bool   // manage the A and the AAAA records
	TTL        time.Duration
}

// Kinds of DDNS sources.
const (
	DDNSSourceRelay     = "relay"     // the agent's address as the relay sees it
	DDNSSourceHTTP      = "http"      // "what is my IP" services
	DDNSSourceInterface = "interface" // a network interface's addresses
	DDNSSourceCommand   = "command"   // the addresses a command prints
	// DDNSSourceMapping is the outside address of a tunnel's port mapping
	// on the home router, while the relay has verified it reachable.
	DDNSSourceMapping = "mapping"
	// DDNSSourceConnectedRelays is the addresses of the relays the agent
	// has a session with.
	DDNSSourceConnectedRelays = "connected_relays"
)

// DDNSSource is one source of the public address.
type DDNSSource struct {
	Kind      string   // DDNSSourceRelay, …
	Interface string   // the interface's name, for DDNSSourceInterface
	Command   []string // program and arguments, for DDNSSourceCommand
	Tunnel    string   // the tunnel's name, for DDNSSourceMapping
}

// String writes the source as in a file, with the command's arguments
// left out (they may hold secrets).
func (s DDNSSource) String() string {
	switch s.Kind {
	case DDNSSourceInterface:
		return s.Kind + ":" + s.Interface
	case DDNSSourceMapping:
		return s.Kind + ":" + s.Tunnel
	case DDNSSourceCommand:
		if len(s.Command) > 0 {
			return s.Kind + ":" + s.Command[0] + " …"
		}
	}
	return s.Kind
}

// GoString hides the command's arguments from %#v as well.
func (s DDNSSource) GoString() string { return "config.DDNSSource(" + strconv.Quote(s.String()) + ")" }

// DDNSProviders lists the providers, as "provider" names them.
var DDNSProviders = []string{"cloudflare", "alidns", "route53", "duckdns", "dnspod", "rfc2136", "dyndns2", "webhook"}

// DefaultHTTPURLs are the services the http source asks when http_urls is
// not set. Each answers over IPv4 and IPv6, so one list serves both.
var DefaultHTTPURLs = []string{"https://api64.ipify.org", "https://ifconfig.co/ip", "https://icanhazip.com"}

// Secret is a configuration value that must not be shown: it formats as
// "<hidden>" (or "" when empty).
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "<hidden>"
}

// GoString hides the secret from %#v as well.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// DDNSCloudflare configures Cloudflare ("ddns.cloudflare").
type DDNSCloudflare struct {
	APIToken  Secret // api_token: Zone.DNS:Edit (and Zone:Read) for Zone
	ZoneToken Secret // zone_token: optional separate token with Zone:Read
	Zone      string // zone: "example.com"
}

// DDNSAliDNS configures Alibaba Cloud DNS ("ddns.alidns").
type DDNSAliDNS struct {
	AccessKeyID     string
	AccessKeySecret Secret
	RegionID        string // default cn-hangzhou
	SecurityToken   Secret // STS credentials only
	Zone            string
}

// DDNSRoute53 configures Amazon Route 53 ("ddns.route53"). Without an
// access key, Profile or the AWS_* environment variables name the
// credentials.
type DDNSRoute53 struct {
	AccessKeyID     string
	SecretAccessKey Secret
	SessionToken    Secret
	Profile         string
	Region          string
	HostedZoneID    string
	Zone            string
}

// DDNSDuckDNS configures Duck DNS ("ddns.duckdns").
type DDNSDuckDNS struct {
	Token    Secret
	Resolver string // "host:port" read back from; default ns1.duckdns.org:53
}

// DDNSDNSPod configures DNSPod through the Tencent Cloud API ("ddns.dnspod").
type DDNSDNSPod struct {
	SecretID     string
	SecretKey    Secret
	SessionToken Secret
	Region       string
	Zone         string
}

// DDNSRFC2136 configures dynamic updates signed with TSIG ("ddns.rfc2136").
type DDNSRFC2136 struct {
	Server       string // the zone's primary server, "ns1.example.com:53"
	Zone         string
	KeyName      string
	KeyAlgorithm string // hmac-sha256 (the default), hmac-sha1, -sha224, -sha384, -sha512
	KeySecret    Secret // base64
	DefaultTTL   time.Duration
	Timeout      time.Duration
}

// DDNSDynDNS2 configures a dyndns2 server ("ddns.dyndns2"): No-IP, Dyn,
// and compatible ones.
type DDNSDynDNS2 struct {
	Server     string // base URL, "https://dynupdate.no-ip.com"
	Username   string
	Password   Secret
	Nameserver string // the zone's authoritative server, read back from
}

// DDNSWebhook configures a generic webhook ("ddns.webhook").
type DDNSWebhook struct {
	URL        Secret // template; may hold a token
	Method     string // GET (the default), POST, PUT or PATCH
	Body       Secret // template, for methods other than GET
	Headers    map[string]Secret
	OKBody     string // if set, a 2xx answer must contain it
	Nameserver string // the zone's authoritative server, read back from
}

// String describes the configuration without its secrets.
func (d *DDNS) String() string {
	if d == nil {
		return "ddns: off"
	}
	names := make([]string, len(d.Names))
	for i, n := range d.Names {
		var types []string
		if n.IPv4 {
			types = append(types, "A")
		}
		if n.IPv6 {
			types = append(types, "AAAA")
		}
		names[i] = n.Name + " (" + strings.Join(types, ", ") + ")"
	}
	sources := make([]string, len(d.Sources))
	for i, s := range d.Sources {
		sources[i] = s.String()
	}
	return fmt.Sprintf("ddns %s: %s; sources %s", d.Provider, strings.Join(names, ", "), strings.Join(sources, ", "))
}

func ddnsSetting() setting {
	return setting{key: "ddns", kind: kFile, usage: "dynamic DNS: keep DNS names pointing at this host's public address (config file only)"}
}

// ddnsMode says which program reads the ddns section.
type ddnsMode int

const (
	ddnsRelay      ddnsMode = iota // the relay: no relay source
	ddnsAgent                      // the agent with its tunnels
	ddnsStandalone                 // "agent ddns": the agent's file, no session
)

// ddnsKeys are the keys of the ddns section, provider sections aside.
var ddnsKeys = []string{"names", "sources", "http_urls", "ipv6_suffix", "interval", "force_refresh", "min_write_interval", "provider"}

// ddnsProviderKeys are the keys of each provider's section.
var ddnsProviderKeys = map[string][]string{
	"cloudflare": {"api_token", "zone_token", "zone"},
	"alidns":     {"access_key_id", "access_key_secret", "region_id", "security_token", "zone"},
	"route53":    {"access_key_id", "secret_access_key", "session_token", "profile", "region", "hosted_zone_id", "zone"},
	"duckdns":    {"token", "resolver"},
	"dnspod":     {"secret_id", "secret_key", "session_token", "region", "zone"},
	"rfc2136":    {"server", "zone", "key_name", "key_algorithm", "key_secret", "default_ttl", "timeout"},
	"dyndns2":    {"server", "username", "password", "nameserver"},
	"webhook":    {"url", "method", "body", "headers", "ok_body", "nameserver"},
}

// Defaults and limits of the ddns section.
const (
	ddnsDefaultInterval         = 5 * time.Minute
	ddnsDefaultForceRefresh     = 24 * time.Hour
	ddnsDefaultMinWriteInterval = time.Minute
	ddnsMaxNames                = 64
	ddnsMaxSources              = 16
)

// ddnsParser reads the ddns section. Its errors name the key's path in
// the section and the file, since the section can only come from one.
type ddnsParser struct {
	l    *loader
	mode ddnsMode
	// tunnels are the agent's, for mapping sources (ddnsAgent only).
	tunnels []Tunnel
}

func (p ddnsParser) fail(path string, err error) {
	p.l.errs = append(p.l.errs, fmt.Errorf("%s in %s: %w", path, p.l.file, err))
}

// ddns reads the ddns section; nil when the file has none. tunnels are
// the agent's (ddnsAgent), which mapping sources name.
func (l *loader) ddns(mode ddnsMode, tunnels []Tunnel) *DDNS {
	raw := l.raw("ddns")
	if raw == nil {
		return nil
	}
	p := ddnsParser{l: l, mode: mode, tunnels: tunnels}
	m, ok := raw.(map[string]any)
	if !ok {
		p.fail("ddns", fmt.Errorf("want a section with keys below it (%s)", strings.Join(ddnsKeys, ", ")))
		return nil
	}
	allowed := append(slices.Clone(ddnsKeys), DDNSProviders...)
	if !p.checkKeys("ddns", m, allowed) {
		return nil
	}
	d := &DDNS{
		Interval:         p.duration("ddns.interval", m["interval"], ddnsDefaultInterval, 30*time.Second, 24*time.Hour),
		ForceRefresh:     p.duration("ddns.force_refresh", m["force_refresh"], ddnsDefaultForceRefresh, 0, 365*24*time.Hour),
		MinWriteInterval: p.duration("ddns.min_write_interval", m["min_write_interval"], ddnsDefaultMinWriteInterval, time.Second, 24*time.Hour),
	}
	if d.ForceRefresh > 0 && d.ForceRefresh < time.Hour {
		p.fail("ddns.force_refresh", fmt.Errorf("%v: want at least 1h, or 0s for never", d.ForceRefresh))
	}
	d.Names = p.names(m["names"])
	d.Sources = p.sources(m["sources"])
	d.HTTPURLs = p.httpURLs(m["http_urls"])
	if v, ok := m["ipv6_suffix"]; ok {
		d.IPv6Suffix = p.suffix(v)
		if !slices.ContainsFunc(d.Sources, func(s DDNSSource) bool { return s.Kind == DDNSSourceInterface }) {
			p.fail("ddns.ipv6_suffix", fmt.Errorf("only interface sources use it, and ddns.sources lists none"))
		}
	}
	p.provider(d, m)
	return d
}

// checkKeys fails on keys of m that are not allowed, naming the closest
// allowed one.
func (p ddnsParser) checkKeys(path string, m map[string]any, allowed []string) bool {
	var unknown []string
	for k := range m {
		if !slices.Contains(allowed, strings.ToLower(k)) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		hint := ""
		best, bestD := "", 3
		for _, a := range allowed {
			if d := editDistance(strings.ToLower(k), a); d < bestD {
				best, bestD = a, d
			}
		}
		if best != "" {
			hint = fmt.Sprintf("did you mean %q? ", best)
		}
		p.fail(path, fmt.Errorf("unknown key %q (%swant %s)", k, hint, strings.Join(allowed, ", ")))
	}
	return len(unknown) == 0
}

// section reads a provider section: a map with only the allowed keys.
func (p ddnsParser) section(path string, v any, allowed []string) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		p.fail(path, fmt.Errorf("want a section with keys %s", strings.Join(allowed, ", ")))
		return nil, false
	}
	return m, p.checkKeys(path, m, allowed)
}

// str reads a single value as text, trimmed; "" when absent, and when
// it is an example's placeholder, which is refused.
func (p ddnsParser) str(path string, v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		if IsPlaceholder(v) {
			p.fail(path, fmt.Errorf("%q %w: put your own value there", strings.TrimSpace(v), ErrPlaceholder))
			return ""
		}
		return strings.TrimSpace(v)
	case bool, int, int64, uint64, float64:
		return numText(v)
	}
	p.fail(path, fmt.Errorf("want a single value, not a list or section"))
	return ""
}

// required reads a value that must be given.
func (p ddnsParser) required(path string, m map[string]any, key string) string {
	s := p.str(path+"."+key, m[key])
	if v, _ := m[key].(string); s == "" && !IsPlaceholder(v) {
		if _, ok := m[key]; ok {
			p.fail(path+"."+key, fmt.Errorf("empty"))
		} else {
			p.fail(path+"."+key, fmt.Errorf("missing"))
		}
	}
	return s
}

func (p ddnsParser) duration(path string, v any, def, lo, hi time.Duration) time.Duration {
	if v == nil {
		return def
	}
	s := p.str(path, v)
	d, err := ParseDuration(s)
	if err != nil {
		p.fail(path, err)
		return def
	}
	if d < lo || d > hi {
		p.fail(path, fmt.Errorf("%v is out of range: want %v to %v", d, lo, hi))
	}
	return d
}

func (p ddnsParser) bool(path string, v any, def bool) bool {
	switch v := v.(type) {
	case nil:
		return def
	case bool:
		return v
	}
	switch s := strings.ToLower(p.str(path, v)); s {
	case "true", "yes", "on", "1":
		return true
	case "false", "no", "off", "0":
		return false
	default:
		p.fail(path, fmt.Errorf("%q: want true or false", s))
	}
	return def
}

// strList reads a list of strings, or one string.
func (p ddnsParser) strList(path string, v any) ([]any, bool) {
	switch v := v.(type) {
	case []any:
		return v, true
	case []string:
		out := make([]any, len(v))
		for i, s := range v {
			out[i] = s
		}
		return out, true
	case string:
		return []any{v}, true
	}
	p.fail(path, fmt.Errorf("want a list"))
	return nil, false
}

// names reads ddns.names: strings (both record types) or sections with
// name, ipv4, ipv6 and ttl.
func (p ddnsParser) names(v any) []DDNSName {
	const path = "ddns.names"
	if v == nil {
		p.fail(path, fmt.Errorf("missing: list the names to keep up to date, e.g. [home.example.com]"))
		return nil
	}
	items, ok := p.strList(path, v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.fail(path, fmt.Errorf("empty: list the names to keep up to date"))
	}
	if len(items) > ddnsMaxNames {
		p.fail(path, fmt.Errorf("%d names: at most %d", len(items), ddnsMaxNames))
	}
	var out []DDNSName
	seen := map[string]bool{}
	for i, item := range items {
		where := fmt.Sprintf("%s item %d", path, i+1)
		n := DDNSName{IPv4: true, IPv6: true}
		if m, ok := item.(map[string]any); ok {
			if !p.checkKeys(where, m, []string{"name", "ipv4", "ipv6", "ttl"}) {
				continue
			}
			n.Name = p.str(where+".name", m["name"])
			n.IPv4 = p.bool(where+".ipv4", m["ipv4"], true)
			n.IPv6 = p.bool(where+".ipv6", m["ipv6"], true)
			n.TTL = p.duration(where+".ttl", m["ttl"], 0, 0, 24*time.Hour)
		} else {
			n.Name = p.str(where, item)
		}
		n.Name = strings.ToLower(strings.TrimSuffix(n.Name, "."))
		if err := checkDNSName(n.Name); err != nil {
			p.fail(where, err)
			continue
		}
		if !n.IPv4 && !n.IPv6 {
			p.fail(where, fmt.Errorf("%s: ipv4 and ipv6 are both false; enable at least one", n.Name))
		}
		if seen[n.Name] {
			p.fail(where, fmt.Errorf("%s is listed twice", n.Name))
		}
		seen[n.Name] = true
		out = append(out, n)
	}
	return out
}

// checkDNSName accepts a host name: labels of letters, digits, '-' and
// '_', a leading "*" label allowed.
func checkDNSName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name")
	case strings.Contains(name, "://"):
		return fmt.Errorf("%q: want a name such as home.example.com, not a URL", name)
	case len(name) > 253:
		return fmt.Errorf("%q: longer than 253 characters", name[:64]+"…")
	case !strings.Contains(name, "."):
		return fmt.Errorf("%q: want a fully qualified name such as home.example.com", name)
	}
	for i, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q: empty or over-long label", name)
		}
		if label == "*" && i == 0 {
			continue
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q: character %q is not allowed in a name", name, c)
			}
		}
	}
	return nil
}

// sources reads ddns.sources.
func (p ddnsParser) sources(v any) []DDNSSource {
	const path = "ddns.sources"
	if v == nil {
		if p.mode == ddnsAgent {
			return []DDNSSource{{Kind: DDNSSourceRelay}}
		}
		return []DDNSSource{{Kind: DDNSSourceHTTP}}
	}
	items, ok := p.strList(path, v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.fail(path, fmt.Errorf("empty: leave it out for the default, or list relay, connected_relays, http, mapping:TUNNEL, interface:NAME or command:COMMAND"))
	}
	if len(items) > ddnsMaxSources {
		p.fail(path, fmt.Errorf("%d sources: at most %d", len(items), ddnsMaxSources))
	}
	var out []DDNSSource
	for i, item := range items {
		where := fmt.Sprintf("%s item %d", path, i+1)
		s, ok := item.(string)
		if !ok {
			p.fail(where, fmt.Errorf("want relay, connected_relays, http, mapping:TUNNEL, interface:NAME or command:COMMAND as a string"))
			continue
		}
		src, err := ParseDDNSSource(s)
		if err != nil {
			p.fail(where, err)
			continue
		}
		if src.Kind == DDNSSourceRelay && p.mode == ddnsRelay {
			p.fail(where, fmt.Errorf("relay: only the agent has this source (the address the relay sees it at); the relay itself can use http, interface:NAME or command:COMMAND"))
			continue
		}
		if src.Kind == DDNSSourceConnectedRelays && p.mode == ddnsRelay {
			p.fail(where, fmt.Errorf("connected_relays: only the agent has this source (the relays it has a session with); the relay itself can use http, interface:NAME or command:COMMAND"))
			continue
		}
		if src.Kind == DDNSSourceMapping {
			if err := p.checkMapping(src.Tunnel); err != nil {
				p.fail(where, fmt.Errorf("%s: %w", src, err))
				continue
			}
		}
		out = append(out, src)
	}
	return out
}

// checkMapping checks that a mapping source's tunnel exists and has a
// port mapping the relay can verify. "agent ddns" runs without the
// tunnels and leaves mapping sources out; the relay keeps no mappings.
func (p ddnsParser) checkMapping(name string) error {
	switch p.mode {
	case ddnsRelay:
		return fmt.Errorf("only the agent keeps port mappings on the home router; the relay itself can use http, interface:NAME or command:COMMAND")
	case ddnsStandalone:
		return nil
	}
	var names []string
	for _, t := range p.tunnels {
		names = append(names, t.Name)
		if t.Name != name {
			continue
		}
		switch {
		case t.PortMapping == nil:
			return fmt.Errorf("tunnel %q has no port_mapping; give it port_mapping: true, or use another source", name)
		case t.Protocol == "udp":
			return fmt.Errorf("tunnel %q is UDP: the relay cannot verify a UDP mapping from outside (it would need the service's help), and this source publishes only verified mappings", name)
		case t.Protocol != "tcp":
			return fmt.Errorf("tunnel %q is a %s tunnel: the relay verifies only TCP mappings, and this source publishes only verified ones", name, t.Protocol)
		}
		return nil
	}
	if len(names) == 0 {
		return fmt.Errorf("no tunnel is named %q", name)
	}
	return fmt.Errorf("no tunnel is named %q (the tunnels are %s)", name, strings.Join(names, ", "))
}

// ParseDDNSSource reads a source as a file writes it: "relay",
// "connected_relays", "http",
// "mapping:TUNNEL", "interface:NAME" or "command:COMMAND". COMMAND is split at white space
// into the program and its arguments; single or double quotes keep white
// space inside an argument. No shell runs it.
func ParseDDNSSource(s string) (DDNSSource, error) {
	s = strings.TrimSpace(s)
	kind, arg, hasArg := strings.Cut(s, ":")
	kind = strings.ToLower(strings.TrimSpace(kind))
	arg = strings.TrimSpace(arg)
	switch kind {
	case DDNSSourceRelay, DDNSSourceHTTP, DDNSSourceConnectedRelays:
		if hasArg {
			return DDNSSource{}, fmt.Errorf("%q: %s takes no argument", s, kind)
		}
		return DDNSSource{Kind: kind}, nil
	case DDNSSourceInterface:
		if arg == "" {
			return DDNSSource{}, fmt.Errorf("%q: want interface:NAME, e.g. interface:eth0", s)
		}
		return DDNSSource{Kind: kind, Interface: arg}, nil
	case DDNSSourceMapping:
		if arg == "" {
			return DDNSSource{}, fmt.Errorf("%q: want mapping:TUNNEL, the name of a tunnel with port_mapping, e.g. mapping:web", s)
		}
		return DDNSSource{Kind: kind, Tunnel: arg}, nil
	case DDNSSourceCommand:
		argv, err := splitCommand(arg)
		if err != nil {
			return DDNSSource{}, fmt.Errorf("%q: %w", s, err)
		}
		if len(argv) == 0 {
			return DDNSSource{}, fmt.Errorf("%q: want command:COMMAND, e.g. command:/usr/local/bin/myip", s)
		}
		return DDNSSource{Kind: kind, Command: argv}, nil
	}
	return DDNSSource{}, fmt.Errorf("%q: want relay, connected_relays, http, mapping:TUNNEL, interface:NAME or command:COMMAND", s)
}

// splitCommand splits a command line at white space; single or double
// quotes group. Backslashes are kept as they are (Windows paths).
func splitCommand(s string) ([]string, error) {
	var (
		out   []string
		cur   strings.Builder
		inArg bool
		quote rune
	)
	for _, c := range s {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, inArg = c, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				out = append(out, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(c)
			inArg = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if inArg {
		out = append(out, cur.String())
	}
	return out, nil
}

// httpURLs reads ddns.http_urls.
func (p ddnsParser) httpURLs(v any) []string {
	const path = "ddns.http_urls"
	if v == nil {
		return slices.Clone(DefaultHTTPURLs)
	}
	items, ok := p.strList(path, v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.fail(path, fmt.Errorf("empty: leave it out for the default services"))
	}
	var out []string
	for i, item := range items {
		s := p.str(fmt.Sprintf("%s item %d", path, i+1), item)
		if err := checkHTTPURL(s); err != nil {
			p.fail(fmt.Sprintf("%s item %d", path, i+1), err)
			continue
		}
		out = append(out, s)
	}
	return out
}

// checkHTTPURL accepts an absolute http or https URL. The message shows
// the scheme and host only: the URL may carry a key.
func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want an http:// or https:// URL")
	}
	return nil
}

func (p ddnsParser) suffix(v any) netip.Addr {
	const path = "ddns.ipv6_suffix"
	s := p.str(path, v)
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		p.fail(path, fmt.Errorf("%q: want an IPv6 suffix such as ::1234:5678:9abc:def0", s))
		return netip.Addr{}
	}
	b := a.As16()
	for _, x := range b[:8] {
		if x != 0 {
			p.fail(path, fmt.Errorf("%s: the first 64 bits must be zero, as in ::1234:5678:9abc:def0", a))
			return netip.Addr{}
		}
	}
	return a
}

// provider reads provider and the chosen provider's section.
func (p ddnsParser) provider(d *DDNS, m map[string]any) {
	d.Provider = strings.ToLower(p.str("ddns.provider", m["provider"]))
	if d.Provider == "" {
		p.fail("ddns.provider", fmt.Errorf("missing: want one of %s", strings.Join(DDNSProviders, ", ")))
		return
	}
	if !slices.Contains(DDNSProviders, d.Provider) {
		p.fail("ddns.provider", fmt.Errorf("%q: want one of %s", d.Provider, strings.Join(DDNSProviders, ", ")))
		return
	}
	for _, other := range DDNSProviders {
		if _, ok := m[other]; ok && other != d.Provider {
			p.fail("ddns."+other, fmt.Errorf("provider is %s: remove this section, or set provider: %s", d.Provider, other))
		}
	}
	path := "ddns." + d.Provider
	raw, ok := m[d.Provider]
	if !ok {
		p.fail(path, fmt.Errorf("missing: provider %s needs a %s section with %s", d.Provider, d.Provider, strings.Join(ddnsProviderKeys[d.Provider], ", ")))
		return
	}
	s, ok := p.section(path, raw, ddnsProviderKeys[d.Provider])
	if !ok {
		return
	}
	opt := func(key string) string { return p.str(path+"."+key, s[key]) }
	req := func(key string) string { return p.required(path, s, key) }
	zone := ""
	switch d.Provider {
	case "cloudflare":
		c := &DDNSCloudflare{APIToken: Secret(req("api_token")), ZoneToken: Secret(opt("zone_token")), Zone: req("zone")}
		d.Cloudflare, zone = c, c.Zone
	case "alidns":
		c := &DDNSAliDNS{AccessKeyID: req("access_key_id"), AccessKeySecret: Secret(req("access_key_secret")),
			RegionID: opt("region_id"), SecurityToken: Secret(opt("security_token")), Zone: req("zone")}
		d.AliDNS, zone = c, c.Zone
	case "route53":
		c := &DDNSRoute53{AccessKeyID: opt("access_key_id"), SecretAccessKey: Secret(opt("secret_access_key")),
			SessionToken: Secret(opt("session_token")), Profile: opt("profile"), Region: opt("region"),
			HostedZoneID: opt("hosted_zone_id"), Zone: req("zone")}
		if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
			p.fail(path+".access_key_id", fmt.Errorf("access_key_id and secret_access_key go together: give both, or neither (and a profile or AWS_* variables)"))
		}
		d.Route53, zone = c, c.Zone
	case "duckdns":
		c := &DDNSDuckDNS{Token: Secret(req("token")), Resolver: opt("resolver")}
		if c.Token != "" && !isUUID(string(c.Token)) {
			p.fail(path+".token", fmt.Errorf("want the 36-character token (a UUID) shown on the Duck DNS account page"))
		}
		if c.Resolver != "" {
			p.hostPort(path+".resolver", c.Resolver)
		}
		for _, n := range d.Names {
			label, ok := strings.CutSuffix(n.Name, ".duckdns.org")
			if !ok || label == "" || strings.Contains(label, ".") {
				p.fail("ddns.names", fmt.Errorf("%s: Duck DNS keeps only names of the form NAME.duckdns.org", n.Name))
			}
		}
		d.DuckDNS = c
	case "dnspod":
		c := &DDNSDNSPod{SecretID: req("secret_id"), SecretKey: Secret(req("secret_key")),
			SessionToken: Secret(opt("session_token")), Region: opt("region"), Zone: req("zone")}
		d.DNSPod, zone = c, c.Zone
	case "rfc2136":
		c := &DDNSRFC2136{Server: req("server"), Zone: req("zone"), KeyName: req("key_name"),
			KeyAlgorithm: strings.ToLower(opt("key_algorithm")), KeySecret: Secret(req("key_secret")),
			DefaultTTL: p.duration(path+".default_ttl", s["default_ttl"], 0, 0, 24*time.Hour),
			Timeout:    p.duration(path+".timeout", s["timeout"], 0, 0, 5*time.Minute)}
		if c.Server != "" {
			p.hostPort(path+".server", c.Server)
		}
		if c.KeySecret != "" {
			if _, err := base64.StdEncoding.DecodeString(string(c.KeySecret)); err != nil {
				p.fail(path+".key_secret", fmt.Errorf("not base64, as in a BIND key statement's secret"))
			}
		}
		switch strings.TrimSuffix(c.KeyAlgorithm, ".") {
		case "", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512":
		default:
			p.fail(path+".key_algorithm", fmt.Errorf("%q: want hmac-sha256 (the default), hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512", c.KeyAlgorithm))
		}
		d.RFC2136, zone = c, c.Zone
	case "dyndns2":
		c := &DDNSDynDNS2{Server: req("server"), Username: req("username"), Password: Secret(req("password")), Nameserver: req("nameserver")}
		if c.Server != "" {
			if err := checkHTTPURL(c.Server); err != nil {
				p.fail(path+".server", fmt.Errorf("%w, e.g. https://dynupdate.no-ip.com", err))
			}
		}
		if c.Nameserver != "" {
			p.hostPort(path+".nameserver", c.Nameserver)
		}
		d.DynDNS2 = c
	case "webhook":
		c := &DDNSWebhook{URL: Secret(req("url")), Method: strings.ToUpper(opt("method")), OKBody: opt("ok_body"), Nameserver: req("nameserver")}
		if b, ok := s["body"].(string); ok {
			c.Body = Secret(b) // as written: white space may matter
		} else if s["body"] != nil {
			p.fail(path+".body", fmt.Errorf("want a string"))
		}
		if c.URL != "" {
			if err := checkHTTPURL(strings.NewReplacer("{", "", "}", "").Replace(string(c.URL))); err != nil {
				p.fail(path+".url", err)
			}
		}
		switch c.Method {
		case "", "GET":
			if c.Body != "" {
				p.fail(path+".body", fmt.Errorf("a GET request sends no body: set method to POST, PUT or PATCH"))
			}
		case "POST", "PUT", "PATCH":
		default:
			p.fail(path+".method", fmt.Errorf("%q: want GET, POST, PUT or PATCH", c.Method))
		}
		if h, ok := s["headers"]; ok {
			c.Headers = p.headers(path+".headers", h)
		}
		if c.Nameserver != "" {
			p.hostPort(path+".nameserver", c.Nameserver)
		}
		d.Webhook = c
	}
	if zone != "" {
		z := strings.ToLower(strings.TrimSuffix(zone, "."))
		if err := checkDNSName(z); err != nil && z != "" {
			p.fail(path+".zone", err)
			return
		}
		for _, n := range d.Names {
			if n.Name != z && !strings.HasSuffix(n.Name, "."+z) {
				p.fail("ddns.names", fmt.Errorf("%s is not in %s.zone %s", n.Name, path, z))
			}
		}
	}
}

// headers reads a section of header names and values.
func (p ddnsParser) headers(path string, v any) map[string]Secret {
	m, ok := v.(map[string]any)
	if !ok {
		p.fail(path, fmt.Errorf("want a section of header names and values, e.g. {Authorization: \"Bearer …\"}"))
		return nil
	}
	out := make(map[string]Secret, len(m))
	for k, v := range m {
		s := p.str(path+"."+k, v)
		if k == "" || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(s, "\r\n") {
			p.fail(path+"."+k, fmt.Errorf("not a valid header"))
			continue
		}
		out[k] = Secret(s)
	}
	return out
}

// hostPort checks a DNS server address: "host" or "host:port".
func (p ddnsParser) hostPort(path, s string) {
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			p.fail(path, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port))
			return
		}
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		p.fail(path, fmt.Errorf("%q: want HOST or HOST:PORT, e.g. ns1.example.com:53", s))
	}
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
