package wol

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// sendRaw sends pkt in an Ethernet broadcast frame with EtherType
// 0x0842 on ifi, through an AF_PACKET socket (CAP_NET_RAW needed).
func sendRaw(ifi *net.Interface, pkt []byte) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: receives nothing
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	defer unix.Close(fd)
	bcast := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := make([]byte, 0, 14+len(pkt))
	frame = append(frame, bcast[:6]...)
	frame = append(frame, ifi.HardwareAddr...)
	frame = append(frame, EtherType>>8, EtherType&0xff)
	frame = append(frame, pkt...)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Addr: bcast, Protocol: htons(EtherType)}
	if err := unix.Sendto(fd, frame, 0, sa); err != nil {
		return fmt.Errorf("AF_PACKET send on %s: %w", ifi.Name, err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
