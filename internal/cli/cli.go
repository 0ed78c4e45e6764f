// Package cli holds what the relay and agent commands share: the process
// logger, the version string and the profiler server.
package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/homeport/homeport/config"
)

// version is set at link time: -ldflags "-X github.com/homeport/homeport/internal/cli.version=v1.2.3".
var version string

// Version is the build's version: the link-time value, else the module
// version, else "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// NewLogger returns a slog logger writing to w at level in format ("text"
// or "json").
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	l, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	return newLogger(w, l, format)
}

// ParseLevel reads a log level: debug, info, warn or error.
func ParseLevel(level string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	return l, nil
}

func newLogger(w io.Writer, level slog.Leveler, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// OpenLog returns the process logger described by c: to c.File when set
// (appended, created 0600), else to stderr. The caller closes the closer
// when the process ends.
func OpenLog(stderr io.Writer, c config.Log) (*slog.Logger, io.Closer, error) {
	log, _, closer, err := OpenLogLevel(stderr, c)
	return log, closer, err
}

// OpenLogLevel is OpenLog whose level can be changed while the process
// runs, through the returned LevelVar (a configuration reload).
func OpenLogLevel(stderr io.Writer, c config.Log) (*slog.Logger, *slog.LevelVar, io.Closer, error) {
	l, err := ParseLevel(c.Level)
	if err != nil {
		return nil, nil, nil, err
	}
	level := new(slog.LevelVar)
	level.Set(l)
	w, closer := stderr, io.Closer(nopCloser{})
	if c.File != "" {
		f, err := os.OpenFile(c.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("log file: %w", err)
		}
		w, closer = f, f
	}
	log, err := newLogger(w, level, c.Format)
	if err != nil {
		closer.Close()
		return nil, nil, nil, err
	}
	return log, level, closer, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// LogWarnings logs each of the configuration's warnings at Warn.
func LogWarnings(log *slog.Logger, ws []config.Warning) {
	for _, w := range ws {
		log.Warn(w.Msg, "setting", w.Setting, "file", w.File, "fix", w.Fix)
	}
}
