package control

import (
	"strings"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	var b strings.Builder
	Table{Title: "TUNNELS", Head: []string{"PORT", "NAME"}, Rows: [][]string{{"3390/tcp", "rdp"}, {"22/tcp", "ssh-home"}}}.Write(&b)
	Table{Title: "BANS"}.Write(&b)
	want := "TUNNELS\n  PORT      NAME\n  3390/tcp  rdp\n  22/tcp    ssh-home\n\nBANS\n  (none)\n\n"
	if b.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", b.String(), want)
	}
}

func TestFormats(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct{ got, want string }{
		{Bytes(0), "0 B"},
		{Bytes(1023), "1023 B"},
		{Bytes(1536), "1.5 KiB"},
		{Bytes(12 << 20), "12 MiB"},
		{Bytes(3<<30 + 400<<20), "3.4 GiB"},
		{Age(now, time.Time{}), "-"},
		{Age(now, now.Add(-45*time.Second)), "45s"},
		{Age(now, now.Add(-192*time.Second)), "3m12s"},
		{Age(now, now.Add(-125*time.Minute)), "2h05m"},
		{Age(now, now.Add(-76*time.Hour)), "3d04h"},
		{Age(now, now.Add(time.Second)), "0s"},
		{RTT(0), "-"},
		{RTT(Duration(1234 * time.Microsecond)), "1.23ms"},
		{RTT(Duration(51234 * time.Microsecond)), "51.2ms"},
		{Or(""), "-"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	d := Duration(1500 * time.Millisecond)
	b, err := d.MarshalJSON()
	if err != nil || string(b) != "1.5" {
		t.Fatalf("marshal: %s %v", b, err)
	}
	var back Duration
	if err := back.UnmarshalJSON(b); err != nil || back != d {
		t.Fatalf("unmarshal: %v %v", back, err)
	}
	if err := back.UnmarshalJSON([]byte(`"1s"`)); err == nil {
		t.Fatal("a string must be refused")
	}
}
