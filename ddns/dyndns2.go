package ddns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// DynDNS2 is a client of the dyndns2 update protocol that No-IP, Dyn,
// Oray-compatible and many self-hosted servers speak:
//
//	GET /nic/update?hostname=home.example.com&myip=203.0.113.5,2001:db8::5
//	Authorization: Basic …
//
// The protocol can only write, and only one address per family. Get reads
// the records from the zone's authoritative server instead (Nameserver,
// or Lookup).
//
// Set writes one family; it sends the name's current address of the
// other family along (read through Get), because some servers clear a
// family that an update leaves out.
type DynDNS2 struct {
	Server    string // base URL, "https://dynupdate.no-ip.com"; /nic/update is added
	Username  string
	Password  string       // never shown in errors or logs
	Client    *http.Client // nil: a client with a 30 s timeout
	UserAgent string       // "": DefaultUserAgent; servers ask for "company-product/version"
	// Nameserver is the zone's authoritative server, "ns1.example.com:53",
	// that Get asks (see AuthoritativeLookup).
	Nameserver string
	// Lookup, if set, replaces Nameserver.
	Lookup LookupFunc
}

// retry911 is how long dyndns2 asks clients to wait after "911" or
// "dnserr": "at least 30 minutes".
const retry911 = 30 * time.Minute

var _ Provider = (*DynDNS2)(nil)

// Get reads the records through Lookup or Nameserver.
func (d *DynDNS2) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	addrs, err := readBack(ctx, d.Lookup, d.Nameserver, name, typ)
	if err != nil {
		return nil, fmt.Errorf("dyndns2: get %s %s: %w", name, typ, err)
	}
	return addrs, nil
}

// Set sends one update. dyndns2 cannot remove a record or hold two
// addresses of one family, so want must have exactly one address.
func (d *DynDNS2) Set(ctx context.Context, want RecordSet) error {
	where := fmt.Sprintf("dyndns2: set %s %s", want.Name, want.Type)
	if err := checkRecordSet(want); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if len(want.Addrs) != 1 {
		return fmt.Errorf("%s: the protocol holds exactly one address per family, want has %d", where, len(want.Addrs))
	}
	myip := []netip.Addr{want.Addrs[0]}
	other := TypeAAAA
	if want.Type == TypeAAAA {
		other = TypeA
	}
	// Best effort: without the other family the update still says what
	// was asked.
	if cur, err := d.Get(ctx, want.Name, other); err == nil && len(cur) == 1 {
		myip = append(myip, cur[0])
		if other == TypeA {
			myip[0], myip[1] = myip[1], myip[0]
		}
	}
	if err := d.update(ctx, want.Name, myip); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

// update sends the request and reads the answer.
func (d *DynDNS2) update(ctx context.Context, name string, myip []netip.Addr) error {
	base, err := url.Parse(d.Server)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return fmt.Errorf("server %q: want an http or https URL", redactURL(d.Server))
	}
	base.User = nil
	u := base.JoinPath("nic", "update")
	ips := make([]string, len(myip))
	for i, a := range myip {
		ips[i] = a.String()
	}
	u.RawQuery = url.Values{"hostname": {name}, "myip": {strings.Join(ips, ",")}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	req.SetBasicAuth(d.Username, d.Password)
	ua := d.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	req.Header.Set("User-Agent", ua)
	client := d.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return d.redact(fmt.Errorf("%s: %w", hostOnly(d.Server), unwrapURLError(err)))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", hostOnly(d.Server), err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		return &RetryAfterError{
			After: retryAfter(resp.Header, time.Now(), defaultRetryAfter),
			Err:   fmt.Errorf("%s: HTTP status %s", hostOnly(d.Server), resp.Status),
		}
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		// Some servers put "badauth" in the body, some only the status.
		if err := parseDynDNS2Answer(body, myip); err != nil && !isUnknownAnswer(err) {
			return d.redact(err)
		}
		return fmt.Errorf("%s: HTTP status %s: %w", hostOnly(d.Server), resp.Status, ErrAuth)
	}
	err = parseDynDNS2Answer(body, myip)
	if resp.StatusCode/100 != 2 && (err == nil || isUnknownAnswer(err)) {
		return fmt.Errorf("%s: HTTP status %s", hostOnly(d.Server), resp.Status)
	}
	return d.redact(err)
}

// redact replaces the password in an error's text, in case a server
// echoes it; it keeps what err wraps.
func (d *DynDNS2) redact(err error) error {
	if err == nil || len(d.Password) < 3 || !strings.Contains(err.Error(), d.Password) {
		return err
	}
	return &redactedError{text: strings.ReplaceAll(err.Error(), d.Password, "***"), err: err}
}

type redactedError struct {
	text string
	err  error
}

func (e *redactedError) Error() string { return e.text }
func (e *redactedError) Unwrap() error { return e.err }

// unknownAnswerError is an answer the protocol does not define.
type unknownAnswerError struct{ line string }

func (e *unknownAnswerError) Error() string {
	return fmt.Sprintf("unknown answer %q", e.line)
}

func isUnknownAnswer(err error) bool {
	var u *unknownAnswerError
	return errors.As(err, &u)
}

// parseDynDNS2Answer reads the first line of a dyndns2 answer ("good
// 203.0.113.5", "nochg 203.0.113.5", "badauth", …) for an update that
// sent sent.
func parseDynDNS2Answer(body []byte, sent []netip.Addr) error {
	line := ""
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if line = strings.TrimSpace(sc.Text()); line != "" {
			break
		}
	}
	code, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	switch code {
	case "good":
		// Dyn's way of saying it ignored a client it considers broken,
		// unless 127.0.0.1 was what the client asked for.
		if rest == "127.0.0.1" && !slices.Contains(sent, netip.AddrFrom4([4]byte{127, 0, 0, 1})) {
			return fmt.Errorf(`server answered "good 127.0.0.1": it ignored the update: %w`, ErrRejected)
		}
		return nil
	case "nochg":
		return nil
	case "badauth":
		return fmt.Errorf("server answered %q: %w", code, ErrAuth)
	case "nohost", "notfqdn", "!yours":
		return fmt.Errorf("server answered %q: %w", code, ErrNoHost)
	case "abuse":
		return fmt.Errorf("server answered %q: %w", code, ErrAbuse)
	case "badagent":
		return fmt.Errorf("server answered %q (it refuses this client): %w", code, ErrRejected)
	case "!donator":
		return fmt.Errorf("server answered %q (the account lacks a feature the update needs): %w", code, ErrRejected)
	case "numhost":
		return fmt.Errorf("server answered %q (too many hosts in one update): %w", code, ErrRejected)
	case "911", "dnserr":
		return &RetryAfterError{After: retry911, Err: fmt.Errorf("server answered %q (trouble on its side)", code)}
	}
	return &unknownAnswerError{line: truncate(line, 64)}
}
