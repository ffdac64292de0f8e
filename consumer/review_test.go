package consumer_test

// Hostile review: each test here states a property the README promises and
// fails while the implementation breaks it.

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	credReview  = "66666666-6666-4666-8666-6666666666c1"
	credReview2 = "66666666-6666-4666-8666-6666666666c2"
	userReview  = "33333333-3333-4333-8333-3333333333c1"
	identReview = "55555555-5555-4555-8555-5555555555c1"
)

// crashBeforePublish is a JetStream connection whose process dies right
// before it publishes to a subject with the given prefix: everything up to
// the publish (the Seam call, the credential state's Commit) is done.
type crashBeforePublish struct {
	jetstream.JetStream
	prefix string
}

func (c crashBeforePublish) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if strings.HasPrefix(msg.Subject, c.prefix) {
		runtime.Goexit()
	}
	return c.JetStream.PublishMsg(ctx, msg, opts...)
}

func (h *harness) workerOn(js jetstream.JetStream, seam consumer.SeamCaller, owner string) *consumer.Worker {
	h.t.Helper()
	cfg := h.cfg
	cfg.Owner = owner
	w, err := consumer.New(h.t.Context(), js, seam, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

func (h *harness) rawJS() jetstream.JetStream {
	h.t.Helper()
	_, js := natstest.ConnectTest(h.t, h.url)
	return js
}

// A check-out whose delivery unassigned the key and committed the
// credential state, then died before publishing: the redelivery must still
// publish credential.unassigned (the check-out did take the key), not a
// credential.skipped "not_holder" that tells the PMS the guest never had it.
func TestReview_CrashBetweenCommitAndPublishOfACheckOutStillPublishesUnassigned(t *testing.T) {
	h := newHarness(t, crashConfig(), seamtest.WithAutoCreate())
	if _, err := h.seamClient().Assign(t.Context(), seamclient.Request{ACSCredentialID: credReview, ACSUserID: userReview}); err != nil {
		t.Fatal(err)
	}
	d := schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out-crash", time.Now(), d), "")

	w1 := h.workerOn(crashBeforePublish{JetStream: h.rawJS(), prefix: "credential."}, h.seamClient(), "crashed-replica")
	msg := h.fetchOne()
	crashed := make(chan struct{})
	go func() { defer close(crashed); w1.Handle(context.Background(), msg) }()
	<-crashed
	if h.seam.IsAssigned(credReview, userReview) {
		t.Fatal("setup: the crashed delivery did not unassign")
	}

	h.start(1)
	h.waitDrained(20 * time.Second)
	got := h.outcomes()
	if len(got) != 1 {
		t.Fatalf("want one outcome, got %v", subjects(got))
	}
	if got[0].Subject != schemas.SubjectUnassigned {
		t.Fatalf("the check-out unassigned the key, yet its outcome is %s (reason %q)", got[0].Subject, got[0].Skip.Reason)
	}
}

// flakySeam fails its first failN calls as an unreachable Seam, then
// panics once (the gate's probe), then works.
type flakySeam struct {
	consumer.SeamCaller
	calls atomic.Int64
	failN int64
}

func (s *flakySeam) before(path string) error {
	n := s.calls.Add(1)
	switch {
	case n <= s.failN:
		return &seamclient.TransportError{Path: path, Err: errRefused}
	case n == s.failN+1:
		panic("seam client bug on the probe")
	}
	return nil
}

func (s *flakySeam) Assign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	if err := s.before(seamclient.PathAssign); err != nil {
		return nil, err
	}
	return s.SeamCaller.Assign(ctx, r)
}

func (s *flakySeam) Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	if err := s.before(seamclient.PathUnassign); err != nil {
		return nil, err
	}
	return s.SeamCaller.Unassign(ctx, r)
}

func (s *flakySeam) Get(ctx context.Context, id string) (*seamclient.Response, error) {
	if err := s.before(seamclient.PathGet); err != nil {
		return nil, err
	}
	return s.SeamCaller.Get(ctx, id)
}

// A panic is dead-lettered "and the worker carries on" (README). When the
// panic hits the health gate's probe, the gate's probing flag is never
// cleared: no probe is ever sent again, the gate stays open, Run stops
// taking messages (hold waits on probing), and every event waits for RetryFor.
func TestReview_PanicInTheGateProbeDoesNotStallTheWorker(t *testing.T) {
	cfg := fastConfig()
	cfg.ShutdownGrace = time.Second // the stuck waiter would hold shutdown for the whole grace
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	seam := &flakySeam{SeamCaller: h.seamClient(), failN: 5}
	h.runWorkerWith(seam)

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "opens-gate", time.Now(),
		schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}), "")
	got := h.waitOutcomes(1, 15*time.Second)
	if !strings.Contains(got[0].DL.Error.Message, "panicked") {
		t.Fatalf("setup: want the probing event dead-lettered for its panic, got %s %+v", got[0].Subject, got[0].DL.Error)
	}

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "after-probe-panic", time.Now(),
		schemas.GuestData{ACSCredentialID: credReview2, ACSUserID: userReview}), "")
	// Seam works again: the gate must probe again and the next event end.
	h.waitOutcomes(2, 15*time.Second)
}

// A guest checked in by user identity is, once Seam answered, known by both
// ids; the check-out by acs_user_id takes the key. A second, older check-in
// of that guest by identity that arrives late (resent by the PMS) is older
// than the guest's check-out: by the rule nobody holds the key.
func TestReview_LateIdentityCheckInAfterAnACSUserCheckOutDoesNotGiveTheKeyBack(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.AddUserIdentity(identReview)
	acsUser := seamtest.DerivedACSUserID(identReview)
	h.start(1)
	base := time.Now().Add(-3 * time.Hour)

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "id-in-1", base,
		schemas.GuestData{ACSCredentialID: credReview, UserIdentityID: identReview}), "")
	h.waitDrained(10 * time.Second)
	if !h.seam.IsAssigned(credReview, identReview) {
		t.Fatal("setup: not assigned")
	}
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "user-out", base.Add(2*time.Hour),
		schemas.GuestData{ACSCredentialID: credReview, ACSUserID: acsUser}), "")
	h.waitDrained(10 * time.Second)
	if h.seam.IsAssigned(credReview, identReview) {
		t.Fatal("setup: the check-out by acs_user_id did not unassign")
	}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "id-in-2", base.Add(time.Hour),
		schemas.GuestData{ACSCredentialID: credReview, UserIdentityID: identReview}), "")
	h.waitDrained(10 * time.Second)

	got := h.outcomes()
	if h.seam.IsAssigned(credReview, identReview) {
		t.Fatalf("the guest checked out at +2h, after both check-ins, yet holds the key again: outcomes %v", subjects(got))
	}
}

// crashingUnassign makes the unassign and then dies, as a process killed
// right after Seam answered.
type crashingUnassign struct{ consumer.SeamCaller }

func (c crashingUnassign) Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	_, _ = c.SeamCaller.Unassign(ctx, r)
	runtime.Goexit()
	return nil, nil
}

// "A dead-lettered event still counts for ordering (a dead-lettered
// check-out makes older check-ins of its guest stale)". A check-out whose
// deliveries keep dying (here: after Seam applied it) is dead-lettered as a
// poison message before its credential is leased, so it is never merged: a
// late, older check-in of the same guest then gives the key back to a guest
// who checked out.
func TestReview_PoisonDeadLetteredCheckOutStillCountsForOrdering(t *testing.T) {
	cfg := crashConfig()
	cfg.MaxDeliver = 1
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	d := schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}
	base := time.Now().Add(-3 * time.Hour)

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-1", base, d), "")
	msg := h.fetchOne()
	if out := h.newWorkerWith(h.seamClient(), "first").Handle(t.Context(), msg); out.Kind != consumer.Done {
		t.Fatalf("setup: check-in %+v", out)
	}
	_ = msg.Ack()

	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "out-poison", base.Add(2*time.Hour), d), "")
	msg = h.fetchOne()
	died := make(chan struct{})
	go func() {
		defer close(died)
		h.newWorkerWith(crashingUnassign{h.seamClient()}, "dying").Handle(context.Background(), msg)
	}()
	<-died
	if h.seam.IsAssigned(credReview, userReview) {
		t.Fatal("setup: unassign not applied")
	}

	h.start(1)
	got := h.waitOutcomes(2, 20*time.Second)
	if o := outcomeOf(t, got, "out-poison"); o.DL.Error.Kind != schemas.ErrorKindRetriesExhausted {
		t.Fatalf("setup: check-out outcome %s %+v, want a poison dead letter", o.Subject, o.DL.Error)
	}

	// The guest's earlier-stamped check-in (a room change, resent late).
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-2", base.Add(time.Hour), d), "")
	got = h.waitOutcomes(3, 20*time.Second)
	if h.seam.IsAssigned(credReview, userReview) {
		t.Fatalf("the guest's check-out (+2h, dead-lettered) is newer than the check-in at +1h, yet the key is assigned again: in-2 -> %s",
			outcomeOf(t, got, "in-2").Subject)
	}
}

// failingResults makes the first n publishes to credential.* fail, as when
// the results stream is briefly unavailable (quorum lost, full with
// discard new).
type failingResults struct {
	jetstream.JetStream
	left *atomic.Int64
}

func (f failingResults) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if strings.HasPrefix(msg.Subject, "credential.") && f.left.Add(-1) >= 0 {
		return nil, jetstream.ErrNoStreamResponse
	}
	return f.JetStream.PublishMsg(ctx, msg, opts...)
}

// KEYWORKER_MAX_DELIVER "counts only deliveries that ended without a
// decision (poison messages)". A delivery whose Seam call succeeded but
// whose result could not be published keeps its claim, and the next
// delivery takes it over as if its owner had died: a short results-stream
// outage turns an applied check-in into a retries_exhausted dead letter.
func TestReview_ResultsStreamHiccupIsNotAPoisonMessage(t *testing.T) {
	cfg := crashConfig()
	cfg.MaxDeliver = 2
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	left := &atomic.Int64{}
	left.Store(2)
	w := h.workerOn(failingResults{JetStream: h.rawJS(), left: left}, h.seamClient(), "replica")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "in-hiccup", time.Now(),
		schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}), "")
	h.waitDrained(30 * time.Second)
	got := h.outcomes()
	if len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		var why string
		if len(got) == 1 {
			why = got[0].DL.Error.Kind + ": " + got[0].DL.Error.Message
		}
		t.Fatalf("the key is assigned (%v) and the results stream is back: want credential.assigned, got %v %s",
			h.seam.IsAssigned(credReview, userReview), subjects(got), why)
	}
}

// The poison limit is checked before the results stream is scanned for an
// outcome the dead owner had already published: when the delivery that
// reaches the limit is one whose predecessor published its result and died
// before recording it, the event gets a result and a dead letter.
func TestReview_PoisonLimitReachedAfterAPublishedResultGivesOneOutcome(t *testing.T) {
	cfg := crashConfig()
	cfg.MaxDeliver = 1
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "published-then-died", time.Now(),
		schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}), "")

	w1 := h.workerOn(crashAfterPublish{JetStream: h.rawJS(), prefix: "credential."}, h.seamClient(), "crashed-replica")
	msg := h.fetchOne()
	died := make(chan struct{})
	go func() { defer close(died); w1.Handle(context.Background(), msg) }()
	<-died
	if got := h.outcomes(); len(got) != 1 || got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("setup: the crashed delivery did not publish its result: %v", subjects(got))
	}

	h.start(1)
	h.waitDrained(20 * time.Second)
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("want only the result already published, got %v", subjects(got))
	}
}

func (h *harness) workerAt(js jetstream.JetStream, seam consumer.SeamCaller, owner string, offset time.Duration) *consumer.Worker {
	h.t.Helper()
	cfg := h.cfg
	cfg.Owner = owner
	w, err := consumer.New(h.t.Context(), js, seam, cfg, consumer.WithClock(func() time.Time { return time.Now().Add(offset) }))
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// The scan for an outcome a dead owner published looks only in the span of
// the claim it takes over. Owner 1 publishes and dies; owner 2 takes over
// (later: the fleet was down a while), finds the result, and dies too before
// recording it; owner 3 takes over from owner 2 and scans only owner 2's
// span: it publishes the result a second time, past the duplicate window.
func TestReview_SecondTakeOverRemembersTheFirstOwnersPublishedResult(t *testing.T) {
	cfg := crashConfig()
	cfg.MaxDeliver = 5
	cfg.DuplicateWindow = time.Second
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "twice-taken-over", time.Now().Add(-time.Hour),
		schemas.GuestData{ACSCredentialID: credReview, ACSUserID: userReview}), "")

	run := func(w *consumer.Worker) {
		msg := h.fetchOne()
		died := make(chan struct{})
		go func() { defer close(died); w.Handle(context.Background(), msg) }()
		<-died
	}
	run(h.workerAt(crashAfterPublish{JetStream: h.rawJS(), prefix: "credential."}, h.seamClient(), "owner1", 0))
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("setup: owner 1 published %v", subjects(got))
	}
	run(h.workerAt(h.rawJS(), poisonSeam{h.seamClient()}, "owner2", 10*time.Minute))
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("owner 2 published again: %v", subjects(got))
	}
	time.Sleep(2 * cfg.DuplicateWindow)
	msg := h.fetchOne()
	out := h.workerAt(h.rawJS(), h.seamClient(), "owner3", 20*time.Minute).Handle(t.Context(), msg)
	if got := h.outcomes(); len(got) != 1 {
		t.Fatalf("want the one result owner 1 published, got %v (owner 3: %+v)", subjects(got), out)
	}
}
