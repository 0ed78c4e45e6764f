package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/homeport/homeport/internal/wol"
)

// Wake says how the agent wakes a tunnel's target with Wake-on-LAN when
// a visitor comes and the target does not answer.
type Wake struct {
	// MAC is the target's network card's address.
	MAC wol.MAC
	// Broadcast is where the UDP magic packet goes; the zero Addr: the
	// directed broadcast of the interface whose subnet holds the target,
	// else 255.255.255.255.
	Broadcast netip.Addr
	// Interface names the network interface to send on ("": the one
	// whose subnet holds the target).
	Interface string
	// Port is the UDP port (default 9).
	Port uint16
}

// String says where the magic packet goes, for logs.
func (w Wake) String() string {
	s := w.MAC.String()
	if w.Broadcast.IsValid() {
		s += " via " + w.Broadcast.String()
	}
	if w.Interface != "" {
		s += " on " + w.Interface
	}
	return s
}

const wakeWant = "want a MAC address (wake: 00:11:22:33:44:55) or a section with mac and optionally broadcast, interface, port"

// parseWake reads a tunnel section's wake: a MAC address, or a section
// with mac, broadcast, interface and port.
func parseWake(v any) (*Wake, error) {
	if s, ok := v.(string); ok {
		m, err := wol.ParseMAC(s)
		if err != nil {
			return nil, err
		}
		return &Wake{MAC: m, Port: wol.DefaultPort}, nil
	}
	m, err := section(v, "mac", "broadcast", "interface", "port")
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, wakeWant)
	}
	mac, ok := m["mac"]
	if !ok {
		return nil, fmt.Errorf("mac missing; %s", wakeWant)
	}
	w := &Wake{Port: wol.DefaultPort}
	if w.MAC, err = wol.ParseMAC(fmt.Sprint(mac)); err != nil {
		return nil, fmt.Errorf("mac: %w", err)
	}
	if b, ok := m["broadcast"]; ok {
		a, err := netip.ParseAddr(strings.TrimSpace(fmt.Sprint(b)))
		if err != nil || !a.Unmap().Is4() {
			return nil, fmt.Errorf("broadcast %q: want an IPv4 address, e.g. 192.168.1.255", fmt.Sprint(b))
		}
		w.Broadcast = a.Unmap()
	}
	if i, ok := m["interface"]; ok {
		w.Interface = strings.TrimSpace(fmt.Sprint(i))
		if w.Interface == "" || len(w.Interface) > 64 || strings.ContainsAny(w.Interface, " /\t") {
			return nil, fmt.Errorf("interface %q: want a network interface's name, e.g. eth0", fmt.Sprint(i))
		}
	}
	if p, ok := m["port"]; ok {
		if w.Port, err = parsePort(numText(p)); err != nil {
			return nil, fmt.Errorf("port: %w", err)
		}
	}
	return w, nil
}

// applyWakeFlags reads the wake setting (--wake, HOMEPORT_WAKE): MAC
// for the only TCP tunnel, or NAME=MAC, repeatable; it overrides a
// tunnel section's wake.
func (l *loader) applyWakeFlags(ts []Tunnel) {
	for _, item := range l.list("wake") {
		spec := strings.TrimSpace(fmt.Sprint(item))
		name, mac, named := strings.Cut(spec, "=")
		if !named {
			mac = spec
		}
		m, err := wol.ParseMAC(mac)
		if err != nil {
			l.fail("wake", fmt.Errorf("%q: %w", spec, err))
			continue
		}
		i := -1
		var tcp []string
		for j, t := range ts {
			if t.Protocol == "tcp" {
				tcp = append(tcp, t.Name)
			}
			if named && t.Name == strings.TrimSpace(name) {
				i = j
			}
		}
		switch {
		case named && i < 0:
			l.fail("wake", fmt.Errorf("%q: no tunnel is named %q (tunnels: %s)", spec, strings.TrimSpace(name), strings.Join(tunnelNames(ts), ", ")))
			continue
		case named && ts[i].Protocol != "tcp":
			l.fail("wake", fmt.Errorf("%q: tunnel %q is UDP; waking is for TCP tunnels", spec, ts[i].Name))
			continue
		case !named && len(tcp) != 1:
			l.fail("wake", fmt.Errorf("%q: %d TCP tunnels; say which to wake with NAME=MAC, e.g. %s=%s", spec, len(tcp), firstOr(tcp, "rdp"), m))
			continue
		case !named:
			for j, t := range ts {
				if t.Name == tcp[0] {
					i = j
				}
			}
		}
		w := &Wake{MAC: m, Port: wol.DefaultPort}
		if old := ts[i].Wake; old != nil {
			w.Broadcast, w.Interface, w.Port = old.Broadcast, old.Interface, old.Port
		}
		ts[i].Wake = w
	}
}

func tunnelNames(ts []Tunnel) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}
