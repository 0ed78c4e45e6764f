package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// yamuxPair returns a yamux session pair over real TLS on loopback with
// the given stream window, and the receive windows of the server (the
// relay's end).
func yamuxPair(t *testing.T, window uint32) (client, server Session, relayWins *recvWindows) {
	t.Helper()
	c, s := pinnedPair(t, TCPTransport{})
	cfg := DefaultSessionConfig()
	cfg.StreamWindow = window
	var err error
	if client, err = c.Mux(cfg); err != nil {
		t.Fatal(err)
	}
	if server, err = s.Mux(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, server.(*yamuxSession).fw.wins
}

// openPair opens a stream from the client (agent) end, which writes, and
// accepts it at the server (relay) end, which reads.
func openPair(t *testing.T, client, server Session) (w, r Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	accepted := func() io.Reader {
		if r, err = server.AcceptStream(ctx); err != nil {
			t.Fatal(err)
		}
		return r
	}
	firstByte(t, w, accepted)
	return w, r
}

// firstByte writes a byte to a newly opened stream w, which makes it
// known to the peer, and reads it from the peer's end that accept
// returns.
func firstByte(t *testing.T, w io.Writer, accept func() io.Reader) {
	t.Helper()
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(accept(), make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
}

// window returns stream st's receive window at ws.
func (ws *recvWindows) window(st Stream) (w, outstanding uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	e := ws.streams[st.(*yamuxStream).StreamID()]
	if e == nil {
		return 0, 0
	}
	return e.w, e.outstanding()
}

// writeFor writes to st until a write makes no progress for stall, and
// returns how much it wrote.
func writeFor(st Stream, stall time.Duration) int64 {
	buf := make([]byte, 16<<10)
	var n int64
	for {
		_ = st.SetWriteDeadline(time.Now().Add(stall))
		m, err := st.Write(buf)
		n += int64(m)
		if err != nil {
			_ = st.SetWriteDeadline(time.Time{})
			return n
		}
	}
}

// TestWindowSlowReader: a stream whose reader takes nothing lets its peer
// send yamux's initial window and no more, whatever the stream window:
// a visitor that stops reading a download costs the relay 256 KiB.
func TestWindowSlowReader(t *testing.T) {
	leak.Check(t)
	client, server, wins := yamuxPair(t, 16<<20)
	w, r := openPair(t, client, server)
	sent := writeFor(w, 300*time.Millisecond)
	if sent != baseWindow-1 { // the first byte was read
		t.Fatalf("peer sent %d bytes to a reader that reads nothing, want %d", sent, baseWindow-1)
	}
	// Reading lets the rest through.
	got := make(chan int64, 1)
	go func() { n, _ := io.Copy(io.Discard, r); got <- n }()
	_ = w.SetWriteDeadline(time.Now().Add(10 * time.Second))
	n, err := w.Write(make([]byte, 4<<20))
	if err != nil {
		t.Fatalf("wrote %d bytes to a reading reader: %v", n, err)
	}
	w.Close()
	if n := <-got; n != sent+4<<20 {
		t.Fatalf("read %d bytes, sent %d", n, sent+4<<20)
	}
	r.Close()
	if charged, streams := wins.usage(); charged != 0 || streams != 0 {
		t.Fatalf("closed streams still count: %d bytes of budget, %d streams", charged, streams)
	}
}

// TestWindowGrows: a reader that takes its window in under two round
// trips (a long round trip, set here) grows the window to the stream
// window; idle, it returns to the initial window once the credit it gave
// is used. The bytes arrive whole.
func TestWindowGrows(t *testing.T) {
	leak.Check(t)
	const window = 4 << 20
	client, server, wins := yamuxPair(t, window)
	wins.rtt.Store(int64(time.Hour)) // any window taken in time
	w, r := openPair(t, client, server)
	const size = 32 << 20
	go func() {
		_, _ = w.Write(make([]byte, size))
	}()
	if n, err := io.CopyN(io.Discard, r, size); err != nil {
		t.Fatalf("read %d of %d bytes: %v", n, size, err)
	}
	if got, _ := wins.window(r); got != window {
		t.Fatalf("window after %d MiB read at once: %d, want %d", size>>20, got, window)
	}
	id := r.(*yamuxStream).StreamID()
	wins.shrink(id, time.Now())
	if got, _ := wins.window(r); got != window {
		t.Fatalf("window right after reading: %d, want %d kept", got, window)
	}
	wins.shrink(id, time.Now().Add(shrinkAfter))
	if got, _ := wins.window(r); got != baseWindow {
		t.Fatalf("window once idle: %d, want %d", got, baseWindow)
	}
	// The peer may still use the credit it has: it counts until used.
	sent := writeFor(w, 300*time.Millisecond)
	if _, out := wins.window(r); out != uint64(sent) || sent > window {
		t.Fatalf("after shrinking, peer sent %d, outstanding %d, want equal and at most %d", sent, out, window)
	}
	if _, err := io.CopyN(io.Discard, r, sent); err != nil {
		t.Fatal(err)
	}
	if charged, _ := wins.usage(); charged != 0 {
		t.Fatalf("an idle stream back at the initial window still counts %d bytes", charged)
	}
	w.Close()
	r.Close()
}

// TestWindowBudget: streams whose readers grew their windows and then
// stopped reading hold, together, at most the session's budget beyond
// the initial windows, however many they are; what was sent arrives
// whole once they read again.
func TestWindowBudget(t *testing.T) {
	leak.Check(t)
	const window, streams = 4 << 20, 8
	cfg := DefaultSessionConfig()
	cfg.StreamWindow = window
	budget := sessionWindow(cfg) // 16 MiB
	client, server, wins := yamuxPair(t, window)
	wins.rtt.Store(int64(time.Hour))

	type pair struct {
		w, r       Stream
		sent, read atomic.Int64
	}
	var wg sync.WaitGroup
	pairs := make([]*pair, streams)
	stop := make(chan struct{})
	for i := range pairs {
		p := &pair{}
		p.w, p.r = openPair(t, client, server)
		pairs[i] = p
		wg.Add(2)
		go func() { // the agent end writes until told to stop
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = p.w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				n, err := p.w.Write(buf)
				p.sent.Add(int64(n))
				var ne net.Error
				if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
					t.Error(err)
					return
				}
			}
		}()
		go func() { // the relay end reads 16 MiB fast, then stops
			defer wg.Done()
			n, err := io.CopyN(io.Discard, p.r, 16<<20)
			p.read.Add(n)
			if err != nil {
				t.Error(err)
			}
		}()
	}
	// Wait until every reader has stopped and the writers are stuck.
	deadline := time.Now().Add(60 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		done := 0
		for _, p := range pairs {
			if p.read.Load() == 16<<20 {
				done++
			}
		}
		if done == streams {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readers did not finish in 60 s")
		}
	}
	time.Sleep(time.Second) // the writers use the credit they have left
	var held int64
	for _, p := range pairs {
		held += p.sent.Load() - p.read.Load()
	}
	charged, _ := wins.usage()
	limit := int64(budget) + streams*baseWindow
	t.Logf("%d stalled streams hold %d KiB (limit %d KiB); budget in use %d KiB", streams, held>>10, limit>>10, charged>>10)
	if held > limit || charged > budget {
		t.Fatalf("stalled streams hold %d bytes, budget in use %d; want at most %d and %d", held, charged, limit, budget)
	}
	close(stop)
	wg.Wait()
	// What they hold arrives whole.
	for _, p := range pairs {
		p.w.Close()
		_ = p.r.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, p.r)
		if err != nil {
			t.Fatal(err)
		}
		if want := p.sent.Load() - p.read.Load(); n != want {
			t.Fatalf("read %d of the %d bytes held", n, want)
		}
	}
	for _, p := range pairs {
		p.r.Close()
	}
	if charged, streams := wins.usage(); charged != 0 || streams != 0 {
		t.Fatalf("closed streams still count: %d bytes of budget, %d streams", charged, streams)
	}
}

// chunkConn is a link that delivers its bytes in reads of the given sizes
// in turn, and can ask for a stream's reset after a given read.
type chunkConn struct {
	net.Conn
	data   []byte
	sizes  []int
	reads  int
	onRead func(reads int)
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(c.sizes) > 0 {
		n = min(n, max(1, c.sizes[c.reads%len(c.sizes)]))
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	c.reads++
	if c.onRead != nil {
		c.onRead(c.reads)
	}
	return n, nil
}

// splitFrames cuts a yamux byte stream into frames; a trailing partial
// frame is returned as the last one.
func splitFrames(b []byte) [][]byte {
	var frames [][]byte
	for len(b) > 0 {
		n := min(len(b), yamuxHeaderSize)
		if n == yamuxHeaderSize && b[1] == yamuxTypeData {
			n = int(min(uint64(len(b)), yamuxHeaderSize+uint64(binary.BigEndian.Uint32(b[8:]))))
		}
		frames = append(frames, b[:n])
		b = b[n:]
	}
	return frames
}

// checkFrameReader reads stream through a frameReader whose link delivers
// it in chunks of the given sizes, with a reset of stream 1000+k asked
// after read k for each k in resetAfter. The streams with an odd ID are
// open at this end, and so is any the peer opens (SYN). It checks that
// what yamux reads is the peer's frames, whole and in order, with this
// end's resets only between two of them, except that a data frame of an
// open stream reaches yamux as its header with a length of 0 while its
// body is queued for the stream, in order. A read may end early only at a
// frame cut short or at data beyond a stream's credit.
func checkFrameReader(t *testing.T, stream []byte, sizes []int, resetAfter map[int]bool, readSize int) *frameReader {
	t.Helper()
	r := &frameReader{rxs: newRxTable()}
	want := splitFrames(stream)
	for _, f := range want {
		if len(f) >= yamuxHeaderSize && frameHeader(f).id()%2 == 1 {
			r.rxs.open(frameHeader(f).id()).credit(1 << 31)
		}
	}
	asked := 0
	r.Conn = &chunkConn{data: stream, sizes: sizes, onRead: func(reads int) {
		if resetAfter[reads] {
			r.reset(uint32(1000 + reads))
			asked++
		}
	}}
	var got []byte
	var rerr error
	buf := make([]byte, max(readSize, 1))
	for range 1 << 20 {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			rerr = err
			break
		}
	}
	// Resets asked for after the peer's last frame boundary still wait.
	r.mu.Lock()
	waiting := len(r.own) / yamuxHeaderSize
	r.mu.Unlock()

	var peer [][]byte
	resets := 0
	for _, f := range splitFrames(got) {
		if len(f) == yamuxHeaderSize && f[1] == yamuxTypeWindowUpdate && binary.BigEndian.Uint16(f[2:]) == yamuxFlagRST && binary.BigEndian.Uint32(f[4:]) >= 1000 {
			resets++
			continue
		}
		peer = append(peer, f)
	}
	if resets+waiting != asked {
		t.Fatalf("%d resets handed to yamux and %d waiting, %d asked for (frames %x)", resets, waiting, asked, got)
	}
	if len(peer) > len(want) {
		t.Fatalf("peer frames: got %d, want %d", len(peer), len(want))
	}
	kept := map[uint32][]byte{}
	for i, g := range peer {
		w := want[i]
		if bytes.Equal(g, w) {
			continue
		}
		if len(w) > yamuxHeaderSize && len(g) == yamuxHeaderSize && w[1] == yamuxTypeData &&
			bytes.Equal(g[:8], w[:8]) && frameHeader(g).length() == 0 {
			kept[frameHeader(w).id()] = append(kept[frameHeader(w).id()], w[yamuxHeaderSize:]...)
			continue
		}
		if i == len(peer)-1 && len(g) < len(w) && bytes.Equal(g, w[:len(g)]) {
			continue // a body for yamux cut short with the stream
		}
		t.Fatalf("frame %d: got %x, want %x", i, g, w)
	}
	var cut []byte // the frame the read ended in, if any
	if len(peer) < len(want) {
		if !errors.Is(rerr, io.ErrUnexpectedEOF) && !errors.Is(rerr, ErrMalformed) && !(errors.Is(rerr, io.EOF) && len(peer) == len(want)-1) {
			t.Fatalf("read ended after %d of %d frames: %v", len(peer), len(want), rerr)
		}
		cut = want[len(peer)]
	}
	for id, rx := range r.rxs.m {
		var queued []byte
		for _, c := range rx.chunks {
			queued = append(queued, *c...)
		}
		queued = queued[rx.off:]
		if !bytes.HasPrefix(queued, kept[id]) {
			t.Fatalf("stream %d: queued %d bytes, not the %d of its frames", id, len(queued), len(kept[id]))
		}
		if extra := queued[len(kept[id]):]; len(extra) > 0 &&
			(len(cut) <= yamuxHeaderSize || frameHeader(cut).id() != id || !bytes.HasPrefix(cut[yamuxHeaderSize:], extra)) {
			t.Fatalf("stream %d: %d bytes queued beyond its frames", id, len(extra))
		}
		delete(kept, id)
	}
	for id, b := range kept {
		if len(b) > 0 {
			t.Fatalf("stream %d: %d bytes of its frames not queued", id, len(b))
		}
	}
	return r
}

// yamuxFrame encodes one yamux frame with the body given.
func yamuxFrame(typ byte, flags uint16, id uint32, body []byte, length uint32) []byte {
	return append(encodeHeader(make([]byte, yamuxHeaderSize), typ, flags, id, length), body...)
}

// TestFrameReader: resets of this end's own go to yamux between the peer's
// frames, and the data of the streams open at this end (odd IDs here, and
// stream 8, which the peer opens) is kept for them, however the peer's
// bytes arrive.
func TestFrameReader(t *testing.T) {
	var stream []byte
	stream = append(stream, yamuxFrame(yamuxTypeData, 0, 3, bytes.Repeat([]byte("a"), 100), 100)...)
	stream = append(stream, yamuxFrame(yamuxTypeWindowUpdate, 0, 3, nil, 1<<20)...)
	stream = append(stream, yamuxFrame(2, 1, 0, nil, 7)...)             // ping
	stream = append(stream, yamuxFrame(yamuxTypeData, 4, 5, nil, 0)...) // FIN alone
	stream = append(stream, yamuxFrame(yamuxTypeData, 0, 5, bytes.Repeat([]byte("b"), 40000), 40000)...)
	stream = append(stream, yamuxFrame(yamuxTypeData, yamuxFlagSYN, 8, []byte("new"), 3)...)
	stream = append(stream, yamuxFrame(yamuxTypeData, 0, 6, []byte("not ours"), 8)...)
	stream = append(stream, yamuxFrame(yamuxTypeData, 0, 8, bytes.Repeat([]byte("c"), 5000), 5000)...)
	every := map[int]bool{}
	for i := range 200 {
		every[i] = true
	}
	tests := []struct {
		name       string
		sizes      []int
		resetAfter map[int]bool
		readSize   int
	}{
		{"whole reads, no reset", nil, nil, 64 << 10},
		{"byte by byte, reset after each", []int{1}, every, 4096},
		{"odd chunks, resets", []int{5, 13, 7, 4096}, map[int]bool{1: true, 2: true, 4: true, 9: true}, 4096},
		{"small reader", []int{100}, map[int]bool{1: true, 3: true}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := checkFrameReader(t, stream, tt.sizes, tt.resetAfter, tt.readSize)
			for id, want := range map[uint32]int{3: 100, 5: 40000, 8: 5003} {
				if rx := r.rxs.get(id); rx == nil || rx.n != want {
					t.Errorf("stream %d: %v queued, want %d bytes", id, rx, want)
				}
			}
			if rx := r.rxs.get(6); rx != nil {
				t.Errorf("stream 6, not open here, has a queue")
			}
		})
	}
}

// FuzzFrameReader: any bytes from the peer, arriving in any chunks, with
// resets asked for at any time, reach yamux whole and in order, with the
// resets only between frames.
func FuzzFrameReader(f *testing.F) {
	f.Add(yamuxFrame(yamuxTypeData, 0, 3, []byte("hello"), 5), []byte{3, 1}, uint16(0b101), uint8(16))
	f.Add(append(yamuxFrame(2, 1, 0, nil, 7), yamuxFrame(yamuxTypeData, 0, 1, nil, 1<<30)...), []byte{1}, uint16(0xffff), uint8(1))
	f.Fuzz(func(t *testing.T, stream, sizes []byte, resets uint16, readSize uint8) {
		var sz []int
		for _, s := range sizes {
			sz = append(sz, int(s))
		}
		after := map[int]bool{}
		for i := range 16 {
			if resets&(1<<i) != 0 {
				after[i+1] = true
			}
		}
		checkFrameReader(t, stream, sz, after, int(readSize))
	})
}

// TestStalledStreamsSpareOthers: streams whose readers grew their windows
// and then stopped (visitors that stopped reading downloads) do not stop
// the session's other streams: each new stream gets its initial window
// outside the session's budget. (QUIC's connection window is shared;
// there the stall guard resets such streams: see TestStallGuard.)
func TestStalledStreamsSpareOthers(t *testing.T) {
	leak.Check(t)
	// Windows of at most 4 MiB: the session's budget is 16 MiB, which
	// half of the stalled streams' growth already uses up.
	const window = 4 << 20
	agent, relay, wins := yamuxPair(t, window)
	// A long round trip lets each window grow at every grant while the
	// budget allows (see recvWindows), however slowly this machine reads.
	wins.rtt.Store(int64(time.Hour))
	const stalled = 8
	for range stalled {
		w, r := openPair(t, agent, relay)
		go func() { _, _ = w.Write(make([]byte, 64<<20)) }()
		_ = r.SetReadDeadline(time.Now().Add(testenv.Deadline(20 * time.Second)))
		if _, err := io.CopyN(io.Discard, r, 2*window); err != nil {
			t.Fatal(err)
		}
	}
	// The stalled streams hold the budget: no stream could grow now.
	if charged, _ := wins.usage(); charged+window/2 <= wins.budget {
		t.Fatalf("stalled streams took %d KiB of the session's budget; the test needs them to take it all", charged>>10)
	}
	w, r := openPair(t, agent, relay)
	go func() { _, _ = w.Write(make([]byte, 1<<20)) }()
	_ = r.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	if n, err := io.CopyN(io.Discard, r, 1<<20); err != nil {
		t.Fatalf("a new stream beside %d stalled ones got %d of 1 MiB: %v", stalled, n, err)
	}
}
