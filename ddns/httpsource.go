package ddns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// DefaultUserAgent is sent when no UserAgent is configured; UserAgent
// builds the full one with a version.
const DefaultUserAgent = "homeport-ddns"

// UserAgent returns "homeport-ddns/<version>".
func UserAgent(version string) string { return DefaultUserAgent + "/" + version }

// HTTPSource asks "what is my IP" services: it tries URLs in turn and the
// first good answer wins. An answer is one address as plain text, or a
// JSON object {"ip": "…"}.
//
// It asks at most once per MinInterval whatever its callers do, and
// returns the remembered answer (or error) in between: these services are
// run for free and must not be asked every few seconds. Use it through a
// pointer; it must not be copied after first use.
type HTTPSource struct {
	URLs []string
	// Family is 4 or 6 to ask over that family only and accept only its
	// addresses, 0 for whichever the connection uses. It chooses how the
	// default client dials; with a custom Client only the answer is
	// checked.
	Family int
	// Client is the HTTP client; nil uses one that dials Family, ignores
	// proxies (a proxy would report its own address) and keeps no idle
	// connections.
	Client      *http.Client
	UserAgent   string        // "": DefaultUserAgent
	MinInterval time.Duration // 0: DefaultHTTPMinInterval
	Timeout     time.Duration // per URL; 0: DefaultHTTPTimeout

	mu     sync.Mutex
	client *http.Client
	asked  time.Time // zero: never
	addrs  []netip.Addr
	err    error
	now    func() time.Time // tests
}

const (
	// DefaultHTTPMinInterval is the least time between two rounds of
	// questions of an HTTPSource.
	DefaultHTTPMinInterval = 5 * time.Minute
	// DefaultHTTPTimeout bounds one request of an HTTPSource.
	DefaultHTTPTimeout = 10 * time.Second
	// maxIPBody bounds an answer: an address, maybe in a small JSON
	// object, with some white space.
	maxIPBody = 256
)

func (s *HTTPSource) Name() string {
	if len(s.URLs) == 0 {
		return "http"
	}
	return "http " + redactURL(s.URLs[0])
}

// Addrs returns the address the first answering URL reports, or the
// remembered result if the last round was less than MinInterval ago.
func (s *HTTPSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	minInterval := s.MinInterval
	if minInterval <= 0 {
		minInterval = DefaultHTTPMinInterval
	}
	if !s.asked.IsZero() && now().Sub(s.asked) < minInterval {
		return append([]netip.Addr(nil), s.addrs...), s.err
	}
	addrs, err := s.ask(ctx)
	if ctx.Err() != nil && err != nil {
		// Cancelled by the caller: no answer to remember.
		return nil, err
	}
	s.asked, s.addrs, s.err = now(), addrs, err
	return append([]netip.Addr(nil), addrs...), err
}

// ask tries every URL in turn.
func (s *HTTPSource) ask(ctx context.Context) ([]netip.Addr, error) {
	if len(s.URLs) == 0 {
		return nil, errors.New("source http: no URL")
	}
	if s.Family != 0 && s.Family != 4 && s.Family != 6 {
		return nil, fmt.Errorf("source http: family %d: want 4, 6 or 0", s.Family)
	}
	var errs []error
	for _, u := range s.URLs {
		a, err := s.askOne(ctx, u)
		if err == nil {
			return []netip.Addr{a}, nil
		}
		errs = append(errs, fmt.Errorf("source http %s: %w", redactURL(u), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (s *HTTPSource) askOne(ctx context.Context, u string) (netip.Addr, error) {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultHTTPTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return netip.Addr{}, errors.New("invalid URL")
	}
	ua := s.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	req.Header.Set("User-Agent", ua)
	req.Header.Set("Accept", "text/plain, application/json;q=0.9")
	resp, err := s.httpClient().Do(req)
	if err != nil {
		return netip.Addr{}, unwrapURLError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIPBody+1))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return netip.Addr{}, fmt.Errorf("HTTP status %s", resp.Status)
	}
	if len(body) > maxIPBody {
		return netip.Addr{}, fmt.Errorf("answer longer than %d bytes", maxIPBody)
	}
	a, err := parseIPBody(body)
	if err != nil {
		return netip.Addr{}, err
	}
	switch {
	case s.Family == 4 && !a.Is4():
		return netip.Addr{}, fmt.Errorf("answered %s, want an IPv4 address", a)
	case s.Family == 6 && !a.Is6():
		return netip.Addr{}, fmt.Errorf("answered %s, want an IPv6 address", a)
	}
	return a, nil
}

func (s *HTTPSource) httpClient() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	if s.client == nil {
		network := "tcp"
		switch s.Family {
		case 4:
			network = "tcp4"
		case 6:
			network = "tcp6"
		}
		d := &net.Dialer{Timeout: DefaultHTTPTimeout}
		s.client = &http.Client{Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSHandshakeTimeout: DefaultHTTPTimeout,
			DisableKeepAlives:   true,
			ForceAttemptHTTP2:   true,
		}}
	}
	return s.client
}

// parseIPBody reads a "what is my IP" answer: an address as plain text or
// a JSON object with an "ip" member, white space around either.
func parseIPBody(body []byte) (netip.Addr, error) {
	text := strings.TrimSpace(string(body))
	if strings.HasPrefix(text, "{") {
		var v struct {
			IP string `json:"ip"`
		}
		if err := json.Unmarshal([]byte(text), &v); err != nil {
			return netip.Addr{}, fmt.Errorf("answer is not a JSON object with an \"ip\" member: %w", err)
		}
		text = strings.TrimSpace(v.IP)
	}
	a, err := netip.ParseAddr(text)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("answer %q is not an IP address", truncate(text, 64))
	}
	return a.Unmap(), nil
}
