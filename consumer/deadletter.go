package consumer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// deadLetterHeadroom is kept free under the server's max payload for the
// headers and the rest of the dead letter when deciding whether the
// original event still fits.
const deadLetterHeadroom = 16 << 10

// maxStoredOutcome bounds the outcome document kept in the idempotency
// record; a larger one is not kept, and a delivery after a crash decides anew.
const maxStoredOutcome = 256 << 10

// decide records the outcome on the idempotency key before it is
// published, so a delivery after a crash publishes this same outcome
// instead of deciding anew. It reports whether it did: there is no claim
// for an undecodable event, and a large document is not kept.
func (w *Worker) decide(ctx context.Context, j *job, status idempotency.Status, subject, id string, doc []byte) (bool, error) {
	if j.claim == nil || len(doc) > maxStoredOutcome {
		return false, nil
	}
	if err := w.claims.Decide(ctx, j.claim, status, subject, id, doc, j.attempts); err != nil {
		return false, err
	}
	return true, nil
}

// deadLetter publishes a dead letter carrying everything needed to replay
// the event, records it on the idempotency key, and says to terminate the
// message. If the dead letter cannot be published, the message is handed
// back: never acked without one.
func (w *Worker) deadLetter(ctx context.Context, j *job, kind string, cause error) Outcome {
	w.releasePair(ctx, j)
	dl := w.describe(j, kind, cause)
	subject := schemas.DeadLetterSubject(j.msg.Subject())
	id := w.outcomeID(j)
	now := w.now().UTC()

	dl.OriginalEventEncoding = schemas.ChooseEncoding(j.raw)
	doc, err := schemas.MarshalDeadLetterEvent(w.cfg.Source, id, eventSubject(j), now, dl, j.raw)
	if err == nil && len(doc) > w.maxPayload-deadLetterHeadroom {
		// Replay reads the original from the input stream by sequence.
		dl.OriginalEventEncoding = schemas.EncodingOmitted
		doc, err = schemas.MarshalDeadLetterEvent(w.cfg.Source, id, eventSubject(j), now, dl, nil)
	}
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	decided, err := w.decide(ctx, j, idempotency.StatusDeadLettered, subject, id, doc)
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.BusyDelay)
	}
	seq, err := w.publish(ctx, subject, id, doc)
	if err != nil && decided {
		return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err} // the redelivery publishes it
	}
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	if j.claim != nil {
		if err := w.claims.Complete(ctx, j.claim, idempotency.StatusDeadLettered, subject, seq, j.attempts); err != nil {
			w.log.Warn().Err(err).Str("event_id", eventID(j)).Msg("recording the dead letter sequence")
		}
	}
	w.metrics.observeDeadLetter(kind)
	w.log.Warn().Str("event_id", eventID(j)).Str("nats_subject", j.msg.Subject()).Str("kind", kind).
		Str("error", dl.Error.Message).Uint64("dead_letter_seq", seq).Msg("event dead-lettered")
	return Outcome{Kind: DeadLettered, Subject: subject, Err: cause}
}

// describe builds the dead letter's data from what the job knows.
func (w *Worker) describe(j *job, kind string, cause error) schemas.DeadLetter {
	sum := sha256.Sum256(j.raw)
	dl := schemas.DeadLetter{
		OriginalSubject: j.msg.Subject(),
		OriginalSHA256:  hex.EncodeToString(sum[:]),
		OriginalSize:    len(j.raw),
		Error:           schemas.DeadLetterError{Kind: kind, Message: cause.Error()},
		ACSCredential:   j.credential,
		Attempts:        j.attempts,
		ReplayOf:        j.replayOf,
	}
	if j.meta != nil {
		dl.OriginalStreamSequence = j.meta.Sequence.Stream
		dl.Deliveries = int(j.meta.NumDelivered)
	}
	if j.event != nil {
		dl.SourceEventID = j.event.ID
		dl.SourceEventSource = j.event.Source
	}
	if j.req != nil {
		dl.Request, _ = json.Marshal(j.req)
	}
	if !j.first.IsZero() {
		first, last := j.first.UTC(), j.last.UTC()
		dl.FirstAttemptAt, dl.LastAttemptAt = &first, &last
	}
	var api *seamclient.APIError
	if errors.As(cause, &api) {
		dl.Error.HTTPStatus = api.StatusCode
		dl.Error.SeamErrorType = api.Type
		dl.Error.SeamRequestID = api.RequestID
	}
	var respErr *seamclient.ResponseError
	if errors.As(cause, &respErr) {
		dl.Error.HTTPStatus = respErr.StatusCode
		dl.Error.SeamRequestID = respErr.RequestID
	}
	return dl
}

func eventSubject(j *job) string {
	if j.event == nil {
		return ""
	}
	return j.event.Subject
}

// publish publishes an outcome event with its Nats-Msg-Id and waits for the
// stream's ack, returning the stream sequence. A duplicate ack (the outcome
// was published before a crash) is success.
func (w *Worker) publish(ctx context.Context, subject, msgID string, doc []byte) (uint64, error) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	msg := &nats.Msg{Subject: subject, Data: doc, Header: nats.Header{}}
	msg.Header.Set("Content-Type", schemas.ContentType)
	ack, err := w.js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}
