package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	credPanics = "66666666-6666-4666-8666-6666666666a1"
	credFine   = "66666666-6666-4666-8666-6666666666a2"
	userPanic  = "33333333-3333-4333-8333-3333333333a1"
)

// panickingSeam is a Seam client that panics on any call for one
// credential: no input can make the real pipeline panic, so the test puts
// the panic behind the SeamCaller seam.
type panickingSeam struct {
	consumer.SeamCaller
	credential string
}

func (p panickingSeam) Assign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	p.check(r.ACSCredentialID)
	return p.SeamCaller.Assign(ctx, r)
}

func (p panickingSeam) Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error) {
	p.check(r.ACSCredentialID)
	return p.SeamCaller.Unassign(ctx, r)
}

func (p panickingSeam) Get(ctx context.Context, id string) (*seamclient.Response, error) {
	p.check(id)
	return p.SeamCaller.Get(ctx, id)
}

func (p panickingSeam) check(id string) {
	if id == p.credential {
		panic("test seam exploded for " + id)
	}
}

func TestHandle_PanicDeadLettersAsPermanentAndTheNextMessageIsProcessed(t *testing.T) {
	cfg := fastConfig()
	cfg.Concurrency = 1 // the next message is handled after the panic, by the same worker
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	h.runWorkerWith(panickingSeam{SeamCaller: h.seamClient(), credential: credPanics})

	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "boom-1", time.Now(),
		schemas.GuestData{ACSCredentialID: credPanics, ACSUserID: userPanic}), "")
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "after-boom", time.Now(),
		schemas.GuestData{ACSCredentialID: credFine, ACSUserID: userPanic}), "")
	h.waitDrained(15 * time.Second)

	got := h.outcomes()
	if len(got) != 2 {
		t.Fatalf("want 2 outcomes, got %v", subjects(got))
	}
	var dl, res outcome
	for _, o := range got {
		switch o.SourceID() {
		case "boom-1":
			dl = o
		case "after-boom":
			res = o
		}
	}
	if dl.Subject != schemas.DeadLetterSubject(schemas.SubjectCheckedIn) {
		t.Fatalf("panicking event: outcome %q, want a dead letter", dl.Subject)
	}
	if dl.DL.Error.Kind != schemas.ErrorKindPermanent || !strings.Contains(dl.DL.Error.Message, "panicked") ||
		!strings.Contains(dl.DL.Error.Message, "test seam exploded") {
		t.Fatalf("dead letter error %+v: want kind permanent and a message saying the handler panicked", dl.DL.Error)
	}
	if original, err := dl.DL.Original(); err != nil || !bytes.Contains(original, []byte(`"boom-1"`)) {
		t.Fatalf("dead letter must carry the original event: %v", err)
	}
	if res.Subject != schemas.SubjectAssigned || !h.seam.IsAssigned(credFine, userPanic) {
		t.Fatalf("message after the panic: outcome %q, assigned %v", res.Subject, h.seam.IsAssigned(credFine, userPanic))
	}

	// The panicking event's pair lease was released: a check-out of the
	// same pair is not left waiting for it.
	h.publish(schemas.SubjectCheckedOut, event(schemas.SubjectCheckedOut, "boom-out", time.Now(),
		schemas.GuestData{ACSCredentialID: credPanics, ACSUserID: userPanic}), "")
	start := time.Now()
	h.waitOutcomes(3, 10*time.Second)
	if waited := time.Since(start); waited > cfg.Lease/2 {
		t.Fatalf("check-out of the panicked pair took %s: the pair lease was not released", waited)
	}
}

// poisonSeam ends the calling goroutine at its first call, as a process
// dies on a poison message before anything is recorded.
type poisonSeam struct{ consumer.SeamCaller }

func (poisonSeam) Assign(context.Context, seamclient.Request) (*seamclient.Response, error) {
	runtime.Goexit()
	return nil, nil
}

func (poisonSeam) Get(context.Context, string) (*seamclient.Response, error) {
	runtime.Goexit()
	return nil, nil
}

func TestHandle_EventWhoseDeliveriesKeepDyingIsDeadLetteredAfterMaxDeliver(t *testing.T) {
	cfg := crashConfig() // short leases: each dead delivery's claim runs out soon
	cfg.MaxDeliver = 2
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	doc := event(schemas.SubjectCheckedIn, "poison", time.Now(), schemas.GuestData{ACSCredentialID: credFine, ACSUserID: userPanic})
	seq := h.publish(schemas.SubjectCheckedIn, doc, "")

	// Deliveries 1..MaxDeliver take the claim and die.
	for i := 1; i <= cfg.MaxDeliver; i++ {
		msg := h.fetchOne()
		died := make(chan struct{})
		go func() {
			defer close(died)
			h.newWorkerWith(poisonSeam{h.seamClient()}, fmt.Sprint("dying-", i)).Handle(context.Background(), msg)
		}()
		<-died
	}
	if got := h.outcomes(); len(got) != 0 {
		t.Fatalf("outcomes before the limit: %v", subjects(got))
	}

	h.start(1)
	h.waitDrained(20 * time.Second)
	got := h.outcomes()
	if len(got) != 1 || got[0].DL.OriginalSubject == "" {
		t.Fatalf("want one dead letter, got %v", subjects(got))
	}
	dl := got[0].DL
	if dl.Error.Kind != schemas.ErrorKindRetriesExhausted || !strings.Contains(dl.Error.Message, "2 deliveries ended without a decision") {
		t.Fatalf("dead letter: kind %q, message %q; want retries_exhausted after %d undecided deliveries", dl.Error.Kind, dl.Error.Message, cfg.MaxDeliver)
	}
	if n := h.seam.Calls(""); n != 0 {
		t.Fatalf("seam got %d calls, want none", n)
	}
	if dl.OriginalStreamSequence != seq || dl.SourceEventID != "poison" {
		t.Fatalf("dead letter names sequence %d, event %q", dl.OriginalStreamSequence, dl.SourceEventID)
	}
	original, err := dl.Original()
	if err != nil || !bytes.Equal(original, doc) {
		t.Fatalf("original not carried byte for byte: %v", err)
	}
}

func TestHandle_HandedBackDeliveriesNeverCountTowardMaxDeliver(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxDeliver = 1
	cfg.RetryBudget = 50 * time.Millisecond
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	// Five deliveries end in a 503 and a hand-back, then Seam answers.
	h.seam.FailNext(4, seamtest.PathAssign, seamtest.HTML(503))
	h.start(1)
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "retried", time.Now(), schemas.GuestData{ACSCredentialID: credFine, ACSUserID: userPanic}), "")
	got := h.waitOutcomes(1, 20*time.Second)
	if got[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("want credential.assigned once Seam answers, got %s %+v", got[0].Subject, got[0].DL.Error)
	}
}
