package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"golang.org/x/net/nettest"
)

// The conformance suite: what every stream of every transport must do,
// whatever carries it. Each test runs over the transports list.

// streamPair opens a stream from the client session to the server
// session and returns both ends, the opener first. A first byte, read
// here, makes the stream known to the peer (a QUIC stream is invisible
// until it carries data).
func streamPair(t testing.TB, client, server Session) (opened, accepted Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	opened, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := opened.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if accepted, err = server.AcceptStream(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(accepted, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return opened, accepted
}

// conformancePair is a fresh session pair over tr and a stream between
// them, with a deadline on both ends that bounds the test.
func conformancePair(t *testing.T, tr Transport) (client, server Session, a, b Stream) {
	t.Helper()
	client, server = sessionPair(t, tr)
	a, b = streamPair(t, client, server)
	deadline := time.Now().Add(testenv.Deadline(30 * time.Second))
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	t.Cleanup(func() { a.Close(); b.Close() })
	return client, server, a, b
}

// isTimeout reports whether err is a deadline's: a net.Error whose
// Timeout is true.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// exchangeStreams writes size random bytes each way at once between a and b,
// and checks what each reads.
func exchangeStreams(t *testing.T, a, b Stream, size int, seed uint64) {
	t.Helper()
	gen := func(s uint64) []byte {
		r := rand.New(rand.NewPCG(s, s))
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	ab, ba := gen(seed), gen(seed+1)
	errs := make(chan error, 4)
	copyTo := func(w Stream, p []byte) {
		_, err := w.Write(p)
		errs <- err
	}
	readFrom := func(r Stream, want []byte, what string) {
		got := make([]byte, len(want))
		_, err := io.ReadFull(r, got)
		if err == nil && !bytes.Equal(got, want) {
			err = errors.New(what + ": the data changed on the way")
		}
		errs <- err
	}
	go copyTo(a, ab)
	go copyTo(b, ba)
	go readFrom(b, ab, "a to b")
	go readFrom(a, ba, "b to a")
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestStreamConformance(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, tr Transport)
	}{
		{"read and write", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			exchangeStreams(t, a, b, 4<<20, 1)
			// Small writes arrive in order, as one byte stream.
			for i := range 100 {
				if _, err := a.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			got := make([]byte, 100)
			if _, err := io.ReadFull(b, got); err != nil {
				t.Fatal(err)
			}
			for i, c := range got {
				if c != byte(i) {
					t.Fatalf("byte %d is %d", i, c)
				}
			}
		}},
		{"half-close", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			halfClose(t, a, b, a.CloseWrite, "opener", "acceptor")
			if _, err := a.Write([]byte("x")); err == nil {
				t.Fatal("a Write after CloseWrite succeeded")
			}
		}},
		{"half-close, the acceptor first", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			halfClose(t, b, a, b.CloseWrite, "acceptor", "opener")
		}},
		{"close after the peer's close", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			if _, err := a.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if got, err := io.ReadAll(b); err != nil || string(got) != "bye" {
				t.Fatalf("the peer read %q, %v; want bye and EOF", got, err)
			}
			// Write until the peer's close is known here (QUIC: its
			// STOP_SENDING fails the writes) or for a second.
			b.SetWriteDeadline(time.Now().Add(time.Second))
			for i := 0; i < 100000; i++ {
				if _, err := b.Write(make([]byte, 1024)); err != nil {
					break
				}
			}
			// Closing the second end of a stream ended in order is
			// not an error, as for a TCP connection.
			if err := b.Close(); err != nil {
				t.Fatalf("Close after the peer's Close: %v", err)
			}
		}},
		{"reset", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			if _, err := a.Write([]byte("cut short")); err != nil {
				t.Fatal(err)
			}
			a.Abort()
			// The reader sees the reset, never a clean EOF: the data
			// before it may or may not arrive.
			_, err := io.ReadAll(b)
			if !errors.Is(err, ErrStreamReset) {
				t.Fatalf("the peer of a reset stream read %v, want ErrStreamReset", err)
			}
			// Waiting for data reports it too.
			if err := b.WaitRead(); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("WaitRead on a reset stream: %v, want ErrStreamReset", err)
			}
			// And its writes fail, eventually (once the reset is
			// known: bounded by the deadline).
			var werr error
			for i := 0; i < 10000 && werr == nil; i++ {
				_, werr = b.Write(make([]byte, 16<<10))
			}
			if werr == nil || isTimeout(werr) {
				t.Fatalf("writes to a reset stream: %v, want an error other than a timeout", werr)
			}
		}},
		{"session cut", func(t *testing.T, tr Transport) {
			client, _, a, b := conformancePair(t, tr)
			if _, err := b.Write([]byte("before")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, make([]byte, 6)); err != nil {
				t.Fatal(err)
			}
			client.Close()
			// Both ends of a stream whose session ended read an error,
			// not EOF: the data was cut, not complete.
			for _, st := range []struct {
				name string
				s    Stream
			}{{"the closing end", a}, {"the peer", b}} {
				_, err := io.ReadAll(st.s)
				if err == nil {
					t.Errorf("%s read a clean end from a cut stream", st.name)
				} else if isTimeout(err) {
					t.Errorf("%s waited for its deadline: %v", st.name, err)
				}
			}
		}},
		{"deadlines", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			// A read deadline ends a waiting Read with a timeout,
			// and the stream goes on once it is lifted.
			a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := a.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
				t.Fatalf("Read past its deadline: %d, %v; want a timeout", n, err)
			}
			// A write deadline ends a Write that waits for a peer
			// that reads nothing.
			a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			var err error
			for i := 0; i < 100000 && err == nil; i++ {
				_, err = a.Write(make([]byte, 64<<10))
			}
			if !isTimeout(err) {
				t.Fatalf("Write to a peer that reads nothing: %v; want a timeout", err)
			}
			// Deadlines lifted, the stream still works: drain what
			// was sent, then exchange.
			a.SetDeadline(time.Time{})
			b.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				if _, err := b.Read(make([]byte, 64<<10)); err != nil {
					if !isTimeout(err) {
						t.Fatal(err)
					}
					break
				}
			}
			deadline := time.Now().Add(testenv.Deadline(30 * time.Second))
			a.SetDeadline(deadline)
			b.SetDeadline(deadline)
			exchangeStreams(t, a, b, 64<<10, 2)
		}},
		{"a deadline in the past", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			// Data queued at a: the rest of a message of which a
			// read the first byte.
			if _, err := b.Write([]byte("queued")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			a.SetDeadline(time.Now().Add(-time.Second))
			if n, err := a.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
				t.Errorf("Read with a deadline passed and data queued: %d, %v; want 0 and a timeout", n, err)
			}
			if n, err := a.Write([]byte("late")); n != 0 || !isTimeout(err) {
				t.Errorf("Write with a deadline passed: %d, %v; want 0 and a timeout", n, err)
			}
		}},
		{"waiting for readability", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			// Data already there: WaitRead returns at once and leaves
			// it to the Read.
			if _, err := a.Write([]byte("open")); err != nil {
				t.Fatal(err)
			}
			if err := b.WaitRead(); err != nil {
				t.Fatalf("WaitRead with data: %v", err)
			}
			got := make([]byte, 4)
			if _, err := io.ReadFull(b, got); err != nil || string(got) != "open" {
				t.Fatalf("Read after WaitRead: %q, %v", got, err)
			}
			// Data still to come.
			waited := make(chan error, 1)
			go func() { waited <- b.WaitRead() }()
			select {
			case err := <-waited:
				t.Fatalf("WaitRead returned %v before there was data", err)
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := a.Write([]byte("now")); err != nil {
				t.Fatal(err)
			}
			if err := <-waited; err != nil {
				t.Fatalf("WaitRead once data came: %v", err)
			}
			got = got[:3]
			if _, err := io.ReadFull(b, got); err != nil || string(got) != "now" {
				t.Fatalf("Read after WaitRead: %q, %v", got, err)
			}
			// The read deadline bounds it.
			b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if err := b.WaitRead(); !isTimeout(err) {
				t.Fatalf("WaitRead past the read deadline: %v, want a timeout", err)
			}
			b.SetReadDeadline(time.Now().Add(testenv.Deadline(30 * time.Second)))
			// The end.
			a.CloseWrite()
			if err := b.WaitRead(); err != io.EOF {
				t.Fatalf("WaitRead at the end: %v, want EOF", err)
			}
		}},
		{"shrink", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			exchangeStreams(t, a, b, 1<<20, 3)
			err := b.Shrink()
			if shrinkTransports[transportName(tr)] {
				if err != nil {
					t.Fatalf("Shrink: %v", err)
				}
			} else if !errors.Is(err, ErrNotSupported) {
				t.Fatalf("Shrink: %v, want ErrNotSupported", err)
			}
			// Either way the stream goes on.
			exchangeStreams(t, a, b, 1<<20, 4)
		}},
		{"cut notice", func(t *testing.T, tr Transport) {
			_, _, a, b := conformancePair(t, tr)
			cut := make(chan error, 1)
			b.OnCut(func(err error) { cut <- err })
			// A reset by the peer is not a cut of the transport's own:
			// b reads it as ever.
			a.Abort()
			if _, err := io.ReadAll(b); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("read after the peer's reset: %v, want ErrStreamReset", err)
			}
			select {
			case err := <-cut:
				t.Fatalf("the peer's reset was told as a cut: %v", err)
			default:
			}
			// A transport that cuts streams itself (QUIC's stall guard)
			// tells by OnCut, with the reason.
			if qs, ok := b.(*quicStream); ok {
				qs.cutStalled()
				if err := <-cut; !errors.Is(err, ErrStalled) {
					t.Fatalf("the stall guard's cut was told as %v, want ErrStalled", err)
				}
			}
		}},
		{"concurrent streams", func(t *testing.T, tr Transport) {
			client, server := sessionPair(t, tr)
			const n = 16
			var wg sync.WaitGroup
			for i := range n {
				a, b := streamPair(t, client, server)
				deadline := time.Now().Add(testenv.Deadline(60 * time.Second))
				a.SetDeadline(deadline)
				b.SetDeadline(deadline)
				wg.Go(func() {
					defer a.Close()
					defer b.Close()
					exchangeStreams(t, a, b, 512<<10, uint64(10+2*i))
				})
			}
			wg.Wait()
		}},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.name, func(t *testing.T) {
				leak.Check(t)
				tt.run(t, tr.tr)
			})
		}
	}
}

// TestStreamNetConn runs golang.org/x/net/nettest's net.Conn suite on a
// pair of streams of each transport.
func TestStreamNetConn(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				client, server := sessionPair(t, tr.tr)
				a, b := streamPair(t, client, server)
				stop = func() {
					a.Close()
					b.Close()
					client.Close()
					server.Close()
				}
				return a, b, stop, nil
			})
		})
	}
}

// shrinkTransports names the transports whose streams can give back an
// idle receive window; the others must say they cannot (ErrNotSupported).
var shrinkTransports = map[string]bool{"tcp": true, "quic": false}

// transportName is tr's name in the transports list.
func transportName(tr Transport) string {
	switch tr.(type) {
	case TCPTransport:
		return "tcp"
	case QUICTransport:
		return "quic"
	}
	return fmt.Sprintf("%T", tr)
}

// datagramTransports names the transports that carry session datagrams;
// the others must say they do not (ErrNotSupported).
var datagramTransports = map[string]bool{"tcp": false, "quic": true}

// TestSessionConformance: what every session of every transport must do,
// and what one that cannot must say it cannot.
func TestSessionConformance(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, name string, tr Transport)
	}{
		{"silent for", func(t *testing.T, _ string, tr Transport) {
			client, server, a, b := conformancePair(t, tr)
			// Whatever the peer sent after before, the session heard
			// it: its silence is no longer than the time since.
			for _, end := range []struct {
				what string
				s    Session
				from Stream
				to   Stream
			}{{"client", client, b, a}, {"server", server, a, b}} {
				before := time.Now()
				if _, err := end.from.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(end.to, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				if d, since := end.s.SilentFor(), time.Since(before); d < 0 || d > since {
					t.Errorf("%s: SilentFor %v right after hearing the peer %v ago", end.what, d, since)
				}
			}
		}},
		{"end cause", func(t *testing.T, name string, tr Transport) {
			client, server := sessionPair(t, tr)
			client.Close()
			select {
			case <-server.Done():
			case <-time.After(testenv.Deadline(10 * time.Second)):
				t.Fatal("the server session did not end after the client closed it")
			}
			if c := client.EndCause(); c.Code != EndClosed {
				t.Errorf("the closing end's cause: %v, want %s", c, EndClosed)
			}
			// The peer's is the peer's close; over TCP it may be the
			// reset that the closing end's kernel sends for a link with
			// unread data in its buffer (see TestEndCauseTCP, whose
			// proxy takes that away).
			switch c := server.EndCause(); {
			case c.Code == EndPeerClosed:
			case name == "tcp" && (c.Code == EndReadError || c.Code == EndWriteError) && c.Errno != 0:
			default:
				t.Errorf("the peer's cause: %v, want %s", c, EndPeerClosed)
			}
		}},
		{"datagrams", func(t *testing.T, name string, tr Transport) {
			client, server := sessionPair(t, tr)
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
			defer cancel()
			want := AppendFlowDatagram(nil, 7, []byte("datagram"))
			err := client.SendDatagram(want)
			if !datagramTransports[name] {
				if !errors.Is(err, ErrNotSupported) {
					t.Errorf("SendDatagram: %v, want ErrNotSupported", err)
				}
				if _, err := server.ReceiveDatagram(ctx); !errors.Is(err, ErrNotSupported) {
					t.Errorf("ReceiveDatagram: %v, want ErrNotSupported at once", err)
				}
				if ctx.Err() != nil {
					t.Error("ReceiveDatagram waited for a datagram that cannot come")
				}
				return
			}
			if err != nil {
				t.Fatalf("SendDatagram: %v", err)
			}
			// The heartbeat (flow 0) comes too; each one sent is also
			// a chance for the test's datagram, which may be lost.
			for i := 0; ; i++ {
				got, err := server.ReceiveDatagram(ctx)
				if err != nil {
					t.Fatalf("ReceiveDatagram: %v", err)
				}
				if bytes.Equal(got, want) {
					break
				}
				if i%2 == 1 {
					_ = client.SendDatagram(want)
				}
			}
			if err := client.SendDatagram(make([]byte, 64<<10)); !errors.Is(err, ErrDatagramTooLarge) {
				t.Errorf("SendDatagram of 64 KiB: %v, want ErrDatagramTooLarge", err)
			}
		}},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.name, func(t *testing.T) {
				leak.Check(t)
				tt.run(t, tr.name, tr.tr)
			})
		}
	}
}

// TestConnRefuse: a link the relay refuses before authentication tells
// the agent the relay is busy, over every transport.
func TestConnRefuse(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			leak.Check(t)
			cert, fp := testCert(t)
			ln, err := tr.tr.Listen("127.0.0.1:0", ServerTLSConfig(cert))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			conf, err := PinnedTLSConfig(fp)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
			defer cancel()
			accepted := make(chan error, 1)
			go func() {
				c, err := ln.Accept(ctx)
				if err == nil {
					if c.Admission() != nil {
						err = errors.New("an admission without Admit")
					}
					c.Refuse()
				}
				accepted <- err
			}()
			c, err := tr.tr.Dial(ctx, ln.Addr().String(), conf)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
			// QUIC's handshake may end before the refusal arrives: the
			// first read then tells.
			err = c.Handshake(ctx)
			if err == nil {
				_, err = c.Read(make([]byte, 1))
			}
			if !errors.Is(err, ErrBusy) {
				t.Errorf("the refused agent read %v, want ErrBusy", err)
			}
			if err := <-accepted; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// wrapped is a stream wrapper such as the relay's (which wraps a CutAware
// stream again): it changes Read, and the rest passes through.
type wrapped struct{ Stream }

func (w wrapped) Read(p []byte) (int, error) { return w.Stream.Read(p) }

// TestSpliceResetsWrappedStream: a splice that fails resets a stream
// under any wrappers, as it does a bare one: the stream's peer reads
// ErrStreamReset, not the clean end that would pass the cut transfer off
// as complete.
func TestSpliceResetsWrappedStream(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			leak.Check(t)
			_, _, a, b := conformancePair(t, tr.tr)
			x, y := tcpPair(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, _, err := Splice(ctx, x, wrapped{CutAware(a, func() bool { return false })})
				done <- err
			}()
			// Data flows both ways through the wrappers.
			if _, err := y.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(b, make([]byte, 4)); err != nil {
				t.Fatal(err)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Splice: %v, want context.Canceled", err)
			}
			if _, err := io.ReadAll(b); !errors.Is(err, ErrStreamReset) {
				t.Errorf("the peer of the spliced stream read %v, want ErrStreamReset", err)
			}
		})
	}
}
