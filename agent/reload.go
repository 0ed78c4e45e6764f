package agent

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/tunnel"
)

// Configuration reload. The configuration in force is a settings value,
// never changed once made: Reload checks a new configuration as a whole,
// makes a new settings value and swaps it in. A visitor's stream, a
// session and a retry each read the settings once, so a visitor reaches
// the target that was configured when it arrived.
//
// What a reload changes takes effect as follows:
//   - tunnels added, removed, or with a new remote_port, protocol, allow,
//     deny, private or visitors: registered or closed at once on the
//     session up now (see registrar.sync); the connections open on other
//     tunnels go on;
//   - target and proxy_protocol: for visitors from now on;
//   - dial_timeout, access_log, reconnect_max, handshake_timeout: for
//     what comes next; session.*: for the next session;
//   - relay, token, fingerprint, ca_file, server_name, id, transport: a new
//     session is made beside the old one, which keeps its open
//     connections until they end (make-before-break);
//   - ddns: the updater is stopped and a new one started.

// settings is one configuration in force.
type settings struct {
	cfg     config.Agent // with defaults filled in
	tunnels map[string]config.Tunnel
	tls     *tls.Config
	tcp     tunnel.Transport
	quic    tunnel.Transport
	// udpQueues are the UDP tunnels' budgets for the target's datagrams
	// waiting to go to the relay; a tunnel that stays keeps its budget.
	udpQueues map[string]*tunnel.UDPBudget
	// gen counts the reloads: 0 for the configuration the agent started
	// with.
	gen uint64
}

// requests are the tunnel requests of the configuration, in its order.
func (s *settings) requests() []request {
	out := make([]request, 0, len(s.cfg.Tunnels))
	for _, t := range s.cfg.Tunnels {
		out = append(out, tunnelRequest(t))
	}
	return out
}

// request is what the agent asks the relay for one tunnel: a public port
// (in a Register), or a private tunnel (in a RegisterPrivate).
type request struct {
	pub  tunnel.TunnelRequest
	priv *tunnel.PrivateTunnel // set: a private tunnel, and pub is zero
	web  *tunnel.WebTunnel     // set: a web tunnel, and pub is zero
	// webAuth is the web tunnel's user:password, which only its salted
	// hash in web leaves the agent with (kept to compare requests).
	webAuth string
}

func (q request) name() string {
	switch {
	case q.priv != nil:
		return q.priv.Name
	case q.web != nil:
		return q.web.Name
	}
	return q.pub.Name
}

func tunnelRequest(t config.Tunnel) request {
	proto := tunnel.ProtoTCP
	if t.Protocol == "udp" {
		proto = tunnel.ProtoUDP
	}
	if t.Web() {
		proto := tunnel.ProtoHTTP
		if t.Protocol == "https" {
			proto = tunnel.ProtoHTTPS
		}
		return request{web: &tunnel.WebTunnel{Name: t.Name, Protocol: proto, Host: t.Host, Allow: t.Allow, Deny: t.Deny,
			Auth: webAuth(t.Auth)}, webAuth: t.Auth}
	}
	if t.Private {
		return request{priv: &tunnel.PrivateTunnel{Name: t.Name, Protocol: proto, Port: t.RemotePort,
			Allow: t.Allow, Deny: t.Deny, Visitors: t.Visitors}}
	}
	return request{pub: tunnel.TunnelRequest{Name: t.Name, Protocol: proto, RemotePort: t.RemotePort, Allow: t.Allow, Deny: t.Deny}}
}

// sameRequest reports whether two requests ask the relay for the same.
func sameRequest(x, y request) bool {
	if x.web != nil || y.web != nil {
		if x.web == nil || y.web == nil {
			return false
		}
		p, q := x.web, y.web
		return p.Name == q.Name && p.Protocol == q.Protocol && p.Host == q.Host && x.webAuth == y.webAuth &&
			slices.Equal(p.Allow, q.Allow) && slices.Equal(p.Deny, q.Deny)
	}
	if x.priv != nil || y.priv != nil {
		if x.priv == nil || y.priv == nil {
			return false
		}
		p, q := x.priv, y.priv
		return p.Name == q.Name && p.Protocol == q.Protocol && p.Port == q.Port &&
			slices.Equal(p.Allow, q.Allow) && slices.Equal(p.Deny, q.Deny) && slices.Equal(p.Visitors, q.Visitors)
	}
	return x.pub.Name == y.pub.Name && x.pub.Protocol == y.pub.Protocol && x.pub.RemotePort == y.pub.RemotePort &&
		slices.Equal(x.pub.Allow, y.pub.Allow) && slices.Equal(x.pub.Deny, y.pub.Deny)
}

// prepare checks cfg and makes its settings, and its DDNS updater when cfg
// has a ddns section that differs from old's (old nil: the first
// configuration). Its error names every mistake; nothing is changed.
func (a *Agent) prepare(cfg config.Agent, old *settings) (*settings, *ddns.Updater, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("agent: "+format, args...)) }
	if cfg.Token == "" {
		bad("token: empty")
	}
	if len(cfg.Tunnels) == 0 {
		bad("no tunnels")
	}
	set := &settings{cfg: cfg, tunnels: make(map[string]config.Tunnel, len(cfg.Tunnels)), udpQueues: map[string]*tunnel.UDPBudget{}}
	for i, t := range cfg.Tunnels {
		if _, dup := set.tunnels[t.Name]; dup {
			bad("tunnel %q: duplicate name", t.Name)
			continue
		}
		set.tunnels[t.Name] = t
		if err := t.Validate(); err != nil {
			if t.Name == "" {
				bad("tunnel %d: %w", i+1, err)
			} else {
				bad("tunnel %q: %w", t.Name, err)
			}
		}
	}
	if conf, err := relaydial.TLSConfig(cfg.Relay, cfg.Fingerprint, cfg.CAFile, cfg.ServerName); err != nil {
		bad("%w", err)
	} else {
		set.tls = conf
	}
	c := &set.cfg
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.WakeTime <= 0 {
		c.WakeTime = time.Minute
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = 30 * time.Second
	}
	switch c.Transport {
	case "":
		c.Transport = config.TransportAuto
	case config.TransportAuto, config.TransportTCP, config.TransportQUIC:
	default:
		bad("transport %q: want auto, tcp or quic", c.Transport)
	}
	var u *ddns.Updater
	if cfg.DDNS != nil && (old == nil || !reflect.DeepEqual(cfg.DDNS, old.cfg.DDNS)) {
		var err error
		if a.newDDNS == nil {
			err = errors.New("ddns: this agent was built without dynamic DNS")
		} else {
			u, err = a.newDDNS(cfg.DDNS, a.relayAddr)
		}
		if err != nil {
			bad("%w", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	set.tcp, set.quic = a.transports(c)
	for _, t := range cfg.Tunnels {
		if t.Protocol != "udp" {
			continue
		}
		if old != nil {
			if b := old.udpQueues[t.Name]; b != nil {
				set.udpQueues[t.Name] = b
				continue
			}
		}
		b, err := tunnel.NewUDPBudget(tunnel.FlowQueueBudget, tunnel.TunnelQueueBudget,
			a.log.With("tunnel", t.Name), "UDP datagrams to the relay dropped: it takes them slower than they come")
		if err != nil {
			return nil, nil, fmt.Errorf("agent: tunnel %q: %w", t.Name, err)
		}
		set.udpQueues[t.Name] = b
		a.budgetsMu.Lock()
		a.budgets = append(a.budgets, b)
		a.budgetsMu.Unlock()
	}
	if old != nil {
		set.gen = old.gen + 1
	}
	return set, u, nil
}

// Changes is what a reload changed.
type Changes struct {
	// Added, Removed and Changed name tunnels.
	Added   []string `json:"tunnels_added,omitempty"`
	Removed []string `json:"tunnels_removed,omitempty"`
	Changed []string `json:"tunnels_changed,omitempty"`
	// NewSession names the settings whose change makes a new session
	// (beside the old one, whose open connections go on).
	NewSession []string `json:"new_session,omitempty"`
	// NextSession names the settings that apply from the next session.
	NextSession []string `json:"next_session,omitempty"`
	// Other names the other settings that changed and apply from now on.
	Other []string `json:"changed,omitempty"`
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Added)+len(c.Removed)+len(c.Changed)+len(c.NewSession)+len(c.NextSession)+len(c.Other) == 0
}

// Attrs are the changes as log attributes.
func (c Changes) Attrs() []any {
	var out []any
	for _, f := range []struct {
		key  string
		list []string
	}{{"tunnels_added", c.Added}, {"tunnels_removed", c.Removed}, {"tunnels_changed", c.Changed},
		{"new_session", c.NewSession}, {"next_session", c.NextSession}, {"changed", c.Other}} {
		if len(f.list) > 0 {
			out = append(out, f.key, f.list)
		}
	}
	return out
}

// diff lists what differs from old to set.
func diff(old, set *settings) Changes {
	var c Changes
	for _, t := range set.cfg.Tunnels {
		o, ok := old.tunnels[t.Name]
		switch {
		case !ok:
			c.Added = append(c.Added, t.Name)
		case !reflect.DeepEqual(o, t):
			c.Changed = append(c.Changed, t.Name)
		}
	}
	for _, t := range old.cfg.Tunnels {
		if _, ok := set.tunnels[t.Name]; !ok {
			c.Removed = append(c.Removed, t.Name)
		}
	}
	o, n := old.cfg, set.cfg
	for _, f := range []struct {
		key     string
		changed bool
		list    *[]string
	}{
		{"relay", o.Relay != n.Relay, &c.NewSession},
		{"token", o.Token != n.Token, &c.NewSession},
		{"fingerprint", o.Fingerprint != n.Fingerprint, &c.NewSession},
		{"ca_file", o.CAFile != n.CAFile, &c.NewSession},
		{"server_name", o.ServerName != n.ServerName, &c.NewSession},
		{"id", o.ID != n.ID, &c.NewSession},
		{"transport", o.Transport != n.Transport, &c.NewSession},
		{"session", o.Session != n.Session, &c.NextSession},
		{"dial_timeout", o.DialTimeout != n.DialTimeout, &c.Other},
		{"wake_time", o.WakeTime != n.WakeTime, &c.Other},
		{"handshake_timeout", o.HandshakeTimeout != n.HandshakeTimeout, &c.Other},
		{"reconnect_max", o.ReconnectMax != n.ReconnectMax, &c.Other},
		{"access_log", o.AccessLog != n.AccessLog, &c.Other},
		{"ddns", !reflect.DeepEqual(o.DDNS, n.DDNS), &c.Other},
	} {
		if f.changed {
			*f.list = append(*f.list, f.key)
		}
	}
	return c
}

// Reload puts cfg in force in place of the running configuration. cfg is
// checked as a whole first: if anything is wrong, the error names every
// mistake and nothing changes. Otherwise the tunnels are brought in line
// on the session up now (see the top of this file for what applies when),
// and Reload returns what changed. A relay's refusal of a tunnel is not an
// error of the configuration: it is logged, and shown in the status, as at
// the start.
func (a *Agent) Reload(cfg config.Agent) (Changes, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	old := a.conf()
	set, u, err := a.prepare(cfg, old)
	if err != nil {
		return Changes{}, err
	}
	ch := diff(old, set)

	// Status and counters of new tunnels exist before any visitor can
	// reach them.
	names := make([]string, 0, len(set.cfg.Tunnels))
	for _, t := range set.cfg.Tunnels {
		names = append(names, t.Name)
	}
	a.status.setNames(names, time.Now())
	a.statsMu.Lock()
	for _, n := range ch.Added {
		a.stats[n] = &tunnelStats{}
	}
	a.statsMu.Unlock()

	a.set.Store(set)

	a.statsMu.Lock()
	for _, n := range ch.Removed {
		delete(a.stats, n)
	}
	a.statsMu.Unlock()

	if slices.Contains(ch.Other, "ddns") {
		a.ddns.replace(u, a.log)
	}
	a.maps.apply(a, set.cfg.Tunnels)
	if len(ch.NewSession) > 0 {
		a.log.Info("opening a new session with the changed settings; the old one keeps its open connections", "changed", ch.NewSession)
		a.renewSessions(set.gen)
	}
	if r := a.link.registrar(); r != nil {
		if err := r.sync(); errors.Is(err, errNoUnregister) {
			a.log.Info("the relay is older than closing a tunnel on a live session; opening a new session without it",
				"tunnels", append(slices.Clone(ch.Removed), ch.Changed...))
			a.renewSessions(set.gen)
		} else if err != nil {
			a.log.Debug("tunnels not brought in line on this session; the next one registers them", "err", err)
		}
	}
	return ch, nil
}

// renewSessions asks for sessions made with settings older than gen to be
// replaced.
func (a *Agent) renewSessions(gen uint64) { a.link.renew(gen) }

// ddnsRunner runs the dynamic DNS updater while the agent runs, and
// replaces it when a reload changes its configuration.
type ddnsRunner struct {
	mu     sync.Mutex
	u      *ddns.Updater // nil: off
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs the updater, if any, until ctx ends or stop.
func (r *ddnsRunner) start(ctx context.Context, log *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctx = ctx
	r.runLocked(log)
}

func (r *ddnsRunner) runLocked(log *slog.Logger) {
	if r.u == nil || r.ctx == nil {
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan struct{})
	u := r.u
	go func() {
		defer close(done)
		if err := u.Run(ctx); err != nil {
			log.Error("ddns: updater stopped; the tunnels keep running", "err", err)
		}
	}()
	r.cancel, r.done = cancel, done
}

func (r *ddnsRunner) stopLocked() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel, r.done = nil, nil
	}
}

// stop stops the updater and waits for it.
func (r *ddnsRunner) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
	r.ctx = nil
}

// replace stops the running updater and starts u (nil: none) in its place.
func (r *ddnsRunner) replace(u *ddns.Updater, log *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
	r.u = u
	r.runLocked(log)
}

// running reports whether an updater is configured.
func (r *ddnsRunner) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.u != nil
}

// updater returns the updater (nil: none), for the status.
func (r *ddnsRunner) updater() *ddns.Updater {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.u
}

// webAuth returns what the relay needs to check basic authentication
// user:password (none for ""): the user, and the password's
// HMAC-SHA256 under a new random salt. The password stays here.
func webAuth(userPass string) tunnel.WebAuth {
	user, pass, ok := strings.Cut(userPass, ":")
	if !ok || user == "" {
		return tunnel.WebAuth{}
	}
	salt := make([]byte, tunnel.AuthSaltLen)
	_, _ = rand.Read(salt) // never fails (crypto/rand)
	m := hmac.New(sha256.New, salt)
	m.Write([]byte(pass))
	return tunnel.WebAuth{User: user, Salt: salt, Hash: m.Sum(nil)}
}
