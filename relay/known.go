package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// KnownAgentsFile, in the data directory, keeps the addresses agents have
// logged in from lately (see handshakeGuard.trusted), so that a restarted
// relay still lets its agents past a flood of logins from elsewhere. It is
// a cache: lost or damaged, it costs nothing but that head start.
const KnownAgentsFile = "known_agents"

// knownSaveEvery bounds how often the file is written; knownRefresh is
// how old a source's entry must be before a new login rewrites it.
const (
	knownSaveEvery = 5 * time.Second
	knownRefresh   = time.Hour
)

// loadKnownAgents reads the file: one source per line, "ADDRESS UNIX_TIME".
// Entries older than trustedFor are dropped; a damaged line is skipped, and
// the first one is reported in err along with what was read.
func loadKnownAgents(path string, now time.Time) (map[netip.Addr]time.Time, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	known := make(map[netip.Addr]time.Time)
	var bad error
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan() && len(known) < maxTrusted; n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		addr, ts, ok := strings.Cut(line, " ")
		a, aerr := netip.ParseAddr(addr)
		sec, terr := strconv.ParseInt(strings.TrimSpace(ts), 10, 64)
		if !ok || aerr != nil || terr != nil {
			if bad == nil {
				bad = fmt.Errorf("%s:%d: %q: want ADDRESS UNIX_TIME", path, n, line)
			}
			continue
		}
		if t := time.Unix(sec, 0); now.Sub(t) <= trustedFor && !t.After(now.Add(time.Minute)) {
			known[sourceKey(a)] = t
		}
	}
	return known, bad
}

// saveKnownAgents writes the file whole, through a temporary file, so that
// a crash leaves the old one or the new one.
func saveKnownAgents(path string, known map[netip.Addr]time.Time) error {
	lines := make([]string, 0, len(known))
	for a, t := range known {
		lines = append(lines, a.String()+" "+strconv.FormatInt(t.Unix(), 10)+"\n")
	}
	sort.Strings(lines)
	tmp, err := os.CreateTemp(filepath.Dir(path), KnownAgentsFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(strings.Join(lines, ""))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// keepKnownAgents writes the file when the guard learns a source, at most
// every knownSaveEvery, until ctx ends; then once more if needed.
func (s *Server) keepKnownAgents(ctx context.Context) {
	save := func() {
		if err := saveKnownAgents(s.knownPath, s.hs.trustedSnapshot()); err != nil {
			s.log.Warn("known agents: cannot save; a restart forgets them", "path", s.knownPath, "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			select {
			case <-s.learned:
				save()
			default:
			}
			return
		case <-s.learned:
			save()
		}
		t := time.NewTimer(knownSaveEvery)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}
