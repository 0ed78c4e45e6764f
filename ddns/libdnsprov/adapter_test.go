package libdnsprov

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/ddns"
	"github.com/libdns/libdns"
)

// memProvider is an in-memory libdns provider with exact-match deletes
// and RRset-replacing SetRecords, recording its calls.
type memProvider struct {
	mu    sync.Mutex
	zone  string
	recs  []libdns.RR
	calls []string
	err   error
}

func (m *memProvider) check(zone string) error {
	if m.err != nil {
		return m.err
	}
	if zone != m.zone {
		return fmt.Errorf("unknown zone %q", zone)
	}
	return nil
}

func (m *memProvider) GetRecords(_ context.Context, zone string) ([]libdns.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "get")
	if err := m.check(zone); err != nil {
		return nil, err
	}
	out := make([]libdns.Record, 0, len(m.recs))
	for _, r := range m.recs {
		p, err := r.Parse()
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (m *memProvider) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("append %d", len(recs)))
	if err := m.check(zone); err != nil {
		return nil, err
	}
	for _, r := range recs {
		m.recs = append(m.recs, r.RR())
	}
	return recs, nil
}

func (m *memProvider) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("delete %d", len(recs)))
	if err := m.check(zone); err != nil {
		return nil, err
	}
	var deleted []libdns.Record
	for _, d := range recs {
		dr := d.RR()
		m.recs = slices.DeleteFunc(m.recs, func(r libdns.RR) bool {
			if r.Name == dr.Name && r.Type == dr.Type && r.Data == dr.Data && (dr.TTL == 0 || r.TTL == dr.TTL) {
				deleted = append(deleted, r)
				return true
			}
			return false
		})
	}
	return deleted, nil
}

func (m *memProvider) SetRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("set %d", len(recs)))
	if err := m.check(zone); err != nil {
		return nil, err
	}
	for _, s := range recs {
		sr := s.RR()
		m.recs = slices.DeleteFunc(m.recs, func(r libdns.RR) bool { return r.Name == sr.Name && r.Type == sr.Type })
	}
	for _, s := range recs {
		m.recs = append(m.recs, s.RR())
	}
	return recs, nil
}

func (m *memProvider) snapshot(skip func(libdns.RR) bool) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		if skip != nil && skip(r) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %v %s %s", r.Name, r.TTL, r.Type, r.Data))
	}
	slices.Sort(out)
	return out
}

func (m *memProvider) takeCalls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls
	m.calls = nil
	return c
}

func newMem() *memProvider {
	return &memProvider{
		zone: "example.com.",
		recs: []libdns.RR{
			{Name: "@", TTL: time.Hour, Type: "NS", Data: "ns1.example.net."},
			{Name: "@", TTL: time.Hour, Type: "TXT", Data: "v=spf1 -all"},
			{Name: "home", TTL: time.Hour, Type: "TXT", Data: "keep me"},
			{Name: "neighbour", TTL: time.Hour, Type: "A", Data: "198.51.100.7"},
			{Name: "home.sub", TTL: time.Hour, Type: "A", Data: "198.51.100.8"},
		},
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for _, v := range s {
		out = append(out, netip.MustParseAddr(v))
	}
	return out
}

func mustGet(t *testing.T, p ddns.Provider, name, typ string, want ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := p.Get(ctx, name, typ)
	if err != nil {
		t.Fatalf("Get %s %s: %v", name, typ, err)
	}
	if !slices.Equal(got, addrs(want...)) {
		t.Fatalf("Get %s %s = %v, want %v", name, typ, got, want)
	}
}

func mustSet(t *testing.T, p ddns.Provider, name, typ string, ttl time.Duration, a ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Set(ctx, ddns.RecordSet{Name: name, Type: typ, Addrs: addrs(a...), TTL: ttl}); err != nil {
		t.Fatalf("Set %s %s %v: %v", name, typ, a, err)
	}
}

func isHomeAddr(r libdns.RR) bool { return r.Name == "home" && (r.Type == "A" || r.Type == "AAAA") }

func TestAdapterStrategies(t *testing.T) {
	for _, st := range []SetStrategy{AppendDelete, Replace, UpdateInPlace} {
		t.Run(fmt.Sprint(st), func(t *testing.T) {
			m := newMem()
			before := m.snapshot(isHomeAddr)
			a, err := Wrap(m, Options{Provider: "mem", Zone: "Example.COM", Strategy: st, DefaultTTL: 5 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			mustGet(t, a, "home.example.com", "A")
			mustSet(t, a, "HOME.example.com.", "A", 0, "192.0.2.2", "192.0.2.1", "192.0.2.1")
			mustGet(t, a, "home.example.com", "A", "192.0.2.1", "192.0.2.2")
			mustSet(t, a, "home.example.com", "AAAA", time.Minute, "2001:db8::1")
			mustGet(t, a, "home.example.com", "AAAA", "2001:db8::1")
			mustGet(t, a, "home.example.com", "A", "192.0.2.1", "192.0.2.2")
			mustSet(t, a, "home.example.com", "A", 0, "192.0.2.3")
			mustGet(t, a, "home.example.com", "A", "192.0.2.3")
			mustSet(t, a, "home.example.com", "A", 0)
			mustGet(t, a, "home.example.com", "A")
			mustGet(t, a, "home.example.com", "AAAA", "2001:db8::1")
			for _, r := range m.snapshot(nil) {
				if strings.HasPrefix(r, "home ") && strings.Contains(r, " AAAA ") && !strings.HasPrefix(r, "home 1m0s AAAA") {
					t.Errorf("AAAA record without the set TTL: %q", r)
				}
			}
			mustSet(t, a, "home.example.com", "AAAA", 0)
			if after := m.snapshot(isHomeAddr); !slices.Equal(before, after) {
				t.Fatalf("other records changed:\nbefore %q\nafter  %q", before, after)
			}
			if got := m.snapshot(nil); !slices.Equal(got, before) {
				t.Fatalf("zone = %q, want %q", got, before)
			}
		})
	}
}

func TestAdapterCalls(t *testing.T) {
	m := newMem()
	a, err := Wrap(m, Options{Provider: "mem", Zone: "example.com.", Strategy: UpdateInPlace})
	if err != nil {
		t.Fatal(err)
	}
	mustSet(t, a, "home.example.com", "A", 0, "192.0.2.1")
	if c := m.takeCalls(); !slices.Equal(c, []string{"get", "append 1"}) {
		t.Errorf("create: calls %q", c)
	}
	mustSet(t, a, "home.example.com", "A", 0, "192.0.2.2")
	if c := m.takeCalls(); !slices.Equal(c, []string{"get", "set 1"}) {
		t.Errorf("change of one record: calls %q", c)
	}
	mustSet(t, a, "home.example.com", "A", 0, "192.0.2.2")
	if c := m.takeCalls(); !slices.Equal(c, []string{"get"}) {
		t.Errorf("no change: calls %q", c)
	}
	mustSet(t, a, "home.example.com", "A", 0, "192.0.2.3", "192.0.2.4")
	if c := m.takeCalls(); !slices.Equal(c, []string{"get", "append 2", "delete 1"}) {
		t.Errorf("one to two: calls %q", c)
	}
	mustSet(t, a, "home.example.com", "A", 0)
	if c := m.takeCalls(); !slices.Equal(c, []string{"get", "delete 2"}) {
		t.Errorf("removal: calls %q", c)
	}
	mustSet(t, a, "home.example.com", "A", 0)
	if c := m.takeCalls(); !slices.Equal(c, []string{"get"}) {
		t.Errorf("removal of nothing: calls %q", c)
	}
}

func TestAdapterZones(t *testing.T) {
	m := newMem()
	a, err := Wrap(m, Options{Provider: "mem", Zone: "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, zone, rel string }{
		{"home.example.com", "example.com.", "home"},
		{"Home.Example.Com.", "example.com.", "home"},
		{"example.com", "example.com.", "@"},
		{"a.b.example.com", "example.com.", "a.b"},
	} {
		z, r, err := a.relative(tc.name)
		if err != nil || z != tc.zone || r != tc.rel {
			t.Errorf("relative(%q) = %q, %q, %v; want %q, %q", tc.name, z, r, err, tc.zone, tc.rel)
		}
	}
	ctx := context.Background()
	for _, name := range []string{"home.example.org", "badexample.com", "com", "", "a..example.com"} {
		_, err := a.Get(ctx, name, ddns.TypeA)
		if err == nil {
			t.Errorf("Get(%q): no error", name)
		}
		err = a.Set(ctx, ddns.RecordSet{Name: name, Type: ddns.TypeA, Addrs: addrs("192.0.2.1")})
		if err == nil {
			t.Errorf("Set(%q): no error", name)
		}
	}
	if _, err := a.Get(ctx, "home.example.org", ddns.TypeA); !errors.Is(err, ddns.ErrNoHost) {
		t.Errorf("name outside the zone: %v, want ErrNoHost", err)
	}
	if c := m.takeCalls(); len(c) != 0 {
		t.Errorf("invalid names reached the provider: %q", c)
	}
	// The apex.
	mustSet(t, a, "example.com", "A", 0, "192.0.2.5")
	mustGet(t, a, "example.com", "A", "192.0.2.5")
	if got := m.snapshot(func(r libdns.RR) bool { return r.Type != "A" || r.Name != "@" }); !slices.Equal(got, []string{"@ 0s A 192.0.2.5"}) {
		t.Errorf("apex record = %q", got)
	}
	// A deeper name is not the shorter one.
	mustGet(t, a, "home.example.com", "A")
	mustGet(t, a, "home.sub.example.com", "A", "198.51.100.8")

	for _, z := range []string{".", "a..b", "exa mple.com"} {
		if _, err := Wrap(m, Options{Zone: z}); err == nil {
			t.Errorf("zone %q accepted", z)
		}
	}
	if _, err := Wrap(struct{ LibdnsProvider }{m}, Options{Zone: "example.com", Strategy: Replace}); err == nil {
		t.Error("Replace accepted without SetRecords")
	}
}

func TestAdapterValidation(t *testing.T) {
	m := newMem()
	a, err := Wrap(m, Options{Provider: "mem", Zone: "example.com."})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bad := []ddns.RecordSet{
		{Name: "home.example.com", Type: "MX", Addrs: addrs("192.0.2.1")},
		{Name: "home.example.com", Type: ddns.TypeA, Addrs: addrs("2001:db8::1")},
		{Name: "home.example.com", Type: ddns.TypeAAAA, Addrs: addrs("192.0.2.1")},
		{Name: "home.example.com", Type: ddns.TypeA, Addrs: []netip.Addr{{}}},
		{Name: "home.example.com", Type: ddns.TypeA, Addrs: addrs("192.0.2.1"), TTL: -time.Second},
	}
	for _, rs := range bad {
		if err := a.Set(ctx, rs); err == nil {
			t.Errorf("Set(%+v): no error", rs)
		}
	}
	if _, err := a.Get(ctx, "home.example.com", "TXT"); err == nil {
		t.Error("Get TXT: no error")
	}
	if c := m.takeCalls(); len(c) != 0 {
		t.Errorf("invalid sets reached the provider: %q", c)
	}
	// A 4in6 address is an IPv4 address.
	mustSet(t, a, "home.example.com", "A", 0, "::ffff:192.0.2.9")
	mustGet(t, a, "home.example.com", "A", "192.0.2.9")
}

func TestAdapterErrors(t *testing.T) {
	m := newMem()
	secret := "s3cr3t-token-value"
	m.err = fmt.Errorf("HTTP 403 for token %s", secret)
	a, err := Wrap(m, Options{Provider: "mem", Zone: "example.com.", Classify: classifyText, Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Get(context.Background(), "home.example.com", ddns.TypeA)
	if !errors.Is(err, ddns.ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("secret in error text: %v", err)
	}
	if !strings.Contains(err.Error(), "REDACTED") || !strings.HasPrefix(err.Error(), "mem: get home.example.com A:") {
		t.Fatalf("error text: %v", err)
	}
	ra := &ddns.RetryAfterError{After: 3 * time.Second, Err: errors.New("slow down")}
	m.err = ra
	err = a.Set(context.Background(), ddns.RecordSet{Name: "home.example.com", Type: ddns.TypeA, Addrs: addrs("192.0.2.1")})
	var got *ddns.RetryAfterError
	if !errors.As(err, &got) || got.After != 3*time.Second {
		t.Fatalf("err = %v, want the RetryAfterError", err)
	}
}

func TestAdapterConcurrent(t *testing.T) {
	m := newMem()
	a, err := Wrap(m, Options{Provider: "mem", Zone: "example.com.", Strategy: AppendDelete})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("h%d.example.com", i)
			for j := range 5 {
				ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(j + 1)})
				if err := a.Set(context.Background(), ddns.RecordSet{Name: name, Type: ddns.TypeA, Addrs: []netip.Addr{ip}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := range 8 {
		mustGet(t, a, fmt.Sprintf("h%d.example.com", i), "A", "192.0.2.5")
	}
	// A cancelled context does not wait for the lock.
	a.sem <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Get(ctx, "h1.example.com", ddns.TypeA); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get with a held lock: %v", err)
	}
	<-a.sem
}

type panicProvider struct{ memProvider }

func (p *panicProvider) GetRecords(context.Context, string) ([]libdns.Record, error) {
	var info *struct{ TotalCount int }
	return nil, fmt.Errorf("%d", info.TotalCount)
}

func TestAdapterPanic(t *testing.T) {
	a, err := Wrap(&panicProvider{}, Options{Provider: "mem", Zone: "example.com."})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Get(ctx, "home.example.com", ddns.TypeA); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Get: %v", err)
	}
	if err := a.Set(ctx, ddns.RecordSet{Name: "home.example.com", Type: ddns.TypeA}); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Set: %v", err)
	}
	// The lock was released.
	if _, err := a.Get(ctx, "home.example.com", ddns.TypeA); err == nil {
		t.Fatal("no error")
	}
}
