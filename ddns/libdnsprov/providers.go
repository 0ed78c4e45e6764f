package libdnsprov

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
	"github.com/homeport/homeport/ddns"
	"github.com/libdns/alidns"
	"github.com/libdns/libdns"
	"github.com/libdns/route53"
	"github.com/libdns/tencentcloud"
)

// AliDNSConfig configures Alibaba Cloud DNS (AliDNS).
type AliDNSConfig struct {
	AccessKeyID     string
	AccessKeySecret string
	// RegionID defaults to cn-hangzhou.
	RegionID string
	// SecurityToken is needed with STS credentials only.
	SecurityToken string
	// Zone the names are in: "example.com.".
	Zone string
}

// NewAliDNS returns a provider for AliDNS through github.com/libdns/alidns.
//
// That package (v1.0.7) lists a zone with one DescribeDomainRecords call
// without paging, which returns the API's default page of 20 records: in
// a larger zone a name past the first page reads as having no records
// (and the following create fails as a duplicate). Its SetRecords works
// record by record, so records are added and deleted one by one here. It
// reports API errors as text only, so refused credentials are recognised
// by the HTTP status and Alibaba Cloud's messages in it. It uses Go's
// default HTTP client: bound every call with a context deadline.
func NewAliDNS(cfg AliDNSConfig) (*Adapter, error) {
	if strings.TrimSpace(cfg.AccessKeyID) == "" || strings.TrimSpace(cfg.AccessKeySecret) == "" {
		return nil, errors.New("alidns: missing access key ID or access key secret")
	}
	if strings.TrimSpace(cfg.Zone) == "" {
		return nil, errors.New("alidns: missing zone")
	}
	p := &alidns.Provider{CredentialInfo: alidns.CredentialInfo{
		AccessKeyID:     cfg.AccessKeyID,
		AccessKeySecret: cfg.AccessKeySecret,
		RegionID:        cfg.RegionID,
		SecurityToken:   cfg.SecurityToken,
	}}
	return Wrap(p, Options{
		Provider: "alidns",
		Zone:     cfg.Zone,
		Strategy: AppendDelete,
		// The free edition's maximum; the package caps it there as well.
		DefaultTTL: 10 * time.Minute,
		Classify:   classifyText,
		Secrets:    []string{cfg.AccessKeySecret, cfg.SecurityToken},
	})
}

// classifyText recognises refused credentials and unknown zones in the
// text of errors from packages that do not keep the API's error codes.
func classifyText(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ddns.ErrAuth) || errors.Is(err, ddns.ErrNoHost) {
		return err
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{
		"invaliddomainname", "incorrectdomainuser", "domainrecordnotbelong",
		"domain name does not exist", "domain does not exist",
	} {
		if strings.Contains(msg, s) {
			return fmt.Errorf("%w: %w", ddns.ErrNoHost, err)
		}
	}
	for _, s := range []string{
		"http 401", "http 403",
		"invalidaccesskeyid", "access key is not found", "accesskeyid not found",
		"signaturedoesnotmatch", "signature is not matched", "signature we calculated does not match",
		"incompletesignature", "invalidsecuritytoken", "forbidden", "not authorized",
		"authfailure", "unauthorized",
	} {
		if strings.Contains(msg, s) {
			return fmt.Errorf("%w: %w", ddns.ErrAuth, err)
		}
	}
	return err
}

// Route53Config configures Amazon Route 53.
type Route53Config struct {
	// AccessKeyID and SecretAccessKey (and SessionToken for temporary
	// credentials) are static credentials. Without them, Profile or the
	// AWS_* environment variables must name credentials.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Profile is a profile in the shared AWS config files.
	Profile string
	// Region signs the requests; Route 53 is global. Default us-east-1.
	Region string
	// HostedZoneID skips looking the zone up by name ("Z1D633PJN98FT9").
	HostedZoneID string
	// Zone the names are in: "example.com.".
	Zone string
}

// NewRoute53 returns a provider for Route 53 through
// github.com/libdns/route53, whose SetRecords replaces a whole record set
// with one UPSERT.
//
// The package ends the process (log.Fatal) if it cannot load the AWS
// configuration, so NewRoute53 loads it first, with the same settings,
// and returns the error instead. That reads files and the environment
// only.
func NewRoute53(cfg Route53Config) (*Adapter, error) {
	if strings.TrimSpace(cfg.Zone) == "" {
		return nil, errors.New("route53: missing zone")
	}
	static := cfg.AccessKeyID != "" || cfg.SecretAccessKey != ""
	if static && (cfg.AccessKeyID == "" || cfg.SecretAccessKey == "") {
		return nil, errors.New("route53: access key ID and secret access key must be given together")
	}
	if !static && cfg.Profile == "" && !awsCredentialsInEnvironment() {
		return nil, errors.New("route53: missing credentials: set an access key ID and secret access key, or a profile (or AWS_ACCESS_KEY_ID/AWS_PROFILE in the environment)")
	}
	region := cfg.Region
	if region == "" && os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
		region = "us-east-1"
	}
	opts := []func(*awsconfig.LoadOptions) error{}
	if cfg.Profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(cfg.Profile))
	}
	if region != "" {
		opts = append(opts, awsconfig.WithRegion(region))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := awsconfig.LoadDefaultConfig(ctx, opts...); err != nil {
		return nil, fmt.Errorf("route53: loading the AWS configuration: %w", err)
	}
	p := &route53.Provider{
		Region:          region,
		Profile:         cfg.Profile,
		AccessKeyId:     cfg.AccessKeyID,
		SecretAccessKey: cfg.SecretAccessKey,
		SessionToken:    cfg.SessionToken,
		HostedZoneID:    strings.TrimPrefix(cfg.HostedZoneID, "/hostedzone/"),
	}
	return Wrap(p, Options{
		Provider:   "route53",
		Zone:       cfg.Zone,
		Strategy:   Replace,
		DefaultTTL: 5 * time.Minute,
		Classify:   classifyAWS,
		Secrets:    []string{cfg.SecretAccessKey, cfg.SessionToken},
	})
}

func awsCredentialsInEnvironment() bool {
	for _, v := range []string{
		"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// classifyAWS maps AWS API errors.
func classifyAWS(err error) error {
	if err == nil {
		return nil
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
			"UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException", "InvalidSignatureException",
			"MissingAuthenticationToken", "IncompleteSignature", "NotAuthorized":
			return fmt.Errorf("%w: %w", ddns.ErrAuth, err)
		case "NoSuchHostedZone", "HostedZoneNotFound":
			return fmt.Errorf("%w: %w", ddns.ErrNoHost, err)
		}
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) {
		if c := respErr.HTTPStatusCode(); c == 401 || c == 403 {
			return fmt.Errorf("%w: %w", ddns.ErrAuth, err)
		}
	}
	if strings.HasPrefix(err.Error(), "HostedZoneNotFound") {
		return fmt.Errorf("%w: %w", ddns.ErrNoHost, err)
	}
	return err
}

// DNSPodConfig configures DNSPod through the Tencent Cloud API 3.0.
type DNSPodConfig struct {
	SecretID  string
	SecretKey string
	// SessionToken is needed with temporary credentials only.
	SessionToken string
	// Region selects a regional endpoint; empty: the global one.
	Region string
	// Zone the names are in: "example.com.".
	Zone string
}

// NewDNSPod returns a provider for DNSPod (Tencent Cloud DNS) through
// github.com/libdns/tencentcloud.
//
// That package (v1.4.3) ignores the errors the API returns in its
// responses when listing, modifying and deleting records: an API error
// when listing looks like an empty zone. A DNSPod zone always lists its
// NS records, so an empty listing is reported as an error here. Refused
// credentials surface only as the package's "returned value is not
// valid" when a record is created. It lists at most the API's default
// page (100 records) of a zone, and uses Go's default HTTP client: bound
// every call with a context deadline.
func NewDNSPod(cfg DNSPodConfig) (*Adapter, error) {
	if strings.TrimSpace(cfg.SecretID) == "" || strings.TrimSpace(cfg.SecretKey) == "" {
		return nil, errors.New("dnspod: missing secret ID or secret key")
	}
	if strings.TrimSpace(cfg.Zone) == "" {
		return nil, errors.New("dnspod: missing zone")
	}
	if r := cfg.Region; r != "" && strings.ContainsAny(r, "./:@ ") {
		return nil, fmt.Errorf("dnspod: invalid region %q", r)
	}
	p := &nonEmptyZone{LibdnsProvider: &tencentcloud.Provider{
		SecretId:     cfg.SecretID,
		SecretKey:    cfg.SecretKey,
		SessionToken: cfg.SessionToken,
		Region:       cfg.Region,
	}}
	return Wrap(p, Options{
		Provider:   "dnspod",
		Zone:       cfg.Zone,
		Strategy:   AppendDelete,
		DefaultTTL: 10 * time.Minute,
		Classify:   classifyText,
		Secrets:    []string{cfg.SecretKey, cfg.SessionToken},
	})
}

// nonEmptyZone reports an empty zone listing as an error.
type nonEmptyZone struct {
	LibdnsProvider
}

func (p *nonEmptyZone) GetRecords(ctx context.Context, zone string) ([]libdns.Record, error) {
	recs, err := p.LibdnsProvider.GetRecords(ctx, zone)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("the provider listed no records at all for zone %s: wrong credentials, or a zone not in this account", zone)
	}
	return recs, nil
}
