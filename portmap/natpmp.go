package portmap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

// natpmpClient speaks NAT-PMP (RFC 6886) to one router, through
// github.com/jackpal/go-nat-pmp. NAT-PMP maps IPv4 only.
type natpmpClient struct {
	gateway netip.Addr
	local   netip.Addr
}

func (*natpmpClient) method() Method { return NATPMP }

// client makes a library client whose retries (250 ms doubling, as the
// RFC says) end by ctx's deadline, or after 4 s.
func (c *natpmpClient) client(ctx context.Context) *natpmp.Client {
	timeout := 4 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), 10*time.Millisecond)
	}
	return natpmp.NewClientWithLocalAndTimeout(net.IP(c.gateway.AsSlice()), net.IP(c.local.AsSlice()), timeout)
}

// natpmpResults are RFC 6886's result codes, which the library puts in
// its error text as a number only.
func (c *natpmpClient) mapPort(ctx context.Context, r Request, prev *Mapping) (Mapping, error) {
	if !c.gateway.Is4() {
		return Mapping{}, fmt.Errorf("nat-pmp: gateway %v is not IPv4: %w", c.gateway, ErrNoRouter)
	}
	cl := c.client(ctx)
	want := r.wantExternal()
	if prev != nil {
		want = prev.External.Port()
	}
	life := int(min(r.Lifetime/time.Second, 1<<31-1))
	res, err := runCtx(ctx, func() (*natpmp.AddPortMappingResult, error) {
		return cl.AddPortMapping(r.Protocol, int(r.InternalPort), int(want), life)
	})
	if err != nil {
		return Mapping{}, natpmpErr(err)
	}
	if res.MappedExternalPort == 0 || res.PortMappingLifetimeInSeconds == 0 {
		return Mapping{}, fmt.Errorf("nat-pmp: answer without an external port or lifetime: %w", ErrRefused)
	}
	ext, err := runCtx(ctx, cl.GetExternalAddress)
	if err != nil {
		return Mapping{}, natpmpErr(err)
	}
	return Mapping{
		Method:   NATPMP,
		Protocol: r.Protocol,
		Internal: netip.AddrPortFrom(c.local, r.InternalPort),
		External: netip.AddrPortFrom(netip.AddrFrom4(ext.ExternalIPAddress), res.MappedExternalPort),
		Lifetime: time.Duration(res.PortMappingLifetimeInSeconds) * time.Second,
		Granted:  time.Now(),
		handle:   c,
		epoch:    res.SecondsSinceStartOfEpoc,
	}, nil
}

func (c *natpmpClient) unmap(ctx context.Context, m Mapping) error {
	cl := c.client(ctx)
	_, err := runCtx(ctx, func() (*natpmp.AddPortMappingResult, error) {
		return cl.AddPortMapping(m.Protocol, int(m.Internal.Port()), 0, 0)
	})
	if err != nil {
		return natpmpErr(err)
	}
	return nil
}

func (*natpmpClient) present(context.Context, Mapping) (bool, bool, error) { return false, false, nil }

// natpmpErr sorts the library's errors: a timeout means no NAT-PMP
// router; anything the router said is a refusal.
func natpmpErr(err error) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("nat-pmp: no answer: %w", ErrNoRouter)
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return fmt.Errorf("nat-pmp: %v: %w", err, ErrNoRouter)
	}
	return fmt.Errorf("nat-pmp: %v: %w", err, ErrRefused)
}

// runCtx runs f, which has no context of its own, and returns when it
// does or when ctx ends (f's own timeout, set from ctx's deadline, ends
// it soon after).
func runCtx[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
