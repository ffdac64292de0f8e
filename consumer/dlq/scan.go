package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
)

// scanBatch is how many dead letters one fetch asks for.
const scanBatch = 256

// Scan calls fn with each dead letter matching f, oldest first, up to
// f.Limit. It sees the stream as it was when called: dead letters written
// meanwhile are left for the next scan. An error from fn ends the scan and
// is returned. A missing dead-letter stream is an error matching
// ErrStreamNotFound.
//
// Scan reads through an ephemeral consumer that does not ack and is deleted
// when it returns, filtering by subject and start time on the server.
func (q *Queue) Scan(ctx context.Context, f Filter, fn func(Entry) error) error {
	if err := f.Validate(); err != nil {
		return err
	}
	s, err := q.stream(ctx, q.cfg.DeadLetterStream)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("dlq: stream %s: %w", q.cfg.DeadLetterStream, err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	cc := jetstream.ConsumerConfig{
		Description:       "keyworker dlq: operator scan",
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // cleaned up by the server if this process dies
		MemoryStorage:     true,
		Replicas:          1,
	}
	if !f.Since.IsZero() {
		since := f.Since
		cc.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cc.OptStartTime = &since
	}
	if f.Subject != "" {
		cc.FilterSubject = schemas.DeadLetterSubject(f.Subject)
	}
	cons, err := s.CreateConsumer(ctx, cc)
	if err != nil {
		return fmt.Errorf("dlq: reading %s: %w", q.cfg.DeadLetterStream, err)
	}
	name := cons.CachedInfo().Name
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.DeleteConsumer(dctx, name)
	}()
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}

	matched := 0
	for {
		batch, err := cons.FetchNoWait(scanBatch)
		if err != nil {
			return fmt.Errorf("dlq: reading %s: %w", q.cfg.DeadLetterStream, err)
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			if done {
				continue // drain the batch
			}
			meta, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("dlq: reading %s: %w", q.cfg.DeadLetterStream, err)
			}
			seq := meta.Sequence.Stream
			if seq > last || (!f.Until.IsZero() && meta.Timestamp.After(f.Until)) {
				done = true
				continue
			}
			e := newEntry(seq, meta.Timestamp, msg.Subject(), msg.Data())
			e.Traceparent, e.Tracestate = msg.Headers().Get(consumer.HeaderTraceparent), msg.Headers().Get(consumer.HeaderTracestate)
			if f.match(e) {
				if err := fn(e); err != nil {
					return err
				}
				if matched++; f.Limit > 0 && matched >= f.Limit {
					done = true
				}
			}
			if meta.NumPending == 0 || seq == last {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("dlq: reading %s: %w", q.cfg.DeadLetterStream, err)
		}
		if done || n == 0 {
			return ctx.Err()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// List returns the dead letters matching f, oldest first.
func (q *Queue) List(ctx context.Context, f Filter) ([]Entry, error) {
	var out []Entry
	err := q.Scan(ctx, f, func(e Entry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Get returns the dead letter at stream sequence seq, or an error matching
// ErrNotFound.
func (q *Queue) Get(ctx context.Context, seq uint64) (Entry, error) {
	s, err := q.stream(ctx, q.cfg.DeadLetterStream)
	if err != nil {
		return Entry{}, err
	}
	m, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Entry{}, fmt.Errorf("%w: sequence %d in %s", ErrNotFound, seq, q.cfg.DeadLetterStream)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("dlq: get %d from %s: %w", seq, q.cfg.DeadLetterStream, err)
	}
	e := newEntry(m.Sequence, m.Time, m.Subject, m.Data)
	e.Traceparent, e.Tracestate = m.Header.Get(consumer.HeaderTraceparent), m.Header.Get(consumer.HeaderTracestate)
	return e, nil
}
