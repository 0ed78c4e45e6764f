package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/wol"
)

func TestAgentWake(t *testing.T) {
	cleanEnv(t)
	fp := "sha256:" + strings.Repeat("ab", 32)
	base := []string{"--relay", "vps.example.com:7000", "--token", "0123456789abcdef", "--fingerprint", fp}
	mac := wol.MAC{0x00, 0x11, 0x22, 0x33, 0x44, 0x55}
	p := writeFile(t, "agent.yaml", `
relay: vps.example.com:7000
token: 0123456789abcdef
fingerprint: `+fp+`
wake_time: 90s
tunnels:
  - rdp=3390:192.168.1.20:3389
  - name: pc
    remote_port: 3391
    target: 192.168.1.21:3389
    wake: 00-11-22-33-44-55
  - name: nas
    private: true
    target: 192.168.1.22:445
    wake: {mac: "0011.2233.4455", broadcast: 192.168.1.255, interface: eth0, port: 7}
`)
	c, err := LoadAgent(agentFlags(t, "--config", p))
	if err != nil {
		t.Fatal(err)
	}
	want := []*Wake{nil, {MAC: mac, Port: 9},
		{MAC: mac, Broadcast: netip.MustParseAddr("192.168.1.255"), Interface: "eth0", Port: 7}}
	for i, w := range want {
		if !reflect.DeepEqual(c.Tunnels[i].Wake, w) {
			t.Errorf("tunnel %s: wake %+v, want %+v", c.Tunnels[i].Name, c.Tunnels[i].Wake, w)
		}
	}
	if c.WakeTime != 90*time.Second {
		t.Errorf("wake_time %v, want 90s", c.WakeTime)
	}
	// --wake NAME=MAC overrides the MAC and keeps the section's other keys.
	c, err = LoadAgent(agentFlags(t, "--config", p, "--wake", "nas=02:00:00:00:00:01", "--wake", "rdp=001122334455"))
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Tunnels[2].Wake; w == nil || w.MAC != (wol.MAC{2, 0, 0, 0, 0, 1}) || w.Interface != "eth0" || w.Port != 7 {
		t.Errorf("--wake over a section: %+v", w)
	}
	if w := c.Tunnels[0].Wake; w == nil || w.MAC != mac || w.Port != 9 {
		t.Errorf("--wake rdp=: %+v", w)
	}
	// A bare MAC with one TCP tunnel; the default wake_time.
	c, err = LoadAgent(agentFlags(t, append(base, "--tunnel", "rdp=3390:192.168.1.20:3389", "--tunnel", "udp:5353:127.0.0.1:53", "--wake", "00:11:22:33:44:55")...))
	if err != nil || c.Tunnels[0].Wake == nil || c.Tunnels[0].Wake.MAC != mac || c.WakeTime != time.Minute {
		t.Fatalf("--wake MAC: %+v, %v, %v", c.Tunnels, c.WakeTime, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		file string // a tunnel section's wake, when set
		want string
	}{
		{"bad mac", []string{"--tunnel", "3390:192.168.1.20:3389", "--wake", "00:11:22:33:44"}, "", `wake: "00:11:22:33:44": bad MAC address`},
		{"unknown tunnel", []string{"--tunnel", "rdp=3390:192.168.1.20:3389", "--wake", "rpd=00:11:22:33:44:55"}, "", `no tunnel is named "rpd" (tunnels: rdp)`},
		{"several tunnels", []string{"--tunnel", "a=3390:192.168.1.20:3389", "--tunnel", "b=3391:192.168.1.21:3389", "--wake", "00:11:22:33:44:55"}, "", "2 TCP tunnels; say which to wake with NAME=MAC"},
		{"udp tunnel", []string{"--tunnel", "dns=udp:5353:127.0.0.1:53", "--wake", "dns=00:11:22:33:44:55"}, "", `tunnel "dns" is UDP`},
		{"broadcast mac", []string{"--tunnel", "3390:192.168.1.20:3389", "--wake", "ff:ff:ff:ff:ff:ff"}, "", "group"},
		{"wake_time too long", []string{"--tunnel", "3390:192.168.1.20:3389", "--wake-time", "10m"}, "", "--wake-time: 10m0s is out of range"},
		{"section bad mac", nil, `"00:11:22"`, `tunnel "pc": wake: bad MAC address "00:11:22"`},
		{"section no mac", nil, `{broadcast: 192.168.1.255}`, `tunnel "pc": wake: mac missing`},
		{"section bad broadcast", nil, `{mac: "00:11:22:33:44:55", broadcast: "2001:db8::1"}`, `broadcast "2001:db8::1": want an IPv4 address`},
		{"section unknown key", nil, `{mac: "00:11:22:33:44:55", brodcast: 192.168.1.255}`, `unknown key "brodcast"`},
		{"section bad port", nil, `{mac: "00:11:22:33:44:55", port: 0}`, `port: port "0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, base...), tc.args...)
			if tc.file != "" {
				f := writeFile(t, "w.yaml", "tunnels:\n  - name: pc\n    remote_port: 3391\n    target: 192.168.1.21:3389\n    wake: "+tc.file+"\n")
				args = append(args, "--config", f)
			}
			_, err := LoadAgent(agentFlags(t, args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
