// Package pebbletest runs a real ACME server for tests: pebble, Let's
// Encrypt's test CA, built from the module cache (a tool dependency in
// go.mod) and run as a process on loopback, with a DNS server that
// answers every name with 127.0.0.1, so that pebble's validator really
// connects to the test's listeners on the ports it is given.
package pebbletest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Options are the CA's settings.
type Options struct {
	// HTTPPort and TLSPort are where pebble validates HTTP-01 and
	// TLS-ALPN-01 (on 127.0.0.1).
	HTTPPort, TLSPort int
	// Profiles are certificate profiles by name, each a validity period;
	// "default" is added (90 days) when missing.
	Profiles map[string]time.Duration
	// WaitFor bounds the wait for pebble to answer (default 30 s).
	WaitFor time.Duration
}

// CA is a running pebble.
type CA struct {
	// Addr is pebble's ACME address ("127.0.0.1:PORT"); Directory its
	// directory URL.
	Addr, Directory string
	// NewOrderPath is the path of pebble's newOrder endpoint.
	NewOrderPath string
	// Roots trusts pebble's own HTTPS (its test certificate, which a
	// proxy may show too: Cert).
	Roots *x509.CertPool
	Cert  tls.Certificate
	// Issuer trusts the certificates pebble issues; IssuerPEM is the same
	// root as a PEM file (for curl --cacert).
	Issuer    *x509.CertPool
	IssuerPEM string
	// Log is pebble's output.
	Log *Buffer

	rootsPEM []byte
	stops    []func()
}

// Close stops pebble and its DNS server.
func (c *CA) Close() {
	for i := len(c.stops) - 1; i >= 0; i-- {
		c.stops[i]()
	}
	c.stops = nil
}

// Start builds pebble (with the go command) into dir and runs it. An
// *exec.Error means there is no go command.
func Start(ctx context.Context, dir string, o Options) (*CA, error) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "pebble")
	if out, err := exec.CommandContext(ctx, gocmd, "build", "-o", bin, "github.com/letsencrypt/pebble/v2/cmd/pebble").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build pebble: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, gocmd, "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		return nil, fmt.Errorf("go list pebble: %w", err)
	}
	certs := filepath.Join(strings.TrimSpace(string(out)), "test", "certs")

	c := &CA{Log: &Buffer{}}
	fail := func(err error) (*CA, error) { c.Close(); return nil, err }
	dnsAddr, dnsStop, err := startDNS()
	if err != nil {
		return fail(err)
	}
	c.stops = append(c.stops, dnsStop)
	minica, err := os.ReadFile(filepath.Join(certs, "pebble.minica.pem"))
	if err != nil {
		return fail(err)
	}
	c.rootsPEM = minica
	c.Roots = x509.NewCertPool()
	c.Roots.AppendCertsFromPEM(minica)
	if c.Cert, err = tls.LoadX509KeyPair(filepath.Join(certs, "localhost", "cert.pem"), filepath.Join(certs, "localhost", "key.pem")); err != nil {
		return fail(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.Roots}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	profiles := map[string]any{}
	for name, d := range o.Profiles {
		profiles[name] = map[string]any{"description": name, "validityPeriod": int(d / time.Second)}
	}
	if _, ok := profiles["default"]; !ok {
		profiles["default"] = map[string]any{"description": "90 days", "validityPeriod": 90 * 24 * 3600}
	}
	wait := o.WaitFor
	if wait <= 0 {
		wait = 30 * time.Second
	}

	// pebble's own ports are free a moment before it binds them; one
	// that something else took meanwhile makes it exit at once, and it
	// is started again on others.
	var (
		d struct {
			NewOrder string `json:"newOrder"`
		}
		mgmtAddr string
	)
	for attempt := 1; ; attempt++ {
		ports, err := FreePorts(2)
		if err != nil {
			return fail(err)
		}
		c.Addr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		mgmtAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		conf := map[string]any{"pebble": map[string]any{
			"listenAddress":           c.Addr,
			"managementListenAddress": mgmtAddr,
			"certificate":             filepath.Join(certs, "localhost", "cert.pem"),
			"privateKey":              filepath.Join(certs, "localhost", "key.pem"),
			"httpPort":                o.HTTPPort,
			"tlsPort":                 o.TLSPort,
			"ocspResponderURL":        "",
			"keyAlgorithm":            "ecdsa",
			"retryAfter":              map[string]int{"authz": 1, "order": 1},
			"profiles":                profiles,
		}}
		confFile := filepath.Join(dir, "pebble.json")
		b, _ := json.Marshal(conf)
		if err := os.WriteFile(confFile, b, 0o600); err != nil {
			return fail(err)
		}
		cmd := exec.Command(bin, "-config", confFile, "-dnsserver", dnsAddr)
		// No PEBBLE_* from outside: above all not PEBBLE_VA_ALWAYS_VALID,
		// which would skip validation.
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PEBBLE_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
		cmd.Stdout, cmd.Stderr = c.Log, c.Log
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		c.stops = append(c.stops, func() { _ = cmd.Process.Kill(); <-exited })

		// Wait for pebble's directory.
		c.Directory = "https://" + c.Addr + "/dir"
		err = waitUp(client, c.Directory, &d, exited, wait)
		if err == nil {
			break
		}
		if attempt < 3 && isDone(exited) && strings.Contains(c.Log.String(), "address already in use") {
			continue
		}
		return fail(fmt.Errorf("pebble: %w\n%s", err, c.Log))
	}
	u, err := url.Parse(d.NewOrder)
	if err != nil {
		return fail(err)
	}
	c.NewOrderPath = u.Path
	resp, err := client.Get("https://" + mgmtAddr + "/roots/0")
	if err != nil {
		return fail(err)
	}
	rootPEM, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("pebble's root: %s %v", resp.Status, err))
	}
	c.Issuer = x509.NewCertPool()
	if !c.Issuer.AppendCertsFromPEM(rootPEM) {
		return fail(fmt.Errorf("pebble's root is no PEM certificate: %q", rootPEM))
	}
	c.IssuerPEM = filepath.Join(dir, "pebble-root.pem")
	if err := os.WriteFile(c.IssuerPEM, rootPEM, 0o600); err != nil {
		return fail(err)
	}
	return c, nil
}

// RootsPEM writes the trust for pebble's own HTTPS (its minica root) to
// a PEM file in dir, for a relay's acme.ca_root, and returns its path.
func (c *CA) RootsPEM(dir string) (string, error) {
	p := filepath.Join(dir, "pebble-minica.pem")
	return p, os.WriteFile(p, c.rootsPEM, 0o600)
}

// waitUp polls u until it answers with JSON into v, the process ends
// (exited closes), or wait passes.
func waitUp(c *http.Client, u string, v any, exited <-chan struct{}, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := getJSON(c, u, v)
		switch {
		case err == nil:
			return nil
		case isDone(exited):
			return fmt.Errorf("exited: %w", err)
		case time.Now().After(deadline):
			return fmt.Errorf("did not answer within %v: %w", wait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func getJSON(c *http.Client, u string, v any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// FreePorts returns n loopback TCP ports that were free a moment ago and
// that no earlier call of this process returned. They come from
// 10000-19999: below the system's ephemeral range (so no outgoing
// connection takes one meanwhile) and apart from the e2e tests' own.
func FreePorts(n int) ([]int, error) {
	var out []int
	for try := 0; len(out) < n; try++ {
		if try == 1000 {
			return nil, fmt.Errorf("no free loopback port in 10000-19999")
		}
		p := 10000 + rand.IntN(10000)
		givenMu.Lock()
		taken := given[p]
		givenMu.Unlock()
		if taken {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		givenMu.Lock()
		taken, given[p] = given[p], true
		givenMu.Unlock()
		if !taken {
			out = append(out, p)
		}
	}
	return out, nil
}

// given are the ports FreePorts returned in this process.
var (
	givenMu sync.Mutex
	given   = map[int]bool{}
)

// startDNS runs a DNS server on loopback (UDP and TCP, one port) that
// answers every A question with 127.0.0.1 and every other with nothing.
func startDNS() (string, func(), error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return "", nil, err
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{udp, tcp} {
		wg.Go(func() { _ = s.ActivateAndServe() })
	}
	return pc.LocalAddr().String(), func() { udp.Shutdown(); tcp.Shutdown(); wg.Wait() }, nil
}

// Buffer collects a process's output; String gives its last 40 lines.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
