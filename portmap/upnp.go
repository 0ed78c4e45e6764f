package portmap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// igd is what a WANIPConnection (version 1 or 2) or WANPPPConnection
// service offers that a mapping needs; the generated clients of
// github.com/huin/goupnp all have these methods.
type igd interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	GetSpecificPortMappingEntryCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) (intPort uint16, intClient string, enabled bool, desc string, lease uint32, err error)
}

// igd2 adds version 2's AddAnyPortMapping, where the router picks a free
// port if the one asked for is taken.
type igd2 interface {
	AddAnyPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) (uint16, error)
}

// UPnP error codes (IGD WANIPConnection v2, §2.4.16).
const (
	upnpConflict          = 718 // ConflictInMappingEntry
	upnpOnlyPermanent     = 725 // OnlyPermanentLeasesSupported
	upnpNoSuchEntry       = 714 // NoSuchEntryInArray
	upnpMaxLease          = 604800
	upnpConflictRetries   = 3
	upnpDiscoveryDeadline = 5 * time.Second
)

// upnpClient speaks UPnP-IGD to the router, found by an SSDP search.
type upnpClient struct {
	gateway netip.Addr // only services at this address are used (zero: any)
	local   netip.Addr

	mu      sync.Mutex
	svc     igd
	version int // 1 or 2
}

func (*upnpClient) method() Method { return UPnP }

// service finds the router's WAN connection service, preferring IGD
// version 2, and keeps it.
func (c *upnpClient) service(ctx context.Context) (igd, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.svc != nil {
		return c.svc, c.version, nil
	}
	ctx, cancel := context.WithTimeout(ctx, upnpDiscoveryDeadline)
	defer cancel()
	type found struct {
		svc     igd
		version int
		host    string
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []found
	)
	search := func(version int, f func(context.Context) ([]found, error)) {
		wg.Go(func() {
			fs, _ := f(ctx)
			mu.Lock()
			all = append(all, fs...)
			mu.Unlock()
		})
	}
	search(2, func(ctx context.Context) ([]found, error) {
		cs, _, err := internetgateway2.NewWANIPConnection2ClientsCtx(ctx)
		var out []found
		for _, c := range cs {
			out = append(out, found{c, 2, c.Location.Hostname()})
		}
		return out, err
	})
	search(1, func(ctx context.Context) ([]found, error) {
		cs, _, err := internetgateway2.NewWANIPConnection1ClientsCtx(ctx)
		var out []found
		for _, c := range cs {
			out = append(out, found{c, 1, c.Location.Hostname()})
		}
		return out, err
	})
	search(1, func(ctx context.Context) ([]found, error) {
		cs, _, err := internetgateway2.NewWANPPPConnection1ClientsCtx(ctx)
		var out []found
		for _, c := range cs {
			out = append(out, found{c, 1, c.Location.Hostname()})
		}
		return out, err
	})
	wg.Wait()
	var best *found
	for i := range all {
		f := &all[i]
		if c.gateway.IsValid() && f.host != c.gateway.String() {
			continue
		}
		if best == nil || f.version > best.version {
			best = f
		}
	}
	if best == nil {
		return nil, 0, fmt.Errorf("upnp: no internet gateway device answered the search: %w", ErrNoRouter)
	}
	c.svc, c.version = best.svc, best.version
	return c.svc, c.version, nil
}

// forget drops the service found, after an error that was not the
// router's answer (a restarted router may serve on another port): the
// next call searches again.
func (c *upnpClient) forget(err error) {
	var fe *soap.SOAPFaultError
	if err != nil && !errors.As(err, &fe) {
		c.mu.Lock()
		c.svc = nil
		c.mu.Unlock()
	}
}

func upnpProto(p string) string { return strings.ToUpper(p) }

func upnpCode(err error) int {
	var fe *soap.SOAPFaultError
	if errors.As(err, &fe) {
		return fe.Detail.UPnPError.Errorcode
	}
	return 0
}

func (c *upnpClient) mapPort(ctx context.Context, r Request, prev *Mapping) (Mapping, error) {
	svc, version, err := c.service(ctx)
	if err != nil {
		return Mapping{}, err
	}
	lease := uint32(min(r.Lifetime/time.Second, upnpMaxLease))
	want := r.wantExternal()
	if prev != nil {
		want = prev.External.Port()
	}
	proto, client := upnpProto(r.Protocol), c.local.String()
	var ext uint16
	add := func(port uint16, lease uint32) error {
		if v2, ok := svc.(igd2); ok && prev == nil {
			got, err := v2.AddAnyPortMappingCtx(ctx, "", port, proto, r.InternalPort, client, true, r.Description, lease)
			ext = got
			return err
		}
		ext = port
		return svc.AddPortMappingCtx(ctx, "", port, proto, r.InternalPort, client, true, r.Description, lease)
	}
	err = add(want, lease)
	if upnpCode(err) == upnpOnlyPermanent {
		// Old IGD 1 routers: a mapping without a lease, which Close must
		// remove.
		lease = 0
		err = add(want, lease)
	}
	for i := 0; i < upnpConflictRetries && upnpCode(err) == upnpConflict && prev == nil; i++ {
		// IGD 1 has no AddAnyPortMapping: try another port ourselves.
		err = add(uint16(20000+rand.IntN(40000)), lease)
	}
	if err != nil {
		c.forget(err)
		return Mapping{}, upnpErr("adding the mapping", err)
	}
	if ext == 0 {
		return Mapping{}, fmt.Errorf("upnp: the router granted port 0: %w", ErrRefused)
	}
	ipText, err := svc.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return Mapping{}, upnpErr("reading the external address", err)
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(ipText))
	if err != nil {
		return Mapping{}, fmt.Errorf("upnp: the router's external address %q: %w", ipText, ErrRefused)
	}
	return Mapping{
		Method:   UPnP,
		Protocol: r.Protocol,
		Internal: netip.AddrPortFrom(c.local, r.InternalPort),
		External: netip.AddrPortFrom(ip.Unmap(), ext),
		Lifetime: time.Duration(lease) * time.Second,
		Granted:  time.Now(),
		handle:   c,
		epoch:    uint32(version),
	}, nil
}

func (c *upnpClient) unmap(ctx context.Context, m Mapping) error {
	svc, _, err := c.service(ctx)
	if err != nil {
		return err
	}
	if err := svc.DeletePortMappingCtx(ctx, "", m.External.Port(), upnpProto(m.Protocol)); err != nil && upnpCode(err) != upnpNoSuchEntry {
		c.forget(err)
		return upnpErr("removing the mapping", err)
	}
	return nil
}

// present asks the router whether it still holds m, and for this host.
func (c *upnpClient) present(ctx context.Context, m Mapping) (bool, bool, error) {
	svc, _, err := c.service(ctx)
	if err != nil {
		return false, true, err
	}
	port, client, enabled, _, _, err := svc.GetSpecificPortMappingEntryCtx(ctx, "", m.External.Port(), upnpProto(m.Protocol))
	if upnpCode(err) == upnpNoSuchEntry {
		return false, true, nil
	}
	if err != nil {
		c.forget(err)
		return false, true, upnpErr("reading the mapping", err)
	}
	return enabled && port == m.Internal.Port() && client == m.Internal.Addr().String(), true, nil
}

func upnpErr(what string, err error) error {
	var fe *soap.SOAPFaultError
	if errors.As(err, &fe) {
		return fmt.Errorf("upnp: %s: the router answered error %d (%s): %w", what, fe.Detail.UPnPError.Errorcode,
			strings.TrimSpace(fe.Detail.UPnPError.ErrorDescription), ErrRefused)
	}
	return fmt.Errorf("upnp: %s: %v: %w", what, err, ErrNoRouter)
}
