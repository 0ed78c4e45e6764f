package tunnel

import "net/netip"

// Private tunnels (docs/wire.md, "Private tunnels"). A private tunnel has
// no public port: the agent registers it with RegisterPrivate, and only
// visitors reach it. A visitor logs in like an agent, with FlagVisitor
// and a visitor key in place of the token, and then opens one stream per
// connection, each beginning with a Visit:
//
//	visitor -> relay  Visit{tunnel, protocol, flags}
//	relay -> visitor  OpenResult{code, message}
//
// After an OpenResult with CodeOK, a TCP tunnel's stream carries the
// connection's bytes, and a UDP tunnel's stream carries datagrams framed
// as on a flow's stream (WriteDatagram). The relay carries the stream to
// the agent as a visitor stream of the tunnel (Open or OpenFlow, with Via
// naming the visitor key).

// MaxVisitorNames is the most visitor key names one private tunnel lists.
const MaxVisitorNames = 32

// PrivateTunnel asks the relay to serve a tunnel to visitors only.
type PrivateTunnel struct {
	Name     string
	Protocol Protocol
	// Port is the port a visitor's command listens on when it gives none
	// (shown by the relay; 0: no suggestion). It opens nothing at the relay.
	Port uint16
	// Allow and Deny filter the visitors' addresses as for a public
	// tunnel.
	Allow, Deny []netip.Prefix
	// Visitors, when not empty, are the only visitor keys (by name) the
	// agent lets use the tunnel; the relay's own list for each key
	// applies as well.
	Visitors []string
}

// size is the tunnel's encoded size.
func (t PrivateTunnel) size() int {
	n := 2 + len(t.Name) + 1 + 2 + 2 + 1
	for _, p := range append(t.Allow[:len(t.Allow):len(t.Allow)], t.Deny...) {
		n += 2 + p.Addr().BitLen()/8
	}
	for _, v := range t.Visitors {
		n += 2 + len(v)
	}
	return n
}

// RegisterPrivate is the agent's list of private tunnels, sent only to a
// relay with FeaturePrivate; it is answered with a RegisterResult.
type RegisterPrivate struct{ Tunnels []PrivateTunnel }

// SplitRegisterPrivate packs private tunnels into as few messages as fit
// a frame each, in order.
func SplitRegisterPrivate(ts []PrivateTunnel) []*RegisterPrivate {
	var out []*RegisterPrivate
	cur, size := &RegisterPrivate{}, 2
	for _, t := range ts {
		if len(cur.Tunnels) > 0 && (size+t.size() > MaxFrameSize || len(cur.Tunnels) == MaxTunnels) {
			out = append(out, cur)
			cur, size = &RegisterPrivate{}, 2
		}
		cur.Tunnels = append(cur.Tunnels, t)
		size += t.size()
	}
	return append(out, cur)
}

// VisitFlags are a Visit's options.
type VisitFlags byte

// VisitCheck asks only whether the tunnel can be visited now: the relay
// answers with an OpenResult (CodeOK: its agent is connected) and closes
// the stream, and nothing reaches the agent.
const VisitCheck VisitFlags = 1 << 0

// Visit is the first frame of each stream a visitor opens: the private
// tunnel it wants to reach.
type Visit struct {
	Tunnel   string
	Protocol Protocol
	Flags    VisitFlags
}

func (*RegisterPrivate) msgType() byte { return msgRegisterPrivate }
func (*Visit) msgType() byte           { return msgVisit }

func (m *RegisterPrivate) encode(e *enc) {
	e.u16(uint16(len(m.Tunnels)))
	for _, t := range m.Tunnels {
		e.str(t.Name)
		e.u8(byte(t.Protocol))
		e.u16(t.Port)
		e.prefixes(t.Allow)
		e.prefixes(t.Deny)
		e.u8(byte(len(t.Visitors)))
		for _, v := range t.Visitors {
			e.str(v)
		}
	}
}

func (m *RegisterPrivate) decode(d *dec) {
	n := int(d.u16())
	if n > MaxTunnels {
		d.fail()
		return
	}
	m.Tunnels = make([]PrivateTunnel, 0, min(n, 16))
	for i := 0; i < n && d.err == nil; i++ {
		var t PrivateTunnel
		t.Name = d.str(MaxNameLen)
		t.Protocol = Protocol(d.u8())
		t.Port = d.u16()
		t.Allow = d.prefixes()
		t.Deny = d.prefixes()
		k := int(d.u8())
		if k > MaxVisitorNames {
			d.fail()
			return
		}
		for j := 0; j < k && d.err == nil; j++ {
			t.Visitors = append(t.Visitors, d.str(MaxNameLen))
		}
		m.Tunnels = append(m.Tunnels, t)
	}
}

func (m *Visit) encode(e *enc) {
	e.str(m.Tunnel)
	e.u8(byte(m.Protocol))
	e.u8(byte(m.Flags))
}

func (m *Visit) decode(d *dec) {
	m.Tunnel = d.str(MaxNameLen)
	m.Protocol = Protocol(d.u8())
	m.Flags = VisitFlags(d.u8())
}
