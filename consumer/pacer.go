package consumer

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keyworker/keyworker/seamclient"
)

// A 429 is about the workspace, not the event that got it: knocking again
// at once only gets the client throttled harder. So a 429 pauses every Seam
// request of the process for its Retry-After (a second when it names none)
// and sets the rate the process allows itself to a little under the rate
// that met it. The rate then grows back, quickly up to near that rate and
// slowly beyond, so the process settles just under an unannounced limit
// instead of bouncing off it; once well clear of it, no slowdown is in force.
const (
	slowdownPause   = time.Second // a 429 without Retry-After
	slowdownFloor   = 1.0         // requests per second
	slowdownBackOff = 0.8         // of the rate that met a 429
	slowdownFast    = 1.1         // growth per second below the rate that met a 429
	slowdownSlow    = 1.02        // growth per second near and above it
	slowdownClear   = 4.0         // this many times that rate: slowdown over
)

// pacer spaces the process's Seam requests: the hard ceiling
// (KEYWORKER_SEAM_RPS) and the shared slowdown after 429s.
type pacer struct {
	now     func() time.Time
	sleep   Sleeper
	ceiling *rate.Limiter // nil: no ceiling
	metrics *Metrics
	label   string // the workspace, for the metrics

	mu       sync.Mutex
	adaptive *rate.Limiter // rate.Inf while no slowdown is in force; safe for concurrent use
	epoch    uint64        // counts cuts of the adaptive limit after a 429
	bad      float64       // the rate that last met a 429
	until    time.Time     // every request waits until then
	raised   time.Time     // last raise
	second   time.Time     // start of the current one-second window
	sent     int           // requests started in the current window
	lastSent int           // in the window before
}

func newPacer(now func() time.Time, sleep Sleeper, ceiling float64, m *Metrics, label string) *pacer {
	p := &pacer{now: now, sleep: sleep, metrics: m, label: label, adaptive: rate.NewLimiter(rate.Inf, 1)}
	if ceiling > 0 {
		p.ceiling = rate.NewLimiter(rate.Limit(ceiling), max(1, int(ceiling)))
	}
	m.observeSlowdown(label, 0)
	return p
}

// wait returns when a request may be sent, running tick before each wait
// of at most interval (to keep leases and the ack wait alive). It returns
// the epoch of the adaptive limit the request was admitted under, for observe.
func (p *pacer) wait(ctx context.Context, interval time.Duration, tick func() error) (uint64, error) {
	var epoch uint64
	for {
		wait, ok := p.take(&epoch)
		if ok {
			break
		}
		// No place in a queue is kept: a cut of the rate after a 429 then
		// holds for every waiter at once.
		if err := p.pauseFor(ctx, min(wait, interval), tick); err != nil {
			return 0, err
		}
	}
	if p.ceiling != nil {
		if err := p.reserve(ctx, p.ceiling, interval, tick); err != nil {
			return 0, err
		}
	}
	p.count()
	return epoch, nil
}

// take takes a token of the adaptive limit now, or says how long to wait
// before trying again.
func (p *pacer) take(epoch *uint64) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Before(p.until) {
		return p.until.Sub(now), false
	}
	if p.adaptive.AllowN(now, 1) {
		*epoch = p.epoch
		return 0, true
	}
	limit := float64(p.adaptive.Limit())
	need := (1 - p.adaptive.TokensAt(now)) / limit
	// Spread the waiters' next tries over a token's time, so they do not
	// all wake for the same token.
	jitter := mrand.Float64() / limit
	return time.Duration((need + jitter) * float64(time.Second)), false
}

// reserve waits for a token of l, running tick before each wait of at
// most interval.
func (p *pacer) reserve(ctx context.Context, l *rate.Limiter, interval time.Duration, tick func() error) error {
	r := l.Reserve()
	if !r.OK() {
		return errors.New("consumer: seam rate limit admits no request")
	}
	for left := r.Delay(); left > 0; left = r.Delay() {
		if err := p.pauseFor(ctx, min(left, interval), tick); err != nil {
			r.Cancel()
			return err
		}
	}
	return nil
}

func (p *pacer) pauseFor(ctx context.Context, d time.Duration, tick func() error) error {
	if err := tick(); err != nil {
		return err
	}
	if !p.sleep(ctx, d) {
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

// observe adapts to the answer of a request admitted under epoch.
func (p *pacer) observe(epoch uint64, err error) {
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
		p.raised = later(p.raised, now.Add(pause)) // no growth while 429s come
		// Only a request admitted under the limit now in force says it is
		// too high: those admitted before, still in flight, say nothing new.
		if epoch == p.epoch {
			current := float64(p.adaptive.Limit())
			if p.adaptive.Limit() == rate.Inf {
				current = float64(max(p.sent, p.lastSent))
			}
			p.bad = current
			p.epoch++
			p.setLimit(max(slowdownFloor, current*slowdownBackOff))
		}
		return
	}
	limit := float64(p.adaptive.Limit())
	if err != nil || p.adaptive.Limit() == rate.Inf || now.Sub(p.raised) < time.Second {
		return
	}
	p.raised = now
	next := limit * slowdownFast
	if next > 0.95*p.bad {
		next = max(limit*slowdownSlow, limit+0.1)
	}
	if next > slowdownClear*p.bad {
		p.adaptive.SetLimit(rate.Inf)
		p.metrics.observeSlowdown(p.label, 0)
		return
	}
	p.setLimit(next)
}

// setLimit replaces the adaptive limit; p.mu is held.
func (p *pacer) setLimit(l float64) {
	p.adaptive.SetLimit(rate.Limit(l))
	p.metrics.observeSlowdown(p.label, l)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
