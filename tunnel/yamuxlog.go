package tunnel

import (
	"context"
	"log/slog"
	"strings"
)

// yamuxLog routes yamux's own log lines ("[ERR] yamux: keepalive failed:
// ...") into the structured log, instead of discarding them: they say why
// a session ended. yamux writes one line per Printf, and none for a link
// that either side closed cleanly. Its [ERR] lines are warnings here, but
// for those that a link's end brings anyway (a reset, a closed socket),
// which are debug lines, as its [WARN] lines are (frames for streams
// already reset, and the like).
type yamuxLog struct{ log *slog.Logger }

func (w yamuxLog) Write(p []byte) (int, error) {
	if w.log == nil {
		return len(p), nil
	}
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	if rest, ok := strings.CutPrefix(line, "[ERR] "); ok {
		line = rest
		if !routineEnd(line) {
			level = slog.LevelWarn
		}
	} else if rest, ok := strings.CutPrefix(line, "[WARN] "); ok {
		line = rest
	}
	line = strings.TrimPrefix(line, "yamux: ")
	w.log.Log(context.Background(), level, "yamux: "+line, "component", "yamux")
	return len(p), nil
}

// routineEnd reports whether a yamux error line is what any session's end
// brings: the link closed by either side.
func routineEnd(line string) bool {
	for _, s := range []string{": EOF", "use of closed network connection", "connection reset by peer", "broken pipe"} {
		if strings.HasSuffix(line, s) || strings.Contains(line, s) {
			return true
		}
	}
	return false
}
