//go:build netlab

package netlab

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The port mapping scenario's home uplink. miniupnpd refuses to map
// ports on an outside address in a private or documentation range
// (198.51.100.0/24 included: "not public routable"), so this lab gives
// the home router an address outside those ranges. Like every address
// of the lab it exists only on the lab's own veth pair: no route leads
// from the lab's namespaces to any other network, so no packet for it
// leaves the lab.
const (
	pmWAN = "11.7.0.2" // the home router's outside address
	pmGW  = "11.7.0.1" // the internet router, towards the home
	// pmPort is the home web server's port that the mapping leads to.
	pmPort = 8090
)

// withRoutableHomeWAN gives the home uplink the addresses above.
func withRoutableHomeWAN() labOption {
	return func(l *lab) { l.homeWAN, l.homeGW = pmWAN, pmGW }
}

// miniupnpd's chains, in the iptables-legacy tables it writes through
// libiptc (Debian's miniupnpd-iptables); the lab's own rules are in the
// nf_tables ones, and packets pass both.
var miniupnpdChains = [][]string{
	{"-t", "nat", "-N", "MINIUPNPD"},
	{"-t", "nat", "-I", "PREROUTING", "-i", "wan0", "-j", "MINIUPNPD"},
	{"-t", "nat", "-N", "MINIUPNPD-POSTROUTING"},
	{"-t", "nat", "-I", "POSTROUTING", "-o", "wan0", "-j", "MINIUPNPD-POSTROUTING"},
	{"-t", "mangle", "-N", "MINIUPNPD"},
	{"-t", "mangle", "-I", "PREROUTING", "-i", "wan0", "-j", "MINIUPNPD"},
	{"-t", "filter", "-N", "MINIUPNPD"},
	{"-t", "filter", "-I", "FORWARD", "-i", "wan0", "!", "-o", "wan0", "-j", "MINIUPNPD"},
}

// startMiniupnpd runs miniupnpd on the home router with UPnP-IGD (version
// 2, or 1 with igd1), NAT-PMP and PCP. The first call makes its chains,
// and lets the router forward what a mapping lets in (as routers with
// UPnP do: the lab's router otherwise drops every unsolicited packet).
func (l *lab) startMiniupnpd(igd1 bool) *proc {
	l.t.Helper()
	conf := filepath.Join(l.dir, "miniupnpd.conf")
	if _, err := os.Stat(conf); err != nil {
		for _, rule := range miniupnpdChains {
			l.must(5*time.Second, "homer", append([]string{"iptables-legacy", "-w", "5"}, rule...)...)
		}
		l.must(5*time.Second, "homer", "iptables", "-w", "5", "-I", "FORWARD", "1", "-i", "wan0", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		v1 := "no"
		if igd1 {
			v1 = "yes"
		}
		text := fmt.Sprintf(`# netlab: the home router's port mapping daemon
ext_ifname=wan0
listening_ip=lan0
port=0
enable_natpmp=yes
enable_upnp=yes
force_igd_desc_v1=%s
secure_mode=yes
# The epoch of NAT-PMP and PCP starts with the daemon, so that a restart
# shows as one (as a router's reboot does).
system_uptime=no
notify_interval=30
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07d
allow 1024-65535 %s/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, v1, homerLAN)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			l.t.Fatal(err)
		}
	}
	p := l.start("homer", "miniupnpd", nil, "miniupnpd", "-d", "-f", conf, "-P", filepath.Join(l.dir, "miniupnpd.pid"))
	p.logged = true
	p.await(l.t, 20*time.Second, "miniupnpd to listen", func() bool {
		return p.count("Listening for NAT-PMP/PCP traffic") > 0 && p.count("HTTP listening on port") > 0
	})
	return p
}

// routerReboot kills miniupnpd and empties its chains, as a router's
// restart loses its mappings, then starts it again.
func (l *lab) routerReboot(old *proc, igd1 bool) *proc {
	l.t.Helper()
	old.kill()
	for _, c := range [][]string{{"-t", "nat", "-F", "MINIUPNPD"}, {"-t", "nat", "-F", "MINIUPNPD-POSTROUTING"},
		{"-t", "mangle", "-F", "MINIUPNPD"}, {"-t", "filter", "-F", "MINIUPNPD"}} {
		l.must(5*time.Second, "homer", append([]string{"iptables-legacy", "-w", "5"}, c...)...)
	}
	return l.startMiniupnpd(igd1)
}

var mappedRE = regexp.MustCompile(`(?m)^mapped tcp (\S+) -> (\S+) via (\S+) \(([^)]*)\)$`)

// TestPortMapping: "agent portmap" on the home PC gets a port mapping
// from the home router's miniupnpd with each protocol, the remote user
// reaches the home web server through it, the mapping outlives its lease
// by renewals, comes back by itself after the router restarts and forgets
// it, and is gone when the command exits.
func TestPortMapping(t *testing.T) {
	need(t, "miniupnpd", "iptables-legacy", "nginx")
	for _, tc := range []struct {
		name, method string
		igd1         bool
	}{
		{"pcp", "pcp", false},
		{"nat-pmp", "nat-pmp", false},
		{"upnp-igd2", "upnp", false},
		{"upnp-igd1", "upnp", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, withRoutableHomeWAN())
			router := l.startMiniupnpd(tc.igd1)
			l.startNginx("home", fmt.Sprintf("%s:%d", homeIP, pmPort))
			const lease = 6 * time.Second
			pm := l.start("home", "agent-portmap", nil, binPath(t, "agent"), "portmap",
				"--port", fmt.Sprint(pmPort), "--method", tc.method, "--lifetime", lease.String(), "--check", "1s", "--log-level", "debug")
			pm.logged = true

			// Mapped, and the router says where.
			var m []string
			pm.await(t, 30*time.Second, "the mapping", func() bool {
				m = mappedRE.FindStringSubmatch(pm.stdout.String())
				return m != nil
			})
			ext, err := netip.ParseAddrPort(m[1])
			if err != nil || ext.Addr().String() != pmWAN {
				t.Fatalf("mapped to %q, want an address of the router's outside %s", m[1], pmWAN)
			}
			if want := fmt.Sprintf("%s:%d", homeIP, pmPort); m[2] != want || m[3] != tc.method {
				t.Fatalf("mapping %q -> %q via %s, want -> %s via %s", m[1], m[2], m[3], want, tc.method)
			}
			t.Logf("mapped %s -> %s via %s (%s)", m[1], m[2], m[3], m[4])
			url := fmt.Sprintf("http://%s/small.txt", ext)
			fetch := func(what string) {
				t.Helper()
				x, err := l.curl("user", 10*time.Second, "-o", "/dev/null", url)
				if err != nil || x.code != 200 || x.bytes != smallSize {
					t.Fatalf("%s: the remote user fetching %s: %v, %+v", what, url, err, x)
				}
			}
			unreachable := func(what string) {
				t.Helper()
				if x, err := l.curl("user", 2*time.Second, "-o", "/dev/null", url); err == nil && x.code == 200 {
					t.Fatalf("%s: %s still reaches the home server", what, url)
				}
			}
			fetch("through the new mapping")

			// Renewed: still there after twice its lease.
			first := time.Now()
			pm.await(t, 60*time.Second, "renewals past twice the lease", func() bool {
				ts := pm.logTimes("port mapping renewed")
				return len(ts) > 0 && ts[len(ts)-1].Sub(first) > 2*lease
			})
			fetch("after twice the lease")

			// The router restarts and forgets: the mapping is made again.
			// The agent is stopped meanwhile, so that the test sees the
			// mapping gone before the agent's next check makes it again.
			if err := syscall.Kill(pm.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			router = l.routerReboot(router, tc.igd1)
			unreachable("after the router's restart")
			if err := syscall.Kill(pm.cmd.Process.Pid, syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			restarted := time.Now()
			pm.await(t, 60*time.Second, "the agent to notice the restart and make the mapping again", func() bool {
				return pm.count("the router had forgotten it") > 0
			})
			t.Logf("mapping made again %v after the agent resumed (it checks every second)", time.Since(restarted).Round(10*time.Millisecond))
			all := mappedRE.FindAllStringSubmatch(pm.stdout.String(), -1)
			url = fmt.Sprintf("http://%s/small.txt", all[len(all)-1][1])
			fetch("after the router's restart")

			// Removed on exit.
			if err := syscall.Kill(pm.cmd.Process.Pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if exited, err := pm.wait(20 * time.Second); !exited || err != nil {
				t.Fatalf("agent portmap after SIGTERM: exited %v, %v", exited, err)
			}
			if !strings.Contains(pm.stdout.String(), "unmapped tcp") || pm.count("port mapping removed") == 0 {
				t.Error("agent portmap did not say it removed the mapping")
			}
			unreachable("after agent portmap exited")
			if rules := l.must(5*time.Second, "homer", "iptables-legacy", "-w", "5", "-t", "nat", "-S", "MINIUPNPD"); strings.Contains(rules, "DNAT") {
				t.Errorf("the router still forwards:\n%s", rules)
			}
			_ = router
		})
	}
}

// TestTunnelPortMapping: an agent whose tunnel has port_mapping: true
// maps the target's port on the home router (miniupnpd), the relay
// checks the mapping from outside, and agent status says it is
// reachable; the remote user then reaches the home web server both
// through the relay and straight through the mapping. A second tunnel's
// mapping leads to a port where nothing listens: mapped, but the relay
// finds it unreachable, and status says so. When the agent stops, both
// mappings are removed.
func TestTunnelPortMapping(t *testing.T) {
	need(t, "miniupnpd", "iptables-legacy", "nginx")
	l := newLab(t, withRoutableHomeWAN())
	l.startMiniupnpd(false)
	l.startNginx("home", fmt.Sprintf("%s:%d", homeIP, pmPort))
	r := l.startRelay()
	const deadPort = 8099
	conf := filepath.Join(l.dir, "agent.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`tunnels:
  - {name: web, remote_port: %[1]d, target: "%[4]s:%[2]d", port_mapping: true}
  - {name: dead, remote_port: %[3]d, target: "127.0.0.1:%[3]d", port_mapping: {methods: [upnp]}}
`, webPort, pmPort, deadPort, homeIP)), 0o644); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(l.dir, "agent-data")
	agent := l.start("home", "agent", []string{"HOMEPORT_TOKEN=" + r.token}, binPath(t, "agent"),
		"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort), "--fingerprint", r.fingerprint, "--transport", "tcp",
		"--id", "home-pc", "--config", conf, "--data-dir", dataDir)
	agent.logged = true
	agent.await(t, 60*time.Second, "the relay to find the web mapping reachable and the dead one not", func() bool {
		return agent.count("port mapping reachable from outside") > 0 && agent.count("port mapping not reachable from outside") > 0
	})

	out := l.must(30*time.Second, "home", binPath(t, "agent"), "status", "--json", "--data-dir", dataDir)
	var st struct {
		Tunnels []struct {
			Name        string `json:"name"`
			PortMapping *struct {
				State, Method, External, Reachable, Detail string
			} `json:"port_mapping"`
		} `json:"tunnels"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("agent status --json: %v\n%s", err, out)
	}
	byName := map[string]string{}
	for _, tn := range st.Tunnels {
		if m := tn.PortMapping; m != nil {
			byName[tn.Name] = fmt.Sprintf("%s %s %s reachable=%s %s", m.State, m.Method, m.External, m.Reachable, m.Detail)
		}
	}
	t.Logf("agent status: %v", byName)
	if got := byName["web"]; !strings.HasPrefix(got, fmt.Sprintf("mapped pcp %s:%d reachable=yes", pmWAN, pmPort)) {
		t.Errorf("web: %q, want mapped by PCP on %s:%d and reachable", got, pmWAN, pmPort)
	}
	if got := byName["dead"]; !strings.HasPrefix(got, fmt.Sprintf("mapped upnp %s:%d reachable=no", pmWAN, deadPort)) || !strings.Contains(got, "refused") {
		t.Errorf("dead: %q, want mapped by UPnP and unreachable (connection refused)", got)
	}
	for _, url := range []string{tunnelURL("small.txt"), fmt.Sprintf("http://%s:%d/small.txt", pmWAN, pmPort)} {
		if x, err := l.curl("user", 10*time.Second, "-o", "/dev/null", url); err != nil || x.code != 200 || x.bytes != smallSize {
			t.Errorf("the remote user fetching %s: %v, %+v", url, err, x)
		}
	}

	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := agent.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("agent after SIGTERM: exited %v, %v", exited, err)
	}
	if n := agent.count("port mapping removed"); n != 2 {
		t.Errorf("agent removed %d mappings, want 2", n)
	}
	if rules := l.must(5*time.Second, "homer", "iptables-legacy", "-w", "5", "-t", "nat", "-S", "MINIUPNPD"); strings.Contains(rules, "DNAT") {
		t.Errorf("the router still forwards:\n%s", rules)
	}
}

// The DNS server of the port mapping DNS scenario: BIND on the VPS, with
// the zone home.test that the agent updates (RFC 2136, TSIG).
const (
	pmDNSPort = 53
	pmName    = "web.home.test"
)

// startBIND runs named on the VPS with the zone home.test, updatable with
// the TSIG key it returns (base64).
func (l *lab) startBIND() (keySecret string) {
	l.t.Helper()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		l.t.Fatal(err)
	}
	keySecret = base64.StdEncoding.EncodeToString(secret)
	dir := filepath.Join(l.dir, "bind")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.t.Fatal(err)
	}
	conf := fmt.Sprintf(`options {
	directory %[1]q;
	pid-file none;
	session-keyfile %[2]q;
	managed-keys-directory %[1]q;
	listen-on port %[3]d { %[4]s; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
key "ddns-key" { algorithm hmac-sha256; secret %[5]q; };
zone "home.test" {
	type primary;
	file %[6]q;
	allow-update { key "ddns-key"; };
};
`, dir, filepath.Join(dir, "session.key"), pmDNSPort, vpsIP, keySecret, filepath.Join(dir, "home.test.db"))
	zone := fmt.Sprintf(`$TTL 60
@    IN SOA ns1.home.test. hostmaster.home.test. 1 3600 600 86400 60
@    IN NS  ns1.home.test.
ns1  IN A   %s
`, vpsIP)
	for name, text := range map[string]string{"named.conf": conf, "home.test.db": zone} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			l.t.Fatal(err)
		}
	}
	// -g: foreground, log to stderr; -4: IPv4 only.
	p := l.start("vps", "named", nil, "named", "-g", "-4", "-c", filepath.Join(dir, "named.conf"))
	p.logged = true
	p.await(l.t, 30*time.Second, "named to load its zones", func() bool { return p.count("all zones loaded") > 0 })
	return keySecret
}

// digA asks BIND for name's A records from the remote user's namespace,
// as any resolver on the internet would, and returns them ("" for none).
func (l *lab) digA(name string) string {
	l.t.Helper()
	out, err := l.dig("user", vpsIP, pmDNSPort, 2, 3, "+norec", "+short", "A", name)
	if err != nil {
		l.t.Fatalf("dig %s A: %v\n%s", name, err, out)
	}
	return strings.Join(strings.Fields(out), ",")
}

// awaitA polls BIND (a real query each second) until name's A records
// are want, for up to d.
func (l *lab) awaitA(d time.Duration, what, name, want string) time.Duration {
	l.t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		got := l.digA(name)
		if got == want {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: dig %s A = %q after %v, want %q", what, name, got, d, want)
		}
		time.Sleep(time.Second)
	}
}

// TestPortMappingDDNS: the agent's ddns section publishes its tunnel's
// verified port mapping (source mapping:web) to BIND on the VPS by
// RFC 2136, and a DNS query from the internet finds the home router's
// outside address; agent status says the name publishes the mapping and
// what it published. The router then restarts and forgets the mapping
// without taking it back (its daemon stays down): the relay's next check
// fails and the record is withdrawn. The daemon comes back, the agent
// makes the mapping again, the relay finds it reachable, and the record
// is back. When the agent stops, the record is withdrawn.
func TestPortMappingDDNS(t *testing.T) {
	need(t, "miniupnpd", "iptables-legacy", "nginx", "named", "dig")
	l := newLab(t, withRoutableHomeWAN())
	router := l.startMiniupnpd(false)
	l.startNginx("home", fmt.Sprintf("%s:%d", homeIP, pmPort))
	key := l.startBIND()
	r := l.startRelay()
	conf := filepath.Join(l.dir, "agent.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`tunnels:
  - {name: web, remote_port: %[1]d, target: "%[2]s:%[3]d", port_mapping: true}
ddns:
  names: [{name: %[4]s, ipv6: false, ttl: 30s}]
  sources: [mapping:web]
  min_write_interval: 1s
  provider: rfc2136
  rfc2136: {server: "%[5]s:%[6]d", zone: home.test, key_name: ddns-key, key_secret: "%[7]s"}
`, webPort, homeIP, pmPort, pmName, vpsIP, pmDNSPort, key)), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(l.dir, "agent-data")
	agent := l.start("home", "agent", []string{"HOMEPORT_TOKEN=" + r.token}, binPath(t, "agent"),
		"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort), "--fingerprint", r.fingerprint, "--transport", "tcp",
		"--id", "home-pc", "--config", conf, "--data-dir", dataDir)
	agent.logged = true

	took := l.awaitA(90*time.Second, "the verified mapping", pmName, pmWAN)
	t.Logf("%s published as %s %v after the agent started", pmName, pmWAN, took.Round(time.Second))
	if agent.count("port mapping reachable from outside") == 0 {
		t.Fatal("published before the relay found the mapping reachable")
	}
	// Straight through the router, by the name's address.
	if x, err := l.curl("user", 10*time.Second, "-o", "/dev/null", fmt.Sprintf("http://%s:%d/small.txt", l.digA(pmName), pmPort)); err != nil || x.code != 200 || x.bytes != smallSize {
		t.Fatalf("the remote user fetching through the published address: %v, %+v", err, x)
	}

	type ddnsEntry struct {
		Name, Type, Source string
		Published          []string
		Synced             bool
	}
	status := func() (ddnsEntry, string) {
		t.Helper()
		out := l.must(30*time.Second, "home", binPath(t, "agent"), "status", "--json", "--data-dir", dataDir)
		var st struct {
			DDNS    []ddnsEntry `json:"ddns"`
			Tunnels []struct {
				PortMapping *struct{ Reachable string } `json:"port_mapping"`
			} `json:"tunnels"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.DDNS) != 1 || len(st.Tunnels) != 1 || st.Tunnels[0].PortMapping == nil {
			t.Fatalf("agent status --json: %v\n%s", err, out)
		}
		return st.DDNS[0], st.Tunnels[0].PortMapping.Reachable
	}
	if e, reach := status(); e.Name != pmName || e.Source != "mapping:web" || !e.Synced || !slices.Equal(e.Published, []string{pmWAN}) || reach != "yes" {
		t.Errorf("agent status: ddns %+v, mapping reachable %q; want %s from mapping:web, published %s, reachable", e, reach, pmName, pmWAN)
	}
	text := l.must(30*time.Second, "home", binPath(t, "agent"), "status", "--data-dir", dataDir)
	if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(pmName) + `\s+A\s+mapping:web\s+in sync\s+` + regexp.QuoteMeta(pmWAN) + `\s+` + regexp.QuoteMeta(pmWAN) + ` \(`).MatchString(text) {
		t.Errorf("agent status does not show the name publishing the mapping:\n%s", text)
	}

	// The router restarts and its daemon stays down: the mapping is gone
	// and cannot be made again. The relay's next check (at most a minute
	// away for a published mapping) fails; the record goes.
	router.kill()
	for _, c := range [][]string{{"-t", "nat", "-F", "MINIUPNPD"}, {"-t", "nat", "-F", "MINIUPNPD-POSTROUTING"},
		{"-t", "mangle", "-F", "MINIUPNPD"}, {"-t", "filter", "-F", "MINIUPNPD"}} {
		l.must(5*time.Second, "homer", append([]string{"iptables-legacy", "-w", "5"}, c...)...)
	}
	took = l.awaitA(150*time.Second, "the mapping gone", pmName, "")
	t.Logf("record withdrawn %v after the router forgot the mapping", took.Round(time.Second))
	if agent.count("port mapping not reachable from outside") == 0 || agent.count("ddns: records withdrawn") == 0 {
		t.Error("the agent did not log the failed check and the withdrawal")
	}
	if e, reach := status(); !e.Synced || len(e.Published) != 0 || reach != "no" {
		t.Errorf("agent status after the withdrawal: ddns %+v, mapping reachable %q; want withdrawn, not reachable", e, reach)
	}

	// The daemon is back: the agent makes the mapping again, the relay
	// finds it reachable, and the name points at it again.
	router = l.startMiniupnpd(false)
	took = l.awaitA(200*time.Second, "the mapping made again", pmName, pmWAN)
	t.Logf("record published again %v after the router's daemon came back", took.Round(time.Second))

	// The agent stops: it removes the mapping, and the record goes.
	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := agent.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("agent after SIGTERM: exited %v, %v", exited, err)
	}
	if got := l.digA(pmName); got != "" {
		t.Errorf("dig %s A = %q after the agent stopped, want no record", pmName, got)
	}
	if agent.count("port mapping removed") != 1 {
		t.Error("the agent did not remove its mapping")
	}
	_ = router
}
