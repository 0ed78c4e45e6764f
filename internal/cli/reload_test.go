package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"testing"
)

func TestSplitErrors(t *testing.T) {
	inner := errors.New("cause")
	for _, c := range []struct {
		name string
		err  error
		want []string
	}{
		{"one", errors.New("a"), []string{"a"}},
		{"joined", errors.Join(errors.New("a"), errors.New("b")), []string{"a", "b"}},
		{"nested joins", errors.Join(errors.New("a"), errors.Join(errors.New("b"), errors.New("c"))), []string{"a", "b", "c"}},
		{"a wrapped join stays one mistake per line", fmt.Errorf("x: %w", errors.Join(inner, inner)), []string{"x: cause", "cause"}},
		{"blank lines go", errors.New("a\n\n  b  "), []string{"a", "b"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := SplitErrors(c.err); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestReloaderState: a refusal is kept until the next success, which
// counts.
func TestReloaderState(t *testing.T) {
	fail := true
	r := NewReloader("f.yaml", slog.New(slog.DiscardHandler), func() (int, []any, error) {
		if fail {
			return 0, nil, errors.Join(errors.New("a: bad"), errors.New("b: bad"))
		}
		return 7, []any{"changed", "a"}, nil
	})
	first, _, _, _ := r.State()
	if _, m := r.Reload("test"); !reflect.DeepEqual(m, []string{"a: bad", "b: bad"}) {
		t.Fatalf("mistakes: %q", m)
	}
	loaded, n, lastErr, lastFail := r.State()
	if !loaded.Equal(first) || n != 0 || lastErr != "a: bad; b: bad" || lastFail.IsZero() {
		t.Fatalf("after a refusal: %v %d %q %v", loaded, n, lastErr, lastFail)
	}
	fail = false
	if ch, m := r.Reload("test"); ch != 7 || m != nil {
		t.Fatalf("reload: %d %q", ch, m)
	}
	if _, n, lastErr, _ := r.State(); n != 1 || lastErr != "a: bad; b: bad" {
		t.Fatalf("after a success: %d %q (the last refusal stays for the status)", n, lastErr)
	}
}
