//go:build netlab

package netlab

import (
	"testing"
	"time"
)

// TestOutageDuringDownload: the home uplink drops everything for 5 s in
// the middle of a download through the tunnel. The agent, finding the
// relay silent (its heartbeat or its answers to pings come every second),
// opens a new session beside the old one, and the relay retires the old
// session instead of cutting it: the download goes on in it once TCP's
// retransmissions, or QUIC's loss recovery, catch up. The download must
// complete with the right checksum, and new connections must work within
// 2 s of the uplink's return (in the new session: the old one's
// retransmission timers have backed off during the outage).
func TestOutageDuringDownload(t *testing.T) {
	const outage = 5 * time.Second
	forTransports(t, func(t *testing.T, tr string) {
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
		if !ok || rec > 2*time.Second {
			t.Errorf("new connections worked %s after the uplink's return, want within 2s", ms(rec))
		}
	})
}
