package ddns

import (
	"context"
	"errors"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

const (
	testUser = "alice"
	testPass = "s3cr3t-pa55"
	testName = "home.example.com"
)

func TestDynDNS2Set(t *testing.T) {
	v4, v6 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5")
	tests := []struct {
		name    string
		pass    string // "": testPass
		answer  string // forced answer
		limit   string // forced 429 Retry-After
		before  map[string][]netip.Addr
		want    RecordSet
		myip    string // the myip sent; "" : no check
		after   map[string][]netip.Addr
		is      error         // errors.Is
		retry   time.Duration // RetryAfterError.After
		errText string
	}{
		{name: "good", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, myip: "203.0.113.5",
			after: map[string][]netip.Addr{TypeA: {v4}}},
		{name: "nochg", before: map[string][]netip.Addr{TypeA: {v4}}, want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}},
			after: map[string][]netip.Addr{TypeA: {v4}}},
		{name: "carries IPv6 along", before: map[string][]netip.Addr{TypeAAAA: {v6}}, want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}},
			myip: "203.0.113.5,2001:db8::5", after: map[string][]netip.Addr{TypeA: {v4}, TypeAAAA: {v6}}},
		{name: "carries IPv4 along, IPv4 first", before: map[string][]netip.Addr{TypeA: {v4}}, want: RecordSet{Name: testName, Type: TypeAAAA, Addrs: []netip.Addr{v6}},
			myip: "203.0.113.5,2001:db8::5", after: map[string][]netip.Addr{TypeA: {v4}, TypeAAAA: {v6}}},
		{name: "badauth", pass: "wrong", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrAuth},
		{name: "nohost", want: RecordSet{Name: "other.example.com", Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrNoHost},
		{name: "notfqdn", answer: "notfqdn", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrNoHost},
		{name: "abuse", answer: "abuse", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrAbuse},
		{name: "911", answer: "911", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, retry: 30 * time.Minute},
		{name: "dnserr", answer: "dnserr", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, retry: 30 * time.Minute},
		{name: "badagent", answer: "badagent", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrRejected},
		{name: "!donator", answer: "!donator", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrRejected},
		{name: "numhost", answer: "numhost", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrRejected},
		{name: "ignored", answer: "good 127.0.0.1", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, is: ErrRejected},
		{name: "unknown answer echoing the password", answer: "what is " + testPass, want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}},
			errText: "unknown answer"},
		{name: "429", limit: "120", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v4}}, retry: 2 * time.Minute},
		{name: "two addresses", want: RecordSet{Name: testName, Type: TypeA, Addrs: addrs("203.0.113.5", "203.0.113.6")}, errText: "exactly one address"},
		{name: "no address", want: RecordSet{Name: testName, Type: TypeA}, errText: "exactly one address"},
		{name: "family mismatch", want: RecordSet{Name: testName, Type: TypeA, Addrs: []netip.Addr{v6}}, errText: "not an address for a A record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := newFakeDynDNS(t, testUser, testPass, testName)
			f.answer, f.limit = tt.answer, tt.limit
			for typ, a := range tt.before {
				f.set(testName, typ, a...)
			}
			pass := tt.pass
			if pass == "" {
				pass = testPass
			}
			d := &DynDNS2{Server: srv.URL, Username: testUser, Password: pass, UserAgent: UserAgent("1.0"), Lookup: f.lookup}
			err := d.Set(context.Background(), tt.want)
			if err != nil && strings.Contains(err.Error(), testPass) {
				t.Errorf("the error shows the password: %v", err)
			}
			checkSetErr(t, err, tt.is, tt.retry, tt.errText)
			if tt.myip != "" {
				if len(f.updates) != 1 {
					t.Fatalf("%d updates", len(f.updates))
				}
				q, _ := url.ParseQuery(f.updates[0])
				if q.Get("hostname") != tt.want.Name || q.Get("myip") != tt.myip {
					t.Errorf("query %q, want hostname=%s myip=%s", f.updates[0], tt.want.Name, tt.myip)
				}
				if f.agents[0] != "homeport-ddns/1.0" {
					t.Errorf("User-Agent %q", f.agents[0])
				}
			}
			for _, typ := range []string{TypeA, TypeAAAA} {
				if tt.after == nil {
					break
				}
				if got, _ := f.lookup(context.Background(), testName, typ); !slices.Equal(got, tt.after[typ]) {
					t.Errorf("%s after: %v, want %v", typ, got, tt.after[typ])
				}
			}
		})
	}
}

func TestDynDNS2Unreachable(t *testing.T) {
	d := &DynDNS2{Server: "http://127.0.0.1:1/base?x=" + testPass, Username: testUser, Password: testPass, Lookup: func(context.Context, string, string) ([]netip.Addr, error) { return nil, nil }}
	err := d.Set(context.Background(), RecordSet{Name: testName, Type: TypeA, Addrs: addrs("203.0.113.5")})
	if err == nil || strings.Contains(err.Error(), testPass) {
		t.Fatalf("Set() = %v", err)
	}
	d.Server = "ftp://example.com"
	if err := d.Set(context.Background(), RecordSet{Name: testName, Type: TypeA, Addrs: addrs("203.0.113.5")}); err == nil {
		t.Error("an ftp server URL works")
	}
}

// TestDynDNS2GetAuthoritative reads records through a DNS server on
// 127.0.0.1, as Get does without a Lookup.
func TestDynDNS2GetAuthoritative(t *testing.T) {
	leak.Check(t)
	ns := newFakeDNS(t, func(name, typ string) ([]netip.Addr, bool) {
		switch name {
		case testName:
			return addrs("203.0.113.5", "203.0.113.6", "2001:db8::5"), true
		case "empty.example.com":
			return nil, true
		}
		return nil, false
	})
	d := &DynDNS2{Nameserver: ns}
	tests := []struct {
		name, typ string
		want      []netip.Addr
	}{
		{testName, TypeA, addrs("203.0.113.5", "203.0.113.6")},
		{testName, TypeAAAA, addrs("2001:db8::5")},
		{testName + ".", TypeA, addrs("203.0.113.5", "203.0.113.6")},
		{"empty.example.com", TypeA, nil},
		{"missing.example.com", TypeAAAA, nil},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := d.Get(ctx, tt.name, tt.typ)
		cancel()
		if err != nil || !slices.Equal(sortedAddrs(got), tt.want) {
			t.Errorf("Get(%s, %s) = %v, %v; want %v", tt.name, tt.typ, got, err, tt.want)
		}
	}
	if _, err := d.Get(context.Background(), testName, "MX"); err == nil {
		t.Error("Get of an MX record works")
	}
	if _, err := (&DynDNS2{}).Get(context.Background(), testName, TypeA); err == nil || !strings.Contains(err.Error(), "no nameserver") {
		t.Errorf("Get without a nameserver: %v", err)
	}
}

func FuzzDynDNS2Answer(f *testing.F) {
	for _, seed := range []string{
		"good 203.0.113.5", "nochg 203.0.113.5\n", "good 127.0.0.1", "badauth", "nohost", "notfqdn", "abuse",
		"911", "dnserr", "badagent", "!donator", "numhost", "!yours", "\n\n good 1.2.3.4,2001:db8::1\nnohost\n",
		"<html>", "",
	} {
		f.Add([]byte(seed))
	}
	sent := addrs("203.0.113.5")
	f.Fuzz(func(t *testing.T, body []byte) {
		err := parseDynDNS2Answer(body, sent)
		if err == nil {
			return
		}
		if len(err.Error()) > 300 { // 64 bytes of the answer, quoted
			t.Errorf("error of %d bytes: the answer is not bounded", len(err.Error()))
		}
		var ra *RetryAfterError
		if errors.As(err, &ra) && ra.After < 30*time.Minute {
			t.Errorf("RetryAfterError of %v", ra.After)
		}
	})
}
