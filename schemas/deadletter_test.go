package schemas_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

func deadLetter(subject string) schemas.DeadLetter {
	first := time.Date(2025, 6, 1, 15, 22, 11, 402_000_000, time.UTC)
	return schemas.DeadLetter{
		OriginalSubject:        subject,
		OriginalStreamSequence: 48213,
		SourceEventID:          "a3c1e9f2-6d4b-4f8e-9b27-1e5d8c0f7a63",
		SourceEventSource:      pmsSource,
		Error: schemas.DeadLetterError{
			Kind:          schemas.ErrorKindPermanent,
			Message:       "seamclient: POST /acs/credentials/assign: 404 acs_credential_not_found",
			HTTPStatus:    404,
			SeamErrorType: "acs_credential_not_found",
			SeamRequestID: "5b1d9f37-2c8e-4a6b-9d04-e7f1a3c5b862",
		},
		Request:        json.RawMessage(`{"acs_credential_id":"` + credID + `","acs_user_id":"` + acsUserID + `"}`),
		ACSCredential:  json.RawMessage(`{"acs_credential_id":"` + credID + `","visionline_metadata":{"card_function_type":"guest"}}`),
		Attempts:       1,
		Deliveries:     1,
		FirstAttemptAt: &first,
		LastAttemptAt:  &first,
	}
}

func TestDeadLetter_RoundTripsOriginalBytesExactly(t *testing.T) {
	v := newValidator(t)
	cases := []struct {
		name     string
		original []byte
		encoding string
	}{
		{"pretty JSON with odd whitespace", []byte("{\n\t\"specversion\" :\t\"1.0\" ,\r\n  \"data\": { \"a\" : [ 1 ,2,\n3 ] ,\"é\":\"\\u00e9\\/\" }  }"), schemas.EncodingJSON},
		{"JSON with a trailing newline", []byte("{\"id\":\"x\"}\n"), schemas.EncodingBase64},
		{"JSON with leading space", []byte(" {}"), schemas.EncodingBase64},
		{"invalid JSON", []byte(`{"specversion":"1.0","id":`), schemas.EncodingBase64},
		{"binary, not UTF-8", []byte{0x00, 0xff, 0xfe, '{', 0x80, '}', 0xc3}, schemas.EncodingBase64},
		{"JSON string in invalid UTF-8", []byte("\"\xff\""), schemas.EncodingBase64},
		{"JSON string literal", []byte(`"guest \"checked\" in \u2028"`), schemas.EncodingJSON},
		{"JSON number", []byte(`1.50e+3`), schemas.EncodingJSON},
		{"empty body", []byte{}, schemas.EncodingBase64},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := schemas.ChooseEncoding(tc.original); got != tc.encoding {
				t.Fatalf("ChooseEncoding = %q, want %q", got, tc.encoding)
			}
			dl := deadLetter(schemas.SubjectCheckedIn)
			dl.OriginalEventEncoding = tc.encoding
			doc, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "deadletter/1", "R-1", time.Now(), dl, tc.original)
			if err != nil {
				t.Fatalf("MarshalDeadLetterEvent: %v", err)
			}
			if tc.encoding == schemas.EncodingJSON && !bytes.Contains(doc, tc.original) {
				t.Errorf("document does not carry the original verbatim:\n%s", doc)
			}
			if err := v.Validate(schemas.DeadLetterSubject(schemas.SubjectCheckedIn), doc); err != nil {
				t.Fatalf("dead letter is not valid: %v\n%s", err, doc)
			}
			env, got, err := schemas.DecodeDeadLetterEvent(doc)
			if err != nil {
				t.Fatalf("DecodeDeadLetterEvent: %v", err)
			}
			if env.Type != "deadletter.guest.checked_in" || env.Subject != "R-1" || env.DataContentType != "application/json" {
				t.Errorf("envelope = %+v", env)
			}
			original, err := got.Original()
			if err != nil {
				t.Fatalf("Original: %v", err)
			}
			if !bytes.Equal(original, tc.original) {
				t.Errorf("Original() = %q, want %q", original, tc.original)
			}
			sum := sha256.Sum256(tc.original)
			if got.OriginalSHA256 != hex.EncodeToString(sum[:]) || got.OriginalSize != len(tc.original) {
				t.Errorf("sha256/size = %s/%d, want the original's", got.OriginalSHA256, got.OriginalSize)
			}
			if got.Error != dl.Error || got.Attempts != 1 || !got.FirstAttemptAt.Equal(*dl.FirstAttemptAt) ||
				!bytes.Equal(got.ACSCredential, dl.ACSCredential) {
				t.Errorf("decoded dead letter lost fields: %+v", got)
			}
		})
	}
}

func TestMarshalDeadLetterEvent_ChoosesEncodingWhenUnset(t *testing.T) {
	for _, original := range [][]byte{[]byte(`{"a":1}`), []byte("{\"a\":1}\n")} {
		doc, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "d", "", time.Now(), deadLetter(schemas.SubjectCheckedOut), original)
		if err != nil {
			t.Fatalf("MarshalDeadLetterEvent: %v", err)
		}
		_, dl, err := schemas.DecodeDeadLetterEvent(doc)
		if err != nil {
			t.Fatal(err)
		}
		if dl.OriginalEventEncoding != schemas.ChooseEncoding(original) {
			t.Errorf("encoding = %q, want %q", dl.OriginalEventEncoding, schemas.ChooseEncoding(original))
		}
		if got, err := dl.Original(); err != nil || !bytes.Equal(got, original) {
			t.Errorf("Original() = %q, %v", got, err)
		}
	}
}

func TestMarshalDeadLetterEvent_OmittedOriginalKeepsHashAndSequence(t *testing.T) {
	v := newValidator(t)
	original := bytes.Repeat([]byte("x"), 4096)
	dl := deadLetter(schemas.SubjectCheckedOut)
	dl.OriginalEventEncoding = schemas.EncodingOmitted
	dl.Error = schemas.DeadLetterError{Kind: schemas.ErrorKindInvalidEvent, Message: "too large"}
	doc, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "d", "", time.Now(), dl, original)
	if err != nil {
		t.Fatalf("MarshalDeadLetterEvent: %v", err)
	}
	if bytes.Contains(doc, original) || bytes.Contains(doc, []byte(`"original_event"`)) {
		t.Errorf("omitted original is in the document")
	}
	if err := v.Validate(schemas.DeadLetterSubject(schemas.SubjectCheckedOut), doc); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	_, got, err := schemas.DecodeDeadLetterEvent(doc)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(original)
	if got.OriginalSHA256 != hex.EncodeToString(sum[:]) || got.OriginalSize != 4096 || got.OriginalStreamSequence != 48213 {
		t.Errorf("dead letter = %+v", got)
	}
	if _, err := got.Original(); !errors.Is(err, schemas.ErrOriginalOmitted) {
		t.Errorf("Original() error = %v, want ErrOriginalOmitted", err)
	}
}

func TestMarshalDeadLetterEvent_RefusesWhatCannotRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		mutate   func(*schemas.DeadLetter)
		original []byte
	}{
		{"json encoding of invalid JSON", func(dl *schemas.DeadLetter) { dl.OriginalEventEncoding = schemas.EncodingJSON }, []byte(`{"a":`)},
		{"json encoding of a trailing newline", func(dl *schemas.DeadLetter) { dl.OriginalEventEncoding = schemas.EncodingJSON }, []byte("{}\n")},
		{"json encoding of invalid UTF-8", func(dl *schemas.DeadLetter) { dl.OriginalEventEncoding = schemas.EncodingJSON }, []byte("\"\xff\"")},
		{"unknown encoding", func(dl *schemas.DeadLetter) { dl.OriginalEventEncoding = "gzip" }, []byte(`{}`)},
		{"output subject", func(dl *schemas.DeadLetter) { dl.OriginalSubject = schemas.SubjectAssigned }, []byte(`{}`)},
		{"sha256 of other bytes", func(dl *schemas.DeadLetter) { dl.OriginalSHA256 = strings.Repeat("0", 64) }, []byte(`{}`)},
		{"omitted without hash", func(dl *schemas.DeadLetter) { dl.OriginalEventEncoding = schemas.EncodingOmitted }, nil},
		{"omitted without sequence", func(dl *schemas.DeadLetter) {
			dl.OriginalEventEncoding = schemas.EncodingOmitted
			dl.OriginalStreamSequence = 0
		}, []byte(`{}`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dl := deadLetter(schemas.SubjectCheckedIn)
			tc.mutate(&dl)
			doc, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "d", "", time.Now(), dl, tc.original)
			if err == nil {
				t.Fatalf("MarshalDeadLetterEvent accepted it:\n%s", doc)
			}
			if !strings.HasPrefix(err.Error(), "schemas: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestDeadLetterOriginal_DetectsReformattedDocument(t *testing.T) {
	original := []byte(`{"id": "x",  "type":"guest.checked_in"}`)
	doc, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "d", "", time.Now(), deadLetter(schemas.SubjectCheckedIn), original)
	if err != nil {
		t.Fatal(err)
	}
	// What a tool that re-indents JSON would do to the dead letter.
	var buf bytes.Buffer
	if err := json.Indent(&buf, doc, "", "  "); err != nil {
		t.Fatal(err)
	}
	_, dl, err := schemas.DecodeDeadLetterEvent(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dl.Original(); !errors.Is(err, schemas.ErrOriginalMismatch) {
		t.Errorf("Original() error = %v, want ErrOriginalMismatch", err)
	}
}

func TestDecodeDeadLetterEvent_RejectsInconsistentDocuments(t *testing.T) {
	good, err := schemas.MarshalDeadLetterEvent("//keyworker/test", "d", "", time.Now(), deadLetter(schemas.SubjectCheckedIn), []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		t.Helper()
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q not in %s", old, good)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	cases := []struct {
		name   string
		doc    []byte
		reason string
	}{
		{"invalid JSON", good[:40], "invalid JSON at byte 40: unexpected end of input"},
		{"input type", replace(`"type":"deadletter.guest.checked_in"`, `"type":"guest.checked_in"`),
			`type "guest.checked_in" is not a dead-letter type`},
		{"subject disagrees with type", replace(`"original_subject":"guest.checked_in"`, `"original_subject":"guest.checked_out"`),
			`data.original_subject "guest.checked_out" does not match type "deadletter.guest.checked_in"`},
		{"case-variant key", replace(`"original_event":`, `"Original_Event":"eA==","original_event":`),
			`data: field "Original_Event" differs from "original_event" only in case`},
		{"case-variant error key", replace(`"kind":`, `"KIND":"permanent","kind":`),
			`data.error: field "KIND" differs from "kind" only in case`},
		{"missing original", replace(`"original_event":{"a":1},`, ``), `data: missing required "original_event"`},
		{"bad time", replace(`"time":"`, `"time":"x`), "event: a timestamp must be an RFC 3339 date-time such as 2025-06-01T14:00:00Z"},
		{"wrong type of field", replace(`"attempts":1`, `"attempts":"1"`), "data.attempts: must be of type int, not string"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := schemas.DecodeDeadLetterEvent(tc.doc)
			var ve *schemas.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("DecodeDeadLetterEvent = %v, want a *ValidationError", err)
			}
			checkReason(t, ve)
			if ve.Reason != tc.reason {
				t.Errorf("reason = %q\nwant     %q", ve.Reason, tc.reason)
			}
		})
	}
}
