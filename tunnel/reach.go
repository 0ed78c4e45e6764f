package tunnel

// Checking a port mapping from outside (docs/wire.md, "Checking a port
// mapping"). An agent that holds a port mapping on its home router asks
// the relay, which sees it from the internet, whether the mapped address
// answers:
//
//	agent -> relay  CheckReach{protocol, addr}
//	relay -> agent  ReachResult{addr, code, message}
//
// on the control stream, only with a relay that announced FeatureReach.
// The relay dials only the address its own session with the agent comes
// from, so an agent cannot make it connect anywhere else.

// FeatureReach: the relay answers CheckReach on the control stream.
const FeatureReach Features = 1 << 3

// CheckReach asks the relay whether addr ("ip:port", the mapping's
// outside address) takes connections from the internet.
type CheckReach struct {
	Protocol Protocol
	Addr     string
}

// ReachResult answers a CheckReach: CodeOK when the relay's connection
// to Addr succeeded; CodeDialFailed when it did not; CodeNotAllowed when
// Addr is not the address the relay sees the agent at (another NAT
// stands between the router and the internet); CodeBadRequest for a
// malformed address or a protocol the relay cannot check; CodeQuota
// when the agent asks too often.
type ReachResult struct {
	Addr    string
	Code    Code
	Message string
}

func (*CheckReach) msgType() byte  { return msgCheckReach }
func (*ReachResult) msgType() byte { return msgReachResult }

func (m *CheckReach) encode(e *enc) { e.u8(byte(m.Protocol)); e.str(m.Addr) }
func (m *CheckReach) decode(d *dec) {
	m.Protocol = Protocol(d.u8())
	m.Addr = d.str(MaxAddrLen)
}

func (m *ReachResult) encode(e *enc) {
	e.str(m.Addr)
	e.u8(byte(m.Code))
	e.str(clip(m.Message, MaxMessageLen))
}
func (m *ReachResult) decode(d *dec) {
	m.Addr = d.str(MaxAddrLen)
	m.Code = Code(d.u8())
	m.Message = d.str(MaxMessageLen)
}
