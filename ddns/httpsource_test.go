package ddns

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// ipServer answers every request with status and body, and counts them.
func ipServer(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if ua := r.Header.Get("User-Agent"); !strings.HasPrefix(ua, "homeport-ddns") {
			t.Errorf("User-Agent %q", ua)
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestHTTPSourceFirstGoodAnswerWins(t *testing.T) {
	leak.Check(t)
	down, downHits := ipServer(t, http.StatusInternalServerError, "oops")
	up, upHits := ipServer(t, http.StatusOK, "  203.0.113.7\n")
	spare, spareHits := ipServer(t, http.StatusOK, "203.0.113.8")
	s := &HTTPSource{URLs: []string{down.URL, up.URL, spare.URL}, Family: 4, UserAgent: UserAgent("test")}
	got, err := s.Addrs(context.Background())
	if err != nil || !slices.Equal(got, addrs("203.0.113.7")) {
		t.Fatalf("Addrs() = %v, %v", got, err)
	}
	if downHits.Load() != 1 || upHits.Load() != 1 || spareHits.Load() != 0 {
		t.Errorf("hits %d, %d, %d; want 1, 1, 0", downHits.Load(), upHits.Load(), spareHits.Load())
	}
}

func TestHTTPSourceAnswers(t *testing.T) {
	tests := []struct {
		name   string
		family int
		status int
		body   string
		want   []netip.Addr
		err    string
	}{
		{"plain", 0, 200, "203.0.113.7", addrs("203.0.113.7"), ""},
		{"json", 0, 200, `{"ip": " 2001:db8::7 "}`, addrs("2001:db8::7"), ""},
		{"json with more", 0, 200, `{"ip":"203.0.113.7","country":"XX"}` + "\n", addrs("203.0.113.7"), ""},
		{"mapped", 4, 200, "::ffff:203.0.113.7", addrs("203.0.113.7"), ""},
		{"wrong family", 6, 200, "203.0.113.7", nil, "want an IPv6 address"},
		{"not an address", 0, 200, "<html>hello</html>", nil, "is not an IP address"},
		{"bad json", 0, 200, `{"ip": 5}`, nil, "not a JSON object"},
		{"status", 0, 404, "203.0.113.7", nil, "HTTP status 404"},
		{"too long", 0, 200, "203.0.113.7" + strings.Repeat(" ", 300), nil, "longer than 256 bytes"},
		{"endless", 0, 200, strings.Repeat("1", 1<<20), nil, "longer than 256 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := ipServer(t, tt.status, tt.body)
			// A custom client: the default one for Family 6 would dial
			// tcp6, and the server listens on 127.0.0.1.
			s := &HTTPSource{URLs: []string{srv.URL + "/?token=secret"}, Family: tt.family, Client: srv.Client()}
			got, err := s.Addrs(context.Background())
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Addrs() = %v, %v; want error containing %q", got, err, tt.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the query", err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Addrs() = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestHTTPSourceAsksAtMostOncePerInterval(t *testing.T) {
	srv, hits := ipServer(t, http.StatusOK, "203.0.113.7")
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	s := &HTTPSource{URLs: []string{srv.URL}}
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	ask := func() {
		t.Helper()
		got, err := s.Addrs(context.Background())
		if err != nil || !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("Addrs() = %v, %v", got, err)
		}
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(ask)
	}
	wg.Wait()
	if hits.Load() != 1 {
		t.Fatalf("%d requests for 10 concurrent questions, want 1", hits.Load())
	}
	advance(DefaultHTTPMinInterval - time.Second)
	ask()
	if hits.Load() != 1 {
		t.Fatalf("asked again before the minimum interval")
	}
	advance(time.Second)
	ask()
	if hits.Load() != 2 {
		t.Fatalf("%d requests after the interval, want 2", hits.Load())
	}
}

func TestHTTPSourceRemembersFailures(t *testing.T) {
	srv, hits := ipServer(t, http.StatusBadGateway, "")
	s := &HTTPSource{URLs: []string{srv.URL}, MinInterval: time.Hour}
	for range 3 {
		if _, err := s.Addrs(context.Background()); err == nil {
			t.Fatal("no error")
		}
	}
	if hits.Load() != 1 {
		t.Errorf("%d requests, want 1: a failing service must not be asked again at once", hits.Load())
	}
}

func TestHTTPSourceTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	s := &HTTPSource{URLs: []string{srv.URL}, Timeout: 100 * time.Millisecond}
	start := time.Now()
	if _, err := s.Addrs(context.Background()); err == nil {
		t.Fatal("no error from a server that does not answer")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
}

func TestHTTPSourceDefaultClientDialsFamily(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("2001:db8::9"))
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	port := ln.Addr().(*net.TCPAddr).Port
	url := "http://[::1]:" + strconv.Itoa(port)
	if got, err := (&HTTPSource{URLs: []string{url}, Family: 6}).Addrs(context.Background()); err != nil || !slices.Equal(got, addrs("2001:db8::9")) {
		t.Errorf("Family 6: Addrs() = %v, %v", got, err)
	}
	if _, err := (&HTTPSource{URLs: []string{url}, Family: 4}).Addrs(context.Background()); err == nil {
		t.Errorf("Family 4 reached a server on ::1")
	}
}

func FuzzIPBody(f *testing.F) {
	for _, seed := range []string{
		"203.0.113.7", " 2001:db8::7\n", `{"ip":"203.0.113.7"}`, `{"ip": 5}`, "{", "::ffff:1.2.3.4",
		"fe80::1%eth0", "", "<html>", `{"ip":"fe80::1%25x"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := parseIPBody(body)
		if err != nil {
			if len(err.Error()) > 300 {
				t.Errorf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			t.Errorf("parseIPBody(%q) = %v", body, a)
		}
		if b, err := parseIPBody([]byte(a.String())); err != nil || b != a {
			t.Errorf("round trip of %v: %v, %v", a, b, err)
		}
	})
}
