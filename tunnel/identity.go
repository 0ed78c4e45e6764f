package tunnel

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// ErrFingerprintMismatch means the relay presented a key other than the
// pinned one.
var ErrFingerprintMismatch = errors.New("relay key does not match the pinned fingerprint")

// GenerateCertificate creates a self-signed Ed25519 certificate for a
// relay and returns it and its key, PEM-encoded. Agents pin the key, so the
// name and validity period carry no meaning.
func GenerateCertificate() (certPEM, keyPEM []byte, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "homeport relay"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(100, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"homeport-relay"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	return certPEM, keyPEM, nil
}

// Fingerprint returns "sha256:<hex>" of the certificate's public key
// (SubjectPublicKeyInfo), so a re-issued certificate for the same key keeps
// its fingerprint.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CertificateFingerprint returns the fingerprint of a key pair's leaf.
func CertificateFingerprint(c tls.Certificate) (string, error) {
	if len(c.Certificate) == 0 {
		return "", errors.New("empty certificate")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return "", fmt.Errorf("parse certificate: %w", err)
	}
	return Fingerprint(leaf), nil
}

// ServerTLSConfig is the relay's TLS configuration: TLS 1.3 only.
func ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
	}
}

// PinnedTLSConfig is the agent's TLS configuration when the relay is
// verified by the fingerprint of its public key. The handshake fails, before
// the agent sends anything of its own, if the key does not match.
func PinnedTLSConfig(fingerprint string) (*tls.Config, error) {
	want, err := parseFingerprint(fingerprint)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// The chain is not verified against a CA; VerifyConnection checks
		// the pinned key instead. TLS 1.3's CertificateVerify proves the
		// relay holds the private key of the certificate it sent.
		InsecureSkipVerify: true,
		ServerName:         "homeport-relay",
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("relay sent no certificate")
			}
			got := Fingerprint(cs.PeerCertificates[0])
			if got != want {
				return fmt.Errorf("%w: relay has %s, pinned %s", ErrFingerprintMismatch, got, want)
			}
			return nil
		},
	}, nil
}

// CATLSConfig is the agent's TLS configuration when the relay has a
// certificate from a CA (roots nil means the system's roots).
func CATLSConfig(roots *x509.CertPool, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		RootCAs:    roots,
		ServerName: serverName,
	}
}

// parseFingerprint accepts "sha256:<64 hex>", with or without the prefix,
// in either case, with or without ':' between bytes.
func parseFingerprint(s string) (string, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	h = strings.TrimPrefix(h, "sha256:")
	h = strings.ReplaceAll(h, ":", "")
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want sha256:<64 hex digits>", s)
	}
	return "sha256:" + h, nil
}
