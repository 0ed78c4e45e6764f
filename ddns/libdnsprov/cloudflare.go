package libdnsprov

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/homeport/homeport/ddns"
	"github.com/libdns/cloudflare"
)

// CloudflareConfig configures a Cloudflare provider.
type CloudflareConfig struct {
	// APIToken is a scoped API token with Zone.DNS:Edit (and Zone:Read,
	// unless ZoneToken has it) for Zone.
	APIToken string
	// ZoneToken optionally is a separate token with Zone:Read used to look
	// the zone up.
	ZoneToken string
	// Zone the names are in: "example.com.".
	Zone string
	// HTTPClient talks to the API; nil: a client with a 30 s timeout.
	HTTPClient *http.Client
}

// Cloudflare error codes that mean the credentials were refused.
var cloudflareAuthCodes = map[int]bool{
	1000:  true, // invalid API token
	6003:  true, // invalid request headers (malformed credentials)
	6103:  true, // invalid format for X-Auth-Key
	6111:  true, // invalid format for Authorization header
	9103:  true, // unknown X-Auth-Key or X-Auth-Email
	9106:  true, // missing X-Auth-Key, X-Auth-Email or Authorization headers
	9109:  true, // invalid access token
	10000: true, // authentication error
	10001: true, // unable to authenticate request
}

// NewCloudflare returns a provider for Cloudflare's v4 API through
// github.com/libdns/cloudflare.
//
// That package (v0.2.2) neither reads nor writes the "proxied" flag of a
// record: it updates an existing record with PATCH, which leaves the flag
// as it is, but it creates records unproxied, and it refuses SetRecords
// for a name with more than one record of a type. So this provider
// updates a single record in place, and for other changes adds and
// deletes records; its HTTP client remembers the proxied flag of the
// name's records from the listings the package fetches and puts it into
// the records the package creates for that name and type. A name that
// had no record of the type gets Cloudflare's default (not proxied).
//
// The HTTP client also turns refused credentials (HTTP 401/403, the
// authentication error codes) into ddns.ErrAuth, HTTP 429 and 503 into
// *ddns.RetryAfterError, and an unknown zone into ddns.ErrNoHost, before
// the package sees the response.
func NewCloudflare(cfg CloudflareConfig) (*Adapter, error) {
	if strings.TrimSpace(cfg.APIToken) == "" {
		return nil, errors.New("cloudflare: missing API token")
	}
	if strings.TrimSpace(cfg.Zone) == "" {
		return nil, errors.New("cloudflare: missing zone")
	}
	zone, err := normalizeZone(cfg.Zone)
	if err != nil {
		return nil, fmt.Errorf("cloudflare: %w", err)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	cc := &cloudflareClient{
		c:       hc,
		zone:    strings.TrimSuffix(zone, "."),
		proxied: make(map[string]bool),
	}
	p := &cloudflare.Provider{
		APIToken:   cfg.APIToken,
		ZoneToken:  cfg.ZoneToken,
		HTTPClient: cc,
	}
	return Wrap(p, Options{
		Provider: "cloudflare",
		Zone:     zone,
		// Cloudflare's zone names have no trailing dot; the zone lookup
		// matches the name exactly.
		ZoneArg:  strings.TrimSuffix(zone, "."),
		Strategy: UpdateInPlace,
		Secrets:  []string{cfg.APIToken, cfg.ZoneToken},
	})
}

// cloudflareClient sits between github.com/libdns/cloudflare and the API:
// it classifies error responses and carries the proxied flag (see
// NewCloudflare).
type cloudflareClient struct {
	c    *http.Client
	zone string // without the trailing dot

	mu      sync.Mutex
	proxied map[string]bool // "name|type" -> proxied, for A and AAAA
}

// maxCloudflareBody bounds what is read of one API response.
const maxCloudflareBody = 16 << 20

type cfEnvelope struct {
	Success bool            `json:"success"`
	Errors  []cfMessage     `json:"errors"`
	Result  json.RawMessage `json:"result"`
}

type cfMessage struct {
	Code       int         `json:"code"`
	Message    string      `json:"message"`
	ErrorChain []cfMessage `json:"error_chain"`
}

type cfRecordLite struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Proxied *bool  `json:"proxied"`
}

func (c *cloudflareClient) key(name, typ string) string {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	switch {
	case n == "" || n == "@":
		n = c.zone
	case n != c.zone && !strings.HasSuffix(n, "."+c.zone):
		n += "." + c.zone
	}
	return n + "|" + strings.ToUpper(typ)
}

func (c *cloudflareClient) Do(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/dns_records") {
		if err := c.addProxied(req); err != nil {
			return nil, err
		}
	}
	resp, err := c.c.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCloudflareBody))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("cloudflare: reading response: %w", err)
	}
	var env cfEnvelope
	jsonErr := json.Unmarshal(body, &env)

	if err := c.classify(req, resp, &env, jsonErr == nil); err != nil {
		return nil, err
	}
	if jsonErr == nil && env.Success && resp.StatusCode < 300 {
		c.observe(req, &env)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// classify returns an error for responses that mean refused credentials,
// a rate limit or an unknown zone.
func (c *cloudflareClient) classify(req *http.Request, resp *http.Response, env *cfEnvelope, parsed bool) error {
	desc := fmt.Sprintf("HTTP %d", resp.StatusCode)
	if parsed {
		for _, m := range env.Errors {
			desc += fmt.Sprintf("; %d %s", m.Code, m.Message)
			for _, ch := range m.ErrorChain {
				desc += fmt.Sprintf(" (%d %s)", ch.Code, ch.Message)
			}
		}
	}
	auth := resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden
	if parsed {
		for _, m := range env.Errors {
			if cloudflareAuthCodes[m.Code] {
				auth = true
			}
			for _, ch := range m.ErrorChain {
				if cloudflareAuthCodes[ch.Code] {
					auth = true
				}
			}
		}
	}
	switch {
	case auth:
		return fmt.Errorf("cloudflare: %s %s: %s: %w", req.Method, req.URL.Path, desc, ddns.ErrAuth)
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		after, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		if !ok {
			after = time.Minute
		}
		return &ddns.RetryAfterError{
			After: after,
			Err:   fmt.Errorf("cloudflare: %s %s: %s, retry after %v", req.Method, req.URL.Path, desc, after),
		}
	}
	// The zone lookup: an empty result means the zone is not in the
	// account, or the token may not see it.
	if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/zones") && req.URL.Query().Get("name") != "" &&
		parsed && env.Success && resp.StatusCode == http.StatusOK {
		var zones []json.RawMessage
		if json.Unmarshal(env.Result, &zones) == nil && len(zones) == 0 {
			return fmt.Errorf("cloudflare: zone %s not found (or the token cannot read it): %w", req.URL.Query().Get("name"), ddns.ErrNoHost)
		}
	}
	return nil
}

// observe remembers the proxied flag of the address records in a
// successful response.
func (c *cloudflareClient) observe(req *http.Request, env *cfEnvelope) {
	if !strings.Contains(req.URL.Path, "/dns_records") || req.Method == http.MethodDelete {
		return
	}
	var recs []cfRecordLite
	if len(env.Result) > 0 && env.Result[0] == '[' {
		if json.Unmarshal(env.Result, &recs) != nil {
			return
		}
	} else {
		var one cfRecordLite
		if json.Unmarshal(env.Result, &one) != nil {
			return
		}
		recs = []cfRecordLite{one}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		if (r.Type == "A" || r.Type == "AAAA") && r.Proxied != nil {
			c.proxied[c.key(r.Name, r.Type)] = *r.Proxied
		}
	}
}

// addProxied sets "proxied" in a record creation for a name and type
// whose records were proxied, unless the body already says.
func (c *cloudflareClient) addProxied(req *http.Request) error {
	if req.Body == nil {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxCloudflareBody))
	req.Body.Close()
	if err != nil {
		return err
	}
	setBody := func(b []byte) {
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.ContentLength = int64(len(b))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		setBody(body)
		return nil
	}
	var name, typ string
	_ = json.Unmarshal(fields["name"], &name)
	_ = json.Unmarshal(fields["type"], &typ)
	_, has := fields["proxied"]
	if has || (typ != "A" && typ != "AAAA") {
		setBody(body)
		return nil
	}
	c.mu.Lock()
	proxied := c.proxied[c.key(name, typ)]
	c.mu.Unlock()
	if !proxied {
		setBody(body)
		return nil
	}
	fields["proxied"] = json.RawMessage("true")
	nb, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	setBody(nb)
	return nil
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0, false
		}
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}
