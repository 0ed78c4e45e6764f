package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// TunnelState says whether the relay serves a tunnel.
type TunnelState string

// Tunnel states.
const (
	// TunnelDown: no session to the relay (yet).
	TunnelDown TunnelState = "down"
	// TunnelUp: the relay has the tunnel's public port open.
	TunnelUp TunnelState = "up"
	// TunnelRetrying: the relay refused the tunnel for a reason that may
	// pass (the port is in use or reserved, a quota is reached); the
	// agent asks again at NextRetry, on the same session.
	TunnelRetrying TunnelState = "retrying"
	// TunnelRefused: the relay refused the tunnel for a reason only a
	// change of configuration fixes; the agent asks again on its next
	// session.
	TunnelRefused TunnelState = "refused"
)

// Registration is what the agent knows of one of its tunnels at the relay.
type Registration struct {
	Name  string
	State TunnelState
	// Since is when the tunnel entered State.
	Since time.Time
	// Code and Message are the relay's last refusal of the tunnel
	// (CodeOK and empty when it never refused it).
	Code    tunnel.Code
	Message string
	// NextRetry is when the agent asks again, while State is
	// TunnelRetrying.
	NextRetry time.Time
	// Served is the host name the relay serves a web tunnel under, once
	// it accepted it.
	Served string
}

// Registrations returns the state of every tunnel at the relay, in the
// configuration's order.
func (a *Agent) Registrations() []Registration { return a.status.list() }

// retryable reports whether a refusal may pass without a change of
// configuration: the agent then registers the tunnel again on the same
// session. A code newer than this agent counts as retryable: the backoff
// keeps that cheap.
func retryable(c tunnel.Code) bool {
	switch c {
	case tunnel.CodePortInUse, tunnel.CodePortReserved, tunnel.CodeQuota, tunnel.CodeInternal, tunnel.CodeOffline, tunnel.CodeHostInUse:
		return true
	}
	return c > tunnel.CodeHostInUse
}

// statusBoard holds the Registration of every tunnel.
type statusBoard struct {
	mu    sync.Mutex
	order []string
	m     map[string]*Registration
}

func newStatusBoard(names []string, now time.Time) *statusBoard {
	b := &statusBoard{order: names, m: make(map[string]*Registration, len(names))}
	for _, n := range names {
		b.m[n] = &Registration{Name: n, State: TunnelDown, Since: now}
	}
	return b
}

func (b *statusBoard) list() []Registration {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Registration, 0, len(b.order))
	for _, n := range b.order {
		out = append(out, *b.m[n])
	}
	return out
}

// result records the relay's answer for a tunnel and reports whether it
// is news: a refusal with another code or message than the last one, or
// the end of a refusal.
func (b *statusBoard) result(r tunnel.TunnelResult, now time.Time) (news bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.m[r.Name]
	if st == nil {
		return false
	}
	state := TunnelUp
	switch {
	case r.Code == tunnel.CodeOK:
	case retryable(r.Code):
		state = TunnelRetrying
	default:
		state = TunnelRefused
	}
	if r.Code == tunnel.CodeOK {
		news = st.State != TunnelUp
		st.Served = r.Message
	} else {
		news = st.Code != r.Code || st.Message != r.Message
		st.Code, st.Message = r.Code, r.Message
	}
	if st.State != state {
		st.State, st.Since = state, now
	}
	st.NextRetry = time.Time{}
	return news
}

// setNames makes the board's tunnels names, in that order: new ones are
// down until the relay answers, removed ones go.
func (b *statusBoard) setNames(names []string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]*Registration, len(names))
	for _, n := range names {
		if st := b.m[n]; st != nil {
			m[n] = st
		} else {
			m[n] = &Registration{Name: n, State: TunnelDown, Since: now}
		}
	}
	b.order, b.m = slices.Clone(names), m
}

// retryAt records when the retrying tunnels are asked for again.
func (b *statusBoard) retryAt(names []string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range names {
		if st := b.m[n]; st != nil && st.State == TunnelRetrying {
			st.NextRetry = at
		}
	}
}

// down marks every tunnel down: the session has ended.
func (b *statusBoard) down(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.m {
		if st.State != TunnelDown {
			st.State, st.Since, st.NextRetry = TunnelDown, now, time.Time{}
		}
	}
}

// logResult logs the relay's answer for a tunnel: always on the first
// registration of a session (first), otherwise only when it is news.
func (a *Agent) logResult(set *settings, r tunnel.TunnelResult, news, first bool) {
	t := set.tunnels[r.Name]
	switch {
	case r.Code == tunnel.CodeOK && (first || news) && t.Web():
		a.log.Info("tunnel ready", "tunnel", r.Name, "protocol", t.Protocol, "host", r.Message, "target", t.Target)
	case r.Code == tunnel.CodeOK && (first || news) && t.Private:
		a.log.Info("tunnel ready", "tunnel", r.Name, "protocol", t.Protocol, "private", true, "visitors", t.Visitors, "target", t.Target)
	case r.Code == tunnel.CodeOK && (first || news):
		relayHost, _, _ := net.SplitHostPort(set.cfg.Relay)
		a.log.Info("tunnel ready", "tunnel", r.Name, "protocol", t.Protocol, "public", net.JoinHostPort(relayHost, fmt.Sprint(t.RemotePort)), "target", t.Target)
	case r.Code == tunnel.CodeOK:
	case first || news:
		attrs := []any{"tunnel", r.Name, "port", t.RemotePort}
		if t.Private {
			attrs = []any{"tunnel", r.Name, "private", true}
		}
		if t.Web() {
			attrs = []any{"tunnel", r.Name, "host", t.Host}
		}
		attrs = append(attrs, "reason", r.Code.String(), "detail", r.Message)
		if retryable(r.Code) {
			attrs = append(attrs, "retrying", true)
		}
		a.log.Error("tunnel refused by relay", attrs...)
	default:
		a.log.Debug("tunnel still refused by relay", "tunnel", r.Name, "reason", r.Code.String())
	}
}

// controlWriter serialises the agent's writes on a control stream.
type controlWriter struct {
	mu   sync.Mutex
	ctrl tunnel.Stream
}

// write sends m within d.
func (w *controlWriter) write(m tunnel.Message, d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.ctrl.SetWriteDeadline(time.Now().Add(d))
	err := tunnel.WriteMessage(w.ctrl, m)
	_ = w.ctrl.SetWriteDeadline(time.Time{})
	return err
}

// asked is a tunnel request made on a session, and the relay's answer.
type asked struct {
	req request
	up  bool // the relay accepted it: it holds the public port, or serves the private tunnel
}

// noPrivate is the refusal of a private tunnel by this agent, for a relay
// that does not serve them (no tunnel.FeaturePrivate).
const noPrivate = "the relay does not serve private tunnels: upgrade it"

// noWeb is the refusal of a web tunnel by this agent, for a relay that
// does not serve them (no tunnel.FeatureWeb).
const noWeb = "the relay does not serve web tunnels (http, https): upgrade the relay"

// errMisanswered: the relay's answer names other tunnels than were asked
// for.
var errMisanswered = errors.New("the relay answered for another tunnel than asked")

// ask asks the relay for the tunnels reqs: the public ones in Registers,
// then the private ones in RegisterPrivates, each message answered by the
// RegisterResult that call returns (of n results). each gets every
// tunnel's answer, with its index in reqs. A private tunnel is not sent
// to a relay without tunnel.FeaturePrivate: its answer is a refusal made
// here (CodeVersion), and the public tunnels go on as ever.
func ask(reqs []request, f tunnel.Features, call func(m tunnel.Message, n int) (*tunnel.RegisterResult, error),
	each func(i int, r tunnel.TunnelResult) error) error {
	var (
		pub           []tunnel.TunnelRequest
		priv          []tunnel.PrivateTunnel
		web           []tunnel.WebTunnel
		pubAt, privAt []int
		webAt         []int
	)
	for i, q := range reqs {
		switch {
		case q.web != nil && f&tunnel.FeatureWeb == 0:
			if err := each(i, tunnel.TunnelResult{Name: q.web.Name, Code: tunnel.CodeVersion, Message: noWeb}); err != nil {
				return err
			}
		case q.web != nil:
			web, webAt = append(web, *q.web), append(webAt, i)
		case q.priv == nil:
			pub, pubAt = append(pub, q.pub), append(pubAt, i)
		case f&tunnel.FeaturePrivate == 0:
			if err := each(i, tunnel.TunnelResult{Name: q.priv.Name, Code: tunnel.CodeVersion, Message: noPrivate}); err != nil {
				return err
			}
		default:
			priv, privAt = append(priv, *q.priv), append(privAt, i)
		}
	}
	// answered passes on the answers to a message asking for names, the
	// tunnels at reqs[at[0]], reqs[at[1]]…
	answered := func(m tunnel.Message, names []string, at []int) error {
		res, err := call(m, len(names))
		if err != nil {
			return err
		}
		for j, tr := range res.Results {
			if tr.Name != names[j] {
				return fmt.Errorf("asked for tunnel %q, answered for %q: %w", names[j], tr.Name, errMisanswered)
			}
			if err := each(at[j], tr); err != nil {
				return err
			}
		}
		return nil
	}
	for _, m := range tunnel.SplitRegister(pub) {
		if len(m.Tunnels) == 0 {
			continue
		}
		names := make([]string, len(m.Tunnels))
		for j, t := range m.Tunnels {
			names[j] = t.Name
		}
		if err := answered(m, names, pubAt[:len(names)]); err != nil {
			return err
		}
		pubAt = pubAt[len(names):]
	}
	for _, m := range tunnel.SplitRegisterPrivate(priv) {
		if len(m.Tunnels) == 0 {
			continue
		}
		names := make([]string, len(m.Tunnels))
		for j, t := range m.Tunnels {
			names[j] = t.Name
		}
		if err := answered(m, names, privAt[:len(names)]); err != nil {
			return err
		}
		privAt = privAt[len(names):]
	}
	for _, m := range tunnel.SplitRegisterWeb(web) {
		if len(m.Tunnels) == 0 {
			continue
		}
		names := make([]string, len(m.Tunnels))
		for j, t := range m.Tunnels {
			names[j] = t.Name
		}
		if err := answered(m, names, webAt[:len(names)]); err != nil {
			return err
		}
		webAt = webAt[len(names):]
	}
	return nil
}

// Errors of the registrar.
var (
	// errSessionEnded: the session ended or is ending.
	errSessionEnded = errors.New("session ended")
	// errNoUnregister: a tunnel must be closed, and the relay does not
	// know Unregister (tunnel.FeatureUnregister).
	errNoUnregister = errors.New("the relay cannot close a tunnel of a live session")
)

// registrar makes the agent's requests on one session's control stream:
// registrations (again, for refused tunnels; and those a reload adds) and
// Unregister (for tunnels a reload removes). The relay answers each with a
// RegisterResult, read by the control stream's one reader and passed on
// results; one request is out at a time (op).
type registrar struct {
	a       *Agent
	l       *link
	ctx     context.Context // ends when the session stops serving
	results <-chan *tunnel.RegisterResult
	gone    <-chan struct{} // closed at the relay's first GoAway
	// op is held for a whole exchange with the relay, and guards l.asked
	// and leaving.
	op      sync.Mutex
	retries sync.WaitGroup
	// leaving: the session gave up its tunnels for a new session (leave);
	// it asks for none any more.
	leaving bool
}

// ended reports whether the session ended or is ending, or gave up its
// tunnels; r.op is held.
func (r *registrar) ended() bool {
	return r.leaving || r.ctx.Err() != nil || isDone(r.l.sess.Done()) || isDone(r.gone)
}

// leave closes every tunnel of the session at the relay, which answers
// when their ports are free, and stops asking for tunnels on it. It fails
// with errNoUnregister, changing nothing, if the relay cannot do that.
func (r *registrar) leave() error {
	r.op.Lock()
	defer r.op.Unlock()
	if r.l.features&tunnel.FeatureUnregister == 0 {
		return errNoUnregister
	}
	if r.ended() {
		return errSessionEnded
	}
	r.leaving = true
	var up []string
	for name, it := range r.l.asked {
		if it.up {
			up = append(up, name)
		}
	}
	clear(r.l.asked)
	slices.Sort(up)
	for _, m := range tunnel.SplitUnregister(up) {
		if len(m.Names) == 0 {
			continue
		}
		if _, err := r.call(m, len(m.Names)); err != nil {
			return err
		}
	}
	return nil
}

// stay undoes leave: the session asks for its tunnels again (sync).
func (r *registrar) stay() {
	r.op.Lock()
	defer r.op.Unlock()
	r.leaving = false
}

// call sends m and waits for the relay's answer, of n results; r.op is
// held. An answer that does not come within handshake_timeout, or of
// another length, ends the session.
func (r *registrar) call(m tunnel.Message, n int) (*tunnel.RegisterResult, error) {
	hs := r.a.conf().cfg.HandshakeTimeout
	if err := r.l.w.write(m, hs); err != nil {
		return nil, err // the session is failing; its reader tells
	}
	wait := time.NewTimer(hs)
	defer wait.Stop()
	select {
	case res := <-r.results:
		if len(res.Results) != n {
			r.a.log.Warn("relay answered a request of a different length; reconnecting", "asked", n, "answered", len(res.Results))
			r.l.sess.Close()
			return nil, errSessionEnded
		}
		return res, nil
	case <-r.ctx.Done():
	case <-r.l.sess.Done():
	case <-r.gone:
	case <-wait.C:
		r.a.log.Warn("relay did not answer a registration; reconnecting", "after", hs)
		r.l.sess.Close()
	}
	return nil, errSessionEnded
}

// register sends reqs and records the answers. It returns the tunnels
// refused for a reason that may pass.
func (r *registrar) register(reqs []request, first bool) (retry []*asked, err error) {
	set := r.a.conf()
	err = ask(reqs, r.l.features, r.call, func(i int, tr tunnel.TunnelResult) error {
		if tr.Code == tunnel.CodeShutdown {
			return errSessionEnded
		}
		it := r.l.asked[tr.Name]
		if it == nil || !sameRequest(it.req, reqs[i]) {
			it = &asked{req: reqs[i]}
			r.l.asked[tr.Name] = it
		}
		it.up = tr.Code == tunnel.CodeOK
		r.a.logResult(set, tr, r.a.status.result(tr, time.Now()), first)
		if retryable(tr.Code) {
			retry = append(retry, it)
		}
		return nil
	})
	return retry, err
}

// retry registers again the tunnels the relay refused for a reason that
// may pass, with backoff (1 s doubling up to reconnect_max, jittered),
// until each is up, refused for good, or no longer asked for (a reload
// removed or changed it). It returns then, or when the session ends.
func (r *registrar) retry(items []*asked) {
	for attempt := 0; ; attempt++ {
		items = r.current(items)
		if len(items) == 0 {
			return
		}
		delay := jitter(time.Second, r.a.conf().cfg.ReconnectMax, attempt)
		names := make([]string, len(items))
		for i, it := range items {
			names[i] = it.req.name()
		}
		r.a.status.retryAt(names, time.Now().Add(delay))
		t := time.NewTimer(delay)
		select {
		case <-r.ctx.Done():
		case <-r.l.sess.Done():
		case <-r.gone:
		case <-t.C:
		}
		t.Stop()
		r.op.Lock()
		items = r.currentLocked(items)
		if r.ended() {
			r.op.Unlock()
			return
		}
		reqs := make([]request, len(items))
		for i, it := range items {
			reqs[i] = it.req
		}
		still, err := r.register(reqs, false)
		r.op.Unlock()
		if err != nil {
			r.a.log.Debug("registering refused tunnels again", "err", err)
			return
		}
		items = still
	}
}

// current keeps the items still asked for on this session.
func (r *registrar) current(items []*asked) []*asked {
	r.op.Lock()
	defer r.op.Unlock()
	return r.currentLocked(items)
}

func (r *registrar) currentLocked(items []*asked) []*asked {
	return slices.DeleteFunc(items, func(it *asked) bool { return r.l.asked[it.req.name()] != it })
}

// sync brings the tunnels asked for on this session in line with the
// configuration in force: the relay is asked to close those removed or
// changed (Unregister) and then to open those added or changed. It
// returns errNoUnregister, and changes nothing, when a tunnel the relay
// holds must be closed and the relay cannot do that on a live session.
func (r *registrar) sync() error {
	r.op.Lock()
	defer r.op.Unlock()
	if r.ended() {
		return errSessionEnded
	}
	set := r.a.conf()
	reqs := set.requests()
	want := make(map[string]request, len(reqs))
	for _, q := range reqs {
		want[q.name()] = q
	}
	var stale, close []string // no longer wanted as asked; held by the relay
	for name, it := range r.l.asked {
		if q, ok := want[name]; !ok || !sameRequest(q, it.req) {
			stale = append(stale, name)
			if it.up {
				close = append(close, name)
			}
		}
	}
	var add []request
	for _, q := range reqs {
		if it := r.l.asked[q.name()]; it == nil || !sameRequest(q, it.req) {
			add = append(add, q)
		}
	}
	if len(close) > 0 && r.l.features&tunnel.FeatureUnregister == 0 {
		return errNoUnregister
	}
	slices.Sort(close)
	for _, m := range tunnel.SplitUnregister(close) {
		if len(m.Names) == 0 {
			continue
		}
		res, err := r.call(m, len(m.Names))
		if err != nil {
			return err
		}
		for i, tr := range res.Results {
			if tr.Name != m.Names[i] || tr.Code == tunnel.CodeShutdown {
				return errSessionEnded
			}
			if _, changed := want[tr.Name]; changed {
				r.a.log.Info("tunnel changed: its public port closes for a moment and opens again", "tunnel", tr.Name)
			} else {
				r.a.log.Info("tunnel removed: its public port is closed; open connections go on", "tunnel", tr.Name)
			}
			if tr.Code != tunnel.CodeOK {
				r.a.log.Debug("relay had no such tunnel", "tunnel", tr.Name, "reason", tr.Code.String(), "detail", tr.Message)
			}
		}
	}
	for _, name := range stale {
		delete(r.l.asked, name)
	}
	retry, err := r.register(add, true)
	if len(retry) > 0 {
		r.retries.Go(func() { r.retry(retry) })
	}
	return err
}
