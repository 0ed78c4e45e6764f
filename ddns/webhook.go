package ddns

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Webhook writes records by calling a URL, for providers and home-made
// services without a protocol of their own. Like dyndns2 it can only
// write; Get reads the records from the zone's authoritative server
// (Nameserver, or Lookup).
//
// URL and Body are templates with these placeholders:
//
//	{name}   the record's name, "home.example.com"
//	{type}   "A" or "AAAA"
//	{addr}   the first address, "" if none
//	{addrs}  all addresses separated by commas
//	{ttl}    the TTL in seconds, "" for the provider's default
//
// In URL every value is URL-escaped; in Body it is inserted as is (names,
// types and addresses are checked first and need no escaping in JSON or
// form bodies). Any 2xx answer is success, 401 and 403 are ErrAuth, 429
// and 503 a RetryAfterError.
//
// The URL, the body and the headers often hold a token: errors and logs
// show the URL's scheme and host only.
type Webhook struct {
	URL     string
	Method  string            // "" or GET; POST, PUT or PATCH send Body
	Body    string            // template, for methods other than GET
	Headers map[string]string // for example Authorization or Content-Type
	// OKBody, if set, must appear in a 2xx answer's body for it to count
	// as success (DuckDNS answers 200 "KO" to a failed update).
	OKBody     string
	Client     *http.Client // nil: a client with a 30 s timeout
	UserAgent  string       // "": DefaultUserAgent
	Nameserver string       // the zone's authoritative server, for Get
	Lookup     LookupFunc   // if set, replaces Nameserver
}

var _ Provider = (*Webhook)(nil)

// Get reads the records through Lookup or Nameserver.
func (w *Webhook) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	addrs, err := readBack(ctx, w.Lookup, w.Nameserver, name, typ)
	if err != nil {
		return nil, fmt.Errorf("webhook: get %s %s: %w", name, typ, err)
	}
	return addrs, nil
}

// Set calls the webhook once for want.
func (w *Webhook) Set(ctx context.Context, want RecordSet) error {
	where := fmt.Sprintf("webhook %s: set %s %s", hostOnly(w.URL), want.Name, want.Type)
	if err := checkRecordSet(want); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	req, err := w.request(ctx, want)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	client := w.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", where, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", where, err)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fmt.Errorf("%s: HTTP status %s: %w", where, resp.Status, ErrAuth)
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		return &RetryAfterError{
			After: retryAfter(resp.Header, time.Now(), defaultRetryAfter),
			Err:   fmt.Errorf("%s: HTTP status %s", where, resp.Status),
		}
	case code/100 != 2:
		return fmt.Errorf("%s: HTTP status %s", where, resp.Status)
	case w.OKBody != "" && !strings.Contains(string(body), w.OKBody):
		// The body is not shown: it may echo the token.
		return fmt.Errorf("%s: the answer does not contain the expected %q", where, w.OKBody)
	}
	return nil
}

// request builds the HTTP request for want.
func (w *Webhook) request(ctx context.Context, want RecordSet) (*http.Request, error) {
	method := strings.ToUpper(w.Method)
	switch method {
	case "":
		method = http.MethodGet
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch:
	default:
		return nil, fmt.Errorf("method %q: want GET, POST, PUT or PATCH", w.Method)
	}
	vals := webhookValues(want)
	esc := make([]string, 0, len(vals))
	raw := make([]string, 0, len(vals))
	for i := 0; i < len(vals); i += 2 {
		esc = append(esc, vals[i], url.QueryEscape(vals[i+1]))
		raw = append(raw, vals[i], vals[i+1])
	}
	u, err := url.Parse(strings.NewReplacer(esc...).Replace(w.URL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("URL %s: want an http or https URL", hostOnly(w.URL))
	}
	var body io.Reader
	if method != http.MethodGet && w.Body != "" {
		body = strings.NewReader(strings.NewReplacer(raw...).Replace(w.Body))
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("building the request: %w", unwrapURLError(err))
	}
	for k, v := range w.Headers {
		req.Header.Set(k, v)
	}
	if req.Header.Get("User-Agent") == "" {
		ua := w.UserAgent
		if ua == "" {
			ua = DefaultUserAgent
		}
		req.Header.Set("User-Agent", ua)
	}
	return req, nil
}

// webhookValues lists placeholder, value pairs for want.
func webhookValues(want RecordSet) []string {
	addr := ""
	if len(want.Addrs) > 0 {
		addr = want.Addrs[0].String()
	}
	addrs := make([]string, len(want.Addrs))
	for i, a := range want.Addrs {
		addrs[i] = a.String()
	}
	ttl := ""
	if want.TTL > 0 {
		ttl = strconv.FormatInt(int64(want.TTL/time.Second), 10)
	}
	return []string{
		"{name}", want.Name,
		"{type}", want.Type,
		"{addr}", addr,
		"{addrs}", strings.Join(addrs, ","),
		"{ttl}", ttl,
	}
}
