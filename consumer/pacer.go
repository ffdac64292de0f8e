package consumer

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keyworker/keyworker/seamclient"
)

// A 429 is about the workspace, not the event that got it: knocking again
// at once only gets the client throttled harder. So a 429 pauses every Seam
// request of the process for its Retry-After (a second when it names none)
// and halves the rate the process allows itself; each second without a
// 429 raises it by a tenth, until it no longer binds.
const (
	slowdownPause    = time.Second // a 429 without Retry-After
	slowdownFloor    = 0.5         // requests per second
	slowdownRecovery = 1.1         // factor per second without a 429
	slowdownSettled  = 1000.0      // above this, no slowdown is in force
)

// pacer spaces the process's Seam requests: the hard ceiling
// (KEYWORKER_SEAM_RPS) and the shared slowdown after 429s.
type pacer struct {
	now     func() time.Time
	ceiling *rate.Limiter // nil: no ceiling
	metrics *Metrics

	mu       sync.Mutex
	adaptive *rate.Limiter // rate.Inf while no slowdown is in force; safe for concurrent use
	until    time.Time     // every request waits until then
	slowed   time.Time     // last halving
	raised   time.Time     // last raise
	second   time.Time     // start of the current one-second window
	sent     int           // requests started in the current window
	lastSent int           // in the window before
}

func newPacer(now func() time.Time, ceiling float64, m *Metrics) *pacer {
	p := &pacer{now: now, metrics: m, adaptive: rate.NewLimiter(rate.Inf, 1)}
	if ceiling > 0 {
		p.ceiling = rate.NewLimiter(rate.Limit(ceiling), max(1, int(ceiling)))
	}
	return p
}

// wait returns when a request may be sent, running tick before each wait
// of at most interval (to keep leases and the ack wait alive).
func (p *pacer) wait(ctx context.Context, interval time.Duration, tick func() error) error {
	for {
		p.mu.Lock()
		pause := p.until.Sub(p.now())
		p.mu.Unlock()
		if pause <= 0 {
			break
		}
		if err := pauseFor(ctx, min(pause, interval), tick); err != nil {
			return err
		}
	}
	for _, l := range []*rate.Limiter{p.adaptive, p.ceiling} {
		if l == nil {
			continue
		}
		r := l.Reserve()
		if !r.OK() {
			return errors.New("consumer: seam rate limit admits no request")
		}
		for left := r.Delay(); left > 0; left = r.Delay() {
			if err := pauseFor(ctx, min(left, interval), tick); err != nil {
				r.Cancel()
				return err
			}
		}
	}
	p.count()
	return nil
}

func pauseFor(ctx context.Context, d time.Duration, tick func() error) error {
	if err := tick(); err != nil {
		return err
	}
	if !sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// count notes one request started, to know the rate a 429 interrupted.
func (p *pacer) count() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	switch d := now.Sub(p.second); {
	case d >= 2*time.Second:
		p.second, p.sent, p.lastSent = now, 0, 0
	case d >= time.Second:
		p.second, p.lastSent, p.sent = now, p.sent, 0
	}
	p.sent++
}

// observe adapts to one answer.
func (p *pacer) observe(err error) {
	var api *seamclient.APIError
	limited := errors.As(err, &api) && api.StatusCode == 429
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if limited {
		pause := slowdownPause
		if api.HasRetryAfter && api.RetryAfter > 0 {
			pause = api.RetryAfter
		}
		p.until = later(p.until, now.Add(pause))
		// One burst of 429s (the requests in flight when the limit was
		// hit) halves the rate once.
		if now.Sub(p.slowed) >= pause {
			current := float64(p.adaptive.Limit())
			if p.adaptive.Limit() == rate.Inf {
				current = float64(max(p.sent, p.lastSent))
			}
			p.setLimit(max(slowdownFloor, current/2))
			p.slowed = now
		}
		return
	}
	if err == nil && p.adaptive.Limit() != rate.Inf && now.Sub(p.slowed) >= time.Second && now.Sub(p.raised) >= time.Second {
		next := float64(p.adaptive.Limit()) * slowdownRecovery
		if next > slowdownSettled {
			p.adaptive.SetLimit(rate.Inf)
			p.metrics.observeSlowdown(0)
			return
		}
		p.setLimit(next)
		p.raised = now
	}
}

// setLimit replaces the adaptive limit; p.mu is held.
func (p *pacer) setLimit(l float64) {
	p.adaptive.SetLimit(rate.Limit(l))
	p.metrics.observeSlowdown(l)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
