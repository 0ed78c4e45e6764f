//go:build netlab && linux

package netlab

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recoveryLimit is how soon after the relay or the uplink is back new
// connections through the tunnel must work.
const recoveryLimit = 2 * time.Second

// forTransports runs f once per agent transport, as subtests.
func forTransports(t *testing.T, f func(t *testing.T, transport string)) {
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr, func(t *testing.T) { f(t, tr) })
	}
}

// up starts nginx at home (the web tunnel's target), the relay and the
// agent, and checks that the tunnel works.
func (l *lab) up(transport string) (*relay, *proc) {
	l.t.Helper()
	l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))
	r := l.startRelay()
	a := l.startAgent(r, transport)
	if !l.probe(5 * time.Second) {
		l.t.Fatal("the web tunnel does not work on a clean link")
	}
	return r, a
}

// firstAfter returns the first of times at or after t0 (log times have
// millisecond precision).
func firstAfter(times []time.Time, t0 time.Time) (time.Time, bool) {
	t0 = t0.Truncate(time.Millisecond)
	for _, ts := range times {
		if !ts.Before(t0) {
			return ts, true
		}
	}
	return time.Time{}, false
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// TestPremise: the home PC cannot be reached from the internet, not even
// a service listening on all its addresses; the relay sees the agent
// coming from the NAT's outside address; through the tunnel it works.
func TestPremise(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		l := newLab(t)
		l.startNginx("home", fmt.Sprintf("0.0.0.0:%d", webPort)) // on the LAN too: the worst case
		r := l.startRelay()
		a := l.startAgent(r, tr)

		for _, c := range []struct{ what, url string }{
			{"the home PC's address", fmt.Sprintf("http://%s:%d/small.txt", homeIP, webPort)},
			{"the home router's outside address", fmt.Sprintf("http://%s:%d/small.txt", homerWAN, webPort)},
		} {
			x, err := l.curl("user", 2*time.Second, "-o", "/dev/null", c.url)
			if err == nil {
				t.Errorf("remote user reaches %s (%s): HTTP %d", c.what, c.url, x.code)
			} else {
				t.Logf("remote user → %s: fails, as it should (%s)", c.what, firstLine(err))
			}
		}
		if _, err := exec.LookPath("ping"); err == nil {
			for _, c := range []struct {
				from, to string
				want     bool
			}{
				{"user", homeIP, false}, {"user", homerWAN, false},
				{"user", vpsIP, true}, {"home", vpsIP, true}, // the network itself works
			} {
				_, err := l.run(10*time.Second, c.from, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", c.to)
				if got := err == nil; got != c.want {
					t.Errorf("ping %s → %s: answered %v, want %v", c.from, c.to, got, c.want)
				} else {
					t.Logf("ping %s → %s: answered %v, as it should", c.from, c.to, got)
				}
			}
		} else {
			t.Log("no ping command (Debian package iputils-ping): ICMP reachability not checked")
		}

		x, err := l.curl("user", 5*time.Second, "-o", "/dev/null", tunnelURL("small.txt"))
		if err != nil || x.code != 200 {
			t.Fatalf("through the tunnel: HTTP %d, %v", x.code, err)
		}

		// The agent's view (the relay tells it the address it sees) and
		// the relay's own log agree: the NAT's outside address.
		pub := a.logField("connected to relay", "public_addr")
		seen := r.logField("agent session up", "agent_addr")
		t.Logf("agent's public_addr %s; relay's agent_addr %s", pub, seen)
		for what, addr := range map[string]string{"agent's public_addr": pub, "relay's agent_addr": seen} {
			if host, _, err := net.SplitHostPort(addr); err != nil || host != homerWAN {
				t.Errorf("%s is %q, want the home router's outside address %s", what, addr, homerWAN)
			}
		}
		if pub != seen {
			t.Errorf("agent's public_addr %s differs from the relay's agent_addr %s", pub, seen)
		}
		if _, err := exec.LookPath("conntrack"); err == nil {
			proto := map[string]string{"tcp": "tcp", "quic": "udp"}[tr]
			_, port, _ := net.SplitHostPort(seen)
			mapped := l.natMappings(proto)
			t.Logf("home router's %s mappings to the relay: outside ports %v", proto, mapped)
			if p, _ := strconv.Atoi(port); !containsInt(mapped, p) {
				t.Errorf("the relay's agent_addr port %s is not among the home router's mappings %v", port, mapped)
			}
		}
		// Strict isolation: the lab's addresses exist only in its
		// namespaces, never in the one the tests run in.
		own := l.must(5*time.Second, "", "ip", "-o", "-4", "addr", "show")
		for _, ip := range []string{homeIP, homerLAN, homerWAN, inetHome, inetVPS, inetUser, vpsIP, userIP} {
			if strings.Contains(own, " "+ip+"/") {
				t.Errorf("the tests' own namespace has the lab's address %s", ip)
			}
		}
		// Visitors reach the relay with their own address (no NAT there).
		visitor := r.logField("visitor connection", "visitor")
		if host, _, _ := net.SplitHostPort(visitor); host != userIP {
			t.Errorf("relay logged visitor %q, want the remote user's address %s", visitor, userIP)
		}
	})
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// TestHTTP: nginx at home, curl from the remote user through the relay's
// public port, on a clean link: 100 small requests, each on a connection
// of its own and 8 at a time, all succeed; the 50 MiB download arrives
// intact. Throughput is reported next to a direct transfer from the home
// PC to the VPS that does not use the tunnel.
func TestHTTP(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		l := newLab(t)
		upDir := l.startNginx("vps", fmt.Sprintf("%s:%d", vpsIP, directPort))
		l.up(tr)

		l.checkSmallRequests()

		x, err := l.download("tunnel download", 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		d, err := l.directUpload(upDir, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("50 MiB through the tunnel over %s: %v, sha256 equal", tr, x)
		t.Logf("50 MiB home → VPS directly (no tunnel): %v; the tunnel reaches %.0f%% of it", d, 100*x.mibps()/d.mibps())
	})
}

// smallRequests fetches small.txt n times through the tunnel from the
// remote user, each on a new connection, parallel at a time, and checks
// every answer. It returns how many succeeded and the time all took.
func (l *lab) smallRequests(n, parallel int) (int, time.Duration, error) {
	dir := filepath.Join(l.dir, "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	// --parallel-immediate: else curl holds each new transfer back until
	// it knows whether the last connection can carry several (HTTP/1.1:
	// after its answer), which on a delayed uplink makes the requests
	// mostly one after the other.
	out, err := l.run(2*time.Minute, "user", "curl", "-sS", "--parallel", "--parallel-max", strconv.Itoa(parallel), "--parallel-immediate",
		"--max-time", "10", "-H", "Connection: close", "-w", "%{http_code} %{num_connects}\n",
		"-o", filepath.Join(dir, "small-#1"), fmt.Sprintf("%s?n=[1-%d]", tunnelURL("small.txt"), n))
	took := time.Since(start)
	connects := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "200" {
			c, _ := strconv.Atoi(f[1])
			connects += c
		}
	}
	ok := 0
	for i := 1; i <= n; i++ {
		if b, rerr := os.ReadFile(filepath.Join(dir, fmt.Sprintf("small-%d", i))); rerr == nil && string(b) == string(smallTxt) {
			ok++
		}
	}
	if err == nil && connects != n {
		err = fmt.Errorf("curl made %d connections for %d requests", connects, n)
	}
	return ok, took, err
}

// TestSSH: OpenSSH's sshd at home, ssh and scp from the remote user
// through the relay's public port: a command runs at home, a 20 MiB file
// is copied both ways intact.
func TestSSH(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		need(t, "sshd", "ssh", "scp", "ssh-keygen")
		l := newLab(t)
		kit := l.startSSHD()
		r := l.startRelay()
		l.startAgent(r, tr)
		l.sshSession(kit, tr, filepath.Join(wwwDir(t), "ssh.bin"), sshSum)
	})
}

// sshSession runs a command at home through the SSH tunnel (from the
// remote user) and checks it ran there, then copies src, whose sha256 is
// sum, with scp both ways and checks both copies. It returns the
// command's time and the copies' figures.
func (l *lab) sshSession(kit sshKit, tr, src string, sum [32]byte) (command time.Duration, homeToUser, userToHome xfer) {
	t := l.t
	t.Helper()
	ipCmd, _ := exec.LookPath("ip")
	start := time.Now()
	out, err := l.run(30*time.Second, "user", kit.ssh(ipCmd+" -4 -o addr show; sha256sum "+src)...)
	if err != nil {
		t.Fatalf("ssh through the tunnel: %v", err)
	}
	command = time.Since(start)
	t.Logf("ssh command through the tunnel over %s: %v", tr, ms(command))
	if !strings.Contains(out, " "+homeIP+"/24 ") {
		t.Errorf("the command did not run on the home PC (no %s in its addresses):\n%s", homeIP, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%x", sum)) {
		t.Errorf("sha256sum at home disagrees:\n%s", out)
	}
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"home → user", "user → home"} {
		dst := filepath.Join(l.dir, "scp-"+strings.ReplaceAll(dir, " → ", "-to-")+".bin")
		from, to := fmt.Sprintf("root@%s:%s", kit.host, src), dst
		if dir == "user → home" {
			from, to = src, fmt.Sprintf("root@%s:%s", kit.host, dst)
		}
		start := time.Now()
		if _, err := l.run(2*time.Minute, "user", kit.scp(from, to)...); err != nil {
			t.Fatalf("scp %s: %v", dir, err)
		}
		x := xfer{code: 200, bytes: st.Size(), secs: time.Since(start).Seconds()}
		if err := checkSum(dst, sum); err != nil {
			t.Fatalf("scp %s: %v", dir, err)
		}
		t.Logf("scp %.1f MiB %s over %s: %v (%.1f MiB/s with the SSH handshake), sha256 equal",
			float64(x.bytes)/(1<<20), dir, tr, ms(time.Duration(x.secs*float64(time.Second))), x.mibps())
		if dir == "home → user" {
			homeToUser = x
		} else {
			userToHome = x
		}
	}
	return command, homeToUser, userToHome
}

// sshKit holds the client's key and known_hosts for the lab's sshd, and
// the address the client reaches it at.
type sshKit struct {
	key, knownHosts string
	hostKey         string // sshd's public host key
	host            string
	port            int
}

// at returns the kit for reaching sshd at host:port, with a known_hosts
// file of its own that pins sshd's host key for that address.
func (k sshKit) at(host string, port int) (sshKit, error) {
	k.host, k.port = host, port
	k.knownHosts = fmt.Sprintf("%s-%s-%d", strings.TrimSuffix(k.knownHosts, filepath.Ext(k.knownHosts)), host, port)
	return k, os.WriteFile(k.knownHosts, []byte(fmt.Sprintf("[%s]:%d %s\n", host, port, k.hostKey)), 0o600)
}

func (k sshKit) opts() []string {
	return []string{"-F", "/dev/null",
		"-o", "IdentityFile=" + k.key, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + k.knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
		"-o", "LogLevel=ERROR"}
}

// ssh is the command line that runs command at home through the tunnel.
func (k sshKit) ssh(command string) []string {
	return append(append([]string{"ssh"}, k.opts()...), "-p", strconv.Itoa(k.port), "root@"+k.host, command)
}

// scp is the command line that copies from to to through the tunnel.
func (k sshKit) scp(from, to string) []string {
	return append(append([]string{"scp", "-q"}, k.opts()...), "-P", strconv.Itoa(k.port), from, to)
}

// startSSHD runs sshd at home on 127.0.0.1:2222 with a new host key and
// one authorized key, both made for this lab.
func (l *lab) startSSHD() sshKit {
	l.t.Helper()
	dir := filepath.Join(l.dir, "ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	hostKey, clientKey := filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "client_ed25519")
	for _, k := range []string{hostKey, clientKey} {
		l.must(30*time.Second, "home", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netlab", "-f", k)
	}
	pub := func(path string) string {
		b, err := os.ReadFile(path + ".pub")
		if err != nil {
			l.t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	kit := sshKit{key: clientKey, knownHosts: filepath.Join(dir, "known_hosts"), hostKey: pub(hostKey), host: vpsIP, port: sshPort}
	files := map[string]string{
		"authorized_keys": pub(clientKey) + "\n",
		"known_hosts":     fmt.Sprintf("[%s]:%d %s\n", vpsIP, sshPort, pub(hostKey)),
		"sshd_config": fmt.Sprintf(`# netlab: sshd in the home namespace
ListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
LogLevel INFO
`, sshPort, hostKey, dir, dir),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			l.t.Fatal(err)
		}
	}
	// sshd insists on its privilege separation directory, which the
	// openssh-server package normally has systemd create at boot.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		l.t.Fatal(err)
	}
	sshd, _ := exec.LookPath("sshd")
	if !filepath.IsAbs(sshd) {
		sshd, _ = filepath.Abs(sshd)
	}
	p := l.start("home", "sshd", nil, sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	p.logged = true
	p.await(l.t, 10*time.Second, "sshd listening", func() bool {
		return strings.Contains(p.stderr.String(), fmt.Sprintf("Server listening on 127.0.0.1 port %d", sshPort))
	})
	return kit
}

// TestRelayRestart: the relay is killed with SIGKILL, with the tunnel
// idle for a second, and started again (as a service manager would) three
// times, then once more after 20 s away. New connections through the tunnel must work within 2 s of the
// relay being back, with the agent left alone.
func TestRelayRestart(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		l := newLab(t)
		r, a := l.up(tr)
		absences := []time.Duration{0, 0, 0, 20 * time.Second}
		for i, absence := range absences {
			// The tunnel idle for a moment, as it mostly is when a relay
			// dies: no packet of the last connection still on its way.
			time.Sleep(time.Second)
			sessions := a.count(`msg="connected to relay"`)
			killed := time.Now()
			r.kill()
			time.Sleep(absence)
			r = l.startRelay()
			rec, ok := l.awaitTunnel(r.ready, 30*time.Second)
			noticed, reconnected := "never", "never"
			if ts, ok := firstAfter(a.logTimes("session lost; reconnecting"), killed); ok {
				noticed = ms(ts.Sub(killed)) + " after the kill"
			}
			if times := a.logTimes("connected to relay"); len(times) > sessions {
				reconnected = ms(times[sessions].Sub(r.ready)) + " after the relay was back"
			}
			t.Logf("restart %d over %s (relay away %v): agent noticed the loss %s, reconnected %s; tunnel works %s after the relay was back",
				i+1, tr, ms(r.ready.Sub(killed)), noticed, reconnected, ms(rec))
			switch {
			case !ok:
				t.Errorf("restart %d: the tunnel did not work again within %v", i+1, rec.Round(time.Second))
			case rec > recoveryLimit:
				t.Errorf("restart %d: the tunnel worked again only %v after the relay was back, want at most %v", i+1, ms(rec), recoveryLimit)
			}
		}
		if !a.running() {
			t.Error("the agent exited")
		}
	})
}

// TestLossyUplink: the 50 MiB download through the tunnel with 1% packet
// loss on the home uplink (both ways) arrives intact. Throughput is
// reported for the clean and the lossy link, next to a direct transfer
// from the home PC to the VPS over the same uplink. The +20ms variants
// run the same over the delay link with 20 ms more round-trip time,
// moving 8 MiB instead of 50.
func TestLossyUplink(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) { lossRun(t, tr, 0) })
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr+"+20ms", func(t *testing.T) { lossRun(t, tr, 20*time.Millisecond) })
	}
}

func lossRun(t *testing.T, tr string, rtt time.Duration) {
	const loss = 0.01
	var opts []labOption
	size := int64(bigSize)
	if rtt > 0 {
		opts, size = append(opts, withDelayLink(linkConfig{})), 8<<20
	}
	l := newLab(t, opts...)
	src, sum := filepath.Join(wwwDir(t), "big.bin"), bigSum
	if size != bigSize {
		src, sum = l.prefixFile(src, size)
	}
	if rtt > 0 {
		l.uplinkDelay(rtt / 2)
		l.checkRTT(rtt)
	}
	upDir := l.startNginx("vps", fmt.Sprintf("%s:%d", vpsIP, directPort))
	l.up(tr)

	clean, err := l.downloadPart("tunnel download, clean link", 2*time.Minute, size, sum)
	if err != nil {
		t.Fatal(err)
	}
	cleanDirect, err := l.directUploadFile(upDir, 2*time.Minute, src, sum)
	if err != nil {
		t.Fatal(err)
	}
	l.uplinkLoss(loss)
	lossy, err := l.downloadPart(fmt.Sprintf("tunnel download, %g%% loss", loss*100), 3*time.Minute, size, sum)
	if err != nil {
		t.Fatal(err)
	}
	dropped := l.uplinkDropped()
	lossyDirect, err := l.directUploadFile(upDir, 3*time.Minute, src, sum)
	if err != nil {
		t.Fatal(err)
	}
	droppedDirect := l.uplinkDropped()
	t.Logf("over %s: clean link: tunnel %v, direct %v", tr, clean, cleanDirect)
	t.Logf("over %s: %g%% loss: tunnel %v (%.0f%% of clean, %d packets dropped), direct %v (%.0f%% of clean, %d packets dropped); sha256 equal",
		tr, loss*100, lossy, 100*lossy.mibps()/clean.mibps(), dropped, lossyDirect, 100*lossyDirect.mibps()/cleanDirect.mibps(), droppedDirect)
	if dropped == 0 || droppedDirect == 0 {
		t.Error("the uplink dropped no packet: the loss impairment did not apply")
	}
}

// uplinkDropped reads and zeroes the packet counter of the uplink's
// impairment rules.
func (l *lab) uplinkDropped() int64 { return l.chainDropped("NETLAB-UPLINK") }

// checkSmallRequests makes n = 100 small HTTP requests, 8 at a time,
// each on a new connection, logs how it went and fails the test unless
// all succeeded. It returns n, how many succeeded and how long they took.
func (l *lab) checkSmallRequests() (n, ok int, took time.Duration) {
	l.t.Helper()
	const parallel = 8
	n = 100
	ok, took, err := l.smallRequests(n, parallel)
	l.t.Logf("%d small requests (%d at a time, a new connection each): %d succeeded in %v (%.0f requests/s)",
		n, parallel, ok, ms(took), float64(ok)/took.Seconds())
	if err != nil || ok != n {
		l.t.Errorf("small requests: %d of %d succeeded: %v", ok, n, err)
	}
	return n, ok, took
}

// chainDropped reads and zeroes the packets the DROP rules of the internet
// router's chain have dropped.
func (l *lab) chainDropped(chain string) int64 {
	l.t.Helper()
	out := l.must(5*time.Second, "inet", "iptables", "-w", "5", "-L", chain, "-n", "-v", "-x", "-Z")
	var n int64
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "DROP" {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			n += v
		}
	}
	return n
}

// TestUplinkDown: the home uplink fails for 10 s and for 30 s and comes
// back, in two ways: "down", a cable pulled (the home router loses its
// carrier, the internet router its route to the home, and says so with
// ICMP), and "blackhole", an outage upstream that silently drops
// everything both ways. One second into the outage the remote user tries
// to connect (and must fail: the outage is real), as a user would. New
// connections through the tunnel must work within 2 s of the uplink's
// return. After 10 s the TCP session is still alive but stuck behind
// backed-off retransmissions; after 30 s the keepalive has declared it
// dead.
func TestUplinkDown(t *testing.T) {
	for _, c := range []struct {
		kind   string
		outage time.Duration
	}{{"down", 10 * time.Second}, {"blackhole", 10 * time.Second}, {"down", 30 * time.Second}, {"blackhole", 30 * time.Second}} {
		kind, outage := c.kind, c.outage
		t.Run(fmt.Sprintf("%s-%v", kind, outage), func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr string) {
				l := newLab(t)
				r, a := l.up(tr)
				fail := func(on bool) {
					if kind == "down" {
						l.uplinkLink(!on)
					} else {
						l.uplinkBlackhole(on)
					}
				}
				sessions := a.count(`msg="connected to relay"`)
				down := time.Now()
				fail(true)
				// The outage is real: nothing gets through.
				time.Sleep(time.Second)
				if l.probe(2 * time.Second) {
					t.Error("a connection through the tunnel worked during the outage")
				}
				time.Sleep(time.Until(down.Add(outage)))
				if tr == "tcp" {
					t.Logf("at the uplink's return, relay's TCP to the agent: %s; agent's TCP to the relay: %s",
						l.tcpState("vps", "sport", relayPort), l.tcpState("home", "dport", relayPort))
				}
				fail(false)
				up := time.Now()
				rec, ok := l.awaitTunnel(up, 60*time.Second)

				noticed, relayNoticed, reconnected := "did not notice", "did not notice", "kept its session"
				if ts, ok := firstAfter(a.logTimes("session lost; reconnecting"), down); ok {
					noticed = "noticed " + ms(ts.Sub(down)) + " after the outage began"
				} else if ts, ok := firstAfter(a.logTimes("relay silent; opening a new session beside this one"), down); ok {
					noticed = "found the relay silent " + ms(ts.Sub(down)) + " after the outage began and opened new sessions beside the old"
				}
				if ts, ok := firstAfter(r.logTimes("agent session down"), down); ok {
					relayNoticed = "noticed " + ms(ts.Sub(down)) + " after the outage began"
				}
				if times := a.logTimes("connected to relay"); len(times) > sessions {
					reconnected = "reconnected " + ms(times[len(times)-1].Sub(up)) + " after the uplink was back"
				}
				t.Logf("uplink %s for %v over %s: agent %s, relay %s, agent %s; tunnel works %s after the uplink was back",
					kind, outage, tr, noticed, relayNoticed, reconnected, ms(rec))
				switch {
				case !ok:
					t.Errorf("the tunnel did not work again within %v of the uplink's return", rec.Round(time.Second))
				case rec > recoveryLimit:
					t.Errorf("the tunnel worked again only %v after the uplink was back, want at most %v", ms(rec), recoveryLimit)
				}
			})
		})
	}
}

// tcpState summarises the established TCP connections in role's
// namespace whose port (dir: sport or dport) is port: the send queue and
// the retransmission state, from ss.
func (l *lab) tcpState(role, dir string, port int) string {
	out, err := l.run(5*time.Second, role, "ss", "-tinH", "state", "established", dir, "=", fmt.Sprintf(":%d", port))
	if err != nil {
		return "ss: " + firstLine(err)
	}
	parts := ssSummary(out, func(f []string) string {
		if len(f) >= 4 {
			return "send-q " + f[1]
		}
		return ""
	}, "rto:", "backoff:", "unacked:", "retrans:", "lastack:")
	if len(parts) == 0 {
		return "no connection"
	}
	return strings.Join(parts, " ")
}

// ssSummary picks from `ss -i` output, for each socket, what head makes of
// its first line (nothing when head returns "") and the fields of its info
// line that start with one of keys.
func ssSummary(out string, head func(fields []string) string, keys ...string) []string {
	var parts []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			if h := head(f); h != "" {
				parts = append(parts, h)
			}
			continue
		}
		for _, kv := range f {
			for _, key := range keys {
				if strings.HasPrefix(kv, key) {
					parts = append(parts, kv)
				}
			}
		}
	}
	return parts
}

// TestUplinkBackMidDial: the agent starts while the home uplink silently
// drops everything (a router still syncing, an outage upstream), so its
// first attempt to reach the relay gets no answer; the uplink returns
// 7.5 s into that attempt, late in it: after the last retransmission
// before the agent's 10 s handshake timeout (TCP resends its SYN after 1,
// 3 and 7 s, or 1, 2, 3, 4 and 6 s with Linux's tcp_syn_linear_timeouts;
// QUIC resends its Initial ever more rarely too). This is the worst case
// of TestUplinkDown's outages, made repeatable. New connections through the tunnel must work within
// 2 s of the uplink's return.
func TestUplinkBackMidDial(t *testing.T) {
	const backAfter = 7500 * time.Millisecond
	forTransports(t, func(t *testing.T, tr string) {
		l := newLab(t)
		l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))
		r := l.startRelay()
		l.uplinkBlackhole(true)
		a := l.launchAgent(r, tr)
		started := time.Now()
		time.Sleep(time.Until(started.Add(backAfter)))
		dropped := l.uplinkDropped()
		l.uplinkBlackhole(false)
		up := time.Now()
		rec, ok := l.awaitTunnel(up, 30*time.Second)

		failed, connected := "none", "never"
		if times := a.logTimes("relay unreachable; retrying"); len(times) > 0 {
			failed = ms(times[0].Sub(started)) + " after the agent started (" + a.logField("relay unreachable; retrying", "err") + ")"
		}
		if times := a.logTimes("connected to relay"); len(times) > 0 {
			connected = ms(times[0].Sub(up)) + " after the uplink was back"
		}
		t.Logf("over %s: the uplink dropped %d packets of the agent's first attempt in %v; that attempt failed %s; connected %s; tunnel works %s after the uplink was back",
			tr, dropped, backAfter, failed, connected, ms(rec))
		switch {
		case !ok:
			t.Errorf("the tunnel did not work within %v of the uplink's return", rec.Round(time.Second))
		case rec > recoveryLimit:
			t.Errorf("the tunnel worked only %v after the uplink was back, want at most %v: the agent's attempt in flight, its packets retransmitted ever more rarely, waited for its timeout", ms(rec), recoveryLimit)
		}
	})
}

// TestNATStateLoss: during a download through the tunnel (rate-limited to
// 10 MiB/s so that it lasts 5 s), the home router loses its NAT state
// (conntrack flushed), or rebinds (flushed, and new mappings get new
// outside ports). Over QUIC the download must survive, intact, in the
// same session. Over TCP a rebinding cuts the session (the relay cannot
// know the new port belongs to it); there the tunnel must work again by
// itself, and the figures are reported. And with the tunnel idle, the
// first connection after a flush must work within the agent's keepalive
// interval and 2 s (flush-idle).
func TestNATStateLoss(t *testing.T) {
	need(t, "conntrack")
	t.Run("flush-idle", func(t *testing.T) { forTransports(t, natIdleRun) })
	for _, rebind := range []bool{false, true} {
		name := "flush"
		if rebind {
			name = "rebind"
		}
		t.Run(name, func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr string) { natRun(t, tr, rebind) })
		})
	}
}

// natIdleRun: the home router loses its NAT state while the tunnel is
// idle, then the remote user connects. Until the agent sends a packet of
// its own, the router drops what the relay sends it; the agent's
// keepalive (every 10 s) is the latest such packet. The connection must
// work within that interval and 2 s.
func natIdleRun(t *testing.T, tr string) {
	const keepalive = 10 * time.Second // the agent's default
	l := newLab(t)
	_, a := l.up(tr)
	sessions := a.count(`msg="connected to relay"`)
	time.Sleep(500 * time.Millisecond)
	l.natFlush()
	at := time.Now()
	x, err := l.curl("user", 30*time.Second, "-o", "/dev/null", tunnelURL("small.txt"))
	took := time.Since(at)
	t.Logf("over %s: the first connection after the NAT state loss (idle tunnel) took %s: HTTP %d, err %v; agent made %d new sessions",
		tr, ms(took), x.code, err, a.count(`msg="connected to relay"`)-sessions)
	switch {
	case err != nil || x.code != 200:
		t.Errorf("the first connection after the NAT state loss failed: HTTP %d, %v", x.code, err)
	case took > keepalive+recoveryLimit:
		t.Errorf("the first connection after the NAT state loss took %s, want at most the agent's keepalive interval and %v", ms(took), recoveryLimit)
	}
}

func natRun(t *testing.T, tr string, rebind bool) {
	l := newLab(t)
	_, a := l.up(tr)
	proto := map[string]string{"tcp": "tcp", "quic": "udp"}[tr]
	before := l.natMappings(proto)
	sessions := a.count(`msg="connected to relay"`)

	dl := l.slowDownload("nat-download.bin")
	what := "conntrack flush"
	var lo, hi int
	if rebind {
		lo, hi = l.natRebind()
		what = fmt.Sprintf("NAT rebinding to ports %d-%d", lo, hi)
	} else {
		l.natFlush()
	}
	at := time.Now()
	// New connections are tried while the download goes on (or fails).
	type recovery struct {
		after time.Duration
		ok    bool
	}
	recovered := make(chan recovery, 1)
	go func() {
		d, ok := l.awaitTunnel(at, 45*time.Second)
		recovered <- recovery{d, ok}
	}()
	x, survived, err := dl.finish()
	rec := <-recovered
	after := l.natMappings(proto)
	newSessions := a.count(`msg="connected to relay"`) - sessions
	t.Logf("%s over %s during a download: download survived %v (%v, 5.0 s at the rate limit; err %v); home router's %s mappings to the relay %v before, %v after; agent made %d new sessions; new connections work %s after the %s",
		what, tr, survived, x, err, proto, before, after, newSessions, ms(rec.after), what)
	if rebind {
		moved := false
		for _, p := range after {
			moved = moved || p >= lo && p <= hi
		}
		if !moved {
			t.Errorf("after the rebinding no mapping uses the new ports %d-%d: %v", lo, hi, after)
		}
	}
	if tr == "quic" {
		if !survived {
			t.Errorf("over QUIC the download did not survive the %s: %v", what, err)
		}
		if newSessions != 0 {
			t.Errorf("over QUIC the agent made %d new sessions after the %s, want the same session", newSessions, what)
		}
	}
	if newSessions > 0 {
		times := a.logTimes("connected to relay")
		t.Logf("the agent made a new session %s after the %s", ms(times[len(times)-1].Sub(at)), what)
	}
	if !rec.ok {
		t.Errorf("the tunnel did not work again within %v of the %s", rec.after.Round(time.Second), what)
	}
}

// download is a download of big.bin through the tunnel, rate-limited to
// 10 MiB/s so that it lasts about 5 s.
type download struct {
	l    *lab
	curl *proc
	out  string
}

// slowDownload starts a download at user and returns once 15 MiB of it
// have arrived.
func (l *lab) slowDownload(name string) *download {
	l.t.Helper()
	out := filepath.Join(l.dir, name)
	dl := l.start("user", "curl", nil, "curl", "-sS", "--limit-rate", "10M", "--max-time", "60",
		"-w", curlWriteOut, "-o", out, tunnelURL("big.bin"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err := os.Stat(out); err == nil && st.Size() >= 15<<20 {
			return &download{l: l, curl: dl, out: out}
		}
		if !dl.running() || time.Now().After(deadline) {
			l.t.Fatalf("the download did not reach 15 MiB (curl: %v %s)", dl.err, dl.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// finish waits for the download and reports whether it completed with
// the right checksum.
func (d *download) finish() (x xfer, complete bool, err error) {
	exited, err := d.curl.wait(90 * time.Second)
	if !exited {
		d.l.t.Fatal("curl still running after 90 s")
	}
	x, perr := parseXfer(d.curl.stdout.String())
	if err != nil {
		return x, false, fmt.Errorf("%v: %s", err, strings.TrimSpace(d.curl.stderr.String()))
	}
	if perr != nil || x.code != 200 {
		return x, false, cmp.Or(perr, fmt.Errorf("HTTP %d", x.code))
	}
	if err := checkSum(d.out, bigSum); err != nil {
		return x, false, err
	}
	return x, true, nil
}
