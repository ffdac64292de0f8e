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

// PairKey returns the state key of a (credential, user) pair:
// "c.<credential>.u.<acs user>" or, when acsUserID is empty,
// "c.<credential>.i.<user identity>". Ids are validated upstream, but an id
// holding anything outside [A-Za-z0-9-_] (or an empty one) is replaced by
// "=" and its hex SHA-256, so the key stays valid and, since raw ids never
// contain "=", cannot collide with another id.
func PairKey(credentialID, acsUserID, userIdentityID string) string {
	if acsUserID != "" {
		return "c." + keyToken(credentialID) + ".u." + keyToken(acsUserID)
	}
	return "c." + keyToken(credentialID) + ".i." + keyToken(userIdentityID)
}

func keyToken(id string) string {
	if id != "" && isPlainToken(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "=" + hex.EncodeToString(sum[:])
}

func isPlainToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// PairState is the stored ordering state of one pair: the newest applied
// event and the lease of the owner currently calling Seam for the pair.
type PairState struct {
	NewestTime     time.Time `json:"newest_time"`
	NewestEventKey string    `json:"newest_event_key,omitempty"`
	NewestPriority int       `json:"newest_priority"`
	NewestType     string    `json:"newest_type,omitempty"`
	// Assigned is true when the newest applied event was a check-in.
	Assigned      bool      `json:"assigned"`
	LeaseOwner    string    `json:"lease_owner,omitempty"`
	LeaseUntil    time.Time `json:"lease_until,omitzero"`
	LeaseEventKey string    `json:"lease_event_key,omitempty"`
}

// applied reports whether any event was applied to the pair yet.
func (s PairState) applied() bool {
	return s.NewestEventKey != "" || !s.NewestTime.IsZero()
}

// PairEvent is the event that wants to act on a pair.
type PairEvent struct {
	// Key is the event's idempotency key (see Key).
	Key  string
	Time time.Time
	// Priority breaks ties between events with the same time: the higher
	// wins, so a check-out (1) beats a check-in (0) and a guest who checked
	// out never ends with the key assigned.
	Priority int
	Type     string
	// Assign is true for a check-in.
	Assign bool
}

// PairLease is a held lease on a pair. State and Revision are the state as
// last written by this lease. A PairLease is not safe for concurrent use.
type PairLease struct {
	PairKey  string
	Event    PairEvent
	Owner    string
	State    PairState
	Revision uint64
}

// Ordering guards the pairs: at most one live lease per pair across all
// replicas, and no event older than the newest applied one. It is safe for
// concurrent use; every write is a compare-and-swap on the pair's revision.
type Ordering struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewOrdering returns an Ordering on kv, a bucket made with StateBucketConfig.
func NewOrdering(kv jetstream.KeyValue, opts ...Option) *Ordering {
	o := newOptions(opts)
	return &Ordering{kv: kv, now: o.now}
}

// Acquire leases the pair to owner for ev until now+lease. It returns a
// *BusyError (ErrPairBusy) while a live lease is held for another owner or
// for another event, and a *StaleError (ErrStale) when ev is older than the
// newest applied event, or has the same time, another key and no higher
// priority. The newest applied event itself is not stale: its outcome may
// not have been published before a crash, so it may run again.
//
// When other writers keep winning the compare-and-swap, it returns a
// *BusyError as well, with a zero LeaseUntil.
//
// A live lease of the same owner for a different event counts as busy too:
// one replica may handle several messages at once, and those must not call
// Seam for the same pair in parallel either.
func (o *Ordering) Acquire(ctx context.Context, pairKey, owner string, ev PairEvent, lease time.Duration) (*PairLease, error) {
	if lease <= 0 {
		return nil, fmt.Errorf("idempotency: acquire %s: lease must be positive, got %s", pairKey, lease)
	}
	var (
		lastErr error
		st      PairState
	)
	if ev.Assign {
		// A check-in usually finds its pair new: write the lease blind,
		// saving the read; Update at revision 0 fails if the key exists.
		now := o.now()
		next := PairState{LeaseOwner: owner, LeaseUntil: now.Add(lease), LeaseEventKey: ev.Key}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", pairKey, err)
		}
		rev, err := o.kv.Update(ctx, pairKey, data, 0)
		if err == nil {
			return &PairLease{PairKey: pairKey, Event: ev, Owner: owner, State: next, Revision: rev}, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", pairKey, err)
		}
	}
	for range maxCASAttempts {
		var (
			rev uint64
			err error
		)
		st, rev, err = o.Get(ctx, pairKey)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("idempotency: acquire: %w", err)
		}
		// Stale before busy: the newest applied event only moves forward,
		// so a stale event stays stale and need not wait for the lease.
		if isStale(st, ev) {
			return nil, &StaleError{PairKey: pairKey, Event: ev, State: st}
		}
		now := o.now()
		if st.LeaseOwner != "" && now.Before(st.LeaseUntil) &&
			(st.LeaseOwner != owner || st.LeaseEventKey != ev.Key) {
			return nil, &BusyError{PairKey: pairKey, LeaseOwner: st.LeaseOwner, LeaseUntil: st.LeaseUntil, State: st}
		}

		next := st
		next.LeaseOwner = owner
		next.LeaseUntil = now.Add(lease)
		next.LeaseEventKey = ev.Key
		data, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", pairKey, err)
		}
		var newRev uint64
		if rev == 0 {
			newRev, err = o.kv.Create(ctx, pairKey, data)
		} else {
			newRev, err = o.kv.Update(ctx, pairKey, data, rev)
		}
		if err == nil {
			return &PairLease{PairKey: pairKey, Event: ev, Owner: owner, State: next, Revision: newRev}, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", pairKey, err)
		}
		lastErr = err
	}
	// Others kept writing the pair, which means they are acquiring it.
	return nil, &BusyError{PairKey: pairKey, State: st, err: lastErr}
}

func isStale(st PairState, ev PairEvent) bool {
	if !st.applied() || ev.Key == st.NewestEventKey {
		return false
	}
	if ev.Time.Before(st.NewestTime) {
		return true
	}
	return ev.Time.Equal(st.NewestTime) && ev.Priority <= st.NewestPriority
}

// Renew extends the lease to now+lease. It returns ErrLostLease when the
// pair state changed since the lease was taken.
func (o *Ordering) Renew(ctx context.Context, l *PairLease, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("idempotency: renew %s: lease must be positive, got %s", l.PairKey, lease)
	}
	next := l.State
	next.LeaseUntil = o.now().Add(lease)
	return o.swap(ctx, l, next, "renew")
}

// Applied records l.Event as the newest applied event of the pair and clears
// the lease. It returns ErrLostLease when the pair state changed since the
// lease was taken.
func (o *Ordering) Applied(ctx context.Context, l *PairLease) error {
	next := l.State
	next.NewestTime = l.Event.Time
	next.NewestEventKey = l.Event.Key
	next.NewestPriority = l.Event.Priority
	next.NewestType = l.Event.Type
	next.Assigned = l.Event.Assign
	clearLease(&next)
	return o.swap(ctx, l, next, "applied")
}

// Release clears the lease without applying the event, when the Seam call
// did not happen or failed. A lease already lost is not an error: the pair
// belongs to someone else then.
func (o *Ordering) Release(ctx context.Context, l *PairLease) error {
	next := l.State
	clearLease(&next)
	err := o.swap(ctx, l, next, "release")
	if errors.Is(err, ErrLostLease) {
		return nil
	}
	return err
}

// Get returns the state of the pair and its revision, or an error matching
// ErrNotFound (with the zero state) when the pair has none.
func (o *Ordering) Get(ctx context.Context, pairKey string) (PairState, uint64, error) {
	e, err := o.kv.Get(ctx, pairKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return PairState{}, 0, fmt.Errorf("%w: %s: %w", ErrNotFound, pairKey, err)
	}
	if err != nil {
		return PairState{}, 0, fmt.Errorf("idempotency: get %s: %w", pairKey, err)
	}
	var st PairState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return PairState{}, 0, fmt.Errorf("idempotency: decode pair state %s: %w", pairKey, err)
	}
	return st, e.Revision(), nil
}

func clearLease(s *PairState) {
	s.LeaseOwner = ""
	s.LeaseUntil = time.Time{}
	s.LeaseEventKey = ""
}

// swap writes next over the lease's revision and, on success, makes it the
// lease's state.
func (o *Ordering) swap(ctx context.Context, l *PairLease, next PairState, op string) error {
	data, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("idempotency: %s %s: %w", op, l.PairKey, err)
	}
	rev, err := o.kv.Update(ctx, l.PairKey, data, l.Revision)
	if isCASConflict(err) {
		return fmt.Errorf("%w: %s %s: %w", ErrLostLease, op, l.PairKey, err)
	}
	if err != nil {
		return fmt.Errorf("idempotency: %s %s: %w", op, l.PairKey, err)
	}
	l.State = next
	l.Revision = rev
	return nil
}
