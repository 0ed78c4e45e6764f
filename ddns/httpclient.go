package ddns

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

const (
	// defaultRetryAfter is the wait after an HTTP 429 or 503 that did not
	// say how long.
	defaultRetryAfter = 5 * time.Minute
	// maxRetryAfter caps what a server may ask for.
	maxRetryAfter = 24 * time.Hour
	// maxAnswer bounds the part of a provider's answer that is read.
	maxAnswer = 1024
)

// defaultClient is used by providers without a Client.
var defaultClient = &http.Client{Timeout: 30 * time.Second}

// retryAfter reads a Retry-After header, in seconds or as an HTTP date,
// clamped to [1s, maxRetryAfter]; def if there is none or it is
// unreadable.
func retryAfter(h http.Header, now time.Time, def time.Duration) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return def
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		d = time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return def
	}
	return min(max(d, time.Second), maxRetryAfter)
}

// hostOnly shows where a URL points without anything that may hold a
// secret: no user information, path or query.
func hostOnly(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(invalid URL)"
	}
	return u.Scheme + "://" + u.Host
}

// redactURL shows a URL without its user information, query and fragment,
// which may carry secrets.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	u.User = nil
	u.RawQuery, u.ForceQuery = "", false
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// unwrapURLError drops the *url.Error wrapper that net/http puts around
// transport errors: its text holds the whole URL, query included.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
