//go:build !linux

package tunnel

import "time"

// parking is a readiness wait; only Linux has one (see park_linux.go).
// Elsewhere a splice waits in Read.
type parking struct {
	conn interface{ SetReadDeadline(time.Time) error }
}

func newParking(HalfCloser) *parking { return nil }
func (*parking) wait(*pipe) bool     { return false }
func (*parking) cancel(*pipe)        {}
