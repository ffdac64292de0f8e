package consumer

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
)

// An owner that dies between publishing an outcome and recording it leaves
// its claim in progress. The stream's duplicate window catches a re-publish
// soon after; one after a longer delay would be a second outcome. So the
// delivery that takes over looks in the stream itself, in the only span the
// dead owner could have published in: from its claim to its lease's end.

// scanMargin widens the span for clock differences between replicas and
// the server, which stamps the messages.
const scanMargin = time.Minute

// scanBatch is how many message headers one fetch of the scan reads.
const scanBatch = 256

// checkPublished sets j.published when the claim was taken over from an
// owner that died holding it (or whose publish failed) and the outcome was
// published all the same.
func (w *Worker) checkPublished(ctx context.Context, j *job) error {
	prev := j.claim.Previous
	if prev.Status != idempotency.StatusInProgress && !prev.PublishTried {
		return nil
	}
	from := prev.ScanFrom
	if from.IsZero() {
		from = prev.ClaimedAt
	}
	if from.IsZero() {
		from = prev.UpdatedAt.Add(-w.cfg.Lease)
	}
	to := later(prev.LeaseUntil, prev.UpdatedAt).Add(publishTimeout + scanMargin)
	subject, found, err := w.findOutcome(ctx, w.cfg.ResultsStream, w.outcomeID(j), from.Add(-scanMargin), to)
	if err != nil {
		return err
	}
	if found {
		j.publishedSubject = subject
		w.log.Info().Str("event_id", j.event.ID).Msg("the outcome was published by an owner that died before recording it: not publishing again")
	}
	j.published = found
	return nil
}

// republish publishes the stored outcome of an event decided but maybe never
// published, unless the stream has it.
func (w *Worker) republish(ctx context.Context, rec idempotency.Record) error {
	if rec.OutcomeSeq != 0 || rec.OutcomeDoc == nil {
		return nil
	}
	if w.now().Sub(rec.UpdatedAt) > w.cfg.DuplicateWindow-scanMargin {
		// Past the duplicate window a second copy would not be dropped.
		stream := w.cfg.ResultsStream
		if strings.HasPrefix(rec.Outcome, schemas.DeadLetterPrefix) {
			stream = w.cfg.DeadLetterStream
		}
		_, found, err := w.findOutcome(ctx, stream, rec.OutcomeID, rec.UpdatedAt.Add(-scanMargin), rec.UpdatedAt.Add(publishTimeout+scanMargin))
		if err != nil || found {
			return err
		}
	}
	_, err := w.publish(ctx, rec.Outcome, rec.OutcomeID, rec.OutcomeDoc)
	return err
}

// findOutcome reports whether stream holds a message with Nats-Msg-Id id
// stored between from and to, and its subject. It reads headers only.
func (w *Worker) findOutcome(ctx context.Context, stream, id string, from, to time.Time) (string, bool, error) {
	s, err := w.js.Stream(ctx, stream)
	if err != nil {
		return "", false, fmt.Errorf("consumer: scan %s: %w", stream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 || state.LastTime.Before(from) {
		return "", false, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &from,
		HeadersOnly:   true,
	})
	if err != nil {
		return "", false, fmt.Errorf("consumer: scan %s: %w", stream, err)
	}
	for {
		batch, err := cons.Fetch(scanBatch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return "", false, fmt.Errorf("consumer: scan %s: %w", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if m.Headers().Get(jetstream.MsgIDHeader) == id {
				return m.Subject(), true, nil
			}
			meta, err := m.Metadata()
			if err != nil {
				return "", false, fmt.Errorf("consumer: scan %s: %w", stream, err)
			}
			if meta.Timestamp.After(to) || meta.Sequence.Stream >= state.LastSeq {
				return "", false, nil
			}
		}
		if err := batch.Error(); err != nil {
			return "", false, fmt.Errorf("consumer: scan %s: %w", stream, err)
		}
		if n == 0 {
			return "", false, nil
		}
	}
}
