package seamclient

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// ErrInvalidOption is wrapped by every error New returns for a bad argument
// or option, so callers can refuse the configuration at start-up.
var ErrInvalidOption = errors.New("seamclient: invalid option")

// DefaultTimeout bounds one request, body included, unless WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// Option configures a Client. An Option that is given a bad value returns an
// error wrapping ErrInvalidOption.
type Option func(*options) error

type options struct {
	httpClient  *http.Client
	workspaceID string
	userAgent   string
	timeout     time.Duration
	wrap        func(http.RoundTripper) http.RoundTripper
}

// WithTransportWrapper wraps the transport requests go through, e.g. in an
// instrumenting RoundTripper (otelhttp), keeping the Client's own
// connection pool and redirect policy (or those of WithHTTPClient's
// client, which is copied, not changed).
func WithTransportWrapper(wrap func(http.RoundTripper) http.RoundTripper) Option {
	return func(o *options) error {
		if wrap == nil {
			return fmt.Errorf("%w: transport wrapper is nil", ErrInvalidOption)
		}
		o.wrap = wrap
		return nil
	}
}

// WithHTTPClient makes the Client send its requests with hc instead of its
// own pooled client. The per-request timeout (WithTimeout) still applies.
// hc's redirect policy is kept; the Client's own one follows no redirect,
// since a 301 or 302 would turn the POST into a GET.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) error {
		if hc == nil {
			return fmt.Errorf("%w: http client is nil", ErrInvalidOption)
		}
		o.httpClient = hc
		return nil
	}
}

// WithWorkspaceID sends id as the seam-workspace header, which personal
// access tokens need. An empty id sends no header, so an unset
// SEAM_WORKSPACE_ID can be passed through as is.
func WithWorkspaceID(id string) Option {
	return func(o *options) error {
		if !validHeaderValue(id) {
			return fmt.Errorf("%w: workspace id contains control characters", ErrInvalidOption)
		}
		o.workspaceID = id
		return nil
	}
}

// WithUserAgent replaces the default User-Agent ("keyworker/<version>").
func WithUserAgent(ua string) Option {
	return func(o *options) error {
		if strings.TrimSpace(ua) == "" {
			return fmt.Errorf("%w: user agent is empty", ErrInvalidOption)
		}
		if !validHeaderValue(ua) {
			return fmt.Errorf("%w: user agent contains control characters", ErrInvalidOption)
		}
		o.userAgent = ua
		return nil
	}
}

// WithTimeout bounds each request, from dialling to the last byte of the
// body (default DefaultTimeout). The caller's context may end it sooner.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: timeout %v is not positive", ErrInvalidOption, d)
		}
		o.timeout = d
		return nil
	}
}

// validHeaderValue refuses control characters, which would let a value
// split or corrupt the request headers.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
