package seamclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	headerRequestID = "seam-request-id"

	// bodySnippetLen is how much of a non-JSON error body APIError keeps.
	bodySnippetLen = 256
	// Error strings carry Seam's type and message; bound them so a broken
	// server cannot flood logs.
	maxTypeLen    = 128
	maxMessageLen = 1024
)

// Reasons a 2xx body is refused. They never quote the body.
var (
	errNotObject       = errors.New("body is not a json object")
	errCredentialShape = errors.New("acs_credential is not a json object")
	errNotOK           = errors.New(`"ok" is false`)
	errEmptyBody       = errors.New("body is empty")
)

// parseResponse turns a status, its headers and the whole body into a
// Response or a typed error: non-2xx gives *APIError, an undecodable 2xx
// gives *ResponseError. now anchors Retry-After dates.
func parseResponse(status int, h http.Header, body []byte, now time.Time) (*Response, error) {
	requestID := h.Get(headerRequestID)
	if status < 200 || status > 299 {
		return nil, parseAPIError(status, h, body, requestID, now)
	}
	resp := &Response{RequestID: requestID, StatusCode: status}
	fail := func(err error) (*Response, error) {
		return nil, &ResponseError{StatusCode: status, RequestID: requestID, Err: err}
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if status == http.StatusNoContent {
			return resp, nil
		}
		return fail(errEmptyBody)
	}
	if trimmed[0] != '{' {
		return fail(errNotObject)
	}
	var env struct {
		ACSCredential json.RawMessage `json:"acs_credential"`
		OK            *bool           `json:"ok"`
		Error         json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(trimmed, &env); err != nil {
		return fail(describeJSONError(err))
	}
	if env.OK != nil && !*env.OK || len(env.Error) > 0 && !isNull(env.Error) {
		return fail(errNotOK)
	}
	switch {
	case len(env.ACSCredential) == 0 || isNull(env.ACSCredential):
		// {} or {"ok": true}: Seam applied the change and sent no object.
	case env.ACSCredential[0] != '{':
		return fail(errCredentialShape)
	default:
		// json.RawMessage holds the value's bytes exactly as received, so
		// manufacturer metadata passes through untouched.
		resp.Credential = env.ACSCredential
	}
	return resp, nil
}

func parseAPIError(status int, h http.Header, body []byte, requestID string, now time.Time) *APIError {
	e := &APIError{StatusCode: status, RequestID: requestID}
	e.RetryAfter, e.HasRetryAfter = parseRetryAfter(h.Get("Retry-After"), now)
	trimmed := bytes.TrimSpace(body)
	var env struct {
		Error   json.RawMessage `json:"error"`
		Message json.RawMessage `json:"message"`
	}
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &env) != nil {
		e.Body = snippet([]byte(RedactCodes(string(trimmed))), bodySnippetLen)
		return e
	}
	// Decode field by field: one field of an unexpected type must not hide the others.
	var inner struct {
		Type      json.RawMessage `json:"type"`
		Message   json.RawMessage `json:"message"`
		RequestID json.RawMessage `json:"request_id"`
	}
	if len(env.Error) > 0 && env.Error[0] == '{' {
		_ = json.Unmarshal(env.Error, &inner)
	}
	e.Type = snippet([]byte(jsonString(inner.Type)), maxTypeLen)
	msg := jsonString(inner.Message)
	if msg == "" {
		msg = jsonString(env.Message) // API gateways answer {"message": "..."}
	}
	e.Message = snippet([]byte(RedactCodes(msg)), maxMessageLen)
	if e.RequestID == "" {
		e.RequestID = snippet([]byte(jsonString(inner.RequestID)), maxTypeLen)
	}
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP-date. A date in the past
// means no wait; a value too large for time.Duration is capped.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		if secs > uint64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// describeJSONError keeps where decoding failed and drops what it saw:
// encoding/json quotes characters and numbers of the input, which may be
// part of a credential code.
func describeJSONError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid json at offset %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("json field %q: want %s", te.Field, te.Type)
	}
	return errors.New("invalid json")
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// snippet returns at most n bytes of b as valid UTF-8 without control
// characters other than tab, so it is safe in a log line.
func snippet(b []byte, n int) string {
	if len(b) > n {
		b = b[:n] // a rune cut in half is dropped by ToValidUTF8
	}
	s := strings.ToValidUTF8(string(b), "")
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
