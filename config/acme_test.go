package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testRootPEM writes a self-signed CA certificate, for acme.ca_root.
func testRootPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "root.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

// TestACMEConfig: by default Let's Encrypt, both challenges, no contact;
// each key from the file, a flag or the environment.
func TestACMEConfig(t *testing.T) {
	root := testRootPEM(t)
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		file  string
		want  ACME
		roots bool
	}{
		{name: "defaults", want: ACME{CA: DefaultACMECA, HTTP01: true, TLSALPN01: true}},
		{name: "file", file: "acme:\n  email: ops@example.com\n  ca: https://ca.example.net/acme/directory\n  ca_root: " + root + "\n  challenges: [tls-alpn-01]\n",
			want: ACME{Email: "ops@example.com", CA: "https://ca.example.net/acme/directory", CARoot: root, TLSALPN01: true}, roots: true},
		{name: "flags", args: []string{"--acme-email", "ops@example.com", "--acme-challenges", "http-01"},
			want: ACME{Email: "ops@example.com", CA: DefaultACMECA, HTTP01: true}},
		{name: "environment", env: map[string]string{"HOMEPORT_ACME_CHALLENGES": "TLS-ALPN-01, http-01", "HOMEPORT_ACME_CA": "https://acme-staging-v02.api.letsencrypt.org/directory"},
			want: ACME{CA: "https://acme-staging-v02.api.letsencrypt.org/directory", HTTP01: true, TLSALPN01: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "relay.yaml", tt.file))
			}
			c, err := LoadRelay(relayFlags(t, args...))
			if err != nil {
				t.Fatal(err)
			}
			got := c.ACME
			if (got.CARoots != nil) != tt.roots {
				t.Errorf("CARoots %v, want roots: %v", got.CARoots, tt.roots)
			}
			got.CARoots = nil
			if got != tt.want {
				t.Errorf("acme %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestACMEConfigErrors: each mistake is named with its key and where it
// came from.
func TestACMEConfigErrors(t *testing.T) {
	notPEM := writeFile(t, "not.pem", "hello\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want []string
	}{
		{name: "email with a name", file: "acme:\n  email: \"Ops <ops@example.com>\"\n", want: []string{"acme.email in", "relay.yaml", "want a plain e-mail address"}},
		{name: "not an email", args: []string{"--acme-email", "ops"}, want: []string{"flag --acme-email", `"ops"`, "want a plain e-mail address"}},
		{name: "plain http CA", env: map[string]string{"HOMEPORT_ACME_CA": "http://ca.example.net/directory"},
			want: []string{"environment variable HOMEPORT_ACME_CA", "want the https:// URL", DefaultACMECA}},
		{name: "CA without host", file: "acme:\n  ca: \"https:///directory\"\n", want: []string{"acme.ca in", "want the https:// URL"}},
		{name: "missing root", args: []string{"--acme-ca-root", "/nonexistent/root.pem"}, want: []string{"flag --acme-ca-root", "/nonexistent/root.pem", "no such file"}},
		{name: "root not PEM", file: "acme:\n  ca_root: " + notPEM + "\n", want: []string{"acme.ca_root in", "no PEM certificate"}},
		{name: "unknown challenge", file: "acme:\n  challenges: [http-01, dns-01]\n", want: []string{"acme.challenges in", `"dns-01": unknown challenge`, "want http-01 or tls-alpn-01"}},
		{name: "twice", args: []string{"--acme-challenges", "http-01", "--acme-challenges", "http-01"}, want: []string{"flag --acme-challenges", "http-01 is listed twice"}},
		{name: "empty", file: "acme:\n  challenges: []\n", want: []string{"acme.challenges in", "empty"}},
		{name: "unknown key", file: "acme:\n  agree: true\n", want: []string{`unknown setting "acme.agree"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "relay.yaml", tt.file))
			}
			_, err := LoadRelay(relayFlags(t, args...))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
