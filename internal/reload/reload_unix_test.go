//go:build unix

package reload

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
)

func TestWatchSignal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := Watch(ctx, "", true, slog.New(slog.DiscardHandler))
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expect(t, c, Signal, "SIGHUP")
}
