package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// SeamCaller is the part of *seamclient.Client the pipeline uses.
type SeamCaller interface {
	Assign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error)
	Unassign(ctx context.Context, r seamclient.Request) (*seamclient.Response, error)
	Get(ctx context.Context, acsCredentialID string) (*seamclient.Response, error)
}

// Worker consumes guest events from the durable consumer and turns each into
// exactly one outcome event. It is safe for concurrent use; Run may be
// called once.
type Worker struct {
	cfg       Config
	js        jetstream.JetStream
	claims    *idempotency.Store
	creds     *idempotency.Credentials
	validator *schemas.Validator
	log       zerolog.Logger
	metrics   *Metrics
	now       func() time.Time
	sleep     Sleeper
	seamRPS   float64
	// routes is the current routing of properties to workspaces, each with
	// its own gate and pacer; replaced whole by SetWorkspaces.
	routes  atomic.Pointer[routing]
	routeMu sync.Mutex  // serialises SetWorkspaces
	health  broadcast   // any workspace's gate changed
	pending []Workspace // from WithWorkspaces, until New builds the routing
	// tracer is nil unless WithTracerProvider: then trace.go's spans run.
	tracer trace.Tracer

	maxPayload int
	// stopping ends when Run's context does: waits for the gate or the
	// pacer end then, handing their events back at once.
	stopping   context.Context
	inFlight   atomic.Int64
	deliveries atomic.Uint64
}

// Option configures a Worker.
type Option func(*Worker) error

// WithLogger sets the logger (default: a disabled logger).
func WithLogger(l zerolog.Logger) Option {
	return func(w *Worker) error { w.log = l; return nil }
}

// WithMetrics records the worker's figures in m.
func WithMetrics(m *Metrics) Option {
	return func(w *Worker) error { w.metrics = m; return nil }
}

// WithSeamRateLimit caps Seam requests per second from this process; 0 means no limit.
func WithSeamRateLimit(rps float64) Option {
	return func(w *Worker) error {
		if rps < 0 {
			return fmt.Errorf("%w: seam rate limit %v must not be negative", ErrInvalidConfig, rps)
		}
		w.seamRPS = rps
		return nil
	}
}

// WithClock replaces time.Now, for tests of time-dependent decisions.
func WithClock(now func() time.Time) Option {
	return func(w *Worker) error { w.now = now; return nil }
}

// WithSleeper replaces the waits the worker chooses itself (backoff between
// attempts, a 429's Retry-After, the rate ceiling, parked retries), so that a
// test with a virtual clock takes them without sleeping through them.
// Waits on NATS and on other workers stay real.
func WithSleeper(s Sleeper) Option {
	return func(w *Worker) error { w.sleep = s; return nil }
}

// New builds a Worker on existing streams and buckets (see Provision).
func New(ctx context.Context, js jetstream.JetStream, seam SeamCaller, cfg Config, opts ...Option) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Workers built from one Config still own their claims under names of
	// their own: the delivery counter behind each name starts again per Worker.
	cfg.Owner += "-" + nuid.Next()[:6]
	w := &Worker{cfg: cfg, js: js, log: zerolog.Nop(), now: time.Now, sleep: Sleep}
	for _, o := range opts {
		if err := o(w); err != nil {
			return nil, err
		}
	}
	v, err := schemas.NewValidator()
	if err != nil {
		return nil, err
	}
	w.validator = v
	if w.pending == nil {
		// No routing: one workspace takes every event, as it always did.
		w.pending = []Workspace{{Seam: seam, RateLimit: w.seamRPS, Default: true}}
	}
	rt, err := w.buildRouting(w.pending, nil)
	if err != nil {
		return nil, err
	}
	w.routes.Store(rt)
	if rt.all[0].id != "" {
		w.logRouting(rt)
	}
	w.pending = nil
	ikv, err := js.KeyValue(ctx, cfg.IdempotencyBucket)
	if err != nil {
		return nil, fmt.Errorf("consumer: bucket %s: %w", cfg.IdempotencyBucket, err)
	}
	skv, err := js.KeyValue(ctx, cfg.StateBucket)
	if err != nil {
		return nil, fmt.Errorf("consumer: bucket %s: %w", cfg.StateBucket, err)
	}
	w.claims = idempotency.NewStore(ikv, idempotency.WithClock(w.now))
	w.creds = idempotency.NewCredentials(skv, idempotency.WithClock(w.now))
	w.maxPayload = int(js.Conn().MaxPayload())
	return w, nil
}

// SeamUnauthorized reports whether Seam refuses the API key (401/403) of
// every workspace: the worker should not be reported ready.
func (w *Worker) SeamUnauthorized() bool {
	s, _ := w.SeamHealth()
	return s == SeamUnauthorized
}

// SeamHealth reports the state of the Seam health gate and since when it
// holds: SeamHealthy while at least one workspace's gate is closed (the
// worker takes new events), otherwise the state of the first workspace.
// Workspaces tells each workspace's.
func (w *Worker) SeamHealth() (SeamHealth, time.Time) {
	all := w.Workspaces()
	for _, x := range all {
		if x.Health == SeamHealthy {
			return x.Health, x.Since
		}
	}
	return all[0].Health, all[0].Since
}

// InFlight is the number of events being handled now.
func (w *Worker) InFlight() int64 { return w.inFlight.Load() }

// Run consumes until ctx ends, then stops fetching, lets in-flight events
// finish for up to Config.ShutdownGrace, hands every other message back with
// Nak, and returns. It returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	cons, err := w.js.Consumer(ctx, w.cfg.InputStream, w.cfg.Durable)
	if err != nil {
		return fmt.Errorf("consumer: %s on %s: %w", w.cfg.Durable, w.cfg.InputStream, err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.Concurrency))
	if err != nil {
		return fmt.Errorf("consumer: subscribe: %w", err)
	}
	// In-flight events keep running through shutdown until the grace period
	// ends: cutting a Seam call short turns a clean result into an unknown one.
	w.stopping = ctx
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	stopped := context.AfterFunc(ctx, func() {
		// Draining flushes to the server first, which takes the whole
		// flush timeout while NATS is away: then stop at once.
		if w.js.Conn().IsConnected() {
			iter.Drain()
		} else {
			iter.Stop()
		}
	})
	defer stopped()

	sem := newSlots(w.cfg.Concurrency)
	var wg sync.WaitGroup
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			break
		}
		if err != nil {
			// Missing heartbeats and the like while NATS is away: the
			// iterator recovers by itself once the connection is back.
			w.log.Warn().Err(err).Msg("fetching messages")
			continue
		}
		if ctx.Err() != nil {
			// Buffered but not started: hand back at once for another replica.
			_ = msg.Nak()
			continue
		}
		// While Seam is down (for every workspace), events already waiting
		// for it will probe it: take no more until it is back.
		w.hold(ctx, w.heartbeat(), func() { _ = msg.InProgress() })
		if err := sem.acquire(ctx); err != nil {
			_ = msg.Nak()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.process(hctx, msg, sem) // releases the slot
		}()
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownGrace):
		w.log.Warn().Int64("in_flight", w.inFlight.Load()).Msg("shutdown grace period over: handing back in-flight events")
		cancelHandlers()
		select {
		case <-done:
		case <-time.After(handBackTimeout):
			// NATS is slow or away: what they hold is left to expire.
			w.log.Warn().Int64("in_flight", w.inFlight.Load()).Msg("in-flight events not handed back in time: their claims and leases will expire")
		}
	}
	return nil
}

// handBackTimeout bounds how long Run waits, once the shutdown grace period
// is over, for cancelled handlers to hand their events back.
const handBackTimeout = time.Second

// process handles one message and settles it.
func (w *Worker) process(ctx context.Context, msg jetstream.Msg, s slots) {
	w.inFlight.Add(1)
	defer w.inFlight.Add(-1)
	start := w.now()
	out := w.handle(ctx, msg, s)
	if err := settle(msg, out); err != nil {
		// The idempotency record makes the redelivery that follows harmless.
		w.log.Warn().Err(err).Str("nats_subject", msg.Subject()).Msg("settling message")
	}
	w.metrics.observeOutcome(msg.Subject(), out.workspace, out, w.now().Sub(start))
}
