package consumer

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Kind is what became of one delivery of an event.
type Kind int

const (
	// Done: an outcome event (result or skip) was published and recorded.
	Done Kind = iota + 1
	// Duplicate: the event already has its outcome; nothing was published.
	Duplicate
	// Retry: hand the message back to JetStream to be delivered again after Delay.
	Retry
	// DeadLettered: a dead letter was published and recorded.
	DeadLettered
)

func (k Kind) String() string {
	switch k {
	case Done:
		return "done"
	case Duplicate:
		return "duplicate"
	case Retry:
		return "retry"
	case DeadLettered:
		return "dead_lettered"
	}
	return "unknown"
}

// Outcome is the decision Handle makes for one delivery. Handle never acks:
// settle turns an Outcome into Ack, NakWithDelay or Term, always after the
// outcome event was published.
type Outcome struct {
	Kind  Kind
	Delay time.Duration // Retry only
	// Subject of the outcome event published (Done, DeadLettered).
	Subject string
	// Err says why, for Retry and DeadLettered.
	Err error
	// WorkspaceID is the Seam workspace the event was routed to, when it was.
	WorkspaceID string
	workspace   string // its metrics label, "none" when not routed
}

// settle acknowledges msg according to out. Dead letters are terminated
// rather than acked so the server emits a MSG_TERMINATED advisory operators
// can watch.
func settle(msg jetstream.Msg, out Outcome) error {
	switch out.Kind {
	case Done, Duplicate:
		return msg.Ack()
	case DeadLettered:
		return msg.TermWithReason("keyworker: dead-lettered")
	default:
		return msg.NakWithDelay(out.Delay)
	}
}
