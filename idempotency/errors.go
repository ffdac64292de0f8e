package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrAlreadyClaimed means another owner holds a live claim on the key.
	ErrAlreadyClaimed = errors.New("idempotency: already claimed")
	// ErrDone means the event was already handled: completed, or dead-lettered
	// and not being replayed.
	ErrDone = errors.New("idempotency: already done")
	// ErrLostClaim means the record changed since the claim was taken:
	// another owner took it over after the lease expired.
	ErrLostClaim = errors.New("idempotency: claim lost")
	// ErrNotFound means the key has no record.
	ErrNotFound = errors.New("idempotency: not found")

	// ErrBusy means another owner holds a live lease on the credential.
	ErrBusy = errors.New("idempotency: credential busy")
	// ErrLostLease means the credential state changed since the lease was taken.
	ErrLostLease = errors.New("idempotency: lease lost")
)

// maxCASAttempts bounds the read-decide-write loops. Each lost race means
// someone else wrote, and the next read usually settles the decision.
const maxCASAttempts = 5

// ConflictError is returned by Store.Claim when the key cannot be claimed. It
// matches ErrDone or ErrAlreadyClaimed with errors.Is and carries the record
// that was found, so the caller can re-publish the stored outcome or pick a
// delay from LeaseUntil.
type ConflictError struct {
	Record   Record
	Revision uint64
	err      error
}

func (e *ConflictError) Error() string {
	if e.Record.Status == StatusInProgress {
		return fmt.Sprintf("%v: owner %q, lease until %s", e.err, e.Record.Owner, e.Record.LeaseUntil.Format(time.RFC3339Nano))
	}
	return fmt.Sprintf("%v: status %s", e.err, e.Record.Status)
}

// Is reports whether target is the sentinel this conflict stands for.
func (e *ConflictError) Is(target error) bool { return target == e.err }

// Unwrap returns the sentinel (ErrDone or ErrAlreadyClaimed).
func (e *ConflictError) Unwrap() error { return e.err }

// BusyError is returned by Credentials.Acquire while another owner holds a
// live lease on the credential, or when other writers kept winning the race
// for it; it matches ErrBusy. LeaseUntil tells the caller how long to wait
// before the next delivery (zero after a lost race: soon).
type BusyError struct {
	Key        string
	LeaseOwner string
	LeaseUntil time.Time
	// err is the last compare-and-swap conflict after a lost race.
	err error
}

func (e *BusyError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("%v: %s: lost %d races to other writers: %v", ErrBusy, e.Key, maxCASAttempts, e.err)
	}
	return fmt.Sprintf("%v: %s leased by %q until %s", ErrBusy, e.Key, e.LeaseOwner, e.LeaseUntil.Format(time.RFC3339Nano))
}

// Is reports whether target is ErrBusy.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// Unwrap returns the last conflict of a lost race, if any.
func (e *BusyError) Unwrap() error { return e.err }

// isCASConflict reports whether a Create or Update lost a compare-and-swap:
// the key exists (Create) or its revision moved (Update). Replicated streams
// report the conflict with a different API code, so both are checked.
func isCASConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// getJSON reads key and decodes its JSON value, with its revision; a
// missing key is an error matching ErrNotFound (with the zero value).
func getJSON[T any](ctx context.Context, kv jetstream.KeyValue, key, what string) (T, uint64, error) {
	var v T
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, 0, fmt.Errorf("%w: %s: %w", ErrNotFound, key, err)
	}
	if err != nil {
		return v, 0, fmt.Errorf("idempotency: get %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return v, 0, fmt.Errorf("idempotency: decode %s %s: %w", what, key, err)
	}
	return v, e.Revision(), nil
}
