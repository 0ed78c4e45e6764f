//go:build netlab

package netlab

import (
	"testing"
	"time"
)

// TestOutageDuringDownload: the home uplink drops everything for 5 s in
// the middle of a download through the tunnel. Over QUIC the session
// rides it out (its idle timeout is longer). Over TCP the agent, finding
// the relay silent, opens a new session beside the old one, and the relay
// retires the old session instead of cutting it: the download goes on in
// it once TCP retransmits. Either way the download must complete with the
// right checksum. New connections must work within 2 s of the uplink's
// return over TCP (the new session); over QUIC they wait for the one
// session's loss recovery, whose probe timeouts back off during the
// outage (measured 0–2.1 s), so the bound there is 5 s.
func TestOutageDuringDownload(t *testing.T) {
	const outage = 5 * time.Second
	forTransports(t, func(t *testing.T, tr string) {
		bound := 2 * time.Second
		if tr == "quic" {
			bound = 5 * time.Second
		}
		l := newLab(t)
		r, a := l.up(tr)
		sessions := a.count(`msg="connected to relay"`)
		dl := l.slowDownload("outage-download.bin")
		l.uplinkBlackhole(true)
		time.Sleep(outage)
		l.uplinkBlackhole(false)
		up := time.Now()
		rec, ok := l.awaitTunnel(up, 30*time.Second)
		x, complete, err := dl.finish()
		t.Logf("%v outage over %s during a download: download complete %v (%v, err %v); new connections work %s after the uplink was back; agent made %d new sessions, relay retired %d",
			outage, tr, complete, x, err, ms(rec), a.count(`msg="connected to relay"`)-sessions, r.count("replaced by a newer one"))
		if !complete {
			t.Errorf("the download did not survive the outage: %v", err)
		}
		if !ok || rec > bound {
			t.Errorf("new connections worked %s after the uplink's return, want within %v", ms(rec), bound)
		}
	})
}
