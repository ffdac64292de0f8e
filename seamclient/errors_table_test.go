package seamclient

import (
	"fmt"
	"net/http"
	"testing"
)

// TestClassify_ErrorTypeTable checks every row of the error-type table, and
// the status fallback for types it does not know and answers without one.
// A row added to typeClass without a row here fails the test.
func TestClassify_ErrorTypeTable(t *testing.T) {
	rows := []struct {
		typ    string
		status int
		want   Class
	}{
		{"invalid_input", 400, Permanent},
		{"missing_required_parameter", 400, Permanent},
		{"acs_credential_not_found", 404, Permanent},
		{"acs_user_not_found", 404, Permanent},
		{"user_identity_not_found", 404, Permanent},
		{"acs_system_not_found", 404, Permanent},
		{"not_found", 404, Permanent},
		{"method_not_allowed", 405, Permanent},
		{"payload_too_large", 413, Permanent},
		{"acs_credential_cannot_be_assigned", 409, Permanent},
		{"acs_credential_being_deleted", 409, Permanent},
		{ErrorTypeAlreadyAssigned, 409, Transient},
		{ErrorTypeNotAssigned, 400, Permanent},
		{"unauthorized", 401, Permanent},
		{"forbidden", 403, Permanent},
		{"credential_busy", 409, Transient},
		{"rate_limited", 429, Transient},
		{"internal_server_error", 500, Transient},
		{"service_unavailable", 503, Transient},
		{"bad_gateway", 502, Transient},
		{"gateway_timeout", 504, OutcomeUnknown},
		{"provider_timeout", 504, OutcomeUnknown},
	}
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.typ] = true
		t.Run(r.typ, func(t *testing.T) {
			err := fmt.Errorf("wrapped: %w", &APIError{StatusCode: r.status, Type: r.typ, RequestID: "req-1"})
			if got := Classify(err); got != r.want {
				t.Errorf("Classify(%d %s) = %v, want %v", r.status, r.typ, got, r.want)
			}
			if c, ok := typeClass[r.typ]; !ok || c != r.want {
				t.Errorf("typeClass[%s] = %v, %v", r.typ, c, ok)
			}
			// The type decides, whatever the status: a permanent type on a
			// 409 or a 503 is still permanent, and the reverse.
			for _, status := range []int{400, 409, 503} {
				if got := Classify(&APIError{StatusCode: status, Type: r.typ}); got != r.want {
					t.Errorf("Classify(%d %s) = %v, want %v: the type decides", status, r.typ, got, r.want)
				}
			}
		})
	}
	for typ := range typeClass {
		if !seen[typ] {
			t.Errorf("error type %q is in the table but has no test row", typ)
		}
	}

	// Types the table does not know, and answers without a type.
	for _, tc := range []struct {
		name   string
		status int
		typ    string
		want   Class
	}{
		{"unknown type on a 409: a conflict waiting will not resolve", http.StatusConflict, "acs_credential_conflict", Permanent},
		{"409 without a type (no Seam verdict)", http.StatusConflict, "", Transient},
		{"unknown type on a 400", 400, "something_new", Permanent},
		{"unknown type on a 422", 422, "something_new", Permanent},
		{"unknown type on a 404", 404, "something_new", Permanent},
		{"unknown type on a 408", 408, "something_new", Transient},
		{"unknown type on a 429", 429, "slow_down", Transient},
		{"unknown type on a 500", 500, "something_new", Transient},
		{"unknown type on a 503", 503, "something_new", Transient},
		{"400 without a type", 400, "", Permanent},
		{"401 without a type", 401, "", Permanent},
		{"408 without a type", 408, "", Transient},
		{"429 without a type", 429, "", Transient},
		{"502 gateway page", 502, "", Transient},
		{"504 gateway page", 504, "", Transient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &APIError{StatusCode: tc.status, Type: tc.typ}
			if got := Classify(e); got != tc.want {
				t.Errorf("Classify(%d %q) = %v, want %v", tc.status, tc.typ, got, tc.want)
			}
			if _, ok := typeClass[tc.typ]; ok {
				t.Errorf("typeClass[%q] found a row", tc.typ)
			}
		})
	}
}
