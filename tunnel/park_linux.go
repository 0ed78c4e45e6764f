package tunnel

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// parking is the readiness wait of one TCP connection that a splice reads:
// while the connection is idle, the poller watches it in place of a
// goroutine blocked in Read.
type parking struct {
	conn  *net.TCPConn
	raw   syscall.RawConn
	token uint64 // of the latest wait; guarded by idlePoller.mu
}

// newParking returns c's readiness wait, or nil if c cannot park.
func newParking(c HalfCloser) *parking {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &parking{conn: tc, raw: raw}
}

// wait parks p until its connection is readable, hung up or failed; then
// p resumes on a new goroutine. It reports false if p could not park.
func (k *parking) wait(p *pipe) bool { return idlePoller.wait(k, p) }

// cancel resumes p on a new goroutine at once if it is parked.
func (k *parking) cancel(p *pipe) { idlePoller.cancel(k, p) }

// idlePoller is the process's one epoll instance for parked connections,
// beside the runtime's own network poller (which has no way to run code
// on readiness without a goroutine waiting). It starts with the first
// parked connection and stops pollIdle after the last one woke.
var idlePoller = poller{epfd: -1, parked: map[uint64]*pipe{}}

// pollIdle is how long the poller lingers with nothing parked.
const pollIdle = time.Second

type poller struct {
	mu     sync.Mutex
	epfd   int // -1 while no goroutine polls
	next   uint64
	parked map[uint64]*pipe
}

func (pl *poller) wait(k *parking, p *pipe) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.epfd < 0 {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return false
		}
		pl.epfd = fd
		go pl.loop(fd)
	}
	pl.next++
	tok := pl.next
	// One-shot: a connection reported ready is not reported again until
	// it parks again. Level-triggered: data that came before it parked
	// counts.
	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(tok)),
		Pad:    int32(uint32(tok >> 32)),
	}
	var cerr error
	err := k.raw.Control(func(fd uintptr) {
		// A connection that parked before stays registered, disarmed.
		cerr = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if errors.Is(cerr, syscall.ENOENT) {
			cerr = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err != nil || cerr != nil {
		return false // closed meanwhile, or the kernel refused
	}
	k.token = tok
	pl.parked[tok] = p
	return true
}

func (pl *poller) cancel(k *parking, p *pipe) {
	pl.mu.Lock()
	q, ok := pl.parked[k.token]
	ok = ok && q == p
	if ok {
		delete(pl.parked, k.token)
	}
	pl.mu.Unlock()
	if ok {
		go p.resume()
	}
}

// loop waits for parked connections on epfd and resumes each that is
// ready. It closes epfd and returns once nothing has been parked for
// pollIdle.
func (pl *poller) loop(epfd int) {
	events := make([]syscall.EpollEvent, 128)
	var ready []*pipe
	for {
		n, err := syscall.EpollWait(epfd, events, int(pollIdle/time.Millisecond))
		ready = ready[:0]
		pl.mu.Lock()
		if err != nil && !errors.Is(err, syscall.EINTR) {
			// Not expected of a valid epfd: wake everyone, who will park
			// with a new poller.
			for tok, p := range pl.parked {
				delete(pl.parked, tok)
				ready = append(ready, p)
			}
			syscall.Close(epfd)
			pl.epfd = -1
			pl.mu.Unlock()
			for _, p := range ready {
				go p.resume()
			}
			return
		}
		n = max(n, 0)
		for _, ev := range events[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if p, ok := pl.parked[tok]; ok {
				delete(pl.parked, tok)
				ready = append(ready, p)
			}
		}
		if n == 0 && len(pl.parked) == 0 {
			syscall.Close(epfd)
			pl.epfd = -1
			pl.mu.Unlock()
			return
		}
		pl.mu.Unlock()
		for _, p := range ready {
			go p.resume()
		}
	}
}
