// Package testenv tells tests how slow the machine they run on may be.
//
// A test waits for events, not for time; what it may not do without is a
// deadline, so that a broken build fails rather than hangs. Those
// deadlines, and the few margins a test allows around a timer of the code
// under test, go through Scale, so that one knob fits them all to a
// slower machine. Their written values already hold on a busy 2-core
// machine under the race detector; set HOMEPORT_TEST_SLOWDOWN (a factor,
// e.g. 3) where even that is not enough, such as an emulated CPU.
package testenv

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// SlowdownVar names the environment variable that multiplies every
// deadline taken through Scale.
const SlowdownVar = "HOMEPORT_TEST_SLOWDOWN"

// Slowdown is the factor from HOMEPORT_TEST_SLOWDOWN, 1 when it is unset.
// A value that is not a number of at least 1 panics, naming the variable:
// a test run must not go on with deadlines it was not given.
var Slowdown = sync.OnceValue(func() float64 {
	f, err := parseSlowdown(os.Getenv(SlowdownVar))
	if err != nil {
		panic(err)
	}
	return f
})

// parseSlowdown reads the value of HOMEPORT_TEST_SLOWDOWN; "" is 1.
func parseSlowdown(v string) (float64, error) {
	if v == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 1 && f <= 1000) {
		return 0, fmt.Errorf("%s=%q: want a factor from 1 to 1000", SlowdownVar, v)
	}
	return f, nil
}

// Scale returns d times Slowdown.
func Scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Slowdown())
}

// MinDeadline is the shortest deadline Deadline gives: on a busy machine
// a goroutine, let alone a process, may wait seconds for a core.
const MinDeadline = 10 * time.Second

// Deadline is how long to wait for something that should happen within d
// on a quiet machine: at least MinDeadline, times Slowdown. Waiting for an
// event ends as soon as it happens, so a long deadline costs time only
// when the test fails; it must never stand in for a claim about speed.
func Deadline(d time.Duration) time.Duration {
	return Scale(max(d, MinDeadline))
}
