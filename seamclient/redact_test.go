package seamclient_test

import (
	"strings"
	"testing"

	"github.com/keyworker/keyworker/seamclient"
)

func TestRedactCodes_HidesCodesInEveryPhrasing(t *testing.T) {
	for _, tc := range []struct{ in, secret string }{
		{"The code '482913' is already in use", "482913"},
		{`The code "482913" is already in use`, "482913"},
		{"The code ‘482913’ is already in use", "482913"},
		{"The code “482913” is already in use", "482913"},
		{"The code `482913` is already in use", "482913"},
		{"access code is 123456", "123456"},
		{"Access Code was 123456.", "123456"},
		{"An access code with code 5555 already exists on this device", "5555"},
		{"passcode 7788", "7788"},
		{"passcode: 7788", "7788"},
		{"pass code = 7788", "7788"},
		{"pin_code: 4455", "4455"},
		{"pin code 4455 rejected", "4455"},
		{"PIN 4455 rejected", "4455"},
		{"PIN: 4455", "4455"},
		{"pin=4455", "4455"},
		{"pin number 4455", "4455"},
		{"keypad code #4455 too short", "4455"},
		{"code: 123", "123"},
		{"code 12345678 is too long", "12345678"},
		{"code=0042", "0042"},
		{"code (4455) in use", "4455"},
		{"code ABC123 invalid", "ABC123"},
		{"codes 1234, 5678 and 9012 conflict", "5678"},
		{"codes 1234, 5678 and 9012 conflict", "9012"},
		{"codes 1234/5678 conflict", "5678"},
		{"card_number 4111111111111111", "4111111111111111"},
		{"card_number 4111 1111 1111 1111", "1111 1111"},
		{"card number: 0A1B2C3D is not programmable", "0A1B2C3D"},
		{"card no. 99887766", "99887766"},
		{`{"code":"482913","access_method":"code"}`, "482913"},
		{`{"code": 482913}`, "482913"},
		{`{"pin_code":"4455"}`, "4455"},
		{`{"card_number":"99887766"}`, "99887766"},
		{`{\"code\":\"482913\"}`, "482913"},
		{"482913 is already used as an access code", "482913"},
		{"Room 12: 8841 already assigned as PIN", "8841"},
	} {
		got := seamclient.RedactCodes(tc.in)
		if strings.Contains(got, tc.secret) {
			t.Errorf("RedactCodes(%q) = %q: shows %q", tc.in, got, tc.secret)
		}
		if !strings.Contains(got, seamclient.Redacted) {
			t.Errorf("RedactCodes(%q) = %q: says nothing was hidden", tc.in, got)
		}
	}
}

func TestRedactCodes_KeepsWhatAnOperatorNeeds(t *testing.T) {
	for _, in := range []string{
		"acs_credential 66666666-6666-4666-8666-666666666666 not found",
		"seamclient: 404 acs_credential_not_found: Could not find an acs_credential with acs_credential_id 66666666-6666-4666-8666-666666666666 (seam-request-id 3f2a1b4c-9d8e-4f70-a1b2-c3d4e5f60718)",
		"seamclient: 400 invalid_input: access_code_id 12345678-1234-4abc-8def-0123456789ab is not a valid uuid",
		"Access code not found",
		"The code must be between 4 and 8 digits",
		"status code 409 from upstream",
		"error code 1001",
		"error_code: 1001",
		"HTTP 503 service unavailable (retry after 30 s)",
		"rate limit of 1000 requests exceeded",
		"acs_credential_already_assigned: credential is assigned to acs_user 33333333-3333-4333-8333-333333333333",
		"time 2026-11-23T14:05:00Z is in the future",
		"workspace ws_1234 is suspended",
		`code "acs_credential_not_found"`,
		"pin_code_type must be one of numeric, alphanumeric",
		"The access code 9b1c2d3e-1234-4abc-8def-0123456789ab was not found",
		"access code 12345678-1234-4abc-8def-0123456789ab was not found",
		"access code '12345678-1234-4abc-8def-0123456789ab' was not found",
		"codes 9b1c2d3e-1234-4abc-8def-0123456789ab and 12345678-1234-4abc-8def-0123456789ab conflict",
	} {
		if got := seamclient.RedactCodes(in); got != in {
			t.Errorf("RedactCodes(%q) = %q, want it unchanged", in, got)
		}
	}
}

func FuzzRedactCodes(f *testing.F) {
	f.Add("The code '482913' is already in use")
	f.Add("card_number 4111 1111 1111 1111, codes 1, 2 and ")
	f.Fuzz(func(t *testing.T, s string) {
		got := seamclient.RedactCodes(s)
		if seamclient.RedactCodes(got) != got {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, got, seamclient.RedactCodes(got))
		}
	})
}
