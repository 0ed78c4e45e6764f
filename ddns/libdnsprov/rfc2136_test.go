package libdnsprov

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/ddns"
	"github.com/miekg/dns"
)

const bindPackages = "bind9 bind9-utils bind9-dnsutils"

// needBinary finds a program; without it the test is skipped, or fails
// under CI, which installs it.
func needBinary(t *testing.T, name string, dirs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found: install the Debian packages %s", name, bindPackages)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type bindServer struct {
	addr      string // 127.0.0.1:port
	port      int
	keyName   string
	keySecret string
}

const bindZone = `$TTL 300
@          IN SOA  ns1.home.test. hostmaster.home.test. 1 3600 600 86400 60
@          IN NS   ns1.home.test.
@          IN TXT  "v=spf1 -all"
ns1        IN A    127.0.0.1
neighbour  IN A    192.0.2.10
neighbour  IN AAAA 2001:db8::10
pc         IN TXT  "pc keeps this"
pc         IN MX   10 mail.home.test.
mail       IN A    192.0.2.25
sub.pc     IN A    192.0.2.30
`

// freePort returns a port free for TCP and UDP on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startBIND runs named in the foreground on a free port of 127.0.0.1
// with the zone home.test (updatable with a TSIG key) and locked.test
// (not updatable), and stops it when the test ends.
func startBIND(t *testing.T) *bindServer {
	t.Helper()
	named := needBinary(t, "named", "/usr/sbin", "/usr/local/sbin")
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	s := &bindServer{keyName: "ddns-key", keySecret: base64.StdEncoding.EncodeToString(secret)}

	for attempt := 1; ; attempt++ {
		dir := t.TempDir()
		s.port = freePort(t)
		s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		conf := fmt.Sprintf(`options {
	directory %[1]q;
	pid-file none;
	session-keyfile %[2]q;
	managed-keys-directory %[1]q;
	listen-on port %[3]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
key %[4]q { algorithm hmac-sha256; secret %[5]q; };
zone "home.test" {
	type primary;
	file %[6]q;
	allow-update { key %[4]q; };
	allow-transfer { 127.0.0.1; };
};
zone "locked.test" {
	type primary;
	file %[7]q;
	allow-update { none; };
};
`, dir, filepath.Join(dir, "session.key"), s.port, s.keyName, s.keySecret,
			filepath.Join(dir, "home.test.db"), filepath.Join(dir, "locked.test.db"))
		files := map[string]string{
			"named.conf":     conf,
			"home.test.db":   bindZone,
			"locked.test.db": strings.ReplaceAll(bindZone, "home.test.", "locked.test."),
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// -g: foreground, log to stderr; -4: IPv4 only. named stays the
		// user it was started as when -u is not given.
		cmd := exec.Command(named, "-g", "-4", "-c", filepath.Join(dir, "named.conf"))
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting named: %v", err)
		}
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		stop := func() {
			select {
			case <-done:
				return
			default:
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		if waitSOA(s.addr, "home.test.", done, 20*time.Second) {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("named output:\n%s", out.String())
				}
			})
			return s
		}
		stop()
		log := out.String()
		if attempt < 5 && strings.Contains(log, "address in use") {
			continue
		}
		t.Fatalf("named did not answer on %s:\n%s", s.addr, log)
	}
}

// waitSOA polls the server until it answers the zone's SOA, the process
// ends or the time is up.
func waitSOA(addr, zone string, exited <-chan struct{}, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		m := new(dns.Msg)
		m.SetQuestion(zone, dns.TypeSOA)
		m.RecursionDesired = false
		if r, _, err := c.Exchange(m, addr); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// axfr returns the zone's records, except the SOA and skip, as sorted
// text.
func axfr(t *testing.T, addr, zone string, skip func(dns.RR) bool) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetAxfr(zone)
	tr := &dns.Transfer{DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second}
	ch, err := tr.In(m, addr)
	if err != nil {
		t.Fatalf("AXFR %s: %v", zone, err)
	}
	var out []string
	for env := range ch {
		if env.Error != nil {
			t.Fatalf("AXFR %s: %v", zone, env.Error)
		}
		for _, rr := range env.RR {
			if rr.Header().Rrtype == dns.TypeSOA || (skip != nil && skip(rr)) {
				continue
			}
			out = append(out, rr.String())
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return out
}

// dig asks the server with the real dig and returns the addresses and
// TTLs it printed.
func dig(t *testing.T, port int, name, typ string) (addrs []netip.Addr, ttls []uint32) {
	t.Helper()
	digPath := needBinary(t, "dig", "/usr/bin")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, digPath, "@127.0.0.1", "-p", strconv.Itoa(port), name, typ,
		"+norec", "+noall", "+answer", "+time=2", "+tries=2").CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s %s: %v\n%s", name, typ, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 5 || f[3] != typ || !strings.EqualFold(f[0], name+".") {
			continue
		}
		a, err := netip.ParseAddr(f[4])
		if err != nil {
			t.Fatalf("dig printed %q", line)
		}
		ttl, _ := strconv.ParseUint(f[1], 10, 32)
		addrs = append(addrs, a)
		ttls = append(ttls, uint32(ttl))
	}
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	return addrs, ttls
}

func (s *bindServer) provider(t *testing.T, mod func(*RFC2136Config)) *RFC2136 {
	t.Helper()
	cfg := RFC2136Config{
		Server:       s.addr,
		Zone:         "home.test.",
		KeyName:      s.keyName,
		KeyAlgorithm: "hmac-sha256",
		KeySecret:    s.keySecret,
		Timeout:      3 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewRFC2136(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func isPCAddr(rr dns.RR) bool {
	h := rr.Header()
	return h.Name == "pc.home.test." && (h.Rrtype == dns.TypeA || h.Rrtype == dns.TypeAAAA)
}

func TestRFC2136BIND(t *testing.T) {
	s := startBIND(t)
	p := s.provider(t, nil)
	others := axfr(t, s.addr, "home.test.", isPCAddr)
	if len(others) < 8 {
		t.Fatalf("zone before: %q", others)
	}
	checkDig := func(typ string, want ...string) {
		t.Helper()
		got, _ := dig(t, s.port, "pc.home.test", typ)
		if !slices.Equal(got, addrs(want...)) {
			t.Fatalf("dig pc.home.test %s = %v, want %v", typ, got, want)
		}
	}

	mustGet(t, p, "pc.home.test", "A")
	checkDig("A")

	// Create.
	mustSet(t, p, "pc.home.test", "A", 2*time.Minute, "192.0.2.2", "192.0.2.1")
	mustSet(t, p, "pc.home.test", "AAAA", 2*time.Minute, "2001:db8::1")
	mustGet(t, p, "pc.home.test", "A", "192.0.2.1", "192.0.2.2")
	mustGet(t, p, "PC.Home.Test.", "AAAA", "2001:db8::1")
	checkDig("A", "192.0.2.1", "192.0.2.2")
	checkDig("AAAA", "2001:db8::1")
	if _, ttls := dig(t, s.port, "pc.home.test", "A"); !slices.Equal(ttls, []uint32{120, 120}) {
		t.Fatalf("TTLs %v, want 120", ttls)
	}

	// Change; TTL 0 keeps the TTL the name has.
	mustSet(t, p, "pc.home.test", "A", 0, "192.0.2.3")
	mustGet(t, p, "pc.home.test", "A", "192.0.2.3")
	checkDig("A", "192.0.2.3")
	if _, ttls := dig(t, s.port, "pc.home.test", "A"); !slices.Equal(ttls, []uint32{120}) {
		t.Fatalf("TTLs %v after a change without TTL, want 120", ttls)
	}
	mustSet(t, p, "pc.home.test", "AAAA", 0, "2001:db8::2", "2001:db8::3")
	mustGet(t, p, "pc.home.test", "AAAA", "2001:db8::2", "2001:db8::3")
	checkDig("AAAA", "2001:db8::2", "2001:db8::3")
	if got := axfr(t, s.addr, "home.test.", isPCAddr); !slices.Equal(got, others) {
		t.Fatalf("other records changed:\nbefore %q\nafter  %q", others, got)
	}

	// Remove A by an empty set; AAAA stays.
	mustSet(t, p, "pc.home.test", "A", 0)
	mustGet(t, p, "pc.home.test", "A")
	checkDig("A")
	mustGet(t, p, "pc.home.test", "AAAA", "2001:db8::2", "2001:db8::3")
	checkDig("AAAA", "2001:db8::2", "2001:db8::3")
	mustSet(t, p, "pc.home.test", "AAAA", 0)
	mustSet(t, p, "pc.home.test", "AAAA", 0) // nothing to remove
	mustGet(t, p, "pc.home.test", "AAAA")
	checkDig("AAAA")

	// A new name without TTL gets the default.
	mustSet(t, p, "new.home.test", "A", 0, "192.0.2.50")
	if got, ttls := dig(t, s.port, "new.home.test", "A"); !slices.Equal(got, addrs("192.0.2.50")) || !slices.Equal(ttls, []uint32{300}) {
		t.Fatalf("new name: %v %v", got, ttls)
	}
	mustSet(t, p, "new.home.test", "A", 0)

	if got := axfr(t, s.addr, "home.test.", nil); !slices.Equal(got, others) {
		t.Fatalf("zone after:\n%q\nwant\n%q", got, others)
	}
}

func TestRFC2136BINDErrors(t *testing.T) {
	s := startBIND(t)
	before := axfr(t, s.addr, "home.test.", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	set := ddns.RecordSet{Name: "pc.home.test", Type: ddns.TypeA, Addrs: addrs("192.0.2.99")}

	otherSecret := make([]byte, 32)
	if _, err := rand.Read(otherSecret); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*RFC2136Config)
		want error
	}{
		{"wrong secret", func(c *RFC2136Config) { c.KeySecret = base64.StdEncoding.EncodeToString(otherSecret) }, ddns.ErrAuth},
		{"unknown key", func(c *RFC2136Config) { c.KeyName = "other-key" }, ddns.ErrAuth},
		{"wrong algorithm", func(c *RFC2136Config) { c.KeyAlgorithm = "hmac-sha512" }, ddns.ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := s.provider(t, tc.mod)
			err := p.Set(ctx, set)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Set: %v, want %v", err, tc.want)
			}
			t.Logf("Set: %v", err)
			_, err = p.Get(ctx, "pc.home.test", ddns.TypeA)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Get: %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("zone not updatable", func(t *testing.T) {
		p := s.provider(t, func(c *RFC2136Config) { c.Zone = "locked.test" })
		err := p.Set(ctx, ddns.RecordSet{Name: "pc.locked.test", Type: ddns.TypeA, Addrs: addrs("192.0.2.99")})
		if !errors.Is(err, ddns.ErrAuth) {
			t.Fatalf("Set: %v, want ErrAuth", err)
		}
		t.Logf("Set: %v", err)
		mustGet(t, p, "pc.locked.test", "A")
	})

	t.Run("zone not served", func(t *testing.T) {
		p := s.provider(t, func(c *RFC2136Config) { c.Zone = "elsewhere.test" })
		err := p.Set(ctx, ddns.RecordSet{Name: "pc.elsewhere.test", Type: ddns.TypeA, Addrs: addrs("192.0.2.99"), TTL: time.Minute})
		if !errors.Is(err, ddns.ErrAuth) && !errors.Is(err, ddns.ErrNoHost) {
			t.Fatalf("Set: %v, want ErrAuth or ErrNoHost", err)
		}
		t.Logf("Set: %v", err)
		if _, err := p.Get(ctx, "pc.elsewhere.test", ddns.TypeA); err == nil {
			t.Fatal("Get from a server without the zone: no error")
		}
	})

	t.Run("name outside the zone", func(t *testing.T) {
		p := s.provider(t, nil)
		err := p.Set(ctx, ddns.RecordSet{Name: "pc.locked.test", Type: ddns.TypeA, Addrs: addrs("192.0.2.99")})
		if !errors.Is(err, ddns.ErrNoHost) {
			t.Fatalf("Set: %v, want ErrNoHost", err)
		}
	})

	t.Run("server down", func(t *testing.T) {
		p := s.provider(t, func(c *RFC2136Config) {
			c.Server = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			c.Timeout = 300 * time.Millisecond
		})
		err := p.Set(ctx, ddns.RecordSet{Name: "pc.home.test", Type: ddns.TypeA, Addrs: addrs("192.0.2.99"), TTL: time.Minute})
		if err == nil || errors.Is(err, ddns.ErrAuth) {
			t.Fatalf("Set to a closed port: %v", err)
		}
	})

	if after := axfr(t, s.addr, "home.test.", nil); !slices.Equal(before, after) {
		t.Fatalf("refused updates changed the zone:\nbefore %q\nafter  %q", before, after)
	}
}

func TestNewRFC2136(t *testing.T) {
	good := RFC2136Config{Server: "ns1.example.com", Zone: "example.com", KeyName: "k", KeySecret: "c2VjcmV0"}
	p, err := NewRFC2136(good)
	if err != nil {
		t.Fatal(err)
	}
	if p.server != "ns1.example.com:53" || p.zone != "example.com." || p.keyName != "k." || p.keyAlg != dns.HmacSHA256 ||
		p.defaultTTL != 5*time.Minute || p.timeout != 10*time.Second {
		t.Fatalf("defaults: %+v", p)
	}
	for _, srv := range []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1:53"},
		{"2001:db8::1", "[2001:db8::1]:53"},
		{"[2001:db8::1]:5353", "[2001:db8::1]:5353"},
		{"ns1.example.com:5353", "ns1.example.com:5353"},
	} {
		cfg := good
		cfg.Server = srv.in
		p, err := NewRFC2136(cfg)
		if err != nil || p.server != srv.want {
			t.Errorf("server %q: %v, %v", srv.in, p, err)
		}
	}
	for _, tc := range []struct {
		mod  func(*RFC2136Config)
		want string
	}{
		{func(c *RFC2136Config) { c.Server = "" }, "missing server"},
		{func(c *RFC2136Config) { c.Zone = "" }, "missing zone"},
		{func(c *RFC2136Config) { c.KeyName = "" }, "missing TSIG key name"},
		{func(c *RFC2136Config) { c.KeySecret = "" }, "missing TSIG key secret"},
		{func(c *RFC2136Config) { c.KeySecret = "not base64!" }, "not base64"},
		{func(c *RFC2136Config) { c.KeyAlgorithm = "hmac-md4" }, "unsupported TSIG algorithm"},
		{func(c *RFC2136Config) { c.Zone = "a..b" }, "invalid zone"},
		{func(c *RFC2136Config) { c.Server = ":53" }, "invalid address"},
	} {
		cfg := good
		tc.mod(&cfg)
		_, err := NewRFC2136(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", cfg, err, tc.want)
		}
	}
}
