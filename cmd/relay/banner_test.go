package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
)

// TestBanner: the generated token is shown on the start that generated
// it, on a terminal, and then only in the environment of the agent
// command, never as an argument; otherwise the command has <token> in its
// place and the banner says where the token is.
func TestBanner(t *testing.T) {
	const secret = "Xq7vT2mR9pLw4sKz8bNc3dFhJ6yG1aUe0oIi5lPq"
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, relay.TokenFile)
	fp := "sha256:" + strings.Repeat("ab", 32)
	listen := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7001}
	generated := config.Relay{DataDir: dir, QUIC: true, Advertise: "vps.example.com"}
	configured := config.Relay{DataDir: dir, Advertise: "vps.example.com:7443", Tokens: []config.Token{
		{Name: "alice", Secret: secret}, {Name: "bob", Secret: secret + "b", File: "/etc/homeport/bob.token"}}}
	const visitKey = "Vk3pQ8rT1mZx6cWn2bLs9dFg4hJy7aUe0oIi5lPq"
	keyFile := filepath.Join(dir, relay.VisitorKeyFile)
	ownID := relay.Identity{Fingerprint: fp, Tokens: []config.Token{{Name: "default", Secret: secret}},
		Visitors: []config.VisitorKey{{Name: "default", Secret: visitKey, File: keyFile, Token: "default"}}}
	created := ownID
	created.Created = []string{filepath.Join(dir, relay.CertFile), tokenFile, keyFile}
	keyOnly := ownID
	keyOnly.Created = []string{filepath.Join(dir, relay.CertFile)}

	tests := []struct {
		name     string
		cfg      config.Relay
		id       relay.Identity
		terminal bool
		show     bool
		says     []string
	}{
		{"first start on a terminal", generated, created, true, true,
			[]string{"shown on this first start only", "kept in " + tokenFile, "--relay vps.example.com:7001"}},
		{"first start to a pipe", generated, created, false, false,
			[]string{"in place of <token>", tokenFile, "standard output is not one"}},
		{"later start on a terminal", generated, ownID, true, false,
			[]string{"in place of <token>", tokenFile, "only on the start that generated it"}},
		{"key generated, token not", generated, keyOnly, true, false,
			[]string{"in place of <token>", tokenFile, "only on the start that generated it"}},
		{"configured tokens", configured, relay.Identity{Fingerprint: fp, Tokens: configured.Tokens}, true, false,
			[]string{"one of the configured tokens (2) in place of <token>", "/etc/homeport/bob.token", "--relay vps.example.com:7443"}},
	}
	posix := regexp.MustCompile(`(?m)^  HOMEPORT_TOKEN='([^']*)' agent (--relay \S+ --fingerprint ` + fp + ` --tunnel 3390:127\.0\.0\.1:3389)$`)
	ps := regexp.MustCompile(`(?m)^  \$env:HOMEPORT_TOKEN='([^']*)'; \.\\agent\.exe (--relay \S+ --fingerprint ` + fp + ` --tunnel 3390:127\.0\.0\.1:3389)$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			newBanner(tt.cfg, tt.id, listen, tt.terminal).print(&out)
			text := out.String()
			want := "<token>"
			if tt.show {
				want = secret
			}
			for _, re := range []*regexp.Regexp{posix, ps} {
				m := re.FindStringSubmatch(text)
				if m == nil {
					t.Fatalf("no agent command of the form %s in:\n%s", re, text)
				}
				if m[1] != want {
					t.Errorf("the command's token is %q, want %q", m[1], want)
				}
				if strings.Contains(m[2], secret) || strings.Contains(m[2], "--token") {
					t.Errorf("the command's arguments carry the token: %s", m[2])
				}
			}
			// The public and the private tunnel's home commands, each for
			// a POSIX shell and PowerShell.
			wantToken := 0
			if tt.show {
				wantToken = 2
				if len(tt.id.Visitors) > 0 {
					wantToken = 4
				}
			}
			if got := strings.Count(text, secret); got != wantToken {
				t.Errorf("the token appears %d times, want %d:\n%s", got, wantToken, text)
			}
			// The visitor key: like the token, in the visitor's
			// environment only.
			if len(tt.id.Visitors) > 0 {
				wantKey, keyWord := 0, "<visitor key>"
				if tt.show {
					wantKey, keyWord = 2, visitKey
				}
				if got := strings.Count(text, visitKey); got != wantKey {
					t.Errorf("the visitor key appears %d times, want %d:\n%s", got, wantKey, text)
				}
				visit := regexp.MustCompile(`(?m)^  HOMEPORT_KEY='([^']*)' agent visit rdp --relay \S+ --fingerprint ` + fp + ` --listen 127\.0\.0\.1:3390$`)
				if m := visit.FindStringSubmatch(text); m == nil || m[1] != keyWord {
					t.Errorf("no visit command with %q in:\n%s", keyWord, text)
				}
				if !strings.Contains(text, "--tunnel rdp=private:3389:127.0.0.1:3389") || !strings.Contains(text, keyFile) {
					t.Errorf("no private home command, or no key file, in:\n%s", text)
				}
			}
			for _, s := range tt.says {
				if !strings.Contains(text, s) {
					t.Errorf("banner does not say %q:\n%s", s, text)
				}
			}
		})
	}
}

// TestReadmeBanner: the README's sample start-up message is what the relay
// prints on a first start on a terminal, to the letter.
func TestReadmeBanner(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)prints the exact agent command, for example:\n\n```\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("README: no sample banner after \"prints the exact agent command, for example:\"")
	}
	sample := string(m[1])
	fm := regexp.MustCompile(`relay key fingerprint: (\S+)`).FindStringSubmatch(sample)
	tm := regexp.MustCompile(`HOMEPORT_TOKEN='(\S+)' agent`).FindStringSubmatch(sample)
	pm := regexp.MustCompile(`token is shown on this first start only; it is kept in (\S+), readable`).FindStringSubmatch(sample)
	km := regexp.MustCompile(`HOMEPORT_KEY='(\S+)' agent`).FindStringSubmatch(sample)
	kf := regexp.MustCompile(`visitor key is shown on this first start only; it is kept in (\S+), readable`).FindStringSubmatch(sample)
	if fm == nil || tm == nil || pm == nil || km == nil || kf == nil {
		t.Fatalf("README sample banner lacks the fingerprint, the token, the token file, the visitor key or its file:\n%s", sample)
	}
	var out bytes.Buffer
	banner{
		listen: "[::]:7000", quic: true, fingerprint: fm[1], relayAddr: "203.0.113.7:7000",
		host: "203.0.113.7", guessed: true, token: tm[1], tokenFile: pm[1],
		visitKey: km[1], keyFile: kf[1], visitorKeys: 1,
	}.print(&out)
	if got := strings.TrimPrefix(out.String(), "\n"); strings.TrimSpace(got) != strings.TrimSpace(sample) {
		t.Errorf("README sample banner:\n%s\nthe relay prints:\n%s", sample, got)
	}
}
