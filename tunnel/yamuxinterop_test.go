package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// Interoperability of the TCP transport with an unmodified yamux peer,
// in both roles, over real TLS on loopback as a relay or agent of
// another make would see it: this end's layer (see yamux.go) must speak
// yamux's protocol as yamux itself does.

// interopPair returns a session of ours and a stock yamux session (with
// yamux's default configuration) on one TLS link; ours is the client
// (the agent) if oursClient. tap sees the frames on the stock side.
func interopPair(t *testing.T, oursClient bool) (ours *yamuxSession, stock *yamux.Session, tap *frameTap) {
	t.Helper()
	c, s := pinnedPair(t, TCPTransport{})
	oursLink, stockLink := c, s
	if !oursClient {
		oursLink, stockLink = s, c
	}
	o, err := oursLink.Mux(DefaultSessionConfig())
	if err != nil {
		t.Fatal(err)
	}
	ours = o.(*yamuxSession)
	tap = &frameTap{Conn: stockLink.(*tlsLink).Conn}
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	if oursClient {
		stock, err = yamux.Server(tap, yc)
	} else {
		stock, err = yamux.Client(tap, yc)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ours.Close(); stock.Close() })
	return ours, stock, tap
}

// frameTap is the stock side's link: it follows the frames both ways and
// keeps, per stream, the data it sent and the credit it was granted.
type frameTap struct {
	net.Conn
	in, out tapParser

	mu      sync.Mutex
	sent    map[uint32]uint64 // data bytes the stock side sent
	granted map[uint32]uint64 // credit it was granted, beyond baseWindow
	updates map[uint32]int    // window updates it received with credit
	ahead   map[uint32]uint64 // the most credit it held at a time
}

func (f *frameTap) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	f.in.feed(p[:n], func(h frameHeader) {
		if h.typ() != yamuxTypeWindowUpdate || h.length() == 0 {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.init()
		id := h.id()
		f.granted[id] += uint64(h.length())
		f.updates[id]++
		if credit := baseWindow + f.granted[id]; credit > f.sent[id] {
			f.ahead[id] = max(f.ahead[id], credit-f.sent[id])
		}
	})
	return n, err
}

func (f *frameTap) Write(p []byte) (int, error) {
	f.out.feed(p, func(h frameHeader) {
		if h.typ() == yamuxTypeData {
			f.mu.Lock()
			f.init()
			f.sent[h.id()] += uint64(h.length())
			f.mu.Unlock()
		}
	})
	return f.Conn.Write(p)
}

func (f *frameTap) init() {
	if f.sent == nil {
		f.sent, f.granted = make(map[uint32]uint64), make(map[uint32]uint64)
		f.updates, f.ahead = make(map[uint32]int), make(map[uint32]uint64)
	}
}

// credit reports the window updates with credit stream id received, and
// the most credit it held at once.
func (f *frameTap) credit(id uint32) (updates int, ahead uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updates[id], f.ahead[id]
}

// tapParser finds the frame headers in a byte stream fed in pieces.
type tapParser struct {
	hdr  [yamuxHeaderSize]byte
	have int
	skip uint32 // body bytes still to pass
}

func (tp *tapParser) feed(p []byte, onHeader func(frameHeader)) {
	for len(p) > 0 {
		if tp.skip > 0 {
			k := min(uint32(len(p)), tp.skip)
			tp.skip -= k
			p = p[k:]
			continue
		}
		k := copy(tp.hdr[tp.have:], p)
		tp.have += k
		p = p[k:]
		if tp.have < yamuxHeaderSize {
			return
		}
		tp.have = 0
		h := frameHeader(tp.hdr[:])
		if h.typ() == yamuxTypeData {
			tp.skip = binary.BigEndian.Uint32(tp.hdr[8:])
		}
		onHeader(h)
	}
}

// interopStreams opens a stream of ours to the stock side (outgoing) or
// of the stock side to ours, makes it known with a first byte, and
// returns both ends.
func interopStreams(t *testing.T, ours *yamuxSession, stock *yamux.Session, outgoing bool) (Stream, *yamux.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	if outgoing {
		o, err := ours.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var s *yamux.Stream
		firstByte(t, o, func() io.Reader {
			if s, err = stock.AcceptStreamWithContext(ctx); err != nil {
				t.Fatal(err)
			}
			return s
		})
		return o, s
	}
	s, err := stock.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	var o Stream
	firstByte(t, s, func() io.Reader {
		if o, err = ours.AcceptStream(ctx); err != nil {
			t.Fatal(err)
		}
		return o
	})
	return o, s
}

var interopRoles = []struct {
	name       string
	oursClient bool
}{
	{"ours client, stock server", true},
	{"ours server, stock client", false},
}

var interopWays = []struct {
	name     string
	outgoing bool
}{
	{"opened by ours", true},
	{"opened by stock", false},
}

// TestYamuxInteropHalfClose: in both roles, on streams opened by either
// side, a CloseWrite on one side is an EOF on the other, while the
// other way keeps flowing.
func TestYamuxInteropHalfClose(t *testing.T) {
	for _, role := range interopRoles {
		for _, way := range interopWays {
			t.Run(role.name+"/"+way.name, func(t *testing.T) {
				leak.Check(t)
				ours, stock, _ := interopPair(t, role.oursClient)
				deadline := time.Now().Add(testenv.Deadline(10 * time.Second))
				// Ours ends its side first; stock writes on.
				o, s := interopStreams(t, ours, stock, way.outgoing)
				o.SetDeadline(deadline)
				s.SetDeadline(deadline)
				halfClose(t, o, s, o.CloseWrite, "ours", "stock")
				// Stock ends its side first (yamux's Close is a
				// half-close); ours writes on.
				o, s = interopStreams(t, ours, stock, way.outgoing)
				o.SetDeadline(deadline)
				s.SetDeadline(deadline)
				halfClose(t, s, o, s.Close, "stock", "ours")
				o.Close()
			})
		}
	}
}

// halfClose writes a message from a to b, ends a's side with closeWrite,
// checks that b reads the message and EOF, and that b's messages still
// reach a after that, and then b's EOF.
func halfClose(t *testing.T, a, b net.Conn, closeWrite func() error, aName, bName string) {
	t.Helper()
	if _, err := a.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := closeWrite(); err != nil {
		t.Fatalf("%s: CloseWrite: %v", aName, err)
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "last words" {
		t.Fatalf("%s read %q, %v after %s's CloseWrite; want the message and EOF", bName, got, err, aName)
	}
	for i := range 3 {
		msg := []byte{'r', 'e', 'p', 'l', 'y', byte('0' + i)}
		if _, err := b.Write(msg); err != nil {
			t.Fatalf("%s writing after %s's CloseWrite: %v", bName, aName, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(a, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("%s read %q, %v after its CloseWrite; want %q", aName, buf, err, msg)
		}
	}
	if c, ok := b.(interface{ CloseWrite() error }); ok {
		c.CloseWrite()
	} else {
		b.Close()
	}
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("%s read %d, %v at the end; want EOF", aName, n, err)
	}
}

// TestYamuxInteropReset: in both roles, ours resetting a stream is an
// error, not an EOF, for stock yamux's Read and Write, and stock yamux
// forgets the stream; stock yamux resetting a stream (it does when its
// backlog of streams not yet accepted is full) is an error for ours.
func TestYamuxInteropReset(t *testing.T) {
	for _, role := range interopRoles {
		t.Run(role.name+"/ours resets", func(t *testing.T) {
			leak.Check(t)
			ours, stock, _ := interopPair(t, role.oursClient)
			o, s := interopStreams(t, ours, stock, true)
			s.SetDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
			o.(*yamuxStream).Abort()
			o.Close()
			if n, err := s.Read(make([]byte, 1)); !errors.Is(err, yamux.ErrConnectionReset) {
				t.Fatalf("stock Read of a stream ours reset: %d, %v; want ErrConnectionReset", n, err)
			}
			if _, err := s.Write([]byte("x")); !errors.Is(err, yamux.ErrConnectionReset) {
				t.Fatalf("stock Write to a stream ours reset: %v; want ErrConnectionReset", err)
			}
			waitFor(t, "stock yamux to forget the reset stream", func() bool { return stock.NumStreams() == 0 })
			// The session goes on.
			o, s = interopStreams(t, ours, stock, false)
			o.Close()
			s.Close()
		})
		t.Run(role.name+"/stock resets", func(t *testing.T) {
			leak.Check(t)
			ours, _, _ := interopPair(t, role.oursClient)
			// yamux's default backlog is 256 streams: the one after is
			// reset.
			backlog := yamux.DefaultConfig().AcceptBacklog
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
			defer cancel()
			var last Stream
			for range backlog + 1 {
				st, err := ours.OpenStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				last = st
			}
			last.SetDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
			if n, err := last.Read(make([]byte, 1)); !errors.Is(err, yamux.ErrConnectionReset) {
				t.Fatalf("ours Read of a stream stock yamux reset: %d, %v; want ErrConnectionReset", n, err)
			}
			if _, err := last.Write([]byte("x")); !errors.Is(err, yamux.ErrConnectionReset) {
				t.Fatalf("ours Write to a stream stock yamux reset: %v; want ErrConnectionReset", err)
			}
		})
	}
}

// waitFor polls ok until it holds, for at most testenv.Deadline(10 s).
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	d := testenv.Deadline(10 * time.Second)
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestYamuxInteropTransfer: in both roles, 64 MiB each way at once on a
// stream ours opened (16 MiB on one stock yamux opened) arrive whole
// (sha256), and the window ours
// grants the stock sender grows past yamux's 256 KiB: stock yamux is let
// have megabytes in flight, with far fewer window updates than a 256 KiB
// window would take.
func TestYamuxInteropTransfer(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	for _, role := range interopRoles {
		for _, way := range interopWays {
			t.Run(role.name+"/"+way.name, func(t *testing.T) {
				leak.Check(t)
				size := size
				if !way.outgoing {
					size /= 4
				}
				ours, stock, tap := interopPair(t, role.oursClient)
				// Each grant may grow the window (see recvWindows),
				// however slowly this machine reads: what is tested is
				// that stock yamux takes the credit ours grants.
				ours.fw.wins.rtt.Store(int64(time.Hour))
				o, s := interopStreams(t, ours, stock, way.outgoing)
				transfer(t, o, s, size)
				updates, ahead := tap.credit(s.StreamID())
				t.Logf("stock yamux sent %d MiB on %d window updates, with up to %d KiB of credit at once", size>>20, updates, ahead>>10)
				if ahead < 4<<20 {
					t.Errorf("stock yamux held at most %d KiB of credit, want the window grown to 4 MiB or more", ahead>>10)
				}
				// A 256 KiB window is topped up each time half of it
				// was read: size/128 KiB updates.
				if small := size / (baseWindow / 2); updates >= small/4 {
					t.Errorf("%d window updates for %d MiB; a fixed 256 KiB window takes %d", updates, size>>20, small)
				}
			})
		}
	}
}

// transfer sends size random bytes each way at once between ours and
// stock, each ending its side after, and checks the sha256 of each.
func transfer(t *testing.T, ours Stream, stock *yamux.Stream, size int) {
	t.Helper()
	deadline := time.Now().Add(testenv.Deadline(2 * time.Minute))
	ours.SetDeadline(deadline)
	stock.SetDeadline(deadline)
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)
	send := func(w io.Writer, data []byte, closeWrite func() error) <-chan error {
		done := make(chan error, 1)
		go func() {
			// In pieces, as a splice writes.
			var err error
			for off := 0; off < len(data) && err == nil; off += 256 << 10 {
				_, err = w.Write(data[off:min(off+256<<10, len(data))])
			}
			if err == nil {
				err = closeWrite()
			}
			done <- err
		}()
		return done
	}
	upDone := send(ours, up, ours.CloseWrite)
	downDone := send(stock, down, stock.Close)
	gotUp, gotDown := sha256.New(), sha256.New()
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(gotUp, stock)
		readDone <- err
	}()
	_, err := io.Copy(gotDown, ours)
	for _, e := range []error{err, <-readDone, <-upDone, <-downDone} {
		if e != nil {
			t.Fatal(e)
		}
	}
	wantUp, wantDown := sha256.Sum256(up), sha256.Sum256(down)
	if !bytes.Equal(gotUp.Sum(nil), wantUp[:]) {
		t.Fatal("ours to stock: the data changed on the way")
	}
	if !bytes.Equal(gotDown.Sum(nil), wantDown[:]) {
		t.Fatal("stock to ours: the data changed on the way")
	}
	ours.Close()
}
