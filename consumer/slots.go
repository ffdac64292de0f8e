package consumer

import (
	"context"
	"time"
)

// slots bounds the events being worked on at once in this process. An event
// waiting out a retry delay gives its slot back and takes one again before
// its next attempt, so a burst of 429s with Retry-After, or a busy pair,
// does not stall every other event. Parked events still count against the
// consumer's MaxAckPending, which bounds them.
type slots chan struct{}

func newSlots(n int) slots { return make(slots, n) }

func (s slots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slots) release() { <-s }

// park gives j's slot back while it waits; a job handled outside Run has none.
func (w *Worker) park(j *job) {
	if j.slots != nil && !j.parked {
		j.parked = true
		j.slots.release()
	}
}

// unpark takes a slot again before j does more work.
func (w *Worker) unpark(ctx context.Context, j *job) error {
	if j.slots == nil || !j.parked {
		return nil
	}
	if err := j.slots.acquire(ctx); err != nil {
		return err
	}
	j.parked = false
	return nil
}

// wait parks j for d or until ctx ends, and reports whether d passed with
// a slot held again.
func (w *Worker) wait(ctx context.Context, j *job, d time.Duration) bool {
	w.park(j)
	if !w.sleep(ctx, d) {
		return false
	}
	return w.unpark(ctx, j) == nil
}
