package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// blockedWrite starts a write to w, whose peer reads nothing, that waits
// for credit, and returns its result.
func blockedWrite(t *testing.T, w Stream) <-chan error {
	t.Helper()
	if sent := writeFor(w, 200*time.Millisecond); sent == 0 {
		t.Fatal("no credit to start with")
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(make([]byte, 64<<10))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("write without credit returned at once: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	return done
}

// TestSendWaitEnds: a write waiting for the peer's credit returns, with
// the right error, when its deadline is moved, the stream is closed or
// reset, or the session ends.
func TestSendWaitEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(w, r Stream, client Session)
		want func(error) bool
	}{
		{"deadline moved", func(w, r Stream, _ Session) { w.SetWriteDeadline(time.Now()) },
			func(err error) bool { return errors.Is(err, yamux.ErrTimeout) }},
		{"stream closed", func(w, r Stream, _ Session) { w.Close() },
			func(err error) bool { return err != nil }},
		{"peer reset", func(w, r Stream, _ Session) { r.(*yamuxStream).Abort() },
			func(err error) bool { return errors.Is(err, yamux.ErrConnectionReset) }},
		{"session closed", func(w, r Stream, client Session) { client.Close() },
			func(err error) bool { return errors.Is(err, yamux.ErrSessionShutdown) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			client, server, _ := yamuxPair(t, 4<<20)
			w, r := openPair(t, client, server)
			done := blockedWrite(t, w)
			tt.end(w, r, client)
			select {
			case err := <-done:
				if !tt.want(err) {
					t.Fatalf("write ended with %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("write still waiting 5 s later")
			}
			w.Close()
			r.Close()
		})
	}
}

// TestOlderPeer: a session with a peer that runs yamux as it comes (as
// releases before these windows did: it grants its whole window at once
// and sends from yamux's sender) carries data both ways, whole.
func TestOlderPeer(t *testing.T) {
	leak.Check(t)
	c, s := pinnedPair(t, TCPTransport{})
	cfg := DefaultSessionConfig()
	client, err := c.Mux(cfg)
	if err != nil {
		t.Fatal(err)
	}
	yc := yamuxConfig(cfg)
	yc.MaxStreamWindowSize = 4 << 20
	yc.EnableKeepAlive, yc.ConnectionWriteTimeout = true, cfg.KeepAliveTimeout
	old, err := yamux.Server(s.(*tlsLink).Conn, yc)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(30*time.Second))
	defer cancel()
	// A stream this end opens.
	ours, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var theirs *yamux.Stream
	firstByte(t, ours, func() io.Reader {
		if theirs, err = old.AcceptStream(); err != nil {
			t.Fatal(err)
		}
		return theirs
	})
	carryBothWays(t, ours, theirs)
	// A stream the older peer opens: its first frame grants its window.
	if theirs, err = old.OpenStream(); err != nil {
		t.Fatal(err)
	}
	firstByte(t, theirs, func() io.Reader {
		if ours, err = client.AcceptStream(ctx); err != nil {
			t.Fatal(err)
		}
		return ours
	})
	carryBothWays(t, ours, theirs)
}

// carryBothWays sends 16 MiB each way at once between a stream of ours
// and one of an older peer (four times its 4 MiB window), and checks
// them.
func carryBothWays(t *testing.T, ours Stream, theirs *yamux.Stream) {
	t.Helper()
	const size = 16 << 20
	deadline := time.Now().Add(testenv.Deadline(time.Minute))
	ours.SetDeadline(deadline)
	theirs.SetDeadline(deadline)
	send := func(w io.Writer, data []byte, closeWrite func() error) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := w.Write(data)
			if err == nil {
				err = closeWrite()
			}
			done <- err
		}()
		return done
	}
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)
	upDone := send(ours, up, ours.CloseWrite)
	downDone := send(theirs, down, theirs.Close)
	gotUp, gotDown := sha256.New(), sha256.New()
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(gotUp, theirs)
		readDone <- err
	}()
	if _, err := io.Copy(gotDown, ours); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{<-readDone, <-upDone, <-downDone} {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantUp, wantDown := sha256.Sum256(up), sha256.Sum256(down)
	if !bytes.Equal(gotUp.Sum(nil), wantUp[:]) || !bytes.Equal(gotDown.Sum(nil), wantDown[:]) {
		t.Fatal("data changed on the way")
	}
	ours.Close()
}
