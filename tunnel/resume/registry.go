package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// Config tunes a Registry.
type Config struct {
	// Window is the most a stream keeps of its bytes not yet consumed by
	// the peer: its ring, which starts at 64 KiB and doubles while full.
	// A Write waits while the ring is full. It also bounds a stream's
	// throughput to Window per round trip plus AckDelay, so it should be
	// at least the session's stream window. 0: 4 MiB.
	Window int
	// Total bounds the rings of all the registry's streams together; a
	// ring that cannot grow within it waits for its peer's acks. 0:
	// 256 MiB.
	Total int64
	// ResumeWindow is how long a stream whose session died waits for a
	// new one before it ends with ErrExpired. 0: 2 minutes.
	ResumeWindow time.Duration
	// AckBytes: a stream's consumed count is sent on the ack channel as
	// soon as this many bytes were consumed since the last count sent;
	// AckDelay: any smaller count is sent within this time. 0: Window/8
	// and 10 ms.
	AckBytes int
	AckDelay time.Duration
	// AttachTimeout bounds the exchange of frames that attaches a stream
	// (the first frame of an accepted stream, the answer to a resume),
	// and a write of acks. 0: 10 s.
	AttachTimeout time.Duration
	// Log receives the registry's lines; nil: none.
	Log *slog.Logger
}

// DefaultConfig returns the settings used where none are given.
func DefaultConfig() Config {
	return Config{
		Window:        4 << 20,
		Total:         256 << 20,
		ResumeWindow:  2 * time.Minute,
		AckBytes:      512 << 10,
		AckDelay:      10 * time.Millisecond,
		AttachTimeout: 10 * time.Second,
	}
}

// normalize fills unset values with defaults and checks the rest.
func (c Config) normalize() (Config, error) {
	def := DefaultConfig()
	if c.Window == 0 {
		c.Window = def.Window
	}
	if c.Total == 0 {
		c.Total = def.Total
	}
	if c.ResumeWindow == 0 {
		c.ResumeWindow = def.ResumeWindow
	}
	if c.AckBytes == 0 {
		c.AckBytes = c.Window / 8
	}
	if c.AckDelay == 0 {
		c.AckDelay = def.AckDelay
	}
	if c.AttachTimeout == 0 {
		c.AttachTimeout = def.AttachTimeout
	}
	switch {
	case c.Window < minRing:
		return c, fmt.Errorf("resume: window %d bytes: must be at least %d", c.Window, minRing)
	case c.Total < int64(c.Window):
		return c, fmt.Errorf("resume: total %d bytes: must be at least the window (%d)", c.Total, c.Window)
	case c.ResumeWindow < 0:
		return c, fmt.Errorf("resume: resume window %v: must be positive", c.ResumeWindow)
	case c.AckBytes < 0 || c.AckBytes > c.Window/2:
		return c, fmt.Errorf("resume: ack bytes %d: must be between 1 and half the window (%d)", c.AckBytes, c.Window/2)
	case c.AckDelay < 0 || c.AttachTimeout < 0:
		return c, fmt.Errorf("resume: ack delay %v, attach timeout %v: must be positive", c.AckDelay, c.AttachTimeout)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Errors of a Registry.
var (
	// ErrNoSession: Open with no live session attached.
	ErrNoSession = errors.New("no session to open a stream on")
	// ErrClosed: the registry was closed; its streams were reset.
	ErrClosed = errors.New("resume registry closed")
)

// Registry keeps the resumable streams between one relay and one agent,
// across their sessions: it opens and accepts them, runs each session's
// ack channel, attaches streams to a new session and expires those whose
// peer does not come back. Its goroutines: one that writes acks, one per
// attached session that waits for its end, and one per stream while it
// resumes; the ack channel the peer opens is read on the goroutine that
// calls Handle for it.
type Registry struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ackSoon   chan struct{} // a count to send within AckDelay
	ackUrgent chan struct{} // a count to send now

	mu         sync.Mutex
	conns      map[uint64]*Conn
	cur        tunnel.Session // new streams open here, detached ones resume here
	ackSt      tunnel.Stream  // this end's ack channel, on cur
	ackIn      map[tunnel.Stream]struct{}
	dirty      []*Conn  // streams whose consumed count is to be sent
	spare      []*Conn  // dirty's other array
	resets     []uint64 // streams to be reported reset on the ack channel
	retained   int64    // the rings' bytes
	budgetWait map[*Conn]struct{}
	closed     bool
	ackBuf     []byte // the ack writer's

	resumed atomic.Int64 // streams attached to a new stream, either way
}

// NewRegistry returns a registry with cfg (see Config); Close ends it.
func NewRegistry(cfg Config) (*Registry, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{
		cfg: cfg, log: cfg.Log, ctx: ctx, cancel: cancel,
		ackSoon: make(chan struct{}, 1), ackUrgent: make(chan struct{}, 1),
		conns: map[uint64]*Conn{}, ackIn: map[tunnel.Stream]struct{}{}, budgetWait: map[*Conn]struct{}{},
	}
	r.wg.Add(1)
	go r.ackLoop()
	return r, nil
}

// Attach makes sess the registry's session: it opens the session's ack
// channel, resumes on sess the streams this end opened that are
// detached, and detaches the streams of sess when it ends. The caller
// closes a session that sess replaces: streams still on it resume once
// it has ended.
func (r *Registry) Attach(ctx context.Context, sess tunnel.Session) error {
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("resume: open the ack channel: %w", err)
	}
	var b [frameLen]byte
	frame{kind: kindAckChannel}.put(b[:])
	_ = st.SetWriteDeadline(time.Now().Add(r.cfg.AttachTimeout))
	if _, err := st.Write(b[:]); err != nil {
		st.Abort()
		_ = st.Close()
		return fmt.Errorf("resume: open the ack channel: %w", err)
	}
	_ = st.SetWriteDeadline(time.Time{})
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = st.Close()
		return ErrClosed
	}
	old := r.ackSt
	r.cur, r.ackSt = sess, st
	r.wg.Add(1)
	r.mu.Unlock()
	go r.watch(sess)
	if old != nil {
		_ = old.Close()
	}
	signal(r.ackUrgent)
	r.resumeAll(sess)
	return nil
}

// watch detaches the streams of sess when it ends.
func (r *Registry) watch(sess tunnel.Session) {
	defer r.wg.Done()
	select {
	case <-sess.Done():
	case <-r.ctx.Done():
		return
	}
	r.mu.Lock()
	if r.cur == sess {
		r.cur, r.ackSt = nil, nil
	}
	list := r.list()
	r.mu.Unlock()
	for _, c := range list {
		c.mu.Lock()
		on, gen := c.sess == sess && c.st != nil, c.gen
		c.mu.Unlock()
		if on {
			c.detach(gen) // and resumes it on the current session
		}
	}
}

// list returns the streams; r.mu is held.
func (r *Registry) list() []*Conn {
	list := make([]*Conn, 0, len(r.conns))
	for _, c := range r.conns {
		list = append(list, c)
	}
	return list
}

// resumeAll resumes on sess every detached stream this end opened.
func (r *Registry) resumeAll(sess tunnel.Session) {
	if sess == nil || isDone(sess.Done()) {
		return
	}
	r.mu.Lock()
	list := r.list()
	r.mu.Unlock()
	for _, c := range list {
		r.startResume(c, sess)
	}
}

// resumeSoon resumes c, just detached, if a live session is at hand.
func (r *Registry) resumeSoon(c *Conn) {
	r.mu.Lock()
	sess := r.cur
	r.mu.Unlock()
	if sess != nil && !isDone(sess.Done()) {
		r.startResume(c, sess)
	}
}

func (r *Registry) startResume(c *Conn, sess tunnel.Session) {
	c.mu.Lock()
	ok := c.opener && c.st == nil && c.end == nil && !c.resuming
	if ok {
		c.resuming = true
	}
	c.mu.Unlock()
	if !ok {
		return
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go r.resume(c, sess)
}

// resume attaches c to a new stream on sess: it sends its consumed
// count, reads the peer's, and sends again what the peer lacks.
func (r *Registry) resume(c *Conn, sess tunnel.Session) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.AttachTimeout)
	defer cancel()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		r.resumeFailed(c, sess, err)
		return
	}
	drop := func() { st.Abort(); _ = st.Close() }
	stop := context.AfterFunc(ctx, drop)
	c.mu.Lock()
	v := c.consumed
	c.mu.Unlock()
	var b [frameLen]byte
	frame{kind: kindResume, id: c.id, value: v}.put(b[:])
	_ = st.SetDeadline(time.Now().Add(r.cfg.AttachTimeout))
	if _, err = st.Write(b[:]); err == nil {
		_, err = io.ReadFull(st, b[:])
	}
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		drop()
		r.resumeFailed(c, sess, err)
		return
	}
	f, err := parseFrame(b[:])
	if err == nil && f.id != c.id {
		err = fmt.Errorf("%w: answer for stream %016x", ErrProtocol, f.id)
	}
	if err == nil && f.kind == kindRefused {
		drop()
		c.fail(fmt.Errorf("stream %016x: %w: %s: %w", c.id, ErrRefused, refusalWords(f.value), tunnel.ErrStreamReset))
		r.log.Debug("resume: refused", "stream", fmt.Sprintf("%016x", c.id), "reason", refusalWords(f.value))
		return
	}
	if err == nil && f.kind != kindResumed {
		err = fmt.Errorf("%w: a %s frame in answer to a resume", ErrProtocol, f.kind)
	}
	c.mu.Lock()
	if err == nil {
		err = c.checkPeerConsumedLocked(f.value)
	}
	if err != nil || c.end != nil || c.st != nil {
		c.resuming = false
		c.mu.Unlock()
		drop()
		if err != nil {
			c.fail(fmt.Errorf("stream %016x: resume: %w: %w", c.id, err, tunnel.ErrStreamReset))
			r.log.Warn("resume: bad answer from the peer", "stream", fmt.Sprintf("%016x", c.id), "err", err)
		}
		return
	}
	c.attachLocked(sess, st, f.value, false)
	c.mu.Unlock()
	r.resumed.Add(1)
	c.wakeAll()
	r.log.Debug("resume: stream resumed", "stream", fmt.Sprintf("%016x", c.id), "peer_consumed", f.value, "consumed", v)
	c.kick()
}

// resumeFailed: the exchange on a new stream failed. If its session died
// too (a stream's error can come before its session's Done), c resumes on
// the current session, or waits for the next; on a live session, the
// peer is broken.
func (r *Registry) resumeFailed(c *Conn, sess tunnel.Session, err error) {
	c.mu.Lock()
	c.resuming = false
	c.mu.Unlock()
	t := time.NewTimer(detachGrace)
	defer t.Stop()
	select {
	case <-sess.Done():
		r.log.Debug("resume: session ended during a resume", "stream", fmt.Sprintf("%016x", c.id), "err", err)
		// An Attach meanwhile skipped c, which was resuming: resume it
		// on the session Attach made current, if any.
		r.resumeSoon(c)
		return
	case <-r.ctx.Done():
		return
	case <-t.C:
	}
	c.fail(fmt.Errorf("stream %016x: resume: %w: %w", c.id, err, tunnel.ErrStreamReset))
}

// Open opens a new resumable stream on the registry's session.
func (r *Registry) Open(ctx context.Context) (*Conn, error) {
	r.mu.Lock()
	sess, closed := r.cur, r.closed
	r.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if sess == nil || isDone(sess.Done()) {
		return nil, ErrNoSession
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("resume: open: %w", err)
	}
	r.mu.Lock()
	id := rand.Uint64()
	for id == 0 || r.conns[id] != nil {
		id = rand.Uint64()
	}
	c := newConn(r, id, true)
	c.local, c.peer = st.LocalAddr(), st.RemoteAddr()
	c.st, c.sess = st, sess
	r.conns[id] = c
	r.mu.Unlock()
	var b [frameLen]byte
	frame{kind: kindOpen, id: id}.put(b[:])
	if _, err := st.Write(b[:]); err != nil {
		c.fail(fmt.Errorf("stream %016x: open: %w", id, err))
		return nil, fmt.Errorf("resume: open: %w", err)
	}
	st.OnCut(c.cut)
	return c, nil
}

// Handle takes a stream that the peer opened on sess, and reads its
// first frame within AttachTimeout: a new stream is returned, to be used
// as any; a resume attaches the stream to its Conn, and sends again what
// the peer lacks, on this goroutine; the peer's ack channel is read until
// its session ends. Handle returns nil, nil for the last two. A stream it
// refuses is reset, or refused with a frame, and changes nothing else.
func (r *Registry) Handle(ctx context.Context, sess tunnel.Session, st tunnel.Stream) (*Conn, error) {
	var b [frameLen]byte
	_ = st.SetReadDeadline(time.Now().Add(r.cfg.AttachTimeout))
	stop := context.AfterFunc(ctx, func() { _ = st.SetReadDeadline(time.Now()) })
	_, err := io.ReadFull(st, b[:])
	stop()
	if err != nil {
		st.Abort()
		_ = st.Close()
		return nil, fmt.Errorf("resume: read a stream's first frame: %w", err)
	}
	_ = st.SetReadDeadline(time.Time{})
	f, err := parseFrame(b[:])
	if err == nil && f.kind != kindOpen && f.kind != kindResume && f.kind != kindAckChannel {
		err = fmt.Errorf("%w: a stream may not start with a %s frame", ErrProtocol, f.kind)
	}
	if err != nil {
		st.Abort()
		_ = st.Close()
		return nil, fmt.Errorf("resume: %w", err)
	}
	switch f.kind {
	case kindOpen:
		return r.accept(sess, st, f.id)
	case kindResume:
		return nil, r.resumeFrom(sess, st, f)
	default:
		return nil, r.readAcks(st)
	}
}

// accept registers a new stream that the peer opened.
func (r *Registry) accept(sess tunnel.Session, st tunnel.Stream, id uint64) (*Conn, error) {
	r.mu.Lock()
	if r.closed || r.conns[id] != nil {
		closed := r.closed
		r.mu.Unlock()
		st.Abort()
		_ = st.Close()
		if closed {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("resume: %w: open of stream %016x, which exists", ErrProtocol, id)
	}
	c := newConn(r, id, false)
	c.local, c.peer = st.LocalAddr(), st.RemoteAddr()
	c.st, c.sess = st, sess
	r.conns[id] = c
	r.mu.Unlock()
	st.OnCut(c.cut)
	return c, nil
}

// resumeFrom attaches st, whose first frame f is a resume, to its Conn.
func (r *Registry) resumeFrom(sess tunnel.Session, st tunnel.Stream, f frame) error {
	r.mu.Lock()
	c, closed := r.conns[f.id], r.closed
	r.mu.Unlock()
	refuse := func(code uint64, why error) error {
		var b [frameLen]byte
		frame{kind: kindRefused, id: f.id, value: code}.put(b[:])
		_ = st.SetWriteDeadline(time.Now().Add(r.cfg.AttachTimeout))
		_, _ = st.Write(b[:])
		_ = st.CloseWrite()
		_ = st.Close()
		r.log.Debug("resume: refused", "stream", fmt.Sprintf("%016x", f.id), "err", why)
		return fmt.Errorf("resume refused: %w", why)
	}
	switch {
	case closed:
		return refuse(refuseClosed, ErrClosed)
	case c == nil || c.opener:
		return refuse(refuseUnknown, fmt.Errorf("stream %016x: no such stream", f.id))
	}
	c.mu.Lock()
	if c.end != nil {
		c.mu.Unlock()
		return refuse(refuseUnknown, fmt.Errorf("stream %016x: the stream has ended", f.id))
	}
	if err := c.checkPeerConsumedLocked(f.value); err != nil {
		c.mu.Unlock()
		return refuse(refuseBadOffset, err)
	}
	old := c.attachLocked(sess, st, f.value, true)
	c.mu.Unlock()
	r.resumed.Add(1)
	if old != nil {
		// The peer has left it: nothing more of it is read.
		_ = old.Close()
	}
	c.wakeAll()
	r.log.Debug("resume: stream resumed by the peer", "stream", fmt.Sprintf("%016x", c.id), "peer_consumed", f.value)
	c.kick()
	return nil
}

// readAcks reads the peer's ack channel until it ends.
func (r *Registry) readAcks(st tunnel.Stream) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = st.Close()
		return ErrClosed
	}
	r.ackIn[st] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.ackIn, st)
		r.mu.Unlock()
		_ = st.Close()
	}()
	buf := make([]byte, 256*frameLen)
	have := 0
	for {
		n, err := st.Read(buf[have:])
		have += n
		i := 0
		for ; have-i >= frameLen; i += frameLen {
			if perr := r.applyRecord(buf[i : i+frameLen]); perr != nil {
				st.Abort()
				return perr
			}
		}
		have = copy(buf, buf[i:have])
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("resume: ack channel: %w", err)
		}
	}
}

// applyRecord takes one record of the peer's ack channel.
func (r *Registry) applyRecord(b []byte) error {
	f, err := parseFrame(b)
	if err == nil && f.kind != kindAck && f.kind != kindReset {
		err = fmt.Errorf("%w: a %s frame on the ack channel", ErrProtocol, f.kind)
	}
	if err != nil {
		return fmt.Errorf("resume: ack channel: %w", err)
	}
	r.mu.Lock()
	c := r.conns[f.id]
	r.mu.Unlock()
	if c == nil {
		return nil // ended here already
	}
	if f.kind == kindReset {
		c.fail(fmt.Errorf("stream %016x: %w (while detached)", c.id, tunnel.ErrStreamReset))
		return nil
	}
	_ = c.onAck(f.value) // a count beyond what was sent resets that stream alone
	return nil
}

// queueAck puts c on the list of counts to send.
func (r *Registry) queueAck(c *Conn) {
	r.mu.Lock()
	r.dirty = append(r.dirty, c)
	r.mu.Unlock()
	signal(r.ackSoon)
}

// ackNow has the counts sent at once.
func (r *Registry) ackNow() { signal(r.ackUrgent) }

// queueReset tells the peer, on the ack channel, that stream id was reset.
func (r *Registry) queueReset(id uint64) {
	r.mu.Lock()
	r.resets = append(r.resets, id)
	r.mu.Unlock()
	signal(r.ackUrgent)
}

// ackLoop sends the consumed counts on the ack channel: at once when one
// is urgent (AckBytes consumed since its last), else within AckDelay, in
// batches.
func (r *Registry) ackLoop() {
	defer r.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	armed := false
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.ackSoon:
			if !armed {
				t.Reset(r.cfg.AckDelay)
				armed = true
			}
			continue
		case <-r.ackUrgent:
		case <-t.C:
			armed = false
		}
		if armed {
			t.Stop()
			armed = false
		}
		r.flushAcks()
	}
}

// flushAcks writes the queued counts and resets on the ack channel; what
// it cannot write waits for the next session's.
func (r *Registry) flushAcks() {
	r.mu.Lock()
	st := r.ackSt
	if st == nil || len(r.dirty) == 0 && len(r.resets) == 0 {
		r.mu.Unlock()
		return
	}
	batch, resets := r.dirty, r.resets
	r.dirty, r.spare, r.resets = r.spare[:0], nil, nil
	r.mu.Unlock()
	buf := r.ackBuf[:0]
	var zero [frameLen]byte
	for _, c := range batch {
		c.mu.Lock()
		v := c.consumed
		c.ackQueued = false
		c.ackSent = v
		c.mu.Unlock()
		buf = append(buf, zero[:]...)
		frame{kind: kindAck, id: c.id, value: v}.put(buf[len(buf)-frameLen:])
	}
	for _, id := range resets {
		buf = append(buf, zero[:]...)
		frame{kind: kindReset, id: id}.put(buf[len(buf)-frameLen:])
	}
	_ = st.SetWriteDeadline(time.Now().Add(r.cfg.AttachTimeout))
	_, err := st.Write(buf)
	r.ackBuf = buf[:0]
	if err != nil {
		r.log.Debug("resume: ack channel failed", "err", err)
		st.Abort()
		_ = st.Close()
		r.mu.Lock()
		if r.ackSt == st {
			r.ackSt = nil
		}
		r.resets = append(resets, r.resets...)
		r.mu.Unlock()
		for _, c := range batch {
			c.mu.Lock()
			q := !c.ackQueued
			c.ackQueued = true
			c.mu.Unlock()
			if q {
				r.queueAck(c)
			}
		}
	}
	clear(batch)
	r.mu.Lock()
	r.spare = batch[:0]
	r.mu.Unlock()
}

// reserve takes n bytes of the registry's total for c's ring; false if
// they are not there (c is woken when some come back).
func (r *Registry) reserve(c *Conn, n int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.retained+n > r.cfg.Total {
		r.budgetWait[c] = struct{}{}
		return false
	}
	r.retained += n
	return true
}

// remove forgets an ended stream and takes back its ring's n bytes.
func (r *Registry) remove(c *Conn, n int64) {
	r.mu.Lock()
	if r.conns[c.id] == c {
		delete(r.conns, c.id)
	}
	delete(r.budgetWait, c)
	r.giveBackLocked(n)
}

// giveBack takes back n bytes of a ring.
func (r *Registry) giveBack(n int64) {
	r.mu.Lock()
	r.giveBackLocked(n)
}

// giveBackLocked takes back n bytes and wakes the streams that wait for
// them; it unlocks r.mu.
func (r *Registry) giveBackLocked(n int64) {
	r.retained -= n
	var waiters []*Conn
	if n > 0 {
		for w := range r.budgetWait {
			waiters = append(waiters, w)
		}
		clear(r.budgetWait)
	}
	r.mu.Unlock()
	for _, w := range waiters {
		signal(w.wake)
	}
}

// Retained is the bytes the streams' rings hold together.
func (r *Registry) Retained() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.retained
}

// Len is the number of streams the registry keeps (live, detached, or
// closed with bytes the peer has not consumed yet).
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// Close resets every stream and ends the registry's goroutines.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	list := r.list()
	ackSt := r.ackSt
	r.ackSt, r.cur = nil, nil
	var in []tunnel.Stream
	for st := range r.ackIn {
		in = append(in, st)
	}
	r.mu.Unlock()
	r.cancel()
	for _, c := range list {
		c.fail(fmt.Errorf("stream %016x: %w", c.id, ErrClosed))
	}
	if ackSt != nil {
		_ = ackSt.Close()
	}
	for _, st := range in {
		_ = st.Close()
	}
	r.wg.Wait()
	return nil
}
