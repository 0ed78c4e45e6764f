package ddnsbuild

import (
	"os/exec"
	"strings"
	"testing"
)

// TestOnlyProgramsKnowProviders keeps the DNS providers (and their SDKs)
// out of the relay, agent and visitor packages: the programs in cmd/ hand
// them this package's New. A library user of those packages then does not
// link every provider, and a provider is wired in one place.
func TestOnlyProgramsKnowProviders(t *testing.T) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH:", err)
	}
	pkgs := []string{
		"github.com/homeport/homeport/relay",
		"github.com/homeport/homeport/agent",
		"github.com/homeport/homeport/visitor",
	}
	for _, p := range pkgs {
		out, err := exec.Command(gocmd, "list", "-deps", p).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", p, err, out)
		}
		for dep := range strings.FieldsSeq(string(out)) {
			if strings.HasPrefix(dep, "github.com/libdns/") || strings.HasPrefix(dep, "github.com/aws/") ||
				dep == "github.com/homeport/homeport/internal/ddnsbuild" || dep == "github.com/homeport/homeport/ddns/libdnsprov" {
				t.Errorf("%s depends on %s: DNS providers belong to the programs (cmd/), through ddnsbuild.New", p, dep)
			}
		}
	}
}
