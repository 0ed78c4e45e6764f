package wol

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseMAC(t *testing.T) {
	want := MAC{0x00, 0x11, 0x22, 0x33, 0x44, 0x5a}
	for _, tc := range []struct {
		name, in string
		err      string // part of the error; "" for none
	}{
		{"colon", "00:11:22:33:44:5a", ""},
		{"colon upper", "00:11:22:33:44:5A", ""},
		{"dash", "00-11-22-33-44-5a", ""},
		{"dotted", "0011.2233.445a", ""},
		{"bare hex", "00112233445a", ""},
		{"spaces around", "  00:11:22:33:44:5a ", ""},
		{"empty", "", "empty"},
		{"five bytes", "00:11:22:33:44", "want six bytes"},
		{"eight bytes", "00:11:22:33:44:55:66:77", "8 bytes"},
		{"not hex", "00:11:22:33:44:zz", "want six bytes"},
		{"mixed separators", "00:11-22:33:44:55", "want six bytes"},
		{"all zero", "00:00:00:00:00:00", "all zero"},
		{"broadcast", "ff:ff:ff:ff:ff:ff", "group"},
		{"multicast", "01:00:5e:00:00:01", "group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMAC(tc.in)
			if tc.err == "" {
				if err != nil || m != want {
					t.Fatalf("ParseMAC(%q) = %v, %v; want %v", tc.in, m, err, want)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrBadMAC) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseMAC(%q) error = %v; want ErrBadMAC saying %q", tc.in, err, tc.err)
			}
		})
	}
}

// TestPacketFormat checks the packet byte by byte against the format, as
// a real UDP listener receives it from Send.
func TestPacketFormat(t *testing.T) {
	m, err := ParseMAC("00:11:22:33:44:55")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	lo := netip.MustParseAddr("127.0.0.1")
	sent, err := Send(context.Background(), Target{MAC: m, Broadcast: lo, Port: port, Host: lo})
	if err != nil {
		t.Fatal(err)
	}
	if sent.UDP != netip.AddrPortFrom(lo, port).String() {
		t.Fatalf("sent %v, want UDP to 127.0.0.1:%d", sent, port)
	}
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	b := buf[:n]
	if n != 102 {
		t.Fatalf("packet is %d bytes, want 102", n)
	}
	for i := range 6 {
		if b[i] != 0xff {
			t.Fatalf("byte %d = %#x, want 0xff", i, b[i])
		}
	}
	for i := range 16 {
		if !bytes.Equal(b[6+6*i:12+6*i], []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55}) {
			t.Fatalf("copy %d of the MAC = % x", i+1, b[6+6*i:12+6*i])
		}
	}
	got, err := ParsePacket(b)
	if err != nil || got != m {
		t.Fatalf("ParsePacket = %v, %v; want %v", got, err, m)
	}
}

func TestParsePacketRefuses(t *testing.T) {
	m := MAC{2, 1, 2, 3, 4, 5}
	good := Packet(m)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"short", good[:101]},
		{"long", append(append([]byte{}, good...), 1)},
		{"no sync", append([]byte{0xfe}, good[1:]...)},
		{"copy differs", func() []byte { b := append([]byte{}, good...); b[100] ^= 1; return b }()},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParsePacket(tc.b); !errors.Is(err, ErrNotMagic) {
				t.Fatalf("ParsePacket = %v, want ErrNotMagic", err)
			}
		})
	}
	if got, err := ParsePacket(append(append([]byte{}, good...), 1, 2, 3, 4)); err != nil || got != m {
		t.Fatalf("with a SecureOn password: %v, %v", got, err)
	}
}

func TestDirectedBroadcast(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no interface lo")
	}
	// lo holds 127.0.0.0/8.
	if got := directedBroadcast(lo, netip.MustParseAddr("127.0.0.5")); got != netip.MustParseAddr("127.255.255.255") {
		t.Fatalf("directed broadcast of 127.0.0.5 on lo = %v", got)
	}
	if got := directedBroadcast(lo, netip.MustParseAddr("192.0.2.1")); got != netip.MustParseAddr("255.255.255.255") {
		t.Fatalf("for an address off lo's subnet: %v, want 255.255.255.255", got)
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add(Packet(MAC{0, 0x11, 0x22, 0x33, 0x44, 0x55}))
	f.Add(append(Packet(MAC{2, 0, 0, 0, 0, 1}), 1, 2, 3, 4, 5, 6))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParsePacket(b)
		if err != nil {
			return
		}
		if !bytes.Equal(Packet(m), b[:PacketLen]) {
			t.Fatalf("accepted % x as a packet for %v", b, m)
		}
	})
}
