// Package control is the local channel to a running relay or agent: a small
// HTTP API that only the service's own user (or root) can reach. On Unix it
// listens on a socket of mode 0600 in the data directory, and checks the
// peer's user id on each connection where the system reports it; on Windows
// it is a named pipe that only Administrators and SYSTEM may open.
//
// The commands `relay status`, `agent status` and `relay reload` are its
// clients. Nothing on it is reachable from the network.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ErrNotRunning means nothing answers on the control endpoint: the relay or
// agent is not running (or runs with another data directory).
var ErrNotRunning = errors.New("not running")

// ErrInUse means another running process answers on the endpoint.
var ErrInUse = errors.New("in use")

// ErrDenied means the endpoint exists but this user may not open it.
var ErrDenied = errors.New("permission denied")

// Serve answers requests with h on ln until ctx ends; it closes ln then and
// returns nil. Each request gets a generous but finite time: the channel is
// local, so a slow client is a stuck one.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// WriteJSON writes v as an indented JSON answer with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Problem is the body of an answer that is not a success.
type Problem struct {
	Error string `json:"error"`
}

// Client asks a running process over its control endpoint.
type Client struct {
	endpoint string
	role     string // "relay" or "agent", for messages
	hc       *http.Client
}

// NewClient returns a client of the endpoint (see Endpoint) of a process
// whose role ("relay" or "agent") names it in errors.
func NewClient(endpoint, role string) *Client {
	c := &Client{endpoint: endpoint, role: role}
	c.hc = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dial(ctx, endpoint)
			},
			DisableKeepAlives: true,
		},
	}
	return c
}

// Get fetches route and decodes its JSON answer into v.
func (c *Client) Get(ctx context.Context, route string, v any) error {
	return c.do(ctx, http.MethodGet, route, nil, v)
}

// Post sends in (nil: no body) as JSON to route and decodes the answer
// into out (nil: discarded).
func (c *Client) Post(ctx context.Context, route string, in, out any) error {
	return c.do(ctx, http.MethodPost, route, in, out)
}

func (c *Client) do(ctx context.Context, method, route string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	// The host is a placeholder: the transport dials the endpoint.
	req, err := http.NewRequestWithContext(ctx, method, "http://control"+route, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s control %s: read answer: %w", c.role, c.endpoint, err)
	}
	if resp.StatusCode/100 != 2 {
		var p Problem
		if json.Unmarshal(b, &p) == nil && p.Error != "" {
			return errors.New(p.Error)
		}
		return fmt.Errorf("%s control %s: %s", c.role, route, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s control %s: answer: %w", c.role, route, err)
	}
	return nil
}

// explain turns a failure to reach the endpoint into one line that says
// what it means.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, ErrNotRunning):
		return fmt.Errorf("the %s is %w (nothing listens on %s; is it started, with this data directory?)", c.role, ErrNotRunning, c.endpoint)
	case errors.Is(err, ErrDenied):
		return fmt.Errorf("%s control %s: %w: run this as the user the %s runs as, or as root/Administrator", c.role, c.endpoint, ErrDenied, c.role)
	}
	return fmt.Errorf("%s control %s: %w", c.role, c.endpoint, err)
}

// Duration is a time.Duration that JSON carries as seconds (a number), so
// that scripts need not parse Go's duration syntax.
type Duration time.Duration

// MarshalJSON writes d as seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(d).Seconds(), 'f', -1, 64), nil
}

// UnmarshalJSON reads seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want seconds", b)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Start listens on the endpoint of role in dataDir and serves h until ctx
// ends; the returned function waits for the server to stop. An endpoint
// that cannot be made costs only the status commands, with a warning;
// one that another running process answers on is an error.
func Start(ctx context.Context, dataDir, role string, h http.Handler, log *slog.Logger) (wait func(), err error) {
	ep := Endpoint(dataDir, role)
	ln, err := Listen(ep)
	if err != nil {
		if errors.Is(err, ErrInUse) {
			return nil, err
		}
		log.Warn("control socket unavailable: "+role+" status will not work", "err", err)
		return func() {}, nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := Serve(ctx, ln, h, log); err != nil {
			log.Warn("control socket", "err", err)
		}
	}()
	log.Debug("control socket ready", "path", ep)
	return func() { <-done }, nil
}
