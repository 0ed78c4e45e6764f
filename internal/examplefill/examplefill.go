// Package examplefill fills in the placeholders of homeport's example
// configurations (README, docs, deploy), for the tests that load them.
// The examples write every secret as text in angle brackets, which the
// programs refuse; a test gives each placeholder a fresh value of the
// right form.
package examplefill

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// Placeholder matches a quoted placeholder: "<…>" or '<…>'.
var Placeholder = regexp.MustCompile(`"<[^"<>\n]*>"|'<[^'<>\n]*>'`)

// keyBefore finds the key a value on the same line belongs to, in YAML
// ("key: "), TOML ("key = ") or JSON ("\"key\": ").
var keyBefore = regexp.MustCompile(`([A-Za-z_]+)"?\s*[:=]\s*$`)

// Filler gives each distinct placeholder its own generated value, the
// same value wherever the placeholder appears: a relay's token and the
// agent's copy of it are written as the same placeholder, so they match
// once filled.
type Filler struct {
	values map[string]string
}

// New returns a Filler with fresh values.
func New() *Filler { return &Filler{values: map[string]string{}} }

// Fill returns text with every placeholder replaced, in the quotes it
// had: a fingerprint ("sha256:" and 64 hex digits) where the key is
// fingerprint, base64 where it is key_secret, a UUID where the
// placeholder asks for one, else a random token of 43 characters.
func (f *Filler) Fill(text string) string {
	lines := strings.SplitAfter(text, "\n")
	for i, line := range lines {
		locs := Placeholder.FindAllStringIndex(line, -1)
		for j := len(locs) - 1; j >= 0; j-- {
			lo, hi := locs[j][0], locs[j][1]
			key := ""
			if m := keyBefore.FindStringSubmatch(line[:lo]); m != nil {
				key = strings.ToLower(m[1])
			}
			ph := line[lo:hi]
			quote := ph[:1]
			line = line[:lo] + quote + f.Value(key, ph[1:len(ph)-1]) + quote + line[hi:]
		}
		lines[i] = line
	}
	return strings.Join(lines, "")
}

// Value returns the value for placeholder (without its quotes) under key.
func (f *Filler) Value(key, placeholder string) string {
	if v, ok := f.values[placeholder]; ok {
		return v
	}
	b := make([]byte, 32)
	rand.Read(b)
	var v string
	switch {
	case key == "fingerprint":
		v = "sha256:" + hex.EncodeToString(b)
	case key == "key_secret":
		v = base64.StdEncoding.EncodeToString(b)
	case strings.Contains(placeholder, "UUID"):
		h := hex.EncodeToString(b[:16])
		v = fmt.Sprintf("%s-%s-%s-%s-%s", h[:8], h[8:12], h[12:16], h[16:20], h[20:])
	default:
		v = base64.RawURLEncoding.EncodeToString(b)
	}
	f.values[placeholder] = v
	return v
}
