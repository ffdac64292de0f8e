package consumer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// job is what the pipeline knows about one delivery so far. Each step fills
// in its part; a dead letter carries whatever is known when it is written.
type job struct {
	slots    slots // nil when handled outside Run
	parked   bool  // slot given back while waiting
	msg      jetstream.Msg
	owner    string // this delivery's name in claims and leases
	meta     *jetstream.MsgMetadata
	raw      []byte
	replayOf uint64

	event *schemas.GuestEvent
	key   string // idempotency key of (source, id)
	req   *seamclient.Request

	claim *idempotency.Claim
	lease *idempotency.PairLease

	credential json.RawMessage
	attempts   int // Seam attempts, across deliveries
	first      time.Time
	last       time.Time
}

// Handle runs the pipeline for one delivery and says how to settle it. It
// never acks. Steps, top to bottom:
//
//  1. a message past the delivery limit is dead-lettered before decoding,
//     so one that crashes the process on every delivery still ends there;
//  2. decode and validate (invalid: dead letter);
//  3. claim the idempotency key (already done: duplicate; claimed by a live
//     replica: retry later);
//  4. lease the (credential, user) pair (older than the newest applied:
//     credential.skipped);
//  5. call Seam with retries (permanent: dead letter; still failing: retry
//     later, or dead letter once out of deliveries);
//  6. publish the result and record completion.
//
// A panic in any step dead-letters the message.
func (w *Worker) Handle(ctx context.Context, msg jetstream.Msg) Outcome {
	return w.handle(ctx, msg, nil)
}

// handle is Handle for a message that holds one of Run's slots.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg, s slots) (out Outcome) {
	// Each delivery owns its claims under its own name: two copies of one
	// event in this process must not mistake each other's claim for their own.
	owner := w.cfg.Owner + "." + strconv.FormatUint(w.deliveries.Add(1), 10)
	j := &job{slots: s, msg: msg, owner: owner, raw: msg.Data(), replayOf: replayOf(msg)}
	defer func() {
		if s != nil && !j.parked {
			s.release()
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			w.log.Error().Str("panic", fmt.Sprint(p)).Bytes("stack", debug.Stack()).
				Str("nats_subject", msg.Subject()).Msg("handler panicked: dead-lettering the message")
			out = w.deadLetter(ctx, j, schemas.ErrorKindPermanent, &PanicError{Value: fmt.Sprint(p)})
		}
	}()
	meta, err := msg.Metadata()
	if err != nil {
		return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err}
	}
	j.meta = meta

	if int(meta.NumDelivered) > w.cfg.MaxDeliver {
		return w.deadLetter(ctx, j, schemas.ErrorKindRetriesExhausted, &DeliveryLimitError{Deliveries: int(meta.NumDelivered)})
	}
	if err := w.decode(j); err != nil {
		return w.deadLetter(ctx, j, schemas.ErrorKindInvalidEvent, err)
	}
	if out, ok := w.claimEvent(ctx, j); !ok {
		return out
	}
	if out, ok := w.leasePair(ctx, j); !ok {
		return out
	}
	if err := w.callSeam(ctx, j); err != nil {
		return w.seamFailed(ctx, j, err)
	}
	return w.applied(ctx, j)
}

// decode validates the message against the schema of its subject and
// derives the idempotency key and the Seam request.
func (w *Worker) decode(j *job) error {
	ev, err := w.validator.DecodeGuestEvent(j.msg.Subject(), j.raw)
	if err != nil {
		return err
	}
	if skew := ev.Time.Sub(w.now()); skew > w.cfg.MaxClockSkew {
		return &schemas.ValidationError{
			Subject: j.msg.Subject(),
			Reason:  fmt.Sprintf("time %s is %s in the future (more than %s)", ev.Time.Format(time.RFC3339), skew.Round(time.Second), w.cfg.MaxClockSkew),
		}
	}
	j.event = ev
	j.key = idempotency.Key(ev.Source, ev.ID)
	j.req = &seamclient.Request{
		ACSCredentialID: ev.Data.ACSCredentialID,
		ACSUserID:       ev.Data.ACSUserID,
		UserIdentityID:  ev.Data.UserIdentityID,
	}
	return nil
}

// claimEvent takes the event's idempotency key, so that one delivery at a
// time, across replicas, works on it. While another delivery holds the key
// it waits in process (a duplicate usually resolves within one Seam call),
// then hands the message back until the holder's lease ends.
func (w *Worker) claimEvent(ctx context.Context, j *job) (Outcome, bool) {
	deadline := w.now().Add(w.cfg.RetryBudget)
	wait := 20 * time.Millisecond
	for {
		c, err := w.claims.Claim(ctx, j.key, j.owner, w.cfg.Lease, j.replayOf != 0)
		var conflict *idempotency.ConflictError
		switch {
		case err == nil:
			j.claim = c
			j.attempts = c.Record.Attempts
			j.first = c.Record.FirstAttemptAt
			return Outcome{}, true
		case errors.Is(err, idempotency.ErrDone):
			if errors.As(err, &conflict) && conflict.Record.OutcomeSeq == 0 && conflict.Record.OutcomeDoc != nil {
				// Decided, maybe never published: publish it (again).
				rec := conflict.Record
				if _, err := w.publish(ctx, rec.Outcome, rec.OutcomeID, rec.OutcomeDoc); err != nil {
					return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err}, false
				}
			}
			return Outcome{Kind: Duplicate}, false
		case !errors.Is(err, idempotency.ErrAlreadyClaimed) || !errors.As(err, &conflict):
			return Outcome{Kind: Retry, Delay: w.cfg.BusyDelay, Err: err}, false
		case w.now().Add(wait).After(deadline):
			// Held by a replica that may have crashed: come back when its lease ends.
			delay := max(w.cfg.BusyDelay, conflict.Record.LeaseUntil.Sub(w.now()))
			return Outcome{Kind: Retry, Delay: delay, Err: err}, false
		}
		_ = j.msg.InProgress()
		if !w.wait(ctx, j, wait) {
			return Outcome{Kind: Retry, Err: ctx.Err()}, false
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// leasePair checks the ordering state of the (credential, user) pair and
// leases it, waiting in process while another replica holds it. A stale
// event ends here with credential.skipped.
func (w *Worker) leasePair(ctx context.Context, j *job) (Outcome, bool) {
	d := j.event.Data
	pairKey := idempotency.PairKey(d.ACSCredentialID, d.ACSUserID, d.UserIdentityID)
	ev := idempotency.PairEvent{
		Key:    j.key,
		Time:   j.event.Time,
		Type:   j.event.Type,
		Assign: j.event.Type == schemas.SubjectCheckedIn,
	}
	if !ev.Assign {
		ev.Priority = 1 // at equal times a check-out wins: a guest must not keep a key
	}
	deadline := w.now().Add(w.cfg.RetryBudget)
	wait := 20 * time.Millisecond
	for {
		l, err := w.pairs.Acquire(ctx, pairKey, j.owner, ev, w.cfg.Lease)
		var stale *idempotency.StaleError
		switch {
		case err == nil:
			j.lease = l
			return Outcome{}, true
		case errors.As(err, &stale):
			return w.skip(ctx, j, stale.State), false
		case errors.Is(err, idempotency.ErrPairBusy) && w.now().Add(wait).Before(deadline):
			_ = j.msg.InProgress()
			if !w.wait(ctx, j, wait) {
				return w.handBack(ctx, j, ctx.Err(), 0), false
			}
			wait = min(2*wait, 500*time.Millisecond)
		default:
			// Still held after the in-process wait: the holder may have
			// crashed, so come back when its lease ends instead of
			// spending a delivery every BusyDelay.
			delay := w.cfg.BusyDelay
			var busy *idempotency.BusyError
			if errors.As(err, &busy) {
				delay = max(delay, busy.LeaseUntil.Sub(w.now()))
			}
			return w.handBack(ctx, j, err, delay), false
		}
	}
}

// applied records the new ordering state, publishes the result and
// completes the idempotency record.
func (w *Worker) applied(ctx context.Context, j *job) Outcome {
	if err := w.pairs.Applied(ctx, j.lease); err != nil {
		// Unrecorded, the change would not make older events of the pair
		// stale, and one could undo it. The redelivery repeats the Seam
		// call (a no-op now), records it and publishes the result.
		return w.handBack(ctx, j, err, w.cfg.BusyDelay)
	}
	subject := schemas.SubjectAssigned
	if j.event.Type == schemas.SubjectCheckedOut {
		subject = schemas.SubjectUnassigned
	}
	data := schemas.CredentialResult{
		GuestData:         j.event.Data,
		ACSCredential:     j.credential,
		Attempts:          j.attempts,
		SourceEventID:     j.event.ID,
		SourceEventSource: j.event.Source,
		ReplayOf:          j.replayOf,
	}
	return w.finish(ctx, j, subject, data)
}

// skip publishes credential.skipped for an event older than the newest
// applied to its pair.
func (w *Worker) skip(ctx context.Context, j *job, newest idempotency.PairState) Outcome {
	data := schemas.Skipped{
		GuestData:         j.event.Data,
		Reason:            schemas.SkipReasonStale,
		NewerEventTime:    newest.NewestTime,
		SourceEventID:     j.event.ID,
		SourceEventSource: j.event.Source,
		ReplayOf:          j.replayOf,
	}
	return w.finish(ctx, j, schemas.SubjectSkipped, data)
}

// finish publishes a result or skip event and completes the claim. The
// publish is awaited: only an event the results stream holds may be acked.
func (w *Worker) finish(ctx context.Context, j *job, subject string, data any) Outcome {
	id := w.outcomeID(j)
	doc, err := schemas.NewEnvelope(subject, w.cfg.Source, id, j.event.Subject, w.now().UTC(), data)
	if err != nil {
		return w.deadLetter(ctx, j, schemas.ErrorKindPermanent, err)
	}
	// No write-ahead here, unlike deadLetter: a delivery after a crash
	// reaches the same decision (its pair state names this event, and Seam
	// is read before writing), and the same Nats-Msg-Id deduplicates it.
	seq, err := w.publish(ctx, subject, id, doc)
	if err != nil {
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	if err := w.claims.Complete(ctx, j.claim, idempotency.StatusCompleted, subject, seq, j.attempts); err != nil {
		w.log.Warn().Err(err).Str("event_id", j.event.ID).Msg("recording the outcome sequence")
	}
	w.log.Info().Str("event_id", j.event.ID).Str("event_source", j.event.Source).Str("type", j.event.Type).
		Str("acs_credential_id", j.event.Data.ACSCredentialID).Str("outcome", subject).Int("attempts", j.attempts).
		Uint64("replay_of", j.replayOf).Msg("event handled")
	return Outcome{Kind: Done, Subject: subject}
}

// seamFailed decides what a failed Seam call becomes: a dead letter for a
// permanent error or a spent budget, otherwise another delivery later.
func (w *Worker) seamFailed(ctx context.Context, j *job, err error) Outcome {
	var lost *leaseLostError
	switch {
	case ctx.Err() != nil:
		return w.handBack(ctx, j, err, 0)
	case errors.As(err, &lost):
		return w.handBack(ctx, j, err, w.cfg.BusyDelay)
	case permanent(err):
		var api *seamclient.APIError
		if errors.As(err, &api) && (api.StatusCode == 401 || api.StatusCode == 403) {
			w.unauthorized.Store(true)
		}
		return w.deadLetter(ctx, j, schemas.ErrorKindPermanent, err)
	case int(j.meta.NumDelivered) >= w.cfg.MaxDeliver || w.now().Sub(j.meta.Timestamp) > w.cfg.MaxAge:
		return w.deadLetter(ctx, j, schemas.ErrorKindRetriesExhausted, err)
	}
	delay := w.nakDelay(j.meta.NumDelivered)
	if after, ok := seamclient.RetryAfter(err); ok && after > delay {
		delay = after
	}
	return w.handBack(ctx, j, err, delay)
}

// handBack releases what the job holds, keeping its attempt count, and asks
// for a redelivery after delay.
func (w *Worker) handBack(ctx context.Context, j *job, err error, delay time.Duration) Outcome {
	// Releasing must work during shutdown too, when ctx is already done.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	w.releasePair(ctx, j)
	if j.claim != nil {
		if rerr := w.claims.Release(rctx, j.claim, j.attempts, j.first, j.last); rerr != nil {
			w.log.Warn().Err(rerr).Str("event_id", j.event.ID).Msg("releasing claim: it will expire")
		}
	}
	if ctx.Err() == nil {
		w.log.Info().Err(err).Str("event_id", eventID(j)).Dur("delay", delay).Msg("retrying later")
	}
	return Outcome{Kind: Retry, Delay: delay, Err: err}
}

func (w *Worker) releasePair(ctx context.Context, j *job) {
	if j.lease == nil {
		return
	}
	// Releasing must work during shutdown too, when ctx is already done.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.pairs.Release(ctx, j.lease); err != nil {
		w.log.Warn().Err(err).Str("event_id", j.event.ID).Msg("releasing pair lease: it will expire")
	}
	j.lease = nil
}

// nakDelay grows with the delivery count: NakDelay, doubled per delivery, up to NakDelayMax.
func (w *Worker) nakDelay(delivered uint64) time.Duration {
	d := w.cfg.NakDelay
	for i := uint64(1); i < delivered && d < w.cfg.NakDelayMax; i++ {
		d *= 2
	}
	return min(d, w.cfg.NakDelayMax)
}

// outcomeID is the Nats-Msg-Id and CloudEvents id of the event's outcome:
// one per source event, so a re-publish after a crash is deduplicated by
// the stream. A replay gets its own, or it would be swallowed as a duplicate.
func (w *Worker) outcomeID(j *job) string {
	var id string
	if j.key == "" {
		// Undecodable: its bytes are the only identity there is.
		sum := sha256.Sum256(j.raw)
		id = "keyworker-raw-" + hex.EncodeToString(sum[:16])
	} else {
		id = "keyworker-" + j.key[:40]
	}
	if j.replayOf != 0 {
		id += "-replay-" + strconv.FormatUint(j.replayOf, 10)
	}
	return id
}

func replayOf(msg jetstream.Msg) uint64 {
	h := msg.Headers()
	if h == nil {
		return 0
	}
	n, _ := strconv.ParseUint(h.Get(schemas.HeaderReplayOf), 10, 64)
	return n
}

func eventID(j *job) string {
	if j.event == nil {
		return ""
	}
	return j.event.ID
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
