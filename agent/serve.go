package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

const (
	// openTimeout bounds reading a visitor stream's Open frame.
	openTimeout = 10 * time.Second
	// shutdownDrain bounds how long visitor connections may finish after
	// the agent was told to stop.
	shutdownDrain = 10 * time.Second
)

// serve handles the relay's streams until the session ends or ctx ends.
// It always returns a *failure of stageUp, or nil when ctx ended.
func (a *Agent) serve(ctx context.Context, sess tunnel.Session, ctrl tunnel.Stream) error {
	var (
		wg       sync.WaitGroup
		goaway   = make(chan *tunnel.GoAway, 1)
		spliceCx context.Context
		cancel   context.CancelFunc
	)
	spliceCx, cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()

	// The control stream carries the relay's later words: GoAway, and
	// answers to registrations.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			m, err := tunnel.ReadMessage(ctrl, tunnel.MaxFrameSize)
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *tunnel.GoAway:
				select {
				case goaway <- m:
				default:
				}
			case *tunnel.RegisterResult:
			default:
				a.log.Warn("relay sent an unexpected control message", "type", fmt.Sprintf("%T", m))
			}
		}
	}()

	acceptErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := sess.AcceptStream(ctx)
			if err != nil {
				acceptErr <- err
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.handleStream(spliceCx, st)
			}()
		}
	}()

	var result error
	select {
	case <-ctx.Done():
		// Graceful: no new streams (AcceptStream returns on ctx), let
		// the open ones finish for a bounded time, then close.
		drained := make(chan struct{})
		go func() {
			<-acceptErr
			wg.Wait()
			close(drained)
		}()
		// ctrl and the session stay open while draining.
		t := time.NewTimer(shutdownDrain)
		select {
		case <-drained:
		case <-t.C:
			a.log.Warn("shutdown: drain time over, closing remaining connections")
		case <-sess.Done():
		}
		t.Stop()
		cancel()
		sess.Close()
		<-drained
		return nil
	case <-sess.Done():
		result = &failure{stage: stageUp, err: errors.New("session closed")}
	case err := <-acceptErr:
		acceptErr <- err // for nobody; keeps the channel's value
		result = &failure{stage: stageUp, err: err}
	}
	// Give a GoAway that raced with the session's end a moment to land.
	var ga *tunnel.GoAway
	select {
	case ga = <-goaway:
	case <-time.After(50 * time.Millisecond):
	}
	sess.Close()
	cancel()
	wg.Wait()
	if ga != nil {
		f := &failure{stage: stageUp, err: fmt.Errorf("relay: %s: %s", ga.Code, ga.Message)}
		// Another agent with our id took over: coming straight back
		// would take the ports away from it again, and so on forever.
		f.definitive = ga.Code == tunnel.CodeReplaced
		if f.definitive {
			f.err = fmt.Errorf("%w; is another agent running with id %q? give each agent its own --id", f.err, a.cfg.ID)
		}
		return f
	}
	return result
}

// handleStream connects one visitor stream to its tunnel's target.
func (a *Agent) handleStream(ctx context.Context, st tunnel.Stream) {
	start := time.Now()
	_ = st.SetReadDeadline(start.Add(openTimeout))
	var open tunnel.Open
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &open); err != nil {
		st.Close()
		a.log.Warn("bad stream from relay", "err", err)
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	log := a.log.With("tunnel", open.Tunnel, "visitor", open.Visitor)
	t, ok := a.tunnels[open.Tunnel]
	if !ok {
		_ = tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeUnknownTunnel, Message: fmt.Sprintf("agent has no tunnel %q", open.Tunnel)})
		st.Close()
		log.Warn("relay asked for an unknown tunnel")
		return
	}
	d := net.Dialer{Timeout: a.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", t.Target)
	if err != nil {
		msg := fmt.Sprintf("tunnel %q: dial %s: %v", t.Name, t.Target, err)
		_ = tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeDialFailed, Message: msg})
		st.Close()
		log.Warn("target unreachable", "target", t.Target, "err", err)
		return
	}
	if err := tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeOK}); err != nil {
		c.Close()
		st.Close()
		log.Debug("stream closed before the target answered", "err", err)
		return
	}
	in, out, err := tunnel.Splice(ctx, st, c.(*net.TCPConn))
	level := slog.LevelDebug
	if a.cfg.AccessLog {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "visitor connection", "target", t.Target,
		"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond), "err", err)
}
