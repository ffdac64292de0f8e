package schemas_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

func TestValidate_ResultWithProviderSync(t *testing.T) {
	v := newValidator(t)
	result := func(ps any) []byte {
		data := map[string]any{
			"acs_credential_id":   "66666666-6666-4666-8666-666666666666",
			"acs_user_id":         "33333333-3333-4333-8333-333333333333",
			"acs_credential":      map[string]any{"acs_credential_id": "66666666-6666-4666-8666-666666666666"},
			"attempts":            1,
			"source_event_id":     "evt-1",
			"source_event_source": "pms://test",
		}
		if ps != nil {
			data["provider_sync"] = ps
		}
		doc, err := schemas.NewEnvelope(schemas.SubjectAssigned, "keyworker", "id-1", "R-1", time.Now(), data)
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	typed := &schemas.ProviderSync{State: schemas.SyncStateFailed, CheckedAt: time.Now(), Warnings: []string{"waiting_to_be_issued", "a_code_from_next_year"},
		Errors: []schemas.ProviderSyncError{{ErrorCode: "provider_rejected", Message: "no", CreatedAt: "2026-12-01T00:00:00.000Z"}}}
	for _, tc := range []struct {
		name  string
		ps    any
		valid bool
	}{
		{"without it (older outcomes)", nil, true},
		{"typed, unknown warning code kept", typed, true},
		{"pending, empty lists", map[string]any{"state": "pending", "checked_at": "2026-12-01T00:00:00Z", "warnings": []string{}, "errors": []any{}}, true},
		{"no state", map[string]any{"checked_at": "2026-12-01T00:00:00Z", "warnings": []string{}, "errors": []any{}}, false},
		{"checked_at not a time", map[string]any{"state": "synced", "checked_at": "yesterday", "warnings": []string{}, "errors": []any{}}, false},
		{"warning not a code", map[string]any{"state": "synced", "checked_at": "2026-12-01T00:00:00Z", "warnings": []any{map[string]any{}}, "errors": []any{}}, false},
		{"error without error_code", map[string]any{"state": "failed", "checked_at": "2026-12-01T00:00:00Z", "warnings": []string{}, "errors": []any{map[string]any{"message": "x"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Validate(schemas.SubjectAssigned, result(tc.ps))
			if (err == nil) != tc.valid {
				t.Fatalf("valid = %v (%v), want %v", err == nil, err, tc.valid)
			}
			if err == nil || tc.valid {
				return
			}
			if !strings.Contains(err.Error(), "provider_sync") {
				t.Errorf("error does not name provider_sync: %v", err)
			}
		})
	}
	// Round trip of the Go type.
	b, _ := json.Marshal(typed)
	var back schemas.ProviderSync
	if err := json.Unmarshal(b, &back); err != nil || back.State != typed.State || len(back.Warnings) != 2 || back.Errors[0] != typed.Errors[0] {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}
