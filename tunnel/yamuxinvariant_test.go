package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// The tests of the invariants the layer over yamux relies on (Y1 to Y10,
// listed at the top of yamux.go). Each drives a stock yamux session over
// a net.Pipe whose other end the test plays frame by frame, and watches
// the frames yamux writes. A failure names the invariant: after an
// upgrade of yamux, the layer must be changed before it is trusted.

// broken fails the test, naming invariant inv of yamux.go.
func broken(t *testing.T, inv string, format string, args ...any) {
	t.Helper()
	t.Fatalf("yamux invariant %s (see the top of yamux.go) is broken with this yamux: %s", inv, fmt.Sprintf(format, args...))
}

// wireFrame is one frame yamux wrote, as the peer read it.
type wireFrame struct {
	hdr  frameHeader
	body []byte
}

func (f wireFrame) String() string {
	return fmt.Sprintf("{type %d flags %#x stream %d length %d}", f.hdr.typ(), f.hdr.flags(), f.hdr.id(), f.hdr.length())
}

// watchedConn is yamux's end of the pipe: it records each Write yamux
// makes, notes Writes or Reads that overlap, and when yamux closes it.
type watchedConn struct {
	net.Conn
	mu       sync.Mutex
	writes   [][]byte
	inWrite  atomic.Int32
	inRead   atomic.Int32
	overlapW atomic.Bool
	overlapR atomic.Bool
	closed   chan struct{}
	once     sync.Once
}

func (c *watchedConn) Write(p []byte) (int, error) {
	if c.inWrite.Add(1) > 1 {
		c.overlapW.Store(true)
	}
	defer c.inWrite.Add(-1)
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p[:n]...))
	c.mu.Unlock()
	return n, err
}

func (c *watchedConn) Read(p []byte) (int, error) {
	if c.inRead.Add(1) > 1 {
		c.overlapR.Store(true)
	}
	defer c.inRead.Add(-1)
	return c.Conn.Read(p)
}

func (c *watchedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// written returns the Writes yamux has made so far.
func (c *watchedConn) written() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

// rawPeer is the test's end of the pipe: it reads yamux's frames into
// frames and writes frames of its own.
type rawPeer struct {
	t      *testing.T
	inv    string // the invariant under test
	c      net.Conn
	frames chan wireFrame
	wmu    sync.Mutex
}

// stockYamux runs, for the test of invariant inv, a stock yamux session (client or server) on one end of
// a pipe and returns it, the watched conn under it, and the peer that
// plays the other end. The session has no keepalive, so that it writes
// only what the test makes it write; its log goes to logw (nil: none).
func stockYamux(t *testing.T, inv string, client bool, logw io.Writer) (*yamux.Session, *watchedConn, *rawPeer) {
	t.Helper()
	leak.Check(t)
	a, b := net.Pipe()
	wc := &watchedConn{Conn: a, closed: make(chan struct{})}
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.StreamCloseTimeout = 0
	cfg.Logger = nil
	if logw == nil {
		logw = io.Discard
	}
	cfg.LogOutput = logw
	var s *yamux.Session
	var err error
	if client {
		s, err = yamux.Client(wc, cfg)
	} else {
		s, err = yamux.Server(wc, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, inv: inv, c: b, frames: make(chan wireFrame, 4096)}
	go p.readLoop()
	t.Cleanup(func() {
		b.Close() // first: ends the session even if Close would hang (Y9)
		s.Close()
		if wc.overlapW.Load() {
			broken(t, "Y2", "yamux wrote to the link from two goroutines at once")
		}
		if wc.overlapR.Load() {
			broken(t, "Y8", "yamux read the link from two goroutines at once")
		}
	})
	return s, wc, p
}

func (p *rawPeer) readLoop() {
	defer close(p.frames)
	for {
		hdr := make([]byte, yamuxHeaderSize)
		if _, err := io.ReadFull(p.c, hdr); err != nil {
			return
		}
		f := wireFrame{hdr: frameHeader(hdr)}
		if f.hdr.typ() == yamuxTypeData && f.hdr.length() > 0 {
			f.body = make([]byte, f.hdr.length())
			if _, err := io.ReadFull(p.c, f.body); err != nil {
				return
			}
		}
		p.frames <- f
	}
}

// send writes a frame to yamux.
func (p *rawPeer) send(typ byte, flags uint16, id, length uint32, body []byte) {
	p.t.Helper()
	p.wmu.Lock()
	defer p.wmu.Unlock()
	b := append(encodeHeader(make([]byte, yamuxHeaderSize), typ, flags, id, length), body...)
	p.c.SetWriteDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	if _, err := p.c.Write(b); err != nil {
		broken(p.t, p.inv, "yamux stopped reading its link, its session ended by a frame before: %v", err)
	}
}

// next returns the next frame yamux writes.
func (p *rawPeer) next(what string) wireFrame {
	inv := p.inv
	p.t.Helper()
	d := testenv.Deadline(10 * time.Second)
	select {
	case f, ok := <-p.frames:
		if !ok {
			broken(p.t, inv, "the link ended while waiting for %s", what)
		}
		return f
	case <-time.After(d):
		broken(p.t, inv, "no frame within %v while waiting for %s", d, what)
	}
	return wireFrame{}
}

// sync sends yamux a ping and returns the frames it writes before the
// answer: yamux has read and acted on everything sent before.
func (p *rawPeer) sync(id uint32) []wireFrame {
	inv := p.inv
	p.t.Helper()
	p.send(2, yamuxFlagSYN, 0, id, nil)
	var before []wireFrame
	for range 1000 {
		f := p.next(fmt.Sprintf("the answer to ping %d", id))
		if f.hdr.typ() == 2 && f.hdr.flags() == yamuxFlagACK && f.hdr.length() == id {
			return before
		}
		before = append(before, f)
	}
	broken(p.t, inv, "no answer to ping %d among 1000 frames", id)
	return nil
}

// TestYamuxY1Frames: the frames yamux writes decode with this package's
// constants: a client's stream opens with a SYN window update on an odd
// ID, the server's ACK, data, FIN, ping and go-away.
func TestYamuxY1Frames(t *testing.T) {
	s, _, p := stockYamux(t, "Y1", true, nil)
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	want := func(what string, f wireFrame, typ byte, flags uint16, id uint32) {
		t.Helper()
		if f.hdr[0] != yamuxVersion || f.hdr.typ() != typ || f.hdr.flags() != flags || f.hdr.id() != id {
			broken(t, "Y1", "%s: got header %x = %v, want version %d type %d flags %#x stream %d", what, []byte(f.hdr), f, yamuxVersion, typ, flags, id)
		}
	}
	id := st.StreamID()
	if id%2 != 1 {
		broken(t, "Y1", "a client opened stream %d, not an odd ID", id)
	}
	want("the opening", p.next("a SYN"), yamuxTypeWindowUpdate, yamuxFlagSYN, id)
	p.send(yamuxTypeWindowUpdate, yamuxFlagACK, id, 0, nil)
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	f := p.next("data")
	want("data", f, yamuxTypeData, 0, id)
	if f.hdr.length() != 5 || string(f.body) != "hello" {
		broken(t, "Y1", "data frame of length %d with body %q, want 5 and hello", f.hdr.length(), f.body)
	}
	st.Close()
	want("the close", p.next("a FIN"), yamuxTypeWindowUpdate, yamuxFlagFIN, id)
	go s.Ping()
	want("a ping", p.next("a ping"), 2, yamuxFlagSYN, 0)
	if err := s.GoAway(); err != nil {
		t.Fatal(err)
	}
	f = p.next("a go-away")
	want("a go-away", f, yamuxTypeGoAway, 0, 0)
	if f.hdr.length() != 0 {
		broken(t, "Y1", "a normal go-away carries code %d, want 0", f.hdr.length())
	}
}

// TestYamuxY2Writes: with streams writing at once, yamux writes each
// frame's header alone, in one Write of 12 bytes, and a data frame's body
// whole in the next, from one goroutine at a time (checked at cleanup).
func TestYamuxY2Writes(t *testing.T) {
	s, wc, p := stockYamux(t, "Y2", true, nil)
	const streams, size = 4, 100 << 10
	var wg sync.WaitGroup
	for range streams {
		st, err := s.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		f := p.next("a SYN")
		p.send(yamuxTypeWindowUpdate, yamuxFlagACK, f.hdr.id(), 0, nil)
		wg.Go(func() {
			for range 4 {
				st.Write(make([]byte, size/4))
			}
			st.Close()
		})
	}
	go s.Ping()
	// Read until every stream's FIN (and the ping) came.
	fins := 0
	for fins < streams {
		f := p.next("the streams' data and FIN")
		if f.hdr.typ() == yamuxTypeWindowUpdate && f.hdr.flags()&yamuxFlagFIN != 0 {
			fins++
		}
	}
	wg.Wait()
	writes := wc.written()
	for i := 0; i < len(writes); i++ {
		w := writes[i]
		if len(w) != yamuxHeaderSize {
			broken(t, "Y2", "write %d of %d bytes is not a header of its own (%x...)", i, len(w), w[:min(len(w), 16)])
		}
		h := frameHeader(w)
		if h.typ() != yamuxTypeData || h.length() == 0 {
			continue
		}
		if i+1 == len(writes) || uint32(len(writes[i+1])) != h.length() {
			got := -1
			if i+1 < len(writes) {
				got = len(writes[i+1])
			}
			broken(t, "Y2", "a data header of length %d is followed by a write of %d bytes, not its whole body", h.length(), got)
		}
		i++
	}
}

// TestYamuxY3Opening: OpenStream returns once the SYN is written, and
// AcceptStream once the ACK is, both as window updates.
func TestYamuxY3Opening(t *testing.T) {
	has := func(writes [][]byte, flags uint16, id uint32) bool {
		for _, w := range writes {
			h := frameHeader(w)
			if len(w) == yamuxHeaderSize && h.typ() == yamuxTypeWindowUpdate && h.flags()&flags != 0 && h.id() == id {
				return true
			}
		}
		return false
	}
	t.Run("open", func(t *testing.T) {
		s, wc, p := stockYamux(t, "Y3", true, nil)
		st, err := s.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if !has(wc.written(), yamuxFlagSYN, st.StreamID()) {
			broken(t, "Y3", "OpenStream returned before a window update with SYN was written")
		}
		p.next("the SYN")
	})
	t.Run("accept", func(t *testing.T) {
		s, wc, p := stockYamux(t, "Y3", false, nil)
		p.send(yamuxTypeWindowUpdate, yamuxFlagSYN, 1, 0, nil)
		st, err := s.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		if !has(wc.written(), yamuxFlagACK, st.StreamID()) {
			broken(t, "Y3", "AcceptStream returned before a window update with ACK was written")
		}
		p.next("the ACK")
	})
}

// TestYamuxY4SendCredit: a stream sends baseWindow plus what the peer's
// window updates grant (the ACK's too), and not a byte more.
func TestYamuxY4SendCredit(t *testing.T) {
	const ackGrant, later = 1000, 3000
	s, _, p := stockYamux(t, "Y4", true, nil)
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	id := p.next("the SYN").hdr.id()
	p.send(yamuxTypeWindowUpdate, yamuxFlagACK, id, ackGrant, nil)
	total := baseWindow + ackGrant + later
	wrote := make(chan error, 1)
	go func() {
		_, err := st.Write(make([]byte, total))
		wrote <- err
	}()
	// yamux sends as much as its credit allows in each frame: with more
	// credit than baseWindow+ackGrant, more arrives before the next grant.
	got := 0
	for got < baseWindow+ackGrant {
		f := p.next(fmt.Sprintf("data up to the credit of %d bytes (got %d)", baseWindow+ackGrant, got))
		got += len(f.body)
	}
	if got != baseWindow+ackGrant {
		broken(t, "Y4", "sent %d bytes on a credit of %d (256 KiB and an ACK's %d)", got, baseWindow+ackGrant, ackGrant)
	}
	p.send(yamuxTypeWindowUpdate, 0, id, later, nil)
	for got < total {
		got += len(p.next("data on the credit granted later").body)
	}
	if got != total {
		broken(t, "Y4", "sent %d bytes on a credit of %d", got, total)
	}
	if err := <-wrote; err != nil {
		broken(t, "Y4", "a write within the credit failed: %v", err)
	}
}

// TestYamuxY5FlagsOnly: data headers with a length of 0 open a stream
// and end it, and no body is read: the ping right after is answered.
func TestYamuxY5FlagsOnly(t *testing.T) {
	s, _, p := stockYamux(t, "Y5", false, nil)
	p.send(yamuxTypeData, yamuxFlagSYN, 1, 0, nil)
	st, err := s.AcceptStream()
	if err != nil {
		broken(t, "Y5", "a SYN on a data header of length 0 opened no stream: %v", err)
	}
	p.send(yamuxTypeData, yamuxFlagFIN, 1, 0, nil)
	p.sync(1)
	st.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		broken(t, "Y5", "a FIN on a data header of length 0: Read = %d, %v; want 0, EOF", n, err)
	}
	if s.IsClosed() {
		broken(t, "Y5", "the session ended")
	}
}

// TestYamuxY6UnknownStream: a data frame for a stream yamux does not
// know is dropped, body and all, and the session goes on.
func TestYamuxY6UnknownStream(t *testing.T) {
	s, _, p := stockYamux(t, "Y6", false, nil)
	// A body that reads as a frame of another version, were it taken
	// for the next header.
	body := bytes.Repeat([]byte{7}, 24)
	p.send(yamuxTypeData, 0, 99, uint32(len(body)), body)
	p.sync(1)
	if s.IsClosed() {
		broken(t, "Y6", "a data frame for an unknown stream ended the session")
	}
}

// TestYamuxY7Reset: a RST makes yamux forget the stream at once, fail
// its Read and Write with ErrConnectionReset, and send nothing back, not
// on Close either.
func TestYamuxY7Reset(t *testing.T) {
	s, _, p := stockYamux(t, "Y7", false, nil)
	p.send(yamuxTypeWindowUpdate, yamuxFlagSYN, 1, 0, nil)
	st, err := s.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	p.next("the ACK")
	if n := s.NumStreams(); n != 1 {
		t.Fatalf("%d streams before the reset, want 1", n)
	}
	p.send(yamuxTypeWindowUpdate, yamuxFlagRST, 1, 0, nil)
	if fs := p.sync(1); len(fs) != 0 {
		broken(t, "Y7", "yamux answered a RST with %v", fs)
	}
	if n := s.NumStreams(); n != 0 {
		broken(t, "Y7", "NumStreams = %d after the reset, want 0", n)
	}
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, yamux.ErrConnectionReset) {
		broken(t, "Y7", "Read of a reset stream: %v, want ErrConnectionReset", err)
	}
	if _, err := st.Write([]byte("x")); !errors.Is(err, yamux.ErrConnectionReset) {
		broken(t, "Y7", "Write of a reset stream: %v, want ErrConnectionReset", err)
	}
	st.Close()
	if fs := p.sync(2); len(fs) != 0 {
		broken(t, "Y7", "closing a reset stream sent %v", fs)
	}
}

// TestYamuxY8OneReader: yamux reads the link from one goroutine (checked
// at cleanup, as yamux reads frames of several streams at once).
func TestYamuxY8OneReader(t *testing.T) {
	s, _, p := stockYamux(t, "Y8", false, nil)
	for id := uint32(1); id < 16; id += 2 {
		p.send(yamuxTypeWindowUpdate, yamuxFlagSYN, id, 0, nil)
		p.send(yamuxTypeData, 0, id, 4, []byte("data"))
		p.send(yamuxTypeWindowUpdate, yamuxFlagFIN, id, 0, nil)
	}
	p.sync(1)
	if s.NumStreams() != 8 {
		t.Fatalf("%d streams, want 8", s.NumStreams())
	}
}

// TestYamuxY9Ends: yamux closes the link whatever ends its session.
func TestYamuxY9Ends(t *testing.T) {
	tests := []struct {
		name string
		end  func(s *yamux.Session, p *rawPeer)
	}{
		{"Close", func(s *yamux.Session, _ *rawPeer) { s.Close() }},
		{"the link fails", func(_ *yamux.Session, p *rawPeer) { p.c.Close() }},
		{"a protocol error", func(_ *yamux.Session, p *rawPeer) { p.c.Write([]byte{7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}) }},
		{"a go-away for an error", func(_ *yamux.Session, p *rawPeer) { p.send(yamuxTypeGoAway, 0, 0, 1, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, wc, p := stockYamux(t, "Y9", true, nil)
			go tt.end(s, p)
			select {
			case <-wc.closed:
			case <-time.After(testenv.Deadline(10 * time.Second)):
				broken(t, "Y9", "the session ended by %s left its link open", tt.name)
			}
		})
	}
}

// TestYamuxY10Logs: yamux's log lines start "[WARN] yamux: " or
// "[ERR] yamux: ", and yamuxLog sorts them.
func TestYamuxY10Logs(t *testing.T) {
	var b syncBuffer
	_, wc, p := stockYamux(t, "Y10", false, &b)
	p.send(yamuxTypeWindowUpdate, 0, 99, 0, nil) // a frame for no stream: a warning
	p.sync(1)
	p.c.Write([]byte{7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}) // another version: an error
	select {
	case <-wc.closed:
	case <-time.After(testenv.Deadline(10 * time.Second)):
		t.Fatal("the session outlived a frame of another version")
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	var warn, errs int
	for _, l := range lines {
		// LogOutput is read with the standard logger's flags: cut the
		// date and time.
		if i := strings.Index(l, "["); i >= 0 {
			l = l[i:]
		}
		switch {
		case strings.HasPrefix(l, "[WARN] yamux: "):
			warn++
		case strings.HasPrefix(l, "[ERR] yamux: "):
			errs++
		default:
			broken(t, "Y10", "a log line %q starts neither [WARN] yamux: nor [ERR] yamux: ", l)
		}
	}
	if warn == 0 || errs == 0 {
		broken(t, "Y10", "logged %d warnings and %d errors, want at least one of each: %q", warn, errs, lines)
	}
	// And through yamuxLog, as the layer configures it.
	var out syncBuffer
	l := log.New(yamuxLog{slog.New(slog.NewTextHandler(&out, nil))}, "", 0)
	l.Printf("[ERR] yamux: Invalid protocol version: 7")
	if !strings.Contains(out.String(), "level=WARN") {
		broken(t, "Y10", "yamuxLog did not sort an [ERR] line as a warning: %q", out.String())
	}
}
