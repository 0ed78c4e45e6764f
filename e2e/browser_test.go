//go:build unix

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/homeport/homeport/internal/leak"
)

// The browser test drives Debian's chromium, headless, through the
// DevTools protocol. CI installs chromium (.ci/run); elsewhere, set
// HOMEPORT_SKIP_BROWSER=1 to skip it.

// chromiumPath finds the browser, or fails the test saying how to get one.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("HOMEPORT_SKIP_BROWSER") == "1" {
		t.Skip("HOMEPORT_SKIP_BROWSER=1")
	}
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("chromium not found (/usr/bin/chromium): this test drives a real browser; install it (apt-get install chromium, as .ci/run does), or set HOMEPORT_SKIP_BROWSER=1 to skip the test")
	return ""
}

// browser starts a headless chromium with a fresh profile and returns a
// tab's context, and the page's console errors and uncaught exceptions
// so far. Both end with the test.
func browser(t *testing.T) (context.Context, func() []chromedp.ConsoleMessage) {
	t.Helper()
	path := chromiumPath(t)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 960),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // CI runs as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		// Without these chromium keeps trying to reach its servers.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("password-store", "basic"),
	)
	ctx, cancelTab := chromedp.NewContext(actx)
	// The first Run starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("starting %s: %v", path, err)
	}
	var (
		mu     sync.Mutex
		errs   []chromedp.ConsoleMessage
		done   = make(chan struct{})
		events = chromedp.Console(ctx)
	)
	go func() {
		defer close(done)
		for m, err := range events {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				mu.Lock()
				errs = append(errs, m)
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-done
	})
	return ctx, func() []chromedp.ConsoleMessage {
		mu.Lock()
		defer mu.Unlock()
		return append([]chromedp.ConsoleMessage(nil), errs...)
	}
}

// run runs browser actions with a bound on their time.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// pollPage waits up to d for a JavaScript expression to be truthy in the
// page and returns its value as JSON.
func pollPage(t *testing.T, ctx context.Context, d time.Duration, what, expr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d+5*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Poll[[]byte](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(d)))
	if err != nil {
		t.Fatalf("waiting %v for %s (%s): %v", d, what, expr, err)
	}
	return string(v)
}

// TestBrowserDashboard: in a real browser, the relay's dashboard refuses a
// wrong password and says so; with the right one it shows the agent the
// test connected (an id with markup in it, as plain text), its tunnels and a
// refusal; after the test sends data through a tunnel the tunnel's chart
// shows a rate; the page logs no error. It saves a screenshot (to
// HOMEPORT_DASHBOARD_SCREENSHOT when set: that is docs/dashboard.png).
func TestBrowserDashboard(t *testing.T) {
	leak.Check(t)
	ctx, consoleErrors := browser(t)
	target := serve(t, echo)
	r, b, _, base := binStartDashboard(t)
	web, private := freePort(t), freePort(t)
	// An agent id may hold anything: the page must show it as text, not
	// make a <den> element of it.
	const agentID = `home-pc <den> & "lab"`
	agentFile := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(agentFile, fmt.Appendf(nil, `tunnels:
  - {name: web, remote_port: %d, target: %q}
  - {name: nas, remote_port: %d, target: %q, allow: ["192.0.2.0/24"]}
`, web, target, private, target), 0o600); err != nil {
		t.Fatal(err)
	}
	a := binStartAgent(t, b, nil, "--config", agentFile, "--id", agentID)
	binAwaitTunnels(a, 2, 15*time.Second)
	// A visitor the allow list keeps out: a refusal to show.
	if open, _ := probe(publicAddr(private), 5*time.Second); open {
		t.Fatal("a visitor outside the allow list got through")
	}

	// The login form: a wrong password is refused, and the page says so.
	run(t, ctx, "opening the dashboard", chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("password")))
	run(t, ctx, "a wrong password",
		chromedp.SendKeys(chromedp.ID("password"), "not-the-password-1234"),
		chromedp.Submit(chromedp.ID("password")),
		chromedp.WaitVisible(chromedp.ID("error")))
	msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("error")))
	if err != nil || msg != "Wrong password." {
		t.Fatalf("after a wrong password the page says %q (%v)", msg, err)
	}
	if loc, _ := chromedp.Run(ctx, chromedp.Location()); loc != base+"login" {
		t.Fatalf("after a wrong password the browser is at %s", loc)
	}
	if n := pollPage(t, ctx, 5*time.Second, "no tables on the login page", `document.querySelectorAll('#agents').length === 0`); n != "true" {
		t.Fatalf("login page: %s", n)
	}

	// The right password: the agent, its tunnels and the refusal.
	run(t, ctx, "the right password",
		chromedp.SendKeys(chromedp.ID("password"), dashPassword),
		chromedp.Submit(chromedp.ID("password")),
		chromedp.WaitVisible(chromedp.ID("agents")))
	got := pollPage(t, ctx, 20*time.Second, "the agent in the table",
		`[...document.querySelectorAll('#agents td.agent-id')].map(td => td.textContent).find(s => s.startsWith('home-pc'))`)
	var shown string
	if err := json.Unmarshal([]byte(got), &shown); err != nil || shown != agentID {
		t.Errorf("agent shown as %s, want %q", got, agentID)
	}
	if n := pollPage(t, ctx, 5*time.Second, "no element from the agent's id", `String(document.querySelectorAll('den').length)`); n != `"0"` {
		t.Errorf("the agent's id became %s elements", n)
	}
	pollPage(t, ctx, 10*time.Second, "both tunnels in the table", fmt.Sprintf(
		`(() => { const w = document.querySelector('#tunnels tr[data-key="tcp/%d"]'), n = document.querySelector('#tunnels tr[data-key="tcp/%d"]');
		  return w && n && w.textContent.includes('web') && n.textContent.includes('nas'); })()`, web, private))
	pollPage(t, ctx, 10*time.Second, "the refusal in the table",
		`document.querySelector('#refusals tbody').textContent.includes('address not allowed by the tunnel')`)
	pollPage(t, ctx, 10*time.Second, "the live update mode", `document.getElementById('mode').textContent.startsWith('live')`)

	// Data through the web tunnel; the connection closes, so the relay
	// counts it. The tunnel's chart must show a rate.
	chart := fmt.Sprintf(`document.querySelector('.chart[data-key="tcp/%d"]')`, web)
	pollPage(t, ctx, 15*time.Second, "the web tunnel's chart", chart)
	before := pollPage(t, ctx, 5*time.Second, "the chart's peak before", chart+`.dataset.peakIn`)
	if before != `"0"` {
		t.Fatalf("peak rate before any data: %s", before)
	}
	const n = 1 << 20
	msg1 := make([]byte, n)
	rand.NewChaCha8([32]byte{9}).Read(msg1)
	if got, err := roundTrip(publicAddr(web), msg1); err != nil || len(got) != n {
		t.Fatalf("through the tunnel: %d bytes, %v", len(got), err)
	}
	peak := pollPage(t, ctx, 30*time.Second, "a rate on the chart after the data",
		`(() => { const c = `+chart+`; return c && Number(c.dataset.peakIn) > 0 && Number(c.dataset.peakOut) > 0 && c.dataset.peakIn; })()`)
	pollPage(t, ctx, 10*time.Second, "the bytes in the tunnel table",
		fmt.Sprintf(`document.querySelector('#tunnels tr[data-key="tcp/%d"]').dataset.bytesIn === '%d'`, web, n))
	t.Logf("chart peak %s B/s in", peak)

	// More data later: the chart moves on, its window total grows.
	windowIn := pollPage(t, ctx, 5*time.Second, "the chart's bytes in the window", chart+`.dataset.bytesIn`)
	var was int64
	if err := json.Unmarshal([]byte(strings.Trim(windowIn, `"`)), &was); err != nil || was <= 0 {
		t.Fatalf("bytes in the chart's window: %s (%v)", windowIn, err)
	}
	msg2 := make([]byte, 4*n)
	rand.NewChaCha8([32]byte{10}).Read(msg2)
	if got, err := roundTrip(publicAddr(web), msg2); err != nil || len(got) != len(msg2) {
		t.Fatalf("through the tunnel: %d bytes, %v", len(got), err)
	}
	pollPage(t, ctx, 30*time.Second, "the chart to take in the second transfer",
		fmt.Sprintf(`Number(%s.dataset.bytesIn) > %d`, chart, was+int64(len(msg2))/2))

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := os.Getenv("HOMEPORT_DASHBOARD_SCREENSHOT")
	if path == "" {
		path = filepath.Join(t.TempDir(), "dashboard.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))

	// The page's own HTML holds no secret either.
	html, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	if err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, "the page", html, map[string]string{"the token": b.token, "the dashboard password": dashPassword})

	// The browser reports the 401 of the wrong password; nothing else.
	wrongPassword := 0
	for _, m := range consoleErrors() {
		if m.URL == base+"login" && strings.Contains(m.Text, "status of 401") {
			wrongPassword++
			continue
		}
		t.Errorf("the page logged an error: %s (%s:%d)", m, m.URL, m.Line)
	}
	if wrongPassword > 1 {
		t.Errorf("the browser reported %d refused logins, want 1", wrongPassword)
	}

	// Log out: back to the login form, and the API refuses (the
	// browser reports that 401 too, after the check above).
	run(t, ctx, "logging out", chromedp.Click(chromedp.CSS("#logout button")), chromedp.WaitVisible(chromedp.ID("password")))
	if s := pollPage(t, ctx, 10*time.Second, "the API after logout",
		`fetch('/api/status').then(r => String(r.status))`); s != `"401"` {
		t.Errorf("/api/status after logout: %s", s)
	}

	if !r.running() || !a.running() {
		t.Fatal("relay or agent exited")
	}
}
