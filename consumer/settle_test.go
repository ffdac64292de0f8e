package consumer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// How a delivery whose Seam call failed is settled, without NATS: the
// decision is a pure function of the error, the delivery count and the
// clock.
func TestVerdict_Table(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	cfg := Config{NakDelay: time.Second, NakDelayMax: 8 * time.Second, BusyDelay: 20 * time.Millisecond, RetryFor: time.Hour}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	w := &Worker{cfg: cfg, now: func() time.Time { return now }}
	stopped, stop := context.WithCancel(context.Background())
	stop()
	refused := &seamclient.TransportError{Path: seamclient.PathAssign, Err: errors.New("connection refused")}
	limited := &seamclient.APIError{StatusCode: 429, HasRetryAfter: true, RetryAfter: 30 * time.Second}
	soonLimited := &seamclient.APIError{StatusCode: 429, HasRetryAfter: true, RetryAfter: time.Second}
	for _, tc := range []struct {
		name       string
		ctx        context.Context
		err        error
		delivered  uint64
		firstAgo   time.Duration // 0: no attempt yet
		deadLetter string
		delay      time.Duration
	}{
		{"transient, first delivery", nil, refused, 1, time.Minute, "", time.Second},
		{"transient, third delivery doubles twice", nil, refused, 3, time.Minute, "", 4 * time.Second},
		{"transient, tenth delivery is capped", nil, refused, 10, time.Minute, "", 8 * time.Second},
		{"a Retry-After longer than the nak delay wins", nil, limited, 1, time.Minute, "", 30 * time.Second},
		{"a Retry-After shorter than the nak delay does not", nil, soonLimited, 3, time.Minute, "", 4 * time.Second},
		{"permanent: dead letter at once", nil, &seamclient.APIError{StatusCode: 400, Type: "invalid_input"}, 1, time.Minute, schemas.ErrorKindPermanent, 0},
		{"RetryFor spent: retries exhausted", nil, refused, 7, 2 * time.Hour, schemas.ErrorKindRetriesExhausted, 0},
		{"RetryFor spent during the call", nil, &retryForError{since: now.Add(-2 * time.Hour), last: refused}, 2, time.Minute, schemas.ErrorKindRetriesExhausted, 0},
		{"never attempted: RetryFor has not started", nil, refused, 1, 0, "", time.Second},
		{"lease lost: soon, not a dead letter", nil, &leaseLostError{err: errors.New("revision moved")}, 5, 2 * time.Hour, "", 20 * time.Millisecond},
		{"shutdown: at once, whatever the error", stopped, &seamclient.APIError{StatusCode: 400}, 1, 2 * time.Hour, "", 0},
		{"the gate's stop: at once", nil, errStopping, 4, time.Minute, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			j := &job{meta: &jetstream.MsgMetadata{NumDelivered: tc.delivered}, lastErr: tc.err}
			if tc.firstAgo > 0 {
				j.first = now.Add(-tc.firstAgo)
			}
			v := w.verdictOf(ctx, j, tc.err)
			if v.deadLetter != tc.deadLetter || v.delay != tc.delay {
				t.Fatalf("verdict %q after %s, want %q after %s", v.deadLetter, v.delay, tc.deadLetter, tc.delay)
			}
			if v.deadLetter != "" && v.cause == nil {
				t.Fatal("a dead letter without its cause")
			}
		})
	}
}

// Outcome ids are what JetStream deduplicates on: one per source event,
// its own per replay, and one per undecodable message (not per body).
func TestOutcomeID_Table(t *testing.T) {
	key := idempotency.Key("pms://a", "evt-1")
	garbage := []byte("{not json")
	for _, tc := range []struct {
		name string
		a, b string
		same bool
	}{
		{"the same event twice", outcomeIDOf(key, "", 0, nil, 0), outcomeIDOf(key, "", 0, nil, 0), true},
		{"another source, same id", outcomeIDOf(key, "", 0, nil, 0), outcomeIDOf(idempotency.Key("pms://b", "evt-1"), "", 0, nil, 0), false},
		{"a replay is not its original", outcomeIDOf(key, "", 0, nil, 0), outcomeIDOf(key, "", 0, nil, 42), false},
		{"two replays of one dead letter", outcomeIDOf(key, "", 0, nil, 42), outcomeIDOf(key, "", 0, nil, 42), true},
		{"redeliveries of one undecodable message", outcomeIDOf("", "guest.checked_in", 7, garbage, 0), outcomeIDOf("", "guest.checked_in", 7, garbage, 0), true},
		{"the same garbage on two subjects", outcomeIDOf("", "guest.checked_in", 7, garbage, 0), outcomeIDOf("", "guest.checked_out", 7, garbage, 0), false},
		{"the same garbage published twice", outcomeIDOf("", "guest.checked_in", 7, garbage, 0), outcomeIDOf("", "guest.checked_in", 8, garbage, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.a == tc.b) != tc.same {
				t.Fatalf("%s vs %s: same = %v, want %v", tc.a, tc.b, tc.a == tc.b, tc.same)
			}
			for _, id := range []string{tc.a, tc.b} {
				if !strings.HasPrefix(id, "keyworker-") || len(id) > 128 {
					t.Fatalf("outcome id %q", id)
				}
			}
		})
	}
}
