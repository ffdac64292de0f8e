package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// assignedAt is when the fake received the (only) assign of cred.
func assignedAt(t *testing.T, h *harness, cred string) time.Time {
	t.Helper()
	for _, r := range h.seam.Requests() {
		if r.Path == seamtest.PathAssign && bytes.Contains(r.Body, []byte(cred)) {
			return r.At
		}
	}
	t.Fatalf("no assign of %s", cred)
	return time.Time{}
}

func TestAwaitSync_OutcomeSaysSyncedOnceTheProviderHasIt(t *testing.T) {
	cfg := fastConfig()
	cfg.AwaitSync = 10 * time.Second
	h := newHarness(t, cfg, seamtest.WithAutoCreate(), seamtest.WithSyncDelay(2*time.Second))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "sync-1", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 20*time.Second)
	ps := got[0].Result.ProviderSync
	if got[0].Subject != schemas.SubjectAssigned || ps == nil || ps.State != schemas.SyncStateSynced {
		t.Fatalf("outcome %s provider_sync %+v, want assigned and synced", got[0].Subject, ps)
	}
	// Synced means seen synced: the read it comes from was made after the
	// provider had the change, 2 s after the assign.
	at := assignedAt(t, h, credA)
	if ps.CheckedAt.Before(at.Add(2 * time.Second).Truncate(time.Millisecond)) {
		t.Fatalf("checked_at %s is before the sync was due (%s + 2s)", ps.CheckedAt, at)
	}
	t.Logf("seen synced %s after the assign, with %d reads; published at %s", ps.CheckedAt.Sub(at), h.seam.Calls("get"), got[0].Env.Time.Sub(at))
	if h.seam.Calls("get") < 2 {
		t.Fatalf("%d reads: the worker should have polled", h.seam.Calls("get"))
	}
	if h.seam.Calls("assign") != 1 || got[0].Result.Attempts != 1 {
		t.Fatalf("assign calls %d, attempts %d: polling must not repeat the change", h.seam.Calls("assign"), got[0].Result.Attempts)
	}
	h.waitDrained(5 * time.Second)
}

func TestAwaitSync_FailedSyncIsReportedWithTheErrors(t *testing.T) {
	cfg := fastConfig()
	cfg.AwaitSync = 10 * time.Second
	h := newHarness(t, cfg, seamtest.WithAutoCreate(), seamtest.WithSyncDelay(time.Second),
		seamtest.WithSyncFailure("provider_rejected", "The lock system refused the change."))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "sync-fail", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 20*time.Second)
	ps := got[0].Result.ProviderSync
	if got[0].Subject != schemas.SubjectAssigned || ps == nil || ps.State != schemas.SyncStateFailed {
		t.Fatalf("outcome %s provider_sync %+v, want assigned and failed", got[0].Subject, ps)
	}
	if len(ps.Errors) != 1 || ps.Errors[0].ErrorCode != "provider_rejected" || ps.Errors[0].Message != "The lock system refused the change." {
		t.Fatalf("errors %+v, want the credential's provider_rejected", ps.Errors)
	}
}

func TestAwaitSync_ZeroPublishesPendingAtOnce(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate(), seamtest.WithSyncDelay(time.Hour))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "sync-0", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got := h.waitOutcomes(1, 10*time.Second)
	ps := got[0].Result.ProviderSync
	if ps == nil || ps.State != schemas.SyncStatePending || len(ps.Errors) != 0 {
		t.Fatalf("provider_sync %+v, want pending", ps)
	}
	if n := h.seam.Calls("get"); n != 0 {
		t.Fatalf("%d reads with KEYWORKER_AWAIT_SYNC 0: it must publish at once", n)
	}
	// Checked out: unassigned, pending as well.
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "sync-0-out", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	got = h.waitOutcomes(2, 10*time.Second)
	if ps := got[1].Result.ProviderSync; got[1].Subject != schemas.SubjectUnassigned || ps == nil || ps.State != schemas.SyncStatePending {
		t.Fatalf("outcome %s provider_sync %+v, want unassigned and pending", got[1].Subject, ps)
	}
}

// While 50 events wait for their credentials to sync, with fewer slots
// than that, other events go through at once; the waiting ones keep their
// leases and ack wait alive for longer than both last: nothing is delivered twice.
func TestAwaitSync_WaitingEventsGiveTheirSlotsBack(t *testing.T) {
	cfg := fastConfig()
	cfg.Concurrency = 8
	cfg.AwaitSync = 8 * time.Second
	cfg.AckWait = 3 * time.Second // shorter than the wait: InProgress must keep it
	cfg.Lease = 3 * time.Second   // so must the renewals
	cfg.SeamTimeout = time.Second
	h := newHarness(t, cfg, seamtest.WithAutoCreate(), seamtest.WithSyncDelay(time.Hour))
	h.start(1)
	const waiting, others = 50, 100
	for i := range waiting {
		cred, user := pairIDs(1000 + i)
		h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, fmt.Sprintf("wait-%d", i), time.Now(), schemas.GuestData{ACSCredentialID: cred, ACSUserID: user}), "")
	}
	natstest.WaitFor(t, 15*time.Second, func() error {
		if n := h.seam.Calls("assign"); n < waiting {
			return fmt.Errorf("%d of %d assigned", n, waiting)
		}
		return nil
	})
	// The others' changes sync at once, so they do not wait.
	h.seam.SetSyncDelay(0)
	for i := range others {
		cred, user := pairIDs(2000 + i)
		h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, fmt.Sprintf("other-%d", i), time.Now(), schemas.GuestData{ACSCredentialID: cred, ACSUserID: user}), "")
	}
	othersFrom := time.Now()
	got := h.waitOutcomes(others, 15*time.Second)
	t.Logf("%d other events completed in %s while the %d waited", len(got), time.Since(othersFrom), waiting)
	for _, o := range got {
		if o.Result.ProviderSync == nil || o.Result.ProviderSync.State != schemas.SyncStateSynced {
			t.Fatalf("while the %d waited, %d outcomes were published, among them %s (%+v): want only the others, synced",
				waiting, len(got), o.Result.SourceEventID, o.Result.ProviderSync)
		}
	}
	// Then the 50 end, pending, when their wait is over.
	got = h.waitOutcomes(waiting+others, 30*time.Second)
	pending := 0
	for _, o := range got {
		if o.Result.ProviderSync != nil && o.Result.ProviderSync.State == schemas.SyncStatePending {
			pending++
		}
	}
	if len(got) != waiting+others || pending != waiting {
		t.Fatalf("%d outcomes, %d pending: want %d, %d pending", len(got), pending, waiting+others, waiting)
	}
	h.waitDrained(10 * time.Second)
	c, err := h.js.Consumer(context.Background(), h.cfg.InputStream, h.cfg.Durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.Delivered.Consumer != waiting+others {
		t.Fatalf("redelivered %d, delivered %d: want no redelivery of %d events", info.NumRedelivered, info.Delivered.Consumer, waiting+others)
	}
	if n := h.seam.Calls("assign"); n != waiting+others {
		t.Fatalf("%d assigns, want one per event", n)
	}
}

// A worker shutting down does not sit out the wait: the event is concluded
// with what was seen (pending), not handed back at the end of the grace period.
func TestAwaitSync_ShutdownPublishesWhatWasSeen(t *testing.T) {
	cfg := fastConfig()
	cfg.AwaitSync = 2 * time.Minute
	cfg.ShutdownGrace = 20 * time.Second // shorter than the wait: a wait that ignored shutdown would be handed back
	h := newHarness(t, cfg, seamtest.WithAutoCreate(), seamtest.WithSyncDelay(time.Hour))
	w := h.newWorker()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "sync-stop", time.Now(), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA}), "")
	natstest.WaitFor(t, 10*time.Second, func() error {
		if h.seam.Calls("get") == 0 {
			return fmt.Errorf("not polling yet")
		}
		return nil
	})
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(cfg.ShutdownGrace + 5*time.Second):
		t.Fatal("Run did not return")
	}
	got := h.outcomes()
	if len(got) != 1 || got[0].Result.ProviderSync == nil || got[0].Result.ProviderSync.State != schemas.SyncStatePending {
		t.Fatalf("outcomes after shutdown: %+v, want one, pending", got)
	}
	h.waitDrained(5 * time.Second)
}
