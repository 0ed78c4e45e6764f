package acme

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestZapToSlog: certmagic's Info is our Debug, its warnings and errors
// keep their level, and fields (With's first, then the call's) come
// through with their values.
func TestZapToSlog(t *testing.T) {
	for _, tc := range []struct {
		name  string
		level slog.Level
		want  []string
	}{
		{name: "quiet at info", level: slog.LevelInfo, want: []string{
			`level=WARN msg="storage slow" issuer=pebble took=2s certmagic=maint`,
			`level=ERROR msg="could not get certificate" issuer=pebble identifier=a.test error=boom attempt=3 certmagic=maint`,
		}},
		{name: "everything at debug", level: slog.LevelDebug, want: []string{
			`level=DEBUG msg="acquiring lock" issuer=pebble identifier=a.test certmagic=maint`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			z := zapToSlog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
				Level:       tc.level,
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { return dropTime(a) },
			}))).Named("maint").With(zap.String("issuer", "pebble"))
			z.Info("acquiring lock", zap.String("identifier", "a.test"))
			z.Warn("storage slow", zap.Duration("took", 2e9))
			z.Error("could not get certificate", zap.String("identifier", "a.test"), zap.Error(errors.New("boom")), zap.Int("attempt", 3))
			out := buf.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("log lacks %q:\n%s", w, out)
				}
			}
			if tc.level == slog.LevelInfo && strings.Contains(out, "acquiring lock") {
				t.Errorf("certmagic's info shows at info:\n%s", out)
			}
		})
	}
}

func dropTime(a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
