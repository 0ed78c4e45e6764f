package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// PortRange is an inclusive range of port numbers.
type PortRange struct{ Lo, Hi uint16 }

// PortRanges is a set of port ranges; the empty set contains no port.
type PortRanges []PortRange

// Contains reports whether p lies in one of the ranges.
func (rs PortRanges) Contains(p uint16) bool {
	for _, r := range rs {
		if r.Lo <= p && p <= r.Hi {
			return true
		}
	}
	return false
}

// Intersect returns the ports in both rs and o, which must be sorted and
// merged as ParsePortRanges returns them.
func (rs PortRanges) Intersect(o PortRanges) PortRanges {
	var out PortRanges
	for i, j := 0, 0; i < len(rs) && j < len(o); {
		lo, hi := max(rs[i].Lo, o[j].Lo), min(rs[i].Hi, o[j].Hi)
		if lo <= hi {
			out = append(out, PortRange{lo, hi})
		}
		if rs[i].Hi < o[j].Hi {
			i++
		} else {
			j++
		}
	}
	return out
}

// String formats the ranges as ParsePortRanges reads them.
func (rs PortRanges) String() string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.Lo == r.Hi {
			parts[i] = strconv.Itoa(int(r.Lo))
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// ParsePortRanges reads a comma-separated list of ports and ranges, such as
// "3390, 8000-8100". Ports are 1 to 65535; a range's low end comes first.
// The result is sorted with overlapping and adjacent ranges merged.
func ParsePortRanges(s string) (PortRanges, error) {
	var rs PortRanges
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		l, err := parsePort(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		h := l
		if isRange {
			if h, err = parsePort(strings.TrimSpace(hi)); err != nil {
				return nil, fmt.Errorf("%q: %w", part, err)
			}
			if h < l {
				return nil, fmt.Errorf("%q: range ends below its start", part)
			}
		}
		rs = append(rs, PortRange{l, h})
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("%q: no ports; want e.g. \"3390\" or \"8000-8100,9000\"", s)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Lo < rs[j].Lo })
	merged := rs[:1]
	for _, r := range rs[1:] {
		last := &merged[len(merged)-1]
		if int(r.Lo) <= int(last.Hi)+1 {
			last.Hi = max(last.Hi, r.Hi)
			continue
		}
		merged = append(merged, r)
	}
	return merged, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// ParseTunnel reads a tunnel in the ssh -R style, [NAME=][PROTO:]REMOTE_PORT:HOST:PORT:
// a visitor connecting to the relay's REMOTE_PORT reaches HOST:PORT as
// dialed by the agent. PROTO is tcp (the default) or udp. An IPv6 HOST is
// written in brackets ("3390:[::1]:3389"). Without a name, the tunnel is
// called "PROTO-REMOTE_PORT" ("tcp-3390", "udp-5353").
//
// A private tunnel, NAME=private:[PROTO:][PORT:]HOST:PORT (the protocol
// may also come first, "udp:private:"), has no public port: visitors
// reach it by its name, which it must have. PORT is the port a visitor's
// local listener takes by default.
func ParseTunnel(spec string) (Tunnel, error) {
	const (
		want        = "want [NAME=][tcp:|udp:]REMOTE_PORT:HOST:PORT, e.g. 3390:127.0.0.1:3389 or udp:5353:127.0.0.1:53"
		wantPrivate = "want NAME=private:[tcp:|udp:][PORT:]HOST:PORT, e.g. rdp=private:3389:127.0.0.1:3389"
		wantWeb     = "want [NAME=]http:HOSTNAME:HOST:PORT or [NAME=]https:HOSTNAME:HOST:PORT, e.g. web=http:nas.example.com:127.0.0.1:8080"
	)
	s := strings.TrimSpace(spec)
	var t Tunnel
	if name, rest, ok := strings.Cut(s, "="); ok {
		t.Name, s = strings.TrimSpace(name), rest
		if t.Name == "" {
			return Tunnel{}, fmt.Errorf("tunnel %q: empty name before '='; %s", spec, want)
		}
	}
	t.Protocol = "tcp"
	// Up to two words before the ports: the protocol and "private", in
	// either order. A private tunnel's target may begin with a host name,
	// which is not a protocol misspelt.
	seenProto := false
	for range 2 {
		word, rest, ok := strings.Cut(s, ":")
		if !ok || word == "" || isDigits(word) {
			break
		}
		w := strings.ToLower(word)
		if w == "private" && !t.Private {
			t.Private, s = true, rest
			continue
		}
		if (w == "tcp" || w == "udp") && !seenProto {
			t.Protocol, seenProto, s = w, true, rest
			continue
		}
		if (w == "http" || w == "https") && !seenProto && !t.Private {
			t.Protocol, seenProto, s = w, true, rest
			break
		}
		if t.Private {
			break // the target's host
		}
		return Tunnel{}, fmt.Errorf("tunnel %q: unknown protocol %q (want tcp, udp, http or https); %s", spec, word, want)
	}
	if t.Web() {
		host, target, ok := strings.Cut(s, ":")
		if !ok || host == "" {
			return Tunnel{}, fmt.Errorf("tunnel %q: host name missing; %s", spec, wantWeb)
		}
		t.Host, t.Target = host, target
		if err := t.normalizeWeb(); err != nil {
			return Tunnel{}, fmt.Errorf("tunnel %q: %w; %s", spec, err, wantWeb)
		}
		if err := t.validate(); err != nil {
			return Tunnel{}, fmt.Errorf("tunnel %q: %w", spec, err)
		}
		return t, nil
	}
	if t.Private {
		if t.Name == "" {
			return Tunnel{}, fmt.Errorf("tunnel %q: a private tunnel needs a name, by which visitors reach it; %s", spec, wantPrivate)
		}
		t.Target = s
		// PORT:HOST:PORT, or HOST:PORT alone.
		if port, target, ok := strings.Cut(s, ":"); ok && isDigits(port) && strings.Contains(target, ":") {
			p, err := parsePort(port)
			if err != nil {
				return Tunnel{}, fmt.Errorf("tunnel %q: visitors' %w; %s", spec, err, wantPrivate)
			}
			t.RemotePort, t.Target = p, target
		}
		if err := t.validate(); err != nil {
			return Tunnel{}, fmt.Errorf("tunnel %q: %w", spec, err)
		}
		return t, nil
	}
	port, target, ok := strings.Cut(s, ":")
	if !ok {
		return Tunnel{}, fmt.Errorf("tunnel %q: %s", spec, want)
	}
	p, err := parsePort(port)
	if err != nil {
		return Tunnel{}, fmt.Errorf("tunnel %q: remote %w; %s", spec, err, want)
	}
	t.RemotePort = p
	t.Target = target
	if t.Name == "" {
		t.Name = fmt.Sprintf("%s-%d", t.Protocol, p)
	}
	if err := t.validate(); err != nil {
		return Tunnel{}, fmt.Errorf("tunnel %q: %w", spec, err)
	}
	return t, nil
}

// String formats the tunnel as ParseTunnel reads it. Allow, deny,
// proxy_protocol and visitors, which only a file's section sets, are left
// out.
func (t Tunnel) String() string {
	if t.Web() {
		return fmt.Sprintf("%s=%s:%s:%s", t.Name, t.Protocol, t.Host, t.Target)
	}
	if t.Private {
		s := t.Name + "=private:"
		if t.Protocol == "udp" {
			s += "udp:"
		}
		if t.RemotePort != 0 {
			s += strconv.Itoa(int(t.RemotePort)) + ":"
		}
		return s + t.Target
	}
	if t.Protocol == "udp" {
		return fmt.Sprintf("%s=udp:%d:%s", t.Name, t.RemotePort, t.Target)
	}
	return fmt.Sprintf("%s=%d:%s", t.Name, t.RemotePort, t.Target)
}

// Limits of the wire protocol (tunnel.MaxNameLen, tunnel.MaxTunnels,
// tunnel.MaxVisitorNames).
const (
	maxNameLen      = 64
	MaxTunnels      = 128
	MaxVisitorNames = 32
)

// checkName checks a tunnel's or a visitor key's name.
func checkName(s string) error {
	if len(s) > maxNameLen {
		return fmt.Errorf("%q is longer than %d bytes", s, maxNameLen)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%q: use A-Z, a-z, 0-9, '-', '_' and '.'", s)
		}
	}
	return nil
}

// Web reports whether t is a web tunnel (http or https), served on the
// relay's shared ports by host name.
func (t Tunnel) Web() bool { return t.Protocol == "http" || t.Protocol == "https" }

// normalizeWeb puts a web tunnel's host in canonical form and gives the
// tunnel a name from it if it has none.
func (t *Tunnel) normalizeWeb() error {
	h, err := NormalizeHost(t.Host, true, true)
	if err != nil {
		return fmt.Errorf("host: %w", err)
	}
	t.Host = h
	if t.Name == "" {
		t.Name = t.Protocol + "-" + strings.ReplaceAll(h, "*", "all")
		if len(t.Name) > maxNameLen {
			return fmt.Errorf("host %q is too long to name the tunnel after it: give it a NAME=", h)
		}
	}
	return nil
}

// checkWebAuth checks basic authentication credentials, user:password.
func checkWebAuth(s string) error {
	user, pass, ok := strings.Cut(s, ":")
	switch {
	case !ok || user == "" || pass == "":
		return errors.New("want user:password")
	case len(user) > 64:
		return fmt.Errorf("user %q is longer than 64 bytes", clipText(user, 20))
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("control characters are not allowed")
	}
	return nil
}

func (t Tunnel) validate() error {
	if t.Name == "" {
		return fmt.Errorf("tunnel has no name")
	}
	if err := checkName(t.Name); err != nil {
		return fmt.Errorf("name %w", err)
	}
	switch t.Protocol {
	case "tcp", "udp":
		if t.Host != "" {
			return fmt.Errorf("host: only for a web tunnel (protocol http or https)")
		}
		if t.Auth != "" {
			return fmt.Errorf("auth: only for an http tunnel")
		}
	case "http", "https":
		if t.Private {
			return fmt.Errorf("a web tunnel cannot be private")
		}
		if t.RemotePort != 0 {
			return fmt.Errorf("remote_port: a web tunnel has none; the relay serves it on its http_addr and https_addr by host name")
		}
		if _, err := NormalizeHost(t.Host, true, true); err != nil {
			return fmt.Errorf("host: %w", err)
		}
		if t.Auth != "" && t.Protocol != "http" {
			return fmt.Errorf("auth: only for an http tunnel; an https tunnel's TLS ends at its target, which checks its own users")
		}
		if t.Auth != "" {
			if err := checkWebAuth(t.Auth); err != nil {
				return fmt.Errorf("auth: %w", err)
			}
		}
	default:
		return fmt.Errorf("protocol %q: want tcp, udp, http or https", t.Protocol)
	}
	switch t.ProxyProtocol {
	case "", "v1", "v2":
	default:
		return fmt.Errorf("proxy_protocol %q: want v1 or v2", t.ProxyProtocol)
	}
	if t.ProxyProtocol != "" && t.Protocol != "tcp" {
		return fmt.Errorf("proxy_protocol: only for TCP tunnels")
	}
	if t.RemotePort == 0 && !t.Private && !t.Web() {
		return fmt.Errorf("remote port missing")
	}
	if t.PortMapping != nil && t.Private {
		return fmt.Errorf("port_mapping: a private tunnel has no public way in by design, and a port mapping would open one; leave one of them out")
	}
	if len(t.Visitors) > 0 && !t.Private {
		return fmt.Errorf("visitors: only for a private tunnel (private: true); a public port is open to every address that allow and deny let in")
	}
	if len(t.Visitors) > MaxVisitorNames {
		return fmt.Errorf("visitors: %d names: at most %d", len(t.Visitors), MaxVisitorNames)
	}
	for i, v := range t.Visitors {
		if v == "" {
			return fmt.Errorf("visitors: item %d: empty name", i+1)
		}
		if err := checkName(v); err != nil {
			return fmt.Errorf("visitors: %w", err)
		}
		if slices.Contains(t.Visitors[:i], v) {
			return fmt.Errorf("visitors: %q is listed twice", v)
		}
	}
	host, port, err := net.SplitHostPort(t.Target)
	if err != nil {
		return fmt.Errorf("target %q: want HOST:PORT (IPv6 in brackets, [::1]:3389)", t.Target)
	}
	if host == "" {
		return fmt.Errorf("target %q: host missing (127.0.0.1 for this machine)", t.Target)
	}
	if _, err := parsePort(port); err != nil {
		return fmt.Errorf("target %q: %w", t.Target, err)
	}
	return nil
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// ParseSize reads a byte count: a plain number, or one with a unit
// B, KiB, MiB, GiB (or KB, MB, GB, read as powers of 1024, or K, M, G).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9') })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a whole number of bytes, optionally with KiB, MiB or GiB", s)
	}
	var mult uint64
	switch strings.ToLower(unit) {
	case "", "b":
		mult = 1
	case "k", "kb", "kib":
		mult = 1 << 10
	case "m", "mb", "mib":
		mult = 1 << 20
	case "g", "gb", "gib":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (want KiB, MiB or GiB)", s, unit)
	}
	if n > (1<<63)/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// ParseDuration reads a duration that must carry a unit ("30s", "1m30s");
// a bare number is an error, since "30" could mean seconds or nanoseconds.
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if isDigits(t) {
		return 0, fmt.Errorf("duration %q has no unit; write e.g. \"%ss\"", s, t)
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. \"10s\", \"1m30s\", \"500ms\"", s)
	}
	return d, nil
}

// NormalizeFingerprint returns the canonical "sha256:<64 lower-case hex>"
// form of a key fingerprint. It accepts the hex digits with or without the
// "sha256:" prefix, in either case, and with ':' separators between bytes.
func NormalizeFingerprint(s string) (string, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	h = strings.TrimPrefix(h, "sha256:")
	h = strings.ReplaceAll(h, ":", "")
	if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		return "", fmt.Errorf("fingerprint %q: want sha256: and 64 hex digits, as the relay prints it", s)
	}
	return "sha256:" + h, nil
}

// DefaultDataDir is where the relay keeps its token and key by default:
// /var/lib/homeport when running as root on Unix, %ProgramData%\homeport
// on Windows, else homeport in the user's configuration directory.
func DefaultDataDir() string {
	if runtime.GOOS == "windows" {
		if pd := os.Getenv("ProgramData"); pd != "" {
			return filepath.Join(pd, "homeport")
		}
	} else if os.Geteuid() == 0 {
		return "/var/lib/homeport"
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "homeport")
	}
	return "homeport-data"
}

// validHostPort checks an address of the form host:port where the host may
// be empty (all addresses) and the port is a number, 0 allowed.
func validHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT or :PORT", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", s, port)
	}
	return nil
}

// validBindAddr checks that s is empty or an IP address.
func validBindAddr(s string) error {
	if s == "" {
		return nil
	}
	if _, err := netip.ParseAddr(s); err != nil {
		return fmt.Errorf("%q is not an IP address (leave it empty to listen on all)", s)
	}
	return nil
}

// validDebugAddr checks that s is empty or a loopback HOST:PORT. The
// profiler shows the process's insides and can keep it busy: it must not
// face the network.
func validDebugAddr(s string) error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("%q: want a loopback HOST:PORT, e.g. 127.0.0.1:6060", s)
	}
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q: the profiler listens on loopback only (127.0.0.1, ::1 or localhost), never on an address the network reaches", s)
	}
	return nil
}

// Validate checks a tunnel as the configuration's loader does.
func (t Tunnel) Validate() error { return t.validate() }
