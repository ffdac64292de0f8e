package schemas_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

// FuzzDecodeGuestEvent checks that DecodeGuestEvent never panics, fails
// only with a short one-line *ValidationError, and that whatever it accepts
// is a well-formed event that survives NewEnvelope and decoding again.
// Seeds: testdata/fuzz/FuzzDecodeGuestEvent.
func FuzzDecodeGuestEvent(f *testing.F) {
	v := newValidator(f)
	f.Fuzz(func(t *testing.T, subject string, raw []byte) {
		ev, err := v.DecodeGuestEvent(subject, raw)
		if err != nil {
			var ve *schemas.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not a *ValidationError: %v", err, err)
			}
			if ev != nil {
				t.Fatalf("event %+v returned with error", ev)
			}
			checkReason(t, ve)
			if !strings.HasPrefix(err.Error(), "schemas: invalid ") {
				t.Fatalf("Error() = %q", err.Error())
			}
			return
		}
		if !slices.Contains(schemas.InputSubjects(), subject) || ev.Type != subject {
			t.Fatalf("accepted type %q on subject %q", ev.Type, subject)
		}
		if ev.ID == "" || ev.Source == "" || ev.Data.ACSCredentialID == "" {
			t.Fatalf("accepted an event without id, source or credential: %+v", ev)
		}
		if (ev.Data.ACSUserID == "") == (ev.Data.UserIdentityID == "") {
			t.Fatalf("accepted an event without exactly one user id: %+v", ev.Data)
		}
		if err := v.Validate(subject, raw); err != nil {
			t.Fatalf("DecodeGuestEvent accepted what Validate rejects: %v", err)
		}
		if ev.Time.IsZero() {
			return // NewEnvelope refuses a zero time
		}
		doc, err := schemas.NewEnvelope(ev.Type, ev.Source, ev.ID, ev.Subject, ev.Time, ev.Data)
		if err != nil {
			t.Fatalf("NewEnvelope of an accepted event: %v", err)
		}
		again, err := v.DecodeGuestEvent(subject, doc)
		if err != nil {
			t.Fatalf("re-encoded event rejected: %v\n%s", err, doc)
		}
		if !again.Time.Equal(ev.Time) {
			t.Fatalf("time %v became %v", ev.Time, again.Time)
		}
		again.Time = ev.Time
		if *again != *ev {
			t.Fatalf("event %+v became %+v", *ev, *again)
		}
	})
}

// FuzzDeadLetterRoundTrip checks that any message body, dead-lettered with
// the encoding ChooseEncoding picks (or base64), yields a valid dead letter
// that gives back exactly the same bytes.
// Seeds: testdata/fuzz/FuzzDeadLetterRoundTrip.
func FuzzDeadLetterRoundTrip(f *testing.F) {
	v := newValidator(f)
	at := time.Date(2025, 6, 4, 10, 41, 9, 871_000_000, time.UTC)
	f.Fuzz(func(t *testing.T, original []byte, forceBase64 bool) {
		dl := deadLetter(schemas.SubjectCheckedOut)
		dl.OriginalEventEncoding = schemas.ChooseEncoding(original)
		if forceBase64 {
			dl.OriginalEventEncoding = schemas.EncodingBase64
		}
		doc, err := schemas.MarshalDeadLetterEvent("//keyworker/fuzz", "deadletter/1", "", at, dl, original)
		if err != nil {
			t.Fatalf("MarshalDeadLetterEvent: %v", err)
		}
		if err := v.Validate(schemas.DeadLetterSubject(schemas.SubjectCheckedOut), doc); err != nil {
			t.Fatalf("dead letter is not valid: %v", err)
		}
		_, got, err := schemas.DecodeDeadLetterEvent(doc)
		if err != nil {
			t.Fatalf("DecodeDeadLetterEvent: %v", err)
		}
		back, err := got.Original()
		if err != nil {
			t.Fatalf("Original: %v", err)
		}
		if !bytes.Equal(back, original) {
			t.Fatalf("Original() = %q, want %q", back, original)
		}
	})
}
