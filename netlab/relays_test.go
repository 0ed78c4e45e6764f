//go:build netlab && linux

package netlab

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A second relay, on a VPS of its own, for a home reachable through the
// loss of either relay.
//
//	inet                               vps2
//	vps20 11.8.0.1/24 ──────────────── eth0 11.8.0.10/24
//	                                   the second relay :7000
//
// The documentation ranges are taken by the other machines, and the
// dynamic DNS updater refuses to publish the benchmarking range, so the
// second VPS has an address that looks public, as withRoutableHomeWAN
// does: it exists only on the lab's own veth pair, and nothing routes from
// the lab to any other network.
const (
	inetVPS2 = "11.8.0.1"
	vps2IP   = "11.8.0.10"
)

// vps2Link is the second VPS's cable to the internet router.
var vps2Link = cable{"vps2", "eth0", vps2IP + "/24", "inet", "vps20", inetVPS2 + "/24"}

// withSecondVPS adds vps2, a second VPS for a second relay.
func withSecondVPS() labOption { return func(l *lab) { l.vps2 = true } }

// vpsCut cuts role's VPS off the internet (on) or joins it again: the
// internet router drops every packet to or from it, as when its provider
// has an outage; its processes and their sockets stay.
func (l *lab) vpsCut(role string, on bool) {
	l.t.Helper()
	ifName := map[string]string{"vps": "vps0", "vps2": vps2Link.bIf}[role]
	op := "-I"
	if !on {
		op = "-D"
	}
	for _, dir := range []string{"-i", "-o"} {
		l.must(5*time.Second, "inet", "iptables", "-w", "5", op, "FORWARD", dir, ifName, "-j", "DROP")
	}
}

// TestVisitorTwoRelays: the remote user's visitor knows two relays, and a
// home agent is on each (until an agent keeps sessions to several relays
// itself, two agents at home serve the same nginx). Downloads through the
// visitor go through the first relay; when that relay's VPS is cut off
// the internet during a download, that download is lost, and the next one
// goes through the second relay at once (measured); a download through
// the second relay goes on, whole (sha256), while the first relay is
// killed (SIGKILL); when the first relay is back, the visitor and its
// home agent log in to it again by themselves, and it carries the next
// download.
func TestVisitorTwoRelays(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		need(t, "nginx")
		l := newLab(t, withUserNAT(), withSecondVPS())
		l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))

		token, key := secret(t), secret(t)
		conf := filepath.Join(l.dir, "relay.yaml")
		writeFile(t, conf, fmt.Sprintf("# netlab: one token, one visitor key\ntoken: %q\nvisitor_keys:\n  - name: laptop\n    secret: %q\n", token, key))
		r1 := l.startRelayAt("vps", vpsIP, conf, token)
		r2 := l.startRelayAt("vps2", vps2IP, conf, token)
		web := fmt.Sprintf("web=private:%d:127.0.0.1:%d", webPort, webPort)
		homeAgent := func(r *relay, name string) *proc {
			p := l.start("home", name, []string{"HOMEPORT_TOKEN=" + r.token}, binPath(t, "agent"),
				"--relay", r.addr, "--fingerprint", r.fingerprint, "--transport", tr,
				"--id", name, "--data-dir", filepath.Join(l.dir, name+"-data"), "--tunnel", web)
			p.logged = true
			p.await(t, 30*time.Second, name+"'s tunnel", func() bool { return p.count(`msg="tunnel ready"`) > 0 })
			return p
		}
		a1 := homeAgent(r1, "agent-1")
		homeAgent(r2, "agent-2")

		keyFile := filepath.Join(l.dir, "laptop.key")
		writeFile(t, keyFile, key+"\n")
		vconf := filepath.Join(l.dir, "visitor.yaml")
		writeFile(t, vconf, fmt.Sprintf("key_file: %s\ntransport: %s\nid: laptop\nhandshake_timeout: 10s\n"+
			"relays:\n  - {address: %q, fingerprint: %q}\n  - {address: %q, fingerprint: %q}\n"+
			"visits:\n  - {tunnel: web, listen: \"127.0.0.1:%d\"}\n",
			keyFile, tr, r1.addr, r1.fingerprint, r2.addr, r2.fingerprint, webPort))
		v := l.start("user", "visitor", nil, binPath(t, "agent"), "visit", "--config", vconf, "--data-dir", filepath.Join(l.dir, "visitor-data"), "--log-level", "debug")
		v.logged = true
		v.await(t, 30*time.Second, "the tunnel ready through both relays", func() bool { return v.count(" ready: connect to 127.0.0.1:") >= 2 })

		url := fmt.Sprintf("http://127.0.0.1:%d/big.bin", webPort)
		// get starts a download of big.bin through the visitor at rate
		// (0: as fast as it goes) into a file of its own.
		seq := 0
		get := func(rate string) (*proc, string) {
			seq++
			out := filepath.Join(l.dir, fmt.Sprintf("get%d.bin", seq))
			args := []string{"curl", "-sS", "--max-time", "120", "-o", out}
			if rate != "" {
				args = append(args, "--limit-rate", rate)
			}
			return l.start("user", fmt.Sprintf("curl-%d", seq), nil, append(args, url)...), out
		}
		// through counts the connections the visitor carried through
		// relay r (its debug log names the relay of each one).
		through := func(r *relay) int {
			n := 0
			for _, line := range strings.Split(v.stderr.String(), "\n") {
				if strings.Contains(line, `msg="connection carried"`) && strings.Contains(line, "relay="+r.addr) {
					n++
				}
			}
			return n
		}
		fetch := func(what string) {
			t.Helper()
			p, out := get("")
			if exited, err := p.wait(60 * time.Second); !exited || err != nil {
				p.dump(t)
				t.Fatalf("%s: curl: exited %v, %v", what, exited, err)
			}
			if err := checkSum(out, bigSum); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}

		// (1) The first relay carries the visitor's downloads.
		fetch("a download through the first relay")
		if through(r1) == 0 || through(r2) != 0 {
			t.Fatalf("relays carried %d and %d connections; want the first relay to carry it", through(r1), through(r2))
		}

		// (2) The first VPS is cut off during a download: that download
		// is lost with the first relay's session; the next one goes
		// through the second relay.
		lost, _ := get("5M")
		v.await(t, 20*time.Second, "the download under way", func() bool { return through(r1) >= 2 })
		l.vpsCut("vps", true)
		cut := time.Now()
		before := through(r2)
		next, nextOut := get("")
		v.await(t, 30*time.Second, "the next download through the second relay", func() bool { return through(r2) > before })
		t.Logf("over %s: the first VPS cut off, the next download went through the second relay %v after the cut (the first relay given up once silent for 2 s)", tr, ms(time.Since(cut)))
		if exited, err := next.wait(60 * time.Second); !exited || err != nil {
			next.dump(t)
			t.Fatalf("the download through the second relay, the first VPS cut off: curl exited %v, %v", exited, err)
		}
		if err := checkSum(nextOut, bigSum); err != nil {
			t.Fatalf("the download through the second relay, the first VPS cut off: %v", err)
		}
		if exited, err := lost.wait(90 * time.Second); !exited || err == nil {
			t.Errorf("the download on the cut-off relay: exited %v, %v; want it to fail", exited, err)
		}
		l.vpsCut("vps", false)

		// (3) A download through the second relay (the first relay's home
		// agent gone) goes on, whole, while the first relay is killed.
		a1.kill()
		slow, out := get("10M")
		before = through(r2)
		v.await(t, 20*time.Second, "the download through the second relay", func() bool { return through(r2) > before })
		if err := r1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if exited, err := slow.wait(90 * time.Second); !exited || err != nil {
			slow.dump(t)
			t.Fatalf("the download through the second relay, the first relay killed: exited %v, %v", exited, err)
		}
		if err := checkSum(out, bigSum); err != nil {
			t.Fatalf("the download through the second relay, the first relay killed: %v", err)
		}
		fetch("a download with the first relay dead")

		// (4) The first relay and its home agent are back: the visitor
		// logs in again by itself, and the first relay carries the next
		// download.
		logins := v.count(`msg="connected to relay" relay=` + r1.addr)
		carried := through(r1)
		r1 = l.startRelayAt("vps", vpsIP, conf, token)
		homeAgent(r1, "agent-1")
		v.await(t, 30*time.Second, "the visitor's new session to the first relay", func() bool {
			return v.count(`msg="connected to relay" relay=`+r1.addr) > logins
		})
		fetch("a download through the first relay, back")
		if through(r1) <= carried {
			t.Fatalf("the restarted first relay carried nothing")
		}
	})
}
