// Package wol wakes a sleeping machine with Wake-on-LAN: it builds the
// magic packet for a MAC address and sends it as a UDP broadcast and, on
// Linux where permitted, as a raw Ethernet frame (EtherType 0x0842).
package wol

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
)

// PacketLen is the length of a magic packet: six 0xFF bytes, then the
// MAC address 16 times.
const PacketLen = 6 + 16*6

// DefaultPort is the UDP port magic packets go to by default (discard).
const DefaultPort = 9

// EtherType is the EtherType of a magic packet sent as a raw frame.
const EtherType = 0x0842

// MAC is a 48-bit hardware address.
type MAC [6]byte

// String formats m as six colon-separated lower-case hex bytes.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// ErrBadMAC is wrapped by ParseMAC's errors.
var ErrBadMAC = errors.New("bad MAC address")

// ParseMAC reads a 48-bit MAC address written with colons
// (00:11:22:33:44:55), dashes (00-11-22-33-44-55), Cisco's dots
// (0011.2233.4455) or as twelve hex digits alone. A group (multicast or
// broadcast) address and the all-zero one name no machine to wake.
func ParseMAC(s string) (MAC, error) {
	const want = "want six bytes in hex, e.g. 00:11:22:33:44:55, 00-11-22-33-44-55 or 0011.2233.4455"
	var m MAC
	t := strings.TrimSpace(s)
	if t == "" {
		return m, fmt.Errorf("%w: empty; %s", ErrBadMAC, want)
	}
	if len(t) == 12 && isHex(t) {
		t = t[0:4] + "." + t[4:8] + "." + t[8:12]
	}
	hw, err := net.ParseMAC(t)
	if err != nil {
		return m, fmt.Errorf("%w %q: %s", ErrBadMAC, s, want)
	}
	if len(hw) != 6 {
		return m, fmt.Errorf("%w %q: %d bytes; %s", ErrBadMAC, s, len(hw), want)
	}
	copy(m[:], hw)
	switch {
	case m == MAC{}:
		return MAC{}, fmt.Errorf("%w %q: all zero, no network card has it", ErrBadMAC, s)
	case m[0]&1 != 0:
		return MAC{}, fmt.Errorf("%w %q: a group (multicast or broadcast) address, not one network card's", ErrBadMAC, s)
	}
	return m, nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

// Packet returns the magic packet that wakes m.
func Packet(m MAC) []byte {
	p := make([]byte, 0, PacketLen)
	p = append(p, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	for range 16 {
		p = append(p, m[:]...)
	}
	return p
}

// ErrNotMagic is returned by ParsePacket for bytes that are not a magic
// packet.
var ErrNotMagic = errors.New("not a magic packet")

// ParsePacket reads a magic packet received from the network and returns
// the MAC address it wakes. It accepts the 102 bytes alone or followed by
// a SecureOn password (4 or 6 bytes), which it ignores.
func ParsePacket(b []byte) (MAC, error) {
	var m MAC
	switch len(b) {
	case PacketLen, PacketLen + 4, PacketLen + 6:
	default:
		return m, fmt.Errorf("%w: %d bytes, want %d", ErrNotMagic, len(b), PacketLen)
	}
	if !bytes.Equal(b[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		return m, fmt.Errorf("%w: does not begin with six 0xff bytes", ErrNotMagic)
	}
	copy(m[:], b[6:12])
	for i := 1; i < 16; i++ {
		if !bytes.Equal(b[6+6*i:12+6*i], m[:]) {
			return MAC{}, fmt.Errorf("%w: copy %d of the address differs from the first", ErrNotMagic, i+1)
		}
	}
	return m, nil
}
