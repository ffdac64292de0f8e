package dlq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
)

const (
	testCred = "66666666-6666-4666-8666-666666666601"
	testUser = "33333333-3333-4333-8333-333333333301"
)

// env is an embedded JetStream server provisioned with the keyworker
// layout, and a Queue on it.
type env struct {
	t     *testing.T
	js    jetstream.JetStream
	cfg   consumer.Config
	q     *dlq.Queue
	store *idempotency.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	js := natstest.JetStream(t)
	cfg := consumertest.Provision(t, js, consumer.Config{})
	q, err := dlq.New(js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), cfg.IdempotencyBucket)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, js: js, cfg: cfg, q: q, store: idempotency.NewStore(kv)}
}

// guestEvent builds a valid input event of the test guest.
func guestEvent(subject, id string) []byte {
	return consumertest.Event(subject, "pms://test", id, time.Now().UTC().Add(-time.Minute),
		schemas.GuestData{ACSCredentialID: testCred, ACSUserID: testUser, ReservationID: "R-" + id})
}

// deadLetter describes one dead letter to write.
type deadLetter struct {
	subject  string // input subject
	original []byte
	id       string // source event id; empty: as if the original was undecodable
	kind     string
	seamType string
	omit     bool            // leave the original out, as for one too large to carry
	cred     json.RawMessage // acs_credential to carry
}

// writeDeadLetter publishes the original to the input stream (as the
// worker's input) and a dead letter for it to the dead-letter stream, and
// returns the dead letter's sequence.
func (e *env) writeDeadLetter(d deadLetter) uint64 {
	e.t.Helper()
	ctx := context.Background()
	in, err := e.js.Publish(ctx, d.subject, d.original)
	if err != nil {
		e.t.Fatal(err)
	}
	dl := schemas.DeadLetter{
		OriginalSubject:        d.subject,
		OriginalStreamSequence: in.Sequence,
		Error:                  schemas.DeadLetterError{Kind: d.kind, Message: "test: gave up", SeamErrorType: d.seamType},
		Attempts:               2,
		Deliveries:             2,
		ACSCredential:          d.cred,
	}
	if d.id != "" {
		dl.SourceEventID, dl.SourceEventSource = d.id, "pms://test"
	}
	original := d.original
	if d.omit {
		dl.OriginalEventEncoding = schemas.EncodingOmitted
	}
	doc, err := schemas.MarshalDeadLetterEvent("keyworker", "dl-"+d.id+fmt.Sprint(in.Sequence), "R-"+d.id, time.Now().UTC(), dl, original)
	if err != nil {
		e.t.Fatal(err)
	}
	ack, err := e.js.Publish(ctx, schemas.DeadLetterSubject(d.subject), doc)
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

// inputMessages reads every message of the input stream after sequence after.
func (e *env) inputMessages(after uint64) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, e.cfg.InputStream)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := after + 1; seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func (e *env) inputLastSeq() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), e.cfg.InputStream)
	if err != nil {
		e.t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

func sequences(entries []dlq.Entry) []uint64 {
	out := make([]uint64, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Sequence)
	}
	return out
}
