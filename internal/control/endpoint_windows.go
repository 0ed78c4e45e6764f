package control

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/Microsoft/go-winio"
	"golang.org/x/sys/windows"
)

// pipeSDDL lets only Administrators (BA) and SYSTEM (SY) open the pipe,
// with no inherited entries.
const pipeSDDL = "D:P(A;;GA;;;BA)(A;;GA;;;SY)"

// Endpoint is the named pipe of the process of role ("relay" or "agent")
// keeping its files in dataDir: one name per data directory, so that two
// agents with their own directories do not collide.
func Endpoint(dataDir, role string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(strings.ToLower(abs)))
	return `\\.\pipe\homeport-` + role + "-" + hex.EncodeToString(sum[:6])
}

// Listen opens the named pipe, restricted to Administrators and SYSTEM.
func Listen(path string) (net.Listener, error) {
	ln, err := winio.ListenPipe(path, &winio.PipeConfig{SecurityDescriptor: pipeSDDL})
	if errors.Is(err, windows.ERROR_ACCESS_DENIED) || errors.Is(err, windows.ERROR_PIPE_BUSY) {
		return nil, fmt.Errorf("control pipe %s: %w: another process holds it (is one already running with this data directory?)", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("control pipe %s: %w", path, err)
	}
	return ln, nil
}

func dial(ctx context.Context, path string) (net.Conn, error) {
	c, err := winio.DialPipeContext(ctx, path)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, windows.ERROR_FILE_NOT_FOUND):
		return nil, fmt.Errorf("%w: %w", ErrNotRunning, err)
	case errors.Is(err, windows.ERROR_ACCESS_DENIED):
		return nil, fmt.Errorf("%w: %w", ErrDenied, err)
	}
	return nil, err
}
