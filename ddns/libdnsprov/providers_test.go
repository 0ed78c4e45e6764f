package libdnsprov

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
	"github.com/homeport/homeport/ddns"
)

// These tests construct providers and check what they refuse before any
// request; none of them reaches the network.

func wantErr(t *testing.T, err error, substr string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), substr) {
		t.Errorf("error %v, want one containing %q", err, substr)
	}
}

// outsideZone checks that a provider refuses a name outside its zone
// before it asks the provider (which would need the network).
func outsideZone(t *testing.T, p ddns.Provider, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := p.Get(ctx, name, ddns.TypeA); !errors.Is(err, ddns.ErrNoHost) {
		t.Errorf("Get %s: %v, want ErrNoHost", name, err)
	}
	if err := p.Set(ctx, ddns.RecordSet{Name: name, Type: ddns.TypeA, Addrs: addrs("192.0.2.1")}); !errors.Is(err, ddns.ErrNoHost) {
		t.Errorf("Set %s: %v, want ErrNoHost", name, err)
	}
}

func TestNewAliDNS(t *testing.T) {
	_, err := NewAliDNS(AliDNSConfig{AccessKeySecret: "secret", Zone: "example.com"})
	wantErr(t, err, "missing access key ID or access key secret")
	_, err = NewAliDNS(AliDNSConfig{AccessKeyID: "id", Zone: "example.com"})
	wantErr(t, err, "missing access key ID or access key secret")
	_, err = NewAliDNS(AliDNSConfig{AccessKeyID: "id", AccessKeySecret: "secret"})
	wantErr(t, err, "missing zone")
	_, err = NewAliDNS(AliDNSConfig{AccessKeyID: "id", AccessKeySecret: "secret", Zone: "a..b"})
	wantErr(t, err, "invalid zone")
	p, err := NewAliDNS(AliDNSConfig{AccessKeyID: "id", AccessKeySecret: "secret", Zone: "example.com."})
	if err != nil {
		t.Fatal(err)
	}
	outsideZone(t, p, "home.example.org")
}

func TestNewDNSPod(t *testing.T) {
	_, err := NewDNSPod(DNSPodConfig{SecretKey: "key", Zone: "example.com"})
	wantErr(t, err, "missing secret ID or secret key")
	_, err = NewDNSPod(DNSPodConfig{SecretID: "id", Zone: "example.com"})
	wantErr(t, err, "missing secret ID or secret key")
	_, err = NewDNSPod(DNSPodConfig{SecretID: "id", SecretKey: "key"})
	wantErr(t, err, "missing zone")
	_, err = NewDNSPod(DNSPodConfig{SecretID: "id", SecretKey: "key", Zone: "example.com", Region: "evil.example:443/"})
	wantErr(t, err, "invalid region")
	p, err := NewDNSPod(DNSPodConfig{SecretID: "id", SecretKey: "key", Zone: "example.com", Region: "ap-guangzhou"})
	if err != nil {
		t.Fatal(err)
	}
	outsideZone(t, p, "home.example.org")
}

func TestNewRoute53(t *testing.T) {
	// Keep the machine's AWS settings out.
	dir := t.TempDir()
	for _, v := range []string{
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_REGION", "AWS_DEFAULT_REGION",
	} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	_, err := NewRoute53(Route53Config{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret"})
	wantErr(t, err, "missing zone")
	_, err = NewRoute53(Route53Config{Zone: "example.com"})
	wantErr(t, err, "missing credentials")
	_, err = NewRoute53(Route53Config{Zone: "example.com", AccessKeyID: "AKIDEXAMPLE"})
	wantErr(t, err, "must be given together")
	_, err = NewRoute53(Route53Config{Zone: "example.com", SecretAccessKey: "secret"})
	wantErr(t, err, "must be given together")
	_, err = NewRoute53(Route53Config{Zone: "example.com", Profile: "nosuchprofile"})
	wantErr(t, err, "loading the AWS configuration")

	p, err := NewRoute53(Route53Config{Zone: "example.com", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	outsideZone(t, p, "home.example.org")

	if err := os.WriteFile(filepath.Join(dir, "config"), []byte("[profile ddns]\nregion = eu-west-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "credentials"), []byte("[ddns]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRoute53(Route53Config{Zone: "example.com", Profile: "ddns"}); err != nil {
		t.Fatalf("profile from the shared files: %v", err)
	}
	t.Setenv("AWS_PROFILE", "ddns")
	if _, err := NewRoute53(Route53Config{Zone: "example.com"}); err != nil {
		t.Fatalf("profile from the environment: %v", err)
	}
}

func TestClassifyAWS(t *testing.T) {
	for _, tc := range []struct {
		code string
		want error
	}{
		{"InvalidClientTokenId", ddns.ErrAuth},
		{"SignatureDoesNotMatch", ddns.ErrAuth},
		{"AccessDenied", ddns.ErrAuth},
		{"NoSuchHostedZone", ddns.ErrNoHost},
	} {
		err := classifyAWS(&smithy.GenericAPIError{Code: tc.code, Message: "m"})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.code, err, tc.want)
		}
		var api smithy.APIError
		if !errors.As(err, &api) {
			t.Errorf("%s: the API error is not reachable", tc.code)
		}
	}
	if err := classifyAWS(&smithy.GenericAPIError{Code: "Throttling"}); errors.Is(err, ddns.ErrAuth) || errors.Is(err, ddns.ErrNoHost) {
		t.Errorf("Throttling classified as %v", err)
	}
}

func TestClassifyText(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want error
	}{
		{"get error status: HTTP 403: Forbidden.RAM", ddns.ErrAuth},
		{"get error status: HTTP 404: Specified access key is not found.", ddns.ErrAuth},
		{"get error status: HTTP 400: The request signature we calculated does not match", ddns.ErrAuth},
		{"get error status: HTTP 400: InvalidDomainName.NoExist", ddns.ErrNoHost},
	} {
		if err := classifyText(errors.New(tc.msg)); !errors.Is(err, tc.want) {
			t.Errorf("%q: %v, want %v", tc.msg, err, tc.want)
		}
	}
	if err := classifyText(errors.New("get error status: HTTP 500: oops")); errors.Is(err, ddns.ErrAuth) {
		t.Errorf("HTTP 500 classified as %v", err)
	}
}

func TestNewDuckDNS(t *testing.T) {
	const tok = "a1b2c3d4-e5f6-4789-abcd-0123456789ab"
	_, err := NewDuckDNS(DuckDNSConfig{})
	wantErr(t, err, "missing token")
	_, err = NewDuckDNS(DuckDNSConfig{Token: "not-a-uuid"})
	wantErr(t, err, "36-character UUID")
	_, err = NewDuckDNS(DuckDNSConfig{Token: tok, Resolver: ":53"})
	wantErr(t, err, "resolver")
	p, err := NewDuckDNS(DuckDNSConfig{Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	if p.p.Resolver != DefaultDuckDNSResolver {
		t.Errorf("resolver %q", p.p.Resolver)
	}
	p2, err := NewDuckDNS(DuckDNSConfig{Token: tok, Resolver: "127.0.0.1"})
	if err != nil || p2.p.Resolver != "127.0.0.1:53" {
		t.Errorf("resolver without port: %v, %v", p2, err)
	}
	for _, name := range []string{"home.example.com", "duckdns.org", "a.b.duckdns.org"} {
		outsideZone(t, p, name)
	}
	if z, err := p.zone("MyHost.DuckDNS.org."); err != nil || z != "myhost.duckdns.org." {
		t.Errorf("zone = %q, %v", z, err)
	}
	err = p.Set(context.Background(), ddns.RecordSet{Name: "myhost.duckdns.org", Type: ddns.TypeA, Addrs: addrs("192.0.2.1", "192.0.2.2")})
	wantErr(t, err, "keeps one per family")
	if strings.Contains(err.Error(), tok) {
		t.Errorf("token in error text: %v", err)
	}
	// Duck DNS's "KO" names neither the token nor the URL.
	err = classifyDuck(errors.New("DuckDNS request failed, expected (OK) but got (KO), url: [https://www.duckdns.org/update?token=" + tok + "], body: KO"))
	if !errors.Is(err, ddns.ErrAuth) || strings.Contains(err.Error(), tok) {
		t.Errorf("KO: %v", err)
	}
}
