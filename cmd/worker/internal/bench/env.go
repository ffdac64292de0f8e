package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// publishedAtHeader carries the publish time (Unix nanoseconds) of
// every bench event, so that the stream itself shows it; the bench keeps
// the same time per event in memory for its figures.
const publishedAtHeader = "Keyworker-Bench-Published-At"

// ackedSubject is where the floor running in a child process reports
// each acknowledged event (data: the credential id).
const ackedSubject = "_keyworker_bench.floor.acked"

// eventSource is the CloudEvents source of the bench's events.
const eventSource = "keyworker-bench"

// eventSet holds the events of one run, each with a credential and user of
// its own (so ordering leases never serialise them), and what was seen of
// each. Indexes are positions in the slices.
type eventSet struct {
	docs [][]byte
	// byCred maps a credential id to its event; byOutcome maps an outcome's
	// Nats-Msg-Id to its event. Both are read-only once built.
	byCred    map[string]int
	byOutcome map[string]int

	publishedAt []atomic.Int64 // Unix ns
	observedAt  []atomic.Int64 // Unix ns of the outcome (keyworker) or the ack (floor); 0: not yet
	insideSeam  []atomic.Int64 // ns spent inside the Seam fake for the event, all calls added up

	observed    atomic.Int64
	lastSeen    atomic.Int64 // Unix ns of the latest first observation
	deadLetters atomic.Int64
	skipped     atomic.Int64
	unknown     atomic.Int64 // outcomes matching no event
	done        chan struct{}
	doneOnce    sync.Once
}

func newEventSet(n int) (*eventSet, error) {
	e := &eventSet{
		docs:        make([][]byte, n),
		byCred:      make(map[string]int, n),
		byOutcome:   make(map[string]int, n),
		publishedAt: make([]atomic.Int64, n),
		observedAt:  make([]atomic.Int64, n),
		insideSeam:  make([]atomic.Int64, n),
		done:        make(chan struct{}),
	}
	if n == 0 {
		close(e.done)
	}
	run := mrand.Uint32()
	at := time.Now().UTC().Add(-time.Second)
	for i := range n {
		cred := fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", run, i>>16&0xffff, i>>4&0xfff, i&0xf, uint64(i))
		user := fmt.Sprintf("%08x-%04x-4%03x-9%03x-%012x", run, i>>16&0xffff, i>>4&0xfff, i&0xf, uint64(i))
		id := "bench-" + strconv.FormatUint(uint64(run), 16) + "-" + strconv.Itoa(i)
		doc, err := schemas.NewEnvelope(schemas.SubjectCheckedIn, eventSource, id, "R-"+strconv.Itoa(i), at,
			schemas.GuestData{ACSCredentialID: cred, ACSUserID: user, ReservationID: "R-" + strconv.Itoa(i), PropertyID: "bench-hotel"})
		if err != nil {
			return nil, err
		}
		e.docs[i] = doc
		e.byCred[cred] = i
		e.byOutcome["keyworker-"+idempotency.Key(eventSource, id)[:40]] = i
	}
	return e, nil
}

// observe records the first outcome of event i and reports whether it
// was the first.
func (e *eventSet) observe(i int, at int64) bool {
	if !e.observedAt[i].CompareAndSwap(0, at) {
		return false // a re-publish of an outcome already seen
	}
	for {
		last := e.lastSeen.Load()
		if at <= last || e.lastSeen.CompareAndSwap(last, at) {
			break
		}
	}
	if int(e.observed.Add(1)) == len(e.docs) {
		e.doneOnce.Do(func() { close(e.done) })
	}
	return true
}

// onOutcome handles an outcome event seen on the core subject: it is
// matched to its input by the Nats-Msg-Id the worker derives from the
// event's identity, or by the CloudEvents id when the header is missing.
func (e *eventSet) onOutcome(m *nats.Msg) {
	at := time.Now().UnixNano()
	id := m.Header.Get(jetstream.MsgIDHeader)
	if id == "" {
		var env struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(m.Data, &env)
		id = env.ID
	}
	i, ok := e.byOutcome[id]
	if !ok {
		e.unknown.Add(1)
		return
	}
	if !e.observe(i, at) {
		return
	}
	switch {
	case m.Subject == schemas.SubjectSkipped:
		e.skipped.Add(1)
	case strings.HasPrefix(m.Subject, schemas.DeadLetterPrefix):
		e.deadLetters.Add(1)
	}
}

// environment is the world of one run: a fresh embedded JetStream server with
// keyworker's streams, consumer and buckets, a client connection that
// publishes and observes, and the Seam fake behind a timing wrapper.
type environment struct {
	dir      string
	srv      *server.Server
	url      string
	nc       *nats.Conn
	js       jetstream.JetStream
	cfg      consumer.Config
	fake     *seamtest.Fake
	seam     *timedSeam
	seamURL  string
	stopSeam func()
	pubErrs  atomic.Int64
}

func startEnvironment(ctx context.Context, s scenario, ev *eventSet) (_ *environment, err error) {
	e := &environment{stopSeam: func() {}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.dir, err = os.MkdirTemp("", "keyworker-bench-*")
	if err != nil {
		return nil, err
	}
	e.srv, err = embedded.Start(embedded.Options{DataDir: e.dir})
	if err != nil {
		return nil, err
	}
	e.url = e.srv.ClientURL()
	e.nc, err = nats.Connect(e.url, nats.Name("keyworker-bench"))
	if err != nil {
		return nil, fmt.Errorf("bench: connect: %w", err)
	}
	e.js, err = jetstream.New(e.nc,
		jetstream.WithPublishAsyncMaxPending(2048),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { e.pubErrs.Add(1) }))
	if err != nil {
		return nil, err
	}
	e.cfg = consumerConfig(s.Concurrency)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := consumer.Provision(pctx, e.js, e.cfg, false); err != nil {
		return nil, err
	}
	if err := e.cfg.Validate(); err != nil {
		return nil, err
	}

	opts := []seamtest.Option{seamtest.WithAutoCreate()}
	if s.Latency > 0 {
		opts = append(opts, seamtest.WithLatency(s.Latency))
	}
	if s.Outage > 0 {
		// Down from the start; endOutage brings it back.
		opts = append(opts, seamtest.WithDown(seamtest.DownMixed))
	}
	if s.RateLimit > 0 {
		opts = append(opts, seamtest.WithRateLimit(s.RateLimit, max(1, int(math.Ceil(s.RateLimit)))))
	}
	e.fake = seamtest.New(opts...)
	e.seam = &timedSeam{next: e.fake, fake: e.fake, ev: ev, faultRate: s.FaultRate, rng: mrand.New(mrand.NewPCG(6, 7))}
	e.seamURL, e.stopSeam, err = serveSeam(e.seam)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// consumerConfig is keyworker's configuration in the bench: the
// defaults, as `worker run` uses them, at the scenario's concurrency, with
// a short shutdown grace so that a timed-out run stops promptly.
func consumerConfig(concurrency int) consumer.Config {
	return consumer.Config{Concurrency: concurrency, ShutdownGrace: 2 * time.Second}
}

func (e *environment) close() {
	e.stopSeam()
	if e.nc != nil {
		e.nc.Close()
	}
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

// observeOutcomes subscribes to the outcome subjects on the core
// connection; it sees each outcome as it is published to its stream.
func (e *environment) observeOutcomes(ev *eventSet) (func(), error) {
	var subs []*nats.Subscription
	stop := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	for _, subj := range []string{"credential.>", schemas.DeadLetterPrefix + ">"} {
		sub, err := e.nc.Subscribe(subj, ev.onOutcome)
		if err != nil {
			stop()
			return nil, err
		}
		_ = sub.SetPendingLimits(-1, -1)
		subs = append(subs, sub)
	}
	return stop, e.nc.Flush()
}

// observeChildAcks subscribes to the acknowledgements a floor running in a
// child process reports.
func (e *environment) observeChildAcks(ev *eventSet) (func(), error) {
	sub, err := e.nc.Subscribe(ackedSubject, func(m *nats.Msg) {
		at := time.Now().UnixNano()
		if i, ok := ev.byCred[string(m.Data)]; ok {
			ev.observe(i, at)
		}
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	return func() { _ = sub.Unsubscribe() }, e.nc.Flush()
}

// publish publishes event i with its publish time in a header; the stream's
// acknowledgement is awaited in bulk by waitPublished.
func (e *environment) publish(ctx context.Context, ev *eventSet, i int) error {
	now := time.Now().UnixNano()
	ev.publishedAt[i].Store(now)
	msg := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: ev.docs[i], Header: nats.Header{}}
	msg.Header.Set("Content-Type", schemas.ContentType)
	msg.Header.Set(publishedAtHeader, strconv.FormatInt(now, 10))
	for {
		_, err := e.js.PublishMsgAsync(msg)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// preload publishes every event before the pipeline starts.
func (e *environment) preload(ctx context.Context, ev *eventSet) error {
	for i := range ev.docs {
		if err := e.publish(ctx, ev, i); err != nil {
			return fmt.Errorf("bench: publish: %w", err)
		}
	}
	return e.waitPublished(ctx)
}

func (e *environment) waitPublished(ctx context.Context) error {
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("bench: waiting for publish acks: %w", ctx.Err())
	}
	if n := e.pubErrs.Load(); n > 0 {
		return fmt.Errorf("bench: %d events were not stored", n)
	}
	return nil
}

// offer publishes the events at rate per second, on a fixed schedule: a
// late publish does not make the next one early beyond catching up.
func (e *environment) offer(ctx context.Context, ev *eventSet, rate float64) error {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for i := range ev.docs {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := e.publish(ctx, ev, i); err != nil {
			return fmt.Errorf("bench: publish: %w", err)
		}
	}
	return e.waitPublished(ctx)
}

// outageClock ends the Seam fake's outage on time and records what the
// fake saw while it was down.
type outageClock struct {
	timer *time.Timer
	start time.Time

	mu        sync.Mutex
	healthyAt time.Time // zero: still down
	calls     int       // calls the fake received while down
}

// endOutage brings the fake back up at start+d. The calls received until
// then are counted just before: a call racing the switch may be missed.
func (e *environment) endOutage(start time.Time, d time.Duration) *outageClock {
	c := &outageClock{start: start}
	c.timer = time.AfterFunc(time.Until(start.Add(d)), func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.calls = e.fake.Calls("")
		e.fake.SetDown(seamtest.DownOff)
		c.healthyAt = time.Now()
	})
	return c
}

// stop cancels the end of the outage if it has not come yet.
func (c *outageClock) stop() { c.timer.Stop() }

// result returns the outage's figures given the last outcome's time, or
// nil while Seam is still down (the run ended first).
func (c *outageClock) result(lastOutcome time.Time) *outageResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.healthyAt.IsZero() {
		return nil
	}
	secs := c.healthyAt.Sub(c.start).Seconds()
	r := &outageResult{Seconds: secs, SeamCalls: c.calls, RecoverySeconds: max(0, lastOutcome.Sub(c.healthyAt).Seconds())}
	if secs > 0 {
		r.SeamCallsPerSec = float64(c.calls) / secs
	}
	return r
}

// timedSeam wraps the Seam fake: it adds up the time each event's calls
// spend inside the fake (latency and handling, not the HTTP transport), and
// injects transient faults through the fake's own FailNext.
type timedSeam struct {
	next http.Handler
	fake *seamtest.Fake
	ev   *eventSet

	faultRate float64
	mu        sync.Mutex
	rng       *mrand.Rand
	faults    int
}

func (b *timedSeam) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var in struct {
		ID string `json:"acs_credential_id"`
	}
	_ = json.Unmarshal(body, &in)
	if b.faultRate > 0 {
		b.mu.Lock()
		if b.rng.Float64() < b.faultRate {
			// Alternate the two transient faults the scenario names. A
			// concurrent call may take this one: the rate stays the same.
			fault := seamtest.HTML(http.StatusServiceUnavailable)
			if b.faults%2 == 1 {
				fault = seamtest.HTML(http.StatusBadGateway)
			}
			b.faults++
			b.fake.FailNext(1, r.URL.Path, fault)
		}
		b.mu.Unlock()
	}
	start := time.Now()
	b.next.ServeHTTP(w, r)
	if i, ok := b.ev.byCred[in.ID]; ok {
		b.ev.insideSeam[i].Add(int64(time.Since(start)))
	}
}

// serveSeam serves h on a loopback port, as seamtest's Fake.Serve
// does for the bare fake, and returns its base URL and a stop function.
func serveSeam(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("bench: seam fake: %w", err)
	}
	// Calls held by latency end when the server stops.
	base, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return base }}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	stop := func() {
		cancel()
		// The pipeline has stopped by now. A connection its client dialled
		// but never used would hold Shutdown for 5 s: close it instead.
		sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
		<-served
	}
	return "http://" + ln.Addr().String(), stop, nil
}
