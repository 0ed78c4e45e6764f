package relaydial

import (
	"testing"
	"time"
)

func TestQUICPolicy(t *testing.T) {
	var p QUICPolicy
	now := time.Now()
	if !p.Usable(now) {
		t.Fatal("QUIC not tried at first")
	}
	var last time.Duration
	for i := range 8 {
		d := p.Failed(now)
		if d < QUICRetryMin*3/4 || d > QUICRetryMax {
			t.Fatalf("failure %d: pause %v outside [%v, %v]", i, d, QUICRetryMin*3/4, QUICRetryMax)
		}
		if i > 0 && i < 4 && d <= last*5/4 {
			t.Errorf("failure %d: pause %v did not grow from %v", i, d, last)
		}
		last = d
		if p.Usable(now) || !p.Usable(now.Add(d)) {
			t.Fatalf("failure %d: usable before or not after the pause %v", i, d)
		}
	}
	p.Worked()
	if !p.Usable(now) {
		t.Fatal("not usable after a success")
	}
	// Young sessions: the third in a row is a failure; an old one resets.
	for i := range QUICYoungLimit - 1 {
		if failed, _ := p.Ended(time.Second, now); failed {
			t.Fatalf("young session %d already counted as failure", i+1)
		}
	}
	if failed, _ := p.Ended(QUICYoung, now); failed {
		t.Fatal("a long session counted as failure")
	}
	for i := range QUICYoungLimit {
		failed, pause := p.Ended(time.Second, now)
		if (i == QUICYoungLimit-1) != failed {
			t.Fatalf("young session %d: failed=%v", i+1, failed)
		}
		if failed && (pause <= 0 || p.Usable(now)) {
			t.Fatalf("after young sessions: pause %v, usable %v", pause, p.Usable(now))
		}
	}
}
