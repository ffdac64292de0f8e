package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"golang.org/x/time/rate"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
)

// DefaultMaxReplays is the loop guard: an event replayed this often is not
// replayed again without ReplayOptions.Force.
const DefaultMaxReplays = 3

// ReplayOptions tune Replay.
type ReplayOptions struct {
	// DryRun decides everything (idempotency, loop guard, original bytes)
	// but publishes and records nothing; results say ActionWouldReplay.
	DryRun bool
	// Rate caps publishes per second; 0 means no cap. Skipped dead letters
	// do not count.
	Rate float64
	// Force replays past the loop guard.
	Force bool
	// MaxReplays is the loop guard's limit; 0 means DefaultMaxReplays.
	MaxReplays int
	// OnResult, when set, is called after each dead letter, on Replay's
	// goroutine, for progress reports.
	OnResult func(Result)
}

// Action is what Replay did with one dead letter.
type Action string

// Actions of a Result.
const (
	ActionReplayed    Action = "replayed"
	ActionWouldReplay Action = "would_replay" // dry run
	ActionSkipped     Action = "skipped"
	ActionFailed      Action = "failed"
)

// Result is the fate of one dead letter in a Replay.
type Result struct {
	Sequence        uint64 `json:"sequence"` // of the dead letter
	OriginalSubject string `json:"original_subject"`
	SourceEventID   string `json:"source_event_id,omitempty"`
	Action          Action `json:"action"`
	// Err says why the dead letter was skipped or failed: ErrCompleted,
	// ErrReplayLimit, ErrDuplicateInRun, ErrUndecodable, ErrOriginalUnavailable
	// or a NATS error.
	Err error `json:"-"`
	// Replays is the event's replay count after this replay, when known.
	Replays int `json:"replays,omitempty"`
	// InputSequence is where the replayed event landed in the input stream.
	InputSequence uint64 `json:"input_sequence,omitempty"`
	// MsgID is the Nats-Msg-Id the replay was published with.
	MsgID string `json:"msg_id,omitempty"`
}

// Report sums up a Replay.
type Report struct {
	Results     []Result
	Replayed    int
	WouldReplay int
	Skipped     int
	Failed      int
}

func (r *Report) add(res Result) {
	r.Results = append(r.Results, res)
	switch res.Action {
	case ActionReplayed:
		r.Replayed++
	case ActionWouldReplay:
		r.WouldReplay++
	case ActionSkipped:
		r.Skipped++
	case ActionFailed:
		r.Failed++
	}
}

// Replay re-publishes the original event of each entry, in order, to its
// original subject with the exact original bytes, the header
// Keyworker-Replay-Of: <dead-letter sequence> and a fresh Nats-Msg-Id (so
// the input stream's duplicate window does not swallow it). It never
// deletes a dead letter.
//
// Before publishing it reads the event's idempotency record: a completed
// event is skipped (ErrCompleted: the worker would ignore the replay), and
// one already replayed MaxReplays times is skipped (ErrReplayLimit) unless
// Force is set. Each replay is counted on the record with
// idempotency.Store.AddReplay. A dead letter whose original was
// undecodable has no record and is replayed unchecked. Of several dead
// letters of one event only the first is replayed (ErrDuplicateInRun).
//
// Failures of single dead letters are in the report; the error is for the
// run as a whole (ctx ended, the idempotency bucket is unreachable), with
// the report of what was done until then.
func (q *Queue) Replay(ctx context.Context, entries []Entry, opts ReplayOptions) (Report, error) {
	var rep Report
	if opts.Rate < 0 {
		return rep, fmt.Errorf("dlq: replay rate %v must not be negative", opts.Rate)
	}
	if opts.MaxReplays <= 0 {
		opts.MaxReplays = DefaultMaxReplays
	}
	kv, err := q.js.KeyValue(ctx, q.cfg.IdempotencyBucket)
	if err != nil {
		return rep, fmt.Errorf("dlq: idempotency bucket %s: %w", q.cfg.IdempotencyBucket, err)
	}
	store := idempotency.NewStore(kv)
	var limiter *rate.Limiter
	if opts.Rate > 0 {
		limiter = rate.NewLimiter(rate.Limit(opts.Rate), 1)
	}
	seen := map[string]uint64{}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		res, err := q.replayOne(ctx, store, limiter, seen, e, opts)
		if err != nil {
			return rep, err
		}
		rep.add(res)
		if opts.OnResult != nil {
			opts.OnResult(res)
		}
	}
	return rep, nil
}

// replayOne decides and, unless dry-running, replays one dead letter. Its
// error ends the run; the dead letter's own failures are in the Result.
func (q *Queue) replayOne(ctx context.Context, store *idempotency.Store, limiter *rate.Limiter, seen map[string]uint64, e Entry, opts ReplayOptions) (Result, error) {
	dl := e.DeadLetter
	res := Result{Sequence: e.Sequence, OriginalSubject: dl.OriginalSubject, SourceEventID: dl.SourceEventID}
	fail := func(err error) (Result, error) {
		res.Action, res.Err = ActionFailed, err
		return res, nil
	}
	skip := func(err error) (Result, error) {
		res.Action, res.Err = ActionSkipped, err
		return res, nil
	}
	if e.Err != nil {
		res.OriginalSubject = e.Summary().OriginalSubject
		return fail(e.Err)
	}

	key := e.Key()
	if key != "" {
		if first, ok := seen[key]; ok {
			return skip(fmt.Errorf("%w: dead letter %d", ErrDuplicateInRun, first))
		}
		seen[key] = e.Sequence
		rec, _, err := store.Get(ctx, key)
		switch {
		case errors.Is(err, idempotency.ErrNotFound):
			// Expired or never written: AddReplay creates a record the replay may claim.
		case err != nil:
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return fail(err)
		case rec.Status == idempotency.StatusCompleted:
			return skip(fmt.Errorf("%w: outcome %s", ErrCompleted, rec.Outcome))
		case rec.Replays >= opts.MaxReplays && !opts.Force:
			res.Replays = rec.Replays
			return skip(fmt.Errorf("%w: replayed %d times already (limit %d)", ErrReplayLimit, rec.Replays, opts.MaxReplays))
		default:
			res.Replays = rec.Replays
		}
	}

	original, err := q.OriginalMessage(ctx, e)
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return fail(err)
	}
	if opts.DryRun {
		res.Action = ActionWouldReplay
		return res, nil
	}
	if limiter != nil {
		if err := limiter.Wait(ctx); err != nil {
			return res, err
		}
	}
	if key != "" {
		// Counted before publishing: a replay whose publish failed still
		// counts toward the loop guard, which errs on the side of stopping.
		rec, err := store.AddReplay(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return fail(err)
		}
		res.Replays = rec.Replays
	}
	res.MsgID = "keyworker-replay-" + strconv.FormatUint(e.Sequence, 10) + "-" + nuid.Next()
	seq, err := q.publish(ctx, dl.OriginalSubject, original, e, res.MsgID)
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return fail(err)
	}
	res.Action, res.InputSequence = ActionReplayed, seq
	return res, nil
}

// publish puts the original back on the input stream: its bytes and its
// headers (replayHeader), with the dead letter's trace context so that the
// replay continues the event's trace. A lost ack is retried with the same
// Nats-Msg-Id, so the stream keeps one copy.
func (q *Queue) publish(ctx context.Context, subject string, orig OriginalMessage, e Entry, msgID string) (uint64, error) {
	dlSeq := e.Sequence
	var lastErr error
	for attempt := range 3 {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * 250 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return 0, ctx.Err()
			}
		}
		msg := &nats.Msg{Subject: subject, Data: orig.Data, Header: replayHeader(orig.Header, dlSeq)}
		if e.Traceparent != "" {
			msg.Header.Set(consumer.HeaderTraceparent, e.Traceparent)
			msg.Header.Del(consumer.HeaderTracestate)
			if e.Tracestate != "" {
				msg.Header.Set(consumer.HeaderTracestate, e.Tracestate)
			}
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := q.js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(q.cfg.InputStream))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		lastErr = err
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			break // the server refused it: another try would be refused too
		}
	}
	return 0, fmt.Errorf("dlq: publish replay of dead letter %d to %s: %w", dlSeq, subject, lastErr)
}

// replayHeader is the header of a replay: the original's headers, less the
// Nats- ones the server acts on (the original's Nats-Msg-Id would make the
// replay a duplicate, a Nats-Expected-... would refuse it) and any earlier
// Keyworker-Replay-Of, plus Keyworker-Replay-Of: dlSeq. With the headers
// unknown (an older dead letter) the original is taken for a structured-mode
// event, as keyworker always did.
func replayHeader(orig nats.Header, dlSeq uint64) nats.Header {
	h := nats.Header{}
	if orig == nil {
		h.Set(schemas.HeaderContentType, schemas.ContentType)
	}
	for k, v := range orig {
		if len(k) >= 5 && strings.EqualFold(k[:5], "nats-") || strings.EqualFold(k, schemas.HeaderReplayOf) {
			continue
		}
		h[k] = slices.Clone(v)
	}
	h.Set(schemas.HeaderReplayOf, strconv.FormatUint(dlSeq, 10))
	return h
}
