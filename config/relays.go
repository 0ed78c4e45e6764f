package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// RelayEndpoint is one relay that an agent or a visitor keeps a session
// to: an item of the relays list, or the single relay of the relay,
// fingerprint (or ca_file), transport and token (or key) settings.
type RelayEndpoint struct {
	// Address is the relay's agent address, host:port.
	Address string
	// Fingerprint pins the relay's public key ("sha256:<hex>").
	Fingerprint string
	// CAFile and ServerName verify the relay by a CA instead of a pin.
	CAFile, ServerName string
	// Transport is how to reach it: TransportAuto, TransportTCP or
	// TransportQUIC.
	Transport string
	// Secret is what this end proves it knows: the agent's token, or the
	// visitor's key, for this relay.
	Secret string
}

// MaxRelays bounds the relays list: each relay costs a session.
const MaxRelays = 8

// relaysUsage is the relays setting's help, for the agent and the visitor.
func relaysSetting(secret string) setting {
	return setting{key: "relays", kind: kFile, usage: "several relays, each with its address, fingerprint (or ca_file and server_name), and optionally its own " +
		secret + " (or " + secret + "_file) and transport; a session is kept to each (config file only)"}
}

// secretKind is what an agent or a visitor proves to the relay: the
// setting's name (token, key), how it is checked, and the advice for a
// missing one.
type secretKind struct {
	key     string // "token" or "key"; the file's setting adds "_file"
	check   func(string) error
	missing string
}

// relayList reads the relays list. It returns nil when the list is not
// given (the single relay settings are read instead). defaultSecret and
// defaultTransport are the top-level token (or key) and transport, used
// by items that give none.
func (l *loader) relayList(sk secretKind, defaultSecret string, secretGiven bool, defaultTransport string) []RelayEndpoint {
	items := l.list("relays")
	if len(items) == 0 {
		return nil
	}
	// The single relay's settings do not mix with the list: which pin
	// belongs to which relay would be a guess.
	for _, k := range []string{"relay", "fingerprint", "ca_file", "server_name"} {
		if l.str(k) != "" {
			l.fail(k, fmt.Errorf("give relay (with fingerprint or ca_file) or a relays list, not both: move it into an item of relays"))
		}
	}
	if len(items) > MaxRelays {
		l.fail("relays", fmt.Errorf("%d relays: at most %d", len(items), MaxRelays))
		return nil
	}
	var out []RelayEndpoint
	addrs := map[string]int{}
	pins := map[string]int{}
	for i, item := range items {
		r, errs := l.relayItem(item, sk, defaultSecret, secretGiven, defaultTransport)
		for _, err := range errs {
			l.fail("relays", fmt.Errorf("item %d: %w", i+1, err))
		}
		if len(errs) > 0 {
			continue
		}
		if j, dup := addrs[addrKey(r.Address)]; dup {
			l.fail("relays", fmt.Errorf("item %d (%s): item %d has that address already; list each relay once", i+1, r.Address, j))
			continue
		}
		if j, dup := pins[r.Fingerprint]; dup && r.Fingerprint != "" {
			l.fail("relays", fmt.Errorf("item %d (%s): item %d has the same fingerprint, so it is the same relay under another address; the two sessions would keep replacing each other: list each relay once", i+1, r.Address, j))
			continue
		}
		addrs[addrKey(r.Address)] = i + 1
		pins[r.Fingerprint] = i + 1
		out = append(out, r)
	}
	return out
}

// addrKey compares relay addresses: host names are not case-sensitive.
func addrKey(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return strings.ToLower(strings.TrimSuffix(host, ".")) + ":" + port
}

// relayItem reads and checks one item of the relays list, and returns
// every mistake in it.
func (l *loader) relayItem(item any, sk secretKind, defaultSecret string, secretGiven bool, defaultTransport string) (RelayEndpoint, []error) {
	fileKey := sk.key + "_file"
	m, err := section(item, "address", "fingerprint", "ca_file", "server_name", "transport", sk.key, fileKey)
	if err != nil {
		return RelayEndpoint{}, []error{err}
	}
	var r RelayEndpoint
	var fp, secretFile string
	for k, x := range m {
		s := strings.TrimSpace(numText(x))
		switch strings.ToLower(k) {
		case "address":
			r.Address = s
		case "fingerprint":
			fp = s
		case "ca_file":
			r.CAFile = s
		case "server_name":
			r.ServerName = s
		case "transport":
			r.Transport = strings.ToLower(s)
		case sk.key:
			r.Secret = s
		case fileKey:
			secretFile = s
		}
	}
	if r.Address == "" {
		return RelayEndpoint{}, []error{errors.New("address: missing: give the relay's agent address, e.g. vps.example.com:7000")}
	}
	if err := checkRelayAddress(r.Address); err != nil {
		return RelayEndpoint{}, []error{fmt.Errorf("address %w", err)}
	}
	// From here on, errors name the relay (items are easier to find by
	// address than by number), and each mistake is reported.
	var errs []error
	fail := func(err error) { errs = append(errs, fmt.Errorf("%s: %w", r.Address, err)) }
	switch {
	case IsPlaceholder(fp):
		fail(fmt.Errorf("fingerprint %q %w: put the fingerprint that relay printed there (sha256: and 64 hex digits)", fp, ErrPlaceholder))
	case fp != "" && r.CAFile != "":
		fail(fmt.Errorf("give either fingerprint or ca_file, not both"))
	case fp == "" && r.CAFile == "":
		fail(fmt.Errorf("fingerprint: missing: give the fingerprint this relay printed (each relay has its own key), or ca_file to verify it by a CA"))
	case r.ServerName != "" && r.CAFile == "":
		fail(fmt.Errorf("server_name: only used with ca_file; a fingerprint pins the key whatever the name"))
	case fp != "":
		if r.Fingerprint, err = NormalizeFingerprint(fp); err != nil {
			fail(err)
		}
	}
	switch r.Transport {
	case "":
		r.Transport = defaultTransport
	case TransportAuto, TransportTCP, TransportQUIC:
	default:
		fail(fmt.Errorf("transport %q: want auto, tcp or quic", r.Transport))
	}
	switch {
	case r.Secret != "" && secretFile != "":
		fail(fmt.Errorf("give %s or %s, not both", sk.key, fileKey))
	case secretFile != "":
		secret, loose, err := readSecretFile(secretFile)
		if err != nil {
			fail(fmt.Errorf("%s: %w", fileKey, err))
			break
		}
		if err := sk.check(secret); err != nil {
			fail(fmt.Errorf("%s: the %s in %s: %w", fileKey, sk.key, secretFile, err))
		}
		if loose {
			l.warns = append(l.warns, secretFileWarning(fmt.Sprintf("%s: item for %s: %s", l.where("relays"), r.Address, fileKey), secretFile))
		}
		r.Secret = secret
	case r.Secret != "":
		if err := sk.check(r.Secret); err != nil {
			fail(fmt.Errorf("%s: %w", sk.key, err))
		}
	case defaultSecret != "":
		r.Secret = defaultSecret
	case secretGiven:
		// The top-level one is wrong, and said so.
	default:
		fail(fmt.Errorf("%s: missing: give the %s this relay printed (%s or %s in this item), or one %s for every relay at the top level",
			sk.key, sk.key, sk.key, fileKey, sk.key))
	}
	if len(errs) > 0 {
		return RelayEndpoint{}, errs
	}
	return r, nil
}

// checkRelayAddress checks a relay's agent address, host:port.
func checkRelayAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("%q: want HOST:PORT, e.g. vps.example.com:7000", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, port)
	}
	return nil
}
