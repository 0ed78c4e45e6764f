package portmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPCPMapRequestLayout checks a MAP request byte by byte against RFC
// 6887 §7.1 and §11.1.
func TestPCPMapRequestLayout(t *testing.T) {
	nonce := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	b := encodePCPMapRequest(netip.MustParseAddr("192.168.7.2"), 7200, pcpMap{nonce: nonce, protocol: 6, internal: 3389, external: 3390})
	want := []byte{
		2, 1, 0, 0, // version 2, R=0 opcode MAP, reserved
		0, 0, 0x1c, 0x20, // lifetime 7200
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 7, 2, // client address, IPv4-mapped
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // nonce
		6, 0, 0, 0, // protocol TCP, reserved
		0x0d, 0x3d, 0x0d, 0x3e, // internal 3389, suggested external 3390
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, // suggested external address: any IPv4
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("request\n got % x\nwant % x", b, want)
	}
}

func pcpAnswer(result uint8, lifetime, epoch uint32, m pcpMap) []byte {
	b := make([]byte, pcpHeaderLen+pcpMapLen)
	b[0], b[1], b[3] = pcpVersion, pcpResponseBit|pcpOpMap, result
	binary.BigEndian.PutUint32(b[4:], lifetime)
	binary.BigEndian.PutUint32(b[8:], epoch)
	body := b[pcpHeaderLen:]
	copy(body, m.nonce[:])
	body[12] = m.protocol
	binary.BigEndian.PutUint16(body[16:], m.internal)
	binary.BigEndian.PutUint16(body[18:], m.external)
	a := as16(m.extAddr)
	copy(body[20:], a[:])
	return b
}

func TestDecodePCPMapResponse(t *testing.T) {
	ok := pcpMap{nonce: [12]byte{9}, protocol: 17, internal: 51820, external: 40000, extAddr: netip.MustParseAddr("11.7.0.2")}
	good := pcpAnswer(0, 120, 33, ok)
	for _, tc := range []struct {
		name    string
		b       []byte
		wantErr string
		check   func(pcpResponse) bool
	}{
		{"success", good, "", func(r pcpResponse) bool {
			return r.result == 0 && r.lifetime == 120 && r.epoch == 33 && r.m == ok
		}},
		{"error answer without body", pcpAnswer(2, 0, 5, pcpMap{})[:pcpHeaderLen], "", func(r pcpResponse) bool {
			return r.result == 2 && r.bodyless
		}},
		{"NAT-PMP router", []byte{0, 0x80, 0, 1, 0, 0, 0, 5}, "version 0", nil},
		{"empty", nil, "0-byte answer", nil},
		{"request echoed", encodePCPMapRequest(netip.MustParseAddr("192.168.7.2"), 1, ok), "opcode byte 0x1", nil},
		{"short success", good[:pcpHeaderLen+20], "MAP answer of 44 bytes", nil},
		{"not a multiple of 4", append(bytes.Clone(good), 0), "answer of 61 bytes", nil},
		{"too long", append(bytes.Clone(good), make([]byte, 1100)...), "answer of 1160 bytes", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := decodePCPMapResponse(tc.b)
			if tc.wantErr != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(r) {
				t.Fatalf("decode = %+v, %v", r, err)
			}
		})
	}
}

// FuzzDecodePCPMapResponse: any bytes from the network decode to an
// answer or an error, never a panic, and a success always carries a body.
func FuzzDecodePCPMapResponse(f *testing.F) {
	f.Add(pcpAnswer(0, 120, 1, pcpMap{nonce: [12]byte{1}, protocol: 6, internal: 80, external: 80, extAddr: netip.MustParseAddr("11.7.0.2")}))
	f.Add(pcpAnswer(8, 0, 1, pcpMap{})[:pcpHeaderLen])
	f.Add([]byte{0, 0x80, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodePCPMapResponse(b)
		if err == nil && r.result == 0 && len(b) < pcpHeaderLen+pcpMapLen {
			t.Fatalf("a %d-byte success decoded", len(b))
		}
	})
}

// TestPCPExchange runs the client against a PCP server on a loopback
// socket that answers like a router: it ignores a stray datagram, drops
// the first request (the client must send it again), and answers the
// second; a refusal comes back as ErrRefused, and a port with nothing
// listening as ErrNoRouter.
func TestPCPExchange(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: pcpPort})
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.1:%d: %v", pcpPort, err)
	}
	defer srv.Close()
	refuse := make(chan bool, 1)
	go func() {
		buf := make([]byte, 2048)
		seen := 0
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			seen++
			if seen%2 == 1 {
				// Drop it, and send garbage instead.
				_, _ = srv.WriteToUDP([]byte{2, 0x81, 0, 0}, from)
				continue
			}
			var m pcpMap
			body := buf[pcpHeaderLen:n]
			copy(m.nonce[:], body)
			m.protocol = body[12]
			m.internal = binary.BigEndian.Uint16(body[16:])
			m.external = binary.BigEndian.Uint16(body[18:]) + 1
			m.extAddr = netip.MustParseAddr("11.7.0.2")
			result := uint8(0)
			select {
			case <-refuse:
				result = 2
			default:
			}
			_, _ = srv.WriteToUDP(pcpAnswer(result, 3600, 77, m), from)
		}
	}()
	c := &pcpClient{gateway: netip.MustParseAddr("127.0.0.1"), local: netip.MustParseAddr("127.0.0.1")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := Request{Protocol: "tcp", InternalPort: 3389, Lifetime: time.Hour}
	m, err := c.mapPort(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.External != netip.MustParseAddrPort("11.7.0.2:3390") || m.Lifetime != time.Hour || m.epoch != 77 || m.Method != PCP {
		t.Fatalf("mapping %+v", m)
	}
	// A renewal keeps the nonce.
	m2, err := c.mapPort(ctx, req, &m)
	if err != nil || m2.nonce != m.nonce {
		t.Fatalf("renewal: %+v, %v", m2, err)
	}
	refuse <- true
	if _, err := c.mapPort(ctx, req, nil); !errors.Is(err, ErrRefused) || !bytes.Contains([]byte(err.Error()), []byte("not authorized")) {
		t.Fatalf("refused mapping: %v", err)
	}
	srv.Close()
	short, cancel2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancel2()
	if _, err := c.mapPort(short, req, nil); !errors.Is(err, ErrNoRouter) {
		t.Fatalf("no server: %v", err)
	}
}
