package seamclient_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keyworker/keyworker/seamclient"
)

func TestParseSync_FieldOfAnotherShapeLeavesTheOthers(t *testing.T) {
	for _, tc := range []struct {
		name, raw   string
		synced      bool
		warns, errs int
	}{
		{"warnings not an array", `{"is_latest_desired_state_synced_with_provider":true,"warnings":"x","errors":[{"error_code":"e"}]}`, true, 0, 1},
		{"errors not an array", `{"is_latest_desired_state_synced_with_provider":true,"warnings":[{"warning_code":"w"}],"errors":{}}`, true, 1, 0},
		{"synced not a bool", `{"is_latest_desired_state_synced_with_provider":"yes","warnings":[{"warning_code":"w"}],"errors":[{"error_code":"e"}]}`, false, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := seamclient.ParseSync(json.RawMessage(tc.raw))
			if err != nil {
				t.Fatal(err)
			}
			if (s.Synced != nil) != tc.synced || len(s.Warnings) != tc.warns || len(s.Errors) != tc.errs {
				t.Errorf("ParseSync(%s) = %+v", tc.raw, s)
			}
		})
	}
	for _, raw := range []string{"", " null ", `[]`, `"x"`, `{"warnings":[`} {
		_, err := seamclient.ParseSync(json.RawMessage(raw))
		if err == nil {
			t.Errorf("ParseSync(%q) accepted", raw)
		}
		if empty := strings.TrimSpace(raw) == "" || strings.TrimSpace(raw) == "null"; empty != errors.Is(err, seamclient.ErrNoCredential) {
			t.Errorf("ParseSync(%q) = %v", raw, err)
		}
	}
}

// Codes and messages reach outcomes and log lines: they are cleaned as an
// APIError's type and message are.
func TestParseSync_CleansCodesAndMessages(t *testing.T) {
	long := strings.Repeat("x", 5000)
	raw, err := json.Marshal(map[string]any{
		"acs_credential_id": "6f1c2a4e-8b3d-4c5e-9f70-1a2b3c4d5e6f",
		"warnings": []any{
			map[string]any{"warning_code": "being_deleted\n\x1b[31mFAKE LOG LINE"},
			map[string]any{"warning_code": long},
		},
		"errors": []any{
			map[string]any{"error_code": "provider_rejected\r\n\x1b[2J", "message": "The code '482913' was refused\nlevel=error msg=\x1b[31mforged\x7f" + long, "created_at": "2026-12-01T00:00:00.000Z\n"},
			map[string]any{"error_code": long + "\xff", "message": "bad \xffutf-8"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := seamclient.ParseSync(raw)
	if err != nil {
		t.Fatal(err)
	}
	clean := func(what, v string, limit int) {
		t.Helper()
		if len(v) > limit || !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Errorf("%s not cleaned (%d bytes): %.80q", what, len(v), v)
		}
	}
	if len(s.Warnings) != 2 || len(s.Errors) != 2 {
		t.Fatalf("ParseSync = %+v", s)
	}
	for _, w := range s.Warnings {
		clean("warning_code", w, 128)
	}
	for _, e := range s.Errors {
		clean("error_code", e.ErrorCode, 128)
		clean("message", e.Message, 1024)
		clean("created_at", e.CreatedAt, 128)
	}
	if !strings.HasPrefix(s.Warnings[0], "being_deleted ") || s.Errors[0].ErrorCode != "provider_rejected   [2J" {
		t.Errorf("codes = %q, %q", s.Warnings[0], s.Errors[0].ErrorCode)
	}
	if m := s.Errors[0].Message; strings.Contains(m, "482913") || !strings.HasPrefix(m, "The code '"+seamclient.Redacted+"' was refused level=error") {
		t.Errorf("message = %.80q", m)
	}
}
