package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestVisitorKeys: visitor_keys and tokens[].visit, read and refused.
func TestVisitorKeys(t *testing.T) {
	const two = `tokens:
  - name: alice
    secret: alice-token-0123456789
  - name: bob
    secret: bob-token-0123456789
    visit: true
`
	tests := []struct {
		name string
		yaml string
		want []VisitorKey // nil: want an error
		err  string
	}{
		{"one token, token implied", "tokens:\n  - name: alice\n    secret: alice-token-0123456789\nvisitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n    tunnels: [rdp, rdp-udp]\n",
			[]VisitorKey{{Name: "laptop", Secret: "laptop-key-0123456789", Token: "alice", Tunnels: []string{"rdp", "rdp-udp"}}}, ""},
		{"no token: the generated one", "visitor_keys:\n  - secret: laptop-key-0123456789\n",
			[]VisitorKey{{Name: "visitor-1", Secret: "laptop-key-0123456789", Token: "default"}}, ""},
		{"visit: true", two + "visitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n    token: alice\n",
			[]VisitorKey{{Name: "laptop", Secret: "laptop-key-0123456789", Token: "alice"}, {Name: "bob", Secret: "bob-token-0123456789", Token: "bob"}}, ""},
		{"several tokens, none named", two + "visitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n",
			nil, `visitor_keys in ` + "%s" + `: item 1 (laptop): token: missing: with several tokens, say whose private tunnels the key reaches (configured: "alice", "bob")`},
		{"unknown token", two + "visitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n    token: carol\n",
			nil, `item 1 (laptop): token: "carol" is not a configured token (configured: "alice", "bob")`},
		{"a token's secret", two + "visitor_keys:\n  - name: laptop\n    secret: alice-token-0123456789\n    token: alice\n",
			nil, `visitor key "laptop" has the secret of token "alice": give it its own (or set visit: true on the token to let it visit)`},
		{"name taken by a visiting token", two + "visitor_keys:\n  - name: bob\n    secret: laptop-key-0123456789\n    token: bob\n",
			nil, `two visitor keys are named "bob"`},
		{"bad tunnel name", "visitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n    tunnels: [\"rdp!\"]\n",
			nil, `item 1 (laptop): tunnels: "rdp!": a tunnel name is 1-64 of A-Z a-z 0-9 . _ -`},
		{"short secret", "visitor_keys:\n  - name: laptop\n    secret: short\n",
			nil, `item 1 (laptop): secret: shorter than 16 characters`},
		{"unknown key", "visitor_keys:\n  - name: laptop\n    secret: laptop-key-0123456789\n    ports: 3390\n",
			nil, `item 1: unknown key "ports"`},
		{"visit not a bool", "tokens:\n  - name: alice\n    secret: alice-token-0123456789\n    visit: maybe\n",
			nil, `item 1 (alice): visit: "maybe": want true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relay.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := LoadRelay(relayFlags(t, "--config", path))
			if tt.want == nil {
				want := strings.ReplaceAll(tt.err, "%s", path)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("got %v, want an error with %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Visitors, tt.want) {
				t.Fatalf("got %+v, want %+v", c.Visitors, tt.want)
			}
		})
	}
}
