// Package dashboard is the relay's web dashboard: a page that shows a
// running relay's agents, tunnels, visitors, traffic over the last 15
// minutes, refusals, bans and DDNS names, updated live.
//
// It serves only what is embedded in the binary (no CDN: it works offline)
// over a status source, relay.Server.Status in the relay. Without a
// password it must listen on loopback (the configuration refuses anything
// else) and answers only requests whose Host names loopback, against DNS
// rebinding. With a password every page but the login form and its style
// sheet needs a session cookie from a login. The status names tokens by
// their names: no response carries a token, a key or the password.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/homeport/homeport/relay"
)

// Defaults of Options.
const (
	DefaultInterval = 5 * time.Second
	DefaultWindow   = 15 * time.Minute
	DefaultPush     = 3 * time.Second
	// MaxStreams bounds the open event streams (one per open page).
	MaxStreams = 32
)

// Options configures a Dashboard.
type Options struct {
	// Password, when set, is required to log in; empty: no login, and
	// only requests whose Host is loopback are answered.
	Password string
	// Interval is the time between traffic samples, Window how far back
	// they go (DefaultInterval, DefaultWindow when zero).
	Interval, Window time.Duration
	// Push is the time between updates on the event stream
	// (DefaultPush when zero).
	Push time.Duration
	// Log receives failed logins (at Warn) and the like; nil discards.
	Log *slog.Logger
	// Now is the clock of sessions and login limits (time.Now when nil).
	Now func() time.Time
}

// Dashboard serves the web UI over a status source.
type Dashboard struct {
	src      func() relay.Status
	opts     Options
	log      *slog.Logger
	hist     *history
	sessions sessions
	limiter  loginLimiter
	static   fs.FS
	login    *template.Template

	streamMu sync.Mutex
	streams  int
}

//go:embed static
var staticFiles embed.FS

//go:embed login.html
var loginHTML string

// New returns a dashboard over src, which it calls for every sample and
// answer.
func New(src func() relay.Status, opts Options) (*Dashboard, error) {
	if src == nil {
		return nil, errors.New("dashboard: no status source")
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Window == 0 {
		opts.Window = DefaultWindow
	}
	if opts.Push == 0 {
		opts.Push = DefaultPush
	}
	if opts.Interval < 0 || opts.Window < opts.Interval || opts.Push < 0 {
		return nil, fmt.Errorf("dashboard: interval %v, window %v, push %v: want 0 < interval <= window and push > 0", opts.Interval, opts.Window, opts.Push)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, err
	}
	login, err := template.New("login").Parse(loginHTML)
	if err != nil {
		return nil, err
	}
	return &Dashboard{src: src, opts: opts, log: log, hist: newHistory(opts.Interval, opts.Window), static: static, login: login}, nil
}

// Run samples the status every Interval until ctx ends; it returns nil
// then.
func (d *Dashboard) Run(ctx context.Context) error {
	d.hist.add(d.src())
	t := time.NewTicker(d.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.hist.add(d.src())
		}
	}
}

// Payload is what /api/status answers and /api/events sends.
type Payload struct {
	Status  relay.Status `json:"status"`
	Traffic Traffic      `json:"traffic"`
	// Login: a password protects the dashboard, so the page offers to log
	// out.
	Login bool `json:"login"`
	// Push is the seconds between events on /api/events.
	Push float64 `json:"push"`
}

func (d *Dashboard) payload() Payload {
	return Payload{Status: d.src(), Traffic: d.hist.snapshot(), Login: d.opts.Password != "", Push: d.opts.Push.Seconds()}
}

// Handler returns the dashboard's HTTP handler.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	files := http.StripPrefix("/static/", http.FileServerFS(d.static))
	mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		files.ServeHTTP(w, r) // files only: {file} matches no directory
	})
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, d.static, "icon.svg") // for pages without the icon link
	})
	mux.HandleFunc("GET /login", d.loginPage)
	mux.HandleFunc("POST /login", d.loginPost)
	mux.HandleFunc("POST /logout", d.logout)
	mux.Handle("GET /{$}", d.authed(http.HandlerFunc(d.index), true))
	mux.Handle("GET /api/status", d.authed(http.HandlerFunc(d.apiStatus), false))
	mux.Handle("GET /api/events", d.authed(http.HandlerFunc(d.events), false))
	return d.guard(mux)
}

// guard sets the security headers on every answer and, without a
// password, refuses a Host that is not loopback.
func (d *Dashboard) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if d.opts.Password == "" && !loopbackHost(r.Host) {
			http.Error(w, "This dashboard has no password, so it answers only on loopback (http://127.0.0.1:PORT/ or http://localhost:PORT/). Set dashboard_password to reach it by another name.", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authed lets a request through when no password is set or it carries a
// live session; else a page is sent to the login form and the API
// answers 401.
func (d *Dashboard) authed(next http.Handler, page bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.loggedIn(r) {
			w.Header().Set("Cache-Control", "no-store")
			next.ServeHTTP(w, r)
			return
		}
		if page {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "log in first"})
	})
}

func (d *Dashboard) loggedIn(r *http.Request) bool {
	if d.opts.Password == "" {
		return true
	}
	c, err := r.Cookie(cookieName)
	return err == nil && d.sessions.valid(c.Value, d.opts.Now())
}

func (d *Dashboard) index(w http.ResponseWriter, r *http.Request) {
	http.ServeFileFS(w, r, d.static, "index.html")
}

func (d *Dashboard) apiStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, d.payload())
}

// loginView fills login.html.
type loginView struct {
	Error    string
	Failures int
	Window   string
	Status   int
}

func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	if d.opts.Password == "" || d.loggedIn(r) {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	d.renderLogin(w, loginView{Status: http.StatusOK})
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, v loginView) {
	v.Failures, v.Window = LoginFailures, "a minute"
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(v.Status)
	if err := d.login.Execute(w, v); err != nil {
		d.log.Debug("dashboard: login page", "err", err)
	}
}

func (d *Dashboard) loginPost(w http.ResponseWriter, r *http.Request) {
	if d.opts.Password == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if !sameOrigin(r) {
		http.Error(w, "cross-origin login refused", http.StatusForbidden)
		return
	}
	now, src := d.opts.Now(), source(r)
	if !d.limiter.allowed(src, now) {
		d.renderLogin(w, loginView{Status: http.StatusTooManyRequests,
			Error: "Too many wrong passwords from your address: wait a minute, then try again."})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if !samePassword(r.PostFormValue("password"), d.opts.Password) {
		limited, news := d.limiter.fail(src, now)
		switch {
		case news:
			d.log.Warn("dashboard: failed logins; refusing logins from this address for a while", "source", src, "failures", LoginFailures, "for", LoginWindow)
		case !limited:
			d.log.Warn("dashboard: failed login", "source", src)
		}
		d.renderLogin(w, loginView{Status: http.StatusUnauthorized, Error: "Wrong password."})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: d.sessions.create(now), Path: "/",
		MaxAge: int(SessionTTL / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	d.log.Info("dashboard: login", "source", src)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "cross-origin logout refused", http.StatusForbidden)
		return
	}
	if c, err := r.Cookie(cookieName); err == nil {
		d.sessions.end(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// events streams the payload as server-sent events every Push until the
// client goes, the server stops, or the session ends.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request) {
	d.streamMu.Lock()
	if d.streams >= MaxStreams {
		d.streamMu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "too many open dashboards; poll /api/status"})
		return
	}
	d.streams++
	d.streamMu.Unlock()
	defer func() {
		d.streamMu.Lock()
		d.streams--
		d.streamMu.Unlock()
	}()

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	t := time.NewTicker(d.opts.Push)
	defer t.Stop()
	for {
		b, err := json.Marshal(d.payload())
		if err != nil {
			return
		}
		// A client that cannot take an update in a whole push interval
		// and then some is stuck: give up on it.
		_ = rc.SetWriteDeadline(time.Now().Add(d.opts.Push + 10*time.Second))
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", b); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		if !d.loggedIn(r) {
			return // logged out or expired: the page reloads to the login form
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
