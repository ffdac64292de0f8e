package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// Tests of the ordering rule per credential: the card follows the guest.

const (
	credRoom = "7777abcd-7777-4777-8777-7777777777ef"
	guestOne = "4444abcd-4444-4444-8444-4444444444ef"
	guestTwo = "44444444-4444-4444-8444-444444444402"
)

// downSeam refuses connections while down is set, as an unreachable Seam would.
type downSeam struct {
	consumer.SeamCaller
	down atomic.Bool
}

var errRefused = errors.New("connect: connection refused")

func (s *downSeam) fail(path string) error {
	return &seamclient.TransportError{Path: path, Err: errRefused}
}

func (s *downSeam) Assign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	if s.down.Load() {
		return nil, s.fail(seamclient.PathAssign)
	}
	return s.SeamCaller.Assign(ctx, r)
}

func (s *downSeam) Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	if s.down.Load() {
		return nil, s.fail(seamclient.PathUnassign)
	}
	return s.SeamCaller.Unassign(ctx, r)
}

func (s *downSeam) Get(ctx context.Context, id string) (*seamclient.Response, error) {
	if s.down.Load() {
		return nil, s.fail(seamclient.PathGet)
	}
	return s.SeamCaller.Get(ctx, id)
}

func outcomeOf(t *testing.T, got []outcome, id string) outcome {
	t.Helper()
	for _, o := range got {
		if o.SourceID() == id {
			return o
		}
	}
	t.Fatalf("no outcome for %s in %v", id, subjects(got))
	return outcome{}
}

func TestHandle_IDsCompareWithoutRegardToCase(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.start(1)
	t0 := time.Now().Add(-time.Hour)
	lower := schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestOne}
	upper := schemas.GuestData{ACSCredentialID: strings.ToUpper(credRoom), ACSUserID: strings.ToUpper(guestOne)}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in", t0, lower), "")
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out", t0.Add(2*time.Minute), lower), "")
	h.waitOutcomes(2, 10*time.Second)
	// An older check-in of the same guest, spelt in upper case.
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-upper", t0.Add(time.Minute), upper), "")
	got := h.waitOutcomes(3, 10*time.Second)
	if o := outcomeOf(t, got, "in-upper"); o.Subject != schemas.SubjectSkipped || o.Skip.Reason != schemas.SkipReasonCheckedOut {
		t.Fatalf("older upper-case check-in: %s %+v, want credential.skipped (checked_out)", o.Subject, o.Skip)
	}
	if h.seam.IsAssigned(credRoom, guestOne) {
		t.Fatal("the guest checked out, yet an older check-in in upper case assigned the key again")
	}
	if o := outcomeOf(t, got, "in-upper"); o.Skip.ACSCredentialID != credRoom || o.Skip.ACSUserID != guestOne {
		t.Fatalf("skip carries %s / %s, want the ids in lower case", o.Skip.ACSCredentialID, o.Skip.ACSUserID)
	}
}

func TestHandle_DeadLetteredCheckOutStillMakesOlderCheckInsStale(t *testing.T) {
	cfg := fastConfig()
	cfg.RetryFor = 500 * time.Millisecond // the outage outlasts it
	cfg.RetryBudget = 100 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	seam := &downSeam{SeamCaller: h.seamClient()}
	h.runWorkerWith(seam)
	t0 := time.Now().Add(-time.Hour)
	d := schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestOne}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in", t0, d), "")
	h.waitOutcomes(1, 10*time.Second)

	seam.down.Store(true) // Seam unreachable: the check-out is dead-lettered
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out", t0.Add(10*time.Minute), d), "")
	got := h.waitOutcomes(2, 20*time.Second)
	if o := outcomeOf(t, got, "out"); o.DL.Error.Kind != schemas.ErrorKindRetriesExhausted {
		t.Fatalf("check-out during the outage: %s %+v, want a retries_exhausted dead letter", o.Subject, o.DL.Error)
	}

	seam.down.Store(false) // Seam is back; an older check-in of the guest arrives
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-again", t0.Add(5*time.Minute), d), "")
	got = h.waitOutcomes(3, 10*time.Second)
	if o := outcomeOf(t, got, "in-again"); o.Subject != schemas.SubjectSkipped || o.Skip.SupersededByEventID != "out" {
		t.Fatalf("older check-in: %s %+v, want skipped, superseded by the dead-lettered check-out", o.Subject, o.Skip)
	}
	if h.seam.IsAssigned(credRoom, guestOne) {
		t.Fatal("a guest who checked out ends with the key")
	}
}

// replay re-publishes a dead letter's original event as `worker dlq replay` does.
func (h *harness) replay(o outcome) {
	h.t.Helper()
	orig, err := o.DL.Original()
	if err != nil {
		h.t.Fatal(err)
	}
	msg := &nats.Msg{Subject: o.DL.OriginalSubject, Data: orig, Header: nats.Header{}}
	msg.Header.Set(schemas.HeaderReplayOf, strconv.FormatUint(o.Seq, 10))
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		h.t.Fatal(err)
	}
}

func TestHandle_ReplayedDeadLettersOfAPreviousGuestLeaveTheCurrentGuestHolding(t *testing.T) {
	cfg := crashConfig()                  // short leases: the check-out waits out its check-in's
	cfg.RetryFor = 500 * time.Millisecond // the outage outlasts it
	cfg.RetryBudget = 100 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	seam := &downSeam{SeamCaller: h.seamClient()}
	h.runWorkerWith(seam)
	t0 := time.Now().Add(-3 * time.Hour)
	one := schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestOne}
	two := schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestTwo}

	seam.down.Store(true) // guest one's stay is dead-lettered whole
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "one-in", t0, one), "")
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "one-out", t0.Add(time.Hour), one), "")
	dead := h.waitOutcomes(2, 20*time.Second)
	seam.down.Store(false)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "two-in", t0.Add(2*time.Hour), two), "")
	h.waitOutcomes(3, 10*time.Second)
	if !h.seam.IsAssigned(credRoom, guestTwo) {
		t.Fatal("the next guest's check-in did not assign the key")
	}
	for _, o := range dead {
		if o.DL.OriginalSubject == "" {
			t.Fatalf("want guest one's events dead-lettered, got %s", o.Subject)
		}
		h.replay(o)
	}
	start := time.Now()
	got := h.waitOutcomes(5, 10*time.Second)
	t.Logf("replays handled in %s", time.Since(start))
	replayed := 0
	for _, o := range got {
		if o.Result.ReplayOf != 0 || o.DL.ReplayOf != 0 {
			t.Errorf("replayed %s: %s, want credential.skipped", o.SourceID(), o.Subject)
		}
		if o.Skip.ReplayOf != 0 {
			replayed++
		}
	}
	if replayed != 2 {
		t.Errorf("%d replays skipped, want 2: %v", replayed, subjects(got))
	}
	if !h.seam.IsAssigned(credRoom, guestTwo) {
		t.Fatal("replaying the previous guest's dead letters left the current guest without the key")
	}
}

func TestHandle_RateLimitWaitKeepsTheCredentialLease(t *testing.T) {
	cfg := crashConfig() // leases of 2 s: waiting for the limiter outlasts them
	cfg.Concurrency = 32
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.start(2, consumer.WithSeamRateLimit(3))
	t0 := time.Now().Add(-time.Hour)
	const rooms = 8
	for i := range rooms {
		cred := fmt.Sprintf("77777777-7777-4777-8777-%012d", i)
		for g, user := range []string{guestOne, guestTwo} {
			d := schemas.GuestData{ACSCredentialID: cred, ACSUserID: user}
			at := t0.Add(time.Duration(g) * 10 * time.Minute)
			h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, fmt.Sprintf("in-%d-%d", i, g), at, d), "")
			h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, fmt.Sprintf("out-%d-%d", i, g), at.Add(5*time.Minute), d), "")
		}
	}
	h.waitDrained(60 * time.Second)
	if n := h.seam.MaxConcurrentPerCredential(); n != 1 {
		t.Fatalf("%d Seam calls in flight at once for one credential: a lease ran out while its holder waited for the limiter", n)
	}
	perID := map[string]int{}
	for _, o := range h.outcomes() {
		perID[o.SourceID()]++
	}
	if len(perID) != 4*rooms {
		t.Fatalf("%d events with an outcome, want %d", len(perID), 4*rooms)
	}
	for id, n := range perID {
		if n != 1 {
			t.Errorf("%s: %d outcomes", id, n)
		}
	}
	for i := range rooms {
		cred := fmt.Sprintf("77777777-7777-4777-8777-%012d", i)
		if h.seam.IsAssigned(cred, guestOne) || h.seam.IsAssigned(cred, guestTwo) {
			t.Errorf("room %d: a guest who checked out holds the key", i)
		}
	}
}

func TestHandle_EmptySuccessAndAVanishedCredentialStillPublishTheResult(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate(), seamtest.WithEmptySuccess())
	h.seam.FailNext(1, seamtest.PathGet, seamtest.SeamError(404, "acs_credential_not_found"))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in", time.Now(), schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestOne}), "")
	got := h.waitOutcomes(1, 10*time.Second)
	if got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("Seam applied the change, then /get said 404: %s %+v, want credential.assigned", got[0].Subject, got[0].DL.Error)
	}
	mustJSONEqual(t, got[0].Result.ACSCredential, []byte(`{"acs_credential_id":"`+credRoom+`"}`))
	if !h.seam.IsAssigned(credRoom, guestOne) {
		t.Fatal("not assigned")
	}
}

func TestHandle_StateBucketHoldsOneKeyPerCredential(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.start(1)
	t0 := time.Now().Add(-24 * time.Hour)
	const rooms, stays = 10, 6
	for s := range stays {
		for i := range rooms {
			d := schemas.GuestData{ACSCredentialID: fmt.Sprintf("77777777-7777-4777-8777-%012d", i), ACSUserID: fmt.Sprintf("44444444-4444-4444-8444-%06d%06d", i, s)}
			at := t0.Add(time.Duration(s) * time.Hour)
			h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, fmt.Sprintf("in-%d-%d", i, s), at, d), "")
			h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, fmt.Sprintf("out-%d-%d", i, s), at.Add(30*time.Minute), d), "")
		}
	}
	h.waitDrained(30 * time.Second)
	kv, err := h.js.KeyValue(t.Context(), h.cfg.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != rooms {
		t.Fatalf("%d keys after %d stays on %d credentials, want one per credential", len(keys), rooms*stays, rooms)
	}
}

func TestHandle_CrashAfterPublishingThenRestartPastTheDuplicateWindowPublishesNoSecondOutcome(t *testing.T) {
	cfg := crashConfig()
	cfg.DuplicateWindow = time.Second
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credRoom, ACSUserID: guestOne}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "crash-after-result", time.Now(), d), "")

	// The first delivery publishes its result and dies before recording it.
	h.handleAndCrashAfterPublish("credential.")
	first := h.outcomes()
	if len(first) != 1 || first[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("the crashed delivery did not publish its result: %v", subjects(first))
	}
	// The restart comes after the duplicate window: a re-publish with the
	// same Nats-Msg-Id would no longer be dropped by the stream.
	time.Sleep(2 * cfg.DuplicateWindow)
	h.start(1)
	h.waitDrained(20 * time.Second)
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("want only the result already published, got %v", subjects(got))
	}
	if !h.seam.IsAssigned(credRoom, guestOne) {
		t.Fatal("not assigned")
	}
}

func TestHandle_SameGarbageOnTwoSubjectsGetsTwoDeadLetters(t *testing.T) {
	h := newHarness(t, fastConfig())
	h.start(1)
	garbage := []byte(`{"not": "a cloudevent"`)
	h.publish(schemas.SubjectCheckedIn, garbage, "")
	h.publish(schemas.SubjectCheckedOut, garbage, "")
	h.publish(schemas.SubjectCheckedIn, garbage, "")
	h.waitDrained(10 * time.Second)
	if got := h.outcomes(); len(got) != 3 {
		t.Fatalf("%d dead letters for three undecodable messages, want 3: %v", len(got), subjects(got))
	}
}

// One card, three guests in a row (the third still in the room), the six
// events in orders a PMS resend or a partition could produce: whatever the
// order, the third guest holds the card at the end and the first two do not.
func TestHandle_ReusedCardThreeGuestsInARowEventsOutOfOrder(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate(), seamtest.WithExclusiveAssign(), seamtest.WithStrictUnassign())
	h.start(1)
	base := time.Now().Add(-6 * time.Hour)
	// Stays: guest k checks in at base+2k h and out at base+2k+1 h; the
	// third does not check out. Events: 0 in1, 1 out1, 2 in2, 3 out2, 4 in3.
	orders := [][]int{
		{0, 1, 2, 3, 4}, // as they happened
		{4, 3, 2, 1, 0}, // reversed
		{4, 0, 1, 2, 3}, // the current guest's check-in first
		{2, 0, 4, 3, 1}, // interleaved
		{1, 3, 0, 2, 4}, // check-outs before their check-ins
		{0, 2, 4, 1, 3}, // every check-in before every check-out
	}
	type room struct {
		cred   string
		guests [3]string
	}
	var rooms []room
	for o, order := range orders {
		var r room
		r.cred = fmt.Sprintf("66666666-6666-4666-8666-%012d", 900+o)
		for g := range 3 {
			r.guests[g] = fmt.Sprintf("33333333-3333-4333-8333-%06d%06d", 900+o, g)
		}
		rooms = append(rooms, r)
		for _, e := range order {
			g, in := e/2, e%2 == 0
			subject, at := schemas.SubjectCheckedIn, base.Add(time.Duration(2*g)*time.Hour)
			if !in {
				subject, at = schemas.SubjectCheckedOut, at.Add(time.Hour)
			}
			id := fmt.Sprintf("room%d-ev%d", o, e)
			h.publish(subject, event(subject, id, at, schemas.GuestData{ACSCredentialID: r.cred, ACSUserID: r.guests[g], ReservationID: id}), "")
		}
	}
	got := h.waitOutcomes(len(orders)*5, 30*time.Second)
	h.waitDrained(10 * time.Second)
	for _, o := range got {
		if o.DL.OriginalSubject != "" {
			t.Fatalf("%s dead-lettered: %+v", o.SourceID(), o.DL.Error)
		}
	}
	for o, r := range rooms {
		holder, _, ok := h.seam.Holder(r.cred)
		if !ok || holder != r.guests[2] {
			t.Errorf("order %v: the card is held by %q (held %v), want the third guest %s", orders[o], holder, ok, r.guests[2])
		}
	}
}
