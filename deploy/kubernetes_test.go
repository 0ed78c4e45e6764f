package deploy_test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
	"github.com/homeport/homeport/tunnel"
)

// The Helm chart's examples and the manifests rendered from them are
// checked by .ci/helm (helm lint, helm template, schema validation, and
// that kubernetes/ is what the chart renders now). This test needs no
// Kubernetes tool: it checks that each rendered manifest exists for its
// example, holds no Secret, and that the relay configuration it carries
// loads in the relay, with its token files and key pair where the
// manifest mounts them.

// mountRoot is where the chart mounts the relay's configuration, secrets
// and key pair.
const mountRoot = "/etc/homeport/"

func TestKubernetesManifests(t *testing.T) {
	examples, err := filepath.Glob(filepath.Join("helm", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) == 0 {
		t.Fatal("no values examples in helm/examples")
	}
	var want, got []string
	for _, e := range examples {
		want = append(want, filepath.Base(e))
	}
	for _, r := range rendered {
		got = append(got, filepath.Base(r))
	}
	if !slices.Equal(want, got) {
		t.Fatalf("kubernetes/ has %q, want one manifest per values example %q: run .ci/helm --update", got, want)
	}
	for _, r := range rendered {
		t.Run(filepath.Base(r), func(t *testing.T) { checkManifest(t, r) })
	}
}

var (
	kindRE       = regexp.MustCompile(`(?m)^kind: (\S+)$`)
	secretFileRE = regexp.MustCompile(`secret_file: (\S+)`)
	mountPathRE  = regexp.MustCompile(`mountPath: (\S+)`)
	configArgRE  = regexp.MustCompile(`- --config\s+- (\S+)`)
)

func checkManifest(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	var kinds []string
	for _, m := range kindRE.FindAllStringSubmatch(text, -1) {
		kinds = append(kinds, m[1])
	}
	if slices.Contains(kinds, "Secret") {
		t.Errorf("holds a Secret: a checked-in manifest must leave secrets to the cluster")
	}
	for _, k := range []string{"ConfigMap", "PodDisruptionBudget"} {
		if !slices.Contains(kinds, k) {
			t.Errorf("no %s (kinds: %q)", k, kinds)
		}
	}
	if !slices.Contains(kinds, "Deployment") && !slices.Contains(kinds, "DaemonSet") {
		t.Errorf("no Deployment or DaemonSet (kinds: %q)", kinds)
	}

	checkEnvNames(t, text, programs["relay"].envs(), path)
	cfgText, ok := configMapFile(text, "relay.yaml")
	if !ok {
		t.Fatal("no relay.yaml in a ConfigMap")
	}
	// The relay reads the file the container's --config names, and every
	// file it names, from a volume the container mounts.
	var mounts []string
	for _, m := range mountPathRE.FindAllStringSubmatch(text, -1) {
		mounts = append(mounts, m[1])
	}
	arg := configArgRE.FindStringSubmatch(text)
	if arg == nil {
		t.Fatal("the container has no --config argument")
	}
	files := []string{arg[1]}
	for _, m := range secretFileRE.FindAllStringSubmatch(cfgText, -1) {
		files = append(files, m[1])
	}
	for _, f := range append(files, "/etc/homeport/identity/tls.crt", "/etc/homeport/identity/tls.key") {
		if !slices.ContainsFunc(mounts, func(m string) bool { return strings.HasPrefix(f, m+"/") }) {
			t.Errorf("%s is in no mounted volume (mounts: %q)", f, mounts)
		}
	}
	if !strings.Contains(cfgText, "tls_cert: /etc/homeport/identity/tls.crt") || !strings.Contains(cfgText, "tls_key: /etc/homeport/identity/tls.key") {
		t.Errorf("relay.yaml does not take its key pair from the identity Secret:\n%s", cfgText)
	}

	// Put the files where the manifest mounts them, under a directory of
	// the test, and load the configuration as the relay does.
	root := t.TempDir()
	local := func(p string) string { return filepath.Join(root, strings.TrimPrefix(p, mountRoot)) }
	write := func(p string, data []byte) {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files[1:] {
		secret := make([]byte, 32)
		rand.Read(secret)
		write(local(f), []byte(base64.StdEncoding.EncodeToString(secret)+"\n"))
	}
	certPEM, keyPEM, err := tunnel.GenerateCertificate()
	if err != nil {
		t.Fatal(err)
	}
	write(local("/etc/homeport/identity/tls.crt"), certPEM)
	write(local("/etc/homeport/identity/tls.key"), keyPEM)
	cfgPath := local(arg[1])
	write(cfgPath, []byte(strings.ReplaceAll(cfgText, mountRoot, root+string(filepath.Separator))))

	fs := pflag.NewFlagSet("relay", pflag.ContinueOnError)
	config.RelayFlags(fs)
	if err := fs.Parse([]string{"--config", cfgPath, "--data-dir", filepath.Join(root, "data")}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadRelay(fs)
	if err != nil {
		t.Fatalf("relay.yaml of %s does not load: %v\n%s", path, err, cfgText)
	}
	if len(cfg.Tokens) == 0 {
		t.Errorf("relay.yaml names no token: the relay would generate one, lost on the next reschedule")
	}
	if _, err := relay.LoadIdentity(cfg); err != nil {
		t.Errorf("relay identity: %v", err)
	}
}

// configMapFile returns the block scalar of key (key: |) in the manifest's
// ConfigMap data, de-indented.
func configMapFile(manifest, key string) (string, bool) {
	lines := strings.Split(manifest, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != key+": |" {
			continue
		}
		keyIndent := len(l) - len(strings.TrimLeft(l, " "))
		var out []string
		indent := -1
		for _, b := range lines[i+1:] {
			trimmed := strings.TrimLeft(b, " ")
			n := len(b) - len(trimmed)
			if trimmed != "" && n <= keyIndent {
				break
			}
			if indent < 0 && trimmed != "" {
				indent = n
			}
			if len(b) >= indent && indent >= 0 {
				b = b[indent:]
			}
			out = append(out, b)
		}
		return strings.Join(out, "\n"), true
	}
	return "", false
}
