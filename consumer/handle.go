package consumer

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// Handle runs the pipeline for one delivery and says how to settle it. It
// never acks. Steps, top to bottom:
//
//  1. decode and validate (invalid: dead letter); with several workspaces,
//     an event of a workspace whose open gate is crowded is handed back
//     before it claims anything;
//  2. claim the idempotency key (already done: duplicate; claimed by a live
//     replica: retry later). Taking over from an owner that died, look
//     whether it had published the outcome already (then done);
//  3. route it to its property's workspace (none: dead letter), lease the
//     credential. An event whose deliveries ended MaxDeliver
//     times without a decision (each crashed, hung or was killed the
//     worker) is a poison message: dead letter, still counted for
//     ordering. Otherwise plan by the ordering rule what the event does;
//  4. make the plan's Seam calls, with retries, through the Seam health
//     gate and the shared pacer (permanent: dead letter; still failing:
//     retry later, or dead letter once RetryFor has passed);
//  5. store the credential's new state, publish the result or skip, and
//     record completion.
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
	ctx, span := w.startProcess(ctx, msg) // trace.go
	j := &job{slots: s, msg: msg, owner: owner, raw: msg.Data(), replayOf: replayOf(msg), span: span}
	defer func() { endProcess(span, j, out) }() // after the recover below
	defer func() {
		if s != nil && !j.parked {
			s.release()
		}
	}()
	defer func() { out.WorkspaceID, out.workspace = workspaceID(j), workspaceLabel(j) }()
	defer func() {
		if p := recover(); p != nil {
			w.logFor(j).Error().Str("panic", fmt.Sprint(p)).Bytes("stack", debug.Stack()).
				Str("nats_subject", msg.Subject()).Msg("handler panicked: dead-lettering the message")
			out = w.deadLetter(ctx, j, schemas.ErrorKindPermanent, &PanicError{Value: fmt.Sprint(p)})
		}
	}()
	meta, err := msg.Metadata()
	if err != nil {
		return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err}
	}
	j.meta = meta

	if err := w.decode(j); err != nil {
		return w.deadLetter(ctx, j, schemas.ErrorKindInvalidEvent, err)
	}
	if err := w.crowded(j); err != nil {
		return Outcome{Kind: Retry, Delay: w.cfg.GateProbeMax, Err: err}
	}
	if out, ok := w.claimEvent(ctx, j); !ok {
		return out
	}
	if err := w.checkPublished(ctx, j); err != nil {
		return w.handBack(ctx, j, err, w.cfg.NakDelay)
	}
	if j.published {
		// Its state was stored before it was published: nothing left to do.
		return w.complete(ctx, j, idempotency.StatusCompleted, j.publishedSubject, 0)
	}
	if err := w.route(j); err != nil {
		return w.deadLetter(ctx, j, schemas.ErrorKindPermanent, err)
	}
	if out, ok := w.leaseCredential(ctx, j); !ok {
		return out
	}
	if n := j.claim.Record.Undecided; n >= w.cfg.MaxDeliver {
		j.wrote = true // a dying delivery may have changed the credential
		return w.deadLetter(ctx, j, schemas.ErrorKindRetriesExhausted, &DeliveryLimitError{Undecided: n})
	}
	if err := w.callSeam(ctx, j); err != nil {
		return w.seamFailed(ctx, j, err)
	}
	w.awaitSync(ctx, j) // Config.AwaitSync: sync.go
	return w.conclude(ctx, j)
}

// decode validates the message, in CloudEvents structured or binary mode,
// against the schema of its subject and derives the idempotency key, the
// guest and the Seam request, with ids in lower case: Seam compares uuids
// without regard to case, so the worker does too (the dead letter keeps the
// original bytes and headers).
func (w *Worker) decode(j *job) error {
	ev, err := w.validator.DecodeGuestMessage(j.msg.Subject(), j.msg.Headers(), j.raw)
	if err != nil {
		return err
	}
	if skew := ev.Time.Sub(w.now()); skew > w.cfg.MaxClockSkew {
		return &schemas.ValidationError{
			Subject: j.msg.Subject(),
			Reason:  fmt.Sprintf("time %s is %s in the future (more than %s)", ev.Time.Format(time.RFC3339), skew.Round(time.Second), w.cfg.MaxClockSkew),
		}
	}
	d := &ev.Data
	d.ACSCredentialID = strings.ToLower(d.ACSCredentialID)
	d.ACSUserID = strings.ToLower(d.ACSUserID)
	d.UserIdentityID = strings.ToLower(d.UserIdentityID)
	j.event = ev
	j.key = idempotency.Key(ev.Source, ev.ID)
	j.guest = idempotency.NewGuest(d.ACSUserID, d.UserIdentityID)
	j.req = &seamclient.Request{
		ACSCredentialID: d.ACSCredentialID,
		ACSUserID:       d.ACSUserID,
		UserIdentityID:  d.UserIdentityID,
	}
	return nil
}

// claimEvent takes the event's idempotency key, so that one delivery at a
// time, across replicas, works on it. While another delivery holds the key
// it waits in process (a duplicate usually resolves within one Seam call),
// then hands the message back until the holder's lease ends.
func (w *Worker) claimEvent(ctx context.Context, j *job) (Outcome, bool) {
	sctx, end := w.startStep(ctx, "idempotency claim")
	err := w.busyWait(sctx, j, func() (time.Time, error) {
		c, err := w.claims.Claim(sctx, j.key, j.owner, w.cfg.Lease, j.replayOf != 0)
		if err == nil {
			j.claim = c
			j.attempts = c.Record.Attempts
			j.first = c.Record.FirstAttemptAt
			j.renewed = w.now()
			return time.Time{}, nil
		}
		var conflict *idempotency.ConflictError
		if errors.Is(err, idempotency.ErrAlreadyClaimed) && errors.As(err, &conflict) {
			return conflict.Record.LeaseUntil, err
		}
		return time.Time{}, backoffStop(err)
	})
	end(err)
	var conflict *idempotency.ConflictError
	switch {
	case err == nil:
		return Outcome{}, true
	case errors.Is(err, idempotency.ErrDone) && errors.As(err, &conflict):
		if err := w.republish(ctx, conflict.Record); err != nil {
			return Outcome{Kind: Retry, Delay: w.cfg.NakDelay, Err: err}, false
		}
		return Outcome{Kind: Duplicate}, false
	}
	return Outcome{Kind: Retry, Delay: retryDelay(w, err), Err: err}, false
}

// leaseCredential leases the event's credential, so that one delivery at a
// time, across replicas, calls Seam for it, waiting in process while
// another holds it.
func (w *Worker) leaseCredential(ctx context.Context, j *job) (Outcome, bool) {
	// A credential seen for the first time is written without reading it:
	// only a first delivery of a check-in is likely to find none.
	blind := j.checkIn() && j.meta.NumDelivered == 1
	sctx, end := w.startStep(ctx, "credential lease")
	err := w.busyWait(sctx, j, func() (time.Time, error) {
		l, err := w.creds.Acquire(sctx, j.req.ACSCredentialID, j.owner, j.key, w.cfg.Lease, blind)
		if err == nil {
			j.lease = l
			return time.Time{}, nil
		}
		var busy *idempotency.BusyError
		if errors.As(err, &busy) {
			return busy.LeaseUntil, err
		}
		return time.Time{}, backoffStop(err)
	})
	end(err)
	if err != nil {
		return w.handBack(ctx, j, err, retryDelay(w, err)), false
	}
	return Outcome{}, true
}

// Waits of busyWait: doubling from the first to the last.
const (
	busyWaitFirst = 20 * time.Millisecond
	busyWaitMax   = 500 * time.Millisecond
)

// busyWait calls try until it succeeds, fails for good, or RetryBudget is
// spent, parking the job's slot between tries. try returns the time the
// current holder's lease ends with its busy error, or an error wrapped by
// backoffStop to stop at once. The error returned after the budget is a
// *busyError saying when to come back: when the holder's lease ends,
// since it may have crashed, rather than spending a delivery every BusyDelay.
func (w *Worker) busyWait(ctx context.Context, j *job, try func() (time.Time, error)) error {
	deadline := w.now().Add(w.cfg.RetryBudget)
	wait := busyWaitFirst
	for {
		until, err := try()
		var stop *stopError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &stop):
			return stop.err
		case w.now().Add(wait).After(deadline):
			return &busyError{until: until, err: err}
		}
		_ = j.msg.InProgress()
		if !w.wait(ctx, j, wait) {
			return ctx.Err()
		}
		wait = min(2*wait, busyWaitMax)
	}
}

// retryDelay is the redelivery delay after busyWait gave up with err.
func retryDelay(w *Worker, err error) time.Duration {
	var busy *busyError
	if errors.As(err, &busy) {
		return max(w.cfg.BusyDelay, busy.until.Sub(w.now()))
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return 0
	}
	return w.cfg.BusyDelay
}
