package consumer

import (
	"fmt"
)

// PanicError is the error of a dead letter written because handling the
// message panicked. A panic on the same input is deterministic, so the
// message is not retried.
type PanicError struct{ Value string }

func (e *PanicError) Error() string { return "consumer: handler panicked: " + e.Value }

// DeliveryLimitError is the error of a dead letter written, before any
// decoding, for a message delivered more often than Config.MaxDeliver.
type DeliveryLimitError struct{ Deliveries int }

func (e *DeliveryLimitError) Error() string {
	return fmt.Sprintf("consumer: delivered %d times without an outcome: giving up before decoding", e.Deliveries)
}

// leaseLostError means the pair lease could not be renewed between
// attempts: another replica may now call Seam for the pair, so this one
// must stop.
type leaseLostError struct{ err error }

func (e *leaseLostError) Error() string { return "consumer: pair lease lost: " + e.err.Error() }
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
