//go:build netlab && linux

package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Waking a sleeping PC: the agent runs on an always-on machine of the
// home LAN (home, 192.168.7.2); the PC (pc, 192.168.7.3 on the same LAN,
// bridged in the home router) is asleep: its service does not listen
// until it sees a magic packet for its MAC on the LAN, by the directed
// UDP broadcast to port 9 or as an Ethernet frame of EtherType 0x0842.
// A remote user's visitor connects to the relay before that.

const (
	pcIP       = "192.168.7.3"
	pcMAC      = "02:00:00:07:00:03"
	otherMAC   = "02:00:00:07:00:99"
	pcPort     = 3389
	pcWakePort = 3390 // the relay's public port for the PC
	pcBadPort  = 3391 // a tunnel to the PC with the wrong MAC
	pcDenyPort = 3392 // a tunnel to the PC that denies the user
	pcBoot     = 2 * time.Second
	pcWakeTime = 20 * time.Second
)

// TestWakeOnLAN: a guard-refused visitor wakes nothing; a tunnel with the
// wrong MAC sends packets the PC ignores, and its visitor is closed after
// wake_time with a clear log line; the right MAC wakes the PC, and the
// visitor, held meanwhile, gets its first byte and 1 MiB each way.
func TestWakeOnLAN(t *testing.T) {
	need(t, "go")
	l := newLab(t)
	l.addLANHost("pc", pcIP+"/24", pcMAC)
	wolpc := buildWolPC(t)
	pc := l.start("pc", "pc", nil, wolpc, "-mode", "pc", "-mac", pcMAC, "-if", "eth0", "-boot", pcBoot.String(),
		"-listen", fmt.Sprintf(":%d", pcPort))
	pc.logged = true
	pc.await(t, 10*time.Second, "the PC asleep", func() bool { return strings.Contains(pc.stdout.String(), `"event":"asleep"`) })

	r := l.startRelay()
	conf := filepath.Join(l.dir, "agent.yaml")
	target := fmt.Sprintf("%s:%d", pcIP, pcPort)
	writeFile(t, conf, fmt.Sprintf(`wake_time: %s
access_log: true
log: {level: debug}
tunnels:
  - name: pc
    remote_port: %d
    target: %q
    wake: %q
  - name: pc-bad
    remote_port: %d
    target: %q
    wake: %q
  - name: pc-deny
    remote_port: %d
    target: %q
    deny: [%s/24]
    wake: %q
`, pcWakeTime, pcWakePort, target, pcMAC, pcBadPort, target, otherMAC, pcDenyPort, target, inetUser, pcMAC))
	a := l.start("home", "agent", []string{"HOMEPORT_TOKEN=" + r.token}, binPath(t, "agent"), "--config", conf,
		"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort), "--fingerprint", r.fingerprint, "--transport", "quic", "--id", "home-pc",
		"--data-dir", filepath.Join(l.dir, "agent-data"))
	a.logged = true
	a.await(t, 30*time.Second, "the agent's 3 tunnels", func() bool { return a.count(`msg="tunnel ready"`) >= 3 })

	// (1) A visitor the relay's deny list refuses: nothing reaches the
	// agent, no magic packet goes out.
	v := l.visitPC(wolpc, pcDenyPort, 30*time.Second)
	if v.FirstByte != nil || v.Err == "" {
		t.Fatalf("a denied visitor got through: %+v", v)
	}
	t.Logf("the denied visitor was refused after %dms: %s", v.ClosedMS, v.Err)

	// (2) The wrong MAC: the PC sees the packets and sleeps on; the
	// visitor is closed after wake_time.
	v = l.visitPC(wolpc, pcBadPort, pcWakeTime+time.Minute)
	if v.FirstByte != nil {
		t.Fatalf("a visitor of the wrong MAC's tunnel got through: %+v", v)
	}
	if closed := time.Duration(v.ClosedMS) * time.Millisecond; closed < pcWakeTime {
		t.Errorf("the wrong MAC's visitor was closed after %v, before wake_time %v", closed, pcWakeTime)
	}
	a.await(t, 10*time.Second, "the agent saying the target did not wake", func() bool {
		return a.count(`msg="target did not wake" tunnel=pc-bad mac=`+otherMAC) == 1
	})
	packets := pcPackets(pc)
	mine, other := 0, 0
	vias := map[string]bool{}
	for _, p := range packets {
		if p.Mine {
			mine++
		} else {
			other++
			vias[strings.Fields(p.Via)[0]] = true
		}
	}
	if mine != 0 || other == 0 {
		t.Fatalf("after a denied visitor and the wrong MAC's: the PC saw %d packets for its MAC (want 0: the denied visitor woke nothing) and %d for another (want some)", mine, other)
	}
	t.Logf("the wrong MAC's visitor was closed after %dms (wake_time %v); the PC saw %d magic packets for another MAC (by %v) and none for its own",
		v.ClosedMS, pcWakeTime, other, keys(vias))

	// (3) The right MAC: the visitor connects to the sleeping PC's tunnel
	// and is carried once it woke.
	v = l.visitPC(wolpc, pcWakePort, pcWakeTime+time.Minute)
	if v.FirstByte == nil || !v.ShaOK {
		t.Fatalf("the visitor of the sleeping PC: %+v", v)
	}
	a.await(t, 10*time.Second, "the agent saying the target woke", func() bool {
		return a.count(`msg="target woke" tunnel=pc `) == 1
	})
	vias = map[string]bool{}
	for _, p := range pcPackets(pc) {
		if p.Mine {
			vias[strings.Fields(p.Via)[0]] = true
		}
	}
	if !vias["udp"] || !vias["ethernet"] {
		t.Errorf("the PC saw its magic packet by %v, want both udp and ethernet", keys(vias))
	}
	t.Logf("the sleeping PC (booting %v after its packet) woke: the visitor's first byte came %dms after it connected (connect %dms), 1 MiB each way whole after %dms; the agent logged took=%s, sent=%s; the PC saw its packet by %v",
		pcBoot, *v.FirstByte, v.ConnectMS, v.DoneMS, a.logField("target woke", "took"), a.logField("waking target (Wake-on-LAN)", "sent"), keys(vias))
}

// addLANHost adds a host in a namespace of its own (role) to the home
// LAN: the home router's LAN side becomes a bridge, br0, holding lan0
// (to home) and a new lan1 (to role's eth0, with mac and addr).
func (l *lab) addLANHost(role, addr, mac string) {
	l.t.Helper()
	l.must(10*time.Second, "", "ip", "netns", "add", l.ns(role))
	l.mu.Lock()
	l.made = append(l.made, l.ns(role))
	l.mu.Unlock()
	l.must(5*time.Second, "", "ip", "-n", l.ns(role), "link", "set", "lo", "up")
	r := l.ns("homer")
	for _, c := range [][]string{
		{"ip", "-n", r, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", r, "addr", "del", homerLAN + "/24", "dev", "lan0"},
		{"ip", "-n", r, "link", "set", "lan0", "master", "br0"},
		{"ip", "-n", r, "addr", "add", homerLAN + "/24", "dev", "br0"},
		{"ip", "-n", r, "link", "set", "br0", "up"},
		{"ip", "-n", r, "link", "add", "lan1", "type", "veth", "peer", "name", "eth0", "netns", l.ns(role)},
		{"ip", "-n", r, "link", "set", "lan1", "master", "br0", "gso_max_segs", "1", "up"},
		{"ip", "-n", l.ns(role), "link", "set", "eth0", "address", mac, "gso_max_segs", "1", "up"},
		{"ip", "-n", l.ns(role), "addr", "add", addr, "dev", "eth0"},
		{"ip", "-n", l.ns(role), "route", "add", "default", "via", homerLAN},
	} {
		l.must(5*time.Second, "", c...)
	}
}

// buildWolPC builds the PC and visitor program (netlab/internal/wolpc).
func buildWolPC(t *testing.T) string {
	t.Helper()
	gocmd, _ := exec.LookPath("go")
	out := filepath.Join(t.TempDir(), "wolpc")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, "build", "-o", out, "github.com/homeport/homeport/netlab/internal/wolpc")
	cmd.Env = cleanEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build wolpc: %v\n%s", err, b)
	}
	return out
}

// pcVisit is what wolpc -mode visit prints.
type pcVisit struct {
	ConnectMS int64  `json:"connect_ms"`
	FirstByte *int64 `json:"first_byte_ms"`
	ClosedMS  int64  `json:"closed_ms"`
	DoneMS    int64  `json:"done_ms"`
	ShaOK     bool   `json:"sha_ok"`
	Err       string `json:"err"`
}

// visitPC runs a visitor from the remote user to the relay's port and
// returns what it saw.
func (l *lab) visitPC(wolpc string, port int, limit time.Duration) pcVisit {
	l.t.Helper()
	out, err := l.run(limit+30*time.Second, "user", wolpc, "-mode", "visit", "-addr", fmt.Sprintf("%s:%d", vpsIP, port),
		"-size", "1048576", "-timeout", limit.String())
	var v pcVisit
	if err != nil || json.Unmarshal([]byte(strings.TrimSpace(out)), &v) != nil {
		l.t.Fatalf("visitor to port %d: %v\n%s", port, err, out)
	}
	return v
}

// pcPacket is a magic packet the PC saw.
type pcPacket struct {
	Via  string `json:"via"`
	MAC  string `json:"mac"`
	Mine bool   `json:"mine"`
}

func pcPackets(pc *proc) []pcPacket {
	var out []pcPacket
	for _, line := range strings.Split(pc.stdout.String(), "\n") {
		var p struct {
			Event string `json:"event"`
			pcPacket
		}
		if json.Unmarshal([]byte(line), &p) == nil && p.Event == "packet" {
			out = append(out, p.pcPacket)
		}
	}
	return out
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
