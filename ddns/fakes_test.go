package ddns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDynDNS is a dyndns2 server as the protocol documents it (Dyn's and
// No-IP's update API): GET /nic/update with HTTP Basic authentication, a
// User-Agent, hostname and myip (an IPv4 and/or an IPv6 address separated
// by a comma); answers "good ADDRS", "nochg ADDRS", "badauth", "badagent",
// "notfqdn", "nohost". A family that myip leaves out keeps its record.
type fakeDynDNS struct {
	user, pass string

	mu      sync.Mutex
	records map[string]map[string][]netip.Addr // name -> type -> addresses
	answer  string                             // if set, the answer to every update
	limit   string                             // if set, 429 with this Retry-After
	updates []string                           // the raw queries
	agents  []string
}

func newFakeDynDNS(t *testing.T, user, pass string, names ...string) (*fakeDynDNS, *httptest.Server) {
	f := &fakeDynDNS{user: user, pass: pass, records: make(map[string]map[string][]netip.Addr)}
	for _, n := range names {
		f.records[n] = make(map[string][]netip.Addr)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeDynDNS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path != "/nic/update" || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	f.updates = append(f.updates, r.URL.RawQuery)
	f.agents = append(f.agents, r.UserAgent())
	user, pass, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="dyndns"`)
		http.Error(w, "badauth", http.StatusUnauthorized)
		return
	}
	if f.limit != "" {
		w.Header().Set("Retry-After", f.limit)
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	}
	if f.answer != "" {
		fmt.Fprintln(w, f.answer)
		return
	}
	if user != f.user || pass != f.pass {
		fmt.Fprintln(w, "badauth")
		return
	}
	if r.UserAgent() == "" {
		fmt.Fprintln(w, "badagent")
		return
	}
	q := r.URL.Query()
	host := q.Get("hostname")
	if !strings.Contains(host, ".") {
		fmt.Fprintln(w, "notfqdn")
		return
	}
	rec, ok := f.records[host]
	if !ok {
		fmt.Fprintln(w, "nohost")
		return
	}
	var set []string
	changed := false
	for _, s := range strings.Split(q.Get("myip"), ",") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			fmt.Fprintln(w, "dnserr")
			return
		}
		typ := TypeA
		if a.Is6() {
			typ = TypeAAAA
		}
		if !slices.Equal(rec[typ], []netip.Addr{a}) {
			changed = true
		}
		rec[typ] = []netip.Addr{a}
		set = append(set, a.String())
	}
	if changed {
		fmt.Fprintln(w, "good", strings.Join(set, ","))
	} else {
		fmt.Fprintln(w, "nochg", strings.Join(set, ","))
	}
}

// lookup reads the fake's records, as the zone's authoritative server
// would serve them.
func (f *fakeDynDNS) lookup(_ context.Context, name, typ string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.records[name][typ]), nil
}

func (f *fakeDynDNS) set(name, typ string, a ...netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records[name][typ] = a
}

func (f *fakeDynDNS) numUpdates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.updates)
}

// fakeDNS is an authoritative DNS server on 127.0.0.1 (UDP) that answers A
// and AAAA questions from lookup: NXDOMAIN for a name it does not know,
// an empty answer for a known name without records of the type.
type fakeDNS struct {
	conn   net.PacketConn
	lookup func(name, typ string) ([]netip.Addr, bool)
	done   chan struct{}
}

func newFakeDNS(t *testing.T, lookup func(name, typ string) ([]netip.Addr, bool)) string {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeDNS{conn: conn, lookup: lookup, done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() { conn.Close(); <-s.done })
	return conn.LocalAddr().String()
}

func (s *fakeDNS) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			s.conn.WriteTo(resp, from)
		}
	}
}

// answer builds the response to one query; nil to drop it.
func (s *fakeDNS) answer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	// The question: labels, then type and class.
	var labels []string
	i := 12
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i:])
	question := q[12 : i+4]
	typ := map[uint16]string{1: TypeA, 28: TypeAAAA}[qtype]
	addrs, known := s.lookup(strings.ToLower(strings.Join(labels, ".")), typ)

	var b bytes.Buffer
	b.Write(q[:2])                              // ID
	flags := uint16(0x8400) | uint16(q[2]&1)<<8 // QR, AA, RD copied
	if !known {
		flags |= 3 // NXDOMAIN
	}
	binary.Write(&b, binary.BigEndian, flags)
	var answers [][]byte
	for _, a := range addrs {
		if typ == "" || a.Is4() != (typ == TypeA) {
			continue
		}
		answers = append(answers, a.AsSlice())
	}
	binary.Write(&b, binary.BigEndian, []uint16{1, uint16(len(answers)), 0, 0})
	b.Write(question)
	for _, rdata := range answers {
		binary.Write(&b, binary.BigEndian, []uint16{0xc00c, qtype, 1}) // pointer to the question's name
		binary.Write(&b, binary.BigEndian, uint32(60))
		binary.Write(&b, binary.BigEndian, uint16(len(rdata)))
		b.Write(rdata)
	}
	return b.Bytes()
}

// memProvider keeps records in memory and can misbehave.
type memProvider struct {
	mu      sync.Mutex
	records map[string][]netip.Addr // "name type" -> addresses
	gets    int
	sets    []RecordSet
	// setErrs are returned by the next calls of Set, one each.
	setErrs []error
	getErr  error
	// misbehave: "duplicate" stores the first address twice, "neighbour"
	// also deletes the name's other address type, "wrong" stores
	// nothing, "lag" shows a write only after lag more reads.
	misbehave string
	lag       int
	stale     map[string]int // key -> reads left before a write shows
	old       map[string][]netip.Addr
}

func newMemProvider() *memProvider {
	return &memProvider{records: make(map[string][]netip.Addr), stale: make(map[string]int), old: make(map[string][]netip.Addr)}
}

func (p *memProvider) Get(_ context.Context, name, typ string) ([]netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gets++
	if p.getErr != nil {
		return nil, p.getErr
	}
	key := name + " " + typ
	if p.stale[key] > 0 {
		p.stale[key]--
		return slices.Clone(p.old[key]), nil
	}
	return slices.Clone(p.records[key]), nil
}

func (p *memProvider) Set(_ context.Context, want RecordSet) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sets = append(p.sets, want)
	if len(p.setErrs) > 0 {
		err := p.setErrs[0]
		p.setErrs = p.setErrs[1:]
		if err != nil {
			return err
		}
	}
	key := want.Name + " " + want.Type
	switch p.misbehave {
	case "duplicate":
		p.records[key] = append(slices.Clone(want.Addrs), want.Addrs[0])
	case "neighbour":
		p.records[key] = slices.Clone(want.Addrs)
		other := TypeA
		if want.Type == TypeA {
			other = TypeAAAA
		}
		delete(p.records, want.Name+" "+other)
	case "wrong":
	case "lag":
		p.old[key] = p.records[key]
		p.stale[key] = p.lag
		p.records[key] = slices.Clone(want.Addrs)
	default:
		p.records[key] = slices.Clone(want.Addrs)
	}
	return nil
}

func (p *memProvider) put(name, typ string, a ...netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.records[name+" "+typ] = a
}

func (p *memProvider) get(name, typ string) []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.records[name+" "+typ])
}

func (p *memProvider) numSets() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sets)
}

func (p *memProvider) numGets() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuffer collects log output for checks.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var errFlaky = errors.New("flaky provider")

// checkSetErr checks a provider's Set error against a table row: an error
// that is is, a RetryAfterError of retry, an error containing text, or
// (all empty) none.
func checkSetErr(t *testing.T, err, is error, retry time.Duration, text string) {
	t.Helper()
	switch {
	case is != nil:
		if !errors.Is(err, is) {
			t.Fatalf("Set() = %v, want %v", err, is)
		}
	case retry != 0:
		var ra *RetryAfterError
		if !errors.As(err, &ra) || ra.After != retry {
			t.Fatalf("Set() = %v, want a RetryAfterError of %v", err, retry)
		}
	case text != "":
		if err == nil || !strings.Contains(err.Error(), text) {
			t.Fatalf("Set() = %v, want an error containing %q", err, text)
		}
	default:
		if err != nil {
			t.Fatalf("Set() = %v", err)
		}
	}
}
