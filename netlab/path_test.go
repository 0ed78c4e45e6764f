//go:build netlab && linux

package netlab

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	iperfPort       = 5201 // iperf3 at home, and the iperf tunnel's public port
	iperfDirectPort = 5202 // iperf3 on the VPS, for tests that bypass the tunnel
)

// pathProfile is a home uplink to run the applications over.
type pathProfile struct {
	name string
	rtt  time.Duration // added round trip (the delay link's); 0: the veth pair
	loss float64       // each way

	httpSize int64 // the tunneled download and the direct upload
	scpSize  int64 // copied with scp each way
	iperfFor time.Duration
}

// TestPath: SSH (a command, scp both ways), HTTP (100 small requests, a
// large download) and iperf3 (both ways) through the tunnel, on a clean
// uplink and on one with 50 ms round trip and 1% loss each way (the delay
// link). Each throughput is reported next to plain TCP over the same
// uplink: the same transfer from the home PC straight to the VPS, and
// iperf3 between them. Passes when everything succeeds, every checksum is
// equal, and the impairments were there: the round trip measured by ping
// and by a request through the tunnel, packets dropped by the uplink.
func TestPath(t *testing.T) {
	for _, p := range []pathProfile{
		{name: "clean", httpSize: bigSize, scpSize: sshSize, iperfFor: 3 * time.Second},
		{name: "rtt50-loss1", rtt: 50 * time.Millisecond, loss: 0.01, httpSize: 4 << 20, scpSize: 2 << 20, iperfFor: 5 * time.Second},
	} {
		t.Run(p.name, func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr string) { pathRun(t, p, tr) })
		})
	}
}

func pathRun(t *testing.T, p pathProfile, tr string) {
	need(t, "sshd", "ssh", "scp", "ssh-keygen", "iperf3", "ping")
	var opts []labOption
	if p.rtt > 0 {
		opts = append(opts, withDelayLink(linkConfig{delay: p.rtt / 2}))
	}
	l := newLab(t, opts...)
	upDir := l.startNginx("vps", fmt.Sprintf("%s:%d", vpsIP, directPort))
	l.startIperf("vps", vpsIP, iperfDirectPort)
	l.startIperf("home", "127.0.0.1", iperfPort)
	kit := l.startSSHD()
	l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))
	r := l.startRelay()
	l.startAgent(r, tr, fmt.Sprintf("iperf=%d:127.0.0.1:%d", iperfPort, iperfPort))
	if !l.probe(5 * time.Second) {
		t.Fatal("the web tunnel does not work")
	}

	// The delay is there: for ICMP from the home PC to the VPS, and for
	// the tunnel's own transport (a request waits for the stream to
	// reach the agent and the answer to come back).
	rtt := l.checkRTT(p.rtt)
	ttfb, err := l.firstByte()
	if err != nil {
		t.Fatal(err)
	}
	link := "veth pair"
	if p.rtt > 0 {
		link = fmt.Sprintf("delay link, %v each way", p.rtt/2)
	}
	t.Logf("uplink (%s): a request through the tunnel over %s: first byte after %v", link, tr, ms(ttfb))
	if ttfb < p.rtt {
		t.Errorf("a request through the tunnel answered after %v, less than the uplink's round trip %v", ttfb, p.rtt)
	}
	if p.loss > 0 {
		l.uplinkLoss(p.loss)
	}

	// SSH.
	scpSrc, scpSum := filepath.Join(wwwDir(t), "ssh.bin"), sshSum
	if p.scpSize != sshSize {
		scpSrc, scpSum = l.prefixFile(scpSrc, p.scpSize)
	}
	sshCmd, scpDown, scpUp := l.sshSession(kit, tr, scpSrc, scpSum)

	// HTTP.
	n, ok, took := l.checkSmallRequests()
	httpSrc, httpSum := filepath.Join(wwwDir(t), "big.bin"), bigSum
	if p.httpSize != bigSize {
		httpSrc, httpSum = l.prefixFile(httpSrc, p.httpSize)
	}
	dl, err := l.downloadPart("tunnel download", 3*time.Minute, p.httpSize, httpSum)
	if err != nil {
		t.Fatal(err)
	}
	up, err := l.directUploadFile(upDir, 3*time.Minute, httpSrc, httpSum)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("HTTP download through the tunnel: %v, sha256 equal; the same home → VPS directly: %v", dl, up)

	// iperf3, each way, through the tunnel (the client at the remote
	// user, the server at home) and plain TCP (the client at home, the
	// server on the VPS). Plain TCP uses the system's congestion
	// control; where that is not CUBIC, a loss-based one like the QUIC
	// tunnel's, one more run uses CUBIC.
	cc := strings.TrimSpace(l.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_congestion_control"))
	type iperfCase struct {
		what    string
		role    string
		port    int
		reverse bool
		extra   []string
	}
	cases := []iperfCase{
		{"home → user through the tunnel over " + tr, "user", iperfPort, true, nil},
		{"home → VPS plain TCP (" + cc + ")", "home", iperfDirectPort, false, nil},
		{"user → home through the tunnel over " + tr, "user", iperfPort, false, nil},
		{"VPS → home plain TCP (" + cc + ")", "home", iperfDirectPort, true, nil},
	}
	avail := l.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_available_congestion_control")
	if p.loss > 0 && cc != "cubic" && slices.Contains(strings.Fields(avail), "cubic") {
		cases = append(cases, iperfCase{"home → VPS plain TCP (cubic)", "home", iperfDirectPort, false, []string{"-C", "cubic"}})
	}
	iperfs := make([]iperfResult, len(cases))
	for i, c := range cases {
		res, err := l.iperf(c.role, vpsIP, c.port, p.iperfFor, c.reverse, c.extra...)
		if err != nil {
			t.Fatalf("iperf3 %s: %v", c.what, err)
		}
		iperfs[i] = res
		t.Logf("iperf3 %s: %v", c.what, res)
	}

	if tr == "tcp" {
		t.Logf("the agent's TCP connection to the relay after the transfers: %s", l.tcpState("home", "dport", relayPort))
	}
	var dropped int64
	if p.loss > 0 {
		dropped = l.uplinkDropped()
		if dropped == 0 {
			t.Error("the uplink dropped no packet: the loss impairment did not apply")
		}
	}

	// The summary: each figure through the tunnel next to plain TCP over
	// the same uplink, same direction.
	pct := func(a, b float64) string {
		if b <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f%%", 100*a/b)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s over %s: uplink %s, ping RTT %s, %g%% loss each way (%d packets dropped); plain TCP uses %s\n",
		p.name, tr, link, fmtRTT(rtt), p.loss*100, dropped, cc)
	fmt.Fprintf(&b, "  (iperf3's retransmissions are its own TCP's: through the tunnel that ends at the agent and the relay, not on the uplink)\n")
	fmt.Fprintf(&b, "  ssh command         %v; first byte of an HTTP request %v\n", ms(sshCmd), ms(ttfb))
	fmt.Fprintf(&b, "  scp home → user     %v\n", scpDown)
	fmt.Fprintf(&b, "  scp user → home     %v\n", scpUp)
	fmt.Fprintf(&b, "  HTTP %d requests   %d ok in %v\n", n, ok, ms(took))
	fmt.Fprintf(&b, "  HTTP home → user    tunnel %s; plain TCP home → VPS %s: tunnel %s of plain\n", dl, up, pct(dl.mibps(), up.mibps()))
	fmt.Fprintf(&b, "  iperf3 home → user  tunnel %s; plain TCP home → VPS %s: tunnel %s of plain\n", iperfs[0], iperfs[1], pct(iperfs[0].mbps, iperfs[1].mbps))
	fmt.Fprintf(&b, "  iperf3 user → home  tunnel %s; plain TCP VPS → home %s: tunnel %s of plain", iperfs[2], iperfs[3], pct(iperfs[2].mbps, iperfs[3].mbps))
	if len(iperfs) > 4 {
		fmt.Fprintf(&b, "\n  iperf3 home → user  tunnel %s; plain TCP home → VPS with cubic %s: tunnel %s of plain", iperfs[0], iperfs[4], pct(iperfs[0].mbps, iperfs[4].mbps))
	}
	t.Log(b.String())
}

// prefixFile writes the first n bytes of src into the lab's directory and
// returns the copy's path and sha256.
func (l *lab) prefixFile(src string, n int64) (string, [32]byte) {
	l.t.Helper()
	in, err := os.Open(src)
	if err != nil {
		l.t.Fatal(err)
	}
	defer in.Close()
	path := filepath.Join(l.dir, fmt.Sprintf("%s-%d", filepath.Base(src), n))
	out, err := os.Create(path)
	if err != nil {
		l.t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(out, h), in, n); err != nil {
		out.Close()
		l.t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		l.t.Fatal(err)
	}
	return path, [32]byte(h.Sum(nil))
}

// startIperf runs an iperf3 server in role's namespace on addr:port and
// waits until it listens.
func (l *lab) startIperf(role, addr string, port int) {
	l.t.Helper()
	need(l.t, "iperf3")
	p := l.start(role, "iperf3-"+role, nil, "iperf3", "-s", "-B", addr, "-p", strconv.Itoa(port), "--forceflush")
	p.logged = true
	p.await(l.t, 10*time.Second, "iperf3 listening", func() bool {
		return strings.Contains(p.stdout.String(), "Server listening on")
	})
}

// iperfResult is what iperf3 -J reports about one test.
type iperfResult struct {
	mbps    float64 // received, in Mbit/s
	bytes   int64   // received
	secs    float64
	retrans int // the sender's TCP retransmissions
}

func (r iperfResult) String() string {
	return fmt.Sprintf("%.1f Mbit/s (%.1f MiB in %.1f s, %d retransmissions)", r.mbps, float64(r.bytes)/(1<<20), r.secs, r.retrans)
}

// iperf runs iperf3's client (TCP) in role's namespace against
// server:port for d, with extra arguments; reverse makes the server send.
// An iperf3 server serves one test at a time and may still be ending the
// last one (over a lossy path, a second or more): a client it calls busy
// tries again, for up to 10 s.
func (l *lab) iperf(role, server string, port int, d time.Duration, reverse bool, extra ...string) (iperfResult, error) {
	var res iperfResult
	var err error
	for range 20 {
		res, err = l.iperfOnce(role, server, port, d, reverse, extra...)
		if err == nil || !strings.Contains(err.Error(), "server is busy") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	return res, err
}

func (l *lab) iperfOnce(role, server string, port int, d time.Duration, reverse bool, extra ...string) (iperfResult, error) {
	args := []string{"iperf3", "-c", server, "-p", strconv.Itoa(port), "-t", strconv.Itoa(int(d.Seconds())),
		"-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	args = append(args, extra...)
	out, err := l.run(d+30*time.Second, role, args...)
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		if err != nil {
			return iperfResult{}, err
		}
		return iperfResult{}, fmt.Errorf("iperf3 -J: %w", jerr)
	}
	if rep.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if err != nil {
		return iperfResult{}, err
	}
	s := rep.End.SumReceived
	if s.Bytes == 0 {
		return iperfResult{}, fmt.Errorf("iperf3 received nothing")
	}
	return iperfResult{mbps: s.BitsPerSecond / 1e6, bytes: s.Bytes, secs: s.Seconds, retrans: rep.End.SumSent.Retransmits}, nil
}
