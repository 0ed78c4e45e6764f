package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"os"
	"slices"
	"strings"
)

// ACME challenge names, as in "acme.challenges".
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// DefaultACMECA is Let's Encrypt's production directory, the default
// "acme.ca".
const DefaultACMECA = "https://acme-v02.api.letsencrypt.org/directory"

// ACME configures how the relay gets certificates for the names of its
// web (HTTP and HTTPS) tunnels ("acme.*").
type ACME struct {
	// Email is the ACME account's contact address; "" for none.
	Email string
	// CA is the URL of the CA's ACME directory.
	CA string
	// CARoot names a PEM file of the only roots trusted for the CA's own
	// HTTPS (a private CA); "" trusts the system's roots. CARoots holds
	// them, read when the configuration was loaded.
	CARoot  string
	CARoots *x509.CertPool
	// HTTP01 and TLSALPN01 say which challenges may be used: HTTP-01 on
	// the relay's HTTP listener, TLS-ALPN-01 on its HTTPS listener.
	HTTP01, TLSALPN01 bool
}

func acmeSettings() []setting {
	return []setting{
		{key: "acme.email", flag: "acme-email", kind: kString, usage: "contact address of the ACME account for the web names' certificates (default none)"},
		{key: "acme.ca", flag: "acme-ca", kind: kString, def: DefaultACMECA, usage: "URL of the ACME directory that issues the web names' certificates"},
		{key: "acme.ca_root", flag: "acme-ca-root", kind: kString, usage: "PEM file of the roots to trust for the ACME CA's own HTTPS, for a private CA (default the system's)"},
		{key: "acme.challenges", flag: "acme-challenges", kind: kList, def: ChallengeHTTP01 + "," + ChallengeTLSALPN01, usage: "ACME challenges to use: http-01 (on the HTTP port), tls-alpn-01 (on the HTTPS port)"},
	}
}

// acme reads the acme.* settings.
func (l *loader) acme() ACME {
	a := ACME{Email: strings.TrimSpace(l.str("acme.email")), CA: strings.TrimSpace(l.str("acme.ca")), CARoot: l.str("acme.ca_root")}
	if a.Email != "" {
		if addr, err := mail.ParseAddress(a.Email); err != nil || addr.Address != a.Email || addr.Name != "" {
			l.fail("acme.email", fmt.Errorf("%q: want a plain e-mail address, e.g. ops@example.com", a.Email))
		}
	}
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		l.fail("acme.ca", fmt.Errorf("%q: want the https:// URL of the CA's ACME directory, e.g. %s", a.CA, DefaultACMECA))
	}
	if a.CARoot != "" {
		pem, err := os.ReadFile(a.CARoot)
		switch {
		case err != nil:
			l.fail("acme.ca_root", err)
		default:
			a.CARoots = x509.NewCertPool()
			if !a.CARoots.AppendCertsFromPEM(pem) {
				l.fail("acme.ca_root", fmt.Errorf("%s: no PEM certificate in it", a.CARoot))
				a.CARoots = nil
			}
		}
	}
	items := l.list("acme.challenges")
	if len(items) == 0 && l.set("acme.challenges") {
		l.fail("acme.challenges", errors.New("empty: list http-01, tls-alpn-01 or both"))
	}
	var seen []string
	for _, v := range items {
		c := strings.ToLower(strings.TrimSpace(fmt.Sprint(v)))
		switch c {
		case ChallengeHTTP01:
			a.HTTP01 = true
		case ChallengeTLSALPN01:
			a.TLSALPN01 = true
		default:
			l.fail("acme.challenges", fmt.Errorf("%q: unknown challenge: want %s or %s", v, ChallengeHTTP01, ChallengeTLSALPN01))
			continue
		}
		if slices.Contains(seen, c) {
			l.fail("acme.challenges", fmt.Errorf("%s is listed twice", c))
		}
		seen = append(seen, c)
	}
	return a
}
