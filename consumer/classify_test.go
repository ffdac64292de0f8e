package consumer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/seamclient"
)

// Fast table tests of the decisions that need no NATS: how an error counts
// for retrying, for the health gate and for the pacer.

func TestClassification_Table(t *testing.T) {
	api := func(status int, typ string) error { return &seamclient.APIError{StatusCode: status, Type: typ} }
	sent := &seamclient.TransportError{Path: seamclient.PathAssign, Err: context.DeadlineExceeded, Sent: true}
	refused := &seamclient.TransportError{Path: seamclient.PathAssign, Err: errors.New("connection refused")}
	for _, tc := range []struct {
		name      string
		err       error
		permanent bool
		signal    gateSignal
	}{
		{"success", nil, false, signalUp},
		{"400 invalid input", api(400, "invalid_input"), true, signalUp},
		{"404 not found", api(404, "acs_credential_not_found"), true, signalUp},
		{"401 refused key", api(401, "unauthorized"), false, signalUnauthorized},
		{"403 forbidden", api(403, "forbidden"), false, signalUnauthorized},
		{"408 timeout", api(408, ""), false, signalDown},
		{"409 already assigned", api(409, seamclient.ErrorTypeAlreadyAssigned), false, signalUp},
		{"409 credential busy (retried)", api(409, "credential_busy"), false, signalUp},
		{"409 a permanent conflict", api(409, "acs_credential_cannot_be_assigned"), true, signalUp},
		{"409 of a type nobody knows", api(409, "acs_credential_conflict_of_a_new_kind"), true, signalUp},
		{"409 without a type", api(409, ""), false, signalUp},
		{"504 gateway_timeout (outcome unknown)", api(504, "gateway_timeout"), false, signalDown},
		{"503 of a type nobody knows", api(503, "something_new"), false, signalDown},
		{"429 rate limited", api(429, "rate_limited"), false, signalUp},
		{"500", api(500, "internal_server_error"), false, signalDown},
		{"503 gateway page", api(503, ""), false, signalDown},
		{"refused connection", refused, false, signalDown},
		{"sent, no answer", sent, false, signalDown},
		{"undecodable 200", &seamclient.ResponseError{StatusCode: 200, Err: errors.New("bad json")}, false, signalDown},
		{"our shutdown", fmt.Errorf("wrapped: %w", context.Canceled), false, signalNone},
		// The gate sees each request's own error; this one wraps the refusal.
		{"refusal unconfirmed after an unanswered request", &unconfirmedError{cause: api(400, "invalid_input"), read: refused}, false, signalUp},
		{"lease lost", &leaseLostError{err: errors.New("revision moved")}, true, signalUp},
		{"retry-for spent", &retryForError{since: time.Now(), last: refused}, true, signalDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := permanent(tc.err); got != tc.permanent {
				t.Errorf("permanent = %v, want %v", got, tc.permanent)
			}
			if got := signalOf(tc.err); got != tc.signal {
				t.Errorf("gate signal = %v, want %v", got, tc.signal)
			}
		})
	}
}

func TestGate_OpensAfterFailuresInARowProbesOneAtATimeAndClosesOnAnAnswer(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	g := newGate(clock, discard(), nil, "default", time.Second, 5*time.Second)
	down := &seamclient.TransportError{Path: seamclient.PathAssign, Err: errors.New("connection refused")}
	for range gateTripAfter - 1 {
		g.report(false, down)
	}
	g.report(false, nil) // an answer in between: not an outage
	for range gateTripAfter - 1 {
		g.report(false, down)
	}
	if s, _ := g.health(); s != SeamHealthy {
		t.Fatalf("%d failures in a row opened the gate", gateTripAfter-1)
	}
	g.report(false, down)
	if s, _ := g.health(); s != SeamUnavailable {
		t.Fatalf("state %v after %d failures in a row, want unavailable", s, gateTripAfter)
	}
	// Before the first probe is due, admit waits; once due, one caller probes.
	ctx, cancel := context.WithCancel(context.Background())
	ticks := 0
	tick := func() error {
		ticks++
		now = now.Add(time.Second) // time passes while waiting
		return nil
	}
	probe, waited, err := g.admit(ctx, time.Millisecond, 0, tick)
	if err != nil || !probe || !waited || ticks == 0 {
		t.Fatalf("admit: probe %v waited %v err %v ticks %d, want a probe after waiting", probe, waited, err, ticks)
	}
	// A second caller waits while the probe is out; the probe fails: backed off.
	cancel()
	if p, _, err := g.admit(ctx, time.Millisecond, 0, tick); p || err == nil {
		t.Fatalf("second admit while probing: probe %v err %v, want to wait", p, err)
	}
	g.report(true, down)
	if g.probeWait != 2*time.Second {
		t.Fatalf("probe interval after a failed probe %s, want 2s", g.probeWait)
	}
	// A refused key switches the reason; an answer closes it.
	g.report(false, &seamclient.APIError{StatusCode: 401})
	if s, _ := g.health(); s != SeamUnauthorized {
		t.Fatalf("state %v after a 401, want unauthorized", s)
	}
	g.report(false, &seamclient.APIError{StatusCode: 404})
	if s, _ := g.health(); s != SeamHealthy {
		t.Fatalf("state %v after Seam answered, want healthy", s)
	}
}

func TestPacer_A429CutsTheRateOnceAndItGrowsBack(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(func() time.Time { return now }, Sleep, 0, nil, "default")
	for range 20 {
		p.count()
	}
	limited := &seamclient.APIError{StatusCode: 429, HasRetryAfter: true, RetryAfter: 2 * time.Second}
	p.observe(0, limited)
	if got := float64(p.adaptive.Limit()); got != 20*slowdownBackOff {
		t.Fatalf("limit after a 429 at 20/s: %v, want %v", got, 20*slowdownBackOff)
	}
	if p.until.Sub(now) != 2*time.Second {
		t.Fatalf("pause %s, want the Retry-After", p.until.Sub(now))
	}
	p.observe(0, limited) // in flight before the cut: no second cut
	if got := float64(p.adaptive.Limit()); got != 20*slowdownBackOff {
		t.Fatalf("a request admitted before the cut cut again: %v", got)
	}
	if _, ok := p.take(new(uint64)); ok {
		t.Fatal("a request admitted during the Retry-After pause")
	}
	before := float64(p.adaptive.Limit())
	now = now.Add(3 * time.Second)
	p.observe(1, nil)
	if got := float64(p.adaptive.Limit()); got <= before {
		t.Fatalf("limit %v after a success past the pause, want it to grow from %v", got, before)
	}
}

func discard() zerolog.Logger { return zerolog.Nop() }

func TestConfig_IdempotencyRecordsOutliveTheInputStream(t *testing.T) {
	c := Config{}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.IdempotencyTTL != c.InputMaxAge || c.InputMaxAge != 14*24*time.Hour {
		t.Fatalf("default TTL %s, input max age %s: want the TTL to default to the max age (14 days)", c.IdempotencyTTL, c.InputMaxAge)
	}
	short := Config{IdempotencyTTL: 7 * 24 * time.Hour}
	if err := short.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("a 7-day TTL under a 14-day stream: err = %v, want ErrInvalidConfig", err)
	}
}
