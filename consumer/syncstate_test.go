package consumer

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

// TestProviderSync_StateFromTheCredential derives provider_sync from
// acs_credential objects, no NATS.
func TestProviderSync_StateFromTheCredential(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.FixedZone("x", 3600))
	w := func(codes ...string) string {
		var ws []map[string]string
		for _, c := range codes {
			ws = append(ws, map[string]string{"warning_code": c, "message": "m", "created_at": "2026-12-01T00:00:00.000Z"})
		}
		b, _ := json.Marshal(ws)
		return string(b)
	}
	for _, tc := range []struct {
		name     string
		cred     string
		state    string
		warnings int
		errors   int
	}{
		{"synced", `{"acs_credential_id":"c","is_latest_desired_state_synced_with_provider":true,"warnings":[],"errors":[]}`, schemas.SyncStateSynced, 0, 0},
		{"not yet", `{"acs_credential_id":"c","is_latest_desired_state_synced_with_provider":false,"warnings":[],"errors":[]}`, schemas.SyncStatePending, 0, 0},
		{"seam does not say (null)", `{"acs_credential_id":"c","is_latest_desired_state_synced_with_provider":null}`, schemas.SyncStatePending, 0, 0},
		{"field absent (id only, after a 404)", `{"acs_credential_id":"c"}`, schemas.SyncStatePending, 0, 0},
		{"waiting to be issued, not synced", `{"is_latest_desired_state_synced_with_provider":false,"warnings":` + w("waiting_to_be_issued") + `}`, schemas.SyncStatePending, 1, 0},
		{"synced, card still to encode", `{"is_latest_desired_state_synced_with_provider":true,"warnings":` + w("waiting_to_be_issued") + `}`, schemas.SyncStateSynced, 1, 0},
		{"errors", `{"is_latest_desired_state_synced_with_provider":false,"errors":[{"error_code":"provider_rejected","message":"no","created_at":"2026-12-01T00:00:00.000Z"}]}`, schemas.SyncStateFailed, 0, 1},
		{"errors even if synced", `{"is_latest_desired_state_synced_with_provider":true,"errors":[{"error_code":"x","message":"y"}]}`, schemas.SyncStateFailed, 0, 1},
		{"being deleted", `{"is_latest_desired_state_synced_with_provider":true,"warnings":` + w("being_deleted") + `}`, schemas.SyncStateFailed, 1, 0},
		{"needs to be reissued", `{"is_latest_desired_state_synced_with_provider":true,"warnings":` + w("needs_to_be_reissued") + `}`, schemas.SyncStateFailed, 1, 0},
		{"unknown issue", `{"is_latest_desired_state_synced_with_provider":false,"warnings":` + w("unknown_issue_with_acs_credential") + `}`, schemas.SyncStateFailed, 1, 0},
		{"a warning code from next year is kept, not fatal", `{"is_latest_desired_state_synced_with_provider":true,"warnings":` + w("schedule_modified", "brand_new_code") + `}`, schemas.SyncStateSynced, 2, 0},
		{"warnings of an odd shape", `{"is_latest_desired_state_synced_with_provider":true,"warnings":"none"}`, schemas.SyncStateSynced, 0, 0},
		{"no credential", ``, schemas.SyncStatePending, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := providerSync(json.RawMessage(tc.cred), at)
			if ps.State != tc.state || len(ps.Warnings) != tc.warnings || len(ps.Errors) != tc.errors {
				t.Fatalf("got %+v, want %s with %d warnings and %d errors", ps, tc.state, tc.warnings, tc.errors)
			}
			if !ps.CheckedAt.Equal(at) || ps.CheckedAt.Location() != time.UTC || ps.Warnings == nil || ps.Errors == nil {
				t.Fatalf("checked_at %v, warnings %v, errors %v: want UTC and non-nil lists", ps.CheckedAt, ps.Warnings, ps.Errors)
			}
		})
	}
	ps := providerSync(json.RawMessage(`{"warnings":`+w("schedule_modified", "brand_new_code")+`}`), at)
	if ps.Warnings[0] != "schedule_modified" || ps.Warnings[1] != "brand_new_code" {
		t.Fatalf("warnings %v, want the codes in order, as given", ps.Warnings)
	}
}
