package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/relay"
)

const testPassword = "correct-horse-battery-staple"

// fakeStatus is a relay's status as the dashboard gets it; its counters
// grow as the test says.
type fakeStatus struct {
	mu sync.Mutex
	st relay.Status
}

func newFakeStatus() *fakeStatus {
	now := time.Now()
	return &fakeStatus{st: relay.Status{
		Version: "v1.2.3", Started: now.Add(-time.Hour), Fingerprint: "sha256:abcd",
		Agents:   []relay.AgentStatus{{Token: "alice", ID: "home-pc", Addr: "192.0.2.7:50000", Transport: "tcp", Since: now}},
		Tunnels:  []relay.TunnelStatus{{Name: "web", Protocol: "tcp", Port: 8080, Token: "alice", Agent: "home-pc", Since: now.Add(-time.Minute)}},
		Refusals: []relay.RefusalStatus{{Time: now, Where: "web", Addr: "198.51.100.9", Reason: "<script>alert(1)</script>"}},
		Bans:     []relay.BanStatus{},
	}}
}

func (f *fakeStatus) get() relay.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Now = time.Now()
	st.Tunnels = append([]relay.TunnelStatus(nil), f.st.Tunnels...)
	return st
}

func (f *fakeStatus) addBytes(in, out int64) {
	f.mu.Lock()
	f.st.Tunnels[0].BytesIn += in
	f.st.Tunnels[0].BytesOut += out
	f.mu.Unlock()
}

// logBuf collects log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testDash struct {
	d    *Dashboard
	srv  *httptest.Server
	src  *fakeStatus
	logs *logBuf
	now  *clock
}

// clock is a settable time for sessions and login limits.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// start serves a dashboard over real HTTP (HTTPS when tls) and runs its
// sampler, both until the test ends.
func start(t *testing.T, opts Options, tls bool) *testDash {
	t.Helper()
	td := &testDash{src: newFakeStatus(), logs: &logBuf{}, now: &clock{t: time.Now()}}
	opts.Log = slog.New(slog.NewTextHandler(td.logs, nil))
	opts.Now = td.now.Now
	d, err := New(td.src.get, opts)
	if err != nil {
		t.Fatal(err)
	}
	td.d = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	td.srv = httptest.NewUnstartedServer(d.Handler())
	td.srv.Config.BaseContext = func(_ net.Listener) context.Context { return ctx }
	if tls {
		td.srv.StartTLS()
	} else {
		td.srv.Start()
	}
	t.Cleanup(func() {
		cancel()
		<-done
		td.srv.Close()
	})
	return td
}

// client returns a client that keeps cookies and does not follow
// redirects, so that each answer can be checked.
func (td *testDash) client(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := *td.srv.Client() // a copy: the server hands out one client
	c.Jar = jar
	c.Timeout = 10 * time.Second
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

type answer struct {
	code int
	hdr  http.Header
	body string
}

func do(t *testing.T, c *http.Client, method, u, host string, form url.Values) answer {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func (td *testDash) get(t *testing.T, c *http.Client, path string) answer {
	t.Helper()
	return do(t, c, "GET", td.srv.URL+path, "", nil)
}

func (td *testDash) login(t *testing.T, c *http.Client, password string) answer {
	t.Helper()
	return do(t, c, "POST", td.srv.URL+"/login", "", url.Values{"password": {password}})
}

// TestNoPasswordLoopbackOnly: without a password every page is open, but
// only to requests that name loopback in Host; another name may be an
// attacker's, rebound to 127.0.0.1.
func TestNoPasswordLoopbackOnly(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{}, false)
	c := td.client(t)
	port := td.srv.Listener.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"", "127.0.0.1", "localhost:" + strconv.Itoa(port), "LOCALHOST", "[::1]:" + strconv.Itoa(port), "127.1.2.3:80"} {
		for _, path := range []string{"/", "/api/status", "/static/app.js"} {
			if a := do(t, c, "GET", td.srv.URL+path, host, nil); a.code != http.StatusOK {
				t.Errorf("Host %q %s: %d %s", host, path, a.code, a.body)
			}
		}
	}
	if a := td.get(t, c, "/login"); a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/" {
		t.Errorf("/login without a password: %d %s", a.code, a.hdr.Get("Location"))
	}
	for _, host := range []string{"evil.example", "evil.example:" + strconv.Itoa(port), "127.0.0.1.nip.io", "localhost.evil.example", "192.0.2.1", "[fe80::1%25lo]:80", "0.0.0.0"} {
		for _, path := range []string{"/", "/api/status", "/api/events", "/login", "/static/app.js"} {
			a := do(t, c, "GET", td.srv.URL+path, host, nil)
			if a.code != http.StatusMisdirectedRequest || !strings.Contains(a.body, "only on loopback") {
				t.Errorf("Host %q %s: %d %q, want 421 and why", host, path, a.code, a.body)
			}
			if strings.Contains(a.body, "home-pc") {
				t.Errorf("Host %q %s: the answer shows the status", host, path)
			}
		}
	}
}

// TestPasswordRequired: with a password, nothing but the login form and
// the static files answers without a session.
func TestPasswordRequired(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{Password: testPassword}, false)
	c := td.client(t)
	if a := td.get(t, c, "/"); a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/login" {
		t.Errorf("/: %d to %q, want 303 to /login", a.code, a.hdr.Get("Location"))
	}
	for _, path := range []string{"/api/status", "/api/events"} {
		if a := td.get(t, c, path); a.code != http.StatusUnauthorized || strings.Contains(a.body, "home-pc") {
			t.Errorf("%s: %d %q, want 401", path, a.code, a.body)
		}
	}
	a := td.get(t, c, "/login")
	if a.code != http.StatusOK || !strings.Contains(a.body, `type="password"`) || !strings.Contains(a.body, "5 wrong passwords") {
		t.Errorf("/login: %d\n%s", a.code, a.body)
	}
	for _, path := range []string{"/static/style.css", "/static/app.js", "/static/icon.svg", "/favicon.ico"} {
		if a := td.get(t, c, path); a.code != http.StatusOK || strings.Contains(a.body, "home-pc") {
			t.Errorf("%s: %d", path, a.code)
		}
	}
	// With a password, any Host is answered (the password is the guard).
	if a := do(t, c, "GET", td.srv.URL+"/login", "relay.example.com", nil); a.code != http.StatusOK {
		t.Errorf("/login with a public Host: %d", a.code)
	}
	for _, path := range []string{"/static/", "/static/nothing.js", "/nothing"} {
		if a := td.get(t, c, path); a.code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, a.code)
		}
	}
}

// TestLogin: a wrong password is refused and logged; the right one gives
// an HttpOnly, SameSite=Strict session cookie (Secure over TLS) that opens
// the page and the API; logging out ends the session on the server too.
func TestLogin(t *testing.T) {
	leak.Check(t)
	for _, tls := range []bool{false, true} {
		td := start(t, Options{Password: testPassword}, tls)
		c := td.client(t)
		a := td.login(t, c, "wrong-password-123")
		if a.code != http.StatusUnauthorized || !strings.Contains(a.body, "Wrong password.") {
			t.Errorf("wrong password: %d\n%s", a.code, a.body)
		}
		if a.hdr.Get("Set-Cookie") != "" {
			t.Errorf("wrong password set a cookie: %s", a.hdr.Get("Set-Cookie"))
		}
		if logs := td.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "failed login") || !strings.Contains(logs, "source=127.0.0.1") {
			t.Errorf("failed login not logged at Warn with its source:\n%s", logs)
		}
		if a := td.get(t, c, "/api/status"); a.code != http.StatusUnauthorized {
			t.Errorf("after a wrong password: /api/status %d", a.code)
		}

		a = td.login(t, c, testPassword)
		if a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/" {
			t.Fatalf("right password: %d to %q", a.code, a.hdr.Get("Location"))
		}
		resp := &http.Response{Header: a.hdr}
		cookies := resp.Cookies()
		if len(cookies) != 1 {
			t.Fatalf("cookies: %v", cookies)
		}
		ck := cookies[0]
		if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure != tls || ck.Path != "/" || ck.MaxAge != int(SessionTTL/time.Second) || len(ck.Value) < 40 {
			t.Errorf("session cookie over TLS %v: %s", tls, a.hdr.Get("Set-Cookie"))
		}
		if strings.Contains(ck.Value, testPassword) {
			t.Error("the cookie holds the password")
		}
		if a := td.get(t, c, "/"); a.code != http.StatusOK || !strings.Contains(a.body, "/static/app.js") || a.hdr.Get("Cache-Control") != "no-store" {
			t.Errorf("/ logged in: %d\n%s", a.code, a.body)
		}
		a = td.get(t, c, "/api/status")
		var p Payload
		if err := json.Unmarshal([]byte(a.body), &p); a.code != http.StatusOK || err != nil {
			t.Fatalf("/api/status logged in: %d %v\n%s", a.code, err, a.body)
		}
		if !p.Login || len(p.Status.Agents) != 1 || p.Status.Agents[0].ID != "home-pc" || p.Status.Refusals[0].Reason != "<script>alert(1)</script>" {
			t.Errorf("payload: %+v", p)
		}
		if a := td.get(t, c, "/login"); a.code != http.StatusSeeOther {
			t.Errorf("/login logged in: %d, want 303 to /", a.code)
		}

		// A session cookie from elsewhere is not one.
		other := td.client(t)
		u, _ := url.Parse(td.srv.URL)
		other.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: strings.Repeat("A", len(ck.Value))}})
		if a := td.get(t, other, "/api/status"); a.code != http.StatusUnauthorized {
			t.Errorf("made-up cookie: %d", a.code)
		}

		// Log out: the cookie is cleared, and the old value, sent again,
		// is refused.
		a = do(t, c, "POST", td.srv.URL+"/logout", "", url.Values{})
		if a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/login" || !strings.Contains(a.hdr.Get("Set-Cookie"), "Max-Age=0") {
			t.Errorf("logout: %d %q %q", a.code, a.hdr.Get("Location"), a.hdr.Get("Set-Cookie"))
		}
		replay := td.client(t)
		replay.Jar.SetCookies(u, []*http.Cookie{ck})
		if a := td.get(t, replay, "/api/status"); a.code != http.StatusUnauthorized {
			t.Errorf("the old cookie after logout: %d", a.code)
		}

		// A session expires.
		a = td.login(t, c, testPassword)
		if a.code != http.StatusSeeOther {
			t.Fatalf("login again: %d", a.code)
		}
		td.now.add(SessionTTL + time.Second)
		if a := td.get(t, c, "/api/status"); a.code != http.StatusUnauthorized {
			t.Errorf("after %v: %d", SessionTTL, a.code)
		}
	}
}

// TestLoginRateLimit: after 5 wrong passwords in a minute from one
// address, even the right one is refused, with a page that says why,
// until the minute has passed; the limit is logged once.
func TestLoginRateLimit(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{Password: testPassword}, false)
	c := td.client(t)
	for i := range LoginFailures {
		if a := td.login(t, c, "wrong-password-"+strconv.Itoa(i)); a.code != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: %d", i+1, a.code)
		}
	}
	for range 3 {
		a := td.login(t, c, testPassword)
		if a.code != http.StatusTooManyRequests || !strings.Contains(a.body, "Too many wrong passwords") || a.hdr.Get("Set-Cookie") != "" {
			t.Fatalf("right password while limited: %d %q\n%s", a.code, a.hdr.Get("Set-Cookie"), a.body)
		}
	}
	if n := strings.Count(td.logs.String(), "refusing logins from this address"); n != 1 {
		t.Errorf("limit logged %d times, want once:\n%s", n, td.logs.String())
	}
	td.now.add(LoginWindow)
	if a := td.login(t, c, testPassword); a.code != http.StatusSeeOther {
		t.Errorf("right password a minute later: %d\n%s", a.code, a.body)
	}
}

// TestLoginLimiter: the limit is per address (IPv6: per /64), and a table
// full of recent failures refuses new addresses rather than forgetting
// old ones.
func TestLoginLimiter(t *testing.T) {
	var l loginLimiter
	now := time.Now()
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for range LoginFailures {
		l.fail(a, now)
	}
	if l.allowed(a, now) || !l.allowed(b, now) {
		t.Errorf("after %d failures from a: a allowed %v, b allowed %v", LoginFailures, l.allowed(a, now), l.allowed(b, now))
	}
	r := httptest.NewRequest("POST", "/login", nil)
	r.RemoteAddr = "[2001:db8:1:2:3:4:5:6]:443"
	r2 := httptest.NewRequest("POST", "/login", nil)
	r2.RemoteAddr = "[2001:db8:1:2:ffff::9]:443"
	if source(r) != source(r2) || source(r) != netip.MustParseAddr("2001:db8:1:2::") {
		t.Errorf("IPv6 sources %v, %v: want one /64", source(r), source(r2))
	}
	var full loginLimiter
	for i := range maxLoginSources {
		full.fail(netip.MustParseAddr("10.0."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256)), now)
	}
	if full.allowed(b, now) {
		t.Error("a new address was allowed with the table full of recent failures")
	}
	if !full.allowed(b, now.Add(LoginWindow)) {
		t.Error("a new address was refused after the failures expired")
	}
}

// TestOrigin: a login or logout posted from another site is refused, by
// Sec-Fetch-Site where the browser sends it, else by Origin; the
// dashboard's own form is let through, also with the "null" Origin that
// its no-referrer policy makes older browsers send.
func TestOrigin(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{Password: testPassword}, false)
	tests := []struct {
		name, site, origin string
		ok                 bool
	}{
		{"cross-site", "cross-site", td.srv.URL, false},
		{"same-site, another port", "same-site", "", false},
		{"same-origin", "same-origin", "null", true},
		{"typed by the user", "none", "", true},
		{"another origin", "", "http://evil.example", false},
		{"another port", "", "http://127.0.0.1:1", false},
		{"own origin", "", td.srv.URL, true},
		{"null origin", "", "null", true},
		{"neither", "", "", true},
	}
	for _, tt := range tests {
		for _, path := range []string{"/login", "/logout"} {
			c := td.client(t)
			req, _ := http.NewRequest("POST", td.srv.URL+path, strings.NewReader("password="+testPassword))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.site != "" {
				req.Header.Set("Sec-Fetch-Site", tt.site)
			}
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if ok := resp.StatusCode == http.StatusSeeOther; ok != tt.ok || !ok && len(resp.Cookies()) != 0 {
				t.Errorf("%s %s: %d %v, want let through: %v", tt.name, path, resp.StatusCode, resp.Cookies(), tt.ok)
			}
		}
	}
}

// TestHeaders: every answer, refusals included, carries the security
// headers: a Content-Security-Policy that allows no inline script and no
// other origin, no framing, no referrer, no sniffing.
func TestHeaders(t *testing.T) {
	leak.Check(t)
	open := start(t, Options{}, false)
	locked := start(t, Options{Password: testPassword}, false)
	check := func(name string, a answer) {
		t.Helper()
		csp := a.hdr.Get("Content-Security-Policy")
		for _, w := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"} {
			if !strings.Contains(csp, w) {
				t.Errorf("%s: Content-Security-Policy %q lacks %q", name, csp, w)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") || strings.Contains(csp, "*") {
			t.Errorf("%s: Content-Security-Policy %q is not strict", name, csp)
		}
		for k, v := range map[string]string{"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"} {
			if got := a.hdr.Get(k); got != v {
				t.Errorf("%s: %s %q, want %q", name, k, got, v)
			}
		}
	}
	oc, lc := open.client(t), locked.client(t)
	for _, path := range []string{"/", "/api/status", "/static/app.js", "/static/style.css", "/nothing"} {
		check("open "+path, open.get(t, oc, path))
		check("locked "+path, locked.get(t, lc, path))
	}
	check("foreign Host", do(t, oc, "GET", open.srv.URL+"/", "evil.example", nil))
	check("wrong password", locked.login(t, lc, "wrong-password-123"))
	check("login", locked.login(t, lc, testPassword))
	check("logged in /", locked.get(t, lc, "/"))

	// No inline script or style in the pages: the policy would block it.
	for _, a := range []answer{open.get(t, oc, "/"), locked.get(t, locked.client(t), "/login")} {
		if strings.Contains(a.body, "<script>") || strings.Contains(a.body, "style=") || inlineHandler.MatchString(a.body) {
			t.Errorf("inline script or style in:\n%s", a.body)
		}
	}
	if ct := open.get(t, oc, "/static/app.js").hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Errorf("app.js Content-Type %q", ct)
	}
}

// inlineHandler matches an event handler attribute such as onclick=.
var inlineHandler = regexp.MustCompile(`(?i)\son[a-z]+\s*=`)

// TestNoSecretInAnswers: the password shows in no answer, logged in or
// not, over any route, the login page after a failure included.
func TestNoSecretInAnswers(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{Password: testPassword, Push: 10 * time.Millisecond}, false)
	c := td.client(t)
	var all []answer
	all = append(all, td.get(t, c, "/login"), td.login(t, c, "wrong-password-123"), td.get(t, c, "/api/status"))
	all = append(all, td.login(t, c, testPassword))
	for _, path := range []string{"/", "/api/status", "/static/app.js", "/static/style.css", "/static/index.html", "/login"} {
		all = append(all, td.get(t, c, path))
	}
	ev := readEvents(t, td, c, 1)
	all = append(all, answer{body: ev[0]})
	for i, a := range all {
		if strings.Contains(a.body, testPassword) || strings.Contains(a.hdr.Get("Set-Cookie"), testPassword) || strings.Contains(a.hdr.Get("Location"), testPassword) {
			t.Errorf("answer %d shows the password:\n%v\n%s", i, a.hdr, a.body)
		}
	}
	if strings.Contains(td.logs.String(), testPassword) || strings.Contains(td.logs.String(), "wrong-password-123") {
		t.Errorf("the log shows a password:\n%s", td.logs.String())
	}
}

// readEvents reads n status events from /api/events.
func readEvents(t *testing.T, td *testDash, c *http.Client, n int) []string {
	t.Helper()
	req, _ := http.NewRequest("GET", td.srv.URL+"/api/events", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("/api/events: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	event := ""
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "status":
			out = append(out, strings.TrimPrefix(line, "data: "))
		}
	}
	if len(out) < n {
		t.Fatalf("%d of %d events: %v", len(out), n, sc.Err())
	}
	return out
}

// TestEventsAndTraffic: the event stream pushes the status with the
// traffic history, and the rates in it follow the counters the status
// source reports as they grow; the stream ends when the session does.
func TestEventsAndTraffic(t *testing.T) {
	leak.Check(t)
	const interval = 20 * time.Millisecond
	td := start(t, Options{Password: testPassword, Interval: interval, Window: time.Second, Push: 10 * time.Millisecond}, false)
	c := td.client(t)
	if a := td.login(t, c, testPassword); a.code != http.StatusSeeOther {
		t.Fatalf("login: %d", a.code)
	}
	// Bytes flow until the pushed history shows a rate; bounded.
	deadline := time.Now().Add(20 * time.Second)
	var peak float64
	for peak == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no rate in the events after 20 s of traffic")
		}
		td.src.addBytes(64<<10, 1<<10)
		for _, e := range readEvents(t, td, c, 2) {
			var p Payload
			if err := json.Unmarshal([]byte(e), &p); err != nil {
				t.Fatal(err)
			}
			if p.Status.Version != "v1.2.3" || p.Push != 0.01 || p.Traffic.Interval != interval.Seconds() || len(p.Traffic.Tunnels) != 1 {
				t.Fatalf("event: %+v", p)
			}
			for _, pt := range p.Traffic.Tunnels[0].Points {
				peak = max(peak, pt.In)
				if pt.In < 0 || pt.Out < 0 {
					t.Fatalf("negative rate: %+v", pt)
				}
			}
		}
	}

	// Logged out elsewhere: the open stream ends.
	req, _ := http.NewRequest("GET", td.srv.URL+"/api/events", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if a := do(t, c, "POST", td.srv.URL+"/logout", "", url.Values{}); a.code != http.StatusSeeOther {
		t.Fatalf("logout: %d", a.code)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("stream after logout: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the event stream went on after logout")
	}
}

// TestStreamLimit: at most MaxStreams event streams are open at once.
func TestStreamLimit(t *testing.T) {
	leak.Check(t)
	td := start(t, Options{Push: time.Hour}, false)
	c := td.client(t)
	var bodies []io.Closer
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	for range MaxStreams {
		resp, err := c.Get(td.srv.URL + "/api/events")
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %s", len(bodies), resp.Status)
		}
	}
	if a := td.get(t, c, "/api/events"); a.code != http.StatusServiceUnavailable {
		t.Errorf("stream %d: %d, want 503", MaxStreams+1, a.code)
	}
	if a := td.get(t, c, "/api/status"); a.code != http.StatusOK {
		t.Errorf("/api/status with every stream taken: %d", a.code)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New without a source: no error")
	}
	if _, err := New(newFakeStatus().get, Options{Interval: time.Minute, Window: time.Second}); err == nil {
		t.Error("New with a window shorter than the interval: no error")
	}
}

// FuzzLoopbackHost: only localhost and loopback literals pass, whatever
// the Host header holds.
func FuzzLoopbackHost(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "localhost:80", "[::1]:8080", "LocalHost", "evil.example", "127.0.0.1.nip.io", "[::ffff:127.0.0.1]", "[fe80::1%lo]", "", ":80", "[::1", "0x7f.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if !loopbackHost(host) {
			return
		}
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if strings.EqualFold(h, "localhost") {
			return
		}
		a, err := netip.ParseAddr(h)
		if err != nil || !a.IsLoopback() || a.Zone() != "" {
			t.Fatalf("loopbackHost(%q) = true for %q", host, h)
		}
	})
}
