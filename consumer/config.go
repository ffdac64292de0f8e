package consumer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/keyworker/keyworker/idempotency"
)

// Config is the worker's tuning and NATS layout. The zero value of every
// field means its default; Validate fills them in.
type Config struct {
	InputStream      string // default GUEST_EVENTS
	ResultsStream    string // default CREDENTIAL_RESULTS
	DeadLetterStream string // default DEAD_LETTERS
	Durable          string // default keyworker

	IdempotencyBucket string // default keyworker_idempotency
	StateBucket       string // default keyworker_credential_state
	// OriginalsBucket is the object store keeping the originals too large
	// for their dead letters, by dead letter id, for as long as the dead
	// letter (the input stream ages them out). Default
	// keyworker_dead_letter_originals.
	OriginalsBucket string
	// IdempotencyTTL is how long an event's record is kept (default: the
	// input stream's max age). It may not be shorter: an event redelivered
	// or re-sent while the stream still holds it must find its record.
	IdempotencyTTL  time.Duration
	InputMaxAge     time.Duration // input stream retention, default 14 days
	ResultsMaxAge   time.Duration // default 30 days
	DuplicateWindow time.Duration // default 2 min, on every stream
	Replicas        int           // stream and bucket replicas, default 1 (3 on a cluster)
	// MaxAckPending must stay well above Concurrency: messages waiting for a
	// delayed redelivery count as pending and must not starve the workers (default 1024).
	MaxAckPending int
	AckWait       time.Duration // default 30 s; InProgress extends it while retrying

	// Concurrency bounds the events worked on at once in this process
	// (default 32). An event waiting out a retry delay gives its slot back
	// until its next attempt; MaxAckPending bounds those.
	Concurrency int
	// MaxDeliver is how many deliveries of an event may end without a
	// decision (the worker handling it crashed, hung or was killed) before
	// it is dead-lettered as a poison message, retries_exhausted (default
	// 10). Seam failures, busy credentials, rate-limit waits and hand-backs
	// at shutdown never count. The server-side consumer has no MaxDeliver:
	// the worker decides, so nothing is ever dropped without a dead letter.
	MaxDeliver int
	// RetryFor bounds transient Seam failures by time: an event still
	// failing this long after its first attempt is dead-lettered as
	// retries_exhausted (default 24 h).
	RetryFor time.Duration
	// GateProbeFirst and GateProbeMax space the Seam health gate's probes
	// while Seam is down or refuses the key: the first after GateProbeFirst,
	// then doubling up to GateProbeMax (defaults 1 s, 5 s).
	GateProbeFirst time.Duration
	GateProbeMax   time.Duration
	// RetryBudget is the in-process retry time per delivery before the event
	// is handed back with NakWithDelay (default 10 s).
	RetryBudget time.Duration
	// RetryInitial and RetryMax shape the in-process exponential backoff (defaults 100 ms, 2 s).
	RetryInitial time.Duration
	RetryMax     time.Duration
	// NakDelay is the first redelivery delay; it doubles per delivery up to NakDelayMax (defaults 2 s, 2 min).
	NakDelay    time.Duration
	NakDelayMax time.Duration
	// BusyDelay is the redelivery delay when another replica holds the
	// event's claim or its credential (default 250 ms).
	BusyDelay time.Duration
	// Lease is how long a claim and a credential lease stay valid without
	// renewal (default 30 s). It must exceed the Seam request timeout: a
	// lease that expires during a call would let another replica call for
	// the same credential.
	Lease time.Duration
	// SeamTimeout is the per-request timeout the Seam client uses (default 10 s); used to check Lease.
	SeamTimeout time.Duration
	// MaxClockSkew refuses events dated further in the future (default 5 min):
	// a future-dated check-in would otherwise hold its credential for good.
	MaxClockSkew time.Duration
	// ShutdownGrace bounds how long in-flight events may finish after Run's
	// context ends (default 25 s); what is left is handed back with Nak.
	ShutdownGrace time.Duration
	// Owner names this replica in claims and leases (default: host-pid;
	// New adds a random suffix per Worker).
	Owner string
	// Source is the CloudEvents source of the outcome events (default "keyworker").
	Source string
	// AwaitSync bounds how long, after Seam accepted a change, the worker
	// polls the credential until the provider has it or failed to take it,
	// before publishing the result (default 0: publish at once). The wait
	// gives back the event's slot and keeps its claim, lease and ack wait alive.
	AwaitSync time.Duration
}

// Defaults used by Validate.
const (
	DefaultInputStream      = "GUEST_EVENTS"
	DefaultResultsStream    = "CREDENTIAL_RESULTS"
	DefaultDeadLetterStream = "DEAD_LETTERS"
	DefaultDurable          = "keyworker"
	DefaultOriginalsBucket  = "keyworker_dead_letter_originals"
	DefaultConcurrency      = 32
)

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("consumer: invalid config")

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Validate fills in defaults and refuses inconsistent values.
func (c *Config) Validate() error {
	setDefault(&c.InputStream, DefaultInputStream)
	setDefault(&c.ResultsStream, DefaultResultsStream)
	setDefault(&c.DeadLetterStream, DefaultDeadLetterStream)
	setDefault(&c.Durable, DefaultDurable)
	setDefault(&c.Concurrency, DefaultConcurrency)
	setDefault(&c.IdempotencyBucket, idempotency.DefaultBucket)
	setDefault(&c.StateBucket, idempotency.DefaultStateBucket)
	setDefault(&c.OriginalsBucket, DefaultOriginalsBucket)
	setDefault(&c.InputMaxAge, 14*24*time.Hour)
	setDefault(&c.IdempotencyTTL, c.InputMaxAge)
	setDefault(&c.ResultsMaxAge, 30*24*time.Hour)
	setDefault(&c.DuplicateWindow, 2*time.Minute)
	setDefault(&c.Replicas, 1)
	setDefault(&c.MaxAckPending, 1024)
	setDefault(&c.AckWait, 30*time.Second)
	setDefault(&c.MaxDeliver, 10)
	setDefault(&c.RetryFor, 24*time.Hour)
	setDefault(&c.GateProbeFirst, time.Second)
	setDefault(&c.GateProbeMax, 5*time.Second)
	setDefault(&c.RetryBudget, 10*time.Second)
	setDefault(&c.RetryInitial, 100*time.Millisecond)
	setDefault(&c.RetryMax, 2*time.Second)
	setDefault(&c.NakDelay, 2*time.Second)
	setDefault(&c.NakDelayMax, 2*time.Minute)
	setDefault(&c.BusyDelay, 250*time.Millisecond)
	setDefault(&c.Lease, 30*time.Second)
	setDefault(&c.SeamTimeout, 10*time.Second)
	setDefault(&c.MaxClockSkew, 5*time.Minute)
	setDefault(&c.ShutdownGrace, 25*time.Second)
	setDefault(&c.Owner, defaultOwner())
	setDefault(&c.Source, "keyworker")
	switch {
	case c.Concurrency < 0:
		return fmt.Errorf("%w: concurrency %d must be positive", ErrInvalidConfig, c.Concurrency)
	case c.MaxDeliver < 1:
		return fmt.Errorf("%w: max deliver %d must be at least 1", ErrInvalidConfig, c.MaxDeliver)
	case c.AwaitSync < 0:
		return fmt.Errorf("%w: await sync %s must not be negative", ErrInvalidConfig, c.AwaitSync)
	case c.RetryBudget < 0 || c.RetryInitial < 0 || c.RetryMax < 0 || c.NakDelay < 0 || c.NakDelayMax < 0:
		return fmt.Errorf("%w: retry durations must not be negative", ErrInvalidConfig)
	case c.IdempotencyTTL < c.InputMaxAge:
		return fmt.Errorf("%w: idempotency TTL %s is shorter than the input stream's max age %s: an event redelivered after its record expired would get a second outcome", ErrInvalidConfig, c.IdempotencyTTL, c.InputMaxAge)
	case c.MaxAckPending < 2*c.Concurrency:
		return fmt.Errorf("%w: max ack pending %d must be at least twice the concurrency %d", ErrInvalidConfig, c.MaxAckPending, c.Concurrency)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d must be 1 to 5", ErrInvalidConfig, c.Replicas)
	case c.AckWait <= c.RetryMax:
		return fmt.Errorf("%w: ack wait %s must exceed the longest retry delay %s", ErrInvalidConfig, c.AckWait, c.RetryMax)
	case c.Lease <= c.SeamTimeout:
		return fmt.Errorf("%w: lease %s must exceed the Seam timeout %s", ErrInvalidConfig, c.Lease, c.SeamTimeout)
	}
	return nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	return host + "-" + strconv.Itoa(os.Getpid())
}
