package main

import (
	"math"
	"testing"
	"time"
)

func durations(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Microsecond
	}
	return s
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		n    int
		p    float64
		want time.Duration
	}{
		{0, 50, 0},
		{1, 50, 1 * time.Microsecond},
		{1, 99.9, 1 * time.Microsecond},
		{10, 50, 5 * time.Microsecond},
		{10, 99, 10 * time.Microsecond},
		{100, 99, 99 * time.Microsecond},
		{1000, 99.9, 999 * time.Microsecond},
		{1000, 100, 1000 * time.Microsecond},
		{2000, 99.9, 1998 * time.Microsecond},
		{3, 0.1, 1 * time.Microsecond},
	}
	for _, tt := range tests {
		if got := percentile(durations(tt.n), tt.p); got != tt.want {
			t.Errorf("percentile(1..%d µs, %g) = %v, want %v", tt.n, tt.p, got, tt.want)
		}
	}
}

func TestMedian(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median(3,1,2) = %g", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(4,1,3,2) = %g", got)
	}
	in := []float64{5, 1}
	median(in)
	if in[0] != 5 {
		t.Error("median changed its argument")
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median() = %g, want NaN", got)
	}
}

func TestSummarize(t *testing.T) {
	s := durations(1000)
	s[0], s[999] = s[999], s[0] // unsorted
	l := summarize(s)
	if l.p50 != 500*time.Microsecond || l.p99 != 990*time.Microsecond || l.p999 != 999*time.Microsecond || l.n != 1000 {
		t.Errorf("summarize = %+v", l)
	}
}
