package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

type answer struct {
	Agents int    `json:"agents"`
	Echo   string `json:"echo,omitempty"`
}

func testHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, answer{Agents: 3})
	})
	mux.HandleFunc("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		var in answer
		b, _ := io.ReadAll(r.Body)
		if len(b) == 0 {
			WriteJSON(w, http.StatusBadRequest, Problem{Error: "empty body"})
			return
		}
		in.Echo = string(b)
		WriteJSON(w, http.StatusOK, in)
	})
	return mux
}

// serve starts a control server in dir and returns its endpoint.
func serve(t *testing.T, dir string) string {
	t.Helper()
	ep := Endpoint(dir, "relay")
	ln, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, testHandler(), slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ep
}

func TestStatusAndErrors(t *testing.T) {
	leak.Check(t)
	dir := t.TempDir()
	ep := serve(t, dir)
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(ep)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Fatalf("socket mode %o, want 600", m)
		}
	}
	c := NewClient(ep, "relay")
	ctx := context.Background()
	var a answer
	if err := c.Get(ctx, "/v1/status", &a); err != nil {
		t.Fatal(err)
	}
	if a.Agents != 3 {
		t.Fatalf("got %+v", a)
	}
	if err := c.Post(ctx, "/v1/echo", "hi", &a); err != nil || a.Echo != `"hi"` {
		t.Fatalf("echo: %+v %v", a, err)
	}
	err := c.Post(ctx, "/v1/echo", nil, nil)
	if err == nil || err.Error() != "empty body" {
		t.Fatalf("problem answer: %v", err)
	}
	if err := c.Get(ctx, "/v1/nothing", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown route: %v", err)
	}
}

func TestNotRunning(t *testing.T) {
	dir := t.TempDir()
	c := NewClient(Endpoint(dir, "agent"), "agent")
	err := c.Get(context.Background(), "/v1/status", nil)
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("got %v, want ErrNotRunning", err)
	}
	if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "the agent is not running") {
		t.Fatalf("want one line saying the agent is not running, got %q", err)
	}
}

// TestOtherUserRefused runs a client as user nobody: the socket's mode
// keeps it out, and when the mode is loosened by hand the peer check still
// does.
func TestOtherUserRefused(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("needs root on Linux to run a client as another user")
	}
	if os.Getenv(childEnv) != "" {
		t.Skip("child")
	}
	// Traversable by all, so that the socket's own mode is what is tested.
	dir := openDir(t)
	ep := serve(t, dir)
	bin := copyTestBinary(t)

	out := runAsNobody(t, bin, ep)
	t.Logf("mode 0600: %s", out)
	if !strings.Contains(out, "denied") {
		t.Fatalf("mode 0600: client as nobody got %q, want permission denied", out)
	}
	if err := os.Chmod(ep, 0o666); err != nil {
		t.Fatal(err)
	}
	out = runAsNobody(t, bin, ep)
	t.Logf("mode 0666: %s", out)
	if !strings.HasPrefix(out, "error:") {
		t.Fatalf("mode 0666: client as nobody got %q, want a refused connection", out)
	}
}

const childEnv = "HOMEPORT_CONTROL_TEST_CHILD"

// TestMain runs as the client child when asked.
func TestMain(m *testing.M) {
	if ep := os.Getenv(childEnv); ep != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var a answer
		if err := NewClient(ep, "relay").Get(ctx, "/v1/status", &a); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
		} else {
			os.Stdout.WriteString("ok\n")
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
