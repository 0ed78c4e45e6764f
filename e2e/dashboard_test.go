//go:build unix

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/relay/dashboard"
)

// dashPassword is the dashboard password of these tests.
const dashPassword = "dashboard-password-e2e-0123"

var dashURLRE = regexp.MustCompile(`msg="dashboard listening".*? url=(https?://127\.0\.0\.1:\d+/)`)

// binStartDashboard starts a relay whose dashboard, on a free loopback
// port, needs dashPassword (from a file), and returns it with its banner,
// its data directory and the dashboard's URL.
func binStartDashboard(t *testing.T, extra ...string) (r *binProc, b binBanner, dataDir, dashURL string) {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "dashboard-password")
	if err := os.WriteFile(pwFile, []byte(dashPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir = filepath.Join(t.TempDir(), "data")
	r, b = binStartRelay(t, dataDir, freePort(t), append([]string{"--dashboard-addr", "127.0.0.1:0", "--dashboard-password-file", pwFile}, extra...)...)
	var m []string
	r.await(15*time.Second, "the dashboard's URL in the relay's log", func() bool {
		m = dashURLRE.FindStringSubmatch(r.stderr.String())
		return m != nil
	})
	return r, b, dataDir, m[1]
}

// relaySecrets are the strings no dashboard answer may hold: the token,
// the dashboard password, and the relay's private key, whole and line by
// line (a JSON string would join its lines with \n).
func relaySecrets(t *testing.T, b binBanner, dataDir string) map[string]string {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dataDir, relay.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	s := map[string]string{"the token": b.token, "the dashboard password": dashPassword, "the private key": string(key)}
	for i, l := range strings.Split(string(key), "\n") {
		if len(l) >= 16 && !strings.HasPrefix(l, "-----") {
			s[fmt.Sprintf("line %d of the private key", i+1)] = l
		}
	}
	return s
}

func checkNoSecrets(t *testing.T, what, text string, secrets map[string]string) {
	t.Helper()
	for name, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds %s", what, name)
		}
	}
}

// dashClient is an HTTP client of the dashboard that keeps its cookie and
// shows redirects instead of following them.
func dashClient() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar: jar, Timeout: 10 * time.Second,
		Transport:     &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func dashDo(t *testing.T, c *http.Client, method, u string, form url.Values) (int, http.Header, string) {
	t.Helper()
	var resp *http.Response
	var err error
	if form != nil {
		resp, err = c.PostForm(u, form)
	} else {
		req, _ := http.NewRequest(method, u, nil)
		resp, err = c.Do(req)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// TestBinaryDashboard: the relay's dashboard, as built, refuses a wrong
// password, and after the right one shows the agent, its tunnel and the
// tunnel's traffic, sampled into a rate; no answer holds the token, the
// private key or the password; SIGTERM stops the relay promptly with an
// event stream open.
func TestBinaryDashboard(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r, b, dataDir, base := binStartDashboard(t)
	public := freePort(t)
	a := binStartAgent(t, b, []string{binTunnel(public, target)}, "--id", "web-agent")
	binAwaitTunnels(a, 1, 15*time.Second)
	secrets := relaySecrets(t, b, dataDir)
	var answers []string // every body and header the dashboard sent

	c := dashClient()
	code, hdr, body := dashDo(t, c, "GET", base, nil)
	answers = append(answers, fmt.Sprint(hdr), body)
	if code != http.StatusSeeOther || hdr.Get("Location") != "/login" {
		t.Fatalf("/ before login: %d to %q", code, hdr.Get("Location"))
	}
	code, _, body = dashDo(t, c, "GET", base+"api/status", nil)
	if code != http.StatusUnauthorized || strings.Contains(body, "web-agent") {
		t.Fatalf("/api/status before login: %d %s", code, body)
	}
	code, hdr, body = dashDo(t, c, "POST", base+"login", url.Values{"password": {"not-the-password-1234"}})
	answers = append(answers, fmt.Sprint(hdr), body)
	if code != http.StatusUnauthorized || !strings.Contains(body, "Wrong password.") {
		t.Fatalf("wrong password: %d\n%s", code, body)
	}
	r.await(10*time.Second, "the failed login logged at Warn", func() bool {
		return contains(r.stderr.String(), "level=WARN", "dashboard: failed login", "source=127.0.0.1")
	})
	code, hdr, body = dashDo(t, c, "POST", base+"login", url.Values{"password": {dashPassword}})
	answers = append(answers, fmt.Sprint(hdr), body)
	if code != http.StatusSeeOther || len(c.Jar.Cookies(mustURL(t, base))) != 1 {
		t.Fatalf("right password: %d %v", code, hdr)
	}

	status := func() dashboard.Payload {
		t.Helper()
		code, hdr, body := dashDo(t, c, "GET", base+"api/status", nil)
		answers = append(answers, fmt.Sprint(hdr), body)
		var p dashboard.Payload
		if err := json.Unmarshal([]byte(body), &p); code != http.StatusOK || err != nil {
			t.Fatalf("/api/status: %d %v\n%s", code, err, body)
		}
		return p
	}
	p := status()
	if len(p.Status.Agents) != 1 || p.Status.Agents[0].ID != "web-agent" || len(p.Status.Tunnels) != 1 || p.Status.Tunnels[0].Port != public || p.Status.Version == "" {
		t.Fatalf("status: %+v", p.Status)
	}

	// 256 KiB there and back; the connection closes, so the relay counts
	// it, and the next samples turn it into a rate.
	const n = 256 << 10
	msg := make([]byte, n)
	rand.NewChaCha8([32]byte{7}).Read(msg)
	if got, err := roundTrip(publicAddr(public), msg); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("through the tunnel: %d bytes, %v", len(got), err)
	}
	var peak float64
	waitFor(t, 30*time.Second, "a rate in the dashboard's traffic history", func() bool {
		p = status()
		if len(p.Traffic.Tunnels) != 1 {
			return false
		}
		for _, pt := range p.Traffic.Tunnels[0].Points {
			peak = max(peak, pt.In)
		}
		return peak > 0 && p.Status.Tunnels[0].BytesIn == n
	})
	t.Logf("peak %.0f B/s in", peak)

	for _, path := range []string{"", "login", "static/index.html", "static/app.js", "static/style.css", "static/icon.svg"} {
		_, hdr, body := dashDo(t, c, "GET", base+path, nil)
		answers = append(answers, fmt.Sprint(hdr), body)
	}

	// An open event stream, while the relay is told to stop.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"api/events", nil)
	resp, err := (&http.Client{Jar: c.Jar}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	event := ""
	for event == "" && sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			event = d
		}
	}
	if !strings.Contains(event, "web-agent") {
		t.Fatalf("first event: %q %v", event, sc.Err())
	}
	answers = append(answers, event)
	for i, s := range answers {
		checkNoSecrets(t, fmt.Sprintf("answer %d", i), s, secrets)
	}
	checkNoSecrets(t, "the relay's log", r.stderr.String(), map[string]string{"the dashboard password": dashPassword})

	start := time.Now()
	r.signal(syscall.SIGTERM)
	if code := r.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("relay exited with status %d after SIGTERM", code)
	}
	t.Logf("relay stopped %v after SIGTERM, with an event stream open", time.Since(start).Round(time.Millisecond))
	io.Copy(io.Discard, resp.Body) // ends: the relay is gone
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestBinaryDashboardTLS: with dashboard_tls_cert and dashboard_tls_key
// the relay serves the dashboard over HTTPS with that certificate, and
// the session cookie is Secure.
func TestBinaryDashboardTLS(t *testing.T) {
	leak.Check(t)
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	certFile, keyFile := filepath.Join(dir, "dashboard.crt"), filepath.Join(dir, "dashboard.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, _, base := binStartDashboard(t, "--dashboard-tls-cert", certFile, "--dashboard-tls-key", keyFile)
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("dashboard at %s, want https", base)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	c := dashClient()
	c.Transport = &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: pool}}
	code, hdr, _ := dashDo(t, c, "POST", base+"login", url.Values{"password": {dashPassword}})
	cookies := (&http.Response{Header: hdr}).Cookies()
	if code != http.StatusSeeOther || len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly {
		t.Fatalf("login over HTTPS: %d %v", code, hdr)
	}
	if code, _, body := dashDo(t, c, "GET", base+"api/status", nil); code != http.StatusOK || !strings.Contains(body, `"fingerprint"`) {
		t.Fatalf("/api/status over HTTPS: %d %.200s", code, body)
	}
	// Plain HTTP on that port gets nothing useful.
	plain := strings.Replace(base, "https://", "http://", 1)
	if code, _, body := dashDo(t, dashClient(), "GET", plain+"api/status", nil); code == http.StatusOK || strings.Contains(body, "fingerprint") {
		t.Errorf("plain HTTP to the HTTPS dashboard: %d %.200s", code, body)
	}
}

// selfSigned makes a certificate for 127.0.0.1 and its key, in PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dashboard test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(cryptorand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}
