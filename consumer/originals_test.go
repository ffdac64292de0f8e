package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// TestDeadLetter_OversizeOriginalOutlivesTheInputStreamAndGoesWithPurge: a
// valid check-in close to the max payload (a large extension attribute)
// that Seam refuses is dead-lettered without its original, which is kept
// in the originals object store before the dead letter appears. With the
// input stream's copy gone (aged out), replay still re-publishes it byte
// for byte, headers included, and the replay succeeds; purge deletes the
// kept copy with the dead letter.
func TestDeadLetter_OversizeOriginalOutlivesTheInputStreamAndGoesWithPurge(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.seam.FailNext(1, assignPath, seamtest.SeamError(404, "acs_credential_not_found"))
	obs, err := h.js.ObjectStore(ctx, h.cfg.OriginalsBucket)
	if err != nil {
		t.Fatalf("provisioning made no originals object store: %v", err)
	}

	// Whether the kept copy exists at the moment the dead letter is published.
	keptFirst := make(chan error, 1)
	sub, err := h.nc.Subscribe(schemas.DeadLetterPrefix+">", func(m *nats.Msg) {
		env, _, err := schemas.DecodeDeadLetterEvent(m.Data)
		if err == nil {
			_, err = obs.GetInfo(ctx, env.ID)
		}
		select {
		case keptFirst <- err:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano)
	doc := []byte(`{"specversion":"1.0","id":"huge-1","source":"pms://test","type":"guest.checked_in","time":"` + at +
		`","padding":"` + strings.Repeat("x", 1020*1024) +
		`","data":{"acs_credential_id":"` + credA + `","acs_user_id":"` + userA + `","reservation_id":"R-huge"}}`)
	in := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: doc, Header: nats.Header{}}
	in.Header.Set(schemas.HeaderContentType, schemas.ContentType)
	in.Header.Set("X-Trace", "trace-42")
	seq := h.publishMsg(in)
	h.start(1)

	got := h.waitOutcomes(1, 15*time.Second)
	h.waitDrained(5 * time.Second)
	dl := got[0].DL
	if dl.Error.Kind != schemas.ErrorKindPermanent || dl.OriginalEventEncoding != schemas.EncodingOmitted || dl.OriginalStreamSequence != seq {
		t.Fatalf("want a permanent dead letter with the original omitted, got %+v", dl)
	}
	if err := <-keptFirst; err != nil {
		t.Fatalf("the original was not in %s when its dead letter was published: %v", h.cfg.OriginalsBucket, err)
	}

	// The input stream ages the original out.
	s, err := h.js.Stream(ctx, h.cfg.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil {
		t.Fatal(err)
	}

	q, err := dlq.New(h.js, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := q.List(ctx, dlq.Filter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("list: %d entries, %v", len(entries), err)
	}
	rep, err := q.Replay(ctx, entries, dlq.ReplayOptions{})
	if err != nil || rep.Replayed != 1 {
		t.Fatalf("replay: %+v, %v", rep, err)
	}
	replayed := h.inputMsg(rep.Results[0].InputSequence)
	if !bytes.Equal(replayed.Data, doc) {
		t.Fatalf("replayed %d bytes, not the %d original bytes", len(replayed.Data), len(doc))
	}
	if replayed.Header.Get("X-Trace") != "trace-42" || replayed.Header.Get(schemas.HeaderContentType) != schemas.ContentType {
		t.Fatalf("replay lost the original headers: %v", replayed.Header)
	}
	got = h.waitOutcomes(2, 15*time.Second)
	if o := got[0]; o.Subject != schemas.SubjectAssigned || o.Result.ReplayOf != entries[0].Sequence {
		t.Fatalf("want the replay assigned, got %s %+v", o.Subject, o.Result)
	}

	if n, err := q.Purge(ctx, entries); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if _, err := obs.GetInfo(ctx, entries[0].Envelope.ID); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("the kept original survived purge: %v", err)
	}
}
