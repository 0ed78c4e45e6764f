package ddns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// StaticSource always returns the same addresses.
type StaticSource []netip.Addr

func (s StaticSource) Name() string { return "static" }

func (s StaticSource) Addrs(context.Context) ([]netip.Addr, error) {
	return append([]netip.Addr(nil), s...), nil
}

// FuncSource asks a function: the agent feeds the address the relay
// observes through one.
type FuncSource struct {
	Label string // for logs; "" means "func"
	F     func(ctx context.Context) ([]netip.Addr, error)
}

func (s FuncSource) Name() string {
	if s.Label == "" {
		return "func"
	}
	return s.Label
}

func (s FuncSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	if s.F == nil {
		return nil, fmt.Errorf("source %s: no function", s.Name())
	}
	addrs, err := s.F(ctx)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name(), err)
	}
	return unmapAll(addrs), nil
}

// CommandSource runs a command and reads the addresses it prints,
// separated by white space (spaces, tabs or newlines).
type CommandSource struct {
	Argv    []string      // program and arguments; not run through a shell
	Timeout time.Duration // 0: DefaultCommandTimeout
}

const (
	// DefaultCommandTimeout bounds one run of a CommandSource.
	DefaultCommandTimeout = 10 * time.Second
	// maxCommandOutput bounds what a CommandSource reads from stdout; a
	// list of addresses is far shorter.
	maxCommandOutput = 4096
	// maxCommandStderr bounds the stderr kept for the error message.
	maxCommandStderr = 512
)

// Name gives the program only: arguments may hold secrets.
func (s CommandSource) Name() string {
	if len(s.Argv) == 0 {
		return "command"
	}
	return "command " + filepath.Base(s.Argv[0])
}

func (s CommandSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	if len(s.Argv) == 0 {
		return nil, errors.New("source command: no command given")
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Argv[0], s.Argv[1:]...)
	// A child the command started may hold the pipes open after the
	// command itself was killed; stop waiting for it soon after.
	cmd.WaitDelay = time.Second
	stdout := &limitedBuffer{max: maxCommandOutput}
	stderr := &limitedBuffer{max: maxCommandStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if stdout.over {
		return nil, fmt.Errorf("source %s: output longer than %d bytes", s.Name(), maxCommandOutput)
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %v: %w", timeout, ctx.Err())
		}
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("source %s: %w (stderr: %q)", s.Name(), err, msg)
		}
		return nil, fmt.Errorf("source %s: %w", s.Name(), err)
	}
	addrs, err := parseAddrList(stdout.String())
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name(), err)
	}
	return addrs, nil
}

// parseAddrList reads addresses separated by white space; at least one.
func parseAddrList(out string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	for _, f := range strings.Fields(out) {
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("printed %q, which is not an IP address", truncate(f, 64))
		}
		addrs = append(addrs, a.Unmap())
	}
	if len(addrs) == 0 {
		return nil, errors.New("printed no address")
	}
	return addrs, nil
}

// limitedBuffer keeps the first max bytes written to it and notes whether
// more came. It never fails a write, so the command is not killed by a
// broken pipe before it reports its own error. (It must not embed
// bytes.Buffer: io.Copy would use the buffer's ReadFrom and bypass the
// limit.)
type limitedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); len(p) > room {
		b.over = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *limitedBuffer) String() string { return b.buf.String() }

// FirstOf combines sources in the configured order, per family: the IPv4
// addresses come from the first source that gives a public IPv4 address,
// the IPv6 addresses from the first that gives a public IPv6 address.
// Addresses that fail CheckPublic are passed over, so a later source can
// stand in.
//
// When a family stays empty and some source failed or gave only
// non-public addresses, Addrs returns what it found together with those
// errors joined: callers use the addresses and report the error for the
// missing family.
func FirstOf(sources ...Source) Source { return firstOf(sources) }

type firstOf []Source

func (f firstOf) Name() string {
	names := make([]string, len(f))
	for i, s := range f {
		names[i] = s.Name()
	}
	return "first of (" + strings.Join(names, ", ") + ")"
}

func (f firstOf) Addrs(ctx context.Context) ([]netip.Addr, error) {
	var v4, v6 []netip.Addr
	var errs []error
	for _, s := range f {
		if v4 != nil && v6 != nil {
			break
		}
		addrs, err := s.Addrs(ctx)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		ok, rejected := publicOnly(unmapAll(addrs))
		for _, r := range rejected {
			errs = append(errs, fmt.Errorf("source %s: %w", s.Name(), r))
		}
		var s4, s6 []netip.Addr
		for _, a := range ok {
			if a.Is4() {
				s4 = append(s4, a)
			} else {
				s6 = append(s6, a)
			}
		}
		if v4 == nil && s4 != nil {
			v4 = s4
		}
		if v6 == nil && s6 != nil {
			v6 = s6
		}
	}
	addrs := append(v4, v6...)
	if v4 != nil && v6 != nil {
		return addrs, nil
	}
	return addrs, errors.Join(errs...)
}

// unmapAll returns a copy of addrs with IPv4-mapped IPv6 addresses turned
// into IPv4 ones.
func unmapAll(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		out[i] = a.Unmap()
	}
	return out
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
