package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeExamples loads every YAML example in the README: agent
// configurations (they name a relay) with LoadAgent, the others with
// LoadRelay. Placeholders in angle brackets and an elided fingerprint are
// filled in first.
func TestReadmeExamples(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	if len(blocks) < 2 {
		t.Fatalf("%d YAML examples in the README; want the remote desktop ones at least", len(blocks))
	}
	fill := strings.NewReplacer("<a long random token>", "0123456789abcdef0123", "<the token>", "0123456789abcdef0123", `"sha256:…"`, fp)
	for i, m := range blocks {
		body := fill.Replace(m[1])
		cleanEnv(t)
		path := writeFile(t, "readme.yaml", body)
		var err error
		if regexp.MustCompile(`(?m)^relay:`).MatchString(body) {
			_, err = LoadAgent(agentFlags(t, "--config", path))
		} else {
			_, err = LoadRelay(relayFlags(t, "--config", path))
		}
		if err != nil {
			t.Errorf("README YAML example %d does not load: %v\n%s", i+1, err, body)
		}
	}
}
