package ddns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// checkRecordSet checks what a provider is asked to write.
func checkRecordSet(rs RecordSet) error {
	if err := checkName(rs.Name); err != nil {
		return err
	}
	if rs.Type != TypeA && rs.Type != TypeAAAA {
		return fmt.Errorf("unsupported record type %q", rs.Type)
	}
	for _, a := range rs.Addrs {
		if !a.IsValid() || a.Zone() != "" || a.Is4() != (rs.Type == TypeA) {
			return fmt.Errorf("%s is not an address for a %s record", a, rs.Type)
		}
	}
	return nil
}

// checkName accepts a DNS name without the trailing dot, made of letters,
// digits, '-', '_' and a leading "*." at most.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return fmt.Errorf("name %q: longer than 253 characters", truncate(name, 64))
	}
	for i, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("name %q: empty or over-long label", name)
		}
		if label == "*" && i == 0 {
			continue
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("name %q: character %q not allowed", truncate(name, 64), c)
			}
		}
	}
	return nil
}

// sortedAddrs returns a sorted copy of addrs; duplicates stay.
func sortedAddrs(addrs []netip.Addr) []netip.Addr {
	out := slices.Clone(addrs)
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// sameAddrs reports whether a and b hold the same addresses, each as often
// (a duplicate record is a difference).
func sameAddrs(a, b []netip.Addr) bool {
	return slices.Equal(sortedAddrs(a), sortedAddrs(b))
}

// fmtAddrs shows a record set's addresses for messages.
func fmtAddrs(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "no address"
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// removesOnly reports whether going from cur to want only removes
// addresses: want is not empty, and every address of it is in cur.
func removesOnly(cur, want []netip.Addr) bool {
	if len(want) == 0 || len(want) >= len(cur) {
		return false
	}
	for _, w := range want {
		if !slices.Contains(cur, w) {
			return false
		}
	}
	return true
}
