package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/homeport/homeport/config"
)

// The tests in this file run the dynamic DNS updater inside a relay and
// an agent in this process, against a fake dyndns2 server and a fake
// authoritative DNS server that serves what was written to it.

const (
	ddnsName = "home.example.com"
	ddnsUser = "homeuser"
	ddnsPass = "dyn-pass-5ecret"
)

// ddnsFake is a dyndns2 server (GET /nic/update with Basic
// authentication, answers "good", "nochg", "badauth", "nohost") and the
// zone's authoritative DNS server in one.
type ddnsFake struct {
	url string // the dyndns2 server's base URL
	ns  string // the DNS server, 127.0.0.1:PORT (UDP)

	mu      sync.Mutex
	records map[string][]netip.Addr // "name type" -> addresses
	updates []string                // the queries of the update requests
	agents  []string                // their User-Agent headers
}

func newDDNSFake(t *testing.T) *ddnsFake {
	t.Helper()
	f := &ddnsFake{records: map[string][]netip.Addr{}}
	srv := httptest.NewServer(http.HandlerFunc(f.update))
	t.Cleanup(srv.Close)
	f.url = srv.URL

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ds := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(f.answer)}
	started := make(chan struct{})
	ds.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		ds.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		ds.Shutdown()
		<-done
	})
	f.ns = pc.LocalAddr().String()
	return f
}

func (f *ddnsFake) update(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path != "/nic/update" {
		http.NotFound(w, r)
		return
	}
	f.updates = append(f.updates, r.URL.RawQuery)
	f.agents = append(f.agents, r.UserAgent())
	if u, p, ok := r.BasicAuth(); !ok || u != ddnsUser || p != ddnsPass {
		fmt.Fprintln(w, "badauth")
		return
	}
	q := r.URL.Query()
	if q.Get("hostname") != ddnsName {
		fmt.Fprintln(w, "nohost")
		return
	}
	changed := false
	var set []string
	for _, s := range strings.Split(q.Get("myip"), ",") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			fmt.Fprintln(w, "dnserr")
			return
		}
		typ := "A"
		if a.Is6() {
			typ = "AAAA"
		}
		key := ddnsName + " " + typ
		changed = changed || !slices.Equal(f.records[key], []netip.Addr{a})
		f.records[key] = []netip.Addr{a}
		set = append(set, a.String())
	}
	if changed {
		fmt.Fprintln(w, "good", strings.Join(set, ","))
	} else {
		fmt.Fprintln(w, "nochg", strings.Join(set, ","))
	}
}

// answer serves A and AAAA questions about ddnsName from the records.
func (f *ddnsFake) answer(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 || !strings.EqualFold(req.Question[0].Name, ddnsName+".") {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.records[ddnsName+" "+dns.TypeToString[q.Qtype]] {
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
		if a.Is4() {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	w.WriteMsg(m)
}

func (f *ddnsFake) get(typ string) []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.records[ddnsName+" "+typ])
}

func (f *ddnsFake) numUpdates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.updates)
}

// ddnsConfig is a ddns section for the fake: ddnsName's A record from
// sources.
func (f *ddnsFake) ddnsConfig(sources ...config.DDNSSource) *config.DDNS {
	return &config.DDNS{
		Names:            []config.DDNSName{{Name: ddnsName, IPv4: true}},
		Sources:          sources,
		Interval:         time.Minute,
		ForceRefresh:     24 * time.Hour,
		MinWriteInterval: time.Minute,
		Provider:         "dyndns2",
		DynDNS2:          &config.DDNSDynDNS2{Server: f.url, Username: ddnsUser, Password: ddnsPass, Nameserver: f.ns},
	}
}

// echoSource is a command source that prints 203.0.113.5; the test is
// skipped without a shell.
func echoSource(t *testing.T) config.DDNSSource {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh to run the command source with")
	}
	s, err := config.ParseDDNSSource("command:sh -c 'echo 203.0.113.5'")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDDNSAgentRelaySourceRejected: the relay sees the agent at
// 127.0.0.1, which the updater refuses to publish, saying why; nothing
// is written.
func TestDDNSAgentRelaySourceRejected(t *testing.T) {
	f := newDDNSFake(t)
	r := startRelay(t, nil)
	cfg := agentConfig(r, tcpTunnel("web", freePort(t), "127.0.0.1:9"))
	cfg.DDNS = f.ddnsConfig(config.DDNSSource{Kind: config.DDNSSourceRelay})
	a := startAgent(t, cfg)
	si := a.waitSession(10 * time.Second)
	if !strings.HasPrefix(si.ObservedAddr, "127.0.0.1:") {
		t.Fatalf("the relay observed %q", si.ObservedAddr)
	}
	waitFor(t, 10*time.Second, "the rejection in the agent's log", func() bool {
		return contains(a.logs.String(), `msg="ddns: address not published"`, "source=relay", "127.0.0.1 is a loopback address")
	})
	if !contains(a.logs.String(), `msg="ddns: started" source=relay`) {
		t.Errorf("no start line in the agent's log:\n%s", a.logs)
	}
	time.Sleep(200 * time.Millisecond)
	if n := f.numUpdates(); n != 0 {
		t.Errorf("%d updates sent for a loopback address", n)
	}
	// The tunnels do not mind.
	if contains(a.logs.String(), "ddns: updater stopped") {
		t.Errorf("updater stopped:\n%s", a.logs)
	}
}

// TestDDNSAgentConnectedRelays: the agent reports its session to the
// connected_relays source, which hands the relay's address to the updater
// (here 127.0.0.1, which it refuses to publish, saying so), and its end,
// after which the source has no relay to give.
func TestDDNSAgentConnectedRelays(t *testing.T) {
	f := newDDNSFake(t)
	r := startRelay(t, nil)
	cfg := agentConfig(r, tcpTunnel("web", freePort(t), "127.0.0.1:9"))
	cfg.DDNS = f.ddnsConfig(config.DDNSSource{Kind: config.DDNSSourceConnectedRelays})
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	waitFor(t, 10*time.Second, "the relay's address in the agent's log", func() bool {
		return contains(a.logs.String(), `msg="ddns: address not published"`, "source=connected_relays", "127.0.0.1 is a loopback address")
	})
	r.stop()
	waitFor(t, 30*time.Second, "the source without a relay, in the agent's log", func() bool {
		return contains(a.logs.String(), `msg="ddns: source failed"`, "source=connected_relays", "no session to any relay")
	})
	if n := f.numUpdates(); n != 0 {
		t.Errorf("%d updates sent for a loopback address", n)
	}
}

// TestDDNSAgentCommandSource: the relay's view is rejected, the next
// source (a command) stands in, and its address is written and read back.
func TestDDNSAgentCommandSource(t *testing.T) {
	f := newDDNSFake(t)
	r := startRelay(t, nil)
	cfg := agentConfig(r, tcpTunnel("web", freePort(t), "127.0.0.1:9"))
	cfg.DDNS = f.ddnsConfig(config.DDNSSource{Kind: config.DDNSSourceRelay}, echoSource(t))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	waitFor(t, 20*time.Second, "the update in the agent's log", func() bool {
		return contains(a.logs.String(), `msg="ddns: records updated" name=home.example.com type=A addrs=203.0.113.5`)
	})
	if got := f.get("A"); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("203.0.113.5")}) {
		t.Errorf("the fake holds %v", got)
	}
	if !contains(a.logs.String(), "127.0.0.1 is a loopback address") {
		t.Errorf("the relay source's address was not reported as rejected:\n%s", a.logs)
	}
	f.mu.Lock()
	ua := f.agents[0]
	f.mu.Unlock()
	if ua != "homeport-ddns/test" {
		t.Errorf("User-Agent %q, want homeport-ddns/test", ua)
	}
	if n := f.numUpdates(); n != 1 {
		t.Errorf("%d updates, want 1", n)
	}
	if strings.Contains(a.logs.String(), ddnsPass) {
		t.Errorf("the agent's log shows the password")
	}
}

// TestDDNSRelay: the relay runs the updater too, here from a command.
func TestDDNSRelay(t *testing.T) {
	f := newDDNSFake(t)
	src := echoSource(t)
	r := startRelay(t, func(c *config.Relay) { c.DDNS = f.ddnsConfig(src) })
	waitFor(t, 20*time.Second, "the update in the relay's log", func() bool {
		return contains(r.logs.String(), `msg="ddns: records updated" name=home.example.com type=A addrs=203.0.113.5`)
	})
	if got := f.get("A"); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("203.0.113.5")}) {
		t.Errorf("the fake holds %v", got)
	}
	r.stop()
	if contains(r.logs.String(), "ddns: updater stopped") {
		t.Errorf("the updater failed:\n%s", r.logs)
	}
}
