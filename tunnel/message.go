package tunnel

import (
	"fmt"
	"io"
	"net/netip"
	"time"
	"unicode/utf8"
)

// Field limits enforced by the decoder.
const (
	MaxNameLen    = 64   // tunnel name
	MaxIDLen      = 128  // agent id, software version
	MaxAddrLen    = 128  // textual network address
	MaxMessageLen = 1024 // human-readable reason
	MaxTunnels    = 128  // tunnels in one Register: 128 of the longest names fit in a frame
	nonceLen      = 32
	macLen        = 32
)

// Code is the outcome carried by results and rejections.
type Code uint8

// Result codes. The numeric values are part of the wire protocol.
const (
	CodeOK             Code = 0
	CodeBadRequest     Code = 1  // malformed or invalid request
	CodePortNotAllowed Code = 2  // port outside the ranges of this token
	CodePortInUse      Code = 3  // another session or program holds the port
	CodeDuplicateName  Code = 4  // two tunnels with one name
	CodeUnknownTunnel  Code = 5  // stream names a tunnel the agent doesn't have
	CodeDialFailed     Code = 6  // agent could not reach the target
	CodeAuthFailed     Code = 7  // wrong token
	CodeVersion        Code = 8  // protocol version not supported
	CodeReplaced       Code = 9  // a newer session of the same agent took over
	CodeShutdown       Code = 10 // the relay is shutting down
	CodeInternal       Code = 11 // the peer failed in a way the request did not cause
	CodeQuota          Code = 12 // the token's max_agents or max_tunnels is reached
	CodePortReserved   Code = 13 // the port is kept for another token's agent for a while
	CodeIDInUse        Code = 14 // a standby login's agent id has a live session
	CodeOffline        Code = 15 // no agent serves the private tunnel now
	CodeNotAllowed     Code = 16 // the visitor key may not use the private tunnel
	// CodeWaking is not an answer but a notice before it: the agent is
	// waking the target (Wake-on-LAN); the answer follows within
	// MaxWakeWait. Sent only to a relay with FeatureWake, and by a relay
	// only to a visitor whose hello has FlagWaits.
	CodeWaking         Code = 17
	CodeHostNotAllowed Code = 18 // host name outside the names of this token
	CodeHostInUse      Code = 19 // another agent serves the host name
)

// MaxWakeWait bounds the wait for an OpenResult after a CodeWaking
// notice: the agent's longest wake_time (5 minutes) and a dial.
const MaxWakeWait = 6 * time.Minute

var codeNames = [...]string{
	CodeOK:             "ok",
	CodeBadRequest:     "bad request",
	CodePortNotAllowed: "port not allowed",
	CodePortInUse:      "port in use",
	CodeDuplicateName:  "duplicate name",
	CodeUnknownTunnel:  "unknown tunnel",
	CodeDialFailed:     "target unreachable",
	CodeAuthFailed:     "authentication failed",
	CodeVersion:        "unsupported version",
	CodeReplaced:       "replaced by a newer session",
	CodeShutdown:       "relay shutting down",
	CodeInternal:       "internal error",
	CodeQuota:          "quota reached",
	CodePortReserved:   "port reserved",
	CodeIDInUse:        "agent id in use",
	CodeOffline:        "tunnel offline",
	CodeNotAllowed:     "not allowed",
	CodeWaking:         "waking the target",
	CodeHostNotAllowed: "host not allowed",
	CodeHostInUse:      "host in use",
}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("code %d", uint8(c))
}

// Protocol of a tunnel.
type Protocol uint8

// Tunnel protocols. The numeric values are part of the wire protocol.
const (
	ProtoTCP Protocol = 1
	ProtoUDP Protocol = 2
)

func (p Protocol) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoHTTP:
		return "http"
	case ProtoHTTPS:
		return "https"
	}
	return fmt.Sprintf("protocol %d", uint8(p))
}

// Message is a control message that can be sent with WriteMessage.
type Message interface {
	msgType() byte
	encode(*enc)
	decode(*dec)
}

// TunnelRequest asks the relay to open a public port.
type TunnelRequest struct {
	Name       string
	Protocol   Protocol
	RemotePort uint16
	// Allow, when not empty, lists the only visitor networks the relay
	// lets in; Deny the ones it keeps out. At most MaxPrefixes each.
	Allow, Deny []netip.Prefix
}

// MaxPrefixes is the most networks in one TunnelRequest's Allow or Deny.
const MaxPrefixes = 32

// size is the request's encoded size.
func (t TunnelRequest) size() int {
	n := 2 + len(t.Name) + 1 + 2 + 2
	for _, p := range append(t.Allow[:len(t.Allow):len(t.Allow)], t.Deny...) {
		n += 2 + p.Addr().BitLen()/8
	}
	return n
}

// SplitRegister packs tunnel requests into as few Register messages as
// fit a frame each, in order.
func SplitRegister(reqs []TunnelRequest) []*Register {
	var out []*Register
	cur, size := &Register{}, 2
	for _, r := range reqs {
		if len(cur.Tunnels) > 0 && (size+r.size() > MaxFrameSize || len(cur.Tunnels) == MaxTunnels) {
			out = append(out, cur)
			cur, size = &Register{}, 2
		}
		cur.Tunnels = append(cur.Tunnels, r)
		size += r.size()
	}
	return append(out, cur)
}

// Register is the agent's list of tunnels.
type Register struct{ Tunnels []TunnelRequest }

// TunnelResult is the relay's answer for one tunnel.
type TunnelResult struct {
	Name    string
	Code    Code
	Message string
}

// RegisterResult answers a Register or an Unregister, one result per
// tunnel, in order.
type RegisterResult struct{ Results []TunnelResult }

// Unregister asks the relay to close tunnels of this session: their public
// ports close, and the connections open on them go on until they end. The
// relay answers with a RegisterResult: CodeOK, or CodeUnknownTunnel for a
// name it does not have. Only a relay that announced FeatureUnregister in
// its Welcome knows it; an older one ends the session at it.
type Unregister struct{ Names []string }

// GoAway tells the agent why the relay ends the session.
type GoAway struct {
	Code    Code
	Message string
}

// Open is the first frame of every visitor stream, relay to agent. It names
// a tunnel, never an address: the agent dials only targets of its own.
type Open struct {
	Tunnel  string
	Visitor string // the visitor's address as the relay sees it
	Public  string // the relay's address the visitor connected to
	// Via is the name of the visitor key of a private tunnel's visitor
	// ("" for a public tunnel); sent only on a private tunnel's streams.
	Via string
}

// OpenFlow is the first frame of a UDP flow's stream, relay to agent: the
// datagrams of one visitor address on a UDP tunnel. Flow numbers the flow
// within the session, for datagrams sent outside the stream (QUIC).
type OpenFlow struct {
	Tunnel  string
	Visitor string
	Flow    uint32
	Via     string // as in Open
}

// OpenResult is the agent's first frame on a visitor stream.
type OpenResult struct {
	Code    Code
	Message string
}

// Welcome tells an authenticated agent how the relay sees it.
type Welcome struct {
	ObservedAddr string // the agent's public address, as seen by the relay
	// Features are the relay's additions to the protocol; sent only to
	// an agent whose hello has FlagFeatures (older agents refuse a
	// Welcome with a byte more), and zero from an older relay.
	Features Features
}

// Features are additions to the protocol that a relay announces in its
// Welcome, so that an agent uses them only with a relay that knows them.
type Features byte

// FeatureUnregister: the relay handles Unregister on the control stream.
const FeatureUnregister Features = 1 << 0

// FeaturePrivate: the relay handles RegisterPrivate on the control stream
// and logs visitors in (FlagVisitor).
const FeaturePrivate Features = 1 << 1

// RelayFeatures are the features of a relay built with this package,
// announced by AuthenticateAgent (the relay's control loop handles each).
const RelayFeatures = FeatureUnregister | FeaturePrivate | FeatureWake | FeatureReach | FeatureWeb

// FeatureWake: the relay reads an OpenResult with CodeWaking as a notice
// and waits up to MaxWakeWait more for the answer.
const FeatureWake Features = 1 << 2

// Reject tells the agent why authentication failed.
type Reject struct {
	Code    Code
	Message string
}

type challenge struct {
	Version byte
	Nonce   [nonceLen]byte
}

type hello struct {
	Version  byte
	AgentID  string
	Software string
	MAC      [macLen]byte
	Flags    HelloFlags
}

// HelloFlags are the agent's options in its hello.
type HelloFlags byte

// FlagReplacing says that the agent still holds its previous session to
// the relay and replaces it make-before-break: the relay retires the old
// session (its connections go on) instead of cutting it.
const FlagReplacing HelloFlags = 1 << 0

// FlagStandby asks the relay to log the agent in only if no live session
// holds its id: an agent whose id another agent took over waits with it
// for that one to leave, instead of taking the id back (the relay refuses
// the login with CodeIDInUse meanwhile). A relay that does not know the
// flag ignores it and logs the agent in as usual.
const FlagStandby HelloFlags = 1 << 1

// FlagFeatures says that the agent reads a Features byte at the end of the
// Welcome; a relay that knows the flag sends it, an older one does not.
const FlagFeatures HelloFlags = 1 << 2

// FlagVisitor says that the hello is a visitor's: its MAC is keyed with a
// visitor key, not an agent token, and the session that follows carries
// the visitor's streams to private tunnels (Visit), nothing else.
const FlagVisitor HelloFlags = 1 << 3

// FlagWaits says that the visitor reads an OpenResult with CodeWaking as
// a notice and waits up to MaxWakeWait more for the answer; the relay
// passes the notice only to such a visitor.
const FlagWaits HelloFlags = 1 << 4

func (*Register) msgType() byte       { return msgRegister }
func (*RegisterResult) msgType() byte { return msgRegisterResult }
func (*GoAway) msgType() byte         { return msgGoAway }
func (*Unregister) msgType() byte     { return msgUnregister }
func (*Open) msgType() byte           { return msgOpen }
func (*OpenFlow) msgType() byte       { return msgOpenFlow }
func (*OpenResult) msgType() byte     { return msgOpenResult }
func (*Welcome) msgType() byte        { return msgWelcome }
func (*Reject) msgType() byte         { return msgReject }
func (*challenge) msgType() byte      { return msgChallenge }
func (*hello) msgType() byte          { return msgHello }

func (m *Register) encode(e *enc) {
	e.u16(uint16(len(m.Tunnels)))
	for _, t := range m.Tunnels {
		e.str(t.Name)
		e.u8(byte(t.Protocol))
		e.u16(t.RemotePort)
		e.prefixes(t.Allow)
		e.prefixes(t.Deny)
	}
}

func (m *Register) decode(d *dec) {
	n := int(d.u16())
	if n > MaxTunnels {
		d.fail()
		return
	}
	m.Tunnels = make([]TunnelRequest, 0, min(n, 16))
	for i := 0; i < n && d.err == nil; i++ {
		var t TunnelRequest
		t.Name = d.str(MaxNameLen)
		t.Protocol = Protocol(d.u8())
		t.RemotePort = d.u16()
		t.Allow = d.prefixes()
		t.Deny = d.prefixes()
		m.Tunnels = append(m.Tunnels, t)
	}
}

func (m *RegisterResult) encode(e *enc) {
	// Messages are shortened, evenly, so that the answer to any valid
	// Register fits in one frame.
	fixed := 2
	for _, r := range m.Results {
		fixed += 2 + len(r.Name) + 1 + 2
	}
	per := MaxMessageLen
	if n := len(m.Results); n > 0 {
		per = min(per, (MaxFrameSize-fixed)/n)
	}
	e.u16(uint16(len(m.Results)))
	for _, r := range m.Results {
		e.str(r.Name)
		e.u8(byte(r.Code))
		e.str(clip(r.Message, per))
	}
}

// clip shortens s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (m *RegisterResult) decode(d *dec) {
	n := int(d.u16())
	if n > MaxTunnels {
		d.fail()
		return
	}
	m.Results = make([]TunnelResult, 0, min(n, 16))
	for i := 0; i < n && d.err == nil; i++ {
		var r TunnelResult
		r.Name = d.str(MaxNameLen)
		r.Code = Code(d.u8())
		r.Message = d.str(MaxMessageLen)
		m.Results = append(m.Results, r)
	}
}

func (m *Unregister) encode(e *enc) {
	e.u16(uint16(len(m.Names)))
	for _, n := range m.Names {
		e.str(n)
	}
}

func (m *Unregister) decode(d *dec) {
	n := int(d.u16())
	if n > MaxTunnels {
		d.fail()
		return
	}
	m.Names = make([]string, 0, min(n, 16))
	for i := 0; i < n && d.err == nil; i++ {
		m.Names = append(m.Names, d.str(MaxNameLen))
	}
}

// SplitUnregister packs names into Unregister messages of at most
// MaxTunnels names each (which always fit a frame), in order.
func SplitUnregister(names []string) []*Unregister {
	var out []*Unregister
	for len(names) > MaxTunnels {
		out = append(out, &Unregister{Names: names[:MaxTunnels:MaxTunnels]})
		names = names[MaxTunnels:]
	}
	return append(out, &Unregister{Names: names})
}

func (m *GoAway) encode(e *enc) { e.u8(byte(m.Code)); e.str(clip(m.Message, MaxMessageLen)) }
func (m *GoAway) decode(d *dec) { m.Code = Code(d.u8()); m.Message = d.str(MaxMessageLen) }

// Via is optional at the end of Open and OpenFlow: the relay sends it
// only on private tunnels, which only agents that know it register.
func (m *OpenFlow) encode(e *enc) {
	e.str(m.Tunnel)
	e.str(m.Visitor)
	e.u32(m.Flow)
	e.optStr(m.Via)
}
func (m *OpenFlow) decode(d *dec) {
	m.Tunnel = d.str(MaxNameLen)
	m.Visitor = d.str(MaxAddrLen)
	m.Flow = d.u32()
	m.Via = d.optStr(MaxNameLen)
}

func (m *Open) encode(e *enc) { e.str(m.Tunnel); e.str(m.Visitor); e.str(m.Public); e.optStr(m.Via) }
func (m *Open) decode(d *dec) {
	m.Tunnel = d.str(MaxNameLen)
	m.Visitor = d.str(MaxAddrLen)
	m.Public = d.str(MaxAddrLen)
	m.Via = d.optStr(MaxNameLen)
}

func (m *OpenResult) encode(e *enc) { e.u8(byte(m.Code)); e.str(clip(m.Message, MaxMessageLen)) }
func (m *OpenResult) decode(d *dec) { m.Code = Code(d.u8()); m.Message = d.str(MaxMessageLen) }

// The features byte is optional: an older relay does not send it, and
// one with no features need not.
func (m *Welcome) encode(e *enc) {
	e.str(m.ObservedAddr)
	if m.Features != 0 {
		e.u8(byte(m.Features))
	}
}

func (m *Welcome) decode(d *dec) {
	m.ObservedAddr = d.str(MaxAddrLen)
	if d.err == nil && len(d.b) > 0 {
		m.Features = Features(d.u8())
	}
}

// A Reject is read before authentication, under MaxAuthFrameSize.
func (m *Reject) encode(e *enc) {
	e.u8(byte(m.Code))
	e.str(clip(m.Message, MaxAuthFrameSize-1-2))
}
func (m *Reject) decode(d *dec) { m.Code = Code(d.u8()); m.Message = d.str(MaxMessageLen) }

func (m *challenge) encode(e *enc) { e.u8(m.Version); e.bytes(m.Nonce[:]) }
func (m *challenge) decode(d *dec) {
	m.Version = d.u8()
	copy(m.Nonce[:], d.fixed(nonceLen))
}

func (m *hello) encode(e *enc) {
	e.u8(m.Version)
	e.str(m.AgentID)
	e.str(m.Software)
	e.bytes(m.MAC[:])
	e.u8(byte(m.Flags))
}

func (m *hello) decode(d *dec) {
	m.Version = d.u8()
	m.AgentID = d.str(MaxIDLen)
	m.Software = d.str(MaxIDLen)
	copy(m.MAC[:], d.fixed(macLen))
	m.Flags = HelloFlags(d.u8())
}

// newMessage returns an empty message of the given wire type.
func newMessage(typ byte) Message {
	switch typ {
	case msgChallenge:
		return new(challenge)
	case msgHello:
		return new(hello)
	case msgWelcome:
		return new(Welcome)
	case msgReject:
		return new(Reject)
	case msgRegister:
		return new(Register)
	case msgRegisterResult:
		return new(RegisterResult)
	case msgGoAway:
		return new(GoAway)
	case msgUnregister:
		return new(Unregister)
	case msgOpen:
		return new(Open)
	case msgOpenResult:
		return new(OpenResult)
	case msgOpenFlow:
		return new(OpenFlow)
	case msgRegisterPrivate:
		return new(RegisterPrivate)
	case msgVisit:
		return new(Visit)
	case msgCheckReach:
		return new(CheckReach)
	case msgReachResult:
		return new(ReachResult)
	case msgRegisterWeb:
		return new(RegisterWeb)
	}
	return nil
}

// WriteMessage writes m as one frame.
func WriteMessage(w io.Writer, m Message) error {
	var e enc
	m.encode(&e)
	return writeFrame(w, m.msgType(), e.b)
}

// ReadMessage reads one frame of at most limit bytes and decodes it.
func ReadMessage(r io.Reader, limit int) (Message, error) {
	typ, p, err := readFrame(r, limit)
	if err != nil {
		return nil, err
	}
	return decodeMessage(typ, p)
}

func decodeMessage(typ byte, p []byte) (Message, error) {
	m := newMessage(typ)
	if m == nil {
		return nil, fmt.Errorf("frame type %#x: %w", typ, ErrUnexpected)
	}
	d := dec{b: p}
	m.decode(&d)
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("frame type %#x, %d bytes: %w", typ, len(p), err)
	}
	return m, nil
}

// ReadInto reads one frame and decodes it into m, which fixes the expected
// type: any other type is ErrUnexpected.
func ReadInto(r io.Reader, limit int, m Message) error {
	typ, p, err := readFrame(r, limit)
	if err != nil {
		return err
	}
	if typ != m.msgType() {
		return fmt.Errorf("want frame type %#x, got %#x: %w", m.msgType(), typ, ErrUnexpected)
	}
	d := dec{b: p}
	m.decode(&d)
	if err := d.done(); err != nil {
		return fmt.Errorf("frame type %#x, %d bytes: %w", typ, len(p), err)
	}
	return nil
}

// OpenError is an agent's refusal of a visitor stream, as seen by the relay.
type OpenError struct {
	Code    Code
	Message string
}

func (e *OpenError) Error() string {
	if e.Message == "" {
		return "agent refused the connection: " + e.Code.String()
	}
	return "agent refused the connection: " + e.Code.String() + ": " + e.Message
}
