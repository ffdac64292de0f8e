// Package seamclient is a thin typed client for the Seam endpoints keyworker
// uses: /acs/credentials/assign, /unassign and /get.
//
// It never retries: Seam has no idempotency key, so whether a request may be
// sent again is the caller's decision, made with Classify. Errors are typed
// (*APIError, *TransportError, *ResponseError) and their messages never
// contain the API key, a 2xx body, or a credential code.
//
// The fake in seamclient/seamtest serves the same endpoints for tests and
// for the built-in simulator.
package seamclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultEndpoint is Seam's production API, used when New gets an empty base URL.
const DefaultEndpoint = "https://connect.getseam.com"

// maxBodySize bounds how much of a response is read; Seam's credential
// objects are a few KiB.
const maxBodySize = 4 << 20

// Endpoint paths, relative to the base URL.
const (
	PathAssign   = "/acs/credentials/assign"
	PathUnassign = "/acs/credentials/unassign"
	PathGet      = "/acs/credentials/get"
)

// Client calls Seam. It is safe for concurrent use and reuses connections.
type Client struct {
	base        string
	apiKey      string
	hc          *http.Client
	workspaceID string
	userAgent   string
	timeout     time.Duration
}

// Request is the body of assign and unassign: a credential and exactly one
// of ACSUserID and UserIdentityID.
type Request struct {
	ACSCredentialID string `json:"acs_credential_id"`
	ACSUserID       string `json:"acs_user_id,omitempty"`
	UserIdentityID  string `json:"user_identity_id,omitempty"`
}

// Response is a successful answer.
type Response struct {
	// Credential is the acs_credential object byte for byte as received,
	// manufacturer metadata (visionline_metadata, ...) included. It is nil
	// when Seam answered {} for assign or unassign.
	Credential json.RawMessage
	// RequestID is the seam-request-id header.
	RequestID  string
	StatusCode int
}

// New returns a Client for baseURL (DefaultEndpoint when empty) that
// authenticates with apiKey. Bad arguments or options give an error wrapping
// ErrInvalidOption; the key itself is never quoted.
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	if baseURL == "" {
		baseURL = DefaultEndpoint
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not quoted: a key pasted into the wrong variable must not reach logs.
		return nil, fmt.Errorf("%w: base url must be an absolute http or https url", ErrInvalidOption)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: base url must not carry credentials, a query or a fragment", ErrInvalidOption)
	}
	if strings.TrimSpace(apiKey) == "" {
		return nil, fmt.Errorf("%w: api key is empty", ErrInvalidOption)
	}
	if !validHeaderValue(apiKey) {
		return nil, fmt.Errorf("%w: api key contains control characters", ErrInvalidOption)
	}
	o := options{timeout: DefaultTimeout, userAgent: defaultUserAgent()}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	hc := o.httpClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// Every worker goroutine talks to the same host: keep their
		// connections instead of re-dialling TLS for each call.
		tr.MaxIdleConns = 256
		tr.MaxIdleConnsPerHost = 256
		hc = &http.Client{
			Transport: tr,
			Timeout:   o.timeout,
			// Seam does not redirect API calls, and following a 301/302
			// would turn the POST into a GET.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if o.wrap != nil {
		wrapped := *hc
		base := wrapped.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		wrapped.Transport = o.wrap(base)
		hc = &wrapped
	}
	return &Client{
		base:        strings.TrimRight(u.String(), "/"),
		apiKey:      apiKey,
		hc:          hc,
		workspaceID: o.workspaceID,
		userAgent:   o.userAgent,
		timeout:     o.timeout,
	}, nil
}

func defaultUserAgent() string {
	v := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return "keyworker/" + v
}

// Assign gives the credential to the user (POST /acs/credentials/assign).
// Response.Credential is nil when Seam answered {}.
func (c *Client) Assign(ctx context.Context, r Request) (*Response, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	return c.do(ctx, PathAssign, r)
}

// Unassign takes the credential from the user (POST /acs/credentials/unassign).
// Response.Credential is nil when Seam answered {}.
func (c *Client) Unassign(ctx context.Context, r Request) (*Response, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	return c.do(ctx, PathUnassign, r)
}

// Get reads a credential (POST /acs/credentials/get). A 2xx without an
// acs_credential is a *ResponseError wrapping ErrNoCredential.
func (c *Client) Get(ctx context.Context, acsCredentialID string) (*Response, error) {
	if acsCredentialID == "" {
		return nil, fmt.Errorf("%w: acs_credential_id is empty", ErrInvalidRequest)
	}
	resp, err := c.do(ctx, PathGet, struct {
		ACSCredentialID string `json:"acs_credential_id"`
	}{acsCredentialID})
	if err != nil {
		return nil, err
	}
	if resp.Credential == nil {
		return nil, &ResponseError{StatusCode: resp.StatusCode, RequestID: resp.RequestID, Err: ErrNoCredential}
	}
	return resp, nil
}

func (r Request) validate() error {
	if r.ACSCredentialID == "" {
		return fmt.Errorf("%w: acs_credential_id is empty", ErrInvalidRequest)
	}
	if (r.ACSUserID == "") == (r.UserIdentityID == "") {
		return fmt.Errorf("%w: exactly one of acs_user_id and user_identity_id must be set", ErrInvalidRequest)
	}
	return nil
}

// do sends one POST and reads the whole answer. Every endpoint goes through
// it. A new *http.Request is built per call, so a caller's retry never
// reuses a consumed body.
func (c *Client) do(ctx context.Context, path string, in any) (*Response, error) {
	payload, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("seamclient: encode %s request: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// sent records that the whole request reached the connection. After
	// that a failure leaves the outcome unknown.
	var sent atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				sent.Store(true)
			}
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("seamclient: build %s request: %w", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.workspaceID != "" {
		req.Header.Set("seam-workspace", c.workspaceID)
	}

	hr, err := c.hc.Do(req)
	if err != nil {
		return nil, &TransportError{Path: path, Err: err, Sent: sent.Load()}
	}
	body, readErr := io.ReadAll(io.LimitReader(hr.Body, maxBodySize+1))
	hr.Body.Close()
	status := hr.StatusCode
	if status >= 200 && status <= 299 {
		if readErr != nil {
			// Seam said yes but the credential was lost on the way.
			return nil, &TransportError{Path: path, Err: readErr, Sent: true}
		}
		if len(body) > maxBodySize {
			return nil, &ResponseError{StatusCode: status, RequestID: hr.Header.Get(headerRequestID),
				Err: errors.New("body larger than 4 MiB")}
		}
	} else {
		if len(body) > maxBodySize {
			body = body[:maxBodySize]
		}
		// Before parsing, so a key cut in half by the snippet limit is gone too.
		body = bytes.ReplaceAll(body, []byte(c.apiKey), []byte(Redacted))
	}
	// A non-2xx with a cut body is still an answer: its status says what happened.
	resp, err := parseResponse(status, hr.Header, body, time.Now())
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) {
			ae.Message = c.redact(ae.Message)
			ae.Body = c.redact(ae.Body)
		}
		return nil, err
	}
	return resp, nil
}

// redact removes the API key from text a server sent back, in case a proxy
// or error page echoes the Authorization header.
func (c *Client) redact(s string) string {
	return strings.ReplaceAll(s, c.apiKey, Redacted)
}
