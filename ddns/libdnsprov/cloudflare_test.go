package libdnsprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/ddns"
)

// cfFake is a fake of the Cloudflare v4 API endpoints that
// github.com/libdns/cloudflare calls, following Cloudflare's API
// documentation: the response envelope {success, errors, messages,
// result, result_info}, Bearer token authentication, zone lookup by name,
// DNS record list (filters type, name, content, paging), create, PATCH
// and delete.
type cfFake struct {
	mu       sync.Mutex
	tokens   map[string]bool // token -> may write
	zones    map[string]string
	recs     []*cfFakeRecord
	nextID   int
	limit    int    // answer this many requests with 429
	retry    string // their Retry-After
	requests []string
	bodies   []string // bodies of POST and PATCH requests
}

type cfFakeRecord struct {
	ID         string `json:"id"`
	ZoneID     string `json:"zone_id"`
	ZoneName   string `json:"zone_name"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	Content    string `json:"content"`
	Proxiable  bool   `json:"proxiable"`
	Proxied    bool   `json:"proxied"`
	TTL        int    `json:"ttl"`
	Comment    string `json:"comment"`
	CreatedOn  string `json:"created_on"`
	ModifiedOn string `json:"modified_on"`
}

type cfErr struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

const (
	cfZoneID   = "023e105f4ecef8ad9ca31a8372d0c353"
	cfToken    = "good-token-0123456789abcdef"
	cfReadOnly = "read-only-token-0123456789"
)

func newCFFake() *cfFake {
	f := &cfFake{
		tokens: map[string]bool{cfToken: true, cfReadOnly: false},
		zones:  map[string]string{cfZoneID: "example.com", "0a0b0c0d0e0f00000000000000000001": "example.org"},
	}
	f.add("example.com", "NS", "ns1.cloudflare.com", false, 86400)
	f.add("example.com", "TXT", `"v=spf1 -all"`, false, 3600)
	f.add("example.com", "MX", "mail.example.com", false, 3600)
	f.add("neighbour.example.com", "A", "198.51.100.7", true, 1)
	f.add("neighbour.example.com", "AAAA", "2001:db8::7", false, 300)
	f.add("home.example.com", "TXT", `"keep me"`, false, 300)
	f.add("sub.home.example.com", "A", "198.51.100.8", false, 300)
	return f
}

func (f *cfFake) add(name, typ, content string, proxied bool, ttl int) *cfFakeRecord {
	f.nextID++
	r := &cfFakeRecord{
		ID: fmt.Sprintf("%032x", f.nextID), ZoneID: cfZoneID, ZoneName: "example.com",
		Name: name, Type: typ, Content: content, Proxiable: typ == "A" || typ == "AAAA" || typ == "CNAME",
		Proxied: proxied, TTL: ttl, CreatedOn: "2024-01-01T00:00:00Z", ModifiedOn: "2024-01-01T00:00:00Z",
	}
	f.recs = append(f.recs, r)
	return r
}

// snapshot returns the records other than skip as text.
func (f *cfFake) snapshot(skip func(*cfFakeRecord) bool) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.recs {
		if skip != nil && skip(r) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %s %s proxied=%v ttl=%d", r.ID, r.Name, r.Type, r.Content, r.Proxied, r.TTL))
	}
	slices.Sort(out)
	return out
}

func (f *cfFake) find(name, typ string) []cfFakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cfFakeRecord
	for _, r := range f.recs {
		if r.Name == name && r.Type == typ {
			out = append(out, *r)
		}
	}
	slices.SortFunc(out, func(a, b cfFakeRecord) int { return strings.Compare(a.Content, b.Content) })
	return out
}

func (f *cfFake) takeRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.requests
	f.requests = nil
	return r
}

func writeCF(w http.ResponseWriter, status int, result any, info any, errs ...cfErr) {
	if errs == nil {
		errs = []cfErr{}
	}
	env := map[string]any{
		"success":  len(errs) == 0,
		"errors":   errs,
		"messages": []any{},
		"result":   result,
	}
	if info != nil {
		env["result_info"] = info
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(env)
}

func (f *cfFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)

	if f.limit > 0 {
		f.limit--
		w.Header().Set("Retry-After", f.retry)
		writeCF(w, http.StatusTooManyRequests, nil, nil, cfErr{971, "Please wait and consider throttling your request speed"})
		return
	}
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		writeCF(w, http.StatusBadRequest, nil, nil, cfErr{9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers"})
		return
	}
	mayWrite, known := f.tokens[tok]
	if !known {
		writeCF(w, http.StatusForbidden, nil, nil, cfErr{9109, "Invalid access token"})
		return
	}
	if r.Method != http.MethodGet && !mayWrite {
		writeCF(w, http.StatusForbidden, nil, nil, cfErr{10000, "Authentication error"})
		return
	}

	path, ok := strings.CutPrefix(r.URL.Path, "/client/v4/")
	if !ok {
		writeCF(w, http.StatusNotFound, nil, nil, cfErr{7000, "No route for that URI"})
		return
	}
	parts := strings.Split(path, "/")
	switch {
	case len(parts) == 1 && parts[0] == "zones" && r.Method == http.MethodGet:
		f.listZones(w, r)
	case len(parts) >= 3 && parts[0] == "zones" && parts[2] == "dns_records":
		zoneName, ok := f.zones[parts[1]]
		if !ok {
			writeCF(w, http.StatusNotFound, nil, nil, cfErr{7003, "Could not route to /zones/" + parts[1] + ", perhaps your object identifier is invalid?"})
			return
		}
		switch {
		case len(parts) == 3 && r.Method == http.MethodGet:
			f.listRecords(w, r, parts[1])
		case len(parts) == 3 && r.Method == http.MethodPost:
			f.createRecord(w, r, parts[1], zoneName)
		case len(parts) == 4 && r.Method == http.MethodPatch:
			f.patchRecord(w, r, parts[1], zoneName, parts[3])
		case len(parts) == 4 && r.Method == http.MethodDelete:
			f.deleteRecord(w, parts[1], parts[3])
		default:
			writeCF(w, http.StatusMethodNotAllowed, nil, nil, cfErr{10405, "Method not allowed"})
		}
	default:
		writeCF(w, http.StatusNotFound, nil, nil, cfErr{7000, "No route for that URI"})
	}
}

func (f *cfFake) listZones(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	zones := []map[string]any{}
	for id, zn := range f.zones {
		if name == "" || name == zn {
			zones = append(zones, map[string]any{"id": id, "name": zn, "status": "active", "paused": false, "type": "full",
				"name_servers": []string{"ns1.cloudflare.com", "ns2.cloudflare.com"}})
		}
	}
	writeCF(w, http.StatusOK, zones, map[string]int{"page": 1, "per_page": 20, "count": len(zones), "total_count": len(zones), "total_pages": 1})
}

func (f *cfFake) listRecords(w http.ResponseWriter, r *http.Request, zoneID string) {
	q := r.URL.Query()
	match := func(v string, keys ...string) bool {
		for _, k := range keys {
			if want := q.Get(k); want != "" && want != v {
				return false
			}
		}
		return true
	}
	var all []*cfFakeRecord
	for _, rec := range f.recs {
		if rec.ZoneID == zoneID && match(rec.Type, "type") && match(rec.Name, "name", "name.exact") &&
			match(rec.Content, "content", "content.exact") {
			all = append(all, rec)
		}
	}
	page, perPage := 1, 100
	if v, err := strconv.Atoi(q.Get("page")); err == nil && v > 0 {
		page = v
	}
	if v, err := strconv.Atoi(q.Get("per_page")); err == nil && v > 0 {
		perPage = min(v, 5000000)
	}
	start := min((page-1)*perPage, len(all))
	end := min(start+perPage, len(all))
	result := all[start:end]
	if result == nil {
		result = []*cfFakeRecord{}
	}
	writeCF(w, http.StatusOK, result, map[string]int{"page": page, "per_page": perPage, "count": len(result),
		"total_count": len(all), "total_pages": (len(all) + perPage - 1) / perPage})
}

// apply checks and applies the fields of a create or PATCH body.
func (f *cfFake) apply(rec *cfFakeRecord, body map[string]json.RawMessage, zoneName string) *cfErr {
	str := func(k string) (string, bool) {
		v, ok := body[k]
		if !ok {
			return "", false
		}
		var s string
		_ = json.Unmarshal(v, &s)
		return s, true
	}
	if v, ok := str("type"); ok {
		rec.Type = v
	}
	if v, ok := str("name"); ok {
		// The API takes the name relative to the zone or fully qualified.
		v = strings.ToLower(strings.TrimSuffix(v, "."))
		switch {
		case v == "@" || v == "":
			v = zoneName
		case v != zoneName && !strings.HasSuffix(v, "."+zoneName):
			v += "." + zoneName
		}
		rec.Name = v
	}
	if v, ok := str("content"); ok {
		rec.Content = v
	}
	if v, ok := body["ttl"]; ok {
		if err := json.Unmarshal(v, &rec.TTL); err != nil {
			return &cfErr{9020, "Invalid TTL"}
		}
	}
	if v, ok := body["proxied"]; ok {
		if err := json.Unmarshal(v, &rec.Proxied); err != nil {
			return &cfErr{9003, "Invalid 'proxied' value, must be a boolean"}
		}
	}
	switch rec.Type {
	case "A", "AAAA":
		ip, err := netip.ParseAddr(rec.Content)
		if err != nil || ip.Is4() != (rec.Type == "A") || ip.Is4In6() {
			return &cfErr{9005, "Content for " + rec.Type + " record is invalid. Must be a valid IP address."}
		}
	case "":
		return &cfErr{9004, "DNS record type is invalid"}
	}
	rec.Proxiable = rec.Type == "A" || rec.Type == "AAAA" || rec.Type == "CNAME"
	if rec.Proxied && !rec.Proxiable {
		return &cfErr{9004, "This record type cannot be proxied."}
	}
	if rec.TTL == 0 || rec.Proxied {
		rec.TTL = 1 // automatic
	}
	if rec.TTL != 1 && (rec.TTL < 60 || rec.TTL > 86400) {
		return &cfErr{9021, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic."}
	}
	for _, o := range f.recs {
		if o.ID != rec.ID && o.ZoneID == rec.ZoneID && o.Name == rec.Name && o.Type == rec.Type && o.Content == rec.Content {
			return &cfErr{81058, "An identical record already exists."}
		}
	}
	return nil
}

func (f *cfFake) readBody(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, bool) {
	var body map[string]json.RawMessage
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(raw, &body)
	}
	if err != nil {
		writeCF(w, http.StatusBadRequest, nil, nil, cfErr{9207, "Request body is invalid."})
		return nil, false
	}
	f.bodies = append(f.bodies, r.Method+" "+string(raw))
	return body, true
}

func (f *cfFake) createRecord(w http.ResponseWriter, r *http.Request, zoneID, zoneName string) {
	body, ok := f.readBody(w, r)
	if !ok {
		return
	}
	f.nextID++
	rec := &cfFakeRecord{ID: fmt.Sprintf("%032x", f.nextID), ZoneID: zoneID, ZoneName: zoneName,
		CreatedOn: "2024-02-02T00:00:00Z", ModifiedOn: "2024-02-02T00:00:00Z"}
	if e := f.apply(rec, body, zoneName); e != nil {
		writeCF(w, http.StatusBadRequest, nil, nil, *e)
		return
	}
	f.recs = append(f.recs, rec)
	writeCF(w, http.StatusOK, rec, nil)
}

func (f *cfFake) patchRecord(w http.ResponseWriter, r *http.Request, zoneID, zoneName, id string) {
	body, ok := f.readBody(w, r)
	if !ok {
		return
	}
	i := slices.IndexFunc(f.recs, func(r *cfFakeRecord) bool { return r.ID == id && r.ZoneID == zoneID })
	if i < 0 {
		writeCF(w, http.StatusNotFound, nil, nil, cfErr{81044, "Record does not exist."})
		return
	}
	rec := *f.recs[i]
	if e := f.apply(&rec, body, zoneName); e != nil {
		writeCF(w, http.StatusBadRequest, nil, nil, *e)
		return
	}
	rec.ModifiedOn = "2024-03-03T00:00:00Z"
	*f.recs[i] = rec
	writeCF(w, http.StatusOK, rec, nil)
}

func (f *cfFake) deleteRecord(w http.ResponseWriter, zoneID, id string) {
	i := slices.IndexFunc(f.recs, func(r *cfFakeRecord) bool { return r.ID == id && r.ZoneID == zoneID })
	if i < 0 {
		writeCF(w, http.StatusNotFound, nil, nil, cfErr{81044, "Record does not exist."})
		return
	}
	f.recs = slices.Delete(f.recs, i, i+1)
	writeCF(w, http.StatusOK, map[string]string{"id": id}, nil)
}

// cfRewrite sends the requests meant for api.cloudflare.com to the fake
// and refuses any other host.
type cfRewrite struct {
	target *url.URL
	base   http.RoundTripper
}

func (c cfRewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != "api.cloudflare.com" || req.URL.Scheme != "https" {
		return nil, fmt.Errorf("unexpected request to %s", req.URL)
	}
	r := req.Clone(req.Context())
	r.URL.Scheme = c.target.Scheme
	r.URL.Host = c.target.Host
	r.Host = c.target.Host
	return c.base.RoundTrip(r)
}

func startCFFake(t *testing.T) (*cfFake, *http.Client) {
	t.Helper()
	f := newCFFake()
	srv := httptest.NewServer(f)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return f, &http.Client{Transport: cfRewrite{target: u, base: tr}, Timeout: 10 * time.Second}
}

func newCF(t *testing.T, hc *http.Client, token string) *Adapter {
	t.Helper()
	p, err := NewCloudflare(CloudflareConfig{APIToken: token, Zone: "example.com.", HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func isCFHome(r *cfFakeRecord) bool {
	return r.Name == "home.example.com" && (r.Type == "A" || r.Type == "AAAA")
}

func TestCloudflareSetGet(t *testing.T) {
	f, hc := startCFFake(t)
	p := newCF(t, hc, cfToken)
	others := f.snapshot(isCFHome)

	mustGet(t, p, "home.example.com", "A")
	mustSet(t, p, "home.example.com", "A", 5*time.Minute, "192.0.2.2", "192.0.2.1")
	mustSet(t, p, "home.example.com", "AAAA", 0, "2001:db8::1")
	mustGet(t, p, "home.example.com", "A", "192.0.2.1", "192.0.2.2")
	mustGet(t, p, "Home.Example.com.", "AAAA", "2001:db8::1")
	for _, r := range f.find("home.example.com", "A") {
		if r.TTL != 300 || r.Proxied {
			t.Errorf("A record %+v: want TTL 300, not proxied", r)
		}
	}
	if r := f.find("home.example.com", "AAAA"); len(r) != 1 || r[0].TTL != 1 {
		t.Errorf("AAAA without TTL: %+v, want automatic TTL", r)
	}

	mustSet(t, p, "home.example.com", "A", 5*time.Minute, "192.0.2.3")
	mustGet(t, p, "home.example.com", "A", "192.0.2.3")
	mustGet(t, p, "home.example.com", "AAAA", "2001:db8::1")
	mustSet(t, p, "home.example.com", "AAAA", 2*time.Minute, "2001:db8::2")
	mustGet(t, p, "home.example.com", "AAAA", "2001:db8::2")
	if r := f.find("home.example.com", "AAAA"); len(r) != 1 || r[0].TTL != 120 {
		t.Errorf("AAAA after a change: %+v", r)
	}
	if got := f.snapshot(isCFHome); !slices.Equal(got, others) {
		t.Fatalf("other records changed:\nbefore %q\nafter  %q", others, got)
	}

	mustSet(t, p, "home.example.com", "AAAA", 0)
	mustGet(t, p, "home.example.com", "AAAA")
	mustGet(t, p, "home.example.com", "A", "192.0.2.3")
	mustSet(t, p, "home.example.com", "A", 0)
	mustGet(t, p, "home.example.com", "A")
	if got := f.snapshot(nil); !slices.Equal(got, others) {
		t.Fatalf("zone after:\n%q\nwant\n%q", got, others)
	}

	// The apex and a deeper name are not confused with the name.
	mustGet(t, p, "example.com", "A")
	mustGet(t, p, "sub.home.example.com", "A", "198.51.100.8")
	mustGet(t, p, "neighbour.example.com", "AAAA", "2001:db8::7")

	// No request went anywhere but the fake's API path.
	for _, r := range f.takeRequests() {
		if !strings.Contains(r, " /client/v4/zones") {
			t.Errorf("unexpected request %q", r)
		}
	}
}

func TestCloudflareProxiedPreserved(t *testing.T) {
	f, hc := startCFFake(t)
	f.mu.Lock()
	orig := f.add("home.example.com", "A", "192.0.2.1", true, 1)
	f.mu.Unlock()
	p := newCF(t, hc, cfToken)

	// One record to one record: updated in place with PATCH, which
	// leaves the flag alone.
	mustSet(t, p, "home.example.com", "A", 5*time.Minute, "192.0.2.9")
	got := f.find("home.example.com", "A")
	if len(got) != 1 || got[0].ID != orig.ID || got[0].Content != "192.0.2.9" || !got[0].Proxied {
		t.Fatalf("after an address change: %+v, want record %s proxied with 192.0.2.9", got, orig.ID)
	}
	f.mu.Lock()
	bodies := f.bodies
	f.bodies = nil
	f.mu.Unlock()
	if len(bodies) != 1 || !strings.HasPrefix(bodies[0], "PATCH ") || strings.Contains(bodies[0], "proxied") {
		t.Fatalf("request bodies %q, want one PATCH without proxied", bodies)
	}

	// One to two, two to one: new records are created proxied.
	mustSet(t, p, "home.example.com", "A", 0, "192.0.2.10", "192.0.2.11")
	mustGet(t, p, "home.example.com", "A", "192.0.2.10", "192.0.2.11")
	for _, r := range f.find("home.example.com", "A") {
		if !r.Proxied {
			t.Errorf("record %+v lost the proxied flag", r)
		}
	}
	mustSet(t, p, "home.example.com", "A", 0, "192.0.2.12")
	if got := f.find("home.example.com", "A"); len(got) != 1 || !got[0].Proxied || got[0].Content != "192.0.2.12" {
		t.Errorf("after two to one: %+v", got)
	}

	// A fresh provider (nothing remembered) updates in place too.
	p2 := newCF(t, hc, cfToken)
	mustSet(t, p2, "home.example.com", "A", 0, "192.0.2.13")
	if got := f.find("home.example.com", "A"); len(got) != 1 || !got[0].Proxied || got[0].Content != "192.0.2.13" {
		t.Errorf("fresh provider: %+v", got)
	}
	// And a fresh provider's first change from one to two reads the
	// flag from the listing before it creates.
	p3 := newCF(t, hc, cfToken)
	mustSet(t, p3, "home.example.com", "A", 0, "192.0.2.14", "192.0.2.15")
	for _, r := range f.find("home.example.com", "A") {
		if !r.Proxied {
			t.Errorf("fresh provider, one to two: %+v not proxied", r)
		}
	}

	// Unproxied records stay unproxied; a new name gets the default.
	mustSet(t, p, "neighbour.example.com", "AAAA", 0, "2001:db8::8", "2001:db8::9")
	for _, r := range f.find("neighbour.example.com", "AAAA") {
		if r.Proxied {
			t.Errorf("%+v became proxied", r)
		}
	}
	mustSet(t, p, "new.example.com", "A", 0, "192.0.2.20")
	if got := f.find("new.example.com", "A"); len(got) != 1 || got[0].Proxied {
		t.Errorf("new name: %+v", got)
	}
	// The proxied neighbour was not touched.
	if got := f.find("neighbour.example.com", "A"); len(got) != 1 || !got[0].Proxied || got[0].Content != "198.51.100.7" {
		t.Errorf("neighbour: %+v", got)
	}
}

func TestCloudflareAuth(t *testing.T) {
	f, hc := startCFFake(t)
	before := f.snapshot(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set := ddns.RecordSet{Name: "home.example.com", Type: ddns.TypeA, Addrs: addrs("192.0.2.1")}

	bad := newCF(t, hc, "wrong-token-value")
	_, err := bad.Get(ctx, "home.example.com", ddns.TypeA)
	if !errors.Is(err, ddns.ErrAuth) {
		t.Fatalf("Get with a wrong token: %v, want ErrAuth", err)
	}
	if !strings.Contains(err.Error(), "9109") || strings.Contains(err.Error(), "wrong-token-value") {
		t.Errorf("error text: %v", err)
	}
	if err := bad.Set(ctx, set); !errors.Is(err, ddns.ErrAuth) {
		t.Fatalf("Set with a wrong token: %v, want ErrAuth", err)
	}

	ro := newCF(t, hc, cfReadOnly)
	mustGet(t, ro, "neighbour.example.com", "A", "198.51.100.7")
	err = ro.Set(ctx, set)
	if !errors.Is(err, ddns.ErrAuth) || !strings.Contains(err.Error(), "10000") {
		t.Fatalf("Set with a read-only token: %v, want ErrAuth (10000)", err)
	}
	if after := f.snapshot(nil); !slices.Equal(before, after) {
		t.Fatalf("refused requests changed the zone")
	}

	// A zone the account does not have.
	other, err := NewCloudflare(CloudflareConfig{APIToken: cfToken, Zone: "example.net", HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Get(ctx, "home.example.net", ddns.TypeA); !errors.Is(err, ddns.ErrNoHost) {
		t.Fatalf("unknown zone: %v, want ErrNoHost", err)
	}
	// A name outside the zone never reaches the API.
	f.takeRequests()
	good := newCF(t, hc, cfToken)
	if err := good.Set(ctx, ddns.RecordSet{Name: "home.example.org", Type: ddns.TypeA, Addrs: addrs("192.0.2.1")}); !errors.Is(err, ddns.ErrNoHost) {
		t.Fatalf("name outside the zone: %v, want ErrNoHost", err)
	}
	if r := f.takeRequests(); len(r) != 0 {
		t.Fatalf("requests for a name outside the zone: %q", r)
	}
}

func TestCloudflareRateLimit(t *testing.T) {
	f, hc := startCFFake(t)
	p := newCF(t, hc, cfToken)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	f.mu.Lock()
	f.limit, f.retry = 1, "7"
	f.mu.Unlock()
	_, err := p.Get(ctx, "home.example.com", ddns.TypeA)
	var ra *ddns.RetryAfterError
	if !errors.As(err, &ra) || ra.After != 7*time.Second {
		t.Fatalf("Get while rate limited: %v, want a RetryAfterError of 7s", err)
	}
	if !strings.Contains(err.Error(), "429") {
		t.Errorf("error text: %v", err)
	}

	mustGet(t, p, "home.example.com", "A")
	f.mu.Lock()
	f.limit, f.retry = 1, time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat)
	f.mu.Unlock()
	f.takeRequests()
	// A Retry-After date; the first request of the Set (the listing) is
	// limited, and nothing is written.
	err = p.Set(ctx, ddns.RecordSet{Name: "home.example.com", Type: ddns.TypeA, Addrs: addrs("192.0.2.1")})
	if !errors.As(err, &ra) || ra.After < 80*time.Second || ra.After > 91*time.Second {
		t.Fatalf("Set while rate limited: %v, want a RetryAfterError of about 90s", err)
	}
	mustSet(t, p, "home.example.com", "A", 0, "192.0.2.1")
	mustGet(t, p, "home.example.com", "A", "192.0.2.1")

	// Without Retry-After: a minute.
	f.mu.Lock()
	f.limit, f.retry = 1, ""
	f.mu.Unlock()
	_, err = p.Get(ctx, "home.example.com", ddns.TypeA)
	if !errors.As(err, &ra) || ra.After != time.Minute {
		t.Fatalf("429 without Retry-After: %v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"120", 2 * time.Minute, true},
		{" 0 ", 0, true},
		{"-3", 0, false},
		{"soon", 0, false},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	} {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNewCloudflare(t *testing.T) {
	if _, err := NewCloudflare(CloudflareConfig{Zone: "example.com"}); err == nil || !strings.Contains(err.Error(), "missing API token") {
		t.Errorf("no token: %v", err)
	}
	if _, err := NewCloudflare(CloudflareConfig{APIToken: "t0k3n"}); err == nil || !strings.Contains(err.Error(), "missing zone") {
		t.Errorf("no zone: %v", err)
	}
	if _, err := NewCloudflare(CloudflareConfig{APIToken: "t0k3n", Zone: "exa mple.com"}); err == nil {
		t.Error("invalid zone accepted")
	}
	if _, err := NewCloudflare(CloudflareConfig{APIToken: "t0k3n", Zone: "example.com"}); err != nil {
		t.Error(err)
	}
}
