package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// The HTTP side of web tunnels: one net/http server for http_addr, and
// one for the TLS connections the relay terminates on https_addr, with
// one handler that routes each request by its Host to the tunnel's
// reverse proxy, whose transport dials a stream to the agent.

// Limits of the web servers: the visitors are the open internet.
const (
	webMaxHeaderBytes    = 64 << 10
	webReadHeaderTimeout = 10 * time.Second
	webIdleTimeout       = 2 * time.Minute
	// webIdleStreams is how many idle streams per http tunnel the proxy
	// keeps for the next requests.
	webIdleStreams = 16
)

// webConnState is what the relay knows of one visitor connection on a web
// port: its address, and the tunnels whose guard admitted it (each
// released, with the port's own guard, when the connection closes).
type webConnState struct {
	ip     netip.Addr
	remote string
	local  string
	port   *visitorGuard // the web port's guard, which admitted it

	mu       sync.Mutex
	admitted map[*webTunnel]bool
	closed   bool
}

// admit counts the connection with t's guard once, at its first request
// (or TLS connection) for t.
func (cs *webConnState) admit(t *webTunnel) (ok bool, why string, banned bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.admitted[t] {
		// Admitted with its connection; banned since (wrong passwords)?
		if t.guard.isBanned(cs.ip) {
			return false, "banned for too many connections", false
		}
		return true, "", false
	}
	if cs.closed {
		return false, "connection closed", false
	}
	if ok, why, banned = t.guard.admit(cs.ip); !ok {
		return false, why, banned
	}
	if cs.admitted == nil {
		cs.admitted = make(map[*webTunnel]bool)
	}
	cs.admitted[t] = true
	return true, "", false
}

// release gives back every admission; the connection has closed.
func (cs *webConnState) release() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return
	}
	cs.closed = true
	for t := range cs.admitted {
		t.guard.release(cs.ip)
	}
	cs.port.release(cs.ip)
}

// webConn is a visitor connection on a web port.
type webConn struct {
	*net.TCPConn
	state *webConnState
}

func (c *webConn) Close() error {
	err := c.TCPConn.Close()
	c.state.release()
	return err
}

// webStated is a connection that carries its webConnState.
type webStated interface{ webState() *webConnState }

func (c *webConn) webState() *webConnState { return c.state }

// stateOf finds the webConnState of a connection of a web server.
func stateOf(c net.Conn) *webConnState {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if w, ok := c.(webStated); ok {
		return w.webState()
	}
	return nil
}

type webStateKey struct{}

// webListener admits the connections of a web port through its guard
// before anything is read, and wraps them as webConns.
type webListener struct {
	net.Listener
	srv   *Server
	guard *visitorGuard
	where string
}

func (l *webListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			delay = nextAcceptDelay(delay)
			l.srv.log.Warn("accept web visitor", "port", l.where, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if wc := l.srv.admitWeb(c.(*net.TCPConn), l.guard, l.where); wc != nil {
			return wc, nil
		}
	}
}

// admitWeb counts c with the guard of its web port, or closes it.
func (s *Server) admitWeb(c *net.TCPConn, g *visitorGuard, where string) *webConn {
	ip := addrOf(c.RemoteAddr())
	if ok, why, banned := g.admit(ip); !ok {
		_ = c.SetLinger(0)
		c.Close()
		s.metrics.refused.WithLabelValues("", where, refusalReason(why)).Inc()
		s.refusals.add(RefusalStatus{Time: time.Now(), Where: where, Addr: c.RemoteAddr().String(), Reason: why, Banned: banned})
		if banned {
			s.log.Warn("visitor address banned from web port", "port", where, "visitor", c.RemoteAddr().String(), "reason", why)
		}
		return nil
	}
	return &webConn{TCPConn: c, state: &webConnState{ip: ip, remote: c.RemoteAddr().String(), local: c.LocalAddr().String(), port: g}}
}

// chanListener hands the web server connections accepted elsewhere: the
// TLS connections the relay terminates, after their SNI was read.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// hand gives c to the server, or closes it if the server has stopped.
func (l *chanListener) hand(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

// listenWeb opens http_addr and https_addr, as configured.
func (s *Server) listenWeb() error {
	lc := s.conf()
	if lc.HTTPAddr != "" {
		ln, err := net.Listen("tcp", lc.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http_addr %s: %w", lc.HTTPAddr, err)
		}
		s.httpLn = ln
		s.webGuards = append(s.webGuards, newVisitorGuard(lc.Guard, nil, nil))
	}
	if lc.HTTPSAddr != "" {
		ln, err := net.Listen("tcp", lc.HTTPSAddr)
		if err != nil {
			if s.httpLn != nil {
				s.httpLn.Close()
			}
			return fmt.Errorf("https_addr %s: %w", lc.HTTPSAddr, err)
		}
		s.httpsLn = ln
		s.webGuards = append(s.webGuards, newVisitorGuard(lc.Guard, nil, nil))
	}
	return nil
}

// WebAddrs returns the addresses of the HTTP and HTTPS ports of web
// tunnels (nil: not open), after Listen.
func (s *Server) WebAddrs() (httpAddr, httpsAddr net.Addr) {
	if s.httpLn != nil {
		httpAddr = s.httpLn.Addr()
	}
	if s.httpsLn != nil {
		httpsAddr = s.httpsLn.Addr()
	}
	return httpAddr, httpsAddr
}

// newWebServer returns an http.Server for the web ports.
func (s *Server) newWebServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    webMaxHeaderBytes,
		ReadHeaderTimeout: webReadHeaderTimeout,
		IdleTimeout:       webIdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.With("port", "web").Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, webStateKey{}, stateOf(c))
		},
	}
}

// serveWeb serves the web ports until ctx ends. stopAccept stops taking
// TLS connections and returns once nothing more joins s.visitors (call it
// before shutdown waits for them); drain then lets the open requests end,
// for up to the shutdown time, and waits.
func (s *Server) serveWeb(ctx context.Context) (stopAccept, drain func()) {
	if s.httpLn == nil && s.httpsLn == nil {
		return func() {}, func() {}
	}
	var wg, accepting sync.WaitGroup
	var servers []*http.Server
	var tlsLn *chanListener
	if s.httpLn != nil {
		var h http.Handler = http.HandlerFunc(s.serveWebRequest)
		if s.certs != nil {
			h = s.certs.HTTPHandler(h)
		}
		srv := s.newWebServer(h)
		servers = append(servers, srv)
		ln := &webListener{Listener: s.httpLn, srv: s, guard: s.webGuards[0], where: "http port"}
		s.log.Info("relay serving web tunnels", "addr", s.httpLn.Addr().String(), "protocol", "http")
		wg.Go(func() { _ = srv.Serve(ln) })
	}
	if s.httpsLn != nil {
		tlsLn = &chanListener{addr: s.httpsLn.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
		srv := s.newWebServer(http.HandlerFunc(s.serveWebRequest))
		servers = append(servers, srv)
		wg.Go(func() { _ = srv.Serve(tlsLn) })
		g := s.webGuards[len(s.webGuards)-1]
		s.log.Info("relay serving web tunnels", "addr", s.httpsLn.Addr().String(), "protocol", "https", "terminates_tls", s.certs != nil)
		accepting.Go(func() { s.acceptTLS(ctx, g, tlsLn) })
	}
	stopAccept = func() {
		if s.httpsLn != nil {
			s.httpsLn.Close()
		}
		accepting.Wait()
	}
	return stopAccept, func() {
		// Open requests drain for up to the shutdown time, as visitor
		// connections do (see shutdown); Close ends what is left.
		var drained sync.WaitGroup
		for _, srv := range servers {
			drained.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), s.conf().ShutdownTimeout)
				_ = srv.Shutdown(ctx)
				cancel()
				srv.Close()
			})
		}
		drained.Wait()
		if tlsLn != nil {
			tlsLn.Close()
		}
		wg.Wait()
	}
}

// page answers with a plain page that names nothing internal.
func page(w http.ResponseWriter, code int, words string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s\n\n%s\n", code, http.StatusText(code), words)
}

// requestHost returns r's host name, normalized, or "" if it has none
// or an invalid one.
func requestHost(r *http.Request) string {
	h := r.Host
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	if len(h) > config.MaxHostLen+1 {
		return ""
	}
	n, err := config.NormalizeHost(h, false, false)
	if err != nil {
		return ""
	}
	return n
}

// serveWebRequest routes one request on a web port by its Host.
func (s *Server) serveWebRequest(w http.ResponseWriter, r *http.Request) {
	host := requestHost(r)
	var t *webTunnel
	var reserved bool
	if host != "" {
		t, reserved = s.lookupWeb(host)
	}
	switch {
	case t == nil && reserved:
		page(w, http.StatusBadGateway, "The web app under this name cannot be reached now. Try again later.")
		return
	case t == nil:
		page(w, http.StatusNotFound, "No web app is served under this name here.")
		return
	case r.TLS == nil && (t.proto == tunnel.ProtoHTTPS || s.terminating()):
		if s.httpsLn == nil {
			page(w, http.StatusNotFound, "No web app is served under this name here.")
			return
		}
		u := *r.URL
		u.Scheme, u.Host = "https", host+webPortSuffix(s.httpsLn, 443)
		http.Redirect(w, r, u.String(), http.StatusPermanentRedirect)
		return
	case t.proto != tunnel.ProtoHTTP:
		page(w, http.StatusNotFound, "No web app is served under this name here.")
		return
	}
	cs, _ := r.Context().Value(webStateKey{}).(*webConnState)
	if cs == nil {
		page(w, http.StatusInternalServerError, "")
		return
	}
	if ok, why, banned := cs.admit(t); !ok {
		t.refused(cs.remote, why, banned)
		code := http.StatusForbidden
		if strings.HasPrefix(why, "too many") {
			code = http.StatusTooManyRequests
		}
		w.Header().Set("Connection", "close")
		page(w, code, "This address may not reach this web app now.")
		return
	}
	if !t.checkAuth(r) {
		if _, _, given := r.BasicAuth(); given && t.guard.strike(cs.ip) {
			// Guessing passwords: banned like a flood of connections.
			t.refused(cs.remote, "too many wrong passwords", true)
			w.Header().Set("Connection", "close")
			page(w, http.StatusForbidden, "This address may not reach this web app now.")
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", host))
		page(w, http.StatusUnauthorized, "This web app needs a user name and a password.")
		return
	}
	t.stats.visitors.Add(1)
	t.stats.accepted.Add(1)
	defer t.stats.visitors.Add(-1)
	t.proxy.ServeHTTP(w, r)
}

// refused logs and counts a visitor the tunnel's guard turned away.
func (t *webTunnel) refused(visitor, why string, banned bool) {
	t.stats.refusal(banned)
	t.owner.srv.metrics.refused.WithLabelValues(t.owner.key.token, t.name, refusalReason(why)).Inc()
	t.owner.logRefusal(t.name, visitor, why, banned)
}

// makeProxy gives an http tunnel its reverse proxy: each request goes to
// the agent over a stream of the tunnel (kept for the next request when
// it is done), with the visitor named in X-Forwarded-For, Forwarded and
// the stream's Open; what visitors sent in those headers is dropped.
func (s *Server) makeProxy(t *webTunnel) {
	t.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			cs, _ := ctx.Value(webStateKey{}).(*webConnState)
			visitor, public := "", ""
			if cs != nil {
				visitor, public = cs.remote, cs.local
			}
			st, err := t.dialAgent(ctx, visitor, public)
			if err != nil {
				return nil, err
			}
			return &countedStream{Stream: st, in: &t.stats.bytesIn, out: &t.stats.bytesOut}, nil
		},
		MaxIdleConnsPerHost: webIdleStreams,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// The relay speaks HTTP/1.1 to the target: one stream per
		// request at a time, reused after it.
		ForceAttemptHTTP2: false,
	}
	t.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Forwarded and X-Forwarded-* of the visitor are gone
			// already (Rewrite's contract).
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = t.host
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set("Forwarded", forwarded(pr.In))
			if t.auth.User != "" {
				pr.Out.Header.Del("Authorization")
			}
		},
		Transport: t.transport,
		ErrorLog:  slog.NewLogLogger(t.owner.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			level := slog.LevelWarn
			if errors.Is(err, context.Canceled) {
				level = slog.LevelDebug
			}
			t.owner.log.Log(context.Background(), level, "web request failed", "tunnel", t.name, "host", t.host, "visitor", r.RemoteAddr, "err", err)
			page(w, http.StatusBadGateway, "The web app under this name cannot be reached now. Try again later.")
		},
	}
}

// forwarded is the RFC 7239 Forwarded header of the relay's hop.
func forwarded(r *http.Request) string {
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	forIP := "unknown"
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		if a := ap.Addr().Unmap(); a.Is4() {
			forIP = a.String()
		} else {
			forIP = `"[` + a.String() + `]"`
		}
	}
	return fmt.Sprintf("for=%s;host=%s;proto=%s", forIP, quoteForwarded(r.Host), proto)
}

// quoteForwarded returns v as a Forwarded token, or quoted if it is not
// one.
func quoteForwarded(v string) string {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return fmt.Sprintf("%q", v)
		}
	}
	return v
}

// countedStream counts the bytes of an http tunnel's stream: written to
// the agent (in, from visitors) and read from it (out).
type countedStream struct {
	tunnel.Stream
	in, out *atomic.Int64
}

func (c *countedStream) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	c.out.Add(int64(n))
	return n, err
}

func (c *countedStream) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	c.in.Add(int64(n))
	return n, err
}
