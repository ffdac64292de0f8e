package consumer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// job is what the pipeline knows about one delivery so far. Each step fills
// in its part; a dead letter carries whatever is known when it is written.
type job struct {
	slots    slots // nil when handled outside Run
	parked   bool  // slot given back while waiting
	msg      jetstream.Msg
	owner    string // this delivery's name in claims and leases
	meta     *jetstream.MsgMetadata
	raw      []byte
	replayOf uint64
	span     trace.Span // the delivery's process span; nil when not traced

	event *schemas.GuestEvent // ids in canonical (lower) case
	key   string              // idempotency key of (source, id)
	req   *seamclient.Request
	guest idempotency.Guest
	ws    *workspace // routed by property, before the credential is leased

	claim *idempotency.Claim
	lease *idempotency.CredentialLease
	plan  *idempotency.Plan
	// published is set when an outcome of this event is already in its
	// stream (an owner that died had published it): nothing more is published.
	published        bool
	publishedSubject string

	// read is the holder as read from Seam in this delivery, while it
	// still is what Seam holds; credential is then the object read.
	read       *idempotency.Guest
	credential json.RawMessage
	attempts   int  // Seam write attempts, across deliveries
	wrote      bool // a write was sent to Seam under the current lease
	first      time.Time
	last       time.Time
	renewed    time.Time // when the claim and lease were last renewed
	backoff    *budgetBackOff
	lastErr    error // the last failed Seam call's, for a dead letter after RetryFor
}

// checkIn reports whether the job's event is a check-in.
func (j *job) checkIn() bool { return j.event.Type == schemas.SubjectCheckedIn }

// mark is the job's event as the ordering state remembers it.
func (j *job) mark() idempotency.Event {
	return idempotency.Event{
		Mark: idempotency.Mark{
			Guest:  j.guest,
			Time:   j.event.Time,
			Key:    j.key,
			ID:     j.event.ID,
			Source: j.event.Source,
		},
		CheckIn: j.checkIn(),
	}
}

// outcomeID is the Nats-Msg-Id and CloudEvents id of the event's outcome:
// one per source event, so a re-publish after a crash is deduplicated by
// the stream. A replay gets its own, or it would be swallowed as a duplicate.
func (w *Worker) outcomeID(j *job) string {
	var seq uint64
	if j.meta != nil {
		seq = j.meta.Sequence.Stream
	}
	if j.key == "" {
		return outcomeIDOf("", j.msg.Subject(), seq, j.raw, j.replayOf)
	}
	return outcomeIDOf(j.key, "", 0, nil, j.replayOf)
}

// outcomeIDOf is the outcome id of the event with idempotency key key, or
// of an undecodable message (no key): its subject, its place in the input
// stream (the same on every redelivery) and its bytes are the only identity
// there is, so the same garbage published twice is two dead letters.
func outcomeIDOf(key, subject string, seq uint64, raw []byte, replayOf uint64) string {
	var id string
	if key == "" {
		h := sha256.New()
		h.Write([]byte(subject + "\x00"))
		if seq != 0 {
			h.Write([]byte(strconv.FormatUint(seq, 10)))
		}
		h.Write([]byte("\x00"))
		h.Write(raw)
		id = "keyworker-raw-" + hex.EncodeToString(h.Sum(nil)[:16])
	} else {
		id = "keyworker-" + key[:40]
	}
	if replayOf != 0 {
		id += "-replay-" + strconv.FormatUint(replayOf, 10)
	}
	return id
}

func replayOf(msg jetstream.Msg) uint64 {
	h := msg.Headers()
	if h == nil {
		return 0
	}
	n, _ := strconv.ParseUint(h.Get(schemas.HeaderReplayOf), 10, 64)
	return n
}

func eventID(j *job) string {
	if j.event == nil {
		return ""
	}
	return j.event.ID
}

func eventSubject(j *job) string {
	if j.event == nil {
		return ""
	}
	return j.event.Subject
}
