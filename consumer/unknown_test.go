package consumer_test

// Outcomes the worker cannot see directly: an answer lost after Seam
// applied the change, a request that timed out, a write of the ordering
// state that failed after the Seam call, and a pair lease left by a
// replica that died.

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	credUnknown = "66666666-6666-4666-8666-6666666666b1"
	userUnknown = "33333333-3333-4333-8333-3333333333b1"
)

func TestHandle_AppliedThenDroppedCallIsConfirmedWithGetAndNotRepeated(t *testing.T) {
	for _, tc := range []struct {
		subject, path, want string
	}{
		{schemas.SubjectCheckedIn, seamtest.PathAssign, schemas.SubjectAssigned},
		{schemas.SubjectCheckedOut, seamtest.PathUnassign, schemas.SubjectUnassigned},
	} {
		t.Run(tc.subject, func(t *testing.T) {
			h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
			d := schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}
			if tc.subject == schemas.SubjectCheckedOut {
				// Held by the guest, so the unassign is an effect.
				if _, err := h.seamClient().Assign(t.Context(), seamclient.Request{ACSCredentialID: credUnknown, ACSUserID: userUnknown}); err != nil {
					t.Fatal(err)
				}
				h.seam.ResetCounters()
			}
			h.seam.FailNext(1, tc.path, seamtest.AppliedThenDrop())
			h.start(1)
			h.publish(tc.subject, event(tc.subject, "dropped-1", time.Now(), d), "")
			h.waitDrained(10 * time.Second)

			got := h.outcomes()
			if len(got) != 1 || got[0].Subject != tc.want {
				t.Fatalf("want one %s, got %v", tc.want, subjects(got))
			}
			if n := h.seam.Calls(tc.path); n != 1 {
				t.Fatalf("%d calls to %s, want 1: the applied change must be confirmed, not repeated", n, tc.path)
			}
			if n := h.seam.Calls(seamtest.PathGet); n != 1 {
				t.Fatalf("%d calls to /get, want 1", n)
			}
			if n := h.seam.Effects(credUnknown, userUnknown); n != 1 {
				t.Fatalf("%d effects, want 1", n)
			}
			want, _ := h.seam.Credential(credUnknown)
			mustJSONEqual(t, got[0].Result.ACSCredential, want)
			if got[0].Result.Attempts != 1 {
				t.Fatalf("attempts %d, want 1", got[0].Result.Attempts)
			}
		})
	}
}

func TestHandle_TimedOutCallIsCheckedWithGetThenRetried(t *testing.T) {
	cfg := fastConfig()
	cfg.SeamTimeout = 300 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.seam.FailNext(1, seamtest.PathAssign, seamtest.Timeout(0)) // hangs, applies nothing
	h.start(1)
	start := time.Now()
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "timeout-1", time.Now(),
		schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}), "")
	h.waitDrained(10 * time.Second)

	got := h.outcomes()
	if len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("want one credential.assigned, got %v", subjects(got))
	}
	// The hung call, the /get that finds nothing applied, the retry.
	if a, g := h.seam.Calls(seamtest.PathAssign), h.seam.Calls(seamtest.PathGet); a != 2 || g != 1 {
		t.Fatalf("calls: assign %d, get %d; want 2 and 1", a, g)
	}
	if n := h.seam.Effects(credUnknown, userUnknown); n != 1 || !h.seam.IsAssigned(credUnknown, userUnknown) {
		t.Fatalf("effects %d, assigned %v; want 1 and true", n, h.seam.IsAssigned(credUnknown, userUnknown))
	}
	if got[0].Result.Attempts != 2 {
		t.Fatalf("attempts %d, want 2", got[0].Result.Attempts)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %s: the seam timeout of %s was not applied", took, cfg.SeamTimeout)
	}
}

// seamHook is a Seam client that runs after once, after the first
// successful unassign.
type seamHook struct {
	consumer.SeamCaller
	once  sync.Once
	after func()
}

func (s *seamHook) Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	resp, err := s.SeamCaller.Unassign(ctx, r)
	if err == nil {
		s.once.Do(s.after)
	}
	return resp, err
}

func TestHandle_CheckOutWhoseOrderingWriteFailedStillStopsAnOlderCheckIn(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	pairKey := idempotency.PairKey(credUnknown, userUnknown, "")
	kv, err := h.js.KeyValue(t.Context(), h.cfg.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	// Right after Seam applied the check-out, the pair state changes under
	// the worker, as when its lease lapsed and another replica took and
	// released the pair: recording the check-out as applied fails.
	hook := &seamHook{SeamCaller: h.seamClient(), after: func() {
		e, err := kv.Get(context.Background(), pairKey)
		if err != nil {
			t.Error(err)
			return
		}
		var st idempotency.PairState
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			t.Error(err)
			return
		}
		st.LeaseOwner, st.LeaseUntil, st.LeaseEventKey = "", time.Time{}, ""
		b, _ := json.Marshal(st)
		if _, err := kv.Put(context.Background(), pairKey, b); err != nil {
			t.Error(err)
		}
	}}
	h.runWorkerWith(hook)

	d := schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}
	checkIn := time.Now().Add(-2 * time.Hour)
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out-first", checkIn.Add(time.Hour), d), "")
	h.waitDrained(10 * time.Second)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-late", checkIn, d), "")
	h.waitDrained(10 * time.Second)

	got := h.outcomes()
	if len(got) != 2 {
		t.Fatalf("want 2 outcomes, got %v", subjects(got))
	}
	if h.seam.IsAssigned(credUnknown, userUnknown) {
		t.Fatalf("the guest checked out, yet the older check-in assigned the key again: outcomes %v", subjects(got))
	}
	for _, o := range got {
		if o.sourceID() == "in-late" && o.Subject != schemas.SubjectSkipped {
			t.Fatalf("older check-in: %s, want credential.skipped", o.Subject)
		}
	}
}

func TestHandle_EventWaitingForADeadReplicasPairLeaseIsNotDeadLettered(t *testing.T) {
	cfg := fastConfig()
	cfg.RetryBudget = 100 * time.Millisecond // in-process waits end quickly: the message goes back to JetStream
	cfg.MaxDeliver = 3
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	kv, err := h.js.KeyValue(t.Context(), h.cfg.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	// A replica took the pair for another event and died: its lease runs out in 2 s.
	const deadLease = 2 * time.Second
	pairs := idempotency.NewOrdering(kv)
	if _, err := pairs.Acquire(t.Context(), idempotency.PairKey(credUnknown, userUnknown, ""), "dead-replica",
		idempotency.PairEvent{Key: "other-event", Time: time.Now().Add(-3 * time.Hour), Assign: true}, deadLease); err != nil {
		t.Fatal(err)
	}
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "waits", time.Now().Add(-time.Hour),
		schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}), "")
	h.waitDrained(10 * time.Second)

	got := h.outcomes()
	if len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		var why string
		if len(got) == 1 {
			why = got[0].DL.Error.Kind + ": " + got[0].DL.Error.Message
		}
		t.Fatalf("want credential.assigned once the dead lease ran out, got %v %s", subjects(got), why)
	}
}
