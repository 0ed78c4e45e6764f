package ddns

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestUpdaterWake: a receive on Wake starts a round at once, and asks a
// source that is backing off after a failure.
func TestUpdaterWake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		src := &mutableSource{err: errors.New("no address yet")}
		wake := make(chan struct{}, 1)
		u := &Updater{Provider: p, Source: src, Names: []NameConfig{{Name: testName, IPv4: true}}, Wake: wake}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- u.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run() = %v", err)
			}
		})

		synctest.Wait()
		if src.numCalls() != 1 || p.numSets() != 0 {
			t.Fatalf("at start: %d source calls, %d writes", src.numCalls(), p.numSets())
		}
		// The source backs off for at least retryFloor; a wake cuts that
		// short.
		time.Sleep(time.Second)
		src.set(addrs("203.0.113.5"), nil)
		wake <- struct{}{}
		synctest.Wait()
		if src.numCalls() != 2 || p.numSets() != 1 || !u.Status()[0].Synced {
			t.Fatalf("after the wake: %d source calls, %d writes, %+v", src.numCalls(), p.numSets(), u.Status()[0])
		}

		// Without a change, a wake costs a read, not a write.
		wake <- struct{}{}
		synctest.Wait()
		if src.numCalls() != 3 || p.numSets() != 1 {
			t.Fatalf("after the second wake: %d source calls, %d writes", src.numCalls(), p.numSets())
		}
	})
}

func (s *mutableSource) numCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}
