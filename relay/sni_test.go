package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// helloConn is a connection whose reads come from r and whose writes are
// kept: a client's writes are its ClientHello.
type helloConn struct {
	net.Conn
	r io.Reader
	w bytes.Buffer
}

func (c *helloConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *helloConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *helloConn) Close() error                       { return nil }
func (c *helloConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *helloConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *helloConn) SetDeadline(time.Time) error        { return nil }
func (c *helloConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *helloConn) SetWriteDeadline(t time.Time) error { return nil }

// clientHelloBytes returns the ClientHello crypto/tls's client sends.
func clientHelloBytes(t testing.TB, name string, alpn ...string) []byte {
	c := &helloConn{r: bytes.NewReader(nil)}
	_ = tls.Client(c, &tls.Config{ServerName: name, NextProtos: alpn, InsecureSkipVerify: name == ""}).Handshake()
	if c.w.Len() == 0 {
		t.Fatal("the client wrote no ClientHello")
	}
	return c.w.Bytes()
}

// TestPeekClientHello: the server name and ALPN are read from a real
// ClientHello, also one split into many short reads with more bytes after
// it, and every byte read is returned for playing back.
func TestPeekClientHello(t *testing.T) {
	hello := clientHelloBytes(t, "nas.example.com", "h2", "acme-tls/1")
	for _, in := range []io.Reader{
		bytes.NewReader(hello),
		io.MultiReader(&oneByte{bytes.NewReader(hello)}, bytes.NewReader([]byte("after"))),
	} {
		h, head, err := peekClientHello(&helloConn{}, in)
		if err != nil {
			t.Fatal(err)
		}
		if h.ServerName != "nas.example.com" || !slices.Equal(h.ALPN, []string{"h2", "acme-tls/1"}) {
			t.Errorf("hello %+v", h)
		}
		if !bytes.HasPrefix(head, hello) {
			t.Errorf("the bytes read are not the ClientHello's")
		}
	}
	// Not TLS, truncated, oversized: errors, and nothing read past the
	// bound.
	for _, in := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), hello[:len(hello)/2], bytes.Repeat([]byte{0x16, 3, 1, 0x40, 0}, 1<<16)} {
		rec := bytes.NewReader(in)
		if _, _, err := peekClientHello(&helloConn{}, rec); err == nil {
			t.Errorf("%q: no error", in[:8])
		}
		if read := len(in) - rec.Len(); read > maxHelloBytes {
			t.Errorf("read %d bytes; at most %d", read, maxHelloBytes)
		}
	}
	_, _, err := peekClientHello(&helloConn{}, bytes.NewReader(bytes.Repeat([]byte{0x16, 3, 1, 0x40, 0}, 1<<16)))
	if err == nil || !errors.Is(err, errHelloTooLarge) && !bytes.Contains([]byte(err.Error()), []byte("no TLS ClientHello")) {
		t.Errorf("oversized: %v", err)
	}
}

type oneByte struct{ r io.Reader }

func (o *oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }

// FuzzPeekClientHello feeds hostile bytes to the ClientHello reader: it
// must not panic, must read at most maxHelloBytes, and what it returns
// for playing back is exactly what it read.
func FuzzPeekClientHello(f *testing.F) {
	f.Add(clientHelloBytes(f, "nas.example.com", "h2", "http/1.1"))
	f.Add(clientHelloBytes(f, ""))
	f.Add(clientHelloBytes(f, "xn--bcher-kva.example", "acme-tls/1"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Add([]byte("GET / HTTP/1.1\r\nHost: nas.example.com\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.NewReader(data)
		h, head, err := peekClientHello(&helloConn{}, in)
		read := len(data) - in.Len()
		if read > maxHelloBytes {
			t.Fatalf("read %d bytes", read)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(head, data[:read]) {
			t.Fatalf("played-back bytes differ from those read")
		}
		if len(h.ServerName) > 255 {
			t.Fatalf("server name of %d bytes", len(h.ServerName))
		}
	})
}
