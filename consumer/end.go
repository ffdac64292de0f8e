package consumer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// How a delivery ends: conclude (result or skip), deadLetter, or handBack
// for a later delivery. Each publishes at most one outcome event and
// leaves the claim and the credential lease settled.

// Timeouts of the steps that must work during shutdown too, when the
// handler's context is already done.
const (
	releaseTimeout = 5 * time.Second
	publishTimeout = 10 * time.Second
)

// deadLetterHeadroom is kept free under the server's max payload for the
// headers and the rest of the dead letter when deciding whether the
// original event still fits.
const deadLetterHeadroom = 16 << 10

// maxStoredOutcome bounds the outcome document kept in the idempotency
// record; a larger one is not kept, and a delivery after a crash decides anew.
const maxStoredOutcome = 256 << 10

// conclude stores the credential's new state and publishes the event's
// result, or its skip when the ordering rule superseded it.
func (w *Worker) conclude(ctx context.Context, j *job) Outcome {
	next := j.plan.State
	next.HolderUnknown = false // the plan's calls made it known
	if j.plan.Call && j.checkIn() {
		next.Holder = j.guest
		if cred, err := seamclient.ParseCredential(j.credential); err == nil && cred.ACSUserID != "" {
			next.Holder = idempotency.NewGuest(cred.ACSUserID, cred.UserIdentityID)
		}
		if next.CheckIn != nil && next.CheckIn.Key == j.key {
			ci := *next.CheckIn
			ci.Guest = j.guest
			if next.Holder.Is(j.guest) {
				ci.Guest = next.Holder // Seam names the guest both ways
			}
			next.CheckIn = &ci
		}
	}
	cctx, end := w.startStep(ctx, "credential commit")
	err := w.creds.Commit(cctx, j.lease, next)
	end(err)
	if err != nil {
		// Uncommitted, the change would not count for ordering. The
		// redelivery plans again (its calls are no-ops now) and commits.
		return w.handBack(ctx, j, err, w.cfg.BusyDelay)
	}
	j.lease = nil
	if !j.plan.Apply {
		return w.skip(ctx, j)
	}
	subject := schemas.SubjectAssigned
	if !j.checkIn() {
		subject = schemas.SubjectUnassigned
	}
	return w.finish(ctx, j, subject, schemas.CredentialResult{
		GuestData:         j.event.Data,
		ACSCredential:     j.credential,
		Attempts:          j.attempts,
		SourceEventID:     j.event.ID,
		SourceEventSource: j.event.Source,
		ReplayOf:          j.replayOf,
		ProviderSync:      w.syncOf(j), // sync.go
		WorkspaceID:       workspaceID(j),
	})
}

// skip publishes credential.skipped with the rule's reason.
func (w *Worker) skip(ctx context.Context, j *job) Outcome {
	data := schemas.Skipped{
		GuestData:         j.event.Data,
		Reason:            j.plan.Reason,
		NewerEventTime:    j.event.Time,
		SourceEventID:     j.event.ID,
		SourceEventSource: j.event.Source,
		ReplayOf:          j.replayOf,
		WorkspaceID:       workspaceID(j),
	}
	if by := j.plan.By; by != nil {
		data.NewerEventTime = by.Time
		data.SupersededByEventID, data.SupersededByEventSource = by.ID, by.Source
	}
	return w.finish(ctx, j, schemas.SubjectSkipped, data)
}

// finish publishes a result or skip event and completes the claim. The
// publish is awaited: only an event the results stream holds may be acked.
func (w *Worker) finish(ctx context.Context, j *job, subject string, data any) Outcome {
	id := w.outcomeID(j)
	if j.published {
		return w.complete(ctx, j, idempotency.StatusCompleted, subject, 0)
	}
	doc, err := schemas.NewEnvelope(subject, w.cfg.Source, id, j.event.Subject, w.now().UTC(), data)
	if err != nil {
		return w.deadLetter(ctx, j, schemas.ErrorKindPermanent, err)
	}
	// No write-ahead here, unlike deadLetter: a delivery after a crash
	// looks for this outcome in the stream (checkPublished) before it
	// publishes, and the same Nats-Msg-Id deduplicates it meanwhile.
	seq, err := w.publish(ctx, subject, id, doc)
	if err != nil {
		// It may have been stored all the same: the next delivery looks.
		j.claim.Record.PublishTried = true
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	return w.complete(ctx, j, idempotency.StatusCompleted, subject, seq)
}

// complete records the end of the event on its claim and logs it.
func (w *Worker) complete(ctx context.Context, j *job, status idempotency.Status, subject string, seq uint64) Outcome {
	if err := w.claims.Complete(ctx, j.claim, status, subject, seq, j.attempts); err != nil {
		w.log.Warn().Err(err).Str("event_id", j.event.ID).Msg("recording the outcome sequence")
	}
	w.logFor(j).Info().Str("event_id", j.event.ID).Str("event_source", j.event.Source).Str("type", j.event.Type).
		Str("acs_credential_id", j.event.Data.ACSCredentialID).Str("outcome", subject).Int("attempts", j.attempts).
		Bool("already_published", j.published).Uint64("replay_of", j.replayOf).Msg("event handled")
	return Outcome{Kind: Done, Subject: subject}
}

// seamFailed ends a delivery whose Seam call failed, as verdictOf says.
func (w *Worker) seamFailed(ctx context.Context, j *job, err error) Outcome {
	v := w.verdictOf(ctx, j, err)
	if v.deadLetter != "" {
		return w.deadLetter(ctx, j, v.deadLetter, v.cause)
	}
	return w.handBack(ctx, j, err, v.delay)
}

// verdict is what a failed Seam call becomes: a dead letter of a kind, or
// another delivery after delay.
type verdict struct {
	deadLetter string // schemas.ErrorKind…; empty: hand the message back
	cause      error
	delay      time.Duration
}

// verdictOf decides: a dead letter for a permanent error or once RetryFor
// has passed since the first attempt, otherwise another delivery later
// (at once on shutdown, soon after a lost lease, and never before a
// Retry-After).
func (w *Worker) verdictOf(ctx context.Context, j *job, err error) verdict {
	var lost *leaseLostError
	switch {
	case ctx.Err() != nil, errors.Is(err, errStopping):
		return verdict{}
	case errors.As(err, new(*crowdedError)):
		return verdict{delay: w.cfg.GateProbeMax}
	case errors.As(err, &lost):
		return verdict{delay: w.cfg.BusyDelay}
	case w.retryForSpent(j) != nil:
		return verdict{deadLetter: schemas.ErrorKindRetriesExhausted, cause: w.retryForSpent(j)}
	case errors.As(err, new(*retryForError)):
		return verdict{deadLetter: schemas.ErrorKindRetriesExhausted, cause: err}
	case permanent(err):
		return verdict{deadLetter: schemas.ErrorKindPermanent, cause: err}
	}
	delay := w.nakDelay(j.meta.NumDelivered)
	if after, ok := seamclient.RetryAfter(err); ok && after > delay {
		delay = after
	}
	return verdict{delay: delay}
}

// nakDelay grows with the delivery count: NakDelay, doubled per delivery, up to NakDelayMax.
func (w *Worker) nakDelay(delivered uint64) time.Duration {
	d := w.cfg.NakDelay
	for i := uint64(1); i < delivered && d < w.cfg.NakDelayMax; i++ {
		d *= 2
	}
	return min(d, w.cfg.NakDelayMax)
}

// handBack releases what the job holds, keeping its attempt count, and asks
// for a redelivery after delay.
func (w *Worker) handBack(ctx context.Context, j *job, err error, delay time.Duration) Outcome {
	w.releaseLease(ctx, j)
	if j.claim != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		if rerr := w.claims.Release(rctx, j.claim, j.attempts, j.first, j.last); rerr != nil {
			w.log.Warn().Err(rerr).Str("event_id", j.event.ID).Msg("releasing claim: it will expire")
		}
	}
	if ctx.Err() == nil {
		w.logFor(j).Info().Err(err).Str("event_id", eventID(j)).Dur("delay", delay).Msg("retrying later")
	}
	return Outcome{Kind: Retry, Delay: delay, Err: err}
}

// releaseLease gives the credential back without changing the rule's
// inputs; after a write was sent, the next holder reads Seam first.
func (w *Worker) releaseLease(ctx context.Context, j *job) {
	if j.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := w.creds.Release(ctx, j.lease, j.wrote); err != nil {
		w.log.Warn().Err(err).Str("event_id", j.event.ID).Msg("releasing credential lease: it will expire")
	}
	j.lease = nil
}

// commitDeadLetter makes a dead-lettered event count for ordering: a
// dead-lettered check-out makes older check-ins stale, and a replay of the
// dead letter meets the same rule. The holder stays what it was, unknown
// if a write was sent.
func (w *Worker) commitDeadLetter(ctx context.Context, j *job) {
	if j.lease == nil || j.event == nil {
		return
	}
	st := j.lease.State
	next := st.Merge(j.mark())
	next.Holder, next.HolderUnknown = st.Holder, st.HolderUnknown || j.wrote
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := w.creds.Commit(ctx, j.lease, next); err != nil {
		w.log.Warn().Err(err).Str("event_id", j.event.ID).Msg("recording a dead-lettered event for ordering")
		w.releaseLease(ctx, j)
	}
	j.lease = nil
}

// deadLetter publishes a dead letter carrying everything needed to replay
// the event, records it on the idempotency key, and says to terminate the
// message. If the dead letter cannot be published, the message is handed
// back: never acked without one.
func (w *Worker) deadLetter(ctx context.Context, j *job, kind string, cause error) Outcome {
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
		if err == nil && len(doc) > w.maxPayload-deadLetterHeadroom {
			// Headers this large go only with the kept original.
			dl.OriginalHeaders = nil
			doc, err = schemas.MarshalDeadLetterEvent(w.cfg.Source, id, eventSubject(j), now, dl, nil)
		}
	}
	if err == nil && dl.OriginalEventEncoding == schemas.EncodingOmitted {
		// Stored before the dead letter is published: every dead letter
		// without its original stays replayable once the input stream has
		// aged the original out.
		err = w.keepOriginal(ctx, j, id)
	}
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	// Counted for ordering first: a crash before the decision is recorded
	// leaves an event that is planned again, never one that is lost to it.
	w.commitDeadLetter(ctx, j)
	decided, err := w.decide(ctx, j, idempotency.StatusDeadLettered, subject, id, doc)
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.BusyDelay)
	}
	if j.claim == nil && j.meta != nil && j.meta.NumDelivered > 1 && !j.published {
		// No record to say whether an earlier delivery published it: look,
		// from when the message was stored.
		_, found, err := w.findOutcome(ctx, w.cfg.DeadLetterStream, id, j.meta.Timestamp.Add(-scanMargin), w.now().Add(scanMargin))
		if err != nil {
			return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err}
		}
		j.published = found
	}
	var seq uint64
	if !j.published {
		seq, err = w.publish(ctx, subject, id, doc)
		if err != nil && decided {
			return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err} // the redelivery publishes it
		}
		if err != nil {
			return w.handBack(ctx, j, err, w.cfg.NakDelay)
		}
	}
	if j.claim != nil {
		if err := w.claims.Complete(ctx, j.claim, idempotency.StatusDeadLettered, subject, seq, j.attempts); err != nil {
			w.log.Warn().Err(err).Str("event_id", eventID(j)).Msg("recording the dead letter sequence")
		}
	}
	w.metrics.observeDeadLetter(kind)
	w.logFor(j).Warn().Str("event_id", eventID(j)).Str("nats_subject", j.msg.Subject()).Str("kind", kind).
		Str("error", dl.Error.Message).Uint64("dead_letter_seq", seq).Msg("event dead-lettered")
	return Outcome{Kind: DeadLettered, Subject: subject, Err: cause}
}

// keepOriginal stores an original too large for its dead letter in the
// originals object store under the dead letter's id, with its headers: the
// input stream ages it out, the dead letter stays. A redelivery stores the
// same bytes under the same name again.
func (w *Worker) keepOriginal(ctx context.Context, j *job, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	obs, err := w.js.ObjectStore(ctx, w.cfg.OriginalsBucket)
	if err != nil {
		return fmt.Errorf("consumer: originals object store %s: %w", w.cfg.OriginalsBucket, err)
	}
	meta := jetstream.ObjectMeta{
		Name:    id,
		Headers: nats.Header(originalHeaders(j.msg.Headers())),
		Metadata: map[string]string{
			"original_subject": j.msg.Subject(),
		},
	}
	if j.meta != nil {
		meta.Metadata["original_stream_sequence"] = strconv.FormatUint(j.meta.Sequence.Stream, 10)
	}
	if _, err := obs.Put(ctx, meta, bytes.NewReader(j.raw)); err != nil {
		return fmt.Errorf("consumer: keep original of dead letter %s in %s: %w", id, w.cfg.OriginalsBucket, err)
	}
	return nil
}

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

// describe builds the dead letter's data from what the job knows.
func (w *Worker) describe(j *job, kind string, cause error) schemas.DeadLetter {
	sum := sha256.Sum256(j.raw)
	dl := schemas.DeadLetter{
		OriginalHeaders: originalHeaders(j.msg.Headers()),
		OriginalSubject: j.msg.Subject(),
		OriginalSHA256:  hex.EncodeToString(sum[:]),
		OriginalSize:    len(j.raw),
		Error:           schemas.DeadLetterError{Kind: kind, Message: cause.Error()},
		ACSCredential:   j.credential,
		Attempts:        j.attempts,
		ReplayOf:        j.replayOf,
		WorkspaceID:     workspaceID(j),
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

// publish publishes an outcome event with its Nats-Msg-Id and waits for the
// stream's ack, returning the stream sequence. A duplicate ack (the outcome
// was published before a crash) is success.
func (w *Worker) publish(ctx context.Context, subject, msgID string, doc []byte) (uint64, error) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: subject, Data: doc, Header: nats.Header{}}
	msg.Header.Set("Content-Type", schemas.ContentType)
	end := w.startPublish(pctx, msg, msgID) // trace.go: injects traceparent
	ack, err := w.js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID))
	end(ackSeq(ack), err)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// originalHeaders copies a message's headers for its dead letter: never
// nil, so the dead letter says "no headers" rather than "not kept".
func originalHeaders(h nats.Header) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		out[k] = slices.Clone(v)
	}
	return out
}
