package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/homeport/homeport/internal/examplefill"
)

// TestReadmeExamples loads every YAML example in the README: agent
// configurations (they name a relay) with LoadAgent, the others with
// LoadRelay. An example with placeholders must be refused as it stands,
// naming each placeholder, and load once they are filled in.
func TestReadmeExamples(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	if len(blocks) < 2 {
		t.Fatalf("%d YAML examples in the README; want the remote desktop ones at least", len(blocks))
	}
	fill := examplefill.New()
	for i, m := range blocks {
		load := func(body string) error {
			cleanEnv(t)
			path := writeFile(t, "readme.yaml", body)
			if regexp.MustCompile(`(?m)^relay:`).MatchString(body) {
				_, err := LoadAgent(agentFlags(t, "--config", path))
				return err
			}
			_, err := LoadRelay(relayFlags(t, "--config", path))
			return err
		}
		checkPlaceholdersRefused(t, fmt.Sprintf("README YAML example %d", i+1), m[1], load(m[1]))
		if err := load(fill.Fill(m[1])); err != nil {
			t.Errorf("README YAML example %d does not load with its placeholders filled in: %v\n%s", i+1, err, fill.Fill(m[1]))
		}
	}
}

// checkPlaceholdersRefused checks that err, the result of loading body
// as it stands, refuses every placeholder in body by name, outside
// comments; body without placeholders is not checked.
func checkPlaceholdersRefused(t *testing.T, where, body string, err error) {
	t.Helper()
	var phs []string
	for _, line := range strings.Split(body, "\n") {
		line, _, _ = strings.Cut(line, "#") // YAML and TOML comments
		phs = append(phs, examplefill.Placeholder.FindAllString(line, -1)...)
	}
	if len(phs) == 0 {
		return
	}
	if !errors.Is(err, ErrPlaceholder) {
		t.Errorf("%s loads with its placeholders as they stand: %v\n%s", where, err, body)
		return
	}
	for _, ph := range phs {
		if !strings.Contains(err.Error(), ph[1:len(ph)-1]+`" is a placeholder`) {
			t.Errorf("%s: the error does not name the placeholder %s:\n%v", where, ph, err)
		}
	}
}
