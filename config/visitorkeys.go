package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// VisitorKey is one accepted visitor credential of the relay: it lets a
// visitor reach private tunnels of one token's agents, and nothing else.
type VisitorKey struct {
	// Name identifies the key in logs, in the relay's status and to the
	// home agent (whose tunnel may list the names it accepts).
	Name string
	// Secret is the shared secret; it never crosses the wire.
	Secret string
	// File is the file the secret was read from ("secret_file").
	File string
	// Token names the token whose agents' private tunnels the key
	// reaches.
	Token string
	// Tunnels, when not empty, are the only private tunnels (by name)
	// the key reaches; empty: all of the token's.
	Tunnels []string
}

// String hides the secret.
func (k VisitorKey) String() string { return fmt.Sprintf("visitor key %q", k.Name) }

// Allows reports whether the key may reach the private tunnel named name.
func (k VisitorKey) Allows(name string) bool {
	if len(k.Tunnels) == 0 {
		return true
	}
	for _, t := range k.Tunnels {
		if t == name {
			return true
		}
	}
	return false
}

// keyNameRE is what a visitor key's or tunnel's name may be (the wire's
// tunnel name rule).
var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// visitorKeys reads the visitor_keys list, and the tokens with visit: true
// as keys named after them. Each key names a configured token (with one
// token, it may leave it out); names are unique among keys, and a key's
// secret is no token's.
func (l *loader) visitorKeys(tokens []Token) []VisitorKey {
	var out []VisitorKey
	for i, item := range l.list("visitor_keys") {
		m, err := section(item, "name", "secret", "secret_file", "token", "tunnels")
		if err != nil {
			l.fail("visitor_keys", fmt.Errorf("item %d: %w", i+1, err))
			continue
		}
		k := VisitorKey{Name: "visitor-" + strconv.Itoa(i+1)}
		if n, ok := m["name"]; ok {
			k.Name = fmt.Sprint(n)
		}
		where := fmt.Sprintf("item %d (%s)", i+1, k.Name)
		if !keyNameRE.MatchString(k.Name) {
			l.fail("visitor_keys", fmt.Errorf("%s: name: want 1-64 of A-Z a-z 0-9 . _ -", where))
		}
		k.Secret, k.File = l.itemSecret("visitor_keys", where, m)
		switch t, ok := m["token"]; {
		case ok:
			k.Token = strings.TrimSpace(fmt.Sprint(t))
			if !hasToken(tokens, k.Token) {
				l.fail("visitor_keys", fmt.Errorf("%s: token: %q is not a configured token (%s)", where, k.Token, tokenNames(tokens)))
			}
		case len(tokens) == 1:
			k.Token = tokens[0].Name
		case len(tokens) == 0:
			// The generated token's, named "default".
			k.Token = "default"
		default:
			l.fail("visitor_keys", fmt.Errorf("%s: token: missing: with several tokens, say whose private tunnels the key reaches (%s)", where, tokenNames(tokens)))
		}
		if v, ok := m["tunnels"]; ok {
			names, err := nameList(v)
			if err != nil {
				l.fail("visitor_keys", fmt.Errorf("%s: tunnels: %w", where, err))
			}
			k.Tunnels = names
		}
		out = append(out, k)
	}
	for _, t := range tokens {
		if t.Visit {
			out = append(out, VisitorKey{Name: t.Name, Secret: t.Secret, File: t.File, Token: t.Name})
		}
	}
	names := map[string]bool{}
	for _, k := range out {
		if names[k.Name] {
			l.fail("visitor_keys", fmt.Errorf("two visitor keys are named %q (a token with visit: true is a key named after it)", k.Name))
		}
		names[k.Name] = true
		for _, t := range tokens {
			if k.Secret != "" && k.Secret == t.Secret && !(t.Visit && t.Name == k.Name) {
				l.fail("visitor_keys", fmt.Errorf("visitor key %q has the secret of token %q: give it its own (or set visit: true on the token to let it visit)", k.Name, t.Name))
			}
		}
	}
	return out
}

// itemSecret reads the secret of a list item of key (tokens, visitor_keys):
// its secret, or the file its secret_file names; where names the item in
// errors.
func (l *loader) itemSecret(key, where string, m map[string]any) (secret, file string) {
	_, hasSecret := m["secret"]
	f, hasFile := m["secret_file"]
	if !hasFile {
		s, _ := m["secret"].(string)
		if err := checkSecret(s); err != nil {
			l.fail(key, fmt.Errorf("%s: secret: %w", where, err))
		}
		return s, ""
	}
	file, _ = f.(string)
	file = strings.TrimSpace(file)
	var loose bool
	var err error
	switch {
	case hasSecret:
		err = fmt.Errorf("give secret or secret_file, not both")
	case file == "":
		err = fmt.Errorf("empty: give the path of a file that holds the secret")
	default:
		if secret, loose, err = readSecretFile(file); err == nil {
			if err = checkSecret(secret); err != nil {
				err = fmt.Errorf("the secret in %s: %w", file, err)
			}
		}
	}
	if err != nil {
		l.fail(key, fmt.Errorf("%s: secret_file: %w", where, err))
	}
	if loose {
		l.warns = append(l.warns, secretFileWarning(fmt.Sprintf("%s: %s: secret_file", l.where(key), where), file))
	}
	return secret, file
}

// nameList reads a list of tunnel names: a list, or one comma-separated
// string.
func nameList(v any) ([]string, error) {
	items, err := textList(v, "want a list of tunnel names, e.g. [rdp, rdp-udp]")
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if !keyNameRE.MatchString(it) {
			return nil, fmt.Errorf("%q: a tunnel name is 1-64 of A-Z a-z 0-9 . _ -", it)
		}
	}
	return items, nil
}

func hasToken(tokens []Token, name string) bool {
	for _, t := range tokens {
		if t.Name == name {
			return true
		}
	}
	// With no tokens configured, the generated one is "default".
	return len(tokens) == 0 && name == "default"
}

func tokenNames(tokens []Token) string {
	if len(tokens) == 0 {
		return `the generated one is "default"`
	}
	names := make([]string, len(tokens))
	for i, t := range tokens {
		names[i] = strconv.Quote(t.Name)
	}
	return "configured: " + strings.Join(names, ", ")
}

// boolValue reads a yes/no value of a file's section.
func boolValue(v any) (bool, error) {
	switch v := v.(type) {
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return false, fmt.Errorf("%q: want true or false", v)
		}
		return b, nil
	}
	return false, fmt.Errorf("want true or false, got %v", v)
}
