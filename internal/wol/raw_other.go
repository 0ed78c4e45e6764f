//go:build !linux

package wol

import (
	"errors"
	"net"
)

// errNoRaw means raw frames cannot be sent on this system (Linux only).
var errNoRaw = errors.New("raw Ethernet frames are sent on Linux only")

// sendRaw is Linux's only (AF_PACKET).
func sendRaw(*net.Interface, []byte) error { return errNoRaw }
