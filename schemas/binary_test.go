package schemas_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

// binaryHeader is the binary-mode rendering of guestEvent(t, nil)'s
// attributes, as the CloudEvents Go SDK's NATS sender writes them.
func binaryHeader() map[string][]string {
	return map[string][]string{
		"ce-specversion":     {"1.0"},
		"ce-id":              {"6f1c2e0a-5b7d-4c1e-9a34-2f8d1b7e9c10"},
		"ce-source":          {pmsSource},
		"ce-type":            {schemas.SubjectCheckedIn},
		"ce-subject":         {"R-2025-0601-7781"},
		"ce-time":            {"2025-06-01T16:03:27+02:00"},
		"ce-datacontenttype": {"application/json"},
	}
}

const binaryBody = `{"acs_credential_id":"` + credID + `","acs_user_id":"` + acsUserID + `","reservation_id":"R-2025-0601-7781","property_id":"h-1042"}`

func TestDecodeGuestMessage_BinaryModeDecodesLikeStructuredMode(t *testing.T) {
	v := newValidator(t)
	want, err := v.DecodeGuestMessage(schemas.SubjectCheckedIn, nil, guestEvent(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]map[string][]string{
		"as the SDK writes it": binaryHeader(),
		"header names in another case, content type in Content-Type": func() map[string][]string {
			h := map[string][]string{}
			for k, v := range binaryHeader() {
				if k != "ce-datacontenttype" {
					h["Ce-"+strings.ToUpper(k[3:4])+k[4:]] = v
				}
			}
			h["Content-Type"] = []string{"application/json"}
			h["Nats-Msg-Id"] = []string{"pms-1"} // not an attribute
			return h
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			if !schemas.IsBinary(h) {
				t.Fatal("IsBinary: false")
			}
			got, err := v.DecodeGuestMessage(schemas.SubjectCheckedIn, h, []byte(binaryBody))
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(want.Time) {
				t.Fatalf("time %v, want %v", got.Time, want.Time)
			}
			got.Time = want.Time
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("binary mode decodes to\n%+v\nstructured to\n%+v", got, want)
			}
		})
	}
}

func TestDecodeGuestMessage_BinaryModeIsHeldToTheSameSchema(t *testing.T) {
	v := newValidator(t)
	without := func(k string) map[string][]string {
		h := binaryHeader()
		delete(h, k)
		return h
	}
	with := func(k string, vals ...string) map[string][]string {
		h := binaryHeader()
		h[k] = vals
		return h
	}
	for _, tc := range []struct {
		name   string
		header map[string][]string
		body   string
		reason string
	}{
		{"no id", without("ce-id"), binaryBody, `binary mode: event: missing required "id"`},
		{"no time", without("ce-time"), binaryBody, `binary mode: event: missing required "time"`},
		{"no body", binaryHeader(), "", `binary mode: event: missing required "data"`},
		{"body not JSON", binaryHeader(), "acs_credential_id=x", "binary mode: body (data): invalid JSON at byte 0"},
		{"type not the subject", with("ce-type", schemas.SubjectCheckedOut), binaryBody, `binary mode: type "guest.checked_out" does not match subject "guest.checked_in"`},
		{"bad time", with("ce-time", "yesterday"), binaryBody, "binary mode: time: must be an RFC 3339 date-time"},
		{"wrong specversion", with("ce-specversion", "0.3"), binaryBody, `binary mode: specversion: must be "1.0"`},
		{"both user ids", binaryHeader(), `{"acs_credential_id":"` + credID + `","acs_user_id":"` + acsUserID + `","user_identity_id":"` + identityID + `"}`, "binary mode: data: exactly one of acs_user_id and user_identity_id is required"},
		{"attribute twice", with("CE-ID", "other"), binaryBody, "binary mode: attribute id is given by two headers"},
		{"attribute with two values", with("ce-id", "a", "b"), binaryBody, "binary mode: header ce-id has 2 values, want one"},
		{"not an attribute name", with("ce-my_ext", "x"), binaryBody, `binary mode: header "ce-my_ext" is not a CloudEvents attribute`},
		{"data in a header", with("ce-data", "{}"), binaryBody, "binary mode: header ce-data: data is the body in binary mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.DecodeGuestMessage(schemas.SubjectCheckedIn, tc.header, []byte(tc.body))
			var verr *schemas.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("want a *ValidationError, got %v", err)
			}
			if !strings.HasPrefix(verr.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to start with %q", verr.Reason, tc.reason)
			}
		})
	}
}

func TestIsBinary_OnlyWithASpecVersionHeader(t *testing.T) {
	for _, h := range []map[string][]string{nil, {}, {"Content-Type": {schemas.ContentType}}, {"ce-id": {"x"}}} {
		if schemas.IsBinary(h) {
			t.Errorf("IsBinary(%v) = true", h)
		}
	}
}

func TestDeadLetter_OriginalHeadersRoundTripAndEmptyIsNotAbsent(t *testing.T) {
	v := newValidator(t)
	body := []byte(binaryBody)
	for name, hdr := range map[string]map[string][]string{
		"binary mode": binaryHeader(),
		"none":        {},
		"not kept":    nil,
	} {
		t.Run(name, func(t *testing.T) {
			dl := schemas.DeadLetter{
				OriginalHeaders:        hdr,
				OriginalSubject:        schemas.SubjectCheckedIn,
				OriginalStreamSequence: 7,
				Error:                  schemas.DeadLetterError{Kind: schemas.ErrorKindPermanent, Message: "test"},
			}
			doc, err := schemas.MarshalDeadLetterEvent("keyworker", "dl-1", "", time.Now().UTC(), dl, body)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Validate(schemas.DeadLetterSubject(schemas.SubjectCheckedIn), doc); err != nil {
				t.Fatalf("schema: %v", err)
			}
			_, got, err := schemas.DecodeDeadLetterEvent(doc)
			if err != nil {
				t.Fatal(err)
			}
			if (got.OriginalHeaders == nil) != (hdr == nil) || (hdr != nil && !reflect.DeepEqual(got.OriginalHeaders, hdr)) {
				t.Fatalf("headers came back as %#v, want %#v", got.OriginalHeaders, hdr)
			}
		})
	}
}

// FuzzDecodeGuestMessage: whatever the headers and body, binary-mode
// decoding never panics, and what it accepts is an event the schema accepts
// in structured mode too.
func FuzzDecodeGuestMessage(f *testing.F) {
	f.Add("ce-id", "6f1c2e0a", "ce-time", "2025-06-01T16:03:27+02:00", binaryBody)
	f.Add("Ce-Id", "x", "Content-Type", "application/json", `{"acs_credential_id":1}`)
	f.Add("ce-data", "{}", "ce-x_y", "", "")
	v := newValidator(f)
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, body string) {
		h := binaryHeader()
		h[k1] = []string{v1}
		h[k2] = []string{v2}
		ev, err := v.DecodeGuestMessage(schemas.SubjectCheckedIn, h, []byte(body))
		if err != nil {
			var verr *schemas.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error is not a *ValidationError: %v", err)
			}
			return
		}
		doc, err := schemas.BinaryDocument(schemas.SubjectCheckedIn, h, []byte(body))
		if err != nil {
			t.Fatalf("decoded, but BinaryDocument fails: %v", err)
		}
		again, err := v.DecodeGuestEvent(schemas.SubjectCheckedIn, doc)
		if err != nil || !reflect.DeepEqual(again, ev) {
			t.Fatalf("structured document decodes to %+v (%v), binary to %+v", again, err, ev)
		}
	})
}

// BenchmarkDecodeGuestMessage compares the two modes: binary mode costs
// the assembly of the structured document on top.
func BenchmarkDecodeGuestMessage(b *testing.B) {
	v := newValidator(b)
	structured := guestEvent(b, nil)
	for _, mode := range []struct {
		name   string
		header map[string][]string
		body   []byte
	}{{"structured", nil, structured}, {"binary", binaryHeader(), []byte(binaryBody)}} {
		b.Run(mode.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.DecodeGuestMessage(schemas.SubjectCheckedIn, mode.header, mode.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
