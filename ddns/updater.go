package ddns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrRejected: the provider refused the request itself (a dyndns2
// "badagent", "numhost" or "!donator"). Like ErrNoHost it stops the
// retries for that name until the configuration changes.
var ErrRejected = errors.New("provider rejected the request")

// NameConfig is one name the Updater keeps up to date.
type NameConfig struct {
	Name string // "home.example.com", without the trailing dot
	IPv4 bool   // manage the A records
	IPv6 bool   // manage the AAAA records
	TTL  time.Duration
}

// Defaults of an Updater.
const (
	DefaultInterval         = 5 * time.Minute
	DefaultForceRefresh     = 24 * time.Hour
	DefaultMinWriteInterval = time.Minute
	DefaultConfirmTimeout   = 2 * time.Minute
	DefaultRetryMax         = 30 * time.Minute

	// retryBase is the first retry delay before jitter; retryFloor is
	// added to every retry delay so that no retry comes within seconds.
	retryBase  = 30 * time.Second
	retryFloor = 10 * time.Second
	// confirmFirstPoll is the first pause while waiting for a write to
	// show; the pauses double.
	confirmFirstPoll = time.Second
)

// Updater keeps the records of Names at Provider pointing at the public
// addresses Source reports.
//
// Each round (Sync) it asks Source, drops addresses that fail CheckPublic,
// and, for each name and record type, reads the records at the provider.
// If they differ from the wanted set, or ForceRefresh has passed since the
// last confirmed write, it writes the wanted set, then reads it back until
// the provider shows exactly that set and the name's other address
// records are unchanged; only then does the record count as synced.
//
// Failures are retried with exponential backoff and full jitter up to
// RetryMax, or after the delay a RetryAfterError asks for if longer.
// ErrAuth and ErrAbuse stop all work with the provider, ErrNoHost and
// ErrRejected the work on that name: retrying cannot help until the
// configuration changes, which means a restart.
//
// When Source gives no public address of a family a name wants, the
// records of that family are left as they are and the status says why:
// a source that fails must not delete records. The exception is a source
// that knows nothing may be published (its error wraps ErrWithdraw: the
// mapping source while the port mapping is not verified): the records of
// a family no source gives an address for are then removed, at once,
// without waiting for MinWriteInterval.
//
// Set the fields before the first Sync or Run and do not change them
// afterwards.
type Updater struct {
	Provider Provider
	Names    []NameConfig
	Source   Source
	Log      *slog.Logger // nil: no logging

	Interval time.Duration // between rounds; 0: DefaultInterval
	// ForceRefresh: write even unchanged records this long after the last
	// confirmed write (some providers expire names that are never
	// updated). It counts from the first round that found the records in
	// sync, so restarts never cause writes of their own. 0:
	// DefaultForceRefresh; negative: never.
	ForceRefresh time.Duration
	// MinWriteInterval is the least time between two writes of one name
	// and type. It is per record type, not per name, so that a new IPv4
	// and a new IPv6 address are both written in one round. 0:
	// DefaultMinWriteInterval.
	MinWriteInterval time.Duration
	// ConfirmTimeout: how long to keep reading back after a write until
	// the provider shows it (an authoritative server may take a moment).
	// 0: DefaultConfirmTimeout; negative: read back once.
	ConfirmTimeout time.Duration
	RetryMax       time.Duration    // cap of the retry backoff; 0: DefaultRetryMax
	Now            func() time.Time // nil: time.Now; tests inject a clock
	// Wake, if set, makes Run start a round at once when it receives,
	// asking the source even if it is backing off after a failure: a
	// source that learns of a new address (the agent, when the relay sees
	// it at a new one) sends on it. Writes still keep MinWriteInterval.
	Wake <-chan struct{}
	// Wakes are more of them, for more sources that learn of changes
	// (the agent's relay, mapping and connected_relays sources
	// together).
	Wakes []<-chan struct{}
	// StopTimeout, if positive, makes Run make one last round when ctx
	// ends, bounded by it, in which sources whose address goes away with
	// the program (the mapping source: the agent removes its port
	// mappings as it stops) withdraw it. 0: no last round.
	StopTimeout time.Duration

	syncMu sync.Mutex // one round at a time; guards the fields below
	inited bool
	err    error // invalid configuration
	recs   []*record
	// stopped is the ErrAuth or ErrAbuse that ended work with the
	// provider.
	stopped       error
	sourceNext    time.Time // no source question before
	sourceFails   int
	sourceErr     error  // why the source failed, while backing off
	lastRejected  string // CheckPublic rejections last logged
	lastSourceErr string // source error last logged
	// final: this round is the last, as Run stops; retries and
	// MinWriteInterval do not hold it back.
	final bool

	statusMu sync.Mutex
	status   []Status // published copies, in recs order
}

// Status is the state of one name and record type.
type Status struct {
	Name string
	Type string
	// Want is what the source says the records should be.
	Want []netip.Addr
	// Current is what the provider showed at the last read.
	Current []netip.Addr
	// Synced: Current equals Want, read back from the provider.
	Synced bool
	// LastUpdate is when a write was last confirmed.
	LastUpdate time.Time
	// Published is the set the records were last confirmed to hold as
	// wanted (written, or found so), since PublishedAt; empty with a
	// PublishedAt: no address, as when a mapping source withdrew it.
	// PublishedAt is zero until the first confirmation.
	Published   []netip.Addr
	PublishedAt time.Time
	// LastCheck is when the provider was last read.
	LastCheck time.Time
	// NextAttempt, if set, is when a retry or a deferred write is due.
	NextAttempt time.Time
	// LastError is why the last attempt failed; nil after success.
	LastError error
	// Updates counts confirmed writes, Failures failed attempts, since
	// the updater started.
	Updates, Failures int64
}

// record is the Updater's state of one name and type.
type record struct {
	name, typ string
	ttl       time.Duration
	st        Status
	fails     int
	next      time.Time // no provider call before
	lastWrite time.Time // last Set attempt
	// refreshFrom is when ForceRefresh starts counting: the last confirmed
	// write, or the first round that found the records in sync.
	refreshFrom time.Time
	stopped     error // ErrNoHost or ErrRejected
}

func (u *Updater) now() time.Time {
	if u.Now != nil {
		return u.Now()
	}
	return time.Now()
}

func (u *Updater) log() *slog.Logger {
	if u.Log != nil {
		return u.Log
	}
	return slog.New(slog.DiscardHandler)
}

// init checks the configuration and builds the records, once.
func (u *Updater) init() error {
	if u.inited {
		return u.err
	}
	u.inited = true
	u.err = u.validate()
	if u.err != nil {
		return u.err
	}
	for _, n := range u.Names {
		name := strings.ToLower(strings.TrimSuffix(n.Name, "."))
		for _, t := range []struct {
			typ string
			on  bool
		}{{TypeA, n.IPv4}, {TypeAAAA, n.IPv6}} {
			if t.on {
				u.recs = append(u.recs, &record{name: name, typ: t.typ, ttl: n.TTL, st: Status{Name: name, Type: t.typ}})
			}
		}
	}
	u.status = make([]Status, len(u.recs))
	for i, r := range u.recs {
		u.status[i] = r.st
	}
	return nil
}

func (u *Updater) validate() error {
	if u.Provider == nil {
		return errors.New("ddns: no provider")
	}
	if u.Source == nil {
		return errors.New("ddns: no source")
	}
	if len(u.Names) == 0 {
		return errors.New("ddns: no names")
	}
	seen := make(map[string]bool)
	for i, n := range u.Names {
		name := strings.ToLower(strings.TrimSuffix(n.Name, "."))
		if err := checkName(name); err != nil {
			return fmt.Errorf("ddns: names[%d]: %w", i, err)
		}
		if !n.IPv4 && !n.IPv6 {
			return fmt.Errorf("ddns: names[%d] %s: neither IPv4 nor IPv6 enabled", i, name)
		}
		if n.TTL < 0 {
			return fmt.Errorf("ddns: names[%d] %s: negative TTL", i, name)
		}
		if seen[name] {
			return fmt.Errorf("ddns: names[%d] %s: listed twice", i, name)
		}
		seen[name] = true
	}
	return nil
}

// Status returns the state of every name and type, in configuration
// order.
func (u *Updater) Status() []Status {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	out := make([]Status, len(u.status))
	for i, s := range u.status {
		s.Want = slices.Clone(s.Want)
		s.Current = slices.Clone(s.Current)
		s.Published = slices.Clone(s.Published)
		out[i] = s
	}
	return out
}

// publish makes the records' state visible to Status.
func (u *Updater) publish() {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	for i, r := range u.recs {
		st := r.st
		st.Want = slices.Clone(st.Want)
		st.Current = slices.Clone(st.Current)
		st.Published = slices.Clone(st.Published)
		u.status[i] = st
	}
}

// Run syncs every Interval, and sooner when a retry is due or Wake
// receives, until ctx ends (it then returns nil). It returns at once if
// the configuration is invalid, and when the provider refuses the
// credentials or blocks the client (errors.Is ErrAuth or ErrAbuse), after
// logging so.
func (u *Updater) Run(ctx context.Context) error {
	if err := u.Validate(); err != nil {
		return err
	}
	u.log().Info("ddns: started", "source", u.Source.Name(), "records", len(u.recs), "interval", u.interval())
	for {
		u.Sync(ctx)
		u.syncMu.Lock()
		stopped, wait := u.stopped, u.nextWake()
		u.syncMu.Unlock()
		if stopped != nil {
			return stopped
		}
		t := time.NewTimer(wait)
		if u.await(ctx, t.C) {
			t.Stop()
			u.stopRound(ctx)
			return nil
		}
		if t.Stop() {
			// Woken: ask the source even if it is backing off.
			u.syncMu.Lock()
			u.sourceNext = time.Time{}
			u.syncMu.Unlock()
		}
	}
}

// await waits for ctx to end (it reports true then), timer, Wake or one
// of Wakes.
func (u *Updater) await(ctx context.Context, timer <-chan time.Time) (done bool) {
	if len(u.Wakes) == 0 {
		select {
		case <-ctx.Done():
			return true
		case <-timer:
		case <-u.Wake:
		}
		return false
	}
	cases := []reflect.SelectCase{
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer)},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(u.Wake)},
	}
	for _, w := range u.Wakes {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w)})
	}
	chosen, _, _ := reflect.Select(cases)
	return chosen == 0
}

// stopRound makes the last round of StopTimeout, in a context that
// outlives ctx by that much and tells the sources that this is the end.
func (u *Updater) stopRound(ctx context.Context) {
	if u.StopTimeout <= 0 {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(ctx), stoppingKey{}, true), u.StopTimeout)
	defer cancel()
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	u.final, u.sourceNext = true, time.Time{}
	defer func() { u.final = false }()
	u.round(sctx)
	u.publish()
}

// nextWake is how long Run waits before the next round: the interval, or
// less if a retry or a deferred write is due sooner.
func (u *Updater) nextWake() time.Duration {
	now := u.now()
	next := now.Add(u.interval())
	if u.sourceNext.After(now) && u.sourceNext.Before(next) {
		next = u.sourceNext
	}
	for _, r := range u.recs {
		if r.stopped == nil && r.next.After(now) && r.next.Before(next) {
			next = r.next
		}
	}
	return max(next.Sub(now), time.Second)
}

// Validate checks the configuration: a provider, a source, and names
// that are valid, distinct and want at least one address type.
func (u *Updater) Validate() error {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	return u.init()
}

// Sync runs one round and returns the resulting status; nil if the
// configuration is invalid (see Validate).
func (u *Updater) Sync(ctx context.Context) []Status {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	if err := u.init(); err != nil {
		return nil
	}
	u.round(ctx)
	u.publish()
	return u.Status()
}

// round is one Sync.
func (u *Updater) round(ctx context.Context) {
	if u.stopped != nil {
		return
	}
	want, srcErr := u.wanted(ctx)
	if ctx.Err() != nil {
		return
	}
	for _, r := range u.recs {
		if u.stopped != nil || ctx.Err() != nil {
			return
		}
		if r.stopped != nil {
			continue
		}
		w := want[r.typ]
		r.st.Want = w
		withdraw := len(w) == 0 && errors.Is(srcErr, ErrWithdraw)
		if len(w) == 0 && !withdraw {
			family := "IPv4"
			if r.typ == TypeAAAA {
				family = "IPv6"
			}
			err := fmt.Errorf("source %s gave no public %s address; the records stay as they are", u.Source.Name(), family)
			if srcErr != nil {
				err = fmt.Errorf("%w: %w", err, srcErr)
			}
			r.st.Synced, r.st.LastError = false, err
			continue
		}
		if u.now().Before(r.next) && !u.final {
			continue
		}
		u.syncRecord(ctx, r, w, withdraw)
	}
}

// wanted asks the source and sorts its public addresses by record type.
// The error is the source's, for the status of a family it left empty.
func (u *Updater) wanted(ctx context.Context) (map[string][]netip.Addr, error) {
	now := u.now()
	if now.Before(u.sourceNext) {
		return nil, fmt.Errorf("%w (next try at %s)", u.sourceErr, u.sourceNext.Format(time.RFC3339))
	}
	addrs, err := u.Source.Addrs(ctx)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		if msg := err.Error(); msg != u.lastSourceErr {
			u.lastSourceErr = msg
			if errors.Is(err, ErrWithdraw) {
				u.log().Info("ddns: source withdraws its address", "source", u.Source.Name(), "why", err)
			} else {
				u.log().Warn("ddns: source failed", "source", u.Source.Name(), "err", err)
			}
		}
		if len(addrs) == 0 {
			u.sourceFails, u.sourceErr = u.sourceFails+1, err
			u.sourceNext = now.Add(u.retryDelay(u.sourceFails, nil))
			return nil, err
		}
	} else {
		u.lastSourceErr = ""
	}
	u.sourceFails, u.sourceNext = 0, time.Time{}

	ok, rejected := publicOnly(unmapAll(addrs))
	var msgs []string
	for _, r := range rejected {
		msgs = append(msgs, r.Error())
	}
	if joined := strings.Join(msgs, "\n"); joined != u.lastRejected {
		u.lastRejected = joined
		for _, r := range rejected {
			u.log().Warn("ddns: address not published", "source", u.Source.Name(), "err", r)
		}
	}
	want := make(map[string][]netip.Addr)
	for _, a := range ok {
		typ := TypeA
		if a.Is6() {
			typ = TypeAAAA
		}
		want[typ] = append(want[typ], a)
	}
	for typ, w := range want {
		w = sortedAddrs(w)
		want[typ] = slices.Compact(w)
	}
	if err == nil && len(rejected) > 0 {
		err = errors.Join(rejected...)
	}
	return want, err
}

// syncRecord reads one record set, writes it if needed and confirms.
// withdraw: want is empty because the source withdrew its address; the
// write is not deferred by MinWriteInterval, nor is one that only removes
// addresses.
func (u *Updater) syncRecord(ctx context.Context, r *record, want []netip.Addr, withdraw bool) {
	p := u.Provider
	now := u.now()
	cur, err := p.Get(ctx, r.name, r.typ)
	if err != nil {
		u.fail(ctx, r, fmt.Errorf("reading %s %s: %w", r.name, r.typ, err))
		return
	}
	r.st.Current, r.st.LastCheck = sortedAddrs(cur), now
	inSync := sameAddrs(cur, want)
	force := u.forceRefresh() > 0 && !r.refreshFrom.IsZero() && now.Sub(r.refreshFrom) >= u.forceRefresh()
	if inSync && !force {
		if r.refreshFrom.IsZero() {
			r.refreshFrom = now
		}
		u.succeed(r, want)
		return
	}
	// Removing addresses (a relay that is gone) is not deferred either:
	// the interval keeps a flapping address from churning the records,
	// and its return is what waits.
	if !withdraw && !removesOnly(cur, want) && !u.final && !r.lastWrite.IsZero() && now.Sub(r.lastWrite) < u.minWriteInterval() {
		r.next = r.lastWrite.Add(u.minWriteInterval())
		r.st.Synced, r.st.NextAttempt = inSync, r.next
		u.log().Debug("ddns: write deferred by the minimum write interval", "name", r.name, "type", r.typ, "until", r.next)
		return
	}

	// The other address type of the name, to check that the write left
	// it alone.
	other := TypeAAAA
	if r.typ == TypeAAAA {
		other = TypeA
	}
	before, errBefore := p.Get(ctx, r.name, other)

	r.lastWrite = now
	if force && inSync {
		u.log().Info("ddns: refreshing unchanged records", "name", r.name, "type", r.typ, "addrs", fmtAddrs(want))
	}
	if err := p.Set(ctx, RecordSet{Name: r.name, Type: r.typ, Addrs: want, TTL: r.ttl}); err != nil {
		u.fail(ctx, r, fmt.Errorf("writing %s %s: %w", r.name, r.typ, err))
		return
	}
	got, err := u.confirm(ctx, r, want)
	if err != nil {
		u.fail(ctx, r, fmt.Errorf("reading %s %s back: %w", r.name, r.typ, err))
		return
	}
	r.st.Current, r.st.LastCheck = sortedAddrs(got), u.now()
	if !sameAddrs(got, want) {
		u.fail(ctx, r, fmt.Errorf("%s %s: provider shows %s after writing %s", r.name, r.typ, fmtAddrs(sortedAddrs(got)), fmtAddrs(want)))
		return
	}
	if errBefore == nil {
		after, err := p.Get(ctx, r.name, other)
		if err == nil && !sameAddrs(before, after) {
			for _, o := range u.recs {
				if o.name == r.name && o.typ == other {
					o.st.Current, o.st.Synced = sortedAddrs(after), false
					o.st.LastError = fmt.Errorf("%s %s changed from %s to %s when %s was written", r.name, other, fmtAddrs(sortedAddrs(before)), fmtAddrs(sortedAddrs(after)), r.typ)
				}
			}
			u.fail(ctx, r, fmt.Errorf("%s %s: writing it changed the %s records from %s to %s", r.name, r.typ, other, fmtAddrs(sortedAddrs(before)), fmtAddrs(sortedAddrs(after))))
			return
		}
	}
	at := u.now()
	r.st.LastUpdate, r.refreshFrom = at, at
	r.st.Updates++
	u.succeed(r, want)
	if len(want) == 0 {
		u.log().Info("ddns: records withdrawn", "name", r.name, "type", r.typ, "was", fmtAddrs(sortedAddrs(cur)))
		return
	}
	u.log().Info("ddns: records updated", "name", r.name, "type", r.typ, "addrs", fmtAddrs(want), "was", fmtAddrs(sortedAddrs(cur)))
}

// confirm reads the record set back until it equals want or
// ConfirmTimeout has been spent waiting.
func (u *Updater) confirm(ctx context.Context, r *record, want []netip.Addr) ([]netip.Addr, error) {
	limit := u.ConfirmTimeout
	if limit == 0 {
		limit = DefaultConfirmTimeout
	}
	pause, waited := confirmFirstPoll, time.Duration(0)
	for {
		got, err := u.Provider.Get(ctx, r.name, r.typ)
		if err != nil || sameAddrs(got, want) || waited >= limit {
			return got, err
		}
		pause = min(pause, limit-waited)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return got, ctx.Err()
		case <-t.C:
		}
		waited += pause
		pause *= 2
	}
}

// succeed records that r holds want, read back from the provider.
func (u *Updater) succeed(r *record, want []netip.Addr) {
	r.fails, r.next = 0, time.Time{}
	r.st.Synced, r.st.LastError, r.st.NextAttempt = true, nil, time.Time{}
	if r.st.PublishedAt.IsZero() || !sameAddrs(r.st.Published, want) {
		r.st.Published, r.st.PublishedAt = sortedAddrs(want), u.now()
	}
}

// fail records err for r and decides when, or whether, to try again.
func (u *Updater) fail(ctx context.Context, r *record, err error) {
	if ctx.Err() != nil {
		// Shutting down: not the provider's fault.
		return
	}
	r.st.Synced, r.st.LastError = false, err
	r.st.Failures++
	switch {
	case errors.Is(err, ErrAuth) || errors.Is(err, ErrAbuse):
		u.stopped = err
		for _, o := range u.recs {
			o.st.Synced, o.st.LastError, o.st.NextAttempt = false, err, time.Time{}
		}
		u.log().Error("ddns: the provider refused; no more updates until the configuration is fixed and homeport restarted", "err", err)
	case errors.Is(err, ErrNoHost) || errors.Is(err, ErrRejected):
		r.stopped = err
		r.st.NextAttempt = time.Time{}
		u.log().Error("ddns: the provider refused this name; no more updates of it until the configuration is fixed and homeport restarted", "name", r.name, "type", r.typ, "err", err)
	default:
		r.fails++
		r.next = u.now().Add(u.retryDelay(r.fails, err))
		r.st.NextAttempt = r.next
		u.log().Warn("ddns: update failed", "name", r.name, "type", r.typ, "err", err, "retry_at", r.next)
	}
}

// retryDelay is the wait after the fails-th failure in a row: exponential
// with full jitter, capped at RetryMax, never less than what a
// RetryAfterError in err asks for.
func (u *Updater) retryDelay(fails int, err error) time.Duration {
	ceiling := u.RetryMax
	if ceiling <= 0 {
		ceiling = DefaultRetryMax
	}
	d := retryBase << min(fails-1, 16)
	if d <= 0 || d > ceiling {
		d = ceiling
	}
	d = min(retryFloor+rand.N(d), ceiling)
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		d = max(d, ra.After)
	}
	return d
}

func (u *Updater) interval() time.Duration {
	if u.Interval > 0 {
		return u.Interval
	}
	return DefaultInterval
}

func (u *Updater) forceRefresh() time.Duration {
	if u.ForceRefresh == 0 {
		return DefaultForceRefresh
	}
	return u.ForceRefresh
}

func (u *Updater) minWriteInterval() time.Duration {
	if u.MinWriteInterval > 0 {
		return u.MinWriteInterval
	}
	return DefaultMinWriteInterval
}
