package dlq

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
)

// Status is the state of keyworker's NATS resources, for `worker status`.
// A resource that does not exist has Found false and zero figures.
type Status struct {
	Streams     []StreamStatus   `json:"streams"`
	Consumer    ConsumerStatus   `json:"consumer"`
	DeadLetters DeadLetterCounts `json:"dead_letters"`
	Idempotency BucketStatus     `json:"idempotency"`
	// Results is filled in only when asked (Queue.Results).
	Results *ResultCounts `json:"results,omitempty"`
}

// StreamStatus is the size of one stream.
type StreamStatus struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"` // input, results or dead_letters
	Found     bool      `json:"found"`
	Messages  uint64    `json:"messages"`
	Bytes     uint64    `json:"bytes"`
	FirstTime time.Time `json:"first_time,omitzero"`
	LastTime  time.Time `json:"last_time,omitzero"`
}

// ConsumerStatus is the durable consumer's backlog.
type ConsumerStatus struct {
	Stream string `json:"stream"`
	Name   string `json:"name"`
	Found  bool   `json:"found"`
	// Pending is the number of messages not yet delivered.
	Pending uint64 `json:"pending"`
	// AckPending is delivered and not yet settled, including messages
	// waiting for a delayed redelivery.
	AckPending int `json:"ack_pending"`
	// Redelivered is the number of unsettled messages delivered more than once.
	Redelivered int `json:"redelivered"`
	// Waiting is the number of open pull requests: workers asking for work.
	Waiting int `json:"waiting"`
}

// DeadLetterCounts counts dead letters by error kind; undecodable ones are
// counted under "undecodable".
type DeadLetterCounts struct {
	Total       int            `json:"total"`
	ByErrorKind map[string]int `json:"by_error_kind"`
	// ByWorkspace counts them by the Seam workspace the event was routed
	// to; "none" for those never routed (invalid events, unknown
	// properties, a worker without routing).
	ByWorkspace map[string]int `json:"by_workspace"`
}

// ResultCounts counts the results stream's outcome events by workspace.
type ResultCounts struct {
	Total       int            `json:"total"`
	ByWorkspace map[string]int `json:"by_workspace"`
}

// BucketStatus is the size of the idempotency bucket.
type BucketStatus struct {
	Bucket  string `json:"bucket"`
	Found   bool   `json:"found"`
	Records int    `json:"records"`
}

// Status reads the sizes of the three streams, the durable consumer's
// counts, the dead letters by error kind and the number of idempotency
// records. Missing resources are reported as not found, not as errors.
func (q *Queue) Status(ctx context.Context) (*Status, error) {
	st := &Status{DeadLetters: DeadLetterCounts{ByErrorKind: map[string]int{}, ByWorkspace: map[string]int{}}}
	for _, s := range []struct{ name, role string }{
		{q.cfg.InputStream, "input"},
		{q.cfg.ResultsStream, "results"},
		{q.cfg.DeadLetterStream, "dead_letters"},
	} {
		ss := StreamStatus{Name: s.name, Role: s.role}
		stream, err := q.js.Stream(ctx, s.name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
		case err != nil:
			return nil, fmt.Errorf("dlq: stream %s: %w", s.name, err)
		default:
			state := stream.CachedInfo().State
			ss.Found, ss.Messages, ss.Bytes = true, state.Msgs, state.Bytes
			if state.Msgs > 0 {
				ss.FirstTime, ss.LastTime = state.FirstTime.UTC(), state.LastTime.UTC()
			}
		}
		st.Streams = append(st.Streams, ss)
	}

	st.Consumer = ConsumerStatus{Stream: q.cfg.InputStream, Name: q.cfg.Durable}
	cons, err := q.js.Consumer(ctx, q.cfg.InputStream, q.cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("dlq: consumer %s on %s: %w", q.cfg.Durable, q.cfg.InputStream, err)
	default:
		info := cons.CachedInfo()
		st.Consumer.Found = true
		st.Consumer.Pending = info.NumPending
		st.Consumer.AckPending = info.NumAckPending
		st.Consumer.Redelivered = info.NumRedelivered
		st.Consumer.Waiting = info.NumWaiting
	}

	err = q.Scan(ctx, Filter{}, func(e Entry) error {
		st.DeadLetters.Total++
		kind := e.DeadLetter.Error.Kind
		if e.Err != nil {
			kind = "undecodable"
		}
		st.DeadLetters.ByErrorKind[kind]++
		st.DeadLetters.ByWorkspace[cmp.Or(e.DeadLetter.WorkspaceID, "none")]++
		return nil
	})
	if err != nil && !errors.Is(err, ErrStreamNotFound) {
		return nil, err
	}

	st.Idempotency = BucketStatus{Bucket: q.cfg.IdempotencyBucket}
	kv, err := q.js.KeyValue(ctx, q.cfg.IdempotencyBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
	case err != nil:
		return nil, fmt.Errorf("dlq: bucket %s: %w", q.cfg.IdempotencyBucket, err)
	default:
		n, err := idempotency.NewStore(kv).Count(ctx)
		if err != nil {
			return nil, err
		}
		st.Idempotency.Found, st.Idempotency.Records = true, n
	}
	return st, nil
}

// Results counts the results stream's outcome events by the workspace_id
// they carry ("none" without one). It reads every event: on a large stream
// it takes a while, so status does it only when asked.
func (q *Queue) Results(ctx context.Context) (*ResultCounts, error) {
	rc := &ResultCounts{ByWorkspace: map[string]int{}}
	s, err := q.stream(ctx, q.cfg.ResultsStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return rc, err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{InactiveThreshold: time.Minute})
	if err != nil {
		return nil, fmt.Errorf("dlq: reading %s: %w", q.cfg.ResultsStream, err)
	}
	for {
		batch, err := cons.FetchNoWait(scanBatch)
		if err != nil {
			return nil, fmt.Errorf("dlq: reading %s: %w", q.cfg.ResultsStream, err)
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return nil, fmt.Errorf("dlq: reading %s: %w", q.cfg.ResultsStream, err)
			}
			if meta.Sequence.Stream > info.State.LastSeq {
				done = true
				continue
			}
			var ev struct {
				Data struct {
					WorkspaceID string `json:"workspace_id"`
				} `json:"data"`
			}
			_ = json.Unmarshal(msg.Data(), &ev)
			rc.Total++
			rc.ByWorkspace[cmp.Or(ev.Data.WorkspaceID, "none")]++
			if meta.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("dlq: reading %s: %w", q.cfg.ResultsStream, err)
		}
		if done || n == 0 {
			return rc, ctx.Err()
		}
	}
}
