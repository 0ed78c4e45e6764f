package relay

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/homeport/homeport/config"
)

// TestGeneratedVisitorKey: with nothing configured, the relay generates a
// visitor key for the generated token beside it (mode 0600) and reuses it;
// with a token configured it generates none.
func TestGeneratedVisitorKey(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Relay{DataDir: dir}
	id, err := LoadIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, VisitorKeyFile)
	if len(id.Visitors) != 1 || id.Visitors[0].Name != "default" || id.Visitors[0].Token != "default" || id.Visitors[0].File != path {
		t.Fatalf("visitor keys %v, want one named default in %s", id.Visitors, path)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want mode 0600", path, st, err)
	}
	if id.Visitors[0].Secret == id.Tokens[0].Secret || len(id.Visitors[0].Secret) < config.MinSecretLen {
		t.Fatal("the generated visitor key is the token, or short")
	}
	again, err := LoadIdentity(cfg)
	if err != nil || again.Visitors[0].Secret != id.Visitors[0].Secret {
		t.Fatalf("a second start: %v, key kept %v", err, err == nil && again.Visitors[0].Secret == id.Visitors[0].Secret)
	}
	if _, err := newLiveConfig(cfg, id); err != nil {
		t.Fatal(err)
	}

	other := t.TempDir()
	id, err = LoadIdentity(config.Relay{DataDir: other, Tokens: []config.Token{{Name: "alice", Secret: "alice-token-0123456789"}}})
	if err != nil || len(id.Visitors) != 0 {
		t.Fatalf("with a token configured: %v, visitor keys %v", err, id.Visitors)
	}
	if _, err := os.Stat(filepath.Join(other, VisitorKeyFile)); err == nil {
		t.Fatal("a visitor key was generated beside a configured token")
	}
}
