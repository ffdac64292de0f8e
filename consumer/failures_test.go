package consumer_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const assignPath = "/acs/credentials/assign"

func assignTimes(h *harness) []time.Time {
	var ts []time.Time
	for _, r := range h.seam.Requests() {
		if r.Path == assignPath {
			ts = append(ts, r.At)
		}
	}
	return ts
}

func TestHandle_RetryAfterIsHonoured(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.FailNext(1, assignPath, seamtest.Status429("2"))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "ra-1", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 15*time.Second)
	if got[0].Subject != schemas.SubjectAssigned || got[0].Result.Attempts != 2 {
		t.Fatalf("want assigned after 2 attempts, got %s %+v", got[0].Subject, got[0].Result)
	}
	ts := assignTimes(h)
	if len(ts) != 2 {
		t.Fatalf("%d assign calls, want 2", len(ts))
	}
	if gap := ts[1].Sub(ts[0]); gap < 2*time.Second {
		t.Fatalf("retried %s after a 429 with Retry-After: 2", gap)
	}
}

func TestHandle_HTML503IsRetriedAndSucceeds(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.FailNext(2, assignPath, seamtest.HTML(503))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "html-1", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 10*time.Second)
	if got[0].Subject != schemas.SubjectAssigned || got[0].Result.Attempts != 3 {
		t.Fatalf("want assigned after 3 attempts, got %s %+v", got[0].Subject, got[0].Result)
	}
	if !h.seam.IsAssigned(credA, userA) {
		t.Fatal("not assigned in the fake")
	}
}

func TestHandle_Seam4xxDeadLettersAtOnce(t *testing.T) {
	for _, tc := range []struct {
		status int
		typ    string
	}{{400, "invalid_input"}, {404, "acs_credential_not_found"}} {
		t.Run(tc.typ, func(t *testing.T) {
			h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
			h.seam.FailNext(1, assignPath, seamtest.SeamError(tc.status, tc.typ))
			h.start(1)
			doc := event(schemas.SubjectCheckedIn, "perm-1", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA})
			h.publish(schemas.SubjectCheckedIn, doc, "")
			got := h.waitOutcomes(1, 10*time.Second)
			h.waitDrained(5 * time.Second)
			dl := got[0].DL
			if got[0].Subject != "deadletter.guest.checked_in" || dl.Error.Kind != schemas.ErrorKindPermanent {
				t.Fatalf("want a permanent dead letter, got %s %+v", got[0].Subject, dl.Error)
			}
			if dl.Error.HTTPStatus != tc.status || dl.Error.SeamErrorType != tc.typ || dl.Error.SeamRequestID == "" {
				t.Fatalf("dead letter error lacks Seam details: %+v", dl.Error)
			}
			if dl.Attempts != 1 || h.seam.Calls(assignPath) != 1 {
				t.Fatalf("a permanent error must not be retried: attempts %d, calls %d", dl.Attempts, h.seam.Calls(assignPath))
			}
			if orig, err := dl.Original(); err != nil || !bytes.Equal(orig, doc) {
				t.Fatalf("original event not preserved: %v", err)
			}
			if len(h.outcomes()) != 1 {
				t.Fatal("more than one outcome")
			}
		})
	}
}

func TestHandle_FaultOutlastingRetryForDeadLettersRetriesExhausted(t *testing.T) {
	cfg := fastConfig()
	cfg.RetryFor = time.Second
	cfg.RetryBudget = 200 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.seam.FailNext(1000, assignPath, seamtest.HTML(503))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "exh-1", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 20*time.Second)
	dl := got[0].DL
	if dl.Error.Kind != schemas.ErrorKindRetriesExhausted || dl.Error.HTTPStatus != 503 || !strings.Contains(dl.Error.Message, "KEYWORKER_RETRY_FOR") {
		t.Fatalf("want retries_exhausted after 503s for RetryFor, got %+v", dl.Error)
	}
	calls := h.seam.Calls(assignPath)
	if dl.Attempts != calls || dl.Attempts < 2 {
		t.Fatalf("attempts %d, fake saw %d calls", dl.Attempts, calls)
	}
	if span := dl.LastAttemptAt.Sub(*dl.FirstAttemptAt); span < cfg.RetryFor/2 {
		t.Fatalf("attempts spanned %s, want about RetryFor (%s)", span, cfg.RetryFor)
	}
	var req map[string]string
	if err := json.Unmarshal(dl.Request, &req); err != nil || req["acs_credential_id"] != credA || req["acs_user_id"] != userA {
		t.Fatalf("dead letter request body: %s (%v)", dl.Request, err)
	}
	if dl.FirstAttemptAt == nil || dl.LastAttemptAt == nil || dl.LastAttemptAt.Before(*dl.FirstAttemptAt) {
		t.Fatalf("attempt times: %v %v", dl.FirstAttemptAt, dl.LastAttemptAt)
	}
}

func TestHandle_InvalidEventsDeadLetterWithOriginalBytes(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	now := time.Now().UTC().Format(time.RFC3339)
	cases := map[string][]byte{
		"invalid JSON":      []byte("{\"specversion\": \"1.0\", \"id\": \n oops"),
		"binary":            {0xff, 0xfe, 0x00, 0x01, '{'},
		"schema violation":  []byte(`{"specversion":"1.0","id":"s-1","source":"pms","type":"guest.checked_in","time":"` + now + `","data":{"acs_credential_id":"not-a-uuid","acs_user_id":"` + userA + `"}}`),
		"both user ids":     []byte(`{"specversion":"1.0","id":"s-2","source":"pms","type":"guest.checked_in","time":"` + now + `","data":{"acs_credential_id":"` + credA + `","acs_user_id":"` + userA + `","user_identity_id":"` + identityA + `"}}`),
		"neither user id":   []byte("{\n  \"specversion\": \"1.0\",\n  \"id\": \"s-3\", \"source\": \"pms\", \"type\": \"guest.checked_in\",\n  \"time\": \"" + now + "\", \"data\": {\"acs_credential_id\": \"" + credA + "\"}\n}"),
		"type not subject":  []byte(`{"specversion":"1.0","id":"s-4","source":"pms","type":"guest.checked_out","time":"` + now + `","data":{"acs_credential_id":"` + credA + `","acs_user_id":"` + userA + `"}}`),
		"far future":        event(schemas.SubjectCheckedIn, "s-5", time.Now().Add(time.Hour), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}),
		"json string value": []byte(`"just a string"`),
	}
	seqs := map[uint64]string{}
	for name, doc := range cases {
		seqs[h.publish(schemas.SubjectCheckedIn, doc, "")] = name
	}
	h.start(1)
	got := h.waitOutcomes(len(cases), 10*time.Second)
	h.waitDrained(5 * time.Second)
	if len(h.outcomes()) != len(cases) {
		t.Fatalf("want %d outcomes", len(cases))
	}
	for _, o := range got {
		name := seqs[o.DL.OriginalStreamSequence]
		if o.DL.Error.Kind != schemas.ErrorKindInvalidEvent {
			t.Errorf("%s: kind %q, want invalid_event (%s)", name, o.DL.Error.Kind, o.Subject)
			continue
		}
		orig, err := o.DL.Original()
		if err != nil || !bytes.Equal(orig, cases[name]) {
			t.Errorf("%s: original not preserved exactly: %q (%v)", name, orig, err)
		}
		if o.DL.Error.Message == "" {
			t.Errorf("%s: no error message", name)
		}
	}
	if n := h.seam.Calls(""); n != 0 {
		t.Fatalf("invalid events reached Seam %d times", n)
	}
}

func TestHandle_HugeEventDeadLettersWithoutOriginal(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	// Close to the 1 MiB max payload: the dead letter cannot carry it.
	doc := append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), 1020*1024)...)
	doc = append(doc, `"}`...)
	seq := h.publish(schemas.SubjectCheckedIn, doc, "")
	h.start(1)
	got := h.waitOutcomes(1, 10*time.Second)
	dl := got[0].DL
	if dl.Error.Kind != schemas.ErrorKindInvalidEvent || dl.OriginalEventEncoding != schemas.EncodingOmitted {
		t.Fatalf("want invalid_event with the original omitted, got %+v encoding %s", dl.Error, dl.OriginalEventEncoding)
	}
	if dl.OriginalStreamSequence != seq || dl.OriginalSize != len(doc) || len(dl.OriginalSHA256) != 64 {
		t.Fatalf("dead letter must point at the original: %+v", dl)
	}
}

func TestHandle_A429PausesEveryRequestOfTheProcess(t *testing.T) {
	cfg := fastConfig()
	cfg.Concurrency = 1
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.seam.FailNext(1, assignPath, seamtest.Status429("2"))
	h.start(1)
	credB, userB := pairIDs(7)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "slow", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "other", time.Now(), schemas.GuestData{ACSCredentialID: credB, ACSUserID: userB}), "")
	got := h.waitOutcomes(2, 15*time.Second)
	for _, o := range got {
		if o.Subject != schemas.SubjectAssigned {
			t.Fatalf("%s: %s", o.SourceID(), o.Subject)
		}
	}
	ts := assignTimes(h)
	if len(ts) != 3 {
		t.Fatalf("%d assign calls, want 3 (the 429, its retry, the other event's)", len(ts))
	}
	// Knocking again during a rate limit gets a client throttled harder:
	// the other event, though it took the slot the first gave back, waits too.
	for _, at := range ts[1:] {
		if gap := at.Sub(ts[0]); gap < 1900*time.Millisecond {
			t.Fatalf("a call %s after a 429 with Retry-After: 2", gap)
		}
	}
}

func TestHandle_RefusalAfterAnUnansweredAppliedCallIsConfirmedNotDeadLettered(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.FailNext(1, assignPath, seamtest.AppliedThenDrop())
	h.seam.FailNext(1, assignPath, seamtest.SeamError(400, "invalid_input"))
	h.seam.FailNext(1, "/acs/credentials/get", seamtest.HTML(503)) // the first read after the drop fails too
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "applied-400", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 10*time.Second)
	if got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("the change was applied: want credential.assigned, got %s %+v", got[0].Subject, got[0].DL.Error)
	}
	if n := h.seam.Effects(credA, userA); n != 1 || !h.seam.IsAssigned(credA, userA) {
		t.Fatalf("effects %d, assigned %v", n, h.seam.IsAssigned(credA, userA))
	}
}

func TestHandle_RefusalThatCannotBeCheckedIsRetriedNotDeadLettered(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.FailNext(1, assignPath, seamtest.AppliedThenDrop())
	h.seam.FailNext(1, assignPath, seamtest.SeamError(400, "invalid_input"))
	h.seam.FailNext(2, "/acs/credentials/get", seamtest.HTML(503)) // neither read after the drop and the 400 works
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "unchecked-400", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 10*time.Second)
	if got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("the change was applied: want credential.assigned, got %s %+v", got[0].Subject, got[0].DL.Error)
	}
	if n := h.seam.Effects(credA, userA); n != 1 {
		t.Fatalf("effects %d, want 1", n)
	}
}
