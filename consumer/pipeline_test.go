package consumer_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	credA     = "66666666-6666-4666-8666-666666666601"
	userA     = "33333333-3333-4333-8333-333333333301"
	identityA = "44444444-4444-4444-8444-444444444401"
)

// visionlineCredential is an acs_credential with manufacturer metadata that
// must come back in the result untouched.
const visionlineCredential = `{
  "acs_credential_id": "66666666-6666-4666-8666-666666666601",
  "acs_system_id": "11111111-1111-4111-8111-111111111111",
  "connected_account_id": "22222222-2222-4222-8222-222222222222",
  "workspace_id": "00000000-0000-4000-8000-000000000000",
  "display_name": "Room 204 card",
  "access_method": "card",
  "card_number": "0042",
  "external_type": "visionline_card",
  "external_type_display_name": "Visionline Card",
  "created_at": "2026-11-01T10:00:00.000Z",
  "is_managed": true,
  "is_multi_phone_sync_credential": false,
  "errors": [],
  "warnings": [],
  "visionline_metadata": {"card_function_type": "guest", "joiner_acs_credential_ids": [], "guest_acs_entrance_ids": ["e1", "e2"], "card_id": "abc", "credential_id": "17", "is_valid": true, "auto_join": false}
}`

func TestHandle_CheckInAssignsAndResultCarriesSeamCredential(t *testing.T) {
	for _, shape := range []struct {
		name  string
		empty bool
	}{{"full answer", false}, {"empty answer then get", true}} {
		for _, who := range []struct {
			name string
			data schemas.GuestData
		}{
			{"acs_user_id", schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-1", PropertyID: "P-1"}},
			{"user_identity_id", schemas.GuestData{ACSCredentialID: credA, UserIdentityID: identityA, ReservationID: "R-1"}},
		} {
			t.Run(shape.name+"/"+who.name, func(t *testing.T) {
				var opts []seamtest.Option
				if shape.empty {
					opts = append(opts, seamtest.WithEmptySuccess())
				}
				h := newHarness(t, fastConfig(), opts...)
				if err := h.seam.AddCredential(json.RawMessage(visionlineCredential)); err != nil {
					t.Fatal(err)
				}
				h.seam.AddUser(userA)
				h.seam.AddUserIdentity(identityA)
				h.start(1)
				userID := who.data.ACSUserID + who.data.UserIdentityID

				h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-1", time.Now().Add(-time.Minute), who.data), "")
				got := h.waitOutcomes(1, 10*time.Second)
				if !h.seam.IsAssigned(credA, userID) {
					t.Fatal("credential not assigned in the fake")
				}
				o := got[0]
				if o.Subject != schemas.SubjectAssigned {
					t.Fatalf("outcome %s, want %s", o.Subject, schemas.SubjectAssigned)
				}
				want, _ := h.seam.Credential(credA)
				mustJSONEqual(t, o.Result.ACSCredential, want)
				if !bytes.Contains(o.Result.ACSCredential, []byte(`"visionline_metadata"`)) {
					t.Fatal("visionline_metadata lost")
				}
				if o.Result.SourceEventID != "in-1" || o.Result.ReservationID != "R-1" || o.Result.Attempts != 1 {
					t.Fatalf("result fields: %+v", o.Result)
				}
				if shape.empty && h.seam.Calls("/acs/credentials/get") == 0 {
					t.Fatal("an empty answer must be followed by /get")
				}

				h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out-1", time.Now(), who.data), "")
				got = h.waitOutcomes(2, 10*time.Second)
				if h.seam.IsAssigned(credA, userID) {
					t.Fatal("credential still assigned after check-out")
				}
				o = got[1]
				if o.Subject != schemas.SubjectUnassigned {
					t.Fatalf("outcome %s, want %s", o.Subject, schemas.SubjectUnassigned)
				}
				want, _ = h.seam.Credential(credA)
				mustJSONEqual(t, o.Result.ACSCredential, want)
				for _, o := range got {
					if err := mustValidator(t).Validate(o.Subject, o.Raw); err != nil {
						t.Fatalf("outcome does not match its schema: %v", err)
					}
				}
			})
		}
	}
}

func mustValidator(t *testing.T) *schemas.Validator {
	t.Helper()
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestHandle_SameEventThreeTimesHasOneOutcomeAndOneEffect(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}
	doc := event(schemas.SubjectCheckedIn, "dup-1", time.Now(), d)
	h.publish(schemas.SubjectCheckedIn, doc, "m-1")
	h.publish(schemas.SubjectCheckedIn, doc, "m-1") // deduplicated by the stream
	h.publish(schemas.SubjectCheckedIn, doc, "m-2") // a second copy the worker must recognise
	h.start(2)
	h.waitDrained(10 * time.Second)
	got := h.outcomes()
	if len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("want exactly one credential.assigned, got %d outcomes: %v", len(got), subjects(got))
	}
	if n := h.seam.Effects(credA, userA); n != 1 {
		t.Fatalf("fake saw %d effective assigns, want 1", n)
	}
}

func TestHandle_RedeliveryAfterLostAckHasOneOutcome(t *testing.T) {
	cfg := fastConfig()
	cfg.AckWait = 500 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "lost-ack", time.Now(), d), "")

	// A replica handles the message completely, then dies before acking.
	cons, err := h.js.Consumer(t.Context(), h.cfg.InputStream, h.cfg.Durable)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	msg := <-batch.Messages()
	if msg == nil {
		t.Fatal("no message fetched")
	}
	if out := h.newWorker().Handle(t.Context(), msg); out.Subject != schemas.SubjectAssigned {
		t.Fatalf("first handling: %+v", out)
	}

	h.start(1) // the redelivery after AckWait reaches a live replica
	h.waitDrained(10 * time.Second)
	got := h.outcomes()
	if len(got) != 1 {
		t.Fatalf("want one outcome, got %v", subjects(got))
	}
	if n := h.seam.Effects(credA, userA); n != 1 {
		t.Fatalf("fake saw %d effective assigns, want 1", n)
	}
	if n := h.seam.Calls("/acs/credentials/assign"); n != 1 {
		t.Fatalf("fake saw %d assign calls, want 1: the redelivery must not call Seam", n)
	}
}

func subjects(os []outcome) []string {
	var s []string
	for _, o := range os {
		s = append(s, fmt.Sprintf("%s(%s)", o.Subject, o.SourceID()))
	}
	return s
}
