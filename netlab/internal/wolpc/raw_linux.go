package main

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/homeport/homeport/internal/wol"
)

// listenRaw calls got for every magic packet for any MAC that arrives on
// ifName as an Ethernet frame of EtherType 0x0842.
func listenRaw(ifName string, got func(wol.MAC)) (func(), error) {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return nil, err
	}
	proto := int(htons(wol.EtherType))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(wol.EtherType), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("AF_PACKET bind %s: %w", ifName, err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return
			}
			if m, err := wol.ParsePacket(buf[:n]); err == nil {
				got(m)
			}
		}
	}()
	return func() { unix.Shutdown(fd, unix.SHUT_RDWR); unix.Close(fd) }, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
