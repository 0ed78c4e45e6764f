package relay

import (
	"errors"
	"fmt"
	"time"

	"github.com/homeport/homeport/config"
)

// liveConfig is the relay's configuration in force: the settings with
// their defaults filled in, and the accepted tokens (Tokens, from the
// identity) with their secrets. A reload swaps it whole (see Reload);
// readers take one snapshot and use it for one decision.
type liveConfig struct {
	config.Relay
	secrets [][]byte
	// visitorKeys are the secrets of Visitors, in order.
	visitorKeys [][]byte
}

// conf returns the configuration in force.
func (s *Server) conf() *liveConfig { return s.live.Load() }

// newLiveConfig checks cfg and the tokens and visitor keys of id, and
// fills in the defaults.
func newLiveConfig(cfg config.Relay, id Identity) (*liveConfig, error) {
	tokens := id.Tokens
	if len(tokens) == 0 {
		return nil, errors.New("relay: no token: refusing to start without one")
	}
	lc := &liveConfig{Relay: cfg}
	lc.Tokens = tokens
	var errs []error
	names := map[string]bool{}
	for i, t := range tokens {
		switch {
		case t.Secret == "":
			errs = append(errs, fmt.Errorf("relay: tokens[%d] (%s): empty token: refusing to start", i, t.Name))
		case names[t.Name]:
			errs = append(errs, fmt.Errorf("relay: two tokens are named %q", t.Name))
		}
		names[t.Name] = true
		for _, o := range tokens[:i] {
			if both := t.Ports.Intersect(o.Ports); len(both) > 0 {
				errs = append(errs, fmt.Errorf("relay: tokens %q and %q both list ports %s: a port belongs to one token only", o.Name, t.Name, both))
			}
		}
		lc.secrets = append(lc.secrets, []byte(t.Secret))
	}
	lc.Visitors = id.Visitors
	keys := map[string]bool{}
	for i, k := range id.Visitors {
		switch {
		case k.Secret == "":
			errs = append(errs, fmt.Errorf("relay: visitors[%d] (%s): empty key: refusing to start", i, k.Name))
		case keys[k.Name]:
			errs = append(errs, fmt.Errorf("relay: two visitor keys are named %q", k.Name))
		case !names[k.Token]:
			errs = append(errs, fmt.Errorf("relay: visitor key %q: its token %q is not configured", k.Name, k.Token))
		}
		keys[k.Name] = true
		lc.visitorKeys = append(lc.visitorKeys, []byte(k.Secret))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if lc.MaxAgents <= 0 {
		lc.MaxAgents = DefaultMaxAgents
	}
	if lc.MaxTunnels <= 0 {
		lc.MaxTunnels = DefaultMaxTunnels
	}
	if lc.HandshakeTimeout <= 0 {
		lc.HandshakeTimeout = 10 * time.Second
	}
	if lc.UDPFlowTimeout <= 0 {
		lc.UDPFlowTimeout = time.Minute
	}
	if lc.UDPMaxFlows <= 0 {
		lc.UDPMaxFlows = 1024
	}
	lc.Guard = withGuardDefaults(lc.Guard)
	return lc, nil
}

// token returns the token named name in force, and whether there is one.
func (lc *liveConfig) token(name string) (config.Token, bool) {
	for _, t := range lc.Tokens {
		if t.Name == name {
			return t, true
		}
	}
	return config.Token{}, false
}
