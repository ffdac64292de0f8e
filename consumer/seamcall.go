package consumer

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// callSeam applies the event in Seam, retrying transient failures in
// process within Config.RetryBudget, and fills j.credential. An unknown
// outcome (request sent, no answer) is settled by reading the credential
// before any retry. It returns the last error when it gives up.
func (w *Worker) callSeam(ctx context.Context, j *job) error {
	assign := j.event.Type == schemas.SubjectCheckedIn
	call, endpoint := w.seam.Unassign, "unassign"
	if assign {
		call, endpoint = w.seam.Assign, "assign"
	}
	b := w.newBackOff()
	applied := false
	// uncertain: an earlier request may have applied the change unseen.
	uncertain := j.meta != nil && j.meta.NumDelivered > 1
	if uncertain {
		// An earlier delivery may have died after Seam applied the change:
		// read before writing, as after an unknown outcome.
		if resp, err := w.confirm(ctx, j, assign, errNotYet); err == nil {
			applied = true
			j.credential = resp.Credential
		}
	}
	op := func() error {
		if err := w.unpark(ctx, j); err != nil {
			return backoff.Permanent(err)
		}
		if !applied {
			if j.attempts > 0 && j.lease != nil {
				// Renew before every retry: a lease that lapsed may have let
				// another replica call Seam for this pair meanwhile.
				if err := w.pairs.Renew(ctx, j.lease, w.cfg.Lease); err != nil {
					return backoff.Permanent(&leaseLostError{err: err})
				}
			}
			resp, err := w.seamRequest(ctx, j, endpoint, func(ctx context.Context) (*seamclient.Response, error) {
				return call(ctx, *j.req)
			})
			switch class := seamclient.Classify(err); {
			case err == nil:
			case class == seamclient.OutcomeUnknown:
				uncertain = true
				resp, err = w.confirm(ctx, j, assign, err)
			case class == seamclient.Permanent && uncertain:
				// The refusal may be about a change an unanswered request
				// already made: never dead-letter what is in fact applied.
				resp, err = w.confirm(ctx, j, assign, err)
			}
			if err != nil {
				return w.retryable(b, err)
			}
			applied = true
			j.credential = resp.Credential
		}
		if j.credential == nil {
			// Seam may answer {}: the result must carry the credential.
			resp, err := w.seamRequest(ctx, j, "get", func(ctx context.Context) (*seamclient.Response, error) {
				return w.seam.Get(ctx, j.req.ACSCredentialID)
			})
			if err != nil {
				// The change is made; a failed read is never a reason to give it up.
				var api *seamclient.APIError
				if errors.As(err, &api) && !api.Transient() {
					return backoff.Permanent(err)
				}
				b.hint(err)
				return err
			}
			j.credential = resp.Credential
		}
		return nil
	}
	notify := func(err error, d time.Duration) {
		_ = j.msg.InProgress()
		w.park(j) // backoff sleeps next: let another event work meanwhile
		w.metrics.observeRetry(endpoint)
		w.log.Debug().Err(err).Str("event_id", j.event.ID).Dur("next_in", d).Int("attempts", j.attempts).Msg("seam call failed: retrying")
	}
	return backoff.RetryNotify(op, backoff.WithContext(b, ctx), notify)
}

// errNotYet is the cause confirm returns when the change is not applied yet.
var errNotYet = errors.New("consumer: not applied yet")

// seamRequest makes one Seam request, counting it and honouring the rate limit.
func (w *Worker) seamRequest(ctx context.Context, j *job, endpoint string, do func(context.Context) (*seamclient.Response, error)) (*seamclient.Response, error) {
	if w.limiter != nil {
		if err := w.limiter.Wait(ctx); err != nil {
			return nil, err
		}
	}
	now := w.now()
	if endpoint != "get" {
		j.attempts++
		if j.first.IsZero() {
			j.first = now
		}
		j.last = now
	}
	resp, err := do(ctx)
	if err == nil {
		w.unauthorized.Store(false)
	}
	w.metrics.observeSeam(endpoint, resp, err, w.now().Sub(now))
	return resp, err
}

// confirm reads the credential after a request whose outcome is unknown. If
// it is already in the wanted state, the change was applied: success.
func (w *Worker) confirm(ctx context.Context, j *job, assign bool, cause error) (*seamclient.Response, error) {
	resp, err := w.seamRequest(ctx, j, "get", func(ctx context.Context) (*seamclient.Response, error) {
		return w.seam.Get(ctx, j.req.ACSCredentialID)
	})
	if err != nil {
		// Cannot tell whether the change was applied: never final.
		return nil, &unconfirmedError{cause: cause, read: err}
	}
	cred, err := seamclient.ParseCredential(resp.Credential)
	if err != nil || cred.AssignedTo(*j.req) != assign {
		return nil, cause
	}
	w.log.Info().Str("event_id", j.event.ID).Msg("outcome of the seam request was unknown: the credential shows it applied")
	return resp, nil
}

// retryable marks permanent errors for backoff and passes the server's
// Retry-After to the schedule.
func (w *Worker) retryable(b *budgetBackOff, err error) error {
	if permanent(err) {
		return backoff.Permanent(err)
	}
	b.hint(err)
	return err
}

// budgetBackOff is exponential backoff with jitter that honours a
// Retry-After hint and stops when the next wait would end past the
// in-process budget: the rest of the wait belongs to NakWithDelay, so the
// message is not held.
type budgetBackOff struct {
	exp      *backoff.ExponentialBackOff
	deadline time.Time
	now      func() time.Time
	next     time.Duration // Retry-After from the last failure
}

func (w *Worker) newBackOff() *budgetBackOff {
	exp := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.cfg.RetryInitial),
		backoff.WithMaxInterval(w.cfg.RetryMax),
		backoff.WithMaxElapsedTime(0), // the budget below decides
	)
	return &budgetBackOff{exp: exp, deadline: w.now().Add(w.cfg.RetryBudget), now: w.now}
}

func (b *budgetBackOff) hint(err error) {
	if d, ok := seamclient.RetryAfter(err); ok {
		b.next = d
	}
}

// NextBackOff implements backoff.BackOff.
func (b *budgetBackOff) NextBackOff() time.Duration {
	d := b.exp.NextBackOff()
	if b.next > d {
		d = b.next
	}
	b.next = 0
	if b.now().Add(d).After(b.deadline) {
		return backoff.Stop
	}
	return d
}

// Reset implements backoff.BackOff.
func (b *budgetBackOff) Reset() { b.exp.Reset() }

// permanent reports whether err is final: a permanent Seam error that no
// unanswered earlier request may explain.
func permanent(err error) bool {
	var u *unconfirmedError
	if errors.As(err, &u) {
		return false
	}
	return seamclient.Classify(err) == seamclient.Permanent
}
