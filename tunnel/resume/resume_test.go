package resume

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// sendAll writes size bytes from a generator seeded with seed to c in
// writes of random sizes, then half-closes; it returns their sha256.
func sendAll(c *Conn, size int, seed uint64) <-chan error {
	done := make(chan error, 1)
	go func() {
		gen := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
		buf := make([]byte, 64<<10)
		for left := size; left > 0; {
			n := min(left, 1+gen.IntN(len(buf)))
			fill(gen, buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				done <- fmt.Errorf("write: %w", err)
				return
			}
			left -= n
		}
		done <- c.CloseWrite()
	}()
	return done
}

// wantSum is the sha256 of what sendAll sends.
func wantSum(size int, seed uint64) [32]byte {
	gen := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for left := size; left > 0; {
		n := min(left, 1+gen.IntN(len(buf)))
		fill(gen, buf[:n])
		h.Write(buf[:n])
		left -= n
	}
	return [32]byte(h.Sum(nil))
}

func fill(gen *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(gen.Uint32())
	}
}

type received struct {
	sum [32]byte
	n   int64
	err error
}

// recvAll reads c to its end, adding what it reads to progress.
func recvAll(c *Conn, progress *atomic.Int64) <-chan received {
	done := make(chan received, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, 32<<10)
		var n int64
		for {
			k, err := c.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			if progress != nil {
				progress.Add(int64(k))
			}
			if err == io.EOF {
				done <- received{sum: [32]byte(h.Sum(nil)), n: n}
				return
			}
			if err != nil {
				done <- received{n: n, err: err}
				return
			}
		}
	}()
	return done
}

// waitFor polls cond until it holds, failing the test at the deadline.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testenv.Deadline(d))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestResumeTransfer sends 64 MiB each way at once through a resumable
// stream while the session is killed three times, and compares sha256
// sums: every byte arrives once and in order, both ways.
func TestResumeTransfer(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	const kills = 3
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			dl := time.Now().Add(testenv.Deadline(180 * time.Second))
			rc.SetDeadline(dl)
			ac.SetDeadline(dl)
			var progress atomic.Int64
			sentR, sentA := sendAll(rc, size, 1), sendAll(ac, size, 2)
			gotA, gotR := recvAll(ac, &progress), recvAll(rc, &progress)
			for k := 1; k <= kills; k++ {
				mark := int64(k) * 2 * int64(size) / (kills + 1)
				waitFor(t, fmt.Sprintf("%d bytes through", mark), 120*time.Second, func() bool { return progress.Load() >= mark })
				l.kill()
				l.connect()
			}
			for _, ch := range []<-chan error{sentR, sentA} {
				if err := <-ch; err != nil {
					t.Fatal(err)
				}
			}
			a, r := <-gotA, <-gotR
			if a.err != nil || r.err != nil {
				t.Fatalf("agent read %d bytes: %v; relay read %d bytes: %v", a.n, a.err, r.n, r.err)
			}
			if a.sum != wantSum(size, 1) || a.n != int64(size) {
				t.Errorf("relay to agent: %d bytes, sha256 differs", a.n)
			}
			if r.sum != wantSum(size, 2) || r.n != int64(size) {
				t.Errorf("agent to relay: %d bytes, sha256 differs", r.n)
			}
			if r, a := l.relay.resumed.Load(), l.agent.resumed.Load(); r != kills || a != kills {
				t.Errorf("resumed %d times at the relay, %d at the agent; want %d", r, a, kills)
			}
			rc.Close()
			ac.Close()
			waitFor(t, "both registries to let the stream go", 10*time.Second, func() bool {
				return l.relay.Len() == 0 && l.agent.Len() == 0 && l.relay.Retained() == 0 && l.agent.Retained() == 0
			})
		})
	}
}

// TestResumeHalfClose: the relay's end writes, half-closes, and its
// session dies before the agent has read any of it; after the resume the
// agent reads every byte and then the end of stream, answers, and
// half-closes in turn.
func TestResumeHalfClose(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			dl := time.Now().Add(testenv.Deadline(30 * time.Second))
			rc.SetDeadline(dl)
			ac.SetDeadline(dl)
			msg := make([]byte, 100<<10)
			for i := range msg {
				msg[i] = byte(i * 7)
			}
			if _, err := rc.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := rc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			l.kill()
			l.connect()
			got, err := io.ReadAll(ac)
			if err != nil {
				t.Fatalf("agent read %d bytes: %v", len(got), err)
			}
			if string(got) != string(msg) {
				t.Fatalf("agent read %d bytes, not the %d sent", len(got), len(msg))
			}
			if _, err := ac.Write([]byte("answer")); err != nil {
				t.Fatal(err)
			}
			if err := ac.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			l.kill()
			l.connect()
			back, err := io.ReadAll(rc)
			if err != nil || string(back) != "answer" {
				t.Fatalf("relay read %q, %v", back, err)
			}
			rc.Close()
			ac.Close()
			waitFor(t, "both registries to let the stream go", 10*time.Second, func() bool {
				return l.relay.Len() == 0 && l.agent.Len() == 0
			})
		})
	}
}

// TestResumeRingFull: the agent reads nothing, so the relay's ring
// fills; its session dies; a Write then waits (its deadline passes with
// part of it unwritten); after the resume the agent reads everything and
// the writer goes on.
func TestResumeRingFull(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			cfg := Config{Window: minRing, Total: 1 << 20}
			l := newLink(t, tt.tr, cfg)
			rc, ac := l.open()
			buf := make([]byte, 3*minRing)
			for i := range buf {
				buf[i] = byte(i % 251)
			}
			rc.SetWriteDeadline(time.Now().Add(testenv.Scale(300 * time.Millisecond)))
			n, err := rc.Write(buf)
			if !errors.Is(err, os.ErrDeadlineExceeded) || n != minRing {
				t.Fatalf("Write into a full ring: %d, %v; want %d, a timeout", n, err, minRing)
			}
			l.kill()
			waitFor(t, "the stream to detach", 10*time.Second, func() bool {
				rc.mu.Lock()
				defer rc.mu.Unlock()
				return rc.st == nil
			})
			rc.SetWriteDeadline(time.Now().Add(testenv.Scale(300 * time.Millisecond)))
			if k, err := rc.Write(buf[n:]); !errors.Is(err, os.ErrDeadlineExceeded) || k != 0 {
				t.Fatalf("Write while detached with a full ring: %d, %v; want 0, a timeout", k, err)
			}
			l.connect()
			dl := time.Now().Add(testenv.Deadline(30 * time.Second))
			rc.SetDeadline(dl)
			ac.SetDeadline(dl)
			wrote := make(chan error, 1)
			go func() {
				_, err := rc.Write(buf[n:])
				if err == nil {
					err = rc.CloseWrite()
				}
				wrote <- err
			}()
			got, err := io.ReadAll(ac)
			if err != nil || string(got) != string(buf) {
				t.Fatalf("agent read %d bytes (of %d), %v", len(got), len(buf), err)
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if r := l.relay.Retained(); r > int64(minRing) {
				t.Errorf("relay retains %d bytes, more than the window", r)
			}
		})
	}
}

// TestResumeExpiry: a session dies and none comes back; after the resume
// window both ends read ErrExpired, and both registries let everything
// go (and the leak check finds no goroutine or descriptor left).
func TestResumeExpiry(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{ResumeWindow: testenv.Scale(300 * time.Millisecond)})
			rc, ac := l.open()
			if _, err := rc.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			l.kill()
			dl := time.Now().Add(testenv.Deadline(10 * time.Second))
			for _, c := range []*Conn{rc, ac} {
				c.SetReadDeadline(dl)
				_, err := io.ReadAll(c)
				if !errors.Is(err, ErrExpired) {
					t.Fatalf("read of an expired stream: %v, want ErrExpired", err)
				}
				if _, err := c.Write([]byte("x")); !errors.Is(err, ErrExpired) {
					t.Fatalf("write to an expired stream: %v, want ErrExpired", err)
				}
			}
			waitFor(t, "both registries to let the expired stream go", 10*time.Second, func() bool {
				return l.relay.Len() == 0 && l.agent.Len() == 0 && l.relay.Retained() == 0 && l.agent.Retained() == 0
			})
			rc.Close()
			ac.Close()
		})
	}
}

// TestResumePeerReset: a reset by one end reaches the other as a reset
// (tunnel.ErrStreamReset), never as an end or an expiry, attached or
// detached; both registries let the stream go.
func TestResumePeerReset(t *testing.T) {
	for _, tt := range transports {
		for _, detached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/detached=%v", tt.name, detached), func(t *testing.T) {
				leak.Check(t)
				l := newLink(t, tt.tr, Config{})
				rc, ac := l.open()
				if _, err := ac.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
				if detached {
					l.kill()
					waitFor(t, "the streams to detach", 10*time.Second, func() bool {
						ac.mu.Lock()
						defer ac.mu.Unlock()
						return ac.st == nil
					})
				}
				ac.Abort()
				if detached {
					l.connect()
				}
				rc.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
				_, err := io.ReadAll(rc)
				if !errors.Is(err, tunnel.ErrStreamReset) {
					t.Fatalf("read after the peer's reset: %v, want ErrStreamReset", err)
				}
				waitFor(t, "both registries to let the stream go", 10*time.Second, func() bool {
					return l.relay.Len() == 0 && l.agent.Len() == 0
				})
			})
		}
	}
}

// TestResumeForged: a resume frame for an ID nobody has, or for a real
// stream with a consumed count beyond what was sent, is refused with a
// frame, and the stream it names goes on as before.
func TestResumeForged(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			dl := time.Now().Add(testenv.Deadline(10 * time.Second))
			rc.SetDeadline(dl)
			ac.SetDeadline(dl)
			if _, err := ac.Write([]byte("0123456789")); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name string
				f    frame
				code uint64
			}{
				{"unknown ID", frame{kind: kindResume, id: ac.ID() ^ 1, value: 0}, refuseUnknown},
				{"beyond sent", frame{kind: kindResume, id: ac.ID(), value: 11}, refuseBadOffset},
			} {
				l.mu.Lock()
				rs := l.rsess
				l.mu.Unlock()
				st, err := rs.OpenStream(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				var b [frameLen]byte
				tc.f.put(b[:])
				st.SetDeadline(dl)
				if _, err := st.Write(b[:]); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(st, b[:]); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				f, err := parseFrame(b[:])
				if err != nil || f.kind != kindRefused || f.value != tc.code || f.id != tc.f.id {
					t.Fatalf("%s: answer %+v, %v; want refused with code %d", tc.name, f, err, tc.code)
				}
				st.Close()
				select {
				case err := <-l.handleErrs:
					t.Logf("%s: %v", tc.name, err)
				case <-time.After(testenv.Deadline(10 * time.Second)):
					t.Fatalf("%s: Handle reported no refusal", tc.name)
				}
			}
			// The stream goes on: what was written before arrives, once.
			if _, err := ac.Write([]byte("abc")); err != nil {
				t.Fatal(err)
			}
			ac.CloseWrite()
			got, err := io.ReadAll(rc)
			if err != nil || string(got) != "0123456789abc" {
				t.Fatalf("relay read %q, %v", got, err)
			}
			if l.agent.Len() != 1 {
				t.Fatalf("agent keeps %d streams, want 1", l.agent.Len())
			}
		})
	}
}

// TestUnknownStreamRefused: a relay that resumes a stream the agent no
// longer knows (the agent restarted) reads a reset.
func TestUnknownStreamRefused(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			l.kill()
			ac.Abort() // while detached; the reset record is lost with the agent
			l.agent.Close()
			agent, err := NewRegistry(Config{})
			if err != nil {
				t.Fatal(err)
			}
			l.agent = agent
			l.connect()
			rc.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
			_, err = rc.Read(make([]byte, 1))
			if !errors.Is(err, ErrRefused) || !errors.Is(err, tunnel.ErrStreamReset) {
				t.Fatalf("read: %v, want ErrRefused and ErrStreamReset", err)
			}
		})
	}
}

// TestResumeSilentLink: the link goes silent mid-transfer (a blackhole
// drops everything, both ways), and either the relay gives the session
// up at once while the agent still believes in its own (the agent's
// stream is then taken over from a live session: its reads of the old
// stream must not count), or both ends' keepalives declare it dead. A
// new session carries on; sha256 sums match both ways.
func TestResumeSilentLink(t *testing.T) {
	size := 16 << 20
	if testing.Short() {
		size = 4 << 20
	}
	for _, tt := range transports {
		for _, tc := range []struct {
			name       string
			relayFirst bool
			keepAlive  time.Duration
		}{
			{"relay gives up first", true, 0},
			{"keepalive", false, 2 * time.Second},
		} {
			t.Run(tt.name+"/"+tc.name, func(t *testing.T) {
				leak.Check(t)
				scfg := tunnel.DefaultSessionConfig()
				if tc.keepAlive > 0 {
					scfg.KeepAlive, scfg.KeepAliveTimeout = tc.keepAlive, tc.keepAlive
				}
				var bh *blackhole
				var oldAgent, oldRelay tunnel.Session
				var logbuf syncBuf
				t.Cleanup(func() {
					if t.Failed() {
						t.Log(logbuf.String())
					}
				})
				l := newLinkOn(t, tt.tr, Config{Log: slog.New(slog.NewTextHandler(&logbuf, &slog.HandlerOptions{Level: slog.LevelDebug}))}, func() (tunnel.Session, tunnel.Session) {
					oldAgent, oldRelay = sessionPairVia(t, tt.tr, func(addr string) string {
						bh = newBlackhole(t, tt.tr, addr)
						return bh.addr
					}, scfg)
					return oldAgent, oldRelay
				})
				rc, ac := l.open()
				dl := time.Now().Add(testenv.Deadline(120 * time.Second))
				rc.SetDeadline(dl)
				ac.SetDeadline(dl)
				var progress atomic.Int64
				sentR, sentA := sendAll(rc, size, 3), sendAll(ac, size, 4)
				gotA, gotR := recvAll(ac, &progress), recvAll(rc, &progress)
				waitFor(t, "a third through", 60*time.Second, func() bool { return progress.Load() >= int64(size)*2/3 })
				bh.drop.Store(true)
				if tc.relayFirst {
					oldRelay.Close()
				} else {
					waitFor(t, "both keepalives to end the sessions", 30*time.Second, func() bool {
						return isDone(oldAgent.Done()) && isDone(oldRelay.Done())
					})
				}
				l.connect()
				stop := time.AfterFunc(20*time.Second, func() { t.Logf("stalled?\nrelay %v\nagent %v", rc, ac) })
				defer stop.Stop()
				if tc.relayFirst && isDone(oldAgent.Done()) {
					t.Fatal("the agent's old session ended: the takeover from a live session was not tested")
				}
				for _, ch := range []<-chan error{sentR, sentA} {
					if err := <-ch; err != nil {
						t.Fatal(err)
					}
				}
				a, r := <-gotA, <-gotR
				if a.err != nil || r.err != nil {
					t.Fatalf("agent read %d bytes: %v; relay read %d bytes: %v", a.n, a.err, r.n, r.err)
				}
				if a.sum != wantSum(size, 3) || r.sum != wantSum(size, 4) {
					t.Errorf("sha256 differs: relay to agent %d bytes, agent to relay %d bytes", a.n, r.n)
				}
				oldAgent.Close()
				rc.Close()
				ac.Close()
			})
		}
	}
}

// TestResumeAfterClose: the relay writes and closes at once; its session
// dies before the agent has read anything. The closed end kept its bytes,
// and the agent reads them all, then the end of stream.
func TestResumeAfterClose(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			msg := make([]byte, 200<<10)
			for i := range msg {
				msg[i] = byte(i * 13)
			}
			if _, err := rc.Write(msg); err != nil {
				t.Fatal(err)
			}
			rc.Close()
			if l.relay.Len() != 1 {
				t.Fatalf("relay keeps %d streams after Close with bytes unconsumed, want 1", l.relay.Len())
			}
			l.kill()
			l.connect()
			ac.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
			got, err := io.ReadAll(ac)
			if err != nil || string(got) != string(msg) {
				t.Fatalf("agent read %d bytes of %d: %v", len(got), len(msg), err)
			}
			ac.Close()
			waitFor(t, "both registries to let the stream go", 10*time.Second, func() bool {
				return l.relay.Len() == 0 && l.agent.Len() == 0 && l.relay.Retained() == 0 && l.agent.Retained() == 0
			})
		})
	}
}

// TestResumeTotalBound: the registry's rings together stay within Total.
// One stream's ring takes it all (its peer reads nothing); a second
// stream's Write then waits, writing nothing before its deadline, until
// the first stream ends and gives its ring back.
func TestResumeTotalBound(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			window := 2 * minRing
			l := newLink(t, tt.tr, Config{Window: window, Total: int64(window)})
			rc1, ac1 := l.open()
			rc2, ac2 := l.open()
			dl := time.Now().Add(testenv.Deadline(30 * time.Second))
			ac1.SetDeadline(dl)
			ac2.SetDeadline(dl)
			first := make([]byte, window)
			rc1.SetWriteDeadline(time.Now().Add(testenv.Scale(300 * time.Millisecond)))
			if n, err := rc1.Write(first); n != window || err != nil {
				t.Fatalf("first stream wrote %d, %v; want %d", n, err, window)
			}
			rc2.SetWriteDeadline(time.Now().Add(testenv.Scale(300 * time.Millisecond)))
			if n, err := rc2.Write([]byte("second")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("second stream wrote %d, %v beyond the total; want 0, a timeout", n, err)
			}
			if r := l.relay.Retained(); r != int64(window) {
				t.Fatalf("relay retains %d bytes, want %d", r, window)
			}
			rc2.SetWriteDeadline(dl)
			wrote := make(chan error, 1)
			go func() {
				_, err := rc2.Write([]byte("second"))
				if err == nil {
					err = rc2.CloseWrite()
				}
				wrote <- err
			}()
			// The first stream ends cleanly both ways; its ring goes back.
			rc1.CloseWrite()
			if got, err := io.ReadAll(ac1); err != nil || len(got) != window {
				t.Fatalf("agent read %d bytes of the first stream, %v", len(got), err)
			}
			ac1.Close()
			rc1.SetReadDeadline(dl)
			if _, err := io.ReadAll(rc1); err != nil {
				t.Fatal(err)
			}
			rc1.Close()
			if err := <-wrote; err != nil {
				t.Fatalf("second stream: %v", err)
			}
			if got, err := io.ReadAll(ac2); err != nil || string(got) != "second" {
				t.Fatalf("agent read %q of the second stream, %v", got, err)
			}
			rc2.Close()
			ac2.Close()
		})
	}
}

// TestResumeShrink: once the peer has consumed all a stream sent, Shrink
// gives its ring back to the registry, and a Write takes a new one.
func TestResumeShrink(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			l := newLink(t, tt.tr, Config{})
			rc, ac := l.open()
			dl := time.Now().Add(testenv.Deadline(10 * time.Second))
			ac.SetDeadline(dl)
			msg := make([]byte, 100<<10)
			if _, err := rc.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(ac, msg); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the agent's count to reach the relay", 10*time.Second, func() bool {
				rc.mu.Lock()
				defer rc.mu.Unlock()
				return rc.acked == rc.sent
			})
			if r := l.relay.Retained(); r != 2*minRing {
				t.Fatalf("relay retains %d bytes before Shrink, want %d", r, 2*minRing)
			}
			if err := rc.Shrink(); err != nil {
				t.Fatal(err)
			}
			if r := l.relay.Retained(); r != 0 {
				t.Fatalf("relay retains %d bytes after Shrink, want 0", r)
			}
			if _, err := rc.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(ac, msg[:4]); err != nil || string(msg[:4]) != "more" {
				t.Fatalf("read %q, %v", msg[:4], err)
			}
		})
	}
}
