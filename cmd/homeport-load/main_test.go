package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.transports, []string{"tcp", "quic"}) || o.duration != 5*time.Second || o.repeat != 3 || !slices.Equal(o.conns, []int{1000, 10000}) ||
		o.wanRTT != 50*time.Millisecond || !slices.Equal(o.wanRates, []int{100, 1000}) || o.wanQueue != 20*time.Millisecond || o.streamWindow != "" ||
		o.agents != 0 || o.fleetWindow != 20*time.Second {
		t.Errorf("defaults: %+v", o)
	}
	o, err = parseFlags([]string{"--quick", "--repeat", "2", "--transport", "quic"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != time.Second || o.repeat != 2 || !slices.Equal(o.conns, []int{1000}) || !slices.Equal(o.transports, []string{"quic"}) || !slices.Equal(o.wanRates, []int{1000}) {
		t.Errorf("--quick --repeat 2: %+v", o)
	}
	for _, bad := range [][]string{
		{"--transport", "udp"},
		{"--conns", "1000,x"},
		{"--repeat", "0"},
		{"--relay-bin", "/bin/true"},
		{"--wan-rtt", "-1s"},
		{"--wan-rates", "fast"},
		{"--wan-rates", ""},
		{"--wan-queue", "0"},
		{"--wan-only", "--wan-rtt", "0"},
		{"--agents", "-1"},
		{"--agents", "20000"},
		{"--fleet-window", "10ms"},
		{"extra"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestParseLevels(t *testing.T) {
	got, err := parseLevels(" 10000, 1000,,1000")
	if err != nil || !slices.Equal(got, []int{1000, 10000}) {
		t.Errorf("parseLevels = %v, %v", got, err)
	}
	if got, err := parseLevels(""); err != nil || len(got) != 0 {
		t.Errorf("parseLevels(\"\") = %v, %v", got, err)
	}
}

// TestParseBanner reads the relay's banner as relays print it now (the
// token in the environment, or <token> and the token file) and as they
// printed it before (--token), for --relay-bin.
func TestParseBanner(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("stored-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp := "sha256:" + strings.Repeat("ab", 32)
	for _, tt := range []struct{ out, token string }{
		{"\n  HOMEPORT_TOKEN='shown-token-0123456789' agent --relay 127.0.0.1:7000 --fingerprint " + fp + " --tunnel 3390:127.0.0.1:3389\n", "shown-token-0123456789"},
		{"\n  HOMEPORT_TOKEN='<token>' agent --relay 127.0.0.1:7000 --fingerprint " + fp + " --tunnel 3390:127.0.0.1:3389\n", "stored-token-0123456789"},
		{"\n  agent --relay 127.0.0.1:7000 --token old-token-0123456789 --fingerprint " + fp + " --tunnel 3390:127.0.0.1:3389\n", "old-token-0123456789"},
	} {
		relayAddr, token, fingerprint, ok := parseBanner(tt.out, dir)
		if !ok || relayAddr != "127.0.0.1:7000" || token != tt.token || fingerprint != fp {
			t.Errorf("parseBanner(%q) = %q, %q, %q, %v", tt.out, relayAddr, token, fingerprint, ok)
		}
	}
	if _, _, _, ok := parseBanner("homeport relay ready", dir); ok {
		t.Error("parsed a banner without the agent command")
	}
}
