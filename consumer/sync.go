package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// Provider sync: a 200 from assign or unassign means Seam recorded the
// wanted state, not that the lock or card system has it. Every result
// carries provider_sync, derived from the credential object it carries;
// with Config.AwaitSync the worker first polls /acs/credentials/get for a
// bounded time until the provider has the change or it failed.

// failingWarnings are the warning codes that say the credential cannot
// work as it is, whatever its sync: it is going away, the card must be
// encoded again, or Seam itself does not know what is wrong.
var failingWarnings = []string{"being_deleted", "needs_to_be_reissued", "unknown_issue_with_acs_credential"}

// providerSync derives the outcome's provider_sync from an acs_credential
// object read from Seam at checkedAt: failed when it has errors or a
// failing warning, synced when Seam says the provider has the latest
// state, pending otherwise (not yet, or Seam does not say).
func providerSync(cred json.RawMessage, checkedAt time.Time) *schemas.ProviderSync {
	ps := &schemas.ProviderSync{State: schemas.SyncStatePending, CheckedAt: checkedAt.UTC(), Warnings: []string{}, Errors: []schemas.ProviderSyncError{}}
	s, err := seamclient.ParseSync(cred)
	if err != nil {
		return ps
	}
	ps.Warnings = append(ps.Warnings, s.Warnings...)
	for _, e := range s.Errors {
		ps.Errors = append(ps.Errors, schemas.ProviderSyncError(e))
	}
	switch {
	case len(s.Errors) > 0 || slices.ContainsFunc(s.Warnings, func(c string) bool { return slices.Contains(failingWarnings, c) }):
		ps.State = schemas.SyncStateFailed
	case s.Synced != nil && *s.Synced:
		ps.State = schemas.SyncStateSynced
	}
	return ps
}

// syncOf is the provider_sync of the job's result: of the credential it
// holds, checked when the last Seam request that could have read it was sent.
func (w *Worker) syncOf(j *job) *schemas.ProviderSync {
	at := j.last
	if at.IsZero() {
		at = w.now()
	}
	return providerSync(j.credential, at)
}

// Polls of awaitSync: growing from the first to the last.
const (
	syncPollFirst  = 200 * time.Millisecond
	syncPollMax    = 5 * time.Second
	syncPollFactor = 1.5
)

// awaitSync waits, for at most Config.AwaitSync, until the provider has
// the change the job made (or failed to take it), reading the credential
// with /acs/credentials/get through the health gate and the pacer like
// every Seam request. The job's slot is given back while it waits; its
// claim, credential lease and ack wait are kept alive. It never fails the
// event: the change is made, and the result says what was last seen. A
// wait ends early when Seam is unhealthy, the worker shuts down, or a
// lease is lost (the commit that follows then hands the event back).
func (w *Worker) awaitSync(ctx context.Context, j *job) {
	if w.cfg.AwaitSync <= 0 || j.plan == nil || !j.plan.Apply || j.credential == nil {
		return
	}
	if providerSync(j.credential, j.last).State != schemas.SyncStatePending {
		return
	}
	start := w.now()
	deadline := start.Add(w.cfg.AwaitSync)
	wctx, stop := w.untilStopping(ctx)
	defer stop()
	interval, polls := syncPollFirst, 0
	state := schemas.SyncStatePending
	for state == schemas.SyncStatePending {
		left := deadline.Sub(w.now())
		if left <= 0 {
			break
		}
		if err := w.pause(wctx, j, min(interval, left)); err != nil {
			break
		}
		interval = min(time.Duration(float64(interval)*syncPollFactor), syncPollMax)
		if h, _ := j.ws.gate.health(); h != SeamHealthy {
			break // a read would only wait for the workspace's gate: publish what is known
		}
		polls++
		resp, err := w.readCredential(wctx, j)
		if err != nil {
			var lost *leaseLostError
			var api *seamclient.APIError
			if errors.As(err, &lost) || errors.Is(err, errStopping) || wctx.Err() != nil ||
				errors.As(err, &api) && api.StatusCode == 404 {
				break
			}
			continue // a failed read: try again at the next poll
		}
		j.credential = resp.Credential
		state = providerSync(j.credential, j.last).State
	}
	w.log.Debug().Str("event_id", j.event.ID).Str("provider_sync", state).Int("polls", polls).
		Dur("waited", w.now().Sub(start)).Msg("waited for provider sync")
	// The conclusion needs a slot like any other step.
	_ = w.unpark(ctx, j)
}

// pause parks the job for d, renewing its claim and lease and sending
// InProgress every heartbeat. It returns ctx's error or a lost lease.
func (w *Worker) pause(ctx context.Context, j *job, d time.Duration) error {
	w.park(j)
	end := w.now().Add(d)
	for {
		left := end.Sub(w.now())
		if left <= 0 {
			return nil
		}
		if !w.sleep(ctx, min(left, w.heartbeat())) {
			return ctx.Err()
		}
		if err := w.keepAlive(ctx, j); err != nil {
			return err
		}
	}
}
