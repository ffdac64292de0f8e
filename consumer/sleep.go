package consumer

import (
	"context"
	"time"
)

// Sleeper waits d or until ctx ends, and reports whether d passed.
type Sleeper func(ctx context.Context, d time.Duration) bool

// Sleep is the real Sleeper.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sleeperTimer is a backoff.Timer on a Sleeper, so that backoff's waits
// between attempts are the worker's own.
type sleeperTimer struct {
	ctx    context.Context
	sleep  Sleeper
	c      chan time.Time
	cancel context.CancelFunc
}

// Start is called for every retry, Stop only once at the end: each wait
// ends its own context, so none stays registered on the job's.
func (t *sleeperTimer) Start(d time.Duration) {
	t.Stop()
	ctx, cancel := context.WithCancel(t.ctx)
	t.c, t.cancel = make(chan time.Time, 1), cancel
	go func(c chan time.Time) {
		defer cancel()
		if t.sleep(ctx, d) {
			c <- time.Now()
		}
	}(t.c)
}

func (t *sleeperTimer) Stop() {
	if t.cancel != nil {
		t.cancel()
	}
}

func (t *sleeperTimer) C() <-chan time.Time { return t.c }
