package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const fp2 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

// TestRelaysLoad: a relays list gives each relay its own pin, secret and
// transport, with the top-level token (or key) and transport as defaults;
// Relay and the other single-relay fields repeat the first item.
func TestRelaysLoad(t *testing.T) {
	cleanEnv(t)
	keyFile := filepath.Join(t.TempDir(), "vps2.key")
	if err := os.WriteFile(keyFile, []byte("second-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := "key: " + testKey + "\ntransport: tcp\nvisits: [{tunnel: rdp, listen: \"127.0.0.1:3390\"}]\nrelays:\n" +
		"  - {address: VPS1.example.com:7000, fingerprint: \"" + strings.ToUpper(fp[7:]) + "\"}\n" +
		"  - address: \"[2001:db8::1]:7000\"\n    fingerprint: \"" + fp2 + "\"\n    key_file: " + keyFile + "\n    transport: quic\n" +
		"  - {address: vps3.example.com:7000, ca_file: /etc/ca.pem, server_name: relay3.example.com}\n"
	c, err := LoadVisitor(visitorFlags(t, "--config", writeFile(t, "visitor.yaml", file), "--id", "laptop"))
	if err != nil {
		t.Fatal(err)
	}
	want := []RelayEndpoint{
		{Address: "VPS1.example.com:7000", Fingerprint: fp, Transport: TransportTCP, Secret: testKey},
		{Address: "[2001:db8::1]:7000", Fingerprint: fp2, Transport: TransportQUIC, Secret: "second-token-0123456789"},
		{Address: "vps3.example.com:7000", CAFile: "/etc/ca.pem", ServerName: "relay3.example.com", Transport: TransportTCP, Secret: testKey},
	}
	if !reflect.DeepEqual(c.Relays, want) {
		t.Errorf("relays:\n got %+v\nwant %+v", c.Relays, want)
	}
	if c.Relay != want[0].Address || c.Fingerprint != fp || c.Key != want[0].Secret || c.Transport != TransportTCP {
		t.Errorf("single-relay fields %q %q %q %q do not repeat the first item", c.Relay, c.Fingerprint, c.Key, c.Transport)
	}

	// One relay given the usual way is a list of one.
	a, err := LoadAgent(agentFlags(t, "--relay", "vps:7000", "--fingerprint", fp, "--token", "first-token-0123456789", "--tunnel", "3390:127.0.0.1:3389"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []RelayEndpoint{{Address: "vps:7000", Fingerprint: fp, Transport: TransportAuto, Secret: "first-token-0123456789"}}; !reflect.DeepEqual(a.Relays, want) {
		t.Errorf("single relay: got %+v, want %+v", a.Relays, want)
	}
}

// TestRelaysErrors: each mistake in a relays list is reported with the
// item and the relay's address, and what to do.
func TestRelaysErrors(t *testing.T) {
	item := func(addr, rest string) string { return "  - {address: \"" + addr + "\"" + rest + "}\n" }
	pin1, pin2 := ", fingerprint: \""+fp+"\"", ", fingerprint: \""+fp2+"\""
	nine := ""
	for i := range 9 {
		nine += item("vps"+string(rune('a'+i))+":7000", ", ca_file: /ca.pem")
	}
	tests := []struct {
		name, head, items string
		want              []string
	}{
		{name: "duplicate address", items: item("vps1.example.com:7000", pin1) + item("VPS1.example.com.:7000", pin2),
			want: []string{"relays in", "item 2 (VPS1.example.com.:7000): item 1 has that address already"}},
		{name: "same relay twice", items: item("vps1:7000", pin1) + item("203.0.113.7:7000", pin1),
			want: []string{"item 2 (203.0.113.7:7000): item 1 has the same fingerprint", "replacing each other"}},
		{name: "no pin", items: item("vps1:7000", pin1) + item("vps2:7000", ""),
			want: []string{"item 2: vps2:7000: fingerprint: missing", "each relay has its own key"}},
		{name: "pin and ca", items: item("vps1:7000", pin1+", ca_file: /ca.pem"), want: []string{"item 1: vps1:7000: give either fingerprint or ca_file"}},
		{name: "server name without ca", items: item("vps1:7000", pin1+", server_name: x"), want: []string{"vps1:7000: server_name: only used with ca_file"}},
		{name: "placeholder pin", items: item("vps1:7000", ", fingerprint: \"<the relay's fingerprint>\""), want: []string{"vps1:7000: fingerprint", "placeholder"}},
		{name: "bad pin", items: item("vps1:7000", ", fingerprint: sha256:abcd"), want: []string{`vps1:7000: fingerprint "sha256:abcd"`, "64 hex"}},
		{name: "no address", items: "  - {fingerprint: \"" + fp + "\"}\n", want: []string{"item 1: address: missing"}},
		{name: "bad address", items: item("vps1", pin1), want: []string{"item 1: address \"vps1\": want HOST:PORT"}},
		{name: "bad port", items: item("vps1:0", pin1), want: []string{"address \"vps1:0\": port \"0\""}},
		{name: "bad transport", items: item("vps1:7000", pin1+", transport: sctp"), want: []string{"vps1:7000: transport \"sctp\""}},
		{name: "unknown key", items: item("vps1:7000", pin1+", port: 3"), want: []string{"item 1: unknown key \"port\""}},
		{name: "no key anywhere", head: "#\n", items: item("vps1:7000", pin1), want: []string{"vps1:7000: key: missing", "one key for every relay"}},
		{name: "key and key file", items: item("vps1:7000", pin1+", key: x0123456789abcdef, key_file: /t"), want: []string{"vps1:7000: give key or key_file, not both"}},
		{name: "short key", items: item("vps1:7000", pin1+", key: short"), want: []string{"vps1:7000: key: shorter than 16"}},
		{name: "missing key file", items: item("vps1:7000", pin1+", key_file: /nonexistent/t"), want: []string{"vps1:7000: key_file:", "/nonexistent/t"}},
		{name: "unknown key of the agent", items: item("vps1:7000", pin1+", token: x0123456789abcdef"), want: []string{`unknown key "token"`}},
		{name: "relay and relays", head: "relay: vps0:7000\nfingerprint: \"" + fp + "\"\nkey: " + testKey + "\n", items: item("vps1:7000", pin1),
			want: []string{"relay in", "fingerprint in", "relay (with fingerprint or ca_file) or a relays list, not both"}},
		{name: "too many", items: nine, want: []string{"9 relays: at most 8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			head := tt.head
			if head == "" {
				head = "key: " + testKey + "\n"
			}
			file := head + "visits: [{tunnel: rdp, listen: \"127.0.0.1:3390\"}]\nrelays:\n" + tt.items
			_, err := LoadVisitor(visitorFlags(t, "--config", writeFile(t, "visitor.yaml", file)))
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

// TestAgentRelaysRefused: the agent keeps one relay; a relays list in its
// file is refused, saying so, rather than ignored.
func TestAgentRelaysRefused(t *testing.T) {
	cleanEnv(t)
	file := "token: first-token-0123456789\ntunnels: [\"3390:127.0.0.1:3389\"]\nrelays:\n  - {address: \"vps1:7000\", fingerprint: \"" + fp + "\"}\n"
	_, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", file)))
	if err == nil || !strings.Contains(err.Error(), `"relays"`) || !strings.Contains(err.Error(), "not of the agent") {
		t.Fatalf("LoadAgent: %v; want relays refused", err)
	}
}
