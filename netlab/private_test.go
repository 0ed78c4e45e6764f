//go:build netlab && linux

package netlab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Private tunnels: remote desktop without a public port. The home agent
// serves its sshd and a DNS server as private tunnels; the remote user,
// behind a NAT of its own, reaches them with "agent visit", which listens
// on 127.0.0.1 in the user's namespace and carries each connection
// through the relay.

const (
	dnsPort   = 5353 // dnsmasq at home, the private DNS tunnel's suggested port and the visitor's
	wrongPort = 2223 // where the visitor with a wrong key would listen
	dnsAnswer = "10.20.30.40"
)

// TestPrivateTunnel: the relay (a token and a visitor key from its
// configuration file) opens no port for private tunnels; the visitor,
// started before the home agent, says it waits, then carries an
// interactive ssh session, scp of the 50 MiB file both ways and DNS over
// UDP; a visitor with a wrong key ends at once, saying so.
func TestPrivateTunnel(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		need(t, "sshd", "ssh", "scp", "ssh-keygen", "ss", "dnsmasq", "dig", "bash")
		l := newLab(t, withUserNAT())
		kit := l.startSSHD()
		l.startDNS()

		token, key := secret(t), secret(t)
		conf := filepath.Join(l.dir, "relay.yaml")
		writeFile(t, conf, fmt.Sprintf("# netlab: one token, one visitor key\ntoken: %q\nvisitor_keys:\n  - name: laptop\n    secret: %q\n", token, key))
		keyFile := filepath.Join(l.dir, "laptop.key")
		writeFile(t, keyFile, key+"\n")
		r := l.startRelayConf(conf, token)

		// (4) The visitors start before the home agent: each says that
		// its tunnel's home agent is away, and waits.
		sshVisit := l.startVisitor(r, tr, "visitor-ssh", nil,
			"ssh", "--listen", fmt.Sprintf("127.0.0.1:%d", sshPort), "--key-file", keyFile)
		dnsVisit := l.startVisitor(r, tr, "visitor-dns", []string{"HOMEPORT_KEY=" + key},
			"dns", "--udp", "--listen", fmt.Sprintf("127.0.0.1:%d", dnsPort))
		for _, v := range []*proc{sshVisit, dnsVisit} {
			v.await(t, 30*time.Second, v.name+" saying it waits for the home agent", func() bool {
				return v.count("its home agent is not connected; waiting") > 0
			})
		}
		t.Log("both visitors, started before the home agent, log that they wait for it")

		agentStart := time.Now()
		a := l.startAgentTunnels(r, tr,
			fmt.Sprintf("ssh=private:%d:127.0.0.1:%d", sshPort, sshPort),
			fmt.Sprintf("dns=private:udp:%d:127.0.0.1:%d", dnsPort, dnsPort))
		registered := time.Since(agentStart)

		// (1) No public port: the relay listens on its agent port only,
		// and the user reaching the relay's address on the suggested
		// ports gets nothing.
		l.checkOnlyAgentPort()
		if _, err := l.run(20*time.Second, "user", kit.ssh("true")...); err == nil {
			t.Errorf("ssh to the relay's %s:%d works: the private tunnel has a public port", vpsIP, sshPort)
		} else {
			t.Logf("ssh to the relay's %s:%d fails, as it should (%s)", vpsIP, sshPort, firstLine(err))
		}
		if out, err := l.dig("user", vpsIP, dnsPort, 1, 1, "A", "pc.home.test"); err == nil && strings.Contains(out, "status: NOERROR") {
			t.Errorf("DNS to the relay's %s:%d/udp is answered: the private tunnel has a public port\n%s", vpsIP, dnsPort, out)
		} else {
			t.Logf("DNS to the relay's %s:%d/udp is not answered, as it should be", vpsIP, dnsPort)
		}

		// (2) ssh through the visitor: the first connection once the
		// agent is up, an interactive session, scp both ways.
		vkit, err := kit.at("127.0.0.1", sshPort)
		if err != nil {
			t.Fatal(err)
		}
		first := time.Now()
		banner, err := l.run(10*time.Second, "user", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && head -c 4 <&3", sshPort))
		if err != nil || banner != "SSH-" {
			t.Fatalf("sshd's banner through the visitor after the home agent came up: %q, %v", banner, err)
		}
		bannerTook := time.Since(first)
		first = time.Now()
		if _, err := l.run(30*time.Second, "user", vkit.ssh("true")...); err != nil {
			t.Fatalf("ssh through the visitor: %v", err)
		}
		t.Logf("over %s: the home agent's private tunnels registered %v after its start; then through the visitor sshd's banner came in %v, an ssh login and command took %v",
			tr, ms(registered), ms(bannerTook), ms(time.Since(first)))
		l.interactiveSSH(vkit, tr)
		l.sshSession(vkit, tr, filepath.Join(wwwDir(t), "big.bin"), bigSum)

		// (3) DNS over the private UDP tunnel.
		l.privateDNS(tr)

		// The visitors noticed the agent by themselves too.
		for _, v := range []*proc{sshVisit, dnsVisit} {
			v.await(t, 35*time.Second, v.name+" saying its tunnel is ready", func() bool {
				return v.count(" ready: connect to 127.0.0.1:") > 0
			})
		}
		// The relay saw the visitor coming from its router's outside
		// address: the user is really behind a NAT.
		visitor := a.logField("private visitor connection", "visitor")
		if visitor == "" {
			visitor = r.logField("private visitor connection", "visitor")
		}
		if host, _, _ := net.SplitHostPort(visitor); host != userrWAN {
			t.Errorf("relay logged the private visitor as %q, want the user's router's outside address %s", visitor, userrWAN)
		} else {
			t.Logf("the relay sees the visitor as %s: the NAT's outside address", visitor)
		}
		l.checkOnlyAgentPort() // still none, with visitors connected

		// (5) A wrong visitor key: agent visit ends with an error that
		// says so.
		wrong := filepath.Join(l.dir, "wrong.key")
		writeFile(t, wrong, secret(t)+"\n")
		start := time.Now()
		_, err = l.run(30*time.Second, "user", binPath(t, "agent"), "visit", "ssh",
			"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort), "--fingerprint", r.fingerprint,
			"--transport", tr, "--id", "intruder", "--data-dir", filepath.Join(l.dir, "intruder-data"),
			"--key-file", wrong, "--listen", fmt.Sprintf("127.0.0.1:%d", wrongPort))
		switch {
		case err == nil:
			t.Errorf("agent visit with a wrong key exited with success")
		case strings.Contains(err.Error(), "still running"):
			t.Errorf("agent visit with a wrong key did not exit: %v", err)
		case !strings.Contains(err.Error(), "the visitor key is wrong"):
			t.Errorf("agent visit with a wrong key: the error does not say the key is wrong: %v", err)
		default:
			t.Logf("agent visit with a wrong key exits after %v: %s", ms(time.Since(start)), lastLine(err))
		}
	})
}

// secret returns a new random secret, as openssl rand -base64 32 makes.
func secret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lastLine(err error) string {
	s := strings.TrimSpace(err.Error())
	return s[strings.LastIndex(s, "\n")+1:]
}

// dnsChunks are the strings of the large TXT record: 8 of 240 bytes, an
// answer of about 2 KB (more than one QUIC datagram holds).
func dnsChunks() []string {
	var chunks []string
	for k := range 8 {
		chunks = append(chunks, fmt.Sprintf("chunk%d-%s", k, strings.Repeat(string(rune('a'+k)), 233)))
	}
	return chunks
}

// startDNS runs dnsmasq at home on 127.0.0.1:5353/udp: pc.home.test is
// dnsAnswer, big.home.test a TXT record of about 2 KB.
func (l *lab) startDNS() {
	l.t.Helper()
	dnsmasq, _ := exec.LookPath("dnsmasq")
	if !filepath.IsAbs(dnsmasq) {
		dnsmasq, _ = filepath.Abs(dnsmasq)
	}
	p := l.start("home", "dnsmasq", nil, dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--log-facility=-",
		"--port="+strconv.Itoa(dnsPort), "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--edns-packet-max=4096",
		"--address=/home.test/"+dnsAnswer, "--txt-record=big.home.test,"+strings.Join(dnsChunks(), ","))
	p.logged = true
	p.await(l.t, 10*time.Second, "dnsmasq started", func() bool {
		return strings.Contains(p.stderr.String()+p.stdout.String(), "started")
	})
	if out, err := l.dig("home", "127.0.0.1", dnsPort, 2, 3, "A", "pc.home.test"); err != nil || !strings.Contains(out, dnsAnswer) {
		l.t.Fatalf("dnsmasq at home does not answer: %v\n%s", err, out)
	}
}

// dig asks the DNS server at server:port from role's namespace, waiting
// secs for each of tries.
func (l *lab) dig(role, server string, port, secs, tries int, query ...string) (string, error) {
	args := append([]string{"dig", "@" + server, "-p", strconv.Itoa(port),
		fmt.Sprintf("+time=%d", secs), fmt.Sprintf("+tries=%d", tries)}, query...)
	return l.run(time.Duration(secs*tries+10)*time.Second, role, args...)
}

// startVisitor runs "agent visit" over transport in the user's namespace,
// with the extra environment env and args (the tunnel, --listen, and the
// key unless env has it).
func (l *lab) startVisitor(r *relay, transport, name string, env []string, args ...string) *proc {
	l.t.Helper()
	all := append([]string{binPath(l.t, "agent"), "visit"}, args...)
	all = append(all, "--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort), "--fingerprint", r.fingerprint,
		"--transport", transport, "--id", "laptop", "--data-dir", filepath.Join(l.dir, name+"-data"))
	p := l.start("user", name, env, all...)
	p.logged = true
	return p
}

// checkOnlyAgentPort checks that the relay listens on its agent port
// (TCP, and UDP for QUIC) and nothing else.
func (l *lab) checkOnlyAgentPort() {
	l.t.Helper()
	out := l.must(5*time.Second, "vps", "ss", "-Hltnu")
	var tcp, udp bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			l.t.Errorf("ss -Hltnu in vps: cannot read %q", line)
			continue
		}
		_, port, _ := net.SplitHostPort(f[4])
		if port != strconv.Itoa(relayPort) {
			l.t.Errorf("the VPS listens on %s/%s, which is not the relay's agent port %d:\n%s", f[4], f[0], relayPort, out)
			continue
		}
		tcp = tcp || f[0] == "tcp"
		udp = udp || f[0] == "udp"
	}
	if !tcp || !udp {
		l.t.Errorf("the relay does not listen on its agent port %d over both TCP and UDP:\n%s", relayPort, out)
	}
}

// interactiveSSH logs in through the visitor with a terminal (ssh -tt),
// types commands into the login shell and checks its answers.
func (l *lab) interactiveSSH(kit sshKit, tr string) {
	t := l.t
	t.Helper()
	args := append(append([]string{"ssh", "-tt"}, kit.opts()...), "-p", strconv.Itoa(kit.port), "root@"+kit.host)
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	cmd := l.command(ctx, "user", args...)
	cmd.Stdin = strings.NewReader("tty; ip -4 -o addr show; echo sum-$((6*7))\nexit\n")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("interactive ssh through the visitor: %v\n%s", err, out)
	}
	s := string(out)
	switch {
	case !regexp.MustCompile(`/dev/pts/\d+\r?\n`).MatchString(s):
		t.Errorf("the interactive session has no terminal at home (tty):\n%s", s)
	case !strings.Contains(s, " "+homeIP+"/24 "):
		t.Errorf("the interactive session is not on the home PC (no %s in its addresses):\n%s", homeIP, s)
	case !strings.Contains(s, "sum-42"): // typed as sum-$((6*7))
		t.Errorf("the home shell did not run the typed command:\n%s", s)
	default:
		t.Logf("interactive ssh through the visitor over %s: a terminal at home, typed commands ran, %v", tr, ms(took))
	}
}

// privateDNS asks dnsmasq at home through the visitor's private UDP
// tunnel: 20 small queries (each a flow of its own), and the TXT answer
// of about 2 KB.
func (l *lab) privateDNS(tr string) {
	t := l.t
	t.Helper()
	// Each query is a flow of its own, held for the flow timeout (60 s):
	// with the TXT query, 13 at once. Over QUIC the relay lets a
	// session have at most 16 streams open at once (an agent opens one),
	// and a visitor's every connection and flow is a stream: a 17th
	// would wait for one to end.
	const n = 12
	var q []string
	for range n {
		q = append(q, "A", "pc.home.test")
	}
	start := time.Now()
	out, err := l.dig("user", "127.0.0.1", dnsPort, 2, 3, q...)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("dig through the private UDP tunnel: %v\n%s", err, out)
	}
	aRecord := regexp.MustCompile(`(?m)^pc\.home\.test\.\s+\d+\s+IN\s+A\s+` + regexp.QuoteMeta(dnsAnswer) + `$`)
	if got := len(aRecord.FindAllString(out, -1)); got != n {
		t.Fatalf("%d of %d DNS answers through the private UDP tunnel are right:\n%s", got, n, out)
	}
	var times []time.Duration
	for _, m := range regexp.MustCompile(`Query time: (\d+) msec`).FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		times = append(times, time.Duration(v)*time.Millisecond)
	}
	t.Logf("DNS through the private UDP tunnel over %s: %d queries, each a new flow, all answered in %v; query times %s",
		tr, n, ms(took), spread(times))

	// +ignore: a truncated answer would be kept, not retried over TCP.
	out, err = l.dig("user", "127.0.0.1", dnsPort, 2, 3, "+bufsize=4096", "+notcp", "+ignore", "TXT", "big.home.test")
	if err != nil || !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("dig TXT through the private UDP tunnel: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`MSG SIZE\s+rcvd: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no message size in dig's output:\n%s", out)
	}
	if size, _ := strconv.Atoi(m[1]); size <= 1400 {
		t.Fatalf("TXT answer of %d bytes, want more than 1400:\n%s", size, out)
	}
	if regexp.MustCompile(`flags:[^;]*\btc\b`).MatchString(out) {
		t.Fatalf("truncated TXT answer:\n%s", out)
	}
	for _, c := range dnsChunks() {
		if !strings.Contains(out, `"`+c+`"`) {
			t.Fatalf("the TXT answer lacks %q:\n%s", c[:8], out)
		}
	}
	t.Logf("DNS TXT answer of %s bytes through the private UDP tunnel, whole", m[1])
}
