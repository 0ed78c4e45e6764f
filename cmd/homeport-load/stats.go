package main

import (
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest sample that at least p percent of
// the samples do not exceed. It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// The epsilon keeps 99.9% of 1000 at rank 999: 99.9 has no exact
	// binary form, and the product comes out a hair above 999.
	rank := int(math.Ceil(p/100*float64(n) - 1e-9))
	return sorted[min(max(rank, 1), n)-1]
}

// median returns the median of xs (the mean of the middle two for an even
// count), or NaN for none. xs is not changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// latency summarises one latency run.
type latency struct {
	p50, p99, p999 time.Duration
	n              int
}

func summarize(samples []time.Duration) latency {
	slices.Sort(samples)
	return latency{
		p50:  percentile(samples, 50),
		p99:  percentile(samples, 99),
		p999: percentile(samples, 99.9),
		n:    len(samples),
	}
}

// micros is d in microseconds.
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
