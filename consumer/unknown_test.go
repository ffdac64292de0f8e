package consumer_test

// Outcomes the worker cannot see directly: an answer lost after Seam
// applied the change, a request that timed out, a write of the ordering
// state that failed after the Seam call, and a pair lease left by a
// replica that died.

import (
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
		gets                int
	}{
		{schemas.SubjectCheckedIn, seamtest.PathAssign, schemas.SubjectAssigned, 1},
		// One read more: who holds a credential the worker has not seen yet.
		{schemas.SubjectCheckedOut, seamtest.PathUnassign, schemas.SubjectUnassigned, 2},
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
			if n := h.seam.Calls(seamtest.PathGet); n != tc.gets {
				t.Fatalf("%d calls to /get, want %d", n, tc.gets)
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
	pairKey := idempotency.CredentialKey(credUnknown)
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
		var st idempotency.CredentialState
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
	h.waitOutcomes(2, 10*time.Second)
	h.waitDrained(10 * time.Second)

	got := h.outcomes()
	if len(got) != 2 {
		t.Fatalf("want 2 outcomes, got %v", subjects(got))
	}
	if h.seam.IsAssigned(credUnknown, userUnknown) {
		t.Fatalf("the guest checked out, yet the older check-in assigned the key again: outcomes %v", subjects(got))
	}
	for _, o := range got {
		if o.SourceID() == "in-late" && o.Subject != schemas.SubjectSkipped {
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
	creds := idempotency.NewCredentials(kv)
	if _, err := creds.Acquire(t.Context(), credUnknown, "dead-replica", "other-event", deadLease, false); err != nil {
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

// crashingSeam makes the call it is given and then ends the calling
// goroutine without returning, as if the process died right after Seam
// answered: nothing the pipeline would do next (publish, record, ack,
// release) happens.
type crashingSeam struct{ consumer.SeamCaller }

func (c crashingSeam) Assign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	_, _ = c.SeamCaller.Assign(ctx, r)
	runtime.Goexit()
	return nil, nil
}

// fetchOne takes the next message of the durable consumer without acking it.
func (h *harness) fetchOne() jetstream.Msg {
	h.t.Helper()
	cons, err := h.js.Consumer(h.t.Context(), h.cfg.InputStream, h.cfg.Durable)
	if err != nil {
		h.t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		h.t.Fatal(err)
	}
	msg := <-batch.Messages()
	if msg == nil {
		h.t.Fatal("no message fetched")
	}
	return msg
}

// crashConfig has short leases, so a crashed delivery's claim and pair
// lease run out within seconds.
func crashConfig() consumer.Config {
	cfg := fastConfig()
	cfg.SeamTimeout = time.Second
	cfg.Lease = 2 * time.Second
	cfg.AckWait = time.Second
	return cfg
}

func TestHandle_RedeliveryAfterACrashFollowingTheSeamCallConfirmsBeforeCallingAgain(t *testing.T) {
	h := newHarness(t, crashConfig(), seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "crash-after-call", time.Now(), d), "")

	// The first delivery assigns the credential in Seam, then its process dies.
	crashed := make(chan struct{})
	msg := h.fetchOne()
	go func() {
		defer close(crashed)
		h.newWorkerWith(crashingSeam{h.seamClient()}, "crashed-replica").Handle(context.Background(), msg)
	}()
	<-crashed
	if !h.seam.IsAssigned(credUnknown, userUnknown) {
		t.Fatal("the crashed delivery did not reach Seam")
	}
	// Whatever the next identical call gets (here a refusal), the change is made.
	h.seam.FailNext(1, seamtest.PathAssign, seamtest.SeamError(400, "invalid_input"))

	h.start(1)
	h.waitDrained(15 * time.Second)
	got := h.outcomes()
	if len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		var why string
		if len(got) == 1 {
			why = got[0].DL.Error.Message
		}
		t.Fatalf("the credential is assigned, so want credential.assigned; got %v %s (assign calls %d, get calls %d)",
			subjects(got), why, h.seam.Calls(seamtest.PathAssign), h.seam.Calls(seamtest.PathGet))
	}
	if n := h.seam.Calls(seamtest.PathAssign); n != 1 {
		t.Fatalf("%d assign calls: the redelivery must read the credential before calling again", n)
	}
}

// crashAfterPublish is a JetStream connection whose process dies right
// after it publishes to a subject with the given prefix: the outcome is in
// its stream, and nothing after it (recording, settling) happens.
type crashAfterPublish struct {
	jetstream.JetStream
	prefix string
}

func (c crashAfterPublish) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := c.JetStream.PublishMsg(ctx, msg, opts...)
	if err == nil && strings.HasPrefix(msg.Subject, c.prefix) {
		runtime.Goexit()
	}
	return ack, err
}

// handleAndCrashAfterPublish hands the next message to a worker whose
// process dies right after it publishes to a subject with prefix.
func (h *harness) handleAndCrashAfterPublish(prefix string) {
	h.t.Helper()
	w := h.workerOn(crashAfterPublish{JetStream: h.rawJS(), prefix: prefix}, h.seamClient(), "crashed-replica")
	crashed := make(chan struct{})
	msg := h.fetchOne()
	go func() {
		defer close(crashed)
		w.Handle(context.Background(), msg)
	}()
	<-crashed
}

func TestHandle_RedeliveryAfterACrashFollowingTheDeadLetterPublishesNoSecondOutcome(t *testing.T) {
	h := newHarness(t, crashConfig(), seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credUnknown, ACSUserID: userUnknown}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "crash-after-dl", time.Now(), d), "")

	// The first delivery is refused by Seam, publishes its dead letter, and
	// its process dies before anything else.
	h.seam.FailNext(1, seamtest.PathAssign, seamtest.SeamError(400, "invalid_input"))
	h.handleAndCrashAfterPublish(schemas.DeadLetterPrefix)
	if got := h.outcomes(); len(got) != 1 || got[0].DL.OriginalSubject == "" {
		t.Fatalf("the crashed delivery did not publish its dead letter: %v", subjects(got))
	}

	h.start(1) // Seam accepts from now on
	h.waitDrained(15 * time.Second)
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("want only the dead letter already published, got %v", subjects(got))
	}
}
