package e2e

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// TestBinaryPrivate: the whole story with the real binaries. The
// visitor starts before the home agent and waits; the relay listens on
// nothing but its agent port (its sockets, read from /proc, prove it);
// 64 MiB go each way through the private tunnel with equal sha256; an
// unknown tunnel and a wrong key are clear errors that end the visitor;
// and a reload that revokes the visitor's key cuts a running transfer.
func TestBinaryPrivate(t *testing.T) {
	leak.Check(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "relay.yaml")
	writeRelayConfig := func(withLaptop bool) {
		body := "tokens:\n  - name: default\n    secret: \"" + testToken + "\"\nvisitor_keys:\n  - name: phone\n    secret: \"" + phoneKey + "\"\n"
		if withLaptop {
			body += "  - name: laptop\n    secret: \"" + laptopKey + "\"\n    tunnels: [rdp]\n"
		}
		if err := os.WriteFile(cfgFile, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeRelayConfig(true)
	r, port, fp := binStartRelayConfig(t, cfgFile, filepath.Join(dir, "data"))
	keyFile := filepath.Join(dir, "visitor.key")
	if err := os.WriteFile(keyFile, []byte(laptopKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	visit := func(tunnel, listen string, extra ...string) *binProc {
		args := append([]string{"visit", tunnel, "--relay", publicAddr(port), "--fingerprint", fp, "--key-file", keyFile,
			"--listen", listen, "--id", "laptop"}, extra...)
		return binStart(t, "agent", args...)
	}

	// The visitor first: the home agent is not there yet.
	listen := freeListen(t)
	v := visit("rdp", listen)
	v.await(20*time.Second, "the visitor waiting for the home agent", func() bool {
		return contains(v.stderr.String(), "tunnel rdp", "home agent is not connected")
	})
	target := serve(t, echo)
	suggested := freePort(t)
	home := binStart(t, "agent", "--relay", publicAddr(port), "--token", testToken, "--fingerprint", fp,
		"--tunnel", fmt.Sprintf("rdp=private:%d:%s", suggested, target))
	binAwaitTunnels(home, 1, 15*time.Second)
	v.await(60*time.Second, "the visitor ready once the home agent is", func() bool {
		return strings.Contains(v.stderr.String(), "tunnel rdp ready: connect to "+listen)
	})

	// No public port: the relay's listening sockets are its agent port's
	// (TCP, and UDP for QUIC), nothing else.
	tcp, udp := listeningPorts(t, r.cmd.Process.Pid)
	if !slices.Equal(tcp, []int{int(port)}) || !slices.Equal(udp, []int{int(port)}) {
		t.Fatalf("the relay listens on TCP %v and UDP %v; want only the agent port %d", tcp, udp, port)
	}
	if binRefused(publicAddr(suggested)) == false {
		t.Fatalf("something answers on %d, the private tunnel's suggested port", suggested)
	}

	// 64 MiB each way, half-close carried.
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	c := dial(t, listen)
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		if _, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), h)); err != nil {
			t.Error(err)
		}
		c.CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	start := time.Now()
	if n, err := io.Copy(h, c); err != nil || n != size || [32]byte(h.Sum(nil)) != <-sent {
		t.Fatalf("got %d of %d bytes back (%v), or a different sha256", n, size, err)
	}
	t.Logf("%d MiB each way through the private tunnel in %v", size>>20, time.Since(start).Round(time.Millisecond))
	c.Close()

	// An unknown tunnel (not in the key's tunnels): a clear error, exit 1.
	u := visit("vnc", freeListen(t))
	if code := u.exitCode(20 * time.Second); code != 1 {
		t.Fatalf("visitor of an unknown tunnel exited with %d, want 1", code)
	}
	if !contains(u.stderr.String(), "vnc", "visitor_keys") {
		t.Errorf("the visitor of an unknown tunnel does not say why:\n%s", u.stderr.String())
	}

	// Revoked by a reload while a transfer runs: the transfer is cut.
	c = dial(t, listen)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		chunk := make([]byte, 32<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	if _, err := io.ReadFull(c, make([]byte, 4<<20)); err != nil {
		t.Fatalf("the transfer before the reload: %v", err)
	}
	// The writer stops (its data still in flight comes back), so that
	// the reader alone meets the cut: the kernel tells a reset to the
	// first of them that asks, and the other then sees an end.
	c.SetWriteDeadline(time.Now())
	<-writerDone
	writeRelayConfig(false)
	reloaded := time.Now()
	r.signal(syscall.SIGHUP)
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the transfer went on after the visitor's key was revoked")
	}
	// Cut, not ended: the client sees a reset, not the end of the data.
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the cut transfer ended with %v, want a reset", err)
	}
	t.Logf("transfer cut %v after the reload was asked for (err %v)", time.Since(reloaded).Round(time.Millisecond), err)
	r.await(10*time.Second, "the relay's word on the revoked visitor", func() bool {
		return contains(r.stderr.String(), "visitor session down", "cause=revoked")
	})
	// The visitor cannot log in again: it says so and backs off.
	v.await(30*time.Second, "the visitor told its key is wrong", func() bool {
		return strings.Contains(v.stderr.String(), "wrong visitor key")
	})
	if strings.Contains(r.stderr.String(), laptopKey) || strings.Contains(v.stderr.String(), laptopKey) {
		t.Error("a visitor key is in a log")
	}
	for _, p := range []*binProc{v, home, r} {
		p.signal(syscall.SIGTERM)
		p.exitCode(15 * time.Second)
	}
}

// listeningPorts returns the TCP ports pid listens on and the UDP ports
// it has bound, from its sockets and the kernel's tables (/proc).
func listeningPorts(t *testing.T, pid int) (tcp, udp []int) {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	read := func(files []string, listenOnly bool) []int {
		var ports []int
		for _, f := range files {
			fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
			if err != nil {
				continue // no IPv6
			}
			sc := bufio.NewScanner(fh)
			sc.Scan() // header
			for sc.Scan() {
				fields := strings.Fields(sc.Text())
				if len(fields) < 10 || !inodes[fields[9]] {
					continue
				}
				// TCP_LISTEN is 0A; an unconnected UDP socket is 07.
				if listenOnly && fields[3] != "0A" || !listenOnly && fields[3] != "07" {
					continue
				}
				_, hexPort, _ := strings.Cut(fields[1], ":")
				p, _ := strconv.ParseInt(hexPort, 16, 32)
				if !slices.Contains(ports, int(p)) {
					ports = append(ports, int(p))
				}
			}
			fh.Close()
		}
		slices.Sort(ports)
		return ports
	}
	return read([]string{"tcp", "tcp6"}, true), read([]string{"udp", "udp6"}, false)
}
