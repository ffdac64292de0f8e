package consumer_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// newWorkerWith builds a worker with its own connection and the given
// Seam caller. A non-empty owner names it in claims and leases; the
// harness's workers otherwise share h.cfg.Owner, so they cannot see each
// other's claims as foreign.
func (h *harness) newWorkerWith(seam consumer.SeamCaller, owner string) *consumer.Worker {
	h.t.Helper()
	nc, err := nats.Connect(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := h.cfg
	if owner != "" {
		cfg.Owner = owner
	}
	w, err := consumer.New(context.Background(), js, seam, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// runWorkerWith runs one worker with the given Seam caller until the test ends.
func (h *harness) runWorkerWith(seam consumer.SeamCaller) {
	h.t.Helper()
	w := h.newWorkerWith(seam, "")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(ctx); err != nil {
			h.t.Errorf("worker: %v", err)
		}
	}()
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

func (h *harness) seamClient() *seamclient.Client {
	h.t.Helper()
	c, err := seamclient.New(h.seam.URL, "test-key", seamclient.WithTimeout(h.cfg.SeamTimeout))
	if err != nil {
		h.t.Fatal(err)
	}
	return c
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
		switch o.sourceID() {
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

func TestHandle_MessagePastTheDeliveryLimitIsDeadLetteredBeforeDecoding(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	cfg := h.cfg
	doc := event(schemas.SubjectCheckedIn, "too-often", time.Now(), schemas.GuestData{ACSCredentialID: credFine, ACSUserID: userPanic})
	seq := h.publish(schemas.SubjectCheckedIn, doc, "")

	// Deliveries 1..MaxDeliver end without an outcome, as if each crashed
	// the process that took it.
	cons, err := h.js.Consumer(t.Context(), cfg.InputStream, cfg.Durable)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= cfg.MaxDeliver; i++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		msg := <-batch.Messages()
		if msg == nil {
			t.Fatalf("delivery %d: no message", i)
		}
		meta, err := msg.Metadata()
		if err != nil || int(meta.NumDelivered) != i {
			t.Fatalf("delivery %d: metadata %+v %v", i, meta, err)
		}
		if err := msg.Nak(); err != nil {
			t.Fatal(err)
		}
	}

	h.start(1)
	h.waitDrained(10 * time.Second)
	got := h.outcomes()
	if len(got) != 1 || got[0].DL.OriginalSubject == "" {
		t.Fatalf("want one dead letter, got %v", subjects(got))
	}
	dl := got[0].DL
	if dl.Error.Kind != schemas.ErrorKindRetriesExhausted || dl.Deliveries != cfg.MaxDeliver+1 ||
		!strings.Contains(dl.Error.Message, "before decoding") {
		t.Fatalf("dead letter: kind %q, deliveries %d, message %q; want retries_exhausted after %d deliveries, before decoding",
			dl.Error.Kind, dl.Deliveries, dl.Error.Message, cfg.MaxDeliver+1)
	}
	// Not decoded: the event is valid, yet the dead letter knows neither its
	// id nor its request, and Seam was never called.
	if dl.SourceEventID != "" || len(dl.Request) != 0 {
		t.Fatalf("the event was decoded: source id %q, request %s", dl.SourceEventID, dl.Request)
	}
	if n := h.seam.Calls(""); n != 0 {
		t.Fatalf("seam got %d calls, want none", n)
	}
	if dl.OriginalStreamSequence != seq {
		t.Fatalf("original stream sequence %d, want %d", dl.OriginalStreamSequence, seq)
	}
	original, err := dl.Original()
	if err != nil || !bytes.Equal(original, doc) {
		t.Fatalf("original not carried byte for byte: %v", err)
	}
}
