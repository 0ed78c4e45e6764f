package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// MinPasswordLen is the shortest dashboard password the relay accepts.
const MinPasswordLen = 12

// Dashboard configures the relay's web dashboard ("dashboard_*").
type Dashboard struct {
	// Addr is where the dashboard listens, HOST:PORT; "" turns it off.
	Addr string
	// Password, when set, is required to log in. Without it Addr must be
	// a loopback address.
	Password Secret
	// TLSCert and TLSKey name a PEM certificate and key: the dashboard is
	// then served over HTTPS.
	TLSCert, TLSKey string
}

func dashboardSettings() []setting {
	return []setting{
		{key: "dashboard_addr", flag: "dashboard-addr", kind: kString, usage: "serve the web dashboard on this HOST:PORT (default off); other than loopback, it needs dashboard_password"},
		{key: "dashboard_password", kind: kString, usage: "password of the web dashboard, 12 characters or more (no flag, to keep it out of the process list)"},
		{key: "dashboard_password_file", flag: "dashboard-password-file", kind: kString, usage: "file holding the web dashboard's password, instead of dashboard_password"},
		{key: "dashboard_tls_cert", flag: "dashboard-tls-cert", kind: kString, usage: "PEM certificate to serve the web dashboard over HTTPS with"},
		{key: "dashboard_tls_key", flag: "dashboard-tls-key", kind: kString, usage: "PEM private key of --dashboard-tls-cert"},
	}
}

// dashboard reads the dashboard_* settings.
func (l *loader) dashboard() Dashboard {
	d := Dashboard{Addr: l.str("dashboard_addr"), TLSCert: l.str("dashboard_tls_cert"), TLSKey: l.str("dashboard_tls_key")}
	pw := l.str("dashboard_password")
	file := l.str("dashboard_password_file")
	switch {
	case l.set("dashboard_password") && file != "":
		l.fail("dashboard_password_file", errors.New("give dashboard_password or dashboard_password_file, not both"))
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			l.fail("dashboard_password_file", err)
			break
		}
		pw = strings.TrimSpace(string(b))
		if err := checkPassword(pw); err != nil {
			l.fail("dashboard_password_file", fmt.Errorf("%s: %w", file, err))
		}
	case l.set("dashboard_password"):
		if err := checkPassword(pw); err != nil {
			l.fail("dashboard_password", err)
		}
	}
	d.Password = Secret(pw)
	if (d.TLSCert == "") != (d.TLSKey == "") {
		l.fail("dashboard_tls_cert", errors.New("dashboard_tls_cert and dashboard_tls_key go together: give both or neither"))
	}
	if d.Addr == "" {
		for _, k := range []string{"dashboard_password", "dashboard_password_file", "dashboard_tls_cert"} {
			if l.set(k) {
				l.fail(k, errors.New("has no effect without dashboard_addr, which turns the dashboard on"))
			}
		}
		return d
	}
	host, port, err := net.SplitHostPort(d.Addr)
	if err != nil || port == "" {
		l.fail("dashboard_addr", fmt.Errorf("%q: want HOST:PORT, e.g. 127.0.0.1:8080", d.Addr))
		return d
	}
	if err := validHostPort(d.Addr); err != nil {
		l.fail("dashboard_addr", err)
		return d
	}
	if d.Password == "" && !loopbackHost(host) {
		l.fail("dashboard_addr", fmt.Errorf("%q is reachable from the network, and the dashboard has no password: set dashboard_password or dashboard_password_file (%d characters or more), or listen on loopback (127.0.0.1:%s) and reach it through an SSH tunnel", d.Addr, MinPasswordLen, port))
	}
	return d
}

func checkPassword(s string) error {
	switch {
	case s == "":
		return errors.New("empty; give a long random password, or leave it unset to keep the dashboard on loopback")
	case len(s) < MinPasswordLen:
		return fmt.Errorf("shorter than %d characters; use a long random password", MinPasswordLen)
	}
	return nil
}

// loopbackHost reports whether host (of HOST:PORT) is localhost or a
// loopback address; "" means every address, not loopback.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
