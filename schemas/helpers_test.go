package schemas_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
)

const (
	credID     = "0b2e8f34-7c51-4d8a-9e6f-3a1c5d7b9e20"
	acsUserID  = "8d4f1a62-3b9e-4c7d-a215-6e0f9b3c8d41"
	identityID = "3f6e9b24-5c1a-4d7e-8b93-0a2c4e6f8d17"
	pmsSource  = "//pms.example-hotels.com/properties/h-1042"
)

func newValidator(t testing.TB) *schemas.Validator {
	t.Helper()
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatalf("NewValidator: %v", err)
	}
	return v
}

// guestEvent returns a valid guest.checked_in document as a map, changed
// by mutate, marshalled.
func guestEvent(t testing.TB, mutate func(ev, data map[string]any)) []byte {
	t.Helper()
	data := map[string]any{
		"acs_credential_id": credID,
		"acs_user_id":       acsUserID,
		"reservation_id":    "R-2025-0601-7781",
		"property_id":       "h-1042",
	}
	ev := map[string]any{
		"specversion":     "1.0",
		"id":              "6f1c2e0a-5b7d-4c1e-9a34-2f8d1b7e9c10",
		"source":          pmsSource,
		"type":            schemas.SubjectCheckedIn,
		"subject":         "R-2025-0601-7781",
		"time":            "2025-06-01T14:03:27Z",
		"datacontenttype": "application/json",
		"data":            data,
	}
	if mutate != nil {
		mutate(ev, data)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatalf("marshal event: %v", err)
	}
	return b
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}
