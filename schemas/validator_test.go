package schemas_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyworker/keyworker/schemas"
)

func TestDecodeGuestEvent_AcceptsEitherUserIDVariant(t *testing.T) {
	v := newValidator(t)
	cases := []struct {
		name    string
		subject string
		raw     []byte
		want    schemas.GuestData
	}{
		{
			name:    "acs_user_id",
			subject: schemas.SubjectCheckedIn,
			raw:     guestEvent(t, nil),
			want: schemas.GuestData{
				ACSCredentialID: credID, ACSUserID: acsUserID,
				ReservationID: "R-2025-0601-7781", PropertyID: "h-1042",
			},
		},
		{
			name:    "user_identity_id",
			subject: schemas.SubjectCheckedOut,
			raw: guestEvent(t, func(ev, data map[string]any) {
				ev["type"] = schemas.SubjectCheckedOut
				delete(data, "acs_user_id")
				delete(data, "property_id")
				data["user_identity_id"] = identityID
			}),
			want: schemas.GuestData{
				ACSCredentialID: credID, UserIdentityID: identityID,
				ReservationID: "R-2025-0601-7781",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := v.DecodeGuestEvent(tc.subject, tc.raw)
			if err != nil {
				t.Fatalf("DecodeGuestEvent: %v", err)
			}
			want := schemas.GuestEvent{
				ID:      "6f1c2e0a-5b7d-4c1e-9a34-2f8d1b7e9c10",
				Source:  pmsSource,
				Type:    tc.subject,
				Subject: "R-2025-0601-7781",
				Time:    mustTime(t, "2025-06-01T14:03:27Z"),
				Data:    tc.want,
			}
			if !ev.Time.Equal(want.Time) {
				t.Errorf("time = %v, want %v", ev.Time, want.Time)
			}
			ev.Time = want.Time
			if *ev != want {
				t.Errorf("event = %+v\nwant    %+v", *ev, want)
			}
		})
	}
}

func TestDecodeGuestEvent_AllowsUnknownDataFieldsAndExtensions(t *testing.T) {
	v := newValidator(t)
	raw := guestEvent(t, func(ev, data map[string]any) {
		ev["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		data["room"] = "204"
		data["nights"] = 3
	})
	if _, err := v.DecodeGuestEvent(schemas.SubjectCheckedIn, raw); err != nil {
		t.Fatalf("DecodeGuestEvent: %v", err)
	}
}

func TestDecodeGuestEvent_ReadsExactFieldNamesOnly(t *testing.T) {
	// encoding/json would fold "ACS_USER_ID" onto acs_user_id and yield an
	// event with both user ids; the schema treats it as an unknown field.
	v := newValidator(t)
	raw := guestEvent(t, func(ev, data map[string]any) {
		delete(data, "acs_user_id")
		data["user_identity_id"] = identityID
		data["ACS_USER_ID"] = "not-a-uuid"
		ev["TYPE"] = "guest.checked_out"
	})
	ev, err := v.DecodeGuestEvent(schemas.SubjectCheckedIn, raw)
	if err != nil {
		t.Fatalf("DecodeGuestEvent: %v", err)
	}
	if ev.Data.ACSUserID != "" || ev.Data.UserIdentityID != identityID || ev.Type != schemas.SubjectCheckedIn {
		t.Errorf("decoded %+v: case-variant keys leaked in", *ev)
	}
}

func TestDecodeGuestEvent_RejectsInvalidEventsWithClearReason(t *testing.T) {
	v := newValidator(t)
	huge := strings.Repeat("x", 1<<20)
	cases := []struct {
		name    string
		subject string
		raw     []byte
		reason  string // exact Reason, or prefix when it ends in "*"
	}{
		{"invalid JSON", schemas.SubjectCheckedIn, []byte(`{"specversion":"1.0",`),
			"invalid JSON at byte 21: unexpected end of input"},
		{"syntax error", schemas.SubjectCheckedIn, []byte(`{"id": nope}`),
			"invalid JSON at byte 8: invalid character 'o' in literal null (expecting 'u')"},
		{"empty body", schemas.SubjectCheckedIn, nil, "invalid JSON: empty document"},
		{"trailing data", schemas.SubjectCheckedIn, append(guestEvent(t, nil), " {}"...),
			"invalid JSON at byte *"},
		{"not UTF-8", schemas.SubjectCheckedIn, []byte("{\"id\":\"\xff\"}"),
			"invalid JSON at byte 7: not valid UTF-8"},
		{"not an object", schemas.SubjectCheckedIn, []byte(`[1,2]`),
			"event: must be a JSON object, not an array"},
		{"missing acs_credential_id", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { delete(d, "acs_credential_id") }),
			`data: missing required "acs_credential_id"`},
		{"both user ids", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { d["user_identity_id"] = identityID }),
			"data: exactly one of acs_user_id and user_identity_id is required"},
		{"neither user id", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { delete(d, "acs_user_id") }),
			"data: exactly one of acs_user_id and user_identity_id is required"},
		{"non-uuid credential id", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { d["acs_credential_id"] = "cred-42" }),
			"data.acs_credential_id: must be a UUID"},
		{"non-uuid acs user id", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { d["acs_user_id"] = "8d4f1a62-3b9e-4c7d-a215-6e0f9b3c8d4Z" }),
			"data.acs_user_id: must be a UUID"},
		{"non-uuid user identity id", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { delete(d, "acs_user_id"); d["user_identity_id"] = 42 }),
			"data.user_identity_id: must be of type string, not number"},
		{"type mismatch", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["type"] = schemas.SubjectCheckedOut }),
			`type "guest.checked_out" does not match subject "guest.checked_in"`},
		{"bad time", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["time"] = "yesterday" }),
			"time: must be an RFC 3339 date-time such as 2025-06-01T14:00:00Z"},
		{"lower-case time separator", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["time"] = "2025-06-01t14:03:27z" }),
			"time: must be an RFC 3339 date-time such as 2025-06-01T14:00:00Z"},
		{"leap second", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["time"] = "2016-12-31T23:59:60Z" }),
			"time: must be an RFC 3339 date-time such as 2025-06-01T14:00:00Z"},
		{"missing time", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { delete(e, "time") }),
			`event: missing required "time"`},
		{"empty id", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["id"] = "" }),
			"id: must not be empty"},
		{"wrong specversion", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["specversion"] = "0.3" }),
			`specversion: must be "1.0"`},
		{"data_base64 instead of data", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["data_base64"] = "e30="; delete(e, "data") }),
			`data_base64: not allowed; event: missing required "data"`},
		{"several problems", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, d map[string]any) { e["source"] = ""; d["acs_credential_id"] = 7 }),
			"data.acs_credential_id: must be of type string, not number; source: must not be empty"},
		{"huge type is not echoed", schemas.SubjectCheckedIn,
			guestEvent(t, func(e, _ map[string]any) { e["type"] = huge }),
			`type "xxxxxxxx*`},
		{"huge uuid is not echoed", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { d["acs_credential_id"] = huge }),
			"data.acs_credential_id: must be a UUID"},
		{"too large", schemas.SubjectCheckedIn,
			guestEvent(t, func(_, d map[string]any) { d["reservation_id"] = strings.Repeat(huge, 9) }),
			"document is *"},
		{"output subject", schemas.SubjectAssigned, guestEvent(t, nil),
			`subject "credential.assigned" is not a guest event subject`},
		{"unknown subject", "guest.checked\nsideways", guestEvent(t, nil),
			`subject "guest.checked\nsideways" is not a guest event subject`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := v.DecodeGuestEvent(tc.subject, tc.raw)
			if err == nil {
				t.Fatalf("DecodeGuestEvent accepted %s: %+v", tc.name, ev)
			}
			var ve *schemas.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not a *ValidationError: %v", err, err)
			}
			checkReason(t, ve)
			if prefix, ok := strings.CutSuffix(tc.reason, "*"); ok {
				if !strings.HasPrefix(ve.Reason, prefix) {
					t.Errorf("reason = %q, want prefix %q", ve.Reason, prefix)
				}
			} else if ve.Reason != tc.reason {
				t.Errorf("reason = %q\nwant     %q", ve.Reason, tc.reason)
			}
			if want := "schemas: invalid " + ve.Subject + " event: " + ve.Reason; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

// checkReason asserts the promises of ValidationError.Reason: one short line.
func checkReason(t testing.TB, ve *schemas.ValidationError) {
	t.Helper()
	if ve.Reason == "" {
		t.Error("empty reason")
	}
	if strings.ContainsAny(ve.Reason, "\n\r") || strings.ContainsAny(ve.Subject, "\n\r") {
		t.Errorf("reason or subject is not one line: %q %q", ve.Subject, ve.Reason)
	}
	if len(ve.Reason) > 320 || len(ve.Subject) > 120 {
		t.Errorf("reason is %d bytes, subject %d: not capped", len(ve.Reason), len(ve.Subject))
	}
}

func TestValidationError_UnwrapsTheCause(t *testing.T) {
	v := newValidator(t)
	err := v.Validate(schemas.SubjectCheckedIn, []byte(`{`))
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || ve.Err == nil || errors.Unwrap(err) != ve.Err {
		t.Fatalf("got %#v, want a *ValidationError wrapping the parse error", err)
	}
}

func TestValidate_RejectsUnknownSubject(t *testing.T) {
	v := newValidator(t)
	err := v.Validate("guest.teleported", guestEvent(t, nil))
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || ve.Reason != `unknown subject "guest.teleported"` {
		t.Fatalf("Validate = %v, want unknown subject", err)
	}
}

func TestValidate_DeadLetterRules(t *testing.T) {
	v := newValidator(t)
	subject := schemas.DeadLetterSubject(schemas.SubjectCheckedIn)
	base := `{"specversion":"1.0","id":"d1","source":"//keyworker","type":"%s","time":"2025-06-01T15:22:11Z","data":{%s"original_subject":"%s","original_stream_sequence":%d,"original_sha256":"%s","original_size":3,"error":{"kind":"%s","message":"m"},"attempts":0,"deliveries":1}}`
	sha := strings.Repeat("ab", 32)
	cases := []struct {
		name, doc, reason string
	}{
		{"valid base64", fmt.Sprintf(base, subject, `"original_event":"e30K","original_event_encoding":"base64",`, "guest.checked_in", 7, sha, "invalid_event"), ""},
		{"valid omitted", fmt.Sprintf(base, subject, `"original_event_encoding":"omitted",`, "guest.checked_in", 7, sha, "permanent"), ""},
		{"base64 that is not", fmt.Sprintf(base, subject, `"original_event":"{}!","original_event_encoding":"base64",`, "guest.checked_in", 7, sha, "invalid_event"),
			"data.original_event: must be base64 encoded"},
		{"json without original", fmt.Sprintf(base, subject, `"original_event_encoding":"json",`, "guest.checked_in", 7, sha, "permanent"),
			`data: missing required "original_event"`},
		{"omitted with original", fmt.Sprintf(base, subject, `"original_event":{},"original_event_encoding":"omitted",`, "guest.checked_in", 7, sha, "permanent"),
			"data.original_event: not allowed"},
		{"omitted without sequence", fmt.Sprintf(base, subject, `"original_event_encoding":"omitted",`, "guest.checked_in", 0, sha, "permanent"),
			"data.original_stream_sequence: must be at least 1"},
		{"unknown encoding", fmt.Sprintf(base, subject, `"original_event_encoding":"gzip",`, "guest.checked_in", 7, sha, "permanent"),
			`data.original_event_encoding: must be one of "json", "base64", "omitted"`},
		{"unknown error kind", fmt.Sprintf(base, subject, `"original_event_encoding":"omitted",`, "guest.checked_in", 7, sha, "transient"),
			`data.error.kind: must be one of "invalid_event", "permanent", "retries_exhausted"`},
		{"bad sha", fmt.Sprintf(base, subject, `"original_event_encoding":"omitted",`, "guest.checked_in", 7, "ABC", "permanent"),
			`data.original_sha256: must match "^[0-9a-f]{64}$"`},
		{"subject of the other stream", fmt.Sprintf(base, subject, `"original_event_encoding":"omitted",`, "guest.checked_out", 7, sha, "permanent"),
			`data.original_subject: must be "guest.checked_in"`},
		{"type of the other stream", fmt.Sprintf(base, "deadletter.guest.checked_out", `"original_event_encoding":"omitted",`, "guest.checked_out", 7, sha, "permanent"),
			`type "deadletter.guest.checked_out" does not match subject "deadletter.guest.checked_in"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Validate(subject, []byte(tc.doc))
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var ve *schemas.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError", err)
			}
			if ve.Reason != tc.reason {
				t.Errorf("reason = %q\nwant     %q", ve.Reason, tc.reason)
			}
		})
	}
}

func TestValidator_IsSafeForConcurrentUse(t *testing.T) {
	v := newValidator(t)
	good := guestEvent(t, nil)
	bad := guestEvent(t, func(_, d map[string]any) { d["user_identity_id"] = identityID })
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := v.DecodeGuestEvent(schemas.SubjectCheckedIn, good); err != nil {
					errs <- fmt.Errorf("worker %d: valid event rejected: %w", i, err)
					return
				}
				if _, err := v.DecodeGuestEvent(schemas.SubjectCheckedIn, bad); err == nil {
					errs <- fmt.Errorf("worker %d: invalid event accepted", i)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
