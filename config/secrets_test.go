package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// goodSecret is a token no document shows.
const goodSecret = "Xq7vT2mR9pLw4sKz8bNc3dFh"

// TestPlaceholdersRefused: a placeholder left in a token, a tokens
// secret, a fingerprint or a dynamic DNS secret stops loading with an
// error that names the setting and says what to put there.
func TestPlaceholdersRefused(t *testing.T) {
	const ph = "<a long random token: openssl rand -base64 32>"
	agentOK := []string{"--relay", "vps:7000", "--token", goodSecret, "--fingerprint", fp, "--tunnel", "3390:127.0.0.1:3389"}
	tests := []struct {
		name    string
		program string
		args    []string
		env     map[string]string
		file    string
		want    []string
	}{
		{name: "relay flag", program: "relay", args: []string{"--token", ph},
			want: []string{"flag --token", ph, "is a placeholder", "openssl rand", "leave token, token_file and tokens out"}},
		{name: "relay env", program: "relay", env: map[string]string{"HOMEPORT_TOKEN": "<token>"},
			want: []string{"environment variable HOMEPORT_TOKEN", `"<token>" is a placeholder`}},
		{name: "relay file", program: "relay", file: "token: \"" + ph + "\"\n",
			want: []string{"token in ", ph, "is a placeholder"}},
		{name: "relay tokens", program: "relay", file: "tokens:\n  - {name: alice, secret: \"<alice's token>\"}\n",
			want: []string{"tokens in ", "item 1 (alice): secret:", `"<alice's token>" is a placeholder`, "openssl rand"}},
		{name: "relay ddns", program: "relay", file: "ddns:\n  names: [a.example.com]\n  provider: cloudflare\n  cloudflare: {api_token: \"<your API token>\", zone: example.com}\n",
			want: []string{"ddns.cloudflare.api_token in ", `"<your API token>" is a placeholder`}},
		{name: "agent token", program: "agent", args: append(slices.Clone(agentOK), "--token", "<the token the relay printed>"),
			want: []string{"flag --token", `"<the token the relay printed>" is a placeholder`, "the one it printed"}},
		{name: "agent fingerprint", program: "agent", args: append(slices.Clone(agentOK), "--fingerprint", "<the relay's fingerprint: sha256:…>"),
			want: []string{"flag --fingerprint", "is a placeholder", "put the fingerprint the relay printed there"}},
		{name: "agent ddns password", program: "agent", args: agentOK,
			file: "ddns:\n  names: [a.example.com]\n  provider: dyndns2\n  dyndns2: {server: \"https://dyn.example.com\", username: me, password: \"<your password>\", nameserver: \"ns1.example.com:53\"}\n",
			want: []string{"ddns.dyndns2.password in ", `"<your password>" is a placeholder`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := slices.Clone(tt.args)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, tt.program+".yaml", tt.file))
			}
			var err error
			if tt.program == "relay" {
				_, err = LoadRelay(relayFlags(t, args...))
			} else {
				_, err = LoadAgent(agentFlags(t, args...))
			}
			if !errors.Is(err, ErrPlaceholder) {
				t.Fatalf("error %v; want ErrPlaceholder", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// publishedExamples are tokens that homeport's documentation showed as
// working values; publishedTokens holds their digests.
var publishedExamples = []string{
	"alice-0c3d8f61b2a94e57a1f0",
	"bob-7e2a90c4d15b48f3b6c1",
	"A0mFSk_giiil8R4udLL9fowMLT32tBgm05aEUZfa7TM",
	"replace-with-a-long-random-string",
	"the-token-the-relay-printed",
	"dQ4w9WgXcQ_k7Rp2LmZ8vN3xT6yB1sHj5fEaUoCi0Ge",
}

// TestPublishedRefused: a token the documentation shows is refused
// wherever it is given, by the relay and the agent alike.
func TestPublishedRefused(t *testing.T) {
	if len(publishedExamples) != len(publishedTokens) {
		t.Fatalf("%d published examples, %d digests", len(publishedExamples), len(publishedTokens))
	}
	for i, tok := range publishedExamples {
		// Not named by the token: the temporary paths in the errors
		// carry the test's name.
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			cleanEnv(t)
			tokenFile := writeFile(t, "token", tok+"\n")
			for _, c := range []struct {
				where string
				load  func() error
			}{
				{"flag --token", func() error { _, err := LoadRelay(relayFlags(t, "--token", tok)); return err }},
				{"tokens in ", func() error {
					_, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", "tokens:\n  - {name: a, secret: \""+tok+"\"}\n")))
					return err
				}},
				{"flag --token-file", func() error { _, err := LoadRelay(relayFlags(t, "--token-file", tokenFile)); return err }},
				{"flag --token", func() error {
					_, err := LoadAgent(agentFlags(t, "--relay", "vps:7000", "--token", tok, "--fingerprint", fp, "--tunnel", "3390:127.0.0.1:3389"))
					return err
				}},
			} {
				err := c.load()
				if !errors.Is(err, ErrPublished) || !strings.Contains(err.Error(), c.where) || !strings.Contains(err.Error(), "anyone may know it") {
					t.Errorf("%s: error %v; want ErrPublished naming the setting", c.where, err)
				}
				if err != nil && strings.Contains(err.Error(), tok) {
					t.Errorf("%s: the error shows the token: %v", c.where, err)
				}
			}
		})
	}
	cleanEnv(t)
	if _, err := LoadRelay(relayFlags(t, "--token", goodSecret)); err != nil {
		t.Errorf("an unpublished token: %v", err)
	}
}

// secretPosition finds values in the places where a document writes a
// secret: a token, secret or password key in YAML, TOML or JSON, the
// HOMEPORT_TOKEN variable (POSIX shells, PowerShell, .env) and --token.
var secretPosition = regexp.MustCompile(`(?i)(?:(?:^|[\s{,"'])(?:token|secret|password|api_token|zone_token|access_key_secret|secret_access_key|security_token|session_token|secret_key|key_secret|key)["']?\s*[:=]\s*|HOMEPORT_TOKEN=|HOMEPORT_KEY=|--token[ =]|--key[ =])("[^"\n]*"|'[^'\n]*'|[^\s"',}#]+)`)

// TestPublishedInDocs scans the README, docs/*.md and the files of
// deploy/ (the Helm chart and its examples too) for values in secret
// positions. Each must be unusable: a
// placeholder ("<…>"), elided ("…"), a variable's value ("${…}", "$…"),
// empty, shorter than a token may be, or a published token the relay
// refuses. A working token added to a document fails here.
func TestPublishedInDocs(t *testing.T) {
	files := []string{"../README.md"}
	for _, pattern := range []string{"../docs/*.md", "../deploy/*", "../deploy/*/*", "../deploy/*/*/*", "../deploy/*/*/*/*", "../deploy/.env"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	seen := 0
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.IsDir() || strings.HasSuffix(f, ".go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(b), "\n") {
			for _, m := range secretPosition.FindAllStringSubmatch(line, -1) {
				seen++
				v := strings.Trim(m[1], `"'`)
				switch {
				case IsPlaceholder(v), strings.Contains(v, "…"), strings.HasPrefix(v, "$"),
					len(v) < MinSecretLen, isPublished(v):
				default:
					t.Errorf("%s:%d: %q looks like a working secret: write a placeholder (\"<…>\") instead", f, n+1, v)
				}
			}
		}
	}
	if seen < 20 {
		t.Errorf("found only %d values in secret positions; is the pattern still right?", seen)
	}
	// The pattern finds what it should.
	for _, s := range []string{`token: "abcdefghijklmnopqrst"`, `  secret = 'abcdefghijklmnopqrst'`, `{"secret": "abcdefghijklmnopqrst"}`,
		`HOMEPORT_TOKEN=abcdefghijklmnopqrst agent`, `$env:HOMEPORT_TOKEN='abcdefghijklmnopqrst'; .\agent.exe`, `agent --token abcdefghijklmnopqrst`,
		`    key_secret: "abcdefghijklmnopqrst"`, `HOMEPORT_KEY='abcdefghijklmnopqrst' agent visit`, `agent visit --key abcdefghijklmnopqrst`, `key: abcdefghijklmnopqrst`} {
		if m := secretPosition.FindStringSubmatch(s); m == nil || strings.Trim(m[1], `"'`) != "abcdefghijklmnopqrst" {
			t.Errorf("pattern misses the secret in %q: %q", s, m)
		}
	}
}

// TestTokenFiles: token_file, secret_file and the agent's token_file read
// the secret from a file, less its newline; a missing, empty, short or
// oversized file, or one given together with the value itself, is an
// error naming the setting and the file; a file others may read loads,
// with a warning that names it and the fix.
func TestTokenFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", goodSecret+"\n", 0o600)
	crlf := write("crlf", goodSecret+"2\r\n", 0o600)
	loose := write("loose", goodSecret+"3\n", 0o644)
	empty := write("empty", "\n", 0o600)
	short := write("short", "abc\n", 0o600)
	huge := write("huge", strings.Repeat("x", 5000), 0o600)
	ph := write("ph", "<a long random token>\n", 0o600)
	missing := filepath.Join(dir, "missing")
	agent := []string{"--relay", "vps:7000", "--fingerprint", fp, "--tunnel", "3390:127.0.0.1:3389"}

	t.Run("relay", func(t *testing.T) {
		cleanEnv(t)
		c, err := LoadRelay(relayFlags(t, "--token-file", good))
		if err != nil || !reflect.DeepEqual(c.Tokens, []Token{{Name: "default", Secret: goodSecret, File: good}}) || c.Warnings != nil {
			t.Errorf("--token-file: %+v, %v", c, err)
		}
		t.Setenv("HOMEPORT_TOKEN_FILE", crlf)
		c, err = LoadRelay(relayFlags(t))
		if err != nil || len(c.Tokens) != 1 || c.Tokens[0].Secret != goodSecret+"2" {
			t.Errorf("HOMEPORT_TOKEN_FILE: %+v, %v", c.Tokens, err)
		}
		cleanEnv(t)
		p := writeFile(t, "relay.yaml", "tokens:\n  - {name: alice, secret_file: "+good+", ports: 3390}\n  - {name: bob, secret: "+goodSecret+"b}\n")
		c, err = LoadRelay(relayFlags(t, "--config", p))
		want := []Token{{Name: "alice", Secret: goodSecret, File: good, Ports: PortRanges{{3390, 3390}}}, {Name: "bob", Secret: goodSecret + "b"}}
		if err != nil || !reflect.DeepEqual(c.Tokens, want) {
			t.Errorf("secret_file: %+v, %v", c.Tokens, err)
		}
	})
	t.Run("agent", func(t *testing.T) {
		cleanEnv(t)
		c, err := LoadAgent(agentFlags(t, append(slices.Clone(agent), "--token-file", good)...))
		if err != nil || c.Token != goodSecret {
			t.Errorf("--token-file: %q, %v", c.Token, err)
		}
		t.Setenv("HOMEPORT_TOKEN_FILE", crlf)
		c, err = LoadAgent(agentFlags(t, agent...))
		if err != nil || c.Token != goodSecret+"2" {
			t.Errorf("HOMEPORT_TOKEN_FILE: %q, %v", c.Token, err)
		}
		cleanEnv(t)
		p := writeFile(t, "agent.yaml", "token_file: "+good+"\n")
		c, err = LoadAgent(agentFlags(t, append(slices.Clone(agent), "--config", p)...))
		if err != nil || c.Token != goodSecret {
			t.Errorf("token_file in a file: %q, %v", c.Token, err)
		}
	})

	t.Run("loose", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("no mode bits")
		}
		cleanEnv(t)
		check := func(what string, ws []Warning, setting string) {
			t.Helper()
			if len(ws) != 1 || ws[0].File != loose || !strings.Contains(ws[0].Setting, setting) || !strings.Contains(ws[0].Fix, "chmod 600 "+loose) {
				t.Errorf("%s: warnings %+v; want one naming %s, %s and the chmod", what, ws, loose, setting)
			}
		}
		r, err := LoadRelay(relayFlags(t, "--token-file", loose))
		if err != nil {
			t.Fatal(err)
		}
		check("relay", r.Warnings, "flag --token-file")
		p := writeFile(t, "relay.yaml", "tokens:\n  - {name: alice, secret_file: "+loose+"}\n")
		if r, err = LoadRelay(relayFlags(t, "--config", p)); err != nil {
			t.Fatal(err)
		}
		check("relay secret_file", r.Warnings, "item 1 (alice): secret_file")
		a, err := LoadAgent(agentFlags(t, append(slices.Clone(agent), "--token-file", loose)...))
		if err != nil {
			t.Fatal(err)
		}
		check("agent", a.Warnings, "flag --token-file")
	})

	errs := []struct {
		name    string
		program string
		args    []string
		file    string
		want    []string
	}{
		{"relay both", "relay", []string{"--token", goodSecret, "--token-file", good}, "", []string{"flag --token-file", "give token or token_file, not both"}},
		{"relay missing", "relay", []string{"--token-file", missing}, "", []string{"flag --token-file", missing, "no such file"}},
		{"relay directory", "relay", []string{"--token-file", dir}, "", []string{"flag --token-file", dir, "not a regular file"}},
		{"relay empty", "relay", []string{"--token-file", empty}, "", []string{"flag --token-file", empty, "is empty"}},
		{"relay short", "relay", []string{"--token-file", short}, "", []string{"flag --token-file", "the token in " + short, "shorter than 16"}},
		{"relay huge", "relay", []string{"--token-file", huge}, "", []string{"flag --token-file", huge, "longer than 4096 bytes"}},
		{"relay placeholder", "relay", []string{"--token-file", ph}, "", []string{"flag --token-file", "the token in " + ph, "is a placeholder"}},
		{"secret_file both", "relay", nil, "tokens:\n  - {name: a, secret: " + goodSecret + ", secret_file: " + good + "}\n",
			[]string{"tokens in", "item 1 (a): secret_file: give secret or secret_file, not both"}},
		{"secret_file missing", "relay", nil, "tokens:\n  - {name: a, secret_file: " + missing + "}\n",
			[]string{"tokens in", "item 1 (a): secret_file:", missing, "no such file"}},
		{"secret_file empty path", "relay", nil, "tokens:\n  - {name: a, secret_file: \"\"}\n",
			[]string{"item 1 (a): secret_file: empty"}},
		{"secret_file short", "relay", nil, "tokens:\n  - {name: a, secret_file: " + short + "}\n",
			[]string{"item 1 (a): secret_file: the secret in " + short, "shorter than 16"}},
		{"agent both", "agent", append(slices.Clone(agent), "--token", goodSecret, "--token-file", good), "", []string{"flag --token-file", "not both"}},
		{"agent missing", "agent", append(slices.Clone(agent), "--token-file", missing), "", []string{"flag --token-file", missing, "no such file"}},
		{"agent empty", "agent", append(slices.Clone(agent), "--token-file", empty), "", []string{"flag --token-file", empty, "is empty"}},
		{"agent short", "agent", append(slices.Clone(agent), "--token-file", short), "", []string{"flag --token-file", short, "shorter than 16"}},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			args := slices.Clone(tt.args)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, tt.program+".yaml", tt.file))
			}
			var err error
			if tt.program == "relay" {
				_, err = LoadRelay(relayFlags(t, args...))
			} else {
				_, err = LoadAgent(agentFlags(t, args...))
			}
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
