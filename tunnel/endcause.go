package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// EndCode names why a session ended, in words that stay the same from one
// version to the next: logs and metrics use them.
type EndCode string

// Why a session ended, as the transport saw it. The relay and the agent
// know more (a GoAway, a newer session, a shutdown) and say so with their
// own words.
const (
	// EndClosed: this end closed the session (Close).
	EndClosed EndCode = "closed"
	// EndPeerClosed: the peer closed the session cleanly (TCP: the link's
	// end between two frames; QUIC: a close with code 0).
	EndPeerClosed EndCode = "peer_closed"
	// EndKeepAliveTimeout: nothing was heard from the peer for the idle
	// timeout (keepalive plus keepalive timeout).
	EndKeepAliveTimeout EndCode = "keepalive_timeout"
	// EndProtocolError: a peer broke the protocol, or said this end did.
	EndProtocolError EndCode = "protocol_error"
	// EndReadError, EndWriteError: the link failed (a reset, a timeout
	// of the system's own).
	EndReadError  EndCode = "read_error"
	EndWriteError EndCode = "write_error"
	// EndStatelessReset: the peer no longer knows the QUIC connection (it
	// restarted).
	EndStatelessReset EndCode = "stateless_reset"
	// EndMuxError: yamux ended the session on its own: a stream open that
	// the peer did not acknowledge within 30 s, or a frame it refused
	// (its log, at Warn, says which).
	EndMuxError EndCode = "mux_error"
)

// EndCause is why a session ended; see Session.EndCause.
type EndCause struct {
	Code EndCode
	// Err is what ended the session: nil for a Close of this end.
	Err error
	// Errno is the system's error under a read or write error (ECONNRESET,
	// ETIMEDOUT, ...); 0 if there is none.
	Errno syscall.Errno
	// Silent is, for a keepalive timeout, how long nothing was heard.
	Silent time.Duration
	// RTT is the last round trip the session measured; 0 if none.
	RTT time.Duration
	// Streams is the number of streams open when the session ended.
	Streams int
}

// String puts the cause in words.
func (c EndCause) String() string {
	switch c.Code {
	case EndClosed:
		return "closed by this end"
	case EndPeerClosed:
		return "closed by the peer"
	case EndKeepAliveTimeout:
		s := "keepalive timeout: nothing heard from the peer for the idle timeout"
		if c.Silent > 0 {
			s = fmt.Sprintf("keepalive timeout: nothing heard from the peer for %v", c.Silent.Round(time.Millisecond))
		}
		if c.RTT > 0 {
			s += fmt.Sprintf(" (last round trip %v)", c.RTT.Round(time.Millisecond))
		}
		return s
	case EndStatelessReset:
		return "the peer no longer knows the connection (stateless reset: it restarted)"
	}
	words := map[EndCode]string{
		EndProtocolError: "protocol error",
		EndReadError:     "read error",
		EndWriteError:    "write error",
		EndMuxError:      "ended by the multiplexer",
	}[c.Code]
	if words == "" {
		words = string(c.Code)
	}
	if c.Err != nil {
		words += ": " + c.Err.Error()
	}
	return words
}

// EndLog is what the one log line of a session's end says after its
// message: the cause as a code and in words (the caller's own, when it
// knows more than the link, or else the link's), the session's age, the
// streams it cut (of all open, but the control streams), and what the
// link knew besides: its own cause (when the caller's differs), the
// system's error number, the last round trip.
func EndLog(code, words string, age time.Duration, link EndCause, control int) []any {
	if code == "" {
		code, words = string(link.Code), link.String()
	}
	attrs := []any{"cause", code, "reason", words, "age", age.Round(time.Millisecond),
		"streams_cut", max(link.Streams-control, 0)}
	if code != string(link.Code) {
		attrs = append(attrs, "link", link.String())
	}
	if link.Errno != 0 {
		attrs = append(attrs, "errno", ErrnoName(link.Errno))
	}
	if link.RTT > 0 {
		attrs = append(attrs, "last_rtt", link.RTT.Round(time.Microsecond))
	}
	return attrs
}

// Errors that the transports here end a session with.
var (
	// errLocalClose: Close was called on this end.
	errLocalClose = errors.New("closed by this end")
	// errMuxClosed: yamux closed the link on its own.
	errMuxClosed = errors.New("yamux closed the session")
)

// linkError is a read or write on a session's link that failed.
type linkError struct {
	op  string // read or write
	err error
}

func (e *linkError) Error() string { return e.err.Error() } // the error says read or write
func (e *linkError) Unwrap() error { return e.err }

// keepAliveError: nothing was heard from the peer for too long.
type keepAliveError struct {
	silent time.Duration
}

func (e *keepAliveError) Error() string {
	return fmt.Sprintf("nothing heard from the peer for %v", e.silent.Round(time.Millisecond))
}
func (e *keepAliveError) Unwrap() error { return yamux.ErrKeepAliveTimeout }

// peerGoAway is a yamux go-away frame the peer sent with an error code.
type peerGoAway struct{ code uint32 }

func (e *peerGoAway) Error() string {
	switch e.code {
	case 1:
		return "the peer's yamux reported a protocol error (go-away)"
	case 2:
		return "the peer's yamux reported an internal error (go-away)"
	}
	return fmt.Sprintf("the peer's yamux sent go-away code %d", e.code)
}

// classifyEnd is the one place that tells why a session ended, from the
// error it ended with, for both transports: yamux's errors and those of
// the link under it, and quic-go's.
func classifyEnd(err error) EndCause {
	c := EndCause{Err: err}
	var (
		le   *linkError
		ka   *keepAliveError
		ga   *peerGoAway
		idle *quic.IdleTimeoutError
		sr   *quic.StatelessResetError
		ae   *quic.ApplicationError
		te   *quic.TransportError
		hs   *quic.HandshakeTimeoutError
	)
	switch {
	case err == nil || errors.Is(err, errLocalClose):
		c.Code, c.Err = EndClosed, nil
	case errors.As(err, &ka):
		c.Code, c.Silent = EndKeepAliveTimeout, ka.silent
	case errors.Is(err, yamux.ErrKeepAliveTimeout), errors.Is(err, yamux.ErrConnectionWriteTimeout), errors.As(err, &idle):
		c.Code = EndKeepAliveTimeout
	case errors.As(err, &ga), errors.Is(err, ErrMalformed), errors.Is(err, yamux.ErrInvalidVersion),
		errors.Is(err, yamux.ErrInvalidMsgType), errors.Is(err, yamux.ErrDuplicateStream),
		errors.Is(err, yamux.ErrRecvWindowExceeded), errors.Is(err, yamux.ErrUnexpectedFlag):
		c.Code = EndProtocolError
	case errors.Is(err, errMuxClosed):
		c.Code = EndMuxError
	case errors.As(err, &sr):
		c.Code = EndStatelessReset
	case errors.As(err, &ae):
		switch {
		case ae.ErrorCode == quicCodeClosed && ae.Remote:
			c.Code = EndPeerClosed
		case ae.ErrorCode == quicCodeClosed:
			c.Code, c.Err = EndClosed, nil
		default:
			c.Code = EndProtocolError
		}
	case errors.As(err, &hs):
		c.Code = EndKeepAliveTimeout
	case errors.As(err, &te):
		if te.ErrorCode == quic.NoError && te.Remote {
			c.Code = EndPeerClosed
		} else {
			c.Code = EndProtocolError
		}
	case errors.As(err, &le):
		c.Code = EndReadError
		if le.op == "write" {
			c.Code = EndWriteError
		}
		// The link's clean end between two frames: the peer closed it.
		if le.op == "read" && errors.Is(err, io.EOF) {
			c.Code = EndPeerClosed
		}
		errors.As(err, &c.Errno)
	default:
		c.Code = EndReadError
		errors.As(err, &c.Errno)
	}
	return c
}

// endRecord keeps the first reason a session ended for; later ones (the
// reads that fail once the link is closed) are what the first brought.
type endRecord struct {
	mu      sync.Mutex
	err     error
	set     bool
	streams func() int // open streams, read when the reason is noted
	n       int
}

// note records err as the reason the session ended, if none was yet; it
// reports whether it did.
func (r *endRecord) note(err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.set {
		return false
	}
	r.set, r.err = true, err
	if r.streams != nil {
		r.n = r.streams()
	}
	return true
}

// get returns the streams open when the reason was noted, and the reason.
func (r *endRecord) get() (streams int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n, r.err
}

// noteLink records a failed read or write on the link. A link closed
// here fails its reads with net.ErrClosed: that is not a reason of its
// own, and whoever closed it noted why first.
func (r *endRecord) noteLink(op string, err error) {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return
	}
	r.note(&linkError{op: op, err: err})
}
