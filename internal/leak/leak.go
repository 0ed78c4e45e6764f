// Package leak checks that a test leaves no goroutine and no file
// descriptor behind.
package leak

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// settle is how long Check waits for goroutines and descriptors to wind
// down after the test's own cleanups ran.
const settle = 10 * time.Second

// Check records the goroutines and open descriptors now and, when the test
// ends (after every cleanup registered later), fails it if there are more.
// Call it first in a test; it cannot be used with t.Parallel.
func Check(t testing.TB) {
	t.Helper()
	g0, fd0 := runtime.NumGoroutine(), OpenFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(settle)
		for {
			g, fd := runtime.NumGoroutine(), OpenFDs()
			if g <= g0 && fd <= fd0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: %d goroutines (was %d), %d descriptors (was %d)\n%s", g, g0, fd, fd0, filter(string(buf)))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// OpenFDs counts this process's open file descriptors (-1 where /proc is
// missing, which turns the descriptor check off). Pipes are not counted:
// the runtime caches pipe pairs for splice(2) in a pool that only the
// garbage collector empties.
func OpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			continue
		}
		n++
	}
	return n
}

// filter drops the testing framework's own goroutines from a dump.
func filter(dump string) string {
	var keep []string
	for _, g := range strings.Split(dump, "\n\n") {
		if strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "testing.tRunner.func") || strings.Contains(g, "testing.runTests") {
			continue
		}
		keep = append(keep, g)
	}
	return strings.Join(keep, "\n\n")
}
