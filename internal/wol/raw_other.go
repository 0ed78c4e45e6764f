//go:build !linux

package wol

import "net"

// sendRaw is Linux's only (AF_PACKET).
func sendRaw(*net.Interface, []byte) error { return errNoRaw }
