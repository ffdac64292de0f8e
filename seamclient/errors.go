package seamclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidRequest is wrapped by the error of a call whose arguments are
// wrong before anything is sent (no credential id, both or neither user ids).
var ErrInvalidRequest = errors.New("seamclient: invalid request")

// ErrNoCredential is returned by ParseCredential for an empty payload, and
// wrapped in a *ResponseError when /acs/credentials/get answers without one.
var ErrNoCredential = errors.New("seamclient: no acs_credential in response")

// APIError is a non-2xx answer. Type and Message come from Seam's error
// envelope {"error": {"type", "message"}, "ok": false}; a body that is not
// JSON (an HTML page from a gateway) leaves them empty and keeps the first
// 256 bytes in Body. The API key is never part of any field.
type APIError struct {
	StatusCode int
	Type       string
	Message    string
	RequestID  string
	// RetryAfter is the wait the server asked for, when HasRetryAfter.
	RetryAfter    time.Duration
	HasRetryAfter bool
	// Body is the start of a non-JSON body, for HTML gateway pages.
	Body string
}

// Error returns e.g.
// "seamclient: 404 acs_credential_not_found: <message> (seam-request-id X)".
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("seamclient: ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	switch {
	case e.Type != "":
		b.WriteString(" ")
		b.WriteString(e.Type)
	case http.StatusText(e.StatusCode) != "":
		b.WriteString(" ")
		b.WriteString(strings.ToLower(http.StatusText(e.StatusCode)))
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	} else if e.Type == "" && e.Body != "" {
		b.WriteString(": non-json body")
	}
	if e.RequestID != "" {
		b.WriteString(" (seam-request-id ")
		b.WriteString(e.RequestID)
		b.WriteString(")")
	}
	return b.String()
}

// class sorts an answer by its Seam error type (typeClass), falling back on
// the HTTP status: a type the table does not know is Permanent unless the
// status is 408, 429 or 5xx (an overloaded or failing Seam may invent
// types, a refusal of this request will not change by waiting); no type at
// all (a gateway page, an empty body) goes by the status alone, 409
// included, since no Seam verdict came with it.
func (e *APIError) class() Class {
	if c, ok := typeClass[e.Type]; ok {
		return c
	}
	switch {
	case e.StatusCode == http.StatusRequestTimeout,
		e.StatusCode == http.StatusTooManyRequests,
		e.StatusCode >= 500:
		return Transient
	case e.Type == "" && e.StatusCode == http.StatusConflict:
		return Transient
	}
	return Permanent
}

// typeClass is what each Seam error type keyworker knows says about the
// request. Seam's OpenAPI lists no error types, so this is the table
// keyworker, its fake and its tests agree on; a type missing from it falls
// back as APIError.class says. 409 is Seam's status for conflicts, most of
// which waiting does not resolve: only the types below are retried.
var typeClass = map[string]Class{
	// The request itself is wrong, or names what does not exist.
	"invalid_input":              Permanent,
	"missing_required_parameter": Permanent,
	"acs_credential_not_found":   Permanent,
	"acs_user_not_found":         Permanent,
	"user_identity_not_found":    Permanent,
	"acs_system_not_found":       Permanent,
	"not_found":                  Permanent,
	"method_not_allowed":         Permanent,
	"payload_too_large":          Permanent,
	// Conflicts that stay: the credential cannot take this holder.
	"acs_credential_cannot_be_assigned": Permanent,
	"acs_credential_being_deleted":      Permanent,
	// Answered by the worker itself (it reads the holder, unassigns it
	// and assigns again; a non-holder's unassign is already as wanted);
	// classified for when they persist.
	ErrorTypeAlreadyAssigned: Transient,
	ErrorTypeNotAssigned:     Permanent,
	// The key: permanent for the request, but the consumer's health gate
	// waits for a working key instead of giving up (it reads the status).
	"unauthorized": Permanent,
	"forbidden":    Permanent,
	// Waiting resolves these.
	"credential_busy":       Transient, // another change of the credential is under way
	"rate_limited":          Transient,
	"internal_server_error": Transient,
	"service_unavailable":   Transient,
	"bad_gateway":           Transient,
	// Seam gave up waiting for the provider after passing the change on:
	// it may be applied.
	"gateway_timeout":  OutcomeUnknown,
	"provider_timeout": OutcomeUnknown,
}

// TransportError is a request that got no complete answer: dial failure,
// reset connection, timeout. When Sent is true the request had been written
// in full, so Seam may have applied it: the outcome is unknown.
type TransportError struct {
	Path string
	Err  error
	Sent bool
}

func (e *TransportError) Error() string {
	err := e.Err
	// *url.Error repeats method and URL; Path already says which call failed.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := "seamclient: post " + e.Path + ": " + err.Error()
	if e.Sent {
		msg += " (request sent, outcome unknown)"
	}
	return msg
}

func (e *TransportError) Unwrap() error { return e.Err }

// Timeout reports whether the request ran out of time, its own or the caller's.
func (e *TransportError) Timeout() bool {
	if errors.Is(e.Err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}

// ResponseError is a 2xx answer whose body could not be decoded: Seam did
// something, but what is unknown. Its message never repeats the body,
// which may hold a credential code.
type ResponseError struct {
	StatusCode int
	RequestID  string
	Err        error
}

func (e *ResponseError) Error() string {
	msg := fmt.Sprintf("seamclient: %d response could not be decoded: %v", e.StatusCode, e.Err)
	if e.RequestID != "" {
		msg += " (seam-request-id " + e.RequestID + ")"
	}
	return msg
}

func (e *ResponseError) Unwrap() error { return e.Err }

// Class says what a caller may do after an error.
type Class int

const (
	// Permanent: the same request will fail again; give up.
	Permanent Class = iota + 1
	// Transient: nothing was applied; the same request may be retried.
	Transient
	// OutcomeUnknown: the request may have been applied; read the
	// credential before retrying.
	OutcomeUnknown
)

func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case OutcomeUnknown:
		return "outcome_unknown"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Classify sorts err with errors.As, so wrapped errors keep their class.
// An *APIError goes by its Seam error type first (typeClass), then by its
// status: 408, 429 and 5xx are Transient, and so is a 409 without a type;
// every other status is Permanent, and so is a type the table does not
// know, unless its status is transient. A *TransportError is
// OutcomeUnknown when the request was sent, else Transient; a
// *ResponseError is OutcomeUnknown; context.Canceled and
// context.DeadlineExceeded outside a TransportError are Transient;
// anything else is Permanent. Classify(nil) returns 0, which is none of
// the classes.
func Classify(err error) Class {
	if err == nil {
		return 0
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.class()
	}
	var te *TransportError
	if errors.As(err, &te) {
		if te.Sent {
			return OutcomeUnknown
		}
		return Transient
	}
	var re *ResponseError
	if errors.As(err, &re) {
		return OutcomeUnknown
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Transient
	}
	return Permanent
}

// RetryAfter returns the wait asked for by the Retry-After header of the
// *APIError in err's chain, if it had one.
func RetryAfter(err error) (time.Duration, bool) {
	var ae *APIError
	if errors.As(err, &ae) && ae.HasRetryAfter {
		return ae.RetryAfter, true
	}
	return 0, false
}

// Error types for the two ways Seam may treat a change of holder. Seam's
// OpenAPI does not list its error types, so these are the names keyworker
// and its fake agree on; the worker handles both answers and their
// absence (a Seam that takes the card over, a no-op unassign).
const (
	// ErrorTypeAlreadyAssigned: an assign was refused because another
	// user holds the credential (HTTP 409). The holder must be unassigned first.
	ErrorTypeAlreadyAssigned = "acs_credential_already_assigned"
	// ErrorTypeNotAssigned: an unassign was refused because the user does
	// not hold the credential (HTTP 400). The wanted state is already true.
	ErrorTypeNotAssigned = "acs_credential_not_assigned"
)

// IsType reports whether err has an *APIError of Seam error type typ in its chain.
func IsType(err error, typ string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Type == typ
}
