// Package dlq is the operators' side of keyworker's dead letters: it reads
// and filters the dead-letter stream, replays dead letters into the input
// stream (DESIGN section 6), deletes them, and sums up the state of the
// streams, the consumer and the idempotency bucket for `worker status`.
//
// Nothing here acks or changes an input message: replay publishes a new
// message with the exact original bytes and the header Keyworker-Replay-Of,
// and the worker decides, through its idempotency record, whether it may
// act on it. Replay never deletes a dead letter; only Purge does.
package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// Sentinel errors. Each is wrapped with detail; match with errors.Is.
var (
	// ErrNotFound: no dead letter at that sequence.
	ErrNotFound = errors.New("dlq: dead letter not found")
	// ErrStreamNotFound: the dead-letter (or input) stream does not exist,
	// usually because no worker has provisioned this NATS yet.
	ErrStreamNotFound = errors.New("dlq: stream not found")
	// ErrOriginalUnavailable: the dead letter does not carry its original
	// event and the input stream no longer holds it (or holds other bytes).
	ErrOriginalUnavailable = errors.New("dlq: original event unavailable")
	// ErrUndecodable: the dead-letter message is not a dead-letter document.
	ErrUndecodable = errors.New("dlq: dead letter does not decode")
	// ErrCompleted: the event's idempotency record says it completed; a
	// replay would be ignored by the worker, so it is skipped.
	ErrCompleted = errors.New("dlq: event already completed")
	// ErrReplayLimit: the event was replayed ReplayOptions.MaxReplays times
	// already (the loop guard); ReplayOptions.Force replays it anyway.
	ErrReplayLimit = errors.New("dlq: replay limit reached")
	// ErrDuplicateInRun: another dead letter of the same event was replayed
	// earlier in the same Replay call.
	ErrDuplicateInRun = errors.New("dlq: same event already replayed in this run")
)

// Queue reads, replays and deletes dead letters. It is safe for concurrent
// use, though Replay and Purge are meant to run one at a time.
type Queue struct {
	js  jetstream.JetStream
	cfg consumer.Config
}

// New returns a Queue on the NATS layout of cfg (stream, consumer and
// bucket names; zero fields take the worker's defaults). It does no I/O.
func New(js jetstream.JetStream, cfg consumer.Config) (*Queue, error) {
	if js == nil {
		return nil, errors.New("dlq: nil JetStream")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Queue{js: js, cfg: cfg}, nil
}

// Entry is one message of the dead-letter stream. When the message does not
// decode as a dead letter, Err matches ErrUndecodable and Envelope and
// DeadLetter are zero: it is still listed, so nothing hides from operators.
type Entry struct {
	Sequence   uint64    // in the dead-letter stream
	Time       time.Time // when the stream stored it
	Subject    string    // NATS subject, deadletter.guest.checked_in or ..._out
	Raw        []byte    // the message body as stored
	Envelope   schemas.Envelope
	DeadLetter schemas.DeadLetter
	Err        error
	// Traceparent and Tracestate are the dead letter's trace context
	// headers, if any: a replay carries them, so it joins the event's trace.
	Traceparent, Tracestate string
}

func newEntry(seq uint64, t time.Time, subject string, raw []byte) Entry {
	e := Entry{Sequence: seq, Time: t.UTC(), Subject: subject, Raw: raw}
	env, dl, err := schemas.DecodeDeadLetterEvent(raw)
	if err != nil {
		e.Err = fmt.Errorf("%w: sequence %d: %w", ErrUndecodable, seq, err)
		return e
	}
	e.Envelope, e.DeadLetter = env, dl
	return e
}

// Key is the idempotency key of the dead letter's source event, or "" when
// the original was undecodable (no source and id are known).
func (e Entry) Key() string {
	dl := e.DeadLetter
	if dl.SourceEventID == "" || dl.SourceEventSource == "" {
		return ""
	}
	return idempotency.Key(dl.SourceEventSource, dl.SourceEventID)
}

// Reservation is the reservation id of the source event when known: the
// dead letter's CloudEvents subject, else the original event's
// data.reservation_id.
func (e Entry) Reservation() string {
	if e.Envelope.Subject != "" {
		return e.Envelope.Subject
	}
	orig, err := e.DeadLetter.Original()
	if err != nil {
		return ""
	}
	var ev struct {
		Data struct {
			ReservationID string `json:"reservation_id"`
		} `json:"data"`
	}
	if json.Unmarshal(orig, &ev) != nil {
		return ""
	}
	return ev.Data.ReservationID
}

// Summary is an Entry without its payloads: what `dlq list` shows. It
// carries no credential data: codes quoted in messages are redacted.
type Summary struct {
	Sequence               uint64    `json:"sequence"`
	Time                   time.Time `json:"time"`
	OriginalSubject        string    `json:"original_subject"`
	ErrorKind              string    `json:"error_kind"`
	ErrorMessage           string    `json:"error_message"`
	HTTPStatus             int       `json:"http_status,omitempty"`
	SeamErrorType          string    `json:"seam_error_type,omitempty"`
	SeamRequestID          string    `json:"seam_request_id,omitempty"`
	Reservation            string    `json:"reservation,omitempty"`
	Attempts               int       `json:"attempts"`
	Deliveries             int       `json:"deliveries"`
	SourceEventID          string    `json:"source_event_id,omitempty"`
	SourceEventSource      string    `json:"source_event_source,omitempty"`
	OriginalStreamSequence uint64    `json:"original_stream_sequence,omitempty"`
	OriginalEncoding       string    `json:"original_event_encoding,omitempty"`
	ReplayOf               uint64    `json:"replay_of,omitempty"`
	DecodeError            string    `json:"decode_error,omitempty"`
}

// Summary returns the listing view of e.
func (e Entry) Summary() Summary {
	dl := e.DeadLetter
	s := Summary{
		Sequence:               e.Sequence,
		Time:                   e.Time,
		OriginalSubject:        dl.OriginalSubject,
		ErrorKind:              dl.Error.Kind,
		ErrorMessage:           seamclient.RedactCodes(dl.Error.Message),
		HTTPStatus:             dl.Error.HTTPStatus,
		SeamErrorType:          dl.Error.SeamErrorType,
		SeamRequestID:          dl.Error.SeamRequestID,
		Reservation:            e.Reservation(),
		Attempts:               dl.Attempts,
		Deliveries:             dl.Deliveries,
		SourceEventID:          dl.SourceEventID,
		SourceEventSource:      dl.SourceEventSource,
		OriginalStreamSequence: dl.OriginalStreamSequence,
		OriginalEncoding:       dl.OriginalEventEncoding,
		ReplayOf:               dl.ReplayOf,
	}
	if e.Err != nil {
		s.DecodeError = seamclient.RedactCodes(e.Err.Error())
		s.OriginalSubject = strings.TrimPrefix(e.Subject, schemas.DeadLetterPrefix)
	}
	return s
}

// stream looks a stream up, mapping "not found" to ErrStreamNotFound.
func (q *Queue) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := q.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w: %s (has a worker run against this NATS?)", ErrStreamNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: stream %s: %w", name, err)
	}
	return s, nil
}
