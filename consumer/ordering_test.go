package consumer_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

func pairIDs(i int) (cred, user string) {
	return fmt.Sprintf("66666666-6666-4666-8666-%012d", i), fmt.Sprintf("33333333-3333-4333-8333-%012d", i)
}

func TestHandle_CheckInOlderThanAppliedCheckOutIsSkipped(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.start(1)
	d := schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-9"}
	t0 := time.Now().Add(-time.Hour)
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out", t0.Add(time.Minute), d), "")
	h.waitOutcomes(1, 10*time.Second)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in", t0, d), "")
	got := h.waitOutcomes(2, 10*time.Second)
	if got[1].Subject != schemas.SubjectSkipped || got[1].Skip.Reason != schemas.SkipReasonCheckedOut || got[1].Skip.SourceEventID != "in" ||
		got[1].Skip.SupersededByEventID != "out" {
		t.Fatalf("want credential.skipped (checked_out, superseded by out) for the late check-in, got %s %+v", got[1].Subject, got[1].Skip)
	}
	if got[1].Skip.ReservationID != "R-9" {
		t.Fatal("skip must carry the request fields")
	}
	if n := h.seam.Calls(assignPath); n != 0 {
		t.Fatalf("a stale check-in reached Seam: %d assign calls", n)
	}
	if h.seam.IsAssigned(credA, userA) {
		t.Fatal("pair ends assigned after check-out")
	}
}

func TestHandle_ConcurrentCheckInAndCheckOutOnTwoReplicas(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate(), seamtest.WithLatency(200*time.Millisecond))
	h.start(2)
	const pairs = 20
	t0 := time.Now().Add(-time.Hour)
	for i := range pairs {
		cred, user := pairIDs(i)
		d := schemas.GuestData{ACSCredentialID: cred, ACSUserID: user}
		in := event(schemas.SubjectCheckedIn, fmt.Sprintf("in-%d", i), t0, d)
		out := event(schemas.SubjectCheckedOut, fmt.Sprintf("out-%d", i), t0.Add(time.Minute), d)
		if i%2 == 0 {
			// Half the pairs have the check-out first in the stream.
			h.publish(schemas.SubjectCheckedOut, out, "")
			h.publish(schemas.SubjectCheckedIn, in, "")
			continue
		}
		h.publish(schemas.SubjectCheckedIn, in, "")
		h.publish(schemas.SubjectCheckedOut, out, "")
	}
	h.waitDrained(30 * time.Second)
	if n := h.seam.MaxConcurrentPerCredential(); n != 1 {
		t.Fatalf("%d Seam calls were in flight at once for one credential, want 1", n)
	}
	for i := range pairs {
		cred, user := pairIDs(i)
		if h.seam.IsAssigned(cred, user) {
			t.Errorf("pair %d ends assigned after its check-out", i)
		}
	}
	got := h.outcomes()
	if len(got) != 2*pairs {
		t.Fatalf("%d outcomes for %d events", len(got), 2*pairs)
	}
	for _, o := range got {
		if o.DL.OriginalSubject != "" {
			t.Errorf("event %s dead-lettered: %s", o.SourceID(), o.DL.Error.Message)
		}
	}
}

func TestHandle_TwoReplicasThousandMixedEventsOneOutcomeEach(t *testing.T) {
	cfg := fastConfig()
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	const pairs = 500
	t0 := time.Now().Add(-time.Hour)
	type ev struct {
		subject, id string
		doc         []byte
	}
	var evs []ev
	for i := range pairs {
		cred, user := pairIDs(i)
		d := schemas.GuestData{ACSCredentialID: cred, ACSUserID: user}
		in, out := fmt.Sprintf("in-%d", i), fmt.Sprintf("out-%d", i)
		evs = append(evs,
			ev{schemas.SubjectCheckedIn, in, event(schemas.SubjectCheckedIn, in, t0, d)},
			ev{schemas.SubjectCheckedOut, out, event(schemas.SubjectCheckedOut, out, t0.Add(time.Minute), d)})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	h.start(2)
	start := time.Now()
	for _, e := range evs {
		h.publish(e.subject, e.doc, "")
	}
	h.waitDrained(60 * time.Second)
	t.Logf("%d events through two replicas in %s", len(evs), time.Since(start).Round(time.Millisecond))

	perID := map[string]int{}
	bySubject := map[string]int{}
	for _, o := range h.outcomes() {
		perID[o.SourceID()]++
		bySubject[o.Subject]++
	}
	for _, e := range evs {
		if perID[e.id] != 1 {
			t.Errorf("event %s has %d outcomes", e.id, perID[e.id])
		}
	}
	t.Logf("outcomes: %v", bySubject)
	for i := range pairs {
		cred, user := pairIDs(i)
		if h.seam.IsAssigned(cred, user) {
			t.Errorf("pair %d ends assigned", i)
		}
		if n := h.seam.Effects(cred, user); n > 2 {
			t.Errorf("pair %d: %d effects, at most 2 expected", i, n)
		}
	}
	// A check-out handled before its check-in finds the guest without the
	// card (not_holder) and makes the older check-in stale (checked_out):
	// every check-out is either unassigned or not_holder, and as many
	// check-ins are assigned as check-outs unassigned.
	reasons := map[string]int{}
	for _, o := range h.outcomes() {
		if o.Subject == schemas.SubjectSkipped {
			reasons[o.Skip.Reason]++
		}
	}
	if bySubject[schemas.SubjectUnassigned]+reasons[schemas.SkipReasonNotHolder] != pairs {
		t.Errorf("%d unassigned and %d not_holder outcomes, want %d in all", bySubject[schemas.SubjectUnassigned], reasons[schemas.SkipReasonNotHolder], pairs)
	}
	if bySubject[schemas.SubjectAssigned] != bySubject[schemas.SubjectUnassigned] || reasons[schemas.SkipReasonCheckedOut] != reasons[schemas.SkipReasonNotHolder] {
		t.Errorf("outcomes %v, skip reasons %v: each check-out first must pair with a checked_out check-in", bySubject, reasons)
	}
}
