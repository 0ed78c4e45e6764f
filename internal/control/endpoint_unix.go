//go:build !windows

package control

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// Endpoint is where the process of role ("relay" or "agent") keeping its
// files in dataDir listens: a Unix socket in dataDir.
func Endpoint(dataDir, role string) string {
	return filepath.Join(dataDir, role+".sock")
}

// Listen opens the control socket at path with mode 0600. The socket is
// made under a temporary name, restricted, and then renamed into place, so
// no other user can connect in between. A socket left behind by a process
// that died is replaced; one that answers means another process runs with
// the same data directory, which is an error.
func Listen(path string) (net.Listener, error) {
	if len(path) > 100 {
		// sun_path holds 104 to 108 bytes, with the temporary suffix.
		return nil, fmt.Errorf("control socket %s: path too long for a Unix socket (%d bytes); use a shorter data directory", path, len(path))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: %w: another process answers on it (is one already running with this data directory?)", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: remove the stale one: %w", path, err)
		}
	}
	tmp := path + "." + strconv.Itoa(os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &unixListener{UnixListener: ul, path: path}, nil
}

// unixListener removes its socket file on Close, unless another process
// has put its own in its place meanwhile, and accepts only connections
// from this process's user or root where the system can tell.
type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *unixListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if peerAllowed(c) {
			return c, nil
		}
		c.Close()
	}
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		// Ours no longer answers; if the socket there does, a newer
		// process has put its own in place (comparing inodes is not
		// enough: a removed socket's inode number is soon reused).
		if c, err := net.Dial("unix", l.path); err == nil {
			c.Close()
			return
		}
		os.Remove(l.path)
	})
	return err
}

func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOTDIR):
		return nil, fmt.Errorf("%w: %w", ErrNotRunning, err)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: %w", ErrDenied, err)
	}
	return nil, err
}
