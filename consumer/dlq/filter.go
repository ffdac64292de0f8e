package dlq

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

// ErrInvalidFilter is wrapped by every error Filter.Validate returns.
var ErrInvalidFilter = errors.New("dlq: invalid filter")

// Filter selects dead letters. Zero fields select everything; set fields
// must all match.
type Filter struct {
	// Subject is an input subject (guest.checked_in or guest.checked_out):
	// dead letters of events published there.
	Subject string
	// Since and Until bound the time the dead letter was stored, both
	// inclusive.
	Since, Until time.Time
	// ErrorKind is invalid_event, permanent or retries_exhausted.
	ErrorKind string
	// SeamErrorType is the error type Seam answered, e.g. acs_credential_not_found.
	SeamErrorType string
	// SourceEventID is the CloudEvents id of the original event.
	SourceEventID string
	// Property is the original event's property_id, e.g. to replay the
	// dead letters of a property the workspace routing did not know.
	Property string
	// Limit caps the number of dead letters selected, oldest first; 0 means no cap.
	Limit int
}

// Validate refuses unknown subjects and error kinds, blank values, a
// negative limit and an empty time range.
func (f Filter) Validate() error {
	for _, v := range []struct{ name, value string }{
		{"subject", f.Subject}, {"error kind", f.ErrorKind}, {"seam error type", f.SeamErrorType}, {"id", f.SourceEventID}, {"property", f.Property},
	} {
		// Only blanks is a variable gone wrong, never a value: refuse it
		// rather than guess whether it meant "any".
		if v.value != "" && strings.TrimSpace(v.value) == "" {
			return fmt.Errorf("%w: %s is blank", ErrInvalidFilter, v.name)
		}
	}
	if f.Subject != "" && !slices.Contains(schemas.InputSubjects(), f.Subject) {
		return fmt.Errorf("%w: subject %q is not one of %v", ErrInvalidFilter, f.Subject, schemas.InputSubjects())
	}
	kinds := []string{schemas.ErrorKindInvalidEvent, schemas.ErrorKindPermanent, schemas.ErrorKindRetriesExhausted}
	if f.ErrorKind != "" && !slices.Contains(kinds, f.ErrorKind) {
		return fmt.Errorf("%w: error kind %q is not one of %v", ErrInvalidFilter, f.ErrorKind, kinds)
	}
	if f.Limit < 0 {
		return fmt.Errorf("%w: limit %d must not be negative", ErrInvalidFilter, f.Limit)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return fmt.Errorf("%w: until %s is before since %s", ErrInvalidFilter, f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	return nil
}

// IsZero reports whether f selects every dead letter.
func (f Filter) IsZero() bool { return f == Filter{} }

// match reports whether e passes the filter's content conditions; subject
// and time are also applied on the server, but checked again here.
func (f Filter) match(e Entry) bool {
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && e.Time.After(f.Until) {
		return false
	}
	if f.Subject != "" && e.Subject != schemas.DeadLetterSubject(f.Subject) {
		return false
	}
	if e.Err != nil {
		// Nothing inside an undecodable dead letter can match a condition on it.
		return f.ErrorKind == "" && f.SeamErrorType == "" && f.SourceEventID == "" && f.Property == ""
	}
	dl := e.DeadLetter
	return (f.ErrorKind == "" || dl.Error.Kind == f.ErrorKind) &&
		(f.SeamErrorType == "" || dl.Error.SeamErrorType == f.SeamErrorType) &&
		(f.SourceEventID == "" || dl.SourceEventID == f.SourceEventID) &&
		(f.Property == "" || propertyOf(dl) == f.Property)
}

// propertyOf is the property_id of the dead letter's original event (in
// data for a structured CloudEvent, at the top for binary mode's body), or
// "" when it has none or the original is not in the dead letter.
func propertyOf(dl schemas.DeadLetter) string {
	raw, err := dl.Original()
	if err != nil {
		return ""
	}
	var ev struct {
		PropertyID string `json:"property_id"`
		Data       struct {
			PropertyID string `json:"property_id"`
		} `json:"data"`
	}
	if json.Unmarshal(raw, &ev) != nil {
		return ""
	}
	return cmp.Or(ev.Data.PropertyID, ev.PropertyID)
}
