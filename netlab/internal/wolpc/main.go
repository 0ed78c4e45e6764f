// Command wolpc plays the test bed's sleeping PC and its remote visitor.
//
// Modes:
//
//   - pc: the PC, "asleep": its service does not listen until a magic
//     packet for -mac arrives, by UDP on -udp (the LAN's broadcast) or, on
//     Linux, as an Ethernet frame of EtherType 0x0842 on -if; then, after
//     -boot, it listens on -listen, where each connection gets the line
//     "pc awake" and then its own bytes back until it half-closes. It
//     prints one JSON object a line: every magic packet (any MAC) and
//     when it is awake.
//
//   - visit: a visitor: it connects to -addr, reads the first line, sends
//     -size random bytes, half-closes, reads them back and prints one JSON
//     object with the times (connect, first byte) and whether the bytes
//     came back whole (sha256).
//
// For example:
//
//	wolpc -mode pc -mac 02:00:00:00:07:03 -if eth0 -listen :3389
//	wolpc -mode visit -addr 203.0.113.10:3390 -size 1048576
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/homeport/homeport/internal/wol"
)

func main() {
	mode := flag.String("mode", "", "pc or visit")
	macS := flag.String("mac", "", "pc: the MAC address that wakes it")
	ifName := flag.String("if", "eth0", "pc: the interface for raw magic frames")
	udpAddr := flag.String("udp", ":9", "pc: where magic packets arrive by UDP")
	listen := flag.String("listen", ":3389", "pc: the service's address once awake")
	boot := flag.Duration("boot", 0, "pc: time from the magic packet to the service listening")
	addr := flag.String("addr", "", "visit: where to connect")
	size := flag.Int64("size", 1<<20, "visit: bytes to send and get back")
	timeout := flag.Duration("timeout", 2*time.Minute, "visit: the whole visit's limit")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch *mode {
	case "pc":
		var m wol.MAC
		if m, err = wol.ParseMAC(*macS); err == nil {
			err = runPC(ctx, m, *ifName, *udpAddr, *listen, *boot)
		}
	case "visit":
		err = visit(*addr, *size, *timeout)
	default:
		err = fmt.Errorf("-mode %q: want pc or visit", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wolpc:", err)
		os.Exit(1)
	}
}

var outMu sync.Mutex

func emit(v map[string]any) {
	outMu.Lock()
	defer outMu.Unlock()
	v["time"] = time.Now().Format(time.RFC3339Nano)
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func runPC(ctx context.Context, mine wol.MAC, ifName, udpAddr, listen string, boot time.Duration) error {
	packets := make(chan [2]string, 64) // via, mac
	pc, err := net.ListenPacket("udp4", udpAddr)
	if err != nil {
		return err
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if m, err := wol.ParsePacket(buf[:n]); err == nil {
				packets <- [2]string{"udp from " + from.String(), m.String()}
			}
		}
	}()
	closeRaw, err := listenRaw(ifName, func(m wol.MAC) { packets <- [2]string{"ethernet on " + ifName, m.String()} })
	if err != nil {
		emit(map[string]any{"event": "no_raw", "err": err.Error()})
	} else {
		defer closeRaw()
	}
	emit(map[string]any{"event": "asleep", "mac": mine.String()})
	var ln net.Listener
	for {
		select {
		case <-ctx.Done():
			if ln != nil {
				ln.Close()
			}
			return nil
		case p := <-packets:
			emit(map[string]any{"event": "packet", "via": p[0], "mac": p[1], "mine": p[1] == mine.String()})
			if p[1] != mine.String() || ln != nil {
				continue
			}
			if boot > 0 {
				time.Sleep(boot) // the machine boots
			}
			if ln, err = net.Listen("tcp", listen); err != nil {
				return err
			}
			emit(map[string]any{"event": "awake", "listen": listen})
			go serve(ln)
		}
	}
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
			if _, err := io.WriteString(c, "pc awake\n"); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
	}
}

func visit(addr string, size int64, timeout time.Duration) error {
	start := time.Now()
	res := map[string]any{"event": "visit"}
	defer func() { emit(res) }()
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		res["err"] = err.Error()
		return nil
	}
	defer c.Close()
	res["connect_ms"] = time.Since(start).Milliseconds()
	_ = c.SetDeadline(start.Add(timeout))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	res["closed_ms"] = time.Since(start).Milliseconds()
	if err != nil {
		res["err"] = "before the first byte: " + err.Error()
		return nil
	}
	res["first_byte_ms"] = time.Since(start).Milliseconds()
	res["banner"] = line
	sent := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		_, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{3}), size), h))
		if err == nil {
			_ = c.(*net.TCPConn).CloseWrite()
		}
		sent <- h.Sum(nil)
	}()
	h := sha256.New()
	n, err := io.Copy(h, br)
	res["bytes_back"] = n
	res["sha_ok"] = err == nil && n == size && string(h.Sum(nil)) == string(<-sent)
	res["done_ms"] = time.Since(start).Milliseconds()
	if err != nil {
		res["err"] = err.Error()
	}
	return nil
}
