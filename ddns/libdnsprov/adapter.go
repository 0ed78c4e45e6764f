// Package libdnsprov puts DNS providers behind ddns.Provider: API
// providers through the libdns ecosystem (Cloudflare, AliDNS, Route 53,
// DuckDNS, DNSPod/Tencent Cloud) and RFC 2136 dynamic updates with TSIG
// (BIND, Knot, PowerDNS) through its own small client.
//
// libdns APIs take a zone ("example.com.") and names relative to it
// ("home"). Every provider here is configured with its zone; a name that
// is not inside it is reported as ddns.ErrNoHost.
//
// The libdns packages differ in how faithfully they follow the libdns v1
// semantics (SetRecords replacing a whole RRset, DeleteRecords matching
// exactly), so the adapter reads the current records of the name and type
// and then either replaces the RRset in one call, where the package is
// known to do that (Route 53), or adds the missing and deletes the surplus
// records one by one (Cloudflare, AliDNS, DNSPod). Other records of the
// zone are never passed to the provider.
package libdnsprov

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/homeport/homeport/ddns"
	"github.com/libdns/libdns"
)

// LibdnsProvider is what a libdns package must implement to be adapted.
type LibdnsProvider interface {
	libdns.RecordGetter
	libdns.RecordAppender
	libdns.RecordDeleter
}

// SetStrategy tells how Set writes a changed record set.
type SetStrategy int

const (
	// AppendDelete adds the missing records with AppendRecords, then
	// deletes the surplus ones with DeleteRecords. It needs nothing but
	// exact-match deletes from the provider. Between the two calls the
	// name has the old and the new addresses, never none.
	AppendDelete SetStrategy = iota
	// Replace calls SetRecords once with the whole wanted set. Use it only
	// for packages whose SetRecords replaces the RRset of each (name, type)
	// as libdns v1 specifies.
	Replace
	// UpdateInPlace is AppendDelete, except that when the name has exactly
	// one record and one is wanted, that record is updated with
	// SetRecords (for packages whose SetRecords updates a single matching
	// record in place, keeping its provider-side settings).
	UpdateInPlace
)

// Options configure Wrap.
type Options struct {
	// Provider names the provider in errors: "cloudflare".
	Provider string
	// Zone the names belong to: "example.com." (the trailing dot is
	// optional). Empty: every name is the apex of its own zone (DuckDNS).
	Zone string
	// ZoneArg, if set, is passed to the libdns calls instead of the zone
	// with its trailing dot (some APIs want "example.com").
	ZoneArg string
	// Strategy for Set.
	Strategy SetStrategy
	// DefaultTTL is written when a RecordSet has no TTL. 0 leaves it to
	// the provider.
	DefaultTTL time.Duration
	// Classify maps a provider error to one wrapping ddns.ErrAuth,
	// ddns.ErrNoHost or a *ddns.RetryAfterError where it recognises it. It
	// returns the error unchanged otherwise.
	Classify func(error) error
	// Secrets are removed from error texts.
	Secrets []string
}

// Adapter is a ddns.Provider backed by a libdns provider.
type Adapter struct {
	p    LibdnsProvider
	opts Options
	zone string // lower case, trailing dot; "" for per-name zones
	// sem serialises calls: Set is read-modify-write, and some libdns
	// packages keep unsynchronised client state.
	sem chan struct{}
}

var _ ddns.Provider = (*Adapter)(nil)

// Wrap adapts a libdns provider to ddns.Provider.
func Wrap(p LibdnsProvider, opts Options) (*Adapter, error) {
	if p == nil {
		return nil, errors.New("libdnsprov: nil provider")
	}
	if opts.Provider == "" {
		opts.Provider = "libdns"
	}
	a := &Adapter{p: p, opts: opts, sem: make(chan struct{}, 1)}
	if opts.Zone != "" {
		z, err := normalizeZone(opts.Zone)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", opts.Provider, err)
		}
		a.zone = z
	}
	if opts.Strategy == Replace {
		if _, ok := p.(libdns.RecordSetter); !ok {
			return nil, fmt.Errorf("%s: the Replace strategy needs a provider with SetRecords", opts.Provider)
		}
	}
	return a, nil
}

// normalizeZone returns zone in lower case with one trailing dot.
func normalizeZone(zone string) (string, error) {
	z := strings.ToLower(strings.TrimSpace(zone))
	z = strings.TrimSuffix(z, ".")
	if z == "" || strings.HasPrefix(z, ".") || strings.Contains(z, "..") || strings.ContainsAny(z, " \t/@") {
		return "", fmt.Errorf("invalid zone %q", zone)
	}
	return z + ".", nil
}

// normalizeName returns a fully qualified name in lower case without the
// trailing dot.
func normalizeName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	n = strings.TrimSuffix(n, ".")
	if n == "" || strings.HasPrefix(n, ".") || strings.Contains(n, "..") || strings.ContainsAny(n, " \t/@") {
		return "", fmt.Errorf("invalid name %q", name)
	}
	return n, nil
}

// relative splits name into its zone (as passed to libdns) and its name
// relative to that zone ("@" for the apex).
func (a *Adapter) relative(name string) (zoneArg, rel string, err error) {
	n, err := normalizeName(name)
	if err != nil {
		return "", "", err
	}
	if a.zone == "" {
		return n + ".", "@", nil
	}
	zone := strings.TrimSuffix(a.zone, ".")
	zoneArg = a.zone
	if a.opts.ZoneArg != "" {
		zoneArg = a.opts.ZoneArg
	}
	switch {
	case n == zone:
		return zoneArg, "@", nil
	case strings.HasSuffix(n, "."+zone):
		return zoneArg, strings.TrimSuffix(n, "."+zone), nil
	}
	return "", "", fmt.Errorf("%w: %s is not in zone %s", ddns.ErrNoHost, n, a.zone)
}

// sameName tells whether a record name as a libdns package returned it
// is rel. Packages differ: "@" or "" for the apex, some return absolute
// names, some keep the case of the provider.
func sameName(recName, rel, zone string) bool {
	r := strings.ToLower(recName)
	if r == "" {
		r = "@"
	}
	if strings.HasSuffix(r, ".") && zone != "" {
		r = libdns.RelativeName(r, zone)
		if r == "" {
			r = "@"
		}
	}
	return r == rel
}

func (a *Adapter) lock(ctx context.Context) error {
	select {
	case a.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Adapter) unlock() { <-a.sem }

// current is one record of the name and type as the provider has it.
type current struct {
	rec  libdns.Record
	addr netip.Addr
	ttl  time.Duration
}

// Get implements ddns.Provider.
func (a *Adapter) Get(ctx context.Context, name, typ string) ([]netip.Addr, error) {
	if err := checkType(typ); err != nil {
		return nil, a.wrap("get", name, typ, err)
	}
	zoneArg, rel, err := a.relative(name)
	if err != nil {
		return nil, a.wrap("get", name, typ, err)
	}
	if err := a.lock(ctx); err != nil {
		return nil, err
	}
	defer a.unlock()
	cur, err := guard(func() ([]current, error) { return a.read(ctx, zoneArg, rel, typ) })
	if err != nil {
		return nil, a.wrap("get", name, typ, err)
	}
	addrs := make([]netip.Addr, 0, len(cur))
	for _, c := range cur {
		addrs = append(addrs, c.addr)
	}
	return sortedUnique(addrs), nil
}

// read returns the records of rel and typ.
func (a *Adapter) read(ctx context.Context, zoneArg, rel, typ string) ([]current, error) {
	recs, err := a.p.GetRecords(ctx, zoneArg)
	if err != nil {
		return nil, a.classify(err)
	}
	var out []current
	for _, rec := range recs {
		rr := rec.RR()
		if !strings.EqualFold(rr.Type, typ) || !sameName(rr.Name, rel, zoneArg) {
			continue
		}
		addr, err := recordAddr(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, current{rec: rec, addr: addr, ttl: rr.TTL})
	}
	return out, nil
}

func recordAddr(rec libdns.Record) (netip.Addr, error) {
	if a, ok := rec.(libdns.Address); ok {
		return a.IP.Unmap(), nil
	}
	if a, ok := rec.(*libdns.Address); ok && a != nil {
		return a.IP.Unmap(), nil
	}
	rr := rec.RR()
	addr, err := netip.ParseAddr(strings.TrimSpace(rr.Data))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("provider returned %s record %q with data %q: %w", rr.Type, rr.Name, rr.Data, err)
	}
	return addr.Unmap(), nil
}

// Set implements ddns.Provider.
func (a *Adapter) Set(ctx context.Context, want ddns.RecordSet) error {
	addrs, err := checkSet(want)
	if err != nil {
		return a.wrap("set", want.Name, want.Type, err)
	}
	zoneArg, rel, err := a.relative(want.Name)
	if err != nil {
		return a.wrap("set", want.Name, want.Type, err)
	}
	if err := a.lock(ctx); err != nil {
		return err
	}
	defer a.unlock()
	_, err = guard(func() (struct{}, error) {
		return struct{}{}, a.set(ctx, zoneArg, rel, want.Type, addrs, want.TTL)
	})
	if err != nil {
		return a.wrap("set", want.Name, want.Type, err)
	}
	return nil
}

func (a *Adapter) set(ctx context.Context, zoneArg, rel, typ string, addrs []netip.Addr, ttl time.Duration) error {
	if ttl <= 0 {
		ttl = a.opts.DefaultTTL
	}
	cur, err := a.read(ctx, zoneArg, rel, typ)
	if err != nil {
		return err
	}
	records := func(list []netip.Addr) []libdns.Record {
		out := make([]libdns.Record, 0, len(list))
		for _, ip := range list {
			out = append(out, libdns.Address{Name: rel, TTL: ttl, IP: ip})
		}
		return out
	}

	if len(addrs) == 0 {
		if len(cur) == 0 {
			return nil
		}
		del := make([]libdns.Record, 0, len(cur))
		for _, c := range cur {
			del = append(del, c.rec)
		}
		_, err := a.p.DeleteRecords(ctx, zoneArg, del)
		return a.classify(err)
	}

	switch a.opts.Strategy {
	case Replace:
		_, err := a.p.(libdns.RecordSetter).SetRecords(ctx, zoneArg, records(addrs))
		return a.classify(err)
	case UpdateInPlace:
		if s, ok := a.p.(libdns.RecordSetter); ok && len(cur) == 1 && len(addrs) == 1 {
			if cur[0].addr == addrs[0] && (ttl == 0 || cur[0].ttl == ttl) {
				return nil
			}
			_, err := s.SetRecords(ctx, zoneArg, records(addrs))
			return a.classify(err)
		}
	}

	// AppendDelete: add what is missing, then remove what is not wanted.
	var add []netip.Addr
	for _, ip := range addrs {
		if !slices.ContainsFunc(cur, func(c current) bool { return c.addr == ip }) {
			add = append(add, ip)
		}
	}
	var del []libdns.Record
	for _, c := range cur {
		if !slices.Contains(addrs, c.addr) {
			del = append(del, c.rec)
		}
	}
	if len(add) > 0 {
		if _, err := a.p.AppendRecords(ctx, zoneArg, records(add)); err != nil {
			return a.classify(err)
		}
	}
	if len(del) > 0 {
		if _, err := a.p.DeleteRecords(ctx, zoneArg, del); err != nil {
			return a.classify(err)
		}
	}
	return nil
}

// guard turns a panic in a libdns package (some dereference fields of
// API responses that an odd response lacks) into an error.
func guard[T any](f func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("provider package panicked: %v", r)
		}
	}()
	return f()
}

func (a *Adapter) classify(err error) error {
	if err == nil || a.opts.Classify == nil {
		return err
	}
	return a.opts.Classify(err)
}

// wrap adds the operation and removes secrets from the text; errors.Is
// and errors.As still reach the provider's error.
func (a *Adapter) wrap(op, name, typ string, err error) error {
	err = fmt.Errorf("%s: %s %s %s: %w", a.opts.Provider, op, name, typ, err)
	return redact(err, a.opts.Secrets)
}

// redactedError hides secrets in the text of an error it wraps.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if len(s) >= 4 && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, "REDACTED")
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

func checkType(typ string) error {
	if typ != ddns.TypeA && typ != ddns.TypeAAAA {
		return fmt.Errorf("unsupported record type %q", typ)
	}
	return nil
}

// checkSet validates want and returns its addresses, sorted and without
// duplicates.
func checkSet(want ddns.RecordSet) ([]netip.Addr, error) {
	if err := checkType(want.Type); err != nil {
		return nil, err
	}
	if want.TTL < 0 {
		return nil, fmt.Errorf("negative TTL %v", want.TTL)
	}
	addrs := make([]netip.Addr, 0, len(want.Addrs))
	for _, ip := range want.Addrs {
		if !ip.IsValid() {
			return nil, errors.New("invalid address in record set")
		}
		ip = ip.Unmap()
		if (want.Type == ddns.TypeA) != ip.Is4() {
			return nil, fmt.Errorf("address %s does not fit a %s record", ip, want.Type)
		}
		if ip.Zone() != "" {
			return nil, fmt.Errorf("address %s has a zone", ip)
		}
		addrs = append(addrs, ip)
	}
	return sortedUnique(addrs), nil
}

func sortedUnique(addrs []netip.Addr) []netip.Addr {
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	return slices.Compact(addrs)
}
