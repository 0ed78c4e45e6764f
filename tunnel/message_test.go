package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// sampleMessages is one valid value of every message type; it seeds the
// round-trip test and the fuzzer.
func sampleMessages() []Message {
	return []Message{
		&challenge{Version: 1, Nonce: [32]byte{1, 2, 3}},
		&hello{Version: 1, AgentID: "home-pc", Software: "homeport-agent/1.0", MAC: [32]byte{9}},
		&Welcome{ObservedAddr: "203.0.113.7:51234"},
		&Reject{Code: CodeAuthFailed, Message: "wrong token"},
		&Register{Tunnels: []TunnelRequest{{Name: "rdp", Protocol: ProtoTCP, RemotePort: 3390}, {Name: "ssh", Protocol: ProtoTCP, RemotePort: 2222}}},
		&Register{Tunnels: []TunnelRequest{}},
		&RegisterResult{Results: []TunnelResult{{Name: "rdp", Code: CodeOK}, {Name: "ssh", Code: CodePortNotAllowed, Message: "port 2222 is not allowed"}}},
		&GoAway{Code: CodeReplaced, Message: "newer session"},
		&Open{Tunnel: "rdp", Visitor: "[2001:db8::1]:40000", Public: "[2001:db8::7]:3390"},
		&OpenFlow{Tunnel: "dns", Visitor: "198.51.100.7:5353", Flow: 1 << 31},
		&CheckReach{Protocol: ProtoTCP, Addr: "203.0.113.9:3389"},
		&ReachResult{Addr: "203.0.113.9:3389", Code: CodeDialFailed, Message: "dial tcp 203.0.113.9:3389: i/o timeout"},
		&Register{Tunnels: []TunnelRequest{{Name: "rdp", Protocol: ProtoTCP, RemotePort: 3390}, {Name: "rdp-udp", Protocol: ProtoUDP, RemotePort: 3390,
			Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")}, Deny: []netip.Prefix{netip.MustParsePrefix("198.51.100.66/32")}}}},
		&OpenResult{Code: CodeDialFailed, Message: "connection refused"},
		&hello{Version: 1, AgentID: "home-pc", Software: "homeport-agent/1.1", MAC: [32]byte{7}, Flags: FlagStandby},
		&Reject{Code: CodeIDInUse, Message: `agent id "home-pc" is held by a session from 203.0.113.9:51234`},
		&RegisterResult{Results: []TunnelResult{{Name: "rdp", Code: CodePortReserved, Message: "reserved"}, {Name: "ssh", Code: CodeQuota, Message: "max_tunnels"}}},
		&hello{Version: 1, AgentID: "home-pc", Software: "homeport-agent/1.2", MAC: [32]byte{5}, Flags: FlagFeatures},
		&Welcome{ObservedAddr: "[2001:db8::9]:40000", Features: FeatureUnregister},
		&Unregister{Names: []string{"rdp", "ssh"}},
		&Unregister{Names: []string{}},
		&RegisterResult{Results: []TunnelResult{{Name: "rdp", Code: CodeOK}, {Name: "gone", Code: CodeUnknownTunnel, Message: "no tunnel \"gone\""}}},
		&hello{Version: 1, AgentID: "laptop", Software: "homeport-agent/1.3", MAC: [32]byte{3}, Flags: FlagFeatures | FlagVisitor},
		&Welcome{ObservedAddr: "198.51.100.4:40000", Features: FeatureUnregister | FeaturePrivate},
		&RegisterPrivate{Tunnels: []PrivateTunnel{{Name: "rdp", Protocol: ProtoTCP, Port: 3389, Visitors: []string{"laptop", "phone"}},
			{Name: "rdp-udp", Protocol: ProtoUDP, Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}},
		&RegisterPrivate{Tunnels: []PrivateTunnel{}},
		&Visit{Tunnel: "rdp", Protocol: ProtoTCP},
		&Visit{Tunnel: "rdp-udp", Protocol: ProtoUDP, Flags: VisitCheck},
		&Open{Tunnel: "rdp", Visitor: "198.51.100.4:40000", Public: "203.0.113.1:7000", Via: "laptop"},
		&OpenFlow{Tunnel: "rdp-udp", Visitor: "198.51.100.4:40000", Flow: 7, Via: "laptop"},
		&OpenResult{Code: CodeOffline, Message: "no agent serves private tunnel \"rdp\" now"},
		&Welcome{ObservedAddr: "198.51.100.4:40000", Features: FeatureUnregister | FeaturePrivate | FeatureWeb},
		&RegisterWeb{Tunnels: []WebTunnel{{Name: "web", Protocol: ProtoHTTP, Host: "nas.example.com",
			Auth: WebAuth{User: "anna", Salt: bytes.Repeat([]byte{1}, AuthSaltLen), Hash: bytes.Repeat([]byte{2}, AuthHashLen)}},
			{Name: "nas", Protocol: ProtoHTTPS, Host: "*.home.example.com", Deny: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "label", Protocol: ProtoHTTP, Host: "nas"}}},
		&RegisterWeb{Tunnels: []WebTunnel{}},
	}
}

// TestPrivateOlderForms: Open and OpenFlow without Via, as an older relay
// sends them, still decode (Via empty), and the encoder of a public
// tunnel's Open writes the older form, byte for byte.
func TestPrivateOlderForms(t *testing.T) {
	for _, m := range []Message{
		&Open{Tunnel: "rdp", Visitor: "198.51.100.4:40000", Public: "203.0.113.1:3390"},
		&OpenFlow{Tunnel: "dns", Visitor: "198.51.100.4:40000", Flow: 9},
	} {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		want := 3 + 2 + len("rdp") + 2 + len("198.51.100.4:40000") + 2 + len("203.0.113.1:3390")
		if _, ok := m.(*OpenFlow); ok {
			want = 3 + 2 + len("dns") + 2 + len("198.51.100.4:40000") + 4
		}
		if buf.Len() != want {
			t.Errorf("%T without Via: %d bytes, want the older form's %d", m, buf.Len(), want)
		}
	}
}

// TestSplitRegisterPrivate: the largest private tunnels (longest names,
// most networks and visitor names) are packed into frames that each
// decode, in order, with none lost.
func TestSplitRegisterPrivate(t *testing.T) {
	var ts []PrivateTunnel
	for i := range MaxTunnels {
		pt := PrivateTunnel{Name: fmt.Sprintf("%064d", i), Protocol: ProtoTCP, Port: uint16(i)}
		for j := range MaxVisitorNames {
			pt.Visitors = append(pt.Visitors, fmt.Sprintf("%064d", j))
		}
		for j := range MaxPrefixes {
			pt.Allow = append(pt.Allow, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(j)}), 128))
		}
		ts = append(ts, pt)
	}
	msgs := SplitRegisterPrivate(ts)
	if len(msgs) < 2 {
		t.Fatalf("%d messages for %d large tunnels: want them split", len(msgs), len(ts))
	}
	var got []PrivateTunnel
	for _, m := range msgs {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		d, err := ReadMessage(&buf, MaxFrameSize)
		if err != nil {
			t.Fatalf("a split message does not decode: %v", err)
		}
		got = append(got, d.(*RegisterPrivate).Tunnels...)
	}
	if !reflect.DeepEqual(got, ts) {
		t.Fatalf("split and decoded: %d tunnels, not the %d sent, in order", len(got), len(ts))
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(reflect.TypeOf(m).Elem().Name(), func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, m); err != nil {
				t.Fatal(err)
			}
			got, err := ReadMessage(&buf, MaxFrameSize)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip: got %#v, want %#v", got, m)
			}
			if buf.Len() != 0 {
				t.Fatalf("%d bytes left after the frame", buf.Len())
			}
		})
	}
}

// failingReader fails the test if more than n bytes are read from it.
type limitedReader struct {
	t *testing.T
	r io.Reader
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if len(p) > l.n {
		p = p[:l.n]
	}
	if len(p) == 0 {
		l.t.Fatal("reader read past the frame header")
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

func TestFrameLimitCheckedBeforeReading(t *testing.T) {
	hdr := []byte{msgRegister, 0xff, 0xff} // announces 65535 bytes
	r := &limitedReader{t: t, r: io.MultiReader(bytes.NewReader(hdr), strings.NewReader(strings.Repeat("x", 1<<16))), n: len(hdr)}
	_, err := ReadMessage(r, MaxFrameSize)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
}

func TestReadMessageErrors(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		limit int
		want  error
	}{
		{"empty", nil, MaxFrameSize, io.EOF},
		{"short header", []byte{msgOpen, 0}, MaxFrameSize, io.ErrUnexpectedEOF},
		{"short payload", []byte{msgOpen, 0, 10, 0, 3, 'r'}, MaxFrameSize, io.ErrUnexpectedEOF},
		{"unknown type", []byte{0x7f, 0, 0}, MaxFrameSize, ErrUnexpected},
		{"over auth limit", []byte{msgHello, 0x02, 0x01}, MaxAuthFrameSize, ErrFrameTooLarge},
		{"string past end", []byte{msgOpen, 0, 4, 0, 9, 'a', 'b'}, MaxFrameSize, ErrMalformed},
		{"trailing bytes", []byte{msgGoAway, 0, 4, 9, 0, 0, 0xee}, MaxFrameSize, ErrMalformed},
		{"tunnel name too long", append([]byte{msgOpen, 0, 69, 0, 65}, make([]byte, 67)...), MaxFrameSize, ErrMalformed},
		{"too many tunnels", []byte{msgRegister, 0, 2, 0x01, 0x01}, MaxFrameSize, ErrMalformed},
		{"short nonce", []byte{msgChallenge, 0, 3, 1, 2, 3}, MaxFrameSize, ErrMalformed},
		{"unregister: too many names", []byte{msgUnregister, 0, 2, 0x00, 0x81}, MaxFrameSize, ErrMalformed},
		{"unregister: name too long", append([]byte{msgUnregister, 0, 69, 0, 1, 0, 65}, make([]byte, 65)...), MaxFrameSize, ErrMalformed},
		{"unregister: fewer names than counted", []byte{msgUnregister, 0, 7, 0, 2, 0, 3, 'r', 'd', 'p'}, MaxFrameSize, ErrMalformed},
		{"welcome: two bytes after the address", []byte{msgWelcome, 0, 5, 0, 1, 'a', 1, 0}, MaxFrameSize, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadMessage(bytes.NewReader(tt.in), tt.limit)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestUnregisterLimits: SplitUnregister keeps each message within
// MaxTunnels names, and the longest such message fits a frame and decodes.
func TestUnregisterLimits(t *testing.T) {
	var names []string
	for i := range 2*MaxTunnels + 3 {
		names = append(names, fmt.Sprintf("%064d", i))
	}
	parts := SplitUnregister(names)
	if len(parts) != 3 || len(parts[0].Names) != MaxTunnels || len(parts[2].Names) != 3 {
		t.Fatalf("split into %d parts", len(parts))
	}
	var back []string
	for _, m := range parts {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		var got Unregister
		if err := ReadInto(&buf, MaxFrameSize, &got); err != nil {
			t.Fatal(err)
		}
		back = append(back, got.Names...)
	}
	if !reflect.DeepEqual(back, names) {
		t.Fatal("names changed on the way")
	}
	if p := SplitUnregister(nil); len(p) != 1 || len(p[0].Names) != 0 {
		t.Fatalf("no names: %#v", p)
	}
}

// TestWelcomeFeatures: the features byte is optional, so a Welcome of an
// older relay (no byte) reads as no features, and one with no features
// is sent as an older relay sends it.
func TestWelcomeFeatures(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, &Welcome{ObservedAddr: "a"}); err != nil {
		t.Fatal(err)
	}
	if want := []byte{msgWelcome, 0, 3, 0, 1, 'a'}; !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("no features: % x, want % x", buf.Bytes(), want)
	}
	for _, in := range [][]byte{{msgWelcome, 0, 3, 0, 1, 'a'}, {msgWelcome, 0, 4, 0, 1, 'a', 0}} {
		var w Welcome
		if err := ReadInto(bytes.NewReader(in), MaxAuthFrameSize, &w); err != nil || w != (Welcome{ObservedAddr: "a"}) {
			t.Fatalf("% x: %+v, %v", in, w, err)
		}
	}
	var w Welcome
	if err := ReadInto(bytes.NewReader([]byte{msgWelcome, 0, 4, 0, 1, 'a', 1}), MaxAuthFrameSize, &w); err != nil || w.Features != FeatureUnregister {
		t.Fatalf("with features: %+v, %v", w, err)
	}
}

func TestReadIntoWrongType(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, &GoAway{Code: CodeShutdown}); err != nil {
		t.Fatal(err)
	}
	var o Open
	if err := ReadInto(&buf, MaxFrameSize, &o); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("got %v, want ErrUnexpected", err)
	}
}

func TestWriteMessageTooLarge(t *testing.T) {
	m := &Register{}
	for i := range MaxTunnels * 2 {
		m.Tunnels = append(m.Tunnels, TunnelRequest{Name: fmt.Sprintf("%064d", i), Protocol: ProtoTCP, RemotePort: 1})
	}
	if err := WriteMessage(io.Discard, m); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
}

// FuzzReadMessage feeds arbitrary bytes to the decoder: it must never
// panic or allocate past the limit, and whatever it accepts must encode
// back to a frame that decodes to the same message.
func FuzzReadMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{msgRegister, 0xff, 0xff})
	f.Add([]byte{msgUnregister, 0, 2, 0xff, 0xff})
	f.Add([]byte{msgWelcome, 0, 4, 0, 1, 'a', 0})
	f.Add([]byte{msgRegisterPrivate, 0, 9, 0, 1, 0, 1, 'a', 1, 0, 0, 0, 0, 0xff})
	f.Add([]byte{msgOpen, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Add([]byte{msgRegisterWeb, 0, 16, 0, 1, 0, 1, 'w', 3, 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadMessage(bytes.NewReader(data), MaxFrameSize)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("re-encode %#v: %v", m, err)
		}
		m2, err := ReadMessage(&buf, MaxFrameSize)
		if err != nil {
			t.Fatalf("decode re-encoded %#v: %v", m, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encode changed the message: %#v vs %#v", m, m2)
		}
	})
}

// TestRegisterResultFits: the answer to the largest valid Register, with
// long reasons, still fits in one frame and decodes.
func TestRegisterResultFits(t *testing.T) {
	res := &RegisterResult{}
	for i := range MaxTunnels {
		name := fmt.Sprintf("%064d", i)
		res.Results = append(res.Results, TunnelResult{Name: name, Code: CodePortInUse, Message: strings.Repeat("é", MaxMessageLen)})
	}
	var buf bytes.Buffer
	if err := WriteMessage(&buf, res); err != nil {
		t.Fatal(err)
	}
	var got RegisterResult
	if err := ReadInto(&buf, MaxFrameSize, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Results) != MaxTunnels || got.Results[0].Message == "" || !utf8.ValidString(got.Results[0].Message) {
		t.Fatalf("decoded %d results, first message %q", len(got.Results), got.Results[0].Message)
	}
	// A Reject must fit the agent's pre-authentication limit.
	buf.Reset()
	if err := WriteMessage(&buf, &Reject{Code: CodeAuthFailed, Message: strings.Repeat("x", MaxMessageLen)}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMessage(&buf, MaxAuthFrameSize); err != nil {
		t.Fatal(err)
	}
}

// TestSplitRegister: tunnels with long network lists are spread over as
// many Register messages as needed, each of which fits a frame.
func TestSplitRegister(t *testing.T) {
	var reqs []TunnelRequest
	for i := range MaxTunnels {
		r := TunnelRequest{Name: fmt.Sprintf("%064d", i), Protocol: ProtoTCP, RemotePort: uint16(1000 + i)}
		for j := range MaxPrefixes {
			r.Allow = append(r.Allow, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, byte(j)}), 48))
		}
		reqs = append(reqs, r)
	}
	regs := SplitRegister(reqs)
	if len(regs) < 2 {
		t.Fatalf("%d messages for %d large requests", len(regs), len(reqs))
	}
	var got []TunnelRequest
	for _, m := range regs {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		var back Register
		if err := ReadInto(&buf, MaxFrameSize, &back); err != nil {
			t.Fatal(err)
		}
		got = append(got, back.Tunnels...)
	}
	if !reflect.DeepEqual(got, reqs) {
		t.Fatal("split registers do not carry the requests unchanged")
	}
	if n := len(SplitRegister(reqs[:3])); n != 1 {
		t.Fatalf("3 requests in %d messages", n)
	}
}

// TestCodeString: every code has its text, and a code from a newer peer
// prints as its number, so an older agent still shows something sensible
// (followed by the relay's message).
func TestCodeString(t *testing.T) {
	tests := []struct {
		code Code
		want string
	}{
		{CodeOK, "ok"},
		{CodePortInUse, "port in use"},
		{CodeQuota, "quota reached"},
		{CodePortReserved, "port reserved"},
		{CodeIDInUse, "agent id in use"},
		{CodeOffline, "tunnel offline"}, {CodeNotAllowed, "not allowed"}, {CodeWaking, "waking the target"},
		{CodeHostNotAllowed, "host not allowed"}, {CodeHostInUse, "host in use"}, {CodeHostInUse + 1, "code 20"},
		{255, "code 255"},
	}
	for _, tt := range tests {
		if got := tt.code.String(); got != tt.want {
			t.Errorf("Code(%d).String() = %q, want %q", uint8(tt.code), got, tt.want)
		}
	}
}
