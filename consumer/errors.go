package consumer

import (
	"fmt"
	"time"
)

// PanicError is the error of a dead letter written because handling the
// message panicked. A panic on the same input is deterministic, so the
// message is not retried.
type PanicError struct{ Value string }

func (e *PanicError) Error() string { return "consumer: handler panicked: " + e.Value }

// DeliveryLimitError is the error of a dead letter written for an event
// whose deliveries ended Config.MaxDeliver times without a decision: the
// worker handling it crashed, hung or was killed each time (a poison
// message). Seam failures, busy credentials and hand-backs never count.
type DeliveryLimitError struct{ Undecided int }

func (e *DeliveryLimitError) Error() string {
	return fmt.Sprintf("consumer: %d deliveries ended without a decision (the worker handling it crashed, hung or was killed): giving up", e.Undecided)
}

// leaseLostError means the credential lease or the claim could not be
// renewed: another replica may now call Seam for the credential, so this
// one must stop.
type leaseLostError struct{ err error }

func (e *leaseLostError) Error() string { return "consumer: lease lost: " + e.err.Error() }
func (e *leaseLostError) Unwrap() error { return e.err }

// unconfirmedError is a failed request whose effect could not be checked:
// the read of the credential failed too. It is retried, never dead-lettered
// as permanent, because an earlier unanswered request may have applied the
// change. It unwraps to the request's error.
type unconfirmedError struct{ cause, read error }

func (e *unconfirmedError) Error() string {
	return e.cause.Error() + " (and the credential could not be read to check: " + e.read.Error() + ")"
}
func (e *unconfirmedError) Unwrap() error { return e.cause }

// stopError ends busyWait at once with err.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

func backoffStop(err error) error { return &stopError{err: err} }

// busyError is what busyWait returns once its budget is spent while a claim
// or a credential lease is held by another delivery until until.
type busyError struct {
	until time.Time
	err   error
}

func (e *busyError) Error() string { return e.err.Error() }
func (e *busyError) Unwrap() error { return e.err }

// retryForError ends an event whose Seam calls kept failing transiently
// for longer than Config.RetryFor since its first attempt.
type retryForError struct {
	since time.Time
	last  error
}

func (e *retryForError) Error() string {
	msg := "consumer: Seam calls kept failing since " + e.since.UTC().Format(time.RFC3339) + ": giving up (KEYWORKER_RETRY_FOR)"
	if e.last != nil {
		msg += ": last error: " + e.last.Error()
	}
	return msg
}
func (e *retryForError) Unwrap() error { return e.last }
