package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
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
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if r, err = server.AcceptStream(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return w, r
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
	r.(*yamuxStream).Shrink()
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
