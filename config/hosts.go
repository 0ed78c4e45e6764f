package config

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// Host names of web tunnels. A name is compared without case and without
// a trailing dot. International names are written in their ASCII form
// (punycode, "xn--…"), as DNS carries them; a name in other letters is
// refused with that form suggested. A wildcard "*.example.com" covers
// every name under example.com, at any depth ("a.example.com",
// "a.b.example.com"), not example.com itself; where several wildcards
// cover a name, the longest wins, and an exact name wins over any.

// MaxHostLen is the longest host name (tunnel.MaxHostLen).
const MaxHostLen = 253

// ErrHostName is the error of a malformed host name.
var ErrHostName = errors.New("invalid host name")

// NormalizeHost returns the host name s in its canonical form: lower
// case, without a trailing dot. With wildcard, "*.DOMAIN" is accepted; with
// label, a bare label (no dot) is. Any other malformed name is an error
// wrapping ErrHostName that says what is wrong.
func NormalizeHost(s string, wildcard, label bool) (string, error) {
	h := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if len(h) > MaxHostLen {
		return "", fmt.Errorf("%w: %q is longer than %d bytes", ErrHostName, clipText(s, 40), MaxHostLen)
	}
	for i := 0; i < len(h); i++ {
		if h[i] >= 0x80 {
			if a, err := idna.Lookup.ToASCII(h); err == nil {
				return "", fmt.Errorf("%w: %q: write it as DNS does, in its ASCII form %q", ErrHostName, s, a)
			}
			return "", fmt.Errorf("%w: %q: not a valid international name; write it in its ASCII (punycode) form", ErrHostName, s)
		}
	}
	if h == "" {
		return "", fmt.Errorf("%w: empty", ErrHostName)
	}
	rest := h
	if strings.HasPrefix(h, "*.") {
		if !wildcard {
			return "", fmt.Errorf("%w: %q: a wildcard is not allowed here", ErrHostName, s)
		}
		rest = h[2:]
	}
	labels := strings.Split(rest, ".")
	if len(labels) == 1 && (!label || rest != h) {
		return "", fmt.Errorf("%w: %q: want a name with a domain, e.g. nas.example.com", ErrHostName, s)
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrHostName, s, err)
		}
	}
	return h, nil
}

// checkLabel checks one label of a host name: 1-63 of a-z 0-9 and '-',
// not at either end; a punycode label must decode.
func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty label (two dots in a row, or a dot at the start)")
	case len(l) > 63:
		return fmt.Errorf("label %q is longer than 63 bytes", clipText(l, 20))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q begins or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q: use a-z, 0-9 and '-' (%q is not allowed)", l, string(c))
		}
	}
	if strings.HasPrefix(l, "xn--") {
		if _, err := idna.Lookup.ToUnicode(l); err != nil {
			return fmt.Errorf("label %q is not valid punycode", l)
		}
	}
	return nil
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// HostCovers reports whether pattern (a normalized name or wildcard)
// covers name (a normalized name, or wildcard: then every name under it
// must be covered).
func HostCovers(pattern, name string) bool {
	if pattern == name {
		return true
	}
	d, ok := strings.CutPrefix(pattern, "*.")
	if !ok {
		return false
	}
	return strings.HasSuffix(strings.TrimPrefix(name, "*."), "."+d)
}

// hostsOverlap reports whether some name is covered by both patterns.
func hostsOverlap(a, b string) bool { return HostCovers(a, b) || HostCovers(b, a) }

// HostCandidates returns the names, most specific first, under which a
// request for host is routed: host itself, then the wildcards that cover
// it, longest first ("a.b.c" → "a.b.c", "*.b.c", "*.c").
func HostCandidates(host string, each func(string) bool) {
	if each(host) {
		return
	}
	for rest := host; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok {
			return
		}
		if each("*." + after) {
			return
		}
		rest = after
	}
}
