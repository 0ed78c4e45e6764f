package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestWebHostRouting: two agents serve two names (and one a wildcard) on
// one relay's HTTP port; each name reaches its own target. An unknown name
// gets 404, a name the token may not claim and a name another agent holds
// are refused at registration, and a name whose agent is gone gets 502;
// no page names anything internal.
func TestWebHostRouting(t *testing.T) { forEachTransport(t, testWebHostRouting) }

func testWebHostRouting(t *testing.T, tr string) {
	leak.Check(t)
	r := startWebRelay(t, nil, nil)
	r.transport = tr
	nas, web, wild := startWebTarget(t, "nas"), startWebTarget(t, "web"), startWebTarget(t, "wild")
	cfgA := agentConfig(r.relayHandle, webTunnel("nas", "http", "NAS.example.com.", nas.addr))
	cfgA.ID = "agent-a"
	a := startAgent(t, cfgA)
	a.waitSession(10 * time.Second)
	cfgB := agentConfig(r.relayHandle, webTunnel("web", "http", "web.example.com", web.addr),
		webTunnel("all", "http", "*.home.example.com", wild.addr),
		webTunnel("taken", "http", "nas.example.com", web.addr),
		webTunnel("foreign", "http", "nas.example.org", web.addr))
	cfgB.ID = "agent-b"
	b := startAgent(t, cfgB)
	si := b.waitAny(10 * time.Second)
	codes := map[string]tunnel.TunnelResult{}
	for _, res := range si.Results {
		codes[res.Name] = res
	}
	if c := codes["web"]; c.Code != tunnel.CodeOK || c.Message != "web.example.com" {
		t.Errorf("web: %+v", c)
	}
	if c := codes["taken"]; c.Code != tunnel.CodeHostInUse || !strings.Contains(c.Message, `host "nas.example.com" is already served by tunnel "nas" of agent "agent-a"`) {
		t.Errorf("taken: %+v", c)
	}
	if c := codes["foreign"]; c.Code != tunnel.CodeHostNotAllowed || !strings.Contains(c.Message, `host "nas.example.org" is not in the hosts of token "default" (*.example.com)`) {
		t.Errorf("foreign: %+v", c)
	}

	c := r.client(t, nil, false)
	port := r.httpAddr[strings.LastIndex(r.httpAddr, ":"):]
	for host, who := range map[string]string{"nas.example.com": "nas", "web.example.com": "web", "a.home.example.com": "wild", "x.y.home.example.com": "wild"} {
		code, body, _ := get(t, c, "http://"+host+port+"/", nil)
		if code != 200 || seen(t, body).Who != who {
			t.Errorf("%s: %d %s; want %s's target", host, code, body, who)
		}
	}
	// Both ends show the tunnels with their host names.
	var rs, as strings.Builder
	r.srv.Status().WriteText(&rs)
	b.agent.Status().WriteText(&as)
	if !contains(rs.String(), "http://nas.example.com", "http://web.example.com", "http://*.home.example.com", "default/agent-b") {
		t.Errorf("relay status:\n%s", rs.String())
	}
	if !contains(as.String(), "http://web.example.com", "http://*.home.example.com", "host in use", "host not allowed") {
		t.Errorf("agent status:\n%s", as.String())
	}
	for _, ts := range r.srv.Status().Tunnels {
		if ts.Host == "web.example.com" && (ts.Accepted != 1 || ts.BytesIn == 0 || ts.BytesOut == 0) {
			t.Errorf("web's counters: %+v", ts)
		}
	}
	code, body, _ := get(t, c, "http://unknown.example.com"+port+"/", nil)
	if code != 404 || strings.Contains(body, "127.0.0.1") {
		t.Errorf("unknown name: %d %q", code, body)
	}

	// The agent of nas leaves: its name answers 502 while it is kept
	// for its token, naming no address.
	a.stop()
	waitFor(t, 10*time.Second, "nas.example.com to go", func() bool {
		code, body, _ = get(t, c, "http://nas.example.com"+port+"/", nil)
		return code != 200
	})
	if code != 502 || strings.Contains(body, nas.addr) || strings.Contains(body, "agent-a") {
		t.Errorf("agent gone: %d %q; want 502 naming nothing internal", code, body)
	}
	// The target of web stops: 502 too.
	web.srv.Close()
	code, body, _ = get(t, c, "http://web.example.com"+port+"/", nil)
	if code != 502 || strings.Contains(body, web.addr) {
		t.Errorf("target gone: %d %q; want 502 naming nothing internal", code, body)
	}
}

// TestWebForwardedHeaders: the target sees the visitor in X-Forwarded-For,
// X-Forwarded-Host, X-Forwarded-Proto and Forwarded, made by the relay;
// what the visitor sent in them is gone. Through plain HTTP and through
// TLS the relay terminates.
func TestWebForwardedHeaders(t *testing.T) {
	leak.Check(t)
	certs := newTestCerts(t)
	r := startWebRelay(t, certs, nil)
	target := startWebTarget(t, "nas")
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a.waitSession(10 * time.Second)
	spoof := http.Header{"X-Forwarded-For": {"203.0.113.66"}, "Forwarded": {"for=203.0.113.66;proto=https"},
		"X-Forwarded-Host": {"evil.example"}, "X-Forwarded-Proto": {"gopher"}, "X-Real-Ip": {"203.0.113.66"}}
	for _, scheme := range []string{"http", "https"} {
		addr := r.httpAddr
		if scheme == "https" {
			addr = r.httpsAddr
		}
		host := "nas.example.com" + addr[strings.LastIndex(addr, ":"):]
		// Plain HTTP is redirected to HTTPS when the relay terminates TLS.
		code, body, resp := get(t, r.client(t, certs.ca, false), scheme+"://"+host+"/path?q=1", spoof)
		if scheme == "http" {
			want := "https://nas.example.com" + r.httpsAddr[strings.LastIndex(r.httpsAddr, ":"):] + "/path?q=1"
			if code != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
				t.Fatalf("plain HTTP: %d to %q; want 308 to %q", code, resp.Header.Get("Location"), want)
			}
			continue
		}
		if code != 200 {
			t.Fatalf("%s: %d %s", scheme, code, body)
		}
		s := seen(t, body)
		want := map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": host, "X-Forwarded-Proto": scheme,
			"Forwarded": fmt.Sprintf("for=127.0.0.1;host=%q;proto=%s", host, scheme)}
		for k, v := range want {
			if got := s.Header[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: target saw %s %q; want %q", scheme, k, got, v)
			}
		}
		if s.Host != host {
			t.Errorf("%s: target saw Host %q; want %q", scheme, s.Host, host)
		}
	}
	// Without termination, plain HTTP reaches the target, and the
	// visitor's headers are replaced there too.
	r2 := startWebRelay(t, nil, nil)
	a2 := startAgent(t, agentConfig(r2.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a2.waitSession(10 * time.Second)
	host := "nas.example.com" + r2.httpAddr[strings.LastIndex(r2.httpAddr, ":"):]
	code, body, _ := get(t, r2.client(t, nil, false), "http://"+host+"/", spoof)
	if code != 200 {
		t.Fatalf("plain: %d %s", code, body)
	}
	s := seen(t, body)
	for k, v := range map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": host, "X-Forwarded-Proto": "http",
		"Forwarded": fmt.Sprintf("for=127.0.0.1;host=%q;proto=http", host)} {
		if got := s.Header[k]; len(got) != 1 || got[0] != v {
			t.Errorf("plain: target saw %s %q; want %q", k, got, v)
		}
	}
}

// TestWebSocketEcho: a WebSocket connection through an http tunnel.
func TestWebSocketEcho(t *testing.T) {
	leak.Check(t)
	r := startWebRelay(t, nil, nil)
	target := startWebTarget(t, "nas")
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a.waitSession(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := r.client(t, nil, true)
	ws, _, err := websocket.Dial(ctx, "ws://nas.example.com/ws", &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil || string(got) != "nas: "+msg {
			t.Fatalf("echo %q, %v", got, err)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
}

// TestWebLargeTransfer: 64 MiB up and down, hashed at both ends, through
// plain HTTP and through TLS the relay terminates (HTTP/2).
func TestWebLargeTransfer(t *testing.T) {
	leak.Check(t)
	const size = 64 << 20
	certs := newTestCerts(t)
	plain := startWebRelay(t, nil, nil)
	tls := startWebRelay(t, certs, nil)
	target := startWebTarget(t, "nas")
	for _, r := range []*webRelay{plain, tls} {
		a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
		a.waitSession(10 * time.Second)
	}
	want := patternSum(9, size)
	for _, c := range []struct {
		name, url string
		r         *webRelay
	}{{"plain", "http://nas.example.com", plain}, {"tls", "https://nas.example.com", tls}} {
		client := c.r.client(t, certs.ca, false)
		resp, err := client.Post(c.url+"/upload", "application/octet-stream", io.LimitReader(newPattern(9), size))
		if err != nil {
			t.Fatalf("%s upload: %v", c.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := string(b); got != fmt.Sprintf("%d %s", size, want) {
			t.Errorf("%s upload: target got %q; want %d bytes hashing to %s", c.name, got, size, want)
		}
		resp, err = client.Get(fmt.Sprintf("%s/download?n=%d", c.url, size))
		if err != nil {
			t.Fatalf("%s download: %v", c.name, err)
		}
		h := newHash()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || n != size || h.sum() != patternSum(7, size) {
			t.Errorf("%s download: %d bytes, %v, sha256 %s; want %d bytes, %s", c.name, n, err, h.sum(), size, patternSum(7, size))
		}
		if c.name == "tls" && resp.Proto != "HTTP/2.0" {
			t.Errorf("tls: %s; want HTTP/2.0", resp.Proto)
		}
	}
}

// TestWebTLSTermination: an http tunnel's name over TLS the relay
// terminates with its Certificates, verified by the test CA: HTTP/2 and
// HTTP/1.1, from Go and from curl. The name was prepared when it was
// registered; ACME's HTTP-01 path on the HTTP port is the manager's.
func TestWebTLSTermination(t *testing.T) {
	leak.Check(t)
	certs := newTestCerts(t)
	r := startWebRelay(t, certs, nil)
	target := startWebTarget(t, "nas")
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a.waitSession(10 * time.Second)
	select {
	case n := <-certs.prepared:
		if n != "nas.example.com" {
			t.Errorf("prepared %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not prepare a certificate for nas.example.com")
	}
	for _, http1 := range []bool{false, true} {
		code, body, resp := get(t, r.client(t, certs.ca, http1), "https://nas.example.com/", nil)
		want := "HTTP/2.0"
		if http1 {
			want = "HTTP/1.1"
		}
		if code != 200 || seen(t, body).Who != "nas" || resp.Proto != want {
			t.Errorf("Go client, %s: %d %s %q", want, code, resp.Proto, body)
		}
		if resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName != "homeport test CA" {
			t.Errorf("%s: not the test CA's certificate", want)
		}
	}
	caFile := writeFileT(t, "ca.pem", certs.ca.pem)
	_, port, _ := net.SplitHostPort(r.httpsAddr)
	for _, v := range []struct{ flag, want string }{{"--http2", "2"}, {"--http1.1", "1.1"}} {
		out, err := runCurl(t, v.flag, "--cacert", caFile, "--resolve", "nas.example.com:"+port+":127.0.0.1",
			"-w", "\n%{http_version} %{http_code}", "https://nas.example.com:"+port+"/")
		if err != nil || !strings.HasSuffix(out, "\n"+v.want+" 200") || !strings.Contains(out, `"who":"nas"`) {
			t.Errorf("curl %s: %v\n%s", v.flag, err, out)
		}
	}
	// Without the CA, curl refuses the certificate: it is verified.
	if out, err := runCurl(t, "--resolve", "nas.example.com:"+port+":127.0.0.1", "https://nas.example.com:"+port+"/"); err == nil {
		t.Errorf("curl trusted the test certificate without the CA:\n%s", out)
	}
	code, body, _ := get(t, r.client(t, nil, false), "http://nas.example.com/.well-known/acme-challenge/x", nil)
	if code != 200 || body != "challenge answered" {
		t.Errorf("ACME challenge path: %d %q", code, body)
	}
}

// TestWebUnknownNamesAskNoCertificate: a burst of TLS handshakes for
// random names, and none, is refused without one call to Certificates;
// garbage in place of a ClientHello is closed; the relay goes on serving.
func TestWebUnknownNamesAskNoCertificate(t *testing.T) {
	leak.Check(t)
	certs := newTestCerts(t)
	r := startWebRelay(t, certs, nil)
	target := startWebTarget(t, "nas")
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a.waitSession(10 * time.Second)
	for i := range 50 {
		name := fmt.Sprintf("x%x.example.com", rand.Text()[:8])
		if i%10 == 0 {
			name = ""
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{ServerName: name, InsecureSkipVerify: name == "", RootCAs: certs.ca.pool}}
		c, err := d.DialContext(context.Background(), "tcp", r.httpsAddr)
		if err == nil {
			c.Close()
			t.Fatalf("handshake for %q succeeded", name)
		}
	}
	if n := certs.calls.Load(); n != 0 {
		t.Errorf("%d calls to Certificates for names not served; want none", n)
	}
	for _, garbage := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: nas.example.com\r\n\r\n"),
		{0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xff},
		bytes.Repeat([]byte{0x16, 0x03, 0x03, 0x00, 0x01, 0x01}, 100),
	} {
		c, err := net.Dial("tcp", r.httpsAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(garbage)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if n, err := io.Copy(io.Discard, c); err != nil && !isReset(err) || n != 0 {
			t.Errorf("garbage %q: read %d bytes, %v; want the connection closed", garbage[:8], n, err)
		}
		c.Close()
	}
	code, _, _ := get(t, r.client(t, certs.ca, false), "https://nas.example.com/", nil)
	if code != 200 {
		t.Errorf("after the burst: %d", code)
	}
}

// isReset reports whether err is a connection reset by the peer.
func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

// TestWebBasicAuth: an http tunnel with auth: the relay answers 401
// without credentials or with wrong ones, and nothing reaches the target;
// the right ones pass, and the target does not see them.
func TestWebBasicAuth(t *testing.T) {
	leak.Check(t)
	r := startWebRelay(t, nil, func(c *config.Relay) { c.Guard.VisitorBanAfter, c.Guard.VisitorBanFor = 5, time.Minute })
	target := startWebTarget(t, "nas")
	tun := webTunnel("nas", "http", "nas.example.com", target.addr)
	tun.Auth = "anna:correct horse battery staple"
	a := startAgent(t, agentConfig(r.relayHandle, tun))
	a.waitSession(10 * time.Second)
	c := r.client(t, nil, false)
	for _, cred := range []string{"", "anna:wrong", "bob:correct horse battery staple"} {
		req, _ := http.NewRequest("GET", "http://nas.example.com/", nil)
		if user, pass, ok := strings.Cut(cred, ":"); ok {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `Basic realm="nas.example.com"`) {
			t.Errorf("credentials %q: %d %q; want 401", cred, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	if n := target.requests.Load(); n != 0 {
		t.Errorf("%d unauthenticated requests reached the target", n)
	}
	req, _ := http.NewRequest("GET", "http://nas.example.com/", nil)
	req.SetBasicAuth("anna", "correct horse battery staple")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || target.requests.Load() != 1 {
		t.Fatalf("right credentials: %d %s", resp.StatusCode, body)
	}
	if s := seen(t, string(body)); len(s.Header["Authorization"]) != 0 {
		t.Errorf("the target saw the credentials: %q", s.Header["Authorization"])
	}
	// Guessing: the fifth wrong password (two were above) bans the
	// address, on this connection and new ones, right password or not.
	codes := []int{}
	for _, pass := range []string{"guess1", "guess2", "guess3", "correct horse battery staple"} {
		req, _ := http.NewRequest("GET", "http://nas.example.com/", nil)
		req.SetBasicAuth("anna", pass)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[401 401 403 403]" || target.requests.Load() != 1 {
		t.Errorf("guessing: %v, %d requests at the target; want [401 401 403 403], 1", codes, target.requests.Load())
	}
}

// TestWebDenyList: a web tunnel's deny list keeps the visitor out: an http
// tunnel answers 403 and its target sees nothing; an https tunnel's
// connection is closed before anything reaches the agent.
func TestWebDenyList(t *testing.T) {
	leak.Check(t)
	r := startWebRelay(t, nil, nil)
	target := startWebTarget(t, "nas")
	passTarget, accepted := countingEcho(t)
	deny := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	h := webTunnel("nas", "http", "nas.example.com", target.addr)
	h.Deny = deny
	p := webTunnel("tls", "https", "tls.example.com", passTarget)
	p.Deny = deny
	a := startAgent(t, agentConfig(r.relayHandle, h, p))
	a.waitSession(10 * time.Second)
	code, body, _ := get(t, r.client(t, nil, false), "http://nas.example.com/", nil)
	if code != 403 || target.requests.Load() != 0 {
		t.Errorf("denied visitor: %d %q, %d requests at the target", code, body, target.requests.Load())
	}
	d := &tls.Dialer{Config: &tls.Config{ServerName: "tls.example.com", InsecureSkipVerify: true}}
	if c, err := d.DialContext(context.Background(), "tcp", r.httpsAddr); err == nil {
		c.Close()
		t.Error("denied visitor's TLS connection went through")
	}
	if accepted.Load() != 0 {
		t.Errorf("the https tunnel's target got %d connections", accepted.Load())
	}
	waitFor(t, 10*time.Second, "the refusals in the status", func() bool {
		n := int64(0)
		for _, ts := range r.srv.Status().Tunnels {
			n += ts.Refused
		}
		return n == 2
	})
}

// TestWebAgentOldRelay: a relay without FeatureWeb is sent no RegisterWeb;
// the web tunnel is refused by the agent itself ("upgrade the relay"),
// and its TCP tunnel works.
func TestWebAgentOldRelay(t *testing.T) {
	leak.Check(t)
	target, _ := countingEcho(t)
	r := startWireRelay(t, config.TransportTCP, tunnel.FeatureUnregister|tunnel.FeaturePrivate)
	a := startAgent(t, r.agentConfig(config.TransportTCP, tcpTunnel("ssh", freePort(t), target), webTunnel("nas", "http", "nas.example.com", target)))
	si := a.waitAny(10 * time.Second)
	if len(si.Results) != 2 || si.Results[0].Code != tunnel.CodeOK || si.Results[1].Code != tunnel.CodeVersion ||
		si.Results[1].Message != "the relay does not serve web tunnels (http, https): upgrade the relay" {
		t.Fatalf("results %+v", si.Results)
	}
	for _, m := range r.messages() {
		if _, ok := m.(*tunnel.RegisterWeb); ok {
			t.Errorf("an old relay was sent %+v", m)
		}
	}
	st, res := r.open(&tunnel.Open{Tunnel: "ssh", Visitor: "192.0.2.1:1000", Public: "127.0.0.1:1"})
	if res.Code != tunnel.CodeOK {
		t.Fatalf("TCP tunnel: %+v", res)
	}
	expectStreamEcho(t, st)
	var b strings.Builder
	a.agent.Status().WriteText(&b)
	if !contains(b.String(), "http://nas.example.com", "upgrade the relay") {
		t.Errorf("status:\n%s", b.String())
	}
}

// TestWebSessionReplacement: a new session of the same agent id takes its
// names over at once, as it takes its ports; another id may not.
func TestWebSessionReplacement(t *testing.T) {
	leak.Check(t)
	r := startWebRelay(t, nil, nil)
	one, two := startWebTarget(t, "one"), startWebTarget(t, "two")
	a1 := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", one.addr)))
	a1.waitSession(10 * time.Second)
	other := agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", two.addr))
	other.ID = "someone-else"
	a3 := startAgent(t, other)
	if si := a3.waitAny(10 * time.Second); si.Results[0].Code != tunnel.CodeHostInUse {
		t.Fatalf("another agent id: %+v; want host in use", si.Results)
	}
	a3.stop()
	a2 := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", two.addr)))
	a2.waitSession(10 * time.Second)
	c := r.client(t, nil, false)
	waitFor(t, 10*time.Second, "the new session to serve nas.example.com", func() bool {
		code, body, _ := get(t, c, "http://nas.example.com/", nil)
		return code == 200 && seen(t, body).Who == "two"
	})
}

// TestWebReloadShrinksHosts: a relay reload that takes a name from the
// token's hosts ends the session of the agent serving it, told why.
func TestWebReloadShrinksHosts(t *testing.T) {
	leak.Check(t)
	r := startWebRelay(t, nil, nil)
	target := startWebTarget(t, "nas")
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "http", "nas.example.com", target.addr)))
	a.waitSession(10 * time.Second)
	next := r.cfg
	next.Tokens = []config.Token{{Name: "default", Secret: testToken, Hosts: []string{"*.example.org"}}}
	id := r.id
	id.Tokens = next.Tokens
	if _, _, err := r.srv.Reload(next, id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the agent to be told", func() bool {
		return strings.Contains(a.logs.String(), `the relay said: host not allowed: the relay's configuration changed: host \"nas.example.com\" is not in the hosts of token \"default\" (*.example.org)`)
	})
	code, _, _ := get(t, r.client(t, nil, false), "http://nas.example.com/", nil)
	if code == 200 {
		t.Error("nas.example.com is still served")
	}
}
