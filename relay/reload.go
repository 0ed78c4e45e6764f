package relay

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/tunnel"
)

// Reload puts cfg (with the tokens of id, from LoadIdentity) in force
// without a restart. A configuration the relay would refuse to start with
// is refused as a whole, and nothing changes. Otherwise:
//
//   - tokens added, and changes of ports, quotas, limits, allow_ports,
//     bind_addr, access_log, udp_*, port_reserve, handshake_timeout and
//     the session settings apply to what comes next; open connections go
//     on (session settings apply to new sessions);
//   - an agent whose token was removed (or whose secret changed) loses its
//     sessions at once, told why; so does a visitor whose visitor key was
//     removed or changed in any way (it may log in again under new rules);
//   - an agent with a tunnel that its token may no longer open loses its
//     session, told why: it logs in again, and the relay refuses that
//     tunnel in words and serves the others;
//   - a changed ddns section restarts the updater;
//   - settings that need a restart (listen, quic, data_dir, tls_cert,
//     tls_key, the log, debug, metrics and dashboard addresses) keep
//     their running values: each is named in restartOnly.
//
// changes describes what changed, for the log.
func (s *Server) Reload(cfg config.Relay, id Identity) (changes, restartOnly []string, err error) {
	old := s.conf()
	lc, err := newLiveConfig(cfg, id)
	if err != nil {
		return nil, nil, err
	}
	var u *ddns.Updater
	ddnsChanged := !reflect.DeepEqual(old.DDNS, lc.DDNS)
	if ddnsChanged && lc.DDNS != nil {
		if u, err = s.buildDDNS(lc.DDNS); err != nil {
			return nil, nil, fmt.Errorf("relay: %w", err)
		}
	}
	// What only a restart changes keeps its running value.
	keep := []struct {
		name     string
		now, new any
		put      func()
	}{
		{"listen", old.Listen, lc.Listen, func() { lc.Listen = old.Listen }},
		{"http_addr", old.HTTPAddr, lc.HTTPAddr, func() { lc.HTTPAddr = old.HTTPAddr }},
		{"https_addr", old.HTTPSAddr, lc.HTTPSAddr, func() { lc.HTTPSAddr = old.HTTPSAddr }},
		{"quic", old.QUIC, lc.QUIC, func() { lc.QUIC = old.QUIC }},
		{"data_dir", old.DataDir, lc.DataDir, func() { lc.DataDir = old.DataDir }},
		{"tls_cert", old.TLSCert, lc.TLSCert, func() { lc.TLSCert = old.TLSCert }},
		{"tls_key", old.TLSKey, lc.TLSKey, func() { lc.TLSKey = old.TLSKey }},
		{"log", old.Log, lc.Log, func() { lc.Log = old.Log }},
		{"debug_addr", old.DebugAddr, lc.DebugAddr, func() { lc.DebugAddr = old.DebugAddr }},
		{"metrics_addr", old.MetricsAddr, lc.MetricsAddr, func() { lc.MetricsAddr = old.MetricsAddr }},
		{"dashboard", old.Dashboard, lc.Dashboard, func() { lc.Dashboard = old.Dashboard }},
		{"agent_port.max_handshakes (QUIC)", old.Guard.MaxHandshakes, lc.Guard.MaxHandshakes, func() {}},
	}
	for _, k := range keep {
		if !reflect.DeepEqual(k.now, k.new) {
			restartOnly = append(restartOnly, k.name)
			k.put()
		}
	}
	changes = describeChanges(old, lc)
	s.live.Store(lc)
	s.hs.setConfig(lc.Guard)
	for _, g := range s.webGuards {
		g.setConfig(lc.Guard)
	}

	// Sessions: revoked tokens, tunnels no longer allowed, new limits.
	s.mu.Lock()
	sessions := make([]*agentSession, 0, len(s.sessions)+len(s.retired))
	for _, as := range s.sessions {
		sessions = append(sessions, as)
	}
	for as := range s.retired {
		sessions = append(sessions, as)
	}
	s.mu.Unlock()
	for _, as := range sessions {
		t, ok := lc.token(as.key.token)
		if !ok || t.Secret != as.token.Secret {
			as.log.Warn("agent's token removed from the configuration; ending its session")
			go as.end(tunnel.CodeAuthFailed, fmt.Sprintf("token %q was removed from the relay's configuration", as.key.token))
			continue
		}
		// Port refusals first, then host names', each sorted: the
		// first is the one the agent is told.
		var refused, hostRefused []string
		as.mu.Lock()
		for _, pt := range as.tunnels {
			pt.setLimits(lc.Guard)
			ts := pt.status()
			if ts.Host != "" {
				if why := lc.hostRefusal(as.key.token, ts.Host); why != "" {
					hostRefused = append(hostRefused, why)
				}
				continue
			}
			if ts.Private {
				continue
			}
			if why := lc.portRefusal(as.key.token, ts.Port); why != "" {
				refused = append(refused, why)
			}
		}
		as.mu.Unlock()
		code := tunnel.CodePortNotAllowed
		if len(refused) == 0 && len(hostRefused) > 0 {
			refused, code = hostRefused, tunnel.CodeHostNotAllowed
		}
		if len(refused) > 0 {
			slices.Sort(refused)
			as.log.Warn("agent's tunnels no longer allowed by the configuration; ending its session", "detail", refused[0])
			go as.end(code, "the relay's configuration changed: "+refused[0])
		}
	}
	// Visitors whose key was removed or changed in any way lose their
	// session at once (and with it their connections); one that logs
	// in again gets the new rules.
	s.mu.Lock()
	visitors := make([]*visitorSession, 0, len(s.visitorSessions))
	for vs := range s.visitorSessions {
		visitors = append(visitors, vs)
	}
	s.mu.Unlock()
	for _, vs := range visitors {
		if k, ok := lc.visitorKey(vs.key.Name); !ok || !reflect.DeepEqual(k, vs.key) {
			vs.end("revoked", "visitor key removed or changed in the relay's configuration")
		}
	}
	if ddnsChanged {
		s.replaceDDNS(u)
	}
	return changes, restartOnly, nil
}

// describeChanges names what a reload changes, for the log; the tokens by
// name, never a secret.
func describeChanges(old, lc *liveConfig) []string {
	var out []string
	for _, t := range lc.Tokens {
		o, ok := old.token(t.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("token %q added", t.Name))
		case o.Secret != t.Secret:
			out = append(out, fmt.Sprintf("token %q: new secret", t.Name))
		case !reflect.DeepEqual(o, t):
			out = append(out, fmt.Sprintf("token %q: ports or quotas changed", t.Name))
		}
	}
	for _, t := range old.Tokens {
		if _, ok := lc.token(t.Name); !ok {
			out = append(out, fmt.Sprintf("token %q removed", t.Name))
		}
	}
	for _, k := range lc.Visitors {
		o, ok := old.visitorKey(k.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("visitor key %q added", k.Name))
		case o.Secret != k.Secret:
			out = append(out, fmt.Sprintf("visitor key %q: new secret", k.Name))
		case !reflect.DeepEqual(o, k):
			out = append(out, fmt.Sprintf("visitor key %q: token or tunnels changed", k.Name))
		}
	}
	for _, k := range old.Visitors {
		if _, ok := lc.visitorKey(k.Name); !ok {
			out = append(out, fmt.Sprintf("visitor key %q removed", k.Name))
		}
	}
	for _, f := range []struct {
		name     string
		was, now any
	}{
		{"allow_ports", old.AllowPorts.String(), lc.AllowPorts.String()},
		{"bind_addr", old.BindAddr, lc.BindAddr},
		{"domain", old.Domain, lc.Domain},
		{"max_agents", old.MaxAgents, lc.MaxAgents},
		{"max_tunnels", old.MaxTunnels, lc.MaxTunnels},
		{"port_reserve", old.PortReserve, lc.PortReserve},
		{"handshake_timeout", old.HandshakeTimeout, lc.HandshakeTimeout},
		{"access_log", old.AccessLog, lc.AccessLog},
		{"udp_flow_timeout", old.UDPFlowTimeout, lc.UDPFlowTimeout},
		{"udp_max_flows", old.UDPMaxFlows, lc.UDPMaxFlows},
		{"agent_port and visitors limits", old.Guard, lc.Guard},
		{"session", old.Session, lc.Session},
		{"ddns", old.DDNS, lc.DDNS},
	} {
		if !reflect.DeepEqual(f.was, f.now) {
			out = append(out, f.name+" changed")
		}
	}
	return out
}
