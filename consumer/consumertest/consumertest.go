// Package consumertest is the test tooling shared by the packages that run
// keyworker's pipeline (consumer, the worker's CLI, deploy): a
// configuration whose retries take milliseconds, valid guest events,
// workers on a test's NATS server, and the outcome streams read back. Like
// net/http/httptest it ships beside the code it tests; the worker binary
// does not import it.
package consumertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

// Config keeps retries, naks and busy waits short, so that tests of
// failures finish in seconds; the streams and buckets are the defaults.
func Config() consumer.Config {
	return consumer.Config{
		Concurrency:  16,
		MaxDeliver:   4,
		RetryBudget:  3 * time.Second,
		RetryInitial: 10 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
		NakDelay:     50 * time.Millisecond,
		NakDelayMax:  200 * time.Millisecond,
		BusyDelay:    20 * time.Millisecond,
		SeamTimeout:  2 * time.Second,
		Lease:        10 * time.Second,
		AckWait:      5 * time.Second,
	}
}

// Event is a valid guest event document from source, about the
// reservation d names.
func Event(subject, source, id string, at time.Time, d schemas.GuestData) []byte {
	doc, err := schemas.NewEnvelope(subject, source, id, d.ReservationID, at, d)
	if err != nil {
		panic(err) // only a GuestData that cannot be marshalled gets here
	}
	return doc
}

// Provision creates the keyworker layout for cfg on js, as the worker does
// at start-up, and returns cfg with its defaults filled in.
func Provision(tb testing.TB, js jetstream.JetStream, cfg consumer.Config) consumer.Config {
	tb.Helper()
	if err := consumer.Provision(context.Background(), js, cfg, false); err != nil {
		tb.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// NewWorker builds a worker on its own connection to url, as a replica
// would be, calling Seam through seam.
func NewWorker(tb testing.TB, url string, seam consumer.SeamCaller, cfg consumer.Config, opts ...consumer.Option) *consumer.Worker {
	tb.Helper()
	_, js := natstest.ConnectTest(tb, url)
	w, err := consumer.New(context.Background(), js, seam, cfg, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// Run runs w until the returned stop is called or the test ends; a Run
// error fails the test.
func Run(tb testing.TB, w *consumer.Worker) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(ctx); err != nil {
			tb.Errorf("worker: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	tb.Cleanup(stop)
	return stop
}

// Outcome is one event read back from the results or dead-letter stream.
type Outcome struct {
	Subject string
	Seq     uint64
	Raw     []byte
	Env     schemas.Envelope
	Result  schemas.CredentialResult
	Skip    schemas.Skipped
	DL      schemas.DeadLetter
	// DeadLetter is set for an event of the dead-letter stream.
	DeadLetter bool
}

// SourceID is the id of the input event the outcome is about.
func (o Outcome) SourceID() string {
	switch {
	case o.DeadLetter || o.DL.OriginalSubject != "":
		return o.DL.SourceEventID
	case o.Subject == schemas.SubjectSkipped:
		return o.Skip.SourceEventID
	}
	return o.Result.SourceEventID
}

// Outcomes reads every event of cfg's results and dead-letter streams, in
// stream order, results first.
func Outcomes(ctx context.Context, js jetstream.JetStream, cfg consumer.Config) ([]Outcome, error) {
	var out []Outcome
	for _, stream := range []string{cfg.ResultsStream, cfg.DeadLetterStream} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return nil, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, err
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // deleted: a purge, or a gap in the sequence
			}
			if err != nil {
				// Not skipped: a timeout while a cluster elects a leader
				// would otherwise read as a missing outcome.
				return nil, fmt.Errorf("%s message %d: %w", stream, seq, err)
			}
			o, err := decodeOutcome(m, stream == cfg.DeadLetterStream)
			if err != nil {
				return nil, fmt.Errorf("%s message %d: %w", stream, seq, err)
			}
			out = append(out, o)
		}
	}
	return out, nil
}

func decodeOutcome(m *jetstream.RawStreamMsg, deadLetter bool) (Outcome, error) {
	o := Outcome{Subject: m.Subject, Seq: m.Sequence, Raw: m.Data, DeadLetter: deadLetter}
	if deadLetter {
		env, dl, err := schemas.DecodeDeadLetterEvent(m.Data)
		o.Env, o.DL = env, dl
		return o, err
	}
	if err := json.Unmarshal(m.Data, &o.Env); err != nil {
		return o, err
	}
	if m.Subject == schemas.SubjectSkipped {
		return o, json.Unmarshal(o.Env.Data, &o.Skip)
	}
	return o, json.Unmarshal(o.Env.Data, &o.Result)
}

// WaitOutcomes polls the outcome streams until they hold at least n
// events, then returns all of them.
func WaitOutcomes(tb testing.TB, js jetstream.JetStream, cfg consumer.Config, n int, within time.Duration) []Outcome {
	tb.Helper()
	var got []Outcome
	natstest.WaitFor(tb, within, func() error {
		var err error
		if got, err = Outcomes(context.Background(), js, cfg); err != nil {
			return err
		}
		if len(got) < n {
			return fmt.Errorf("%d outcome events, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// WaitDrained waits until the durable consumer has nothing pending or
// unacknowledged: every published event has been settled for good.
func WaitDrained(tb testing.TB, js jetstream.JetStream, cfg consumer.Config, within time.Duration) {
	tb.Helper()
	natstest.WaitFor(tb, within, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return Drained(ctx, js, cfg)
	})
}

// Drained says why cfg's durable consumer is not drained yet, or nil when
// nothing is pending or awaiting an ack and it has acknowledged up to the
// input stream's last message. It is the check WaitDrained polls, for
// callers with their own poll (a test whose server comes and goes).
func Drained(ctx context.Context, js jetstream.JetStream, cfg consumer.Config) error {
	c, err := js.Consumer(ctx, cfg.InputStream, cfg.Durable)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending > 0 || info.NumAckPending > 0 {
		return fmt.Errorf("consumer: %d pending, %d awaiting ack, %d redelivered", info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
	// The pending count follows a publish a moment later: drained
	// means acknowledged up to the stream's last message.
	s, err := js.Stream(ctx, cfg.InputStream)
	if err != nil {
		return err
	}
	if last := s.CachedInfo().State.LastSeq; info.AckFloor.Stream < last {
		return fmt.Errorf("consumer: acknowledged up to %d of %d", info.AckFloor.Stream, last)
	}
	return nil
}

// LockedBuffer collects a logger's or a process's output while it runs.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// FreeAddr is a loopback host:port nothing listens on at the moment.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Clock runs ahead of real time by every wait it is asked to take, at once:
// give its Now and Sleep to a worker (consumer.WithClock, WithSleeper) and
// a Retry-After or a backoff passes without the test sleeping through it.
type Clock struct {
	mu    sync.Mutex
	ahead time.Duration
}

// Now is real time plus every wait taken so far.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.ahead)
}

// Sleep takes the wait d at once, unless ctx has ended.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c.mu.Lock()
	c.ahead += max(d, 0)
	c.mu.Unlock()
	return true
}
