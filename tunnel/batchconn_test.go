package tunnel

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
)

// cutConn writes only the first half of the write after `after` bytes
// went through, and fails that write with a timeout, as a TCP connection
// whose write deadline passed mid-write does.
type cutConn struct {
	net.Conn
	after int
	out   bytes.Buffer
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.after >= 0 && c.out.Len()+len(p) > c.after {
		n := len(p) / 2
		c.out.Write(p[:n])
		c.after = -1
		return n, os.ErrDeadlineExceeded
	}
	return c.out.Write(p)
}

// TestBatchConnBreaksAfterFailedWrite: once a write of batched TLS
// records is cut short, nothing more goes out on the connection, batched
// or not: bytes after a cut record would reach the peer as a corrupt TLS
// stream. Before, the next write went out behind the cut record.
func TestBatchConnBreaksAfterFailedWrite(t *testing.T) {
	c := &cutConn{after: 100}
	b := &batchConn{Conn: c}
	if _, err := b.Write(bytes.Repeat([]byte{'a'}, 50)); err != nil {
		t.Fatal(err)
	}
	err := b.batch(func() error {
		_, err := b.Write(bytes.Repeat([]byte{'b'}, 200))
		return err
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("batch: %v, want the cut write's error", err)
	}
	sent := c.out.Len()
	if _, err := b.Write([]byte("after")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("write after the cut: %v, want the cut write's error", err)
	}
	if err := b.batch(func() error { _, err := b.Write([]byte("batched after")); return err }); err == nil {
		t.Error("batch after the cut succeeded")
	}
	if c.out.Len() != sent {
		t.Errorf("%d bytes went out after the cut record", c.out.Len()-sent)
	}
}
