package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// Conn is one end of a resumable stream: a tunnel.Stream that outlives
// the underlying stream it runs on. See the package documentation.
//
// One goroutine may Read (and WaitRead) and one may Write (and
// CloseWrite) at a time, as with any stream; Close, Abort and the
// deadlines may be called from anywhere.
type Conn struct {
	id     uint64
	reg    *Registry
	opener bool // this end opened the stream, and resumes it

	// wmu is the write token: whoever holds it writes to the underlying
	// stream (Write, CloseWrite, and flush after an attach), so that the
	// bytes go out in order, each once.
	wmu   sync.Mutex
	hdr   [frameLen]byte     // the resumed frame, under wmu
	wake  chan struct{}      // the writer's: room, an attach, an end
	rwake chan struct{}      // the reader's: an attach, an end
	local net.Addr           // of the first underlying stream
	peer  net.Addr           // of the first underlying stream
	cutFn func(reason error) // see OnCut; under mu

	mu   sync.Mutex
	st   tunnel.Stream  // the underlying stream; nil while detached
	sess tunnel.Session // st's session, or the last one
	gen  uint64         // counts attaches and detaches: tells a stale read
	end  error          // why the Conn ended; nil while it lives

	// The sending side, in offsets of this end's bytes.
	ring      ring
	acked     uint64 // the peer consumed [0, acked): dropped from the ring
	sent      uint64 // [acked, sent) is in the ring
	wire      uint64 // [0, wire) was given to st (or consumed before it)
	finSet    bool   // CloseWrite was called, at offset sent
	finOnWire bool   // st carries the FIN
	finAcked  bool   // the peer consumed the FIN
	reply     bool   // st must first carry a resumed frame
	replyVal  uint64 // its consumed count

	// The receiving side.
	consumed  uint64 // bytes read, plus 1 once the peer's FIN was read
	rEOF      bool   // the peer's FIN was read
	ackSent   uint64 // consumed as last handed to the ack channel
	ackQueued bool   // on the registry's list of acks to send

	rdl, wdl    time.Time   // deadlines
	expiry      *time.Timer // resume window (detached) or linger (closed)
	resuming    bool        // a resume is under way (opener)
	appClosed   bool        // Close was called
	releasedBuf bool        // the ring's bytes went back to the registry
}

var _ tunnel.Stream = (*Conn)(nil)

// Errors a Conn ends with.
var (
	// ErrExpired: the peer did not come back within the resume window
	// after the stream's session died. The caller resets its own end
	// (a visitor's socket): the transfer was cut, not complete.
	ErrExpired = errors.New("resume window expired: the peer did not come back")
	// ErrRefused is wrapped, with tunnel.ErrStreamReset, by the error of
	// a stream whose resume the peer refused (it no longer knows it).
	ErrRefused = errors.New("resume refused by the peer")
	// errWriteAfterFIN: Write after CloseWrite.
	errWriteAfterFIN = errors.New("write after CloseWrite")
)

// detachGrace bounds how long an underlying stream's unexplained error
// waits for its session to end before it counts as a reset: a session's
// end reaches its streams and its Done at about the same time.
const detachGrace = 2 * time.Second

// minRing is a ring's first size.
const minRing = 64 << 10

func newConn(r *Registry, id uint64, opener bool) *Conn {
	return &Conn{id: id, reg: r, opener: opener, wake: make(chan struct{}, 1), rwake: make(chan struct{}, 1)}
}

// ID is the stream's ID, the same at both ends.
func (c *Conn) ID() uint64 { return c.id }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *Conn) wakeAll() {
	signal(c.wake)
	signal(c.rwake)
}

// wait waits for ch or the deadline.
func wait(ch chan struct{}, dl time.Time) error {
	if dl.IsZero() {
		<-ch
		return nil
	}
	d := time.Until(dl)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

// deadline reports whether err is the timeout of a deadline of c's that
// has passed (read: the read deadline, else the write deadline). Other
// timeouts (QUIC's idle timeout) are the session's end.
func (c *Conn) deadline(err error, read bool) bool {
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	c.mu.Lock()
	dl := c.wdl
	if read {
		dl = c.rdl
	}
	c.mu.Unlock()
	return !dl.IsZero() && !time.Now().Before(dl)
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Read reads from the current underlying stream. While the Conn is
// detached it waits (for the read deadline, an attach or the end).
func (c *Conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		switch {
		case c.rEOF:
			c.mu.Unlock()
			return 0, io.EOF
		case c.end != nil:
			err := c.end
			c.mu.Unlock()
			return 0, err
		case c.appClosed:
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		st, gen, sess, dl := c.st, c.gen, c.sess, c.rdl
		c.mu.Unlock()
		if st == nil {
			if err := wait(c.rwake, dl); err != nil {
				return 0, err
			}
			continue
		}
		n, err := st.Read(p)
		eof := errors.Is(err, io.EOF)
		c.mu.Lock()
		if gen != c.gen {
			// Read from a stream the Conn has left: the peer sends
			// these bytes again on the new one.
			c.mu.Unlock()
			continue
		}
		c.consumed += uint64(n)
		if eof {
			c.rEOF = true
			c.consumed++
		}
		queue := (n > 0 || eof) && !c.ackQueued
		if queue {
			c.ackQueued = true
		}
		urgent := eof || c.consumed-c.ackSent >= uint64(c.reg.cfg.AckBytes)
		c.mu.Unlock()
		if queue {
			c.reg.queueAck(c)
		}
		if urgent {
			c.reg.ackNow()
		}
		if eof {
			c.maybeFinish()
			return n, io.EOF
		}
		if err == nil || c.deadline(err, true) {
			return n, err
		}
		if berr := c.broken(gen, sess, err); berr != nil {
			return n, berr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// WaitRead waits until the Conn has data to read or has ended; see
// tunnel.Stream. A detached Conn waits for its attach.
func (c *Conn) WaitRead() error {
	for {
		c.mu.Lock()
		switch {
		case c.rEOF, c.appClosed:
			c.mu.Unlock()
			return nil // Read tells
		case c.end != nil:
			err := c.end
			c.mu.Unlock()
			return err
		}
		st, gen, sess, dl := c.st, c.gen, c.sess, c.rdl
		c.mu.Unlock()
		if st == nil {
			if err := wait(c.rwake, dl); err != nil {
				return err
			}
			continue
		}
		err := st.WaitRead()
		if err == nil || errors.Is(err, io.EOF) {
			return nil
		}
		if c.deadline(err, true) {
			return err
		}
		if berr := c.broken(gen, sess, err); berr != nil {
			return berr
		}
	}
}

// broken handles an error of the underlying stream st of generation gen
// (not a deadline's, not an end of stream): a stream the Conn has left
// already, or one whose session died, detaches the Conn and broken
// returns nil; any other is a reset, which ends the Conn, and broken
// returns its error.
func (c *Conn) broken(gen uint64, sess tunnel.Session, err error) error {
	dead := false
	switch {
	case errors.Is(err, tunnel.ErrStreamReset), errors.Is(err, tunnel.ErrStalled):
	case errors.Is(err, tunnel.ErrStreamCut), errors.Is(err, tunnel.ErrSessionClosed),
		errors.Is(err, tunnel.ErrPeerClosed), isDone(sess.Done()):
		dead = true
	default:
		c.mu.Lock()
		stale := gen != c.gen
		c.mu.Unlock()
		if stale {
			return nil
		}
		t := time.NewTimer(detachGrace)
		select {
		case <-sess.Done():
			dead = true
		case <-t.C:
		}
		t.Stop()
	}
	c.mu.Lock()
	if gen != c.gen {
		c.mu.Unlock()
		return nil
	}
	if end := c.end; end != nil {
		c.mu.Unlock()
		return end
	}
	c.mu.Unlock()
	if dead {
		c.detach(gen)
		return nil
	}
	return c.fail(fmt.Errorf("stream %016x: %w", c.id, err))
}

// detach leaves the underlying stream of generation gen, whose session
// died; the Conn waits for an attach until the resume window ends.
func (c *Conn) detach(gen uint64) {
	c.mu.Lock()
	if gen != c.gen || c.st == nil || c.end != nil {
		c.mu.Unlock()
		return
	}
	old := c.st
	c.st = nil
	c.gen++
	c.reply = false
	if !c.appClosed {
		c.armExpiryLocked()
	}
	c.mu.Unlock()
	// The session is dead: closing tells the peer nothing.
	_ = old.Close()
	c.wakeAll()
	c.reg.log.Debug("resume: stream detached", "stream", fmt.Sprintf("%016x", c.id))
	// Attach makes its session current, then resumes what is detached;
	// this detaches, then resumes on what is current: whatever the
	// order, one of the two resumes the Conn.
	c.reg.resumeSoon(c)
}

func (c *Conn) armExpiryLocked() {
	if c.expiry == nil {
		c.expiry = time.AfterFunc(c.reg.cfg.ResumeWindow, c.expire)
		return
	}
	c.expiry.Reset(c.reg.cfg.ResumeWindow)
}

// expire ends a Conn whose peer did not come back within the resume
// window, or one closed by its user whose peer has not consumed all yet.
func (c *Conn) expire() {
	c.mu.Lock()
	if c.end != nil || c.st != nil && !c.appClosed {
		c.mu.Unlock()
		return
	}
	c.end = fmt.Errorf("stream %016x: %w (%v)", c.id, ErrExpired, c.reg.cfg.ResumeWindow)
	st := c.st
	c.mu.Unlock()
	if st != nil {
		st.Abort()
		_ = st.Close()
	}
	c.release()
	c.reg.log.Debug("resume: stream expired", "stream", fmt.Sprintf("%016x", c.id))
}

// fail ends the Conn with err, resetting the underlying stream and
// telling the peer on the ack channel too; it returns the Conn's end
// (err, or an earlier one).
func (c *Conn) fail(err error) error {
	c.mu.Lock()
	if c.end != nil {
		end := c.end
		c.mu.Unlock()
		return end
	}
	c.end = err
	st := c.st
	c.mu.Unlock()
	if st != nil {
		st.Abort()
		_ = st.Close()
	}
	// The reset reaches a peer that no longer reads the stream (it read
	// the end, or its user closed it) or that is detached.
	c.reg.queueReset(c.id)
	c.release()
	return err
}

// release gives back what an ended Conn holds: its place in the
// registry, its ring and its timer.
func (c *Conn) release() {
	c.mu.Lock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	n := len(c.ring.buf)
	done := c.releasedBuf
	c.releasedBuf = true
	c.mu.Unlock()
	c.wakeAll()
	if !done {
		c.reg.remove(c, int64(n))
	}
}

// Write copies p into the ring and writes it to the underlying stream; a
// detached Conn keeps it for its next stream. Write waits while the ring
// is full (for the write deadline). The bytes it reports written are
// kept until the peer has consumed them.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	n, err := c.write(p)
	c.wmu.Unlock()
	c.kick()
	return n, err
}

func (c *Conn) writeErrLocked() error {
	switch {
	case c.end != nil:
		return c.end
	case c.appClosed:
		return net.ErrClosed
	case c.finSet:
		return errWriteAfterFIN
	case !c.wdl.IsZero() && !time.Now().Before(c.wdl):
		return os.ErrDeadlineExceeded
	}
	return nil
}

func (c *Conn) write(p []byte) (int, error) {
	total := 0
	for total < len(p) {
		if err := c.flush(); err != nil {
			return total, err
		}
		c.mu.Lock()
		if err := c.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return total, err
		}
		if c.reply || c.st != nil && c.wire < c.sent {
			c.mu.Unlock() // an attach came: flush first
			continue
		}
		free := c.ring.free(c.acked, c.sent)
		if free == 0 && !c.growLocked() {
			dl := c.wdl
			c.mu.Unlock()
			if err := wait(c.wake, dl); err != nil {
				return total, err
			}
			continue
		}
		free = c.ring.free(c.acked, c.sent)
		n := min(free, len(p)-total)
		chunk := p[total : total+n]
		c.ring.put(c.sent, chunk)
		c.sent += uint64(n)
		st, gen, sess := c.st, c.gen, c.sess
		c.mu.Unlock()
		total += n
		if st == nil {
			continue
		}
		w, err := st.Write(chunk)
		c.mu.Lock()
		if gen == c.gen {
			c.wire += uint64(w)
		}
		c.mu.Unlock()
		if err != nil {
			if c.deadline(err, false) {
				// The rest of chunk is kept, and goes out before
				// the next bytes.
				return total, err
			}
			if berr := c.broken(gen, sess, err); berr != nil {
				return total, berr
			}
		}
	}
	return total, nil
}

// growLocked doubles the ring, within the stream's and the registry's
// bounds; false if it cannot.
func (c *Conn) growLocked() bool {
	cur := len(c.ring.buf)
	if cur >= c.reg.cfg.Window {
		return false
	}
	n := min(max(minRing, 2*cur), c.reg.cfg.Window)
	if !c.reg.reserve(c, int64(n-cur)) {
		return false
	}
	c.ring.grow(c.acked, c.sent, n)
	return true
}

// flush writes what the underlying stream still lacks, under the write
// token: after an attach, the resumed frame and the bytes from the
// peer's consumed count on; the FIN once every byte is out.
func (c *Conn) flush() error {
	for {
		c.mu.Lock()
		st, gen, sess := c.st, c.gen, c.sess
		if st == nil || c.end != nil {
			c.mu.Unlock()
			return nil
		}
		reply := c.reply
		if reply {
			frame{kind: kindResumed, id: c.id, value: c.replyVal}.put(c.hdr[:])
			c.reply = false
		}
		from, to := c.wire, c.sent
		fin := c.finSet && !c.finOnWire
		if !reply && from == to && !fin {
			c.mu.Unlock()
			return nil
		}
		a, b := c.ring.slices(from, to)
		c.mu.Unlock()
		var err error
		if reply {
			_, err = st.Write(c.hdr[:])
		}
		for _, run := range [2][]byte{a, b} {
			if err != nil || len(run) == 0 {
				continue
			}
			var w int
			w, err = st.Write(run)
			c.mu.Lock()
			if gen == c.gen {
				c.wire += uint64(w)
			}
			c.mu.Unlock()
		}
		if err == nil && fin {
			if err = st.CloseWrite(); err == nil {
				c.mu.Lock()
				if gen == c.gen {
					c.finOnWire = true
				}
				c.mu.Unlock()
			}
		}
		if err != nil {
			if c.deadline(err, false) {
				return err
			}
			if berr := c.broken(gen, sess, err); berr != nil {
				return berr
			}
		}
	}
}

// pending reports whether the underlying stream lacks something that
// flush would write.
func (c *Conn) pending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st != nil && c.end == nil && (c.reply || c.wire < c.sent || c.finSet && !c.finOnWire)
}

// kick flushes on this goroutine if nobody holds the write token; one
// who does flushes before it writes, and kicks after it lets go, so that
// what an attach asks for is always written.
func (c *Conn) kick() {
	for c.pending() && c.wmu.TryLock() {
		err := c.flush()
		c.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// CloseWrite sends the end of stream after every byte written; a Conn
// that resumes sends it again after the bytes it sends again.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	c.mu.Lock()
	if c.end != nil {
		err := c.end
		c.mu.Unlock()
		c.wmu.Unlock()
		return err
	}
	c.finSet = true
	c.mu.Unlock()
	err := c.flush()
	c.wmu.Unlock()
	c.kick()
	return err
}

// Close ends this end's use of the Conn: it sends the end of stream if
// CloseWrite did not, and stops reading. The Conn keeps its unconsumed
// bytes until the peer has consumed them and the end of stream (so that
// a session that dies now loses nothing), for at most the resume window;
// it then closes the underlying stream, or resets it if the peer's data
// was not read to its end (as TCP does).
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.appClosed || c.end != nil {
		c.appClosed = true
		c.mu.Unlock()
		c.wakeAll()
		return nil
	}
	c.appClosed = true
	c.armExpiryLocked()
	fin := c.finSet
	c.mu.Unlock()
	c.wakeAll()
	if !fin && c.wmu.TryLock() {
		c.mu.Lock()
		c.finSet = true
		c.mu.Unlock()
		c.wmu.Unlock()
	} else if !fin {
		// A Write in progress returns at once (appClosed); the FIN
		// follows what it wrote.
		c.wmu.Lock()
		c.mu.Lock()
		c.finSet = true
		c.mu.Unlock()
		c.wmu.Unlock()
	}
	c.kick()
	c.maybeFinish()
	return nil
}

// maybeFinish releases a closed Conn once the peer has consumed all it
// sent, and the end of stream.
func (c *Conn) maybeFinish() {
	c.mu.Lock()
	if !c.appClosed || c.end != nil || !c.finAcked {
		c.mu.Unlock()
		return
	}
	c.end = net.ErrClosed
	st, clean := c.st, c.rEOF
	c.mu.Unlock()
	if st != nil {
		if !clean {
			st.Abort() // the peer's data was not read to its end
		}
		_ = st.Close()
	}
	if !clean {
		c.reg.queueReset(c.id)
	}
	c.release()
}

// Abort resets the stream both ways, now: the peer reads
// tunnel.ErrStreamReset (through the ack channel, if the Conn is
// detached), and the Conn gives back all it holds.
func (c *Conn) Abort() {
	c.mu.Lock()
	c.appClosed = true
	c.mu.Unlock()
	c.fail(fmt.Errorf("stream %016x: %w", c.id, net.ErrClosed))
}

// onAck takes the peer's consumed count v, from the ack channel (where
// an old count is a stale record, ignored) or from an attach.
func (c *Conn) onAck(v uint64) error {
	c.mu.Lock()
	if c.end != nil {
		c.mu.Unlock()
		return nil
	}
	limit := c.sent
	if c.finSet {
		limit++
	}
	if v > limit {
		c.mu.Unlock()
		return c.fail(fmt.Errorf("stream %016x: %w: the peer acknowledged %d bytes, of %d sent: %w",
			c.id, ErrProtocol, v, limit, tunnel.ErrStreamReset))
	}
	if v > c.acked {
		c.acked = min(v, c.sent)
		c.finAcked = c.finSet && v == c.sent+1
	}
	c.mu.Unlock()
	signal(c.wake)
	c.maybeFinish()
	return nil
}

// checkPeerConsumed checks a consumed count from an attach: it may not
// be below what the peer acknowledged already, nor beyond what was sent.
// c.mu is held.
func (c *Conn) checkPeerConsumedLocked(v uint64) error {
	limit, floor := c.sent, c.acked
	if c.finSet {
		limit++
	}
	if c.finAcked {
		floor++
	}
	if v > limit || v < floor {
		return fmt.Errorf("stream %016x: %w: the peer says it consumed %d bytes; this end sent %d and had %d acknowledged",
			c.id, ErrProtocol, v, limit, floor)
	}
	return nil
}

// attachLocked puts st, of sess, under the Conn, in place of old (nil if
// detached), the peer having consumed v (checked); the bytes from v on
// go out again, preceded by a resumed frame if reply. c.mu is held.
func (c *Conn) attachLocked(sess tunnel.Session, st tunnel.Stream, v uint64, reply bool) (old tunnel.Stream) {
	old = c.st
	c.st, c.sess = st, sess
	c.gen++
	if v > c.acked {
		c.acked = min(v, c.sent)
	}
	c.finAcked = c.finSet && v == c.sent+1
	c.wire = min(v, c.sent)
	c.finOnWire = c.finAcked
	c.reply, c.replyVal = reply, c.consumed
	c.resuming = false
	if c.expiry != nil && !c.appClosed {
		c.expiry.Stop()
	}
	_ = st.SetReadDeadline(c.rdl)
	_ = st.SetWriteDeadline(c.wdl)
	st.OnCut(c.cut)
	return old
}

// cut is the underlying stream's OnCut: the transport cut the stream
// while its session lives, which a new stream would not mend.
func (c *Conn) cut(reason error) {
	c.fail(fmt.Errorf("stream %016x: %w", c.id, reason))
	c.mu.Lock()
	f := c.cutFn
	c.mu.Unlock()
	if f != nil {
		f(reason)
	}
}

// OnCut sets what is called when the transport cuts the underlying
// stream while its session lives (see tunnel.Stream); the Conn has ended
// then.
func (c *Conn) OnCut(f func(reason error)) {
	c.mu.Lock()
	c.cutFn = f
	c.mu.Unlock()
}

// Shrink gives back what the Conn holds for a reader that drained it
// (see tunnel.Stream): its ring, if the peer has consumed all of it (a
// Write takes a new one), and what the underlying stream holds. It
// never fails with ErrNotSupported, so that tunnel.Splice keeps asking:
// the ring can always go.
func (c *Conn) Shrink() error {
	c.dropRing()
	c.mu.Lock()
	st := c.st
	c.mu.Unlock()
	if st == nil {
		return nil
	}
	if err := st.Shrink(); err != nil && !errors.Is(err, tunnel.ErrNotSupported) {
		return err
	}
	return nil
}

// dropRing gives an empty ring back to the registry, unless a Write is
// under way.
func (c *Conn) dropRing() {
	if !c.wmu.TryLock() {
		return
	}
	defer c.wmu.Unlock()
	c.mu.Lock()
	n := len(c.ring.buf)
	if n == 0 || c.acked != c.sent || c.releasedBuf {
		c.mu.Unlock()
		return
	}
	c.ring.buf = nil
	c.mu.Unlock()
	c.reg.giveBack(int64(n))
}

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.peer }

func (c *Conn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	st := c.st
	if st != nil {
		_ = st.SetReadDeadline(t)
	}
	c.mu.Unlock()
	signal(c.rwake)
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	st := c.st
	if st != nil {
		_ = st.SetWriteDeadline(t)
	}
	c.mu.Unlock()
	signal(c.wake)
	return nil
}
