package tunnel

import "net/netip"

// Web tunnels (docs/wire.md, "Web tunnels"). A web tunnel has no port of
// its own: the relay serves it on its shared HTTP and HTTPS ports, by host
// name. The agent registers it with RegisterWeb, only with a relay that
// announced FeatureWeb; the relay answers with a RegisterResult whose
// message, for a tunnel it accepted, is the host name it serves (the full
// name, when the agent asked for a bare label under the relay's domain).
// Each visitor connection (ProtoHTTPS) or each connection of the relay's
// HTTP proxy (ProtoHTTP) is a stream beginning with an Open, as for a TCP
// tunnel: the agent dials the tunnel's target and answers with an
// OpenResult.

// Web tunnel protocols. The numeric values are part of the wire protocol.
const (
	// ProtoHTTP: the relay parses the visitors' HTTP requests (and
	// terminates TLS for them, when it has certificates) and proxies them
	// to the target as plain HTTP/1.1.
	ProtoHTTP Protocol = 3
	// ProtoHTTPS: the relay routes TLS connections by their SNI and
	// passes their bytes through untouched: the target terminates TLS.
	ProtoHTTPS Protocol = 4
)

// Field limits of a web tunnel.
const (
	MaxHostLen     = 253 // a DNS name, without its trailing dot
	MaxAuthUserLen = 64  // basic authentication user name
	AuthSaltLen    = 16
	AuthHashLen    = 32 // HMAC-SHA256
)

// FeatureWeb: the relay handles RegisterWeb on the control stream and
// serves web tunnels on its HTTP and HTTPS ports.
const FeatureWeb Features = 1 << 4

// WebAuth is a web tunnel's basic authentication as the relay checks it:
// the user name, and the password only as HMAC-SHA256(key = Salt,
// password). The agent makes the salt and the hash; the password never
// leaves it. Empty User: no authentication.
type WebAuth struct {
	User string
	Salt []byte // AuthSaltLen bytes
	Hash []byte // AuthHashLen bytes
}

// WebTunnel asks the relay to serve a host name.
type WebTunnel struct {
	Name     string
	Protocol Protocol // ProtoHTTP or ProtoHTTPS
	// Host is the host name: a DNS name, a wildcard "*.example.com", or
	// a bare label that the relay puts under its domain.
	Host string
	// Allow and Deny filter the visitors' addresses as for a TCP tunnel.
	Allow, Deny []netip.Prefix
	Auth        WebAuth
}

// size is the tunnel's encoded size.
func (t WebTunnel) size() int {
	n := 2 + len(t.Name) + 1 + 2 + len(t.Host) + 2 + 2 + 2 + len(t.Auth.User) + 2 + len(t.Auth.Salt) + 2 + len(t.Auth.Hash)
	for _, p := range append(t.Allow[:len(t.Allow):len(t.Allow)], t.Deny...) {
		n += 2 + p.Addr().BitLen()/8
	}
	return n
}

// RegisterWeb is the agent's list of web tunnels, sent only to a relay
// with FeatureWeb; it is answered with a RegisterResult.
type RegisterWeb struct{ Tunnels []WebTunnel }

// SplitRegisterWeb packs web tunnels into as few messages as fit a frame
// each, in order.
func SplitRegisterWeb(ts []WebTunnel) []*RegisterWeb {
	var out []*RegisterWeb
	cur, size := &RegisterWeb{}, 2
	for _, t := range ts {
		if len(cur.Tunnels) > 0 && (size+t.size() > MaxFrameSize || len(cur.Tunnels) == MaxTunnels) {
			out = append(out, cur)
			cur, size = &RegisterWeb{}, 2
		}
		cur.Tunnels = append(cur.Tunnels, t)
		size += t.size()
	}
	return append(out, cur)
}

func (*RegisterWeb) msgType() byte { return msgRegisterWeb }

func (m *RegisterWeb) encode(e *enc) {
	e.u16(uint16(len(m.Tunnels)))
	for _, t := range m.Tunnels {
		e.str(t.Name)
		e.u8(byte(t.Protocol))
		e.str(t.Host)
		e.prefixes(t.Allow)
		e.prefixes(t.Deny)
		e.str(t.Auth.User)
		e.str(string(t.Auth.Salt))
		e.str(string(t.Auth.Hash))
	}
}

func (m *RegisterWeb) decode(d *dec) {
	n := int(d.u16())
	if n > MaxTunnels {
		d.fail()
		return
	}
	m.Tunnels = make([]WebTunnel, 0, min(n, 16))
	for i := 0; i < n && d.err == nil; i++ {
		var t WebTunnel
		t.Name = d.str(MaxNameLen)
		t.Protocol = Protocol(d.u8())
		t.Host = d.str(MaxHostLen)
		t.Allow = d.prefixes()
		t.Deny = d.prefixes()
		t.Auth.User = d.str(MaxAuthUserLen)
		if salt := d.str(AuthSaltLen); salt != "" {
			t.Auth.Salt = []byte(salt)
		}
		if hash := d.str(AuthHashLen); hash != "" {
			t.Auth.Hash = []byte(hash)
		}
		m.Tunnels = append(m.Tunnels, t)
	}
}
