package reload

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

func expect(t *testing.T, c <-chan Trigger, want Trigger, what string) {
	t.Helper()
	select {
	case got := <-c:
		if got != want {
			t.Fatalf("%s: got %q, want %q", what, got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no trigger", what)
	}
}

// expectNone checks that no trigger comes within several settle times:
// the only way to see that something does not happen.
func expectNone(t *testing.T, c <-chan Trigger, what string) {
	t.Helper()
	select {
	case got := <-c:
		t.Fatalf("%s: unexpected trigger %q", what, got)
	case <-time.After(5 * Settle):
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWatchFile(t *testing.T) {
	leak.Check(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	write(t, file, "listen: :7000\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := Watch(ctx, file, false, slog.New(slog.DiscardHandler))

	write(t, file, "listen: :7001\n")
	expect(t, c, File, "written in place")

	// An editor's save: a new file renamed over the old one.
	tmp := filepath.Join(dir, ".relay.yaml.swp")
	write(t, tmp, "listen: :7002\n")
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	expect(t, c, File, "renamed over")

	// The same content again, or another file in the directory: nothing.
	write(t, file, "listen: :7002\n")
	write(t, filepath.Join(dir, "other.yaml"), "x: 1\n")
	expectNone(t, c, "same content")

	// Many writes in a row give one trigger with the last content.
	for i := range 5 {
		write(t, file, "listen: :710"+string(rune('0'+i))+"\n")
	}
	expect(t, c, File, "a burst of writes")
	expectNone(t, c, "after the burst")
	cancel()
}

// TestWatchConfigMap: a Kubernetes ConfigMap volume changes by swapping
// the ..data symbolic link to a new directory.
func TestWatchConfigMap(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "relay.yaml"), content)
	}
	mk("..2026_01", "listen: :7000\n")
	if err := os.Symlink("..2026_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "relay.yaml")
	if err := os.Symlink(filepath.Join("..data", "relay.yaml"), file); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := Watch(ctx, file, false, slog.New(slog.DiscardHandler))

	mk("..2026_02", "listen: :7001\n")
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..2026_02", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expect(t, c, File, "ConfigMap swap")
}

// TestMain starts os/signal's own goroutine, which lives as long as the
// process, before any leak check counts goroutines.
func TestMain(m *testing.M) {
	_, stop := notifyHUP()
	stop()
	os.Exit(m.Run())
}
