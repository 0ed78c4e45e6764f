//go:build !windows

package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStaleAndLiveSocket(t *testing.T) {
	dir := t.TempDir()
	ep := Endpoint(dir, "relay")
	// A socket left by a process that died: bound, never closed cleanly.
	ln, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*unixListener).UnixListener.Close() // the file stays, nobody answers
	if _, err := os.Lstat(ep); err != nil {
		t.Fatal("stale socket should still be there:", err)
	}
	// A dead socket answers nothing: the client says not running.
	if err := NewClient(ep, "relay").Get(context.Background(), "/v1/status", nil); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("stale socket: got %v, want ErrNotRunning", err)
	}
	ep2 := serve(t, dir) // replaces the stale one
	if ep2 != ep {
		t.Fatal("endpoint changed")
	}
	// While it answers, a second process may not take it over.
	if ln, err := Listen(ep); err == nil {
		ln.Close()
		t.Fatal("Listen on a live socket succeeded")
	} else if !strings.Contains(err.Error(), "another process answers") {
		t.Fatalf("live socket: %v", err)
	}
	if err := NewClient(ep, "relay").Get(context.Background(), "/v1/status", nil); err != nil {
		t.Fatalf("the running one must keep answering: %v", err)
	}
	// Something else in the way.
	other := filepath.Join(dir, "agent.sock")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(other); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file in the way: %v", err)
	}
}

func TestCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	dir := t.TempDir()
	ep := Endpoint(dir, "relay")
	ln, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(ep); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	// A newer process's socket at the same path survives an older
	// listener's Close.
	old, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	old.(*unixListener).UnixListener.Close()
	newer, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	old.Close()
	if _, err := os.Lstat(ep); err != nil {
		t.Fatalf("the newer socket was removed: %v", err)
	}
}
