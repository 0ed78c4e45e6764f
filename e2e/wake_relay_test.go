package e2e

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestWakeNoticeRelay: the relay's side of the CodeWaking notice on a
// private tunnel, against a home peer that speaks the wire protocol
// itself: a visitor with FlagWaits hears the notice, then the answer; one
// without hears only the answer; a second notice on one stream is
// refused as the agent not answering.
func TestWakeNoticeRelay(t *testing.T) {
	leak.Check(t)
	r := privateRelay(t, nil)
	sess, err := rawLogin(t, r, testToken, "home-pc", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteMessage(ctrl, &tunnel.RegisterPrivate{Tunnels: []tunnel.PrivateTunnel{
		{Name: "pc", Protocol: tunnel.ProtoTCP}, {Name: "twice", Protocol: tunnel.ProtoTCP}}}); err != nil {
		t.Fatal(err)
	}
	var res tunnel.RegisterResult
	if err := tunnel.ReadInto(ctrl, tunnel.MaxFrameSize, &res); err != nil || res.Results[0].Code != tunnel.CodeOK || res.Results[1].Code != tunnel.CodeOK {
		t.Fatalf("registration: %+v, %v", res, err)
	}
	// The home peer: a notice, then the answer (pc) or a second notice
	// (twice), then echo.
	go func() {
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				var open tunnel.Open
				if tunnel.ReadInto(st, tunnel.MaxFrameSize, &open) != nil {
					return
				}
				tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeWaking, Message: "waking"})
				second := tunnel.OpenResult{Code: tunnel.CodeOK}
				if open.Tunnel == "twice" {
					second.Code = tunnel.CodeWaking
				}
				tunnel.WriteMessage(st, &second)
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
	}()

	waits, err := rawLogin(t, r, laptopKey, "laptop", tunnel.FlagVisitor|tunnel.FlagWaits)
	if err != nil {
		t.Fatal(err)
	}
	st, first := visit(t, waits, "pc", tunnel.ProtoTCP, 0)
	if first.Code != tunnel.CodeWaking || first.Message != "waking" {
		t.Fatalf("a visitor with FlagWaits: first answer %v %q, want the notice", first.Code, first.Message)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var answer tunnel.OpenResult
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &answer); err != nil || answer.Code != tunnel.CodeOK {
		t.Fatalf("after the notice: %v, %v", answer.Code, err)
	}
	st.Close()

	old, err := rawLogin(t, r, laptopKey, "laptop-old", tunnel.FlagVisitor)
	if err != nil {
		t.Fatal(err)
	}
	st, first = visit(t, old, "pc", tunnel.ProtoTCP, 0)
	if first.Code != tunnel.CodeOK {
		t.Fatalf("a visitor without FlagWaits: first answer %v %q, want ok only", first.Code, first.Message)
	}
	st.Close()

	st, first = visit(t, old, "twice", tunnel.ProtoTCP, 0)
	if first.Code != tunnel.CodeOffline || !contains(first.Message, "did not answer", "second waking notice") {
		t.Fatalf("two notices: %v %q, want offline saying so", first.Code, first.Message)
	}
	st.Close()
}
