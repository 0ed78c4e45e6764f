package testenv

import (
	"strings"
	"testing"
	"time"
)

func TestParseSlowdown(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want float64
	}{{"", 1}, {"1", 1}, {"2.5", 2.5}, {"1000", 1000}} {
		if got, err := parseSlowdown(tt.in); err != nil || got != tt.want {
			t.Errorf("parseSlowdown(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"0", "0.5", "-3", "x", "NaN", "Inf", "1001"} {
		if _, err := parseSlowdown(in); err == nil || !strings.Contains(err.Error(), SlowdownVar+`="`+in+`"`) {
			t.Errorf("parseSlowdown(%q): %v; want an error naming the variable and its value", in, err)
		}
	}
}

func TestDeadline(t *testing.T) {
	f := Slowdown()
	for _, tt := range []struct{ in, want time.Duration }{
		{0, MinDeadline}, {time.Second, MinDeadline}, {MinDeadline, MinDeadline}, {time.Minute, time.Minute},
	} {
		if got, want := Deadline(tt.in), time.Duration(float64(tt.want)*f); got != want {
			t.Errorf("Deadline(%v) = %v with slowdown %v; want %v", tt.in, got, f, want)
		}
	}
}
