package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/seamclient"
)

// callSeam carries out the job's plan in Seam, retrying transient failures
// in process within Config.RetryBudget. The plan is made on the first try,
// once the credential's holder is known. Steps already done are not
// repeated on a retry. It returns the last error when it gives up.
func (w *Worker) callSeam(ctx context.Context, j *job) error {
	b := w.newBackOff()
	j.backoff = b
	// An earlier delivery may have had a request applied unseen.
	uncertain := j.meta != nil && j.meta.NumDelivered > 1
	var removed, applied bool
	op := func() error {
		if err := w.unpark(ctx, j); err != nil {
			return backoff.Permanent(err)
		}
		if err := w.keepAlive(ctx, j); err != nil {
			return backoff.Permanent(err)
		}
		if j.plan == nil {
			if err := w.makePlan(ctx, j); err != nil {
				return w.retryable(j, b, err)
			}
		}
		if r := j.plan.Remove; !r.IsZero() && !removed {
			if err := w.removeHolder(ctx, j, r); err != nil {
				return w.retryable(j, b, err)
			}
			removed = true
			j.read = nil // no longer what Seam holds
		}
		if !j.plan.Apply {
			return nil
		}
		if !applied && j.plan.Call {
			if err := w.applyOwn(ctx, j, &uncertain); err != nil {
				return w.retryable(j, b, err)
			}
			applied = true
		}
		if j.credential == nil {
			if err := w.fillCredential(ctx, j); err != nil {
				return w.retryable(j, b, err)
			}
		}
		return nil
	}
	notify := func(err error, d time.Duration) {
		_ = j.msg.InProgress()
		w.park(j) // backoff sleeps next: let another event work meanwhile
		w.metrics.observeRetry(endpointOf(j))
		w.log.Debug().Err(err).Str("event_id", j.event.ID).Dur("next_in", d).Int("attempts", j.attempts).Msg("seam call failed: retrying")
	}
	return backoff.RetryNotifyWithTimer(op, backoff.WithContext(b, ctx), notify, &sleeperTimer{ctx: ctx, sleep: w.sleep})
}

func endpointOf(j *job) string {
	if j.checkIn() {
		return "assign"
	}
	return "unassign"
}

// makePlan plans the event by the ordering rule. When the holder is
// unknown (a credential seen for the first time, or an earlier owner of the
// lease may have changed it unseen) it is read from Seam first, unless the
// plan gives the card to the event's guest on its first delivery: an assign
// makes the holder known whoever had it. A redelivery reads, so that a
// change an earlier delivery made is not sent again.
func (w *Worker) makePlan(ctx context.Context, j *job) error {
	st := j.lease.State
	if st.HolderUnknown {
		st.Holder = idempotency.Guest{}
		if p := st.Plan(j.mark()); p.Apply && j.checkIn() && j.meta.NumDelivered == 1 {
			j.plan = &p
			return nil
		}
		holder, cred, err := w.holder(ctx, j)
		if err != nil {
			return err
		}
		st.Holder, st.HolderUnknown = holder, false
		j.read = &holder
		j.credential = cred
		j.lease.State = st
	}
	p := st.Plan(j.mark())
	j.plan = &p
	return nil
}

// readCredential reads the job's credential with /acs/credentials/get.
func (w *Worker) readCredential(ctx context.Context, j *job) (*seamclient.Response, error) {
	return w.seamRequest(ctx, j, "get", func(ctx context.Context) (*seamclient.Response, error) {
		return j.ws.seam.Get(ctx, j.req.ACSCredentialID)
	})
}

// holder reads the credential and returns its holder and its object.
func (w *Worker) holder(ctx context.Context, j *job) (idempotency.Guest, json.RawMessage, error) {
	resp, err := w.readCredential(ctx, j)
	if err != nil {
		return idempotency.Guest{}, nil, err
	}
	cred, err := seamclient.ParseCredential(resp.Credential)
	if err != nil {
		return idempotency.Guest{}, nil, &seamclient.ResponseError{StatusCode: 200, Err: err}
	}
	return idempotency.NewGuest(cred.ACSUserID, cred.UserIdentityID), resp.Credential, nil
}

// removeHolder unassigns a holder the rule no longer gives the card to.
// A Seam that says the user holds nothing agrees.
func (w *Worker) removeHolder(ctx context.Context, j *job, g idempotency.Guest) error {
	req := seamclient.Request{ACSCredentialID: j.req.ACSCredentialID, ACSUserID: g.User}
	if g.User == "" {
		req.UserIdentityID = g.Identity
	}
	_, err := w.write(ctx, j, "unassign", func(ctx context.Context) (*seamclient.Response, error) {
		return j.ws.seam.Unassign(ctx, req)
	})
	switch {
	case err == nil, seamclient.IsType(err, seamclient.ErrorTypeNotAssigned):
		return nil
	case seamclient.Classify(err) == seamclient.OutcomeUnknown:
		holder, _, rerr := w.holder(ctx, j)
		if rerr != nil {
			return &unconfirmedError{cause: err, read: rerr}
		}
		if holder.Is(g) {
			return err
		}
		return nil
	}
	return err
}

// applyOwn sends the event's own request: assign for a check-in, unassign
// for a check-out. A Seam that refuses to take a held card over gets the
// holder removed first; one that refuses to unassign a non-holder agrees
// the guest has no key. An unknown outcome is settled by reading the
// credential before any retry.
func (w *Worker) applyOwn(ctx context.Context, j *job, uncertain *bool) error {
	assign := j.checkIn()
	if j.read != nil && j.read.Is(j.guest) == assign {
		// Just read from Seam: already as wanted. After a crash this is
		// what keeps the redelivery from sending the change again.
		return nil
	}
	j.credential = nil
	send := func() (*seamclient.Response, error) {
		return w.write(ctx, j, endpointOf(j), func(ctx context.Context) (*seamclient.Response, error) {
			if assign {
				return j.ws.seam.Assign(ctx, *j.req)
			}
			return j.ws.seam.Unassign(ctx, *j.req)
		})
	}
	resp, err := send()
	switch class := seamclient.Classify(err); {
	case err == nil:
	case assign && seamclient.IsType(err, seamclient.ErrorTypeAlreadyAssigned):
		holder, _, rerr := w.holder(ctx, j)
		if rerr != nil {
			return rerr
		}
		if !holder.IsZero() && !holder.Is(j.guest) {
			if rerr := w.removeHolder(ctx, j, holder); rerr != nil {
				return rerr
			}
		}
		resp, err = send()
	case !assign && seamclient.IsType(err, seamclient.ErrorTypeNotAssigned):
		resp, err = nil, nil
	case class == seamclient.OutcomeUnknown:
		*uncertain = true
		resp, err = w.confirm(ctx, j, assign, err)
	case class == seamclient.Permanent && *uncertain:
		// The refusal may be about a change an unanswered request already
		// made: never dead-letter what is in fact applied.
		resp, err = w.confirm(ctx, j, assign, err)
	}
	if err != nil {
		return err
	}
	if resp != nil {
		j.credential = resp.Credential
	}
	return nil
}

// fillCredential reads the credential for the result when Seam answered
// {}. The change is made: a credential that can no longer be read is
// reported by its id alone, never a reason to give the change up.
func (w *Worker) fillCredential(ctx context.Context, j *job) error {
	resp, err := w.readCredential(ctx, j)
	var api *seamclient.APIError
	switch {
	case err == nil:
		j.credential = resp.Credential
	case errors.As(err, &api) && api.StatusCode == 404:
		w.log.Warn().Str("event_id", j.event.ID).Str("seam_request_id", api.RequestID).
			Msg("the change was applied but the credential can no longer be read: the result carries its id only")
		j.credential, _ = json.Marshal(map[string]string{"acs_credential_id": j.req.ACSCredentialID})
	default:
		return err
	}
	return nil
}

// write makes one Seam request that may change the credential.
func (w *Worker) write(ctx context.Context, j *job, endpoint string, do func(context.Context) (*seamclient.Response, error)) (*seamclient.Response, error) {
	j.wrote = true
	return w.seamRequest(ctx, j, endpoint, do)
}

// seamRequest makes one Seam request when the health gate and the pacer
// let it, counting it. Waiting for them parks the job's slot and keeps its
// claim, lease and ack wait alive, so no other replica takes the
// credential meanwhile; a wait restarts the in-process retry budget.
func (w *Worker) seamRequest(ctx context.Context, j *job, endpoint string, do func(context.Context) (*seamclient.Response, error)) (*seamclient.Response, error) {
	probe, epoch, err := w.waitTurn(ctx, j)
	if err != nil {
		return nil, err
	}
	now := w.now()
	if j.first.IsZero() {
		j.first = now
	}
	j.last = now
	if endpoint != "get" {
		j.attempts++
	}
	reported := false
	defer func() {
		if !reported { // do panicked: let another request probe
			j.ws.gate.report(probe, context.Canceled)
		}
	}()
	sctx, end := w.startSeam(ctx, j, endpoint) // trace.go
	resp, err := do(sctx)
	end(resp, err)
	reported = true
	j.ws.gate.report(probe, err)
	j.ws.pacer.observe(epoch, err)
	w.metrics.observeSeam(j.ws.label, endpoint, resp, err, w.now().Sub(now))
	return resp, err
}

// waitTurn waits for the health gate and the pacer. It reports whether the
// request is the gate's probe, and the pacer's epoch it was admitted under.
func (w *Worker) waitTurn(ctx context.Context, j *job) (bool, uint64, error) {
	waited := false
	tick := func() error {
		waited = true
		w.park(j)
		if err := w.retryForSpent(j); err != nil {
			return err
		}
		return w.keepAlive(ctx, j)
	}
	var epoch uint64
	wctx, stop := w.untilStopping(ctx)
	defer stop()
	probe, _, err := j.ws.gate.admit(wctx, w.heartbeat(), w.crowd(), tick)
	if err == nil {
		epoch, err = j.ws.pacer.wait(wctx, w.heartbeat(), tick)
	}
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		err = errStopping
	}
	if err == nil {
		err = w.unpark(ctx, j)
	}
	if err != nil {
		if probe {
			j.ws.gate.report(true, context.Canceled) // not sent: another may probe
		}
		return false, 0, err
	}
	if waited && j.backoff != nil {
		j.backoff.restart()
	}
	return probe, epoch, nil
}

// crowd bounds the events that wait in one workspace's open gate. With one
// workspace Run stops fetching instead, so no bound is needed; with several,
// a workspace that is down gets at most Concurrency events waiting and the
// rest handed back, so they cannot fill MaxAckPending and starve the others.
func (w *Worker) crowd() int {
	if len(w.routes.Load().all) < 2 {
		return 0
	}
	return w.cfg.Concurrency
}

// errStopping ends a wait for the gate or the pacer when the worker shuts
// down: the event is handed back for another replica, not kept waiting.
var errStopping = errors.New("consumer: shutting down: handing the event back")

// retryForSpent returns a *retryForError once Config.RetryFor has passed
// since the event's first Seam attempt.
func (w *Worker) retryForSpent(j *job) error {
	if j.first.IsZero() || w.now().Sub(j.first) <= w.cfg.RetryFor {
		return nil // an event that has not tried yet has not failed
	}
	return &retryForError{since: j.first, last: j.lastErr}
}

// heartbeat is how often a job that waits renews what it holds.
func (w *Worker) heartbeat() time.Duration { return min(w.cfg.Lease, w.cfg.AckWait) / 3 }

// keepAlive renews the job's claim and credential lease and sends
// InProgress, when a heartbeat has passed since the last renewal. A lost lease or claim is a *leaseLostError: another replica
// may now call Seam for the credential, so this one must stop.
func (w *Worker) keepAlive(ctx context.Context, j *job) error {
	if w.now().Sub(j.renewed) < w.heartbeat() {
		return nil
	}
	_ = j.msg.InProgress()
	if j.claim != nil {
		if err := w.claims.Renew(ctx, j.claim, w.cfg.Lease); err != nil {
			return &leaseLostError{err: err}
		}
	}
	if j.lease != nil {
		if err := w.creds.Renew(ctx, j.lease, w.cfg.Lease); err != nil {
			return &leaseLostError{err: err}
		}
	}
	j.renewed = w.now()
	return nil
}

// confirm reads the credential after a request whose outcome is unknown. If
// it is already in the wanted state, the change was applied: success.
func (w *Worker) confirm(ctx context.Context, j *job, assign bool, cause error) (*seamclient.Response, error) {
	resp, err := w.readCredential(ctx, j)
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

// retryable marks permanent errors, and any error once RetryFor is spent,
// for backoff, and passes the server's Retry-After to the schedule.
func (w *Worker) retryable(j *job, b *budgetBackOff, err error) error {
	if permanent(err) {
		return backoff.Permanent(err)
	}
	j.lastErr = err
	if spent := w.retryForSpent(j); spent != nil {
		return backoff.Permanent(spent)
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
	budget   time.Duration
}

func (w *Worker) newBackOff() *budgetBackOff {
	exp := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.cfg.RetryInitial),
		backoff.WithMaxInterval(w.cfg.RetryMax),
		backoff.WithMaxElapsedTime(0), // the budget below decides
	)
	return &budgetBackOff{exp: exp, deadline: w.now().Add(w.cfg.RetryBudget), now: w.now, budget: w.cfg.RetryBudget}
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

// restart gives a full budget again, after a wait that was not a retry
// (the health gate, a shared slowdown).
func (b *budgetBackOff) restart() {
	b.exp.Reset()
	b.deadline = b.now().Add(b.budget)
}

// permanent reports whether err is final: a permanent Seam error that no
// unanswered earlier request may explain, a lost lease, or RetryFor spent.
// A refused key (401/403) is not: the health gate waits until it works again.
func permanent(err error) bool {
	var (
		u     *unconfirmedError
		lost  *leaseLostError
		spent *retryForError
	)
	switch {
	case errors.As(err, &u):
		return false
	case errors.As(err, &lost), errors.As(err, &spent), errors.Is(err, errStopping), errors.As(err, new(*crowdedError)):
		return true
	case signalOf(err) == signalUnauthorized:
		return false
	}
	return seamclient.Classify(err) == seamclient.Permanent
}

// untilStopping is ctx, ended also when Run's context ends: a wait for
// the gate, the pacer or a sync then hands its event back at once.
func (w *Worker) untilStopping(ctx context.Context) (context.Context, func()) {
	if w.stopping == nil {
		return ctx, func() {}
	}
	wctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(w.stopping, cancel)
	return wctx, func() { unhook(); cancel() }
}
