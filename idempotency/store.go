// Package idempotency keeps keyworker's shared state in NATS KV: one
// idempotency record per input event (Store), so each event reaches Seam and
// publishes its outcome once across all replicas, and the ordering state per
// credential (Credentials, CredentialState), so at most one Seam call per
// credential is in flight and the ordering rule decides every event the
// same whatever the order they arrive in.
package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Status is the state of an idempotency record.
type Status string

const (
	// StatusInProgress means an owner holds the claim until LeaseUntil.
	StatusInProgress Status = "in_progress"
	// StatusPending means the claim was released for a later delivery.
	StatusPending Status = "pending"
	// StatusCompleted means the outcome was published; the event is done.
	StatusCompleted Status = "completed"
	// StatusDeadLettered means the event was dead-lettered; only a replay
	// may claim it again.
	StatusDeadLettered Status = "dead_lettered"
)

// Key returns the KV key of the event with the given CloudEvents source and
// id: a hex SHA-256, since KV keys allow only [A-Za-z0-9-_=.] and the pair
// (source, id) is what identifies a CloudEvent. The NUL separator keeps
// ("a", "bc") and ("ab", "c") apart.
func Key(source, id string) string {
	sum := sha256.Sum256([]byte(source + "\x00" + id))
	return hex.EncodeToString(sum[:])
}

// Record is the stored state of one input event.
type Record struct {
	Status     Status    `json:"status"`
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// ClaimedAt is when Owner took the claim: with LeaseUntil it bounds
	// when an owner that died could have published an outcome.
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
	// Undecided counts the deliveries that took the claim and ended without
	// a decision: their owner died or hung, and the claim was taken over.
	Undecided int `json:"undecided,omitempty"`
	// PublishTried says an owner published (or tried to) an outcome that
	// was not recorded; ScanFrom is when the first such owner took the
	// claim. A delivery taking over looks for the outcome from there.
	PublishTried   bool      `json:"publish_tried,omitempty"`
	ScanFrom       time.Time `json:"scan_from,omitzero"`
	Attempts       int       `json:"attempts"`
	FirstAttemptAt time.Time `json:"first_attempt_at,omitzero"`
	LastAttemptAt  time.Time `json:"last_attempt_at,omitzero"`
	// Outcome is the subject of the published outcome event.
	Outcome    string `json:"outcome,omitempty"`
	OutcomeSeq uint64 `json:"outcome_seq,omitempty"`
	// OutcomeID and OutcomeDoc are the Nats-Msg-Id and document of the
	// outcome, written by Decide before it is published, so a delivery
	// after a crash publishes the same outcome again instead of deciding anew.
	OutcomeID  string `json:"outcome_id,omitempty"`
	OutcomeDoc []byte `json:"outcome_doc,omitempty"`
	// Replays counts dead-letter replays, to stop replay loops.
	Replays   int       `json:"replays,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Claim is a held claim on a key. Record and Revision are the state as last
// written by this claim: at claim time Attempts and the attempt times carry
// over from earlier deliveries. Release, Renew and Complete update both.
// A Claim is not safe for concurrent use.
type Claim struct {
	Key      string
	Record   Record
	Revision uint64
	// Previous is the record the claim took over (zero when it created
	// one). StatusInProgress there means its owner died or hung holding it.
	Previous Record
}

// Store claims and completes idempotency records. It is safe for concurrent
// use; every write is a compare-and-swap on the key's revision, so replicas
// sharing the bucket never both hold a claim.
type Store struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewStore returns a Store on kv, a bucket made with BucketConfig.
func NewStore(kv jetstream.KeyValue, opts ...Option) *Store {
	o := newOptions(opts)
	return &Store{kv: kv, now: o.now}
}

// Claim takes the key for owner until now+lease. It creates the record when
// there is none and takes it over when it is pending, in progress with an
// expired lease or by the same owner, or dead-lettered and
// allowAfterDeadLetter is set (a replay). Otherwise it returns a
// *ConflictError matching ErrDone (completed, or dead-lettered without
// allowAfterDeadLetter) or ErrAlreadyClaimed (a live lease of another owner).
func (s *Store) Claim(ctx context.Context, key, owner string, lease time.Duration, allowAfterDeadLetter bool) (*Claim, error) {
	if lease <= 0 {
		return nil, fmt.Errorf("idempotency: claim %s: lease must be positive, got %s", key, lease)
	}
	var lastErr error
	for range maxCASAttempts {
		now := s.now()
		rec := Record{Status: StatusInProgress, Owner: owner, LeaseUntil: now.Add(lease), ClaimedAt: now, ScanFrom: now, UpdatedAt: now}
		data, err := json.Marshal(rec)
		if err != nil {
			return nil, fmt.Errorf("idempotency: claim %s: %w", key, err)
		}
		rev, err := s.kv.Create(ctx, key, data)
		if err == nil {
			return &Claim{Key: key, Record: rec, Revision: rev}, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: claim %s: %w", key, err)
		}
		lastErr = err

		cur, curRev, err := s.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // deleted between Create and Get: create again
		}
		if err != nil {
			return nil, fmt.Errorf("idempotency: claim %s: %w", key, err)
		}
		switch cur.Status {
		case StatusCompleted:
			return nil, &ConflictError{Record: cur, Revision: curRev, err: ErrDone}
		case StatusDeadLettered:
			if !allowAfterDeadLetter {
				return nil, &ConflictError{Record: cur, Revision: curRev, err: ErrDone}
			}
		case StatusPending:
		case StatusInProgress:
			if cur.Owner != owner && now.Before(cur.LeaseUntil) {
				return nil, &ConflictError{Record: cur, Revision: curRev, err: ErrAlreadyClaimed}
			}
		default:
			return nil, fmt.Errorf("idempotency: claim %s: unknown status %q", key, cur.Status)
		}

		// Take over: attempts, attempt times and replays carry over; the
		// outcome of a dead-lettered run no longer describes this one.
		rec = cur
		switch {
		case cur.Status == StatusInProgress || cur.PublishTried:
			// The earlier owner may have published: keep looking from the
			// first one that may have.
		default:
			rec.ScanFrom = now
		}
		switch {
		case cur.Status == StatusInProgress && cur.Owner != owner:
			rec.Undecided++ // its owner died or hung holding it
		case cur.Status == StatusDeadLettered:
			// A replay starts afresh: its own RetryFor and delivery limit.
			rec.Undecided = 0
			rec.FirstAttemptAt, rec.LastAttemptAt = time.Time{}, time.Time{}
		}
		rec.Status = StatusInProgress
		rec.Owner = owner
		rec.LeaseUntil = now.Add(lease)
		rec.ClaimedAt = now
		rec.Outcome = ""
		rec.OutcomeSeq = 0
		rec.OutcomeID = ""
		rec.OutcomeDoc = nil
		rec.UpdatedAt = now
		rev, err = s.update(ctx, key, rec, curRev)
		if err == nil {
			return &Claim{Key: key, Record: rec, Revision: rev, Previous: cur}, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: claim %s: %w", key, err)
		}
		lastErr = err
	}
	return nil, fmt.Errorf("idempotency: claim %s: gave up after %d conflicting writes: %w", key, maxCASAttempts, lastErr)
}

// Release hands the claim back for a later delivery: status pending, lease
// cleared, attempts and attempt times stored for the next claim. It returns
// ErrLostClaim when the record changed since the claim was taken.
func (s *Store) Release(ctx context.Context, c *Claim, attempts int, first, last time.Time) error {
	rec := c.Record
	rec.Status = StatusPending
	rec.Owner = ""
	rec.LeaseUntil = time.Time{}
	rec.Attempts = attempts
	rec.FirstAttemptAt = first
	rec.LastAttemptAt = last
	rec.UpdatedAt = s.now()
	return s.swap(ctx, c, rec, "release")
}

// Renew extends the claim's lease to now+lease, for long retry loops. It
// returns ErrLostClaim when the record changed since the claim was taken.
func (s *Store) Renew(ctx context.Context, c *Claim, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("idempotency: renew %s: lease must be positive, got %s", c.Key, lease)
	}
	now := s.now()
	rec := c.Record
	rec.LeaseUntil = now.Add(lease)
	rec.UpdatedAt = now
	return s.swap(ctx, c, rec, "renew")
}

// Complete records the end of the event: status StatusCompleted or
// StatusDeadLettered, the subject and stream sequence of the published
// outcome event, and the attempts made. It returns ErrLostClaim when the
// record changed since the claim was taken; the outcome is published by then,
// and its Nats-Msg-Id keeps the other owner's re-publish from doubling it.
func (s *Store) Complete(ctx context.Context, c *Claim, status Status, outcomeSubject string, outcomeSeq uint64, attempts int) error {
	if status != StatusCompleted && status != StatusDeadLettered {
		return fmt.Errorf("idempotency: complete %s: status %q is not final", c.Key, status)
	}
	rec := c.Record
	rec.Status = status
	rec.Owner = ""
	rec.LeaseUntil = time.Time{}
	rec.Outcome = outcomeSubject
	rec.OutcomeSeq = outcomeSeq
	rec.Attempts = attempts
	rec.UpdatedAt = s.now()
	return s.swap(ctx, c, rec, "complete")
}

// Decide records the end of the event before its outcome is published:
// the final status, the outcome's subject, Nats-Msg-Id and document (doc
// may be nil when too large to keep). Complete adds the stream sequence
// once it is published. It returns ErrLostClaim when the record changed
// since the claim was taken.
func (s *Store) Decide(ctx context.Context, c *Claim, status Status, outcomeSubject, outcomeID string, doc []byte, attempts int) error {
	if status != StatusCompleted && status != StatusDeadLettered {
		return fmt.Errorf("idempotency: decide %s: status %q is not final", c.Key, status)
	}
	rec := c.Record
	rec.Status = status
	rec.Owner = ""
	rec.LeaseUntil = time.Time{}
	rec.Outcome = outcomeSubject
	rec.OutcomeSeq = 0
	rec.OutcomeID = outcomeID
	rec.OutcomeDoc = doc
	rec.Attempts = attempts
	rec.UpdatedAt = s.now()
	return s.swap(ctx, c, rec, "decide")
}

// Get returns the record of key and its revision, or an error matching
// ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (Record, uint64, error) {
	return getJSON[Record](ctx, s.kv, key, "record")
}

// AddReplay counts one more dead-letter replay of key and returns the
// updated record, so the replay command can refuse an event replayed too
// often. When the key has no record (it expired) it creates a dead-lettered
// one with Replays 1, which a replayed delivery may claim.
func (s *Store) AddReplay(ctx context.Context, key string) (Record, error) {
	var lastErr error
	for range maxCASAttempts {
		cur, rev, err := s.Get(ctx, key)
		switch {
		case errors.Is(err, ErrNotFound):
			rec := Record{Status: StatusDeadLettered, Replays: 1, UpdatedAt: s.now()}
			data, err := json.Marshal(rec)
			if err != nil {
				return Record{}, fmt.Errorf("idempotency: add replay %s: %w", key, err)
			}
			_, err = s.kv.Create(ctx, key, data)
			if err == nil {
				return rec, nil
			}
			if !isCASConflict(err) {
				return Record{}, fmt.Errorf("idempotency: add replay %s: %w", key, err)
			}
			lastErr = err
		case err != nil:
			return Record{}, fmt.Errorf("idempotency: add replay: %w", err)
		default:
			cur.Replays++
			cur.UpdatedAt = s.now()
			_, err := s.update(ctx, key, cur, rev)
			if err == nil {
				return cur, nil
			}
			if !isCASConflict(err) {
				return Record{}, fmt.Errorf("idempotency: add replay %s: %w", key, err)
			}
			lastErr = err
		}
	}
	return Record{}, fmt.Errorf("idempotency: add replay %s: gave up after %d conflicting writes: %w", key, maxCASAttempts, lastErr)
}

// Count returns the number of records. With one value per key (History 1,
// as BucketConfig makes) it is the bucket's message count, read in one call;
// otherwise it lists the keys.
func (s *Store) Count(ctx context.Context) (int, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("idempotency: count: %w", err)
	}
	if st.History() == 1 {
		// Keys are never deleted here and TTL expiry removes messages
		// without markers, so each message is one live key.
		return int(st.Values()), nil
	}
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("idempotency: count: %w", err)
	}
	seen := make(map[string]struct{})
	for k := range lister.Keys() {
		seen[k] = struct{}{}
	}
	// The lister closes its channel early when ctx ends: not a full count.
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("idempotency: count: %w", err)
	}
	return len(seen), nil
}

// swap writes rec over the claim's revision and, on success, makes it the
// claim's state.
func (s *Store) swap(ctx context.Context, c *Claim, rec Record, op string) error {
	rev, err := s.update(ctx, c.Key, rec, c.Revision)
	if isCASConflict(err) {
		return fmt.Errorf("%w: %s %s: %w", ErrLostClaim, op, c.Key, err)
	}
	if err != nil {
		return fmt.Errorf("idempotency: %s %s: %w", op, c.Key, err)
	}
	c.Record = rec
	c.Revision = rev
	return nil
}

func (s *Store) update(ctx context.Context, key string, rec Record, rev uint64) (uint64, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	return s.kv.Update(ctx, key, data, rev)
}
