package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// PCP (RFC 6887): a MAP request is a 24-byte header and a 36-byte MAP
// body, sent by UDP to the router's port 5351; the answer has the same
// body after a 24-byte response header.
const (
	pcpPort        = 5351
	pcpVersion     = 2
	pcpOpMap       = 1
	pcpResponseBit = 0x80
	pcpHeaderLen   = 24
	pcpMapLen      = 36
	// pcpMaxPacket is the most a PCP message may be (RFC 6887 §7).
	pcpMaxPacket = 1100
)

// PCP result codes (RFC 6887 §7.4).
var pcpResults = map[uint8]string{
	1:  "unsupported version",
	2:  "not authorized",
	3:  "malformed request",
	4:  "unsupported opcode",
	5:  "unsupported option",
	6:  "malformed option",
	7:  "network failure",
	8:  "no resources",
	9:  "unsupported protocol",
	10: "user exceeded quota",
	11: "cannot provide external",
	12: "address mismatch",
	13: "excessive remote peers",
}

// pcpMap is the MAP body of a request or response.
type pcpMap struct {
	nonce    [12]byte
	protocol uint8 // IANA: 6 TCP, 17 UDP
	internal uint16
	external uint16
	extAddr  netip.Addr
}

// pcpResponse is a decoded MAP response.
type pcpResponse struct {
	result   uint8
	lifetime uint32
	epoch    uint32
	m        pcpMap
	// bodyless: an error answer without the MAP body, which has no
	// nonce to match.
	bodyless bool
}

func encodePCPMapRequest(client netip.Addr, lifetime uint32, m pcpMap) []byte {
	b := make([]byte, pcpHeaderLen+pcpMapLen)
	b[0] = pcpVersion
	b[1] = pcpOpMap
	binary.BigEndian.PutUint32(b[4:8], lifetime)
	a16 := as16(client)
	copy(b[8:24], a16[:])
	body := b[pcpHeaderLen:]
	copy(body[0:12], m.nonce[:])
	body[12] = m.protocol
	binary.BigEndian.PutUint16(body[16:18], m.internal)
	binary.BigEndian.PutUint16(body[18:20], m.external)
	ext := m.extAddr
	if !ext.IsValid() {
		// "Any IPv4 address": the IPv4-mapped all-zeros address.
		ext = netip.AddrFrom4([4]byte{})
	}
	e16 := as16(ext)
	copy(body[20:36], e16[:])
	return b
}

func as16(a netip.Addr) [16]byte {
	if a.Is4() {
		return netip.AddrFrom16(a.As16()).As16() // IPv4-mapped
	}
	return a.As16()
}

// errPCPVersion: the router speaks another version (a NAT-PMP router
// answers a PCP request with version 0).
var errPCPVersion = errors.New("router does not speak PCP version 2")

// decodePCPMapResponse reads a MAP response. It checks every length and
// field before use: the bytes come from the network.
func decodePCPMapResponse(b []byte) (pcpResponse, error) {
	var r pcpResponse
	if len(b) < 4 {
		return r, fmt.Errorf("pcp: %d-byte answer", len(b))
	}
	if b[0] != pcpVersion {
		return r, fmt.Errorf("pcp: answer of version %d: %w", b[0], errPCPVersion)
	}
	if b[1] != pcpResponseBit|pcpOpMap {
		return r, fmt.Errorf("pcp: answer with opcode byte %#x, want %#x", b[1], pcpResponseBit|pcpOpMap)
	}
	if len(b) > pcpMaxPacket || len(b)%4 != 0 {
		return r, fmt.Errorf("pcp: answer of %d bytes", len(b))
	}
	if len(b) < pcpHeaderLen {
		return r, fmt.Errorf("pcp: answer of %d bytes, shorter than its header", len(b))
	}
	r.result = b[3]
	r.lifetime = binary.BigEndian.Uint32(b[4:8])
	r.epoch = binary.BigEndian.Uint32(b[8:12])
	if r.result != 0 {
		// An error answer may leave out the body (RFC 6887 §7.2).
		if len(b) >= pcpHeaderLen+pcpMapLen {
			copy(r.m.nonce[:], b[pcpHeaderLen:pcpHeaderLen+12])
		} else {
			r.bodyless = true
		}
		return r, nil
	}
	if len(b) < pcpHeaderLen+pcpMapLen {
		return r, fmt.Errorf("pcp: MAP answer of %d bytes, want at least %d", len(b), pcpHeaderLen+pcpMapLen)
	}
	body := b[pcpHeaderLen:]
	copy(r.m.nonce[:], body[0:12])
	r.m.protocol = body[12]
	r.m.internal = binary.BigEndian.Uint16(body[16:18])
	r.m.external = binary.BigEndian.Uint16(body[18:20])
	r.m.extAddr = netip.AddrFrom16([16]byte(body[20:36])).Unmap()
	return r, nil
}

// pcpClient speaks PCP to one router.
type pcpClient struct {
	gateway netip.Addr
	local   netip.Addr // this host's address toward the gateway
}

func (*pcpClient) method() Method { return PCP }

func ianaProto(p string) uint8 {
	if p == "udp" {
		return 17
	}
	return 6
}

func (c *pcpClient) mapPort(ctx context.Context, r Request, prev *Mapping) (Mapping, error) {
	m := pcpMap{protocol: ianaProto(r.Protocol), internal: r.InternalPort, external: r.wantExternal()}
	if prev != nil {
		// A renewal repeats the nonce and asks for the port it holds.
		m.nonce, m.external, m.extAddr = prev.nonce, prev.External.Port(), prev.External.Addr()
	} else if _, err := rand.Read(m.nonce[:]); err != nil {
		return Mapping{}, err
	}
	life := uint32(min(r.Lifetime/time.Second, 1<<31))
	res, err := c.exchange(ctx, encodePCPMapRequest(c.local, life, m), m.nonce)
	if err != nil {
		return Mapping{}, err
	}
	if res.result != 0 {
		return Mapping{}, fmt.Errorf("pcp: %s: %w", pcpResultText(res.result), ErrRefused)
	}
	if res.m.protocol != m.protocol || res.m.internal != m.internal {
		return Mapping{}, fmt.Errorf("pcp: answer for protocol %d port %d, asked %d port %d", res.m.protocol, res.m.internal, m.protocol, m.internal)
	}
	if res.m.external == 0 || !res.m.extAddr.IsValid() || res.lifetime == 0 {
		return Mapping{}, fmt.Errorf("pcp: answer without an external port, address or lifetime: %w", ErrRefused)
	}
	return Mapping{
		Method:   PCP,
		Protocol: r.Protocol,
		Internal: netip.AddrPortFrom(c.local, r.InternalPort),
		External: netip.AddrPortFrom(res.m.extAddr, res.m.external),
		Lifetime: time.Duration(res.lifetime) * time.Second,
		Granted:  time.Now(),
		handle:   c,
		epoch:    res.epoch,
		nonce:    m.nonce,
	}, nil
}

func (c *pcpClient) unmap(ctx context.Context, m Mapping) error {
	req := pcpMap{nonce: m.nonce, protocol: ianaProto(m.Protocol), internal: m.Internal.Port()}
	res, err := c.exchange(ctx, encodePCPMapRequest(c.local, 0, req), m.nonce)
	if err != nil {
		return err
	}
	if res.result != 0 {
		return fmt.Errorf("pcp: removing the mapping: %s: %w", pcpResultText(res.result), ErrRefused)
	}
	return nil
}

func (*pcpClient) present(context.Context, Mapping) (bool, bool, error) { return false, false, nil }

func pcpResultText(code uint8) string {
	if s, ok := pcpResults[code]; ok {
		return s
	}
	return fmt.Sprintf("result code %d", code)
}

// exchange sends req until an answer with nonce arrives or ctx ends:
// after 250 ms, then doubling (RFC 6887 asks for 3 s at first, but a
// router on the LAN answers in milliseconds, and a user waits).
func (c *pcpClient) exchange(ctx context.Context, req []byte, nonce [12]byte) (pcpResponse, error) {
	conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.local, 0)),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.gateway, pcpPort)))
	if err != nil {
		return pcpResponse{}, fmt.Errorf("pcp: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, pcpMaxPacket+1)
	wait := 250 * time.Millisecond
	for try := 0; try < 8; try++ {
		if _, err := conn.Write(req); err != nil {
			return pcpResponse{}, fmt.Errorf("pcp: %w", err)
		}
		deadline := time.Now().Add(wait)
		for {
			if ctx.Err() != nil {
				return pcpResponse{}, fmt.Errorf("pcp: no answer from %v: %w", c.gateway, ErrNoRouter)
			}
			_ = conn.SetReadDeadline(deadline)
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				// An ICMP port unreachable: nothing listens on 5351.
				return pcpResponse{}, fmt.Errorf("pcp: %v: %w", err, ErrNoRouter)
			}
			res, err := decodePCPMapResponse(buf[:n])
			if errors.Is(err, errPCPVersion) {
				return pcpResponse{}, fmt.Errorf("%w: %w", err, ErrNoRouter)
			}
			if err != nil || (!res.bodyless && res.m.nonce != nonce) {
				continue // not ours, or garbage: keep listening
			}
			return res, nil
		}
		wait *= 2
	}
	return pcpResponse{}, fmt.Errorf("pcp: no answer from %v: %w", c.gateway, ErrNoRouter)
}
