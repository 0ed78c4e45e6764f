package ddns

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestCommandSource(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	tests := []struct {
		name    string
		script  string
		timeout time.Duration
		want    []netip.Addr
		err     string
	}{
		{"one", "echo 203.0.113.5", 0, addrs("203.0.113.5"), ""},
		{"both families", "printf ' 203.0.113.5\\n\\t2001:db8::5 \\n'", 0, addrs("203.0.113.5", "2001:db8::5"), ""},
		{"mapped", "echo ::ffff:203.0.113.5", 0, addrs("203.0.113.5"), ""},
		{"garbage", "echo 203.0.113.5 hello", 0, nil, `"hello", which is not an IP address`},
		{"nothing", "true", 0, nil, "printed no address"},
		{"fails", "echo broken >&2; exit 3", 0, nil, `exit status 3 (stderr: "broken")`},
		{"too long", "i=0; while [ $i -lt 400 ]; do echo 203.0.113.5; i=$((i+1)); done", 0, nil, "output longer than 4096 bytes"},
		{"hangs", "sleep 10", 200 * time.Millisecond, nil, "no answer within 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := CommandSource{Argv: []string{"sh", "-c", tt.script}, Timeout: tt.timeout}
			start := time.Now()
			got, err := s.Addrs(context.Background())
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Addrs() = %v, %v; want error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Addrs() = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if got := (CommandSource{Argv: []string{"/usr/local/bin/getip", "--token=secret"}}).Name(); got != "command getip" {
		t.Errorf("Name() = %q, want the program only", got)
	}
	if _, err := (CommandSource{}).Addrs(context.Background()); err == nil {
		t.Error("an empty command works")
	}
}

func TestFirstOf(t *testing.T) {
	fail := FuncSource{Label: "broken", F: func(context.Context) ([]netip.Addr, error) {
		return nil, errors.New("no luck")
	}}
	tests := []struct {
		name    string
		sources []Source
		want    []netip.Addr
		err     string // "" : no error
	}{
		{"first has both", []Source{StaticSource(addrs("203.0.113.1", "2001:db8::1")), StaticSource(addrs("203.0.113.2", "2001:db8::2"))},
			addrs("203.0.113.1", "2001:db8::1"), ""},
		{"per family", []Source{StaticSource(addrs("203.0.113.1")), StaticSource(addrs("203.0.113.2", "2001:db8::2"))},
			addrs("203.0.113.1", "2001:db8::2"), ""},
		{"failure passed over", []Source{fail, StaticSource(addrs("203.0.113.2", "2001:db8::2"))},
			addrs("203.0.113.2", "2001:db8::2"), ""},
		{"private passed over", []Source{StaticSource(addrs("10.0.0.2", "fd00::2")), StaticSource(addrs("203.0.113.2", "2001:db8::2"))},
			addrs("203.0.113.2", "2001:db8::2"), ""},
		{"family missing after a failure", []Source{StaticSource(addrs("203.0.113.1")), fail},
			addrs("203.0.113.1"), "no luck"},
		{"family missing, only private", []Source{StaticSource(addrs("203.0.113.1", "fd00::1"))},
			addrs("203.0.113.1"), "unique local"},
		{"family missing, nothing wrong", []Source{StaticSource(addrs("203.0.113.1"))},
			addrs("203.0.113.1"), ""},
		{"all fail", []Source{fail, fail}, nil, "no luck"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FirstOf(tt.sources...).Addrs(context.Background())
			if !slices.Equal(got, tt.want) {
				t.Errorf("Addrs() = %v, want %v", got, tt.want)
			}
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("error %v, want one containing %q", err, tt.err)
			}
		})
	}
	if got := FirstOf(StaticSource(nil), fail).Name(); got != "first of (static, broken)" {
		t.Errorf("Name() = %q", got)
	}
}

func TestFuncSourceCopies(t *testing.T) {
	shared := addrs("::ffff:203.0.113.9")
	s := FuncSource{Label: "relay", F: func(context.Context) ([]netip.Addr, error) { return shared, nil }}
	got, err := s.Addrs(context.Background())
	if err != nil || !slices.Equal(got, addrs("203.0.113.9")) {
		t.Fatalf("Addrs() = %v, %v", got, err)
	}
	if !shared[0].Is4In6() {
		t.Error("Addrs changed the function's slice")
	}
}
