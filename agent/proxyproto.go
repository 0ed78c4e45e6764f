package agent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// PROXY protocol (HAProxy's PROXY protocol specification, versions 1 and
// 2): a header the agent sends to a target before any data, so that the
// target sees the visitor's address instead of the agent's.

// proxySig starts every version 2 header.
var proxySig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeader returns the header of version "v1" or "v2" for a TCP
// connection from visitor to public (the relay's address it reached).
// Addresses of different families are both written as IPv6.
func proxyHeader(version string, visitor, public netip.AddrPort) ([]byte, error) {
	src, dst := visitor.Addr().Unmap(), public.Addr().Unmap()
	if !src.IsValid() || !dst.IsValid() {
		return nil, fmt.Errorf("PROXY header: addresses %v, %v", visitor, public)
	}
	if src.Is4() != dst.Is4() {
		src, dst = netip.AddrFrom16(src.As16()), netip.AddrFrom16(dst.As16())
	}
	switch version {
	case "v1":
		fam := "TCP4"
		if !src.Is4() {
			fam = "TCP6"
		}
		return fmt.Appendf(nil, "PROXY %s %s %s %d %d\r\n", fam, src, dst, visitor.Port(), public.Port()), nil
	case "v2":
		b := append([]byte(nil), proxySig...)
		b = append(b, 0x21) // version 2, command PROXY
		if src.Is4() {
			b = append(b, 0x11) // TCP over IPv4
			b = binary.BigEndian.AppendUint16(b, 12)
			s4, d4 := src.As4(), dst.As4()
			b = append(append(b, s4[:]...), d4[:]...)
		} else {
			b = append(b, 0x21) // TCP over IPv6
			b = binary.BigEndian.AppendUint16(b, 36)
			s16, d16 := src.As16(), dst.As16()
			b = append(append(b, s16[:]...), d16[:]...)
		}
		b = binary.BigEndian.AppendUint16(b, visitor.Port())
		return binary.BigEndian.AppendUint16(b, public.Port()), nil
	}
	return nil, fmt.Errorf("PROXY protocol version %q: want v1 or v2", version)
}
