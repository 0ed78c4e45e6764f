package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"reflect"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/quic-go/quic-go"
)

// transports lists every Transport; each test below runs over all of them.
var transports = []struct {
	name string
	tr   Transport
}{
	{"tcp", TCPTransport{}},
	{"quic", QUICTransport{}},
}

func testCert(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	certPEM, keyPEM, err := GenerateCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := CertificateFingerprint(cert)
	if err != nil {
		t.Fatal(err)
	}
	return cert, fp
}

// linkPair returns both ends of a link over tr on loopback, handshaken.
// The server end's handshake error (if any) is returned through srvErr.
func linkPair(t *testing.T, tr Transport, clientConf *tls.Config) (client, server Conn, clientErr, srvErr error) {
	t.Helper()
	cert, _ := testCert(t)
	ln, err := tr.Listen("127.0.0.1:0", ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			err = c.Handshake(ctx)
		}
		ch <- res{c, err}
	}()
	client, err = tr.Dial(ctx, ln.Addr().String(), clientConf)
	if err != nil {
		t.Fatal(err)
	}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	clientErr = client.Handshake(ctx)
	if clientErr != nil {
		client.Close()
		// quic-go never hands a failed handshake to Accept: stop waiting.
		if _, ok := tr.(QUICTransport); ok {
			cancel()
		}
	}
	r := <-ch
	if r.c != nil {
		t.Cleanup(func() { r.c.Close() })
	}
	t.Cleanup(func() { client.Close() })
	return client, r.c, clientErr, r.err
}

// pinnedPair is linkPair with a client that pins the server's real key.
func pinnedPair(t testing.TB, tr Transport) (client, server Conn) {
	t.Helper()
	cert, fp := testCert(t)
	ln, err := tr.Listen("127.0.0.1:0", ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conf, err := PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan Conn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			err = c.Handshake(ctx)
		}
		errc <- err
		ch <- c
	}()
	client, err = tr.Dial(ctx, ln.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	server = <-ch
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestPinMismatchSendsNothing(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			_, otherFP := testCert(t) // a key the server does not have
			conf, err := PinnedTLSConfig(otherFP)
			if err != nil {
				t.Fatal(err)
			}
			_, _, clientErr, _ := linkPair(t, tt.tr, conf)
			if !errors.Is(clientErr, ErrFingerprintMismatch) {
				t.Fatalf("client handshake: got %v, want ErrFingerprintMismatch", clientErr)
			}
		})
	}
}

func TestFingerprintForms(t *testing.T) {
	_, fp := testCert(t)
	hexPart := fp[len("sha256:"):]
	var colon bytes.Buffer
	for i := 0; i < len(hexPart); i += 2 {
		if i > 0 {
			colon.WriteByte(':')
		}
		colon.WriteString(hexPart[i : i+2])
	}
	for _, in := range []string{fp, hexPart, "SHA256:" + string(bytes.ToUpper([]byte(hexPart))), colon.String()} {
		got, err := parseFingerprint(in)
		if err != nil || got != fp {
			t.Errorf("parseFingerprint(%q) = %q, %v; want %q", in, got, err, fp)
		}
	}
	for _, bad := range []string{"", "sha256:", "sha256:abc", fp + "00", "md5:" + hexPart} {
		if _, err := parseFingerprint(bad); err == nil {
			t.Errorf("parseFingerprint(%q) accepted", bad)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	secrets := [][]byte{[]byte("first-token-0123456789"), []byte("second-token-0123456789")}
	tests := []struct {
		name      string
		secret    string
		wantToken int
		wantErr   error
	}{
		{"first token", "first-token-0123456789", 0, nil},
		{"second token", "second-token-0123456789", 1, nil},
		{"wrong token", "not-a-token-0123456789", -1, ErrAuthFailed},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.name, func(t *testing.T) {
				client, server := pinnedPair(t, tr.tr)
				type res struct {
					a   Agent
					err error
				}
				ch := make(chan res, 1)
				go func() {
					a, err := AuthenticateAgent(server, secrets, "198.51.100.9:4242", AuthHooks{})
					ch <- res{a, err}
				}()
				w, err := Authenticate(client, []byte(tt.secret), "home-pc", "test/1", 0)
				r := <-ch
				if tt.wantErr != nil {
					var re *RejectError
					if !errors.As(err, &re) || re.Code != CodeAuthFailed || !errors.Is(err, tt.wantErr) {
						t.Fatalf("agent: got %v, want a reject with %v", err, tt.wantErr)
					}
					if !errors.Is(r.err, tt.wantErr) {
						t.Fatalf("relay: got %v, want %v", r.err, tt.wantErr)
					}
					return
				}
				if err != nil || r.err != nil {
					t.Fatalf("agent %v, relay %v", err, r.err)
				}
				if w.ObservedAddr != "198.51.100.9:4242" {
					t.Errorf("observed %q", w.ObservedAddr)
				}
				if r.a.Token != tt.wantToken || r.a.ID != "home-pc" || r.a.Software != "test/1" {
					t.Errorf("relay saw %+v", r.a)
				}
			})
		}
	}
}

// TestAuthenticateFeatures: the relay announces its features only to an
// agent that asks with FlagFeatures, so an older agent gets the Welcome it
// knows.
func TestAuthenticateFeatures(t *testing.T) {
	secret := []byte("features-token-0123456789")
	for _, flags := range []HelloFlags{0, FlagFeatures, FlagFeatures | FlagReplacing} {
		t.Run(fmt.Sprintf("flags %#x", flags), func(t *testing.T) {
			client, server := pinnedPair(t, TCPTransport{})
			errc := make(chan error, 1)
			go func() {
				_, err := AuthenticateAgent(server, [][]byte{secret}, "198.51.100.9:4242", AuthHooks{})
				errc <- err
			}()
			w, err := Authenticate(client, secret, "home-pc", "test/1", flags)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			want := Features(0)
			if flags&FlagFeatures != 0 {
				want = RelayFeatures
			}
			if err != nil || w.Features != want || w.Features&FeatureUnregister == 0 && want != 0 {
				t.Fatalf("welcome %+v, %v; want features %#x", w, err, want)
			}
		})
	}
}

// TestAuthenticateVisitor: a visitor's hello is checked against the
// visitor keys only, and an agent's against the tokens only: neither
// secret opens the other door.
func TestAuthenticateVisitor(t *testing.T) {
	token := []byte("agent-token-0123456789")
	keys := [][]byte{[]byte("laptop-key-0123456789"), []byte("phone-key-0123456789")}
	tests := []struct {
		name    string
		secret  []byte
		flags   HelloFlags
		keys    [][]byte
		want    int // visitor key index, or -1: refused
		message string
	}{
		{"visitor key", keys[1], FlagVisitor | FlagFeatures, keys, 1, ""},
		{"token as a visitor key", token, FlagVisitor, keys, -1, "wrong visitor key"},
		{"visitor key as a token", keys[0], FlagFeatures, keys, -1, "wrong token"},
		{"no visitor keys", keys[0], FlagVisitor, nil, -1, "wrong visitor key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := pinnedPair(t, TCPTransport{})
			type res struct {
				a   Agent
				err error
			}
			ch := make(chan res, 1)
			go func() {
				a, err := AuthenticateAgent(server, [][]byte{token}, "198.51.100.9:4242", AuthHooks{VisitorKeys: tt.keys})
				ch <- res{a, err}
			}()
			_, err := Authenticate(client, tt.secret, "laptop", "test/1", tt.flags)
			r := <-ch
			if tt.want < 0 {
				var re *RejectError
				if !errors.As(err, &re) || re.Code != CodeAuthFailed || re.Message != tt.message || !errors.Is(r.err, ErrAuthFailed) {
					t.Fatalf("visitor %v, relay %v; want a reject %q", err, r.err, tt.message)
				}
				return
			}
			if err != nil || r.err != nil {
				t.Fatalf("visitor %v, relay %v", err, r.err)
			}
			if !r.a.Visitor() || r.a.Token != tt.want || r.a.ID != "laptop" {
				t.Fatalf("relay saw %+v; want visitor key %d", r.a, tt.want)
			}
		})
	}
}

// TestAuthReplay shows that a hello captured from one TLS session fails in
// another, even for the same nonce: the MAC is bound to the session.
func TestAuthReplay(t *testing.T) {
	secret := []byte("replay-token-0123456789")
	tr := TCPTransport{}
	c1, s1 := pinnedPair(t, tr)
	c2, s2 := pinnedPair(t, tr)
	ekm1, err := exportKey(c1)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := exportKey(s1); !bytes.Equal(e, ekm1) {
		t.Fatal("both ends of one session must export the same key")
	}
	done := make(chan error, 1)
	go func() {
		_, err := AuthenticateAgent(s2, [][]byte{secret}, "x", AuthHooks{})
		done <- err
	}()
	var ch challenge
	if err := ReadInto(c2, MaxAuthFrameSize, &ch); err != nil {
		t.Fatal(err)
	}
	// The attacker knows the nonce of session 2 and a MAC from session 1.
	h := hello{Version: ProtocolVersion, AgentID: "home-pc"}
	copy(h.MAC[:], computeMAC(secret, ch.Nonce[:], ekm1, "home-pc"))
	if err := WriteMessage(c2, &h); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("replayed hello: got %v, want ErrAuthFailed", err)
	}
}

// TestAuthGarbage: a peer that sends junk or an oversized frame instead of
// a hello is refused, without the relay reading past the limit.
func TestAuthGarbage(t *testing.T) {
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{msgHello, 0xff, 0xff},
		{msgRegister, 0, 0},
	} {
		client, server := pinnedPair(t, TCPTransport{})
		server.SetDeadline(time.Now().Add(5 * time.Second))
		done := make(chan error, 1)
		go func() {
			_, err := AuthenticateAgent(server, [][]byte{[]byte("some-token-0123456789")}, "x", AuthHooks{})
			done <- err
		}()
		var ch challenge
		if err := ReadInto(client, MaxAuthFrameSize, &ch); err != nil {
			t.Fatal(err)
		}
		client.Write(junk)
		if err := <-done; err == nil {
			t.Fatalf("junk %q accepted", junk)
		}
	}
}

// sessionPair returns a multiplexed session pair over tr.
func sessionPair(t testing.TB, tr Transport) (client, server Session) {
	t.Helper()
	c, s := pinnedPair(t, tr)
	var err error
	if client, err = c.Mux(DefaultSessionConfig()); err != nil {
		t.Fatal(err)
	}
	if server, err = s.Mux(DefaultSessionConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// tcpPair returns two connected loopback TCP connections.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// splicedPath builds  x <-TCP-> [Splice] <-stream-> [Splice] <-TCP-> y
// and returns x and y: the data path of a tunnel without relay or agent.
// As for a visitor, the relay's end (the server) opens the stream and
// writes one byte first, as the relay writes Open: a QUIC stream is
// invisible to the peer until it carries data.
func splicedPath(t testing.TB, tr Transport) (x, y *net.TCPConn, wait func()) {
	return splicedPathContext(context.Background(), t, tr)
}

// splicedPathContext is splicedPath with both splices under ctx.
func splicedPathContext(ctx context.Context, t testing.TB, tr Transport) (x, y *net.TCPConn, wait func()) {
	agent, relay := sessionPair(t, tr)
	return splicedPathOn(ctx, t, agent, relay)
}

// splicedPathOn is splicedPathContext on a given session pair.
func splicedPathOn(ctx context.Context, t testing.TB, agent, relay Session) (x, y *net.TCPConn, wait func()) {
	x, xr := tcpPair(t)
	yr, y := tcpPair(t)
	done := make(chan struct{}, 2)
	accepted := make(chan Stream, 1)
	go func() {
		st, err := agent.AcceptStream(ctx)
		if err == nil {
			_, err = io.ReadFull(st, make([]byte, 1))
		}
		if err != nil {
			t.Error(err)
			accepted <- nil
			return
		}
		accepted <- st
	}()
	st1, err := relay.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st1.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	go func() { Splice(ctx, xr, st1); done <- struct{}{} }()
	st2 := <-accepted
	if st2 == nil {
		t.FailNow()
	}
	go func() { Splice(ctx, st2, yr); done <- struct{}{} }()
	return x, y, func() { <-done; <-done }
}

// TestSpliceIntegrity sends 64 MiB each way at once through the spliced
// path and compares sha256 sums.
func TestSpliceIntegrity(t *testing.T) {
	size := int64(64 << 20)
	if testing.Short() {
		size = 4 << 20
	}
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			x, y, wait := splicedPath(t, tt.tr)
			type res struct {
				sum [32]byte
				n   int64
			}
			send := func(c *net.TCPConn, seed uint64) [32]byte {
				h := sha256.New()
				r := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), size), h)
				if _, err := io.Copy(c, r); err != nil {
					t.Error(err)
				}
				c.CloseWrite()
				return [32]byte(h.Sum(nil))
			}
			recv := func(c *net.TCPConn, out chan<- res) {
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					t.Error(err)
				}
				out <- res{[32]byte(h.Sum(nil)), n}
			}
			gotX, gotY := make(chan res, 1), make(chan res, 1)
			go recv(x, gotX)
			go recv(y, gotY)
			sentXY := make(chan [32]byte, 1)
			go func() { sentXY <- send(x, 1) }()
			sentYX := send(y, 2)
			rx, ry := <-gotX, <-gotY
			if ry.n != size || ry.sum != <-sentXY {
				t.Errorf("x->y: got %d bytes, sum mismatch or short", ry.n)
			}
			if rx.n != size || rx.sum != sentYX {
				t.Errorf("y->x: got %d bytes, sum mismatch or short", rx.n)
			}
			x.Close()
			y.Close()
			wait()
		})
	}
}

// TestSpliceHalfClose: EOF one way arrives as EOF at the far end while the
// other direction keeps flowing, in both orders.
func TestSpliceHalfClose(t *testing.T) {
	for _, tt := range transports {
		for _, first := range []string{"x", "y"} {
			t.Run(tt.name+"/"+first+" closes first", func(t *testing.T) {
				leak.Check(t)
				x, y, wait := splicedPath(t, tt.tr)
				a, b := x, y
				if first == "y" {
					a, b = y, x
				}
				a.Write([]byte("request"))
				a.CloseWrite()
				got, err := io.ReadAll(b) // ends only if the EOF came through
				if err != nil || string(got) != "request" {
					t.Fatalf("far end read %q, %v", got, err)
				}
				// The other direction still flows after the half-close.
				for i := range 3 {
					msg := []byte{byte('0' + i)}
					if _, err := b.Write(msg); err != nil {
						t.Fatal(err)
					}
					buf := make([]byte, 1)
					a.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.ReadFull(a, buf); err != nil || buf[0] != msg[0] {
						t.Fatalf("reply %d after half-close: %q, %v", i, buf, err)
					}
				}
				b.CloseWrite()
				expectEOF(t, a, "after both half-closes")
				wait()
			})
		}
	}
}

// expectEOF fails the test unless c's next read, within 5 s, is EOF.
func expectEOF(t *testing.T, c *net.TCPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("%s: read %d, %v; want EOF", what, n, err)
	}
}

// TestSpliceAbort: a reset on one side resets the other side promptly: a
// cut upload must not reach the target as a complete one (a clean EOF).
// Both ends of the session forget the stream.
func TestSpliceAbort(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			agent, relay := sessionPair(t, tt.tr)
			x, y, wait := splicedPathOn(context.Background(), t, agent, relay)
			x.SetLinger(0)
			x.Write([]byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(y, buf); err != nil {
				t.Fatal(err)
			}
			x.Close() // RST
			y.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := y.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("far end read %d, %v after a reset; want ECONNRESET", n, err)
			}
			y.Close()
			wait()
			for end, s := range map[string]Session{"agent": agent, "relay": relay} {
				deadline := time.Now().Add(5 * time.Second)
				for s.NumStreams() > 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if n := s.NumStreams(); n > 0 {
					t.Errorf("%s keeps %d streams after the reset", end, n)
				}
			}
		})
	}
}

func TestSessionDoneOnPeerClose(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			c, s := sessionPair(t, tt.tr)
			c.Close()
			select {
			case <-s.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server session not done after the client closed")
			}
			if _, err := s.OpenStream(context.Background()); !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("OpenStream on a dead session: %v", err)
			}
		})
	}
}

// TestQUICPeerClosedInWords: a QUIC session whose peer closed it on
// purpose reads ErrPeerClosed, told in words, on its streams and on
// AcceptStream, and the closer's own ends read ErrSessionClosed; no
// "Application error 0x0" in what a log would show.
func TestQUICPeerClosedInWords(t *testing.T) {
	c, s := sessionPair(t, QUICTransport{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cst, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cst.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	sst, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(sst, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, readErr := sst.Read(make([]byte, 1))
	_, acceptErr := s.AcceptStream(ctx)
	_, ownErr := cst.Read(make([]byte, 1))
	for _, tt := range []struct {
		what string
		err  error
		want error
		text string
	}{
		{"stream read at the peer", readErr, ErrPeerClosed, "peer closed the session"},
		{"AcceptStream at the peer", acceptErr, ErrPeerClosed, "session closed: peer closed the session"},
		{"stream read at the closer", ownErr, ErrSessionClosed, "session closed"},
	} {
		if !errors.Is(tt.err, tt.want) || tt.err.Error() != tt.text {
			t.Errorf("%s: %v; want %q (errors.Is %v)", tt.what, tt.err, tt.text, tt.want)
		}
	}
}

// TestQUICSmallBuffers: a UDP socket whose kernel buffers are below what
// QUIC wants is reported, with sizes, so the relay can log the fix.
func TestQUICSmallBuffers(t *testing.T) {
	if _, _, err := udpBuffers(nil); errors.Is(err, errors.ErrUnsupported) {
		t.Skip("buffer sizes not readable on this system")
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if err := udp.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	var got [2]int
	QUICTransport{OnSmallBuffers: func(rcv, snd int) { got = [2]int{rcv, snd} }}.checkBuffers(udp)
	if got[0] < 32<<10 || got[0] >= quicWantBuffer {
		t.Fatalf("OnSmallBuffers got receive buffer %d, want about 64 KiB", got[0])
	}
}

// TestQUICHandshakeCap: QUIC handshakes in progress at the relay are
// capped; one over the cap is refused at once, and the count returns to
// zero once the handshakes end.
func TestQUICHandshakeCap(t *testing.T) {
	leak.Check(t)
	cert, fp := testCert(t)
	ln, err := QUICTransport{MaxHandshakes: 4}.Listen("127.0.0.1:0", ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*testenv.Deadline(0))
	defer cancel()
	accepted := make(chan Conn, 16)
	go func() { // accept, and close at the end what completes
		defer close(accepted)
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		ln.Close()
		cancel()
		for c := range accepted {
			c.Close()
		}
	}()

	// Clients whose own side of the handshake stalls hold the relay's
	// side in progress.
	release := make(chan struct{})
	stalled := make(chan struct{}, 8)
	stalling, err := PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	verify := stalling.VerifyConnection
	stalling.VerifyConnection = func(cs tls.ConnectionState) error {
		stalled <- struct{}{}
		<-release
		return verify(cs)
	}
	type result struct{ err error }
	done := make(chan result, 4)
	for range 4 {
		go func() {
			c, err := QUICTransport{}.Dial(ctx, ln.Addr().String(), stalling)
			if err == nil {
				err = c.Handshake(ctx)
				c.Close()
			}
			done <- result{err}
		}()
	}
	for range 4 {
		select {
		case <-stalled:
		case <-ctx.Done():
			t.Fatal("handshakes did not start")
		}
	}
	// Each client is verifying the server's answer, so the server has
	// counted its Initial. A fifth is refused, not left to time out.
	pinned, _ := PinnedTLSConfig(fp)
	c, err := QUICTransport{HandshakeTimeout: testenv.Deadline(0)}.Dial(ctx, ln.Addr().String(), pinned)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Handshake(ctx)
	c.Close()
	if err == nil {
		t.Fatal("fifth handshake admitted over a cap of 4")
	}
	var hte *quic.HandshakeTimeoutError
	var ite *quic.IdleTimeoutError
	if errors.As(err, &hte) || errors.As(err, &ite) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fifth handshake timed out instead of being refused: %v", err)
	}
	t.Logf("fifth handshake refused: %v", err)
	close(release)
	for range 4 {
		if r := <-done; r.err != nil {
			t.Fatalf("stalled handshake, released: %v", r.err)
		}
	}
	// All handshakes ended: a new one gets in.
	c, err = QUICTransport{}.Dial(ctx, ln.Addr().String(), pinned)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(ctx); err != nil {
		t.Fatalf("handshake after the others ended: %v", err)
	}
	c.Close()
}

// writeLog records each Write as one chunk.
type writeLog struct {
	net.Conn
	writes [][]byte
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

// TestFrameWriter: a data frame's header and body go out in one write;
// headers of frames without a body (window updates, pings, a data frame
// with only flags) at once.
func TestFrameWriter(t *testing.T) {
	hdr := func(typ byte, length uint32) []byte {
		h := make([]byte, 12)
		h[1] = typ
		binary.BigEndian.PutUint32(h[8:], length)
		return h
	}
	log := &writeLog{}
	w := &frameWriter{Conn: log}
	steps := [][]byte{
		hdr(0, 5), []byte("hello"), // data frame: joined
		hdr(1, 65536), // window update: alone
		hdr(0, 0),     // data frame with flags only (FIN): alone
		hdr(2, 7),     // ping: alone
		hdr(0, 3), []byte("bye"),
	}
	for _, p := range steps {
		if n, err := w.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	want := [][]byte{
		append(hdr(0, 5), "hello"...),
		hdr(1, 65536),
		hdr(0, 0),
		hdr(2, 7),
		append(hdr(0, 3), "bye"...),
	}
	if !reflect.DeepEqual(log.writes, want) {
		t.Fatalf("writes:\n got %x\nwant %x", log.writes, want)
	}
}

// TestSpliceReleasesIdleBuffer: a burst that a slow reader leaves in the
// stream's receive buffer takes megabytes; once the reader has caught up,
// the connection holds none of it (the buffer's chunks go back to their
// pool as they are read, and the pool lets the garbage collector have
// them).
func TestSpliceReleasesIdleBuffer(t *testing.T) {
	agent, relay := sessionPair(t, TCPTransport{})
	// A long round trip lets the agent end's window grow at each grant
	// (see recvWindows), so that the burst piles up in its buffer
	// however slowly this machine reads.
	agent.(*yamuxSession).fw.wins.rtt.Store(int64(time.Hour))
	x, y, _ := splicedPathOn(context.Background(), t, agent, relay)
	// The socket buffers on the way (two loopback connections, which
	// the kernel's autotuning lets grow to several MiB each) take what
	// they can first; on a busy machine they grow the most, and an
	// 8 MiB burst could fit in them and leave the stream's buffer
	// nearly empty. 32 MiB cannot. The burst's own bytes are in the
	// heap before base is taken, so only the stream's buffer counts.
	const burst = 32 << 20
	data := make([]byte, burst)
	base := heapInUse()
	wrote := make(chan error, 1)
	go func() {
		_, err := x.Write(data)
		wrote <- err
	}()
	// Let the burst pile up in front of y, which does not read yet: the
	// socket buffers fill, then the agent end's stream buffer.
	piled := waitHeap(t, "the burst to pile up in the stream's buffer", func(h int64) bool { return h-base >= 1<<20 })
	y.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(y, make([]byte, burst)); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	idle := waitHeap(t, "the idle stream to let its buffer go", func(h int64) bool { return h-base <= 512<<10 })
	runtime.KeepAlive(data)
	t.Logf("heap in use: %d KiB before the burst, %d KiB with it waiting, %d KiB once read and idle", base>>10, piled>>10, idle>>10)
}

// waitHeap polls the heap in use (after a collection) until ok holds,
// and returns it; it fails the test, saying what it waited for, when ok
// does not hold within testenv.Deadline.
func waitHeap(t *testing.T, what string, ok func(int64) bool) int64 {
	t.Helper()
	d := testenv.Deadline(0)
	deadline := time.Now().Add(d)
	for {
		h := heapInUse()
		if ok(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %d KiB in use", d, what, h>>10)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// recordSplitter writes what it is given in records of maxRecord bytes,
// one Write each, as TLS does.
type recordSplitter struct {
	net.Conn
	raw *batchConn
}

func (s recordSplitter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += maxRecord {
		if _, err := s.raw.Write(p[off:min(off+maxRecord, len(p))]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// TestFrameOneSend: the records of a data frame larger than one record
// leave in one write to the TCP connection; smaller frames pass through.
func TestFrameOneSend(t *testing.T) {
	log := &writeLog{}
	raw := &batchConn{Conn: log}
	w := &frameWriter{Conn: recordSplitter{raw: raw}, raw: raw}
	body := bytes.Repeat([]byte("0123456789abcdef"), 2500) // 40,000 bytes: three records
	hdr := make([]byte, 12)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(body)))
	ping := []byte{0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}
	for _, p := range [][]byte{hdr, body, ping} {
		if n, err := w.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	want := [][]byte{append(append([]byte(nil), hdr...), body...), ping}
	if !reflect.DeepEqual(log.writes, want) {
		t.Fatalf("got %d writes of %v bytes, want 2 of %d and %d", len(log.writes), lens(log.writes), len(want[0]), len(want[1]))
	}
}

func lens(bs [][]byte) []int {
	var n []int
	for _, b := range bs {
		n = append(n, len(b))
	}
	return n
}
