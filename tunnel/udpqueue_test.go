package tunnel

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// lineLog collects log records' messages and attributes as text lines.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *lineLog) WithGroup(string) slog.Handler            { return l }
func (l *lineLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

func (l *lineLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// TestDatagramQueueBudgets: with nobody taking datagrams (a paused peer),
// a flow holds at most its budget and a tunnel at most its own; what does
// not fit is dropped and counted by the budget that was full; once the
// reader takes them, the flow queues again; closing a flow gives its bytes
// back.
func TestDatagramQueueBudgets(t *testing.T) {
	const flowMax, tunnelMax = 256 << 10, 512 << 10
	log := &lineLog{}
	b, err := NewUDPBudget(flowMax, tunnelMax, slog.New(log), "dropped")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	big := bytes.Repeat([]byte{'x'}, MaxDatagram)
	cost := int64(len(big)) + datagramCost

	// One flow, paused reader: 3 fit in 256 KiB, the 4th is dropped.
	q1 := b.NewQueue()
	queued := 0
	for range 10 {
		if q1.Push(big) {
			queued++
		}
	}
	if want := int(flowMax / cost); queued != want {
		t.Errorf("flow queued %d datagrams of %d bytes, want %d (its budget)", queued, len(big), want)
	}
	if q1.Bytes() > flowMax || b.Queued() != q1.Bytes() {
		t.Errorf("flow holds %d bytes, tunnel %d; budget %d", q1.Bytes(), b.Queued(), flowMax)
	}
	if d := b.Drops(); d.FlowFull != uint64(10-queued) || d.TunnelFull != 0 {
		t.Errorf("drops %+v, want %d for the flow's budget", d, 10-queued)
	}

	// More flows: together they stop at the tunnel's budget.
	q2, q3 := b.NewQueue(), b.NewQueue()
	for range 10 {
		q2.Push(big)
		q3.Push(big)
	}
	if b.Queued() > tunnelMax {
		t.Errorf("tunnel holds %d bytes, budget %d", b.Queued(), tunnelMax)
	}
	if b.Queued() < tunnelMax-cost {
		t.Errorf("tunnel holds %d bytes: it should fill its budget of %d", b.Queued(), tunnelMax)
	}
	if d := b.Drops(); d.TunnelFull == 0 {
		t.Errorf("drops %+v: none counted for the tunnel's budget", d)
	}

	// The reader resumes on flow 1: what it takes (once sent) frees room,
	// in order.
	select {
	case <-q1.Ready():
	default:
		t.Fatal("flow 1 not ready")
	}
	p, ok := q1.Pop()
	if !ok || len(p) != len(big) {
		t.Fatalf("Pop: %d bytes, %v", len(p), ok)
	}
	if q1.Push(big) {
		t.Error("queued before the datagram taken was sent: it still counts until Done")
	}
	q1.Done(p)
	small := []byte("after")
	if !q1.Push(small) {
		t.Fatal("flow 1 drops after the reader took a datagram")
	}
	for range queued - 1 {
		if p, ok := q1.Pop(); !ok || len(p) != len(big) {
			t.Fatalf("Pop: %d bytes, %v", len(p), ok)
		} else {
			q1.Done(p)
		}
	}
	if p, ok := q1.Pop(); !ok || string(p) != "after" {
		t.Fatalf("Pop: %q, %v; want the datagram queued last", p, ok)
	} else {
		q1.Done(p)
	}
	if q1.Bytes() != 0 {
		t.Errorf("flow 1 holds %d bytes once empty", q1.Bytes())
	}

	// Closing flows gives their budget back; a closed flow takes nothing.
	q2.Close()
	q3.Close()
	if b.Queued() != 0 {
		t.Errorf("tunnel holds %d bytes with every flow empty or closed", b.Queued())
	}
	if q2.Push(small) {
		t.Error("a closed flow queued a datagram")
	}
	// Empty datagrams cost something too: they cannot pile up for free.
	q4, n := b.NewQueue(), 0
	for range 10000 {
		if q4.Push(nil) {
			n++
		}
	}
	if want := flowMax / datagramCost; n != want {
		t.Errorf("a flow queued %d empty datagrams, want %d", n, want)
	}
}

// TestDatagramQueueBudgetTooSmall: a budget that cannot hold one datagram
// is refused.
func TestDatagramQueueBudgetTooSmall(t *testing.T) {
	if _, err := NewUDPBudget(MaxDatagram, 1<<20, slog.New(&lineLog{}), "x"); err == nil {
		t.Error("a flow budget smaller than one datagram was accepted")
	}
	if _, err := NewUDPBudget(256<<10, 128<<10, slog.New(&lineLog{}), "x"); err == nil {
		t.Error("a tunnel budget smaller than a flow's was accepted")
	}
}

// TestDatagramQueueDropLog: drops are logged at once, then at most once
// per dropLogEvery with the number since the line before, and what is left
// when the tunnel closes.
func TestDatagramQueueDropLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &lineLog{}
		b, err := NewUDPBudget(FlowQueueBudget, TunnelQueueBudget, slog.New(log), "datagrams dropped")
		if err != nil {
			t.Fatal(err)
		}
		q := b.NewQueue()
		big := make([]byte, MaxDatagram)
		for q.Push(big) {
		}
		for range 99 { // 100 drops at once: one line
			q.Push(big)
		}
		if got := log.all(); len(got) != 1 || !strings.Contains(got[0], "WARN datagrams dropped dropped=1 dropped_total=1 ") {
			t.Fatalf("after a burst of drops, log %q; want one line with the first", got)
		}
		time.Sleep(dropLogEvery - time.Second)
		q.Push(big)
		if got := log.all(); len(got) != 1 {
			t.Fatalf("log %q: a second line within %v", got, dropLogEvery)
		}
		time.Sleep(time.Second) // the drops since come out when due
		synctest.Wait()
		if got := log.all(); len(got) != 2 || !strings.Contains(got[1], "dropped=100 dropped_total=101 ") {
			t.Fatalf("log %q; want a second line with the 100 drops since the first", got)
		}
		time.Sleep(time.Minute)
		if got := log.all(); len(got) != 2 {
			t.Fatalf("log %q: a line without drops", got)
		}
		q.Push(big) // long after: at once
		q.Push(big) // within dropLogEvery: at Close
		b.Close()
		got := log.all()
		if len(got) != 4 || !strings.Contains(got[2], "dropped=1 dropped_total=102 ") || !strings.Contains(got[3], "dropped=1 dropped_total=103 ") {
			t.Fatalf("log %q; want one line for the drop at once, one at Close", got)
		}
		if d := b.Drops(); d.FlowFull != 103 {
			t.Errorf("drops %+v, want 103 for the flow's budget", d)
		}
	})
}
