package resume

import (
	"bytes"
	"fmt"
	"sync"
)

// String is a Conn's state, for a test that fails.
func (c *Conn) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("id=%016x opener=%v attached=%v gen=%d end=%v acked=%d sent=%d wire=%d fin=%v/%v/%v reply=%v consumed=%d rEOF=%v ackSent=%d ackQueued=%v resuming=%v ring=%d",
		c.id, c.opener, c.st != nil, c.gen, c.end, c.acked, c.sent, c.wire, c.finSet, c.finOnWire, c.finAcked, c.reply, c.consumed, c.rEOF, c.ackSent, c.ackQueued, c.resuming, len(c.ring.buf))
}

// syncBuf is a log's buffer, written from several goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
