package tunnel

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// Authentication (docs/wire.md): after the TLS handshake, before any
// multiplexer state exists,
//
//	relay -> agent  challenge{version, nonce[32]}
//	agent -> relay  hello{version, agent id, software, mac[32]}
//	relay -> agent  welcome{observed address} | reject{code, message}
//
// mac = HMAC-SHA256(token, label || nonce || ekm || len(id) || id), where
// ekm is 32 bytes of keying material exported from this TLS session. The
// token never crosses the wire, and a captured hello is worthless in any
// other TLS session or for any other nonce.

const (
	authLabel = "homeport auth v1"
	ekmLabel  = "EXPORTER-homeport-auth-v1"
)

// ErrAuthFailed means the agent's proof matched no token.
var ErrAuthFailed = errors.New("authentication failed")

// RejectError is a relay's refusal of a login (an agent's or a
// visitor's), as seen by the one logging in.
type RejectError struct {
	Code    Code
	Message string
}

func (e *RejectError) Error() string {
	if e.Message == "" {
		return "relay refused the login: " + e.Code.String()
	}
	return "relay refused the login: " + e.Code.String() + ": " + e.Message
}

// Is makes errors.Is(err, ErrAuthFailed) true for an authentication reject.
func (e *RejectError) Is(target error) bool {
	return target == ErrAuthFailed && e.Code == CodeAuthFailed
}

// Agent is what the relay learns about an authenticated agent.
type Agent struct {
	ID       string
	Software string
	// Token is the index of the matching secret in the list given to
	// AuthenticateAgent, or for a visitor (FlagVisitor) in
	// AuthHooks.VisitorKeys.
	Token int
	Flags HelloFlags
}

// Visitor reports whether a is a visitor, logged in with a visitor key.
func (a Agent) Visitor() bool { return a.Flags&FlagVisitor != 0 }

func exportKey(c Conn) ([]byte, error) {
	cs := c.ConnectionState()
	if !cs.HandshakeComplete {
		return nil, errors.New("TLS handshake not complete")
	}
	if cs.NegotiatedProtocol != ALPN {
		return nil, fmt.Errorf("peer does not speak %s (TLS application protocol %q): %w", ALPN, cs.NegotiatedProtocol, ErrVersion)
	}
	return cs.ExportKeyingMaterial(ekmLabel, nil, 32)
}

func computeMAC(secret, nonce, ekm []byte, agentID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(authLabel))
	m.Write(nonce)
	m.Write(ekm)
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(agentID)))
	m.Write(l[:])
	m.Write([]byte(agentID))
	return m.Sum(nil)
}

// AuthHooks are the relay's say in a login, beyond the token.
type AuthHooks struct {
	// Verdict, when set, is called once the agent's proof has been
	// checked (ok: it matched a token) and before the answer goes out: it
	// may hold the answer back, and for a wrong token it returns the
	// message of the Reject ("" for "wrong token").
	// visitor says the login is a visitor's (FlagVisitor).
	Verdict func(ok, visitor bool) (rejectMsg string)
	// Admit, when set, is asked about an agent whose token matched,
	// before it is welcomed: a refusal (a code other than CodeOK) is sent
	// to the agent as a Reject and returned as a *RejectError.
	Admit func(Agent) (Code, string)
	// VisitorKeys are the keys a hello with FlagVisitor is checked
	// against, instead of the agents' tokens (none: visitors are refused
	// as a wrong key).
	VisitorKeys [][]byte
}

// AuthenticateAgent runs the relay's side of authentication on a link whose
// TLS handshake is complete. secrets are the accepted tokens; observed is
// the agent's address as the relay sees it, told to the agent on success.
// The caller bounds the exchange with the link's deadline. On a wrong
// token it tells the agent and returns an error wrapping ErrAuthFailed.
// hooks (zero: none) let the relay weigh in; see AuthHooks.
func AuthenticateAgent(c Conn, secrets [][]byte, observed string, hooks AuthHooks) (Agent, error) {
	ekm, err := exportKey(c)
	if err != nil {
		return Agent{}, err
	}
	ch := challenge{Version: ProtocolVersion}
	if _, err := rand.Read(ch.Nonce[:]); err != nil {
		return Agent{}, fmt.Errorf("nonce: %w", err)
	}
	if err := WriteMessage(c, &ch); err != nil {
		return Agent{}, fmt.Errorf("send challenge: %w", err)
	}
	var h hello
	if err := ReadInto(c, MaxAuthFrameSize, &h); err != nil {
		return Agent{}, fmt.Errorf("read hello: %w", err)
	}
	if h.Version != ProtocolVersion {
		msg := fmt.Sprintf("relay speaks protocol version %d, agent %d", ProtocolVersion, h.Version)
		_ = WriteMessage(c, &Reject{Code: CodeVersion, Message: msg})
		return Agent{}, fmt.Errorf("agent %q: %s: %w", h.AgentID, msg, ErrVersion)
	}
	match := -1
	if h.Flags&FlagVisitor != 0 {
		secrets = hooks.VisitorKeys
	}
	for i, s := range secrets {
		want := computeMAC(s, ch.Nonce[:], ekm, h.AgentID)
		if subtle.ConstantTimeCompare(want, h.MAC[:]) == 1 && match < 0 {
			match = i
		}
	}
	msg := ""
	if hooks.Verdict != nil {
		msg = hooks.Verdict(match >= 0, h.Flags&FlagVisitor != 0)
	}
	if match < 0 {
		if msg == "" {
			msg = "wrong token"
			if h.Flags&FlagVisitor != 0 {
				msg = "wrong visitor key"
			}
		}
		_ = WriteMessage(c, &Reject{Code: CodeAuthFailed, Message: msg})
		return Agent{}, fmt.Errorf("agent %q: %w: %s", h.AgentID, ErrAuthFailed, msg)
	}
	a := Agent{ID: h.AgentID, Software: h.Software, Token: match, Flags: h.Flags}
	if hooks.Admit != nil {
		if code, msg := hooks.Admit(a); code != CodeOK {
			_ = WriteMessage(c, &Reject{Code: code, Message: msg})
			return Agent{}, fmt.Errorf("agent %q: %w", h.AgentID, &RejectError{Code: code, Message: msg})
		}
	}
	w := Welcome{ObservedAddr: observed}
	if h.Flags&FlagFeatures != 0 {
		w.Features = RelayFeatures
	}
	if err := WriteMessage(c, &w); err != nil {
		return Agent{}, fmt.Errorf("send welcome: %w", err)
	}
	return a, nil
}

// Authenticate runs the agent's side of authentication on a link whose TLS
// handshake (and so the relay's verification) is complete. A refusal by the
// relay is a *RejectError.
func Authenticate(c Conn, secret []byte, agentID, software string, flags HelloFlags) (Welcome, error) {
	if len(secret) == 0 {
		return Welcome{}, errors.New("empty token")
	}
	if len(agentID) > MaxIDLen || len(software) > MaxIDLen {
		return Welcome{}, fmt.Errorf("agent id or software version longer than %d bytes", MaxIDLen)
	}
	ekm, err := exportKey(c)
	if err != nil {
		return Welcome{}, err
	}
	var ch challenge
	if err := ReadInto(c, MaxAuthFrameSize, &ch); err != nil {
		return Welcome{}, fmt.Errorf("read challenge: %w", err)
	}
	if ch.Version != ProtocolVersion {
		return Welcome{}, fmt.Errorf("relay speaks protocol version %d, agent %d: %w", ch.Version, ProtocolVersion, ErrVersion)
	}
	h := hello{Version: ProtocolVersion, AgentID: agentID, Software: software, Flags: flags}
	copy(h.MAC[:], computeMAC(secret, ch.Nonce[:], ekm, agentID))
	if err := WriteMessage(c, &h); err != nil {
		return Welcome{}, fmt.Errorf("send hello: %w", err)
	}
	m, err := ReadMessage(c, MaxAuthFrameSize)
	if err != nil {
		return Welcome{}, fmt.Errorf("read welcome: %w", err)
	}
	switch m := m.(type) {
	case *Welcome:
		return *m, nil
	case *Reject:
		return Welcome{}, &RejectError{Code: m.Code, Message: m.Message}
	}
	return Welcome{}, fmt.Errorf("read welcome: %w", ErrUnexpected)
}
