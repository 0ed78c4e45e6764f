package resume

// ring keeps the bytes of a stream from offset lo (the first the peer has
// not acknowledged) to hi (the next to be written), at buf[off%len(buf)].
// Offsets are the stream's own, counted from its start, so that they mean
// the same on every underlying stream. The ring grows by doubling; its
// owner bounds it and holds the lock.
type ring struct {
	buf []byte
}

// free is the room for more bytes after [lo, hi).
func (r *ring) free(lo, hi uint64) int { return len(r.buf) - int(hi-lo) }

// put copies p at offset hi; the caller checked that it fits.
func (r *ring) put(hi uint64, p []byte) {
	i := int(hi % uint64(len(r.buf)))
	n := copy(r.buf[i:], p)
	copy(r.buf, p[n:])
}

// slices returns [from, to) as at most two runs of buf.
func (r *ring) slices(from, to uint64) (a, b []byte) {
	if from == to {
		return nil, nil
	}
	size := uint64(len(r.buf))
	i, j := int(from%size), int(to%size)
	if i < j {
		return r.buf[i:j], nil
	}
	return r.buf[i:], r.buf[:j]
}

// grow moves [lo, hi) into a new buffer of size n (> len(buf)).
func (r *ring) grow(lo, hi uint64, n int) {
	var a, b []byte
	if len(r.buf) > 0 {
		a, b = r.slices(lo, hi)
	}
	r.buf = make([]byte, n)
	r.put(lo, a)
	r.put(lo+uint64(len(a)), b)
}
