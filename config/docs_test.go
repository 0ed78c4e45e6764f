package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/homeport/homeport/internal/examplefill"
)

// docFile is the configuration reference that these tests keep true to
// the code.
const docFile = "../docs/configuration.md"

// docPrograms describes, per program, where its settings are documented.
var docPrograms = []struct {
	name     string
	heading  string // heading of the program's settings table in docFile
	settings func() []Setting
	internal func() []setting
	other    func() []setting
	flags    func(*pflag.FlagSet)
	example  string
}{
	{"relay", "## Relay settings", RelaySettings, relaySettings, agentSettings, RelayFlags, "../deploy/relay.example.yaml"},
	{"agent", "## Agent settings", AgentSettings, agentSettings, relaySettings, AgentFlags, "../deploy/agent.example.yaml"},
	{"visitor", "## Visitor settings", VisitorSettings, visitorSettings, otherThanVisitor, VisitorFlags, "../deploy/visitor.example.yaml"},
}

// TestDocSettings checks that every setting of each program is in its
// table in docs/configuration.md, with its flag (and shorthand),
// environment variable and default, that the table lists nothing else,
// and that the program's example file in deploy/ shows the setting.
func TestDocSettings(t *testing.T) {
	doc := readDoc(t)
	for _, w := range []string{"`--config", "`-c", "`HOMEPORT_CONFIG`", "`.yaml`", "`.yml`", "`.toml`", "`.json`"} {
		if !strings.Contains(doc, w) {
			t.Errorf("%s does not mention %s", docFile, w)
		}
	}
	for _, p := range docPrograms {
		t.Run(p.name, func(t *testing.T) {
			rows := settingsTable(t, doc, p.heading)
			example := exampleConfig(t, p.example, p.internal(), p.other(), p.name)
			fs := pflag.NewFlagSet(p.name, pflag.ContinueOnError)
			p.flags(fs)

			known := map[string]bool{}
			for _, s := range p.settings() {
				known[s.Key] = true
				t.Run(s.Key, func(t *testing.T) {
					// Anywhere in the reference.
					want := []string{"`" + s.Key + "`"}
					if s.Flag != "" {
						want = append(want, "`--"+s.Flag+"`")
					}
					if s.Env != "" {
						want = append(want, "`"+s.Env+"`")
					}
					for _, w := range want {
						if !strings.Contains(doc, w) {
							t.Errorf("%s does not mention %s", docFile, w)
						}
					}

					// In the program's table, with the right cells.
					row, ok := rows[s.Key]
					if !ok {
						t.Errorf("%s: no row for %s in the table under %q", docFile, s.Key, p.heading)
					} else {
						checkRow(t, s, row, fs)
					}

					// In the example file, set or commented out.
					if !example.IsSet(s.Key) {
						t.Errorf("%s does not show %s (neither set nor commented out, in its section)", p.example, s.Key)
					}
				})
			}
			for key := range rows {
				if !known[key] {
					t.Errorf("%s: the table under %q has a row for %s, which is not a setting of the %s", docFile, p.heading, key, p.name)
				}
			}
		})
	}
}

// checkRow checks a table row: key | flag | environment variable |
// default | meaning.
func checkRow(t *testing.T, s Setting, row []string, fs *pflag.FlagSet) {
	t.Helper()
	flagCell, envCell, defCell := row[1], row[2], row[3]
	if s.Flag == "" {
		if strings.Contains(flagCell, "`-") {
			t.Errorf("flag column %q: %s has no flag", flagCell, s.Key)
		}
	} else {
		if !strings.Contains(flagCell, "`--"+s.Flag+"`") {
			t.Errorf("flag column %q: want `--%s`", flagCell, s.Flag)
		}
		f := fs.Lookup(s.Flag)
		if f == nil {
			t.Fatalf("flag --%s is not registered", s.Flag)
		}
		if f.Shorthand != "" && !strings.Contains(flagCell, "`-"+f.Shorthand+"`") {
			t.Errorf("flag column %q: want the shorthand `-%s`", flagCell, f.Shorthand)
		}
	}
	if s.Env == "" {
		if strings.Contains(envCell, EnvPrefix) {
			t.Errorf("environment column %q: %s has no environment variable", envCell, s.Key)
		}
	} else if envCell != "`"+s.Env+"`" {
		t.Errorf("environment column %q: want `%s`", envCell, s.Env)
	}
	if s.Default != "" && defCell != "`"+s.Default+"`" {
		t.Errorf("default column %q: want `%s`", defCell, s.Default)
	}
}

func readDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docLine is a line of docFile outside fenced code blocks.
type docLine struct {
	n    int // 1-based line number
	text string
}

// proseLines returns the lines of doc outside fenced code blocks.
func proseLines(doc string) []docLine {
	var out []docLine
	inFence := false
	for i, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "```") {
			inFence = !inFence
			continue
		}
		if !inFence {
			out = append(out, docLine{i + 1, l})
		}
	}
	return out
}

// settingsTable returns the rows of the first settings table (header
// "| key | flag | ...") under heading, by key, each as its five trimmed
// cells.
func settingsTable(t *testing.T, doc, heading string) map[string][]string {
	t.Helper()
	lines := proseLines(doc)
	i := 0
	for i < len(lines) && lines[i].text != heading {
		i++
	}
	if i == len(lines) {
		t.Fatalf("%s: no heading %q", docFile, heading)
	}
	i++
	for i < len(lines) && !strings.HasPrefix(lines[i].text, "| key | flag |") && !strings.HasPrefix(lines[i].text, "## ") {
		i++
	}
	if i == len(lines) || !strings.HasPrefix(lines[i].text, "| key | flag |") {
		t.Fatalf("%s: no table \"| key | flag | ...\" under %q", docFile, heading)
	}
	rows := map[string][]string{}
	for i++; i < len(lines) && strings.HasPrefix(lines[i].text, "|"); i++ {
		l := lines[i]
		cells := strings.Split(strings.Trim(l.text, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if strings.Trim(cells[0], "-: ") == "" {
			continue // the separator under the header
		}
		if len(cells) != 5 {
			t.Errorf("%s:%d: %d cells, want 5 (key | flag | environment variable | default | meaning)", docFile, l.n, len(cells))
			continue
		}
		key := strings.Trim(cells[0], "`")
		if cells[0] != "`"+key+"`" {
			t.Errorf("%s:%d: key %q: want it in backquotes", docFile, l.n, cells[0])
		}
		if _, dup := rows[key]; dup {
			t.Errorf("%s:%d: second row for %s", docFile, l.n, key)
		}
		rows[key] = cells
	}
	return rows
}

// commentedKey matches an example line that is a commented-out setting,
// such as "# data_dir: /var/lib/homeport" or "  # file: relay.log", but
// not a prose comment such as "# Default: ...".
var commentedKey = regexp.MustCompile(`^(\s*)#\s?([a-z][a-z_]*:(\s.*)?)$`)

// exampleConfig reads an example YAML file with its commented-out settings
// uncommented in place, so that such a setting counts only where it would
// take effect (log.file must sit in the log section). It fails when the
// result holds a key that is not a setting of the program, so a commented
// example cannot be misspelled either.
func exampleConfig(t *testing.T, path string, settings, other []setting, program string) *viper.Viper {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		if m := commentedKey.FindStringSubmatch(l); m != nil {
			lines[i] = m[1] + m[2]
		}
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(strings.NewReader(strings.Join(lines, "\n"))); err != nil {
		t.Fatalf("%s with its settings uncommented: %v", path, err)
	}
	if err := checkKeys(v.AllSettings(), "", settings, other, path, program); err != nil {
		t.Fatalf("with its settings uncommented: %v", err)
	}
	return v
}

// docBlock is a fenced code block of docFile.
type docBlock struct {
	lang    string // the fence's info string
	body    string
	heading string // the nearest heading above it
	line    int    // line number of the opening fence
}

func docBlocks(doc string) []docBlock {
	var (
		out     []docBlock
		cur     *docBlock
		heading string
	)
	for i, l := range strings.Split(doc, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &docBlock{lang: strings.TrimSpace(strings.TrimPrefix(l, "```")), heading: heading, line: i + 1}
		case cur != nil && strings.HasPrefix(l, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body += l + "\n"
		case strings.HasPrefix(l, "#"):
			heading = l
		}
	}
	return out
}

// TestDocExamples loads every YAML, TOML and JSON block of
// docs/configuration.md as a relay or an agent configuration, and checks
// that the blocks under one heading in different formats (the "same
// example in YAML, TOML and JSON") give the same configuration.
func TestDocExamples(t *testing.T) {
	doc := readDoc(t)
	type loaded struct {
		block docBlock
		cfg   any
	}
	groups := map[string][]loaded{}
	formats := map[string]map[string]bool{"relay": {}, "agent": {}, "visitor": {}}
	// One filler for all blocks: the same placeholder gets the same value
	// in the YAML, TOML and JSON forms of an example.
	fill := examplefill.New()
	for _, b := range docBlocks(doc) {
		ext := map[string]string{"yaml": ".yaml", "toml": ".toml", "json": ".json"}[b.lang]
		if ext == "" {
			continue
		}
		t.Run(fmt.Sprintf("line%d-%s", b.line, b.lang), func(t *testing.T) {
			cleanEnv(t)
			path := filepath.Join(t.TempDir(), "example"+ext)
			// As it stands, a block with placeholders is refused.
			if examplefill.Placeholder.MatchString(b.body) {
				if err := os.WriteFile(path, []byte(b.body), 0o600); err != nil {
					t.Fatal(err)
				}
				_, errR := LoadRelay(relayFlags(t, "--config", path))
				_, errA := LoadAgent(agentFlags(t, "--config", path))
				_, errV := LoadVisitor(visitorFlags(t, "--config", path))
				where := fmt.Sprintf("%s:%d: %s block", docFile, b.line, b.lang)
				if regexp.MustCompile(`(?m)^\s*"?visits"?\s*[:=]`).MatchString(b.body) {
					checkPlaceholdersRefused(t, where, b.body, errV)
				} else if regexp.MustCompile(`(?m)^\s*"?relay"?\s*[:=]`).MatchString(b.body) {
					checkPlaceholdersRefused(t, where, b.body, errA)
				} else {
					checkPlaceholdersRefused(t, where, b.body, errR)
				}
			}
			if err := os.WriteFile(path, []byte(fill.Fill(b.body)), 0o600); err != nil {
				t.Fatal(err)
			}
			r, errR := LoadRelay(relayFlags(t, "--config", path))
			r.File = "" // the blocks are compared by what they set
			if errR == nil {
				groups[b.heading] = append(groups[b.heading], loaded{b, r})
				formats["relay"][b.lang] = true
				return
			}
			a, errA := LoadAgent(agentFlags(t, "--config", path))
			a.File = ""
			if errA == nil {
				groups[b.heading] = append(groups[b.heading], loaded{b, a})
				formats["agent"][b.lang] = true
				return
			}
			v, errV := LoadVisitor(visitorFlags(t, "--config", path))
			v.File = ""
			if errV == nil {
				groups[b.heading] = append(groups[b.heading], loaded{b, v})
				formats["visitor"][b.lang] = true
				return
			}
			t.Errorf("%s:%d: %s block loads neither as a relay configuration:\n%v\nnor as an agent configuration:\n%v\nnor as a visitor configuration:\n%v", docFile, b.line, b.lang, errR, errA, errV)
		})
	}
	for heading, g := range groups {
		for _, l := range g[1:] {
			if l.block.lang != g[0].block.lang && !reflect.DeepEqual(l.cfg, g[0].cfg) {
				t.Errorf("%s: under %q, the %s block (line %d) and the %s block (line %d) differ:\n%+v\n%+v",
					docFile, heading, g[0].block.lang, g[0].block.line, l.block.lang, l.block.line, g[0].cfg, l.cfg)
			}
		}
	}
	for program, langs := range formats {
		want := []string{"yaml", "toml", "json"}
		if program == "visitor" {
			want = want[:1] // its settings are the agent's, shown in all three
		}
		for _, lang := range want {
			if !langs[lang] {
				t.Errorf("%s has no %s example of the %s configuration", docFile, lang, program)
			}
		}
	}
}
