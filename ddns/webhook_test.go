package ddns

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookServer records the requests it gets and answers with status and
// body.
type hookServer struct {
	mu       sync.Mutex
	requests []hookRequest
	status   int
	body     string
	header   http.Header
}

type hookRequest struct {
	method, uri, body string
	header            http.Header
}

func (h *hookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests = append(h.requests, hookRequest{r.Method, r.RequestURI, string(b), r.Header.Clone()})
	for k, v := range h.header {
		w.Header()[k] = v
	}
	w.WriteHeader(h.status)
	io.WriteString(w, h.body)
}

func TestWebhookSet(t *testing.T) {
	const token = "t0ken-s3cret"
	want6 := RecordSet{Name: testName, Type: TypeAAAA, Addrs: addrs("2001:db8::5", "2001:db8::6"), TTL: 5 * time.Minute}
	tests := []struct {
		name    string
		hook    Webhook // URL is relative to the server
		status  int
		body    string
		header  http.Header
		want    RecordSet
		uri     string // expected request URI
		reqBody string
		is      error
		retry   time.Duration
		errText string
	}{
		{name: "GET with placeholders", hook: Webhook{URL: "/update?host={name}&type={type}&ip={addr}&all={addrs}&ttl={ttl}&token=" + token},
			status: 200, want: want6,
			uri: "/update?host=home.example.com&type=AAAA&ip=2001%3Adb8%3A%3A5&all=2001%3Adb8%3A%3A5%2C2001%3Adb8%3A%3A6&ttl=300&token=" + token},
		{name: "POST body", hook: Webhook{URL: "/dns/{name}", Method: "post", Body: `{"type":"{type}","content":"{addr}"}`,
			Headers: map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}},
			status: 204, want: RecordSet{Name: testName, Type: TypeA, Addrs: addrs("203.0.113.5")},
			uri: "/dns/home.example.com", reqBody: `{"type":"A","content":"203.0.113.5"}`},
		{name: "OK body present", hook: Webhook{URL: "/u?token=" + token, OKBody: "OK"}, status: 200, body: "OK", want: want6},
		{name: "OK body missing", hook: Webhook{URL: "/u?token=" + token, OKBody: "OK"}, status: 200, body: "KO " + token, want: want6, errText: `does not contain the expected "OK"`},
		{name: "401", hook: Webhook{URL: "/u?token=" + token}, status: 401, want: want6, is: ErrAuth},
		{name: "403", hook: Webhook{URL: "/u?token=" + token}, status: 403, want: want6, is: ErrAuth},
		{name: "429", hook: Webhook{URL: "/u?token=" + token}, status: 429, header: http.Header{"Retry-After": {"90"}}, want: want6, retry: 90 * time.Second},
		{name: "503 without Retry-After", hook: Webhook{URL: "/u"}, status: 503, want: want6, retry: defaultRetryAfter},
		{name: "500", hook: Webhook{URL: "/" + token + "/u"}, status: 500, want: want6, errText: "HTTP status 500"},
		{name: "bad method", hook: Webhook{URL: "/u", Method: "DELETE"}, want: want6, errText: "want GET, POST"},
		{name: "bad name", hook: Webhook{URL: "/u?name={name}"}, want: RecordSet{Name: "a&b=c", Type: TypeA}, errText: "not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &hookServer{status: tt.status, body: tt.body, header: tt.header}
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			w := tt.hook
			w.URL = srv.URL + w.URL
			err := w.Set(context.Background(), tt.want)
			if err != nil && strings.Contains(err.Error(), token) {
				t.Errorf("the error shows the token: %v", err)
			}
			checkSetErr(t, err, tt.is, tt.retry, tt.errText)
			if tt.uri == "" {
				return
			}
			if len(h.requests) != 1 {
				t.Fatalf("%d requests", len(h.requests))
			}
			r := h.requests[0]
			if r.uri != tt.uri || r.body != tt.reqBody {
				t.Errorf("request %s %s %q,\nwant %s %q", r.method, r.uri, r.body, tt.uri, tt.reqBody)
			}
			if ua := r.header.Get("User-Agent"); ua != DefaultUserAgent {
				t.Errorf("User-Agent %q", ua)
			}
			for k, v := range tt.hook.Headers {
				if r.header.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, r.header.Get(k), v)
				}
			}
		})
	}
}

func TestWebhookGetReadsBack(t *testing.T) {
	f, _ := newFakeDynDNS(t, testUser, testPass, testName)
	f.set(testName, TypeA, addrs("203.0.113.5")...)
	w := &Webhook{URL: "http://127.0.0.1:1/", Lookup: f.lookup}
	got, err := w.Get(context.Background(), testName, TypeA)
	if err != nil || len(got) != 1 || got[0] != addrs("203.0.113.5")[0] {
		t.Errorf("Get() = %v, %v", got, err)
	}
}
