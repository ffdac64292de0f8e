package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// CredentialKey returns the state key of a credential: "c." and its id in
// lower case (Seam compares uuids without regard to case, so must the
// worker). An id holding anything outside [a-z0-9-_] (or an empty one) is
// replaced by "=" and its hex SHA-256, so the key stays valid and, since raw
// ids never contain "=", cannot collide with another id.
func CredentialKey(credentialID string) string {
	return "c." + keyToken(strings.ToLower(credentialID))
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

// CredentialLease is a held lease on a credential. State and Revision are
// the state as last written by this lease. A CredentialLease is not safe for
// concurrent use.
type CredentialLease struct {
	Key      string
	Owner    string
	EventKey string
	State    CredentialState
	Revision uint64
}

// Credentials guards the credentials' ordering state: at most one live
// lease per credential across all replicas, so one Seam call per credential
// is in flight. It is safe for concurrent use; every write is a
// compare-and-swap on the key's revision.
type Credentials struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewCredentials returns a Credentials on kv, a bucket made with StateBucketConfig.
func NewCredentials(kv jetstream.KeyValue, opts ...Option) *Credentials {
	o := newOptions(opts)
	return &Credentials{kv: kv, now: o.now}
}

// Acquire leases the credential to owner for the event with key eventKey
// until now+lease. It returns a *BusyError (ErrBusy) while a live lease is
// held for another owner or another event, or when other writers kept
// winning the compare-and-swap (then with a zero LeaseUntil).
//
// A lease that expired unreleased means its owner died or hung, perhaps
// after Seam applied a change: the state it hands over says HolderUnknown,
// as does the state of a credential seen for the first time.
//
// With blind set, Acquire first tries to create the key without reading it,
// which saves a round trip for a credential seen for the first time.
func (c *Credentials) Acquire(ctx context.Context, credentialID, owner, eventKey string, lease time.Duration, blind bool) (*CredentialLease, error) {
	key := CredentialKey(credentialID)
	if lease <= 0 {
		return nil, fmt.Errorf("idempotency: acquire %s: lease must be positive, got %s", key, lease)
	}
	l := &CredentialLease{Key: key, Owner: owner, EventKey: eventKey}
	if blind {
		next := CredentialState{HolderUnknown: true, LeaseOwner: owner, LeaseUntil: c.now().Add(lease), LeaseEventKey: eventKey}
		rev, err := c.write(ctx, key, next, 0)
		if err == nil {
			l.State, l.Revision = next, rev
			return l, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", key, err)
		}
	}
	var (
		lastErr error
		st      CredentialState
	)
	for range maxCASAttempts {
		var (
			rev uint64
			err error
		)
		st, rev, err = c.Get(ctx, credentialID)
		switch {
		case errors.Is(err, ErrNotFound):
			// Seam may have a holder the worker never saw: one set before
			// this state existed, or by hand.
			st.HolderUnknown = true
		case err != nil:
			return nil, fmt.Errorf("idempotency: acquire: %w", err)
		}
		now := c.now()
		if st.LeaseOwner != "" {
			if now.Before(st.LeaseUntil) && (st.LeaseOwner != owner || st.LeaseEventKey != eventKey) {
				return nil, &BusyError{Key: key, LeaseOwner: st.LeaseOwner, LeaseUntil: st.LeaseUntil}
			}
			st.HolderUnknown = true
		}
		next := st
		next.LeaseOwner, next.LeaseUntil, next.LeaseEventKey = owner, now.Add(lease), eventKey
		newRev, err := c.write(ctx, key, next, rev)
		if err == nil {
			l.State, l.Revision = next, newRev
			return l, nil
		}
		if !isCASConflict(err) {
			return nil, fmt.Errorf("idempotency: acquire %s: %w", key, err)
		}
		lastErr = err
	}
	// Others kept writing the key, which means they are acquiring it.
	return nil, &BusyError{Key: key, err: lastErr}
}

// Renew extends the lease to now+lease. It returns ErrLostLease when the
// state changed since the lease was taken.
func (c *Credentials) Renew(ctx context.Context, l *CredentialLease, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("idempotency: renew %s: lease must be positive, got %s", l.Key, lease)
	}
	next := l.State
	next.LeaseUntil = c.now().Add(lease)
	return c.swap(ctx, l, next, "renew")
}

// Commit stores next as the credential's state and clears the lease. It
// returns ErrLostLease when the state changed since the lease was taken.
func (c *Credentials) Commit(ctx context.Context, l *CredentialLease, next CredentialState) error {
	clearLease(&next)
	return c.swap(ctx, l, next, "commit")
}

// Release clears the lease without a change of the rule's inputs. With
// unknown set (a change was sent to Seam and its outcome is not known) the
// next holder of the lease reads the holder from Seam first. A lease
// already lost is not an error: the credential belongs to someone else then.
func (c *Credentials) Release(ctx context.Context, l *CredentialLease, unknown bool) error {
	next := l.State
	next.HolderUnknown = next.HolderUnknown || unknown
	clearLease(&next)
	err := c.swap(ctx, l, next, "release")
	if errors.Is(err, ErrLostLease) {
		return nil
	}
	return err
}

// Get returns the state of a credential and its revision, or an error
// matching ErrNotFound (with the zero state) when it has none.
func (c *Credentials) Get(ctx context.Context, credentialID string) (CredentialState, uint64, error) {
	return getJSON[CredentialState](ctx, c.kv, CredentialKey(credentialID), "credential state")
}

func clearLease(s *CredentialState) {
	s.LeaseOwner = ""
	s.LeaseUntil = time.Time{}
	s.LeaseEventKey = ""
}

func (c *Credentials) write(ctx context.Context, key string, st CredentialState, rev uint64) (uint64, error) {
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return c.kv.Create(ctx, key, data)
	}
	return c.kv.Update(ctx, key, data, rev)
}

// swap writes next over the lease's revision and, on success, makes it the
// lease's state.
func (c *Credentials) swap(ctx context.Context, l *CredentialLease, next CredentialState, op string) error {
	rev, err := c.write(ctx, l.Key, next, l.Revision)
	if isCASConflict(err) {
		return fmt.Errorf("%w: %s %s: %w", ErrLostLease, op, l.Key, err)
	}
	if err != nil {
		return fmt.Errorf("idempotency: %s %s: %w", op, l.Key, err)
	}
	l.State = next
	l.Revision = rev
	return nil
}
