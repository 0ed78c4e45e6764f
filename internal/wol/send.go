package wol

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Target says where a magic packet goes.
type Target struct {
	MAC MAC
	// Broadcast is the UDP destination; the zero Addr: the directed
	// broadcast of the interface whose subnet holds Host, else
	// 255.255.255.255.
	Broadcast netip.Addr
	// Interface names the network interface for the raw frame (and, with
	// no Broadcast, for the directed broadcast); "": the one whose subnet
	// holds Broadcast or Host.
	Interface string
	// Port is the UDP port; 0: DefaultPort.
	Port uint16
	// Host is the sleeping machine's address, when known: it picks the
	// interface.
	Host netip.Addr
}

// Sent says how a magic packet went out.
type Sent struct {
	// UDP is the address the UDP packet went to ("" if it failed).
	UDP string
	// Interface is the interface chosen ("" for none).
	Interface string
	// Raw: the Ethernet frame went out on Interface.
	Raw bool
	// UDPErr and RawErr say why a way failed or was not tried.
	UDPErr, RawErr error
}

// String says how the packet went, for a log line, e.g.
// "udp 192.168.1.255:9, ethernet on eth0".
func (s Sent) String() string {
	var parts []string
	if s.UDP != "" {
		parts = append(parts, "udp "+s.UDP)
	}
	if s.Raw {
		parts = append(parts, "ethernet on "+s.Interface)
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// ErrNotSent means no way of sending the magic packet worked.
var ErrNotSent = errors.New("magic packet not sent")

// errNoInterface means no Ethernet interface was found to send a raw
// frame on.
var errNoInterface = errors.New("no Ethernet interface holds the target's subnet (give interface)")

// Send sends one magic packet for t.MAC by every way it can: a UDP
// broadcast and, on Linux with CAP_NET_RAW, a raw Ethernet frame. It
// fails (ErrNotSent) only if neither went out.
func Send(ctx context.Context, t Target) (Sent, error) {
	var s Sent
	ifi, ifErr := pickInterface(t)
	if ifi != nil {
		s.Interface = ifi.Name
	}
	dst := t.Broadcast
	if !dst.IsValid() {
		dst = directedBroadcast(ifi, t.Host)
	}
	port := t.Port
	if port == 0 {
		port = DefaultPort
	}
	pkt := Packet(t.MAC)
	to := netip.AddrPortFrom(dst, port)
	if s.UDPErr = sendUDP(ctx, to, pkt); s.UDPErr == nil {
		s.UDP = to.String()
	}
	switch {
	case ifErr != nil:
		s.RawErr = ifErr
	case ifi == nil || ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6:
		s.RawErr = errNoInterface
	default:
		if s.RawErr = sendRaw(ifi, pkt); s.RawErr == nil {
			s.Raw = true
		}
	}
	if s.UDP == "" && !s.Raw {
		return s, fmt.Errorf("%w: udp to %s: %v; ethernet: %v", ErrNotSent, to, s.UDPErr, s.RawErr)
	}
	return s, nil
}

// pickInterface returns the interface t names, else the one whose IPv4
// subnet holds t.Broadcast or t.Host (nil: none).
func pickInterface(t Target) (*net.Interface, error) {
	if t.Interface != "" {
		ifi, err := net.InterfaceByName(t.Interface)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", t.Interface, err)
		}
		return ifi, nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, nil
	}
	for _, want := range []netip.Addr{t.Broadcast, t.Host} {
		if !want.IsValid() {
			continue
		}
		for i := range ifs {
			if _, ok := subnetOf(&ifs[i], want.Unmap()); ok {
				return &ifs[i], nil
			}
		}
	}
	return nil, nil
}

// subnetOf returns the IPv4 subnet of ifi that holds a.
func subnetOf(ifi *net.Interface, a netip.Addr) (netip.Prefix, bool) {
	if ifi == nil || !a.Is4() {
		return netip.Prefix{}, false
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, false
	}
	for _, ad := range addrs {
		n, ok := ad.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		ones, bits := n.Mask.Size()
		if bits == 128 {
			ones -= 96 // an IPv4 mask written as IPv6's
		}
		if !ok || !ip.Unmap().Is4() || bits == 0 || ones < 0 {
			continue
		}
		if p := netip.PrefixFrom(ip.Unmap(), ones).Masked(); p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// directedBroadcast returns the broadcast address of ifi's subnet that
// holds host, else the limited broadcast 255.255.255.255.
func directedBroadcast(ifi *net.Interface, host netip.Addr) netip.Addr {
	limited := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	if !host.IsValid() {
		return limited
	}
	p, ok := subnetOf(ifi, host.Unmap())
	if !ok || p.Bits() >= 31 {
		return limited
	}
	b := p.Addr().As4()
	for i := range b {
		bit := max(0, min(8, p.Bits()-8*i))
		b[i] |= byte(0xff >> bit)
	}
	return netip.AddrFrom4(b)
}

// sendUDP sends pkt to to from a socket that may broadcast.
func sendUDP(ctx context.Context, to netip.AddrPort, pkt []byte) error {
	lc := net.ListenConfig{Control: allowBroadcast}
	network := "udp4"
	if to.Addr().Is6() && !to.Addr().Is4In6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(ctx, network, ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	_, err = pc.(*net.UDPConn).WriteToUDPAddrPort(pkt, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
	return err
}
