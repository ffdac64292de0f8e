package consumer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// Seam's bad days: rate limits, outages and refused keys never turn into
// dead letters, lost time or a retry storm.

// checkIns publishes n check-ins, each for its own credential and guest.
func (h *harness) checkIns(n int, prefix string) []string {
	h.t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		d := schemas.GuestData{
			ACSCredentialID: fmt.Sprintf("88888888-8888-4888-8888-%012d", i),
			ACSUserID:       fmt.Sprintf("55555555-5555-4555-8555-%012d", i),
		}
		if prefix != "" {
			d.ACSCredentialID = fmt.Sprintf("88888888-8888-4888-%04x-%012d", len(prefix)+0x8000, i)
		}
		h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, ids[i], time.Now(), d), "")
	}
	return ids
}

// assertAllAssignedOnce checks one credential.assigned per id and no dead letter.
func (h *harness) assertAllAssignedOnce(ids []string) {
	h.t.Helper()
	perID := map[string]int{}
	for _, o := range h.outcomes() {
		if o.Subject != schemas.SubjectAssigned {
			h.t.Errorf("%s: %s %s", o.SourceID(), o.Subject, o.DL.Error.Message)
		}
		perID[o.SourceID()]++
	}
	for _, id := range ids {
		if perID[id] != 1 {
			h.t.Errorf("%s: %d outcomes, want 1", id, perID[id])
		}
	}
}

// deliveries is how often the durable consumer delivered messages in all.
func (h *harness) deliveries() uint64 {
	h.t.Helper()
	c, err := h.js.Consumer(context.Background(), h.cfg.InputStream, h.cfg.Durable)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return info.Delivered.Consumer
}

func TestBadDay_UnannouncedRateLimitSlowsTheWholeProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 40 s against a 10/s rate limit: skipped under -short")
	}
	cfg := fastConfig()
	cfg.Concurrency = 32
	h := newHarness(t, cfg, seamtest.WithAutoCreate(), seamtest.WithRateLimit(10, 10))
	const n = 400
	ids := h.checkIns(n, "")
	start := time.Now()
	h.start(1)
	h.waitDrained(80 * time.Second)
	took := time.Since(start)
	h.assertAllAssignedOnce(ids)
	limited := h.seam.RateLimited()
	t.Logf("%d check-ins against 10 calls/s: %s, %d Seam calls, %d answered 429", n, took.Round(time.Millisecond), h.seam.Calls(""), limited)
	if limited > 100 {
		t.Errorf("%d answers 429 for %d check-ins, want at most 100: the worker keeps knocking at the limit", limited, n)
	}
}

func TestBadDay_OwnCeilingNeverLetsLeasesOrTheAckWaitRunOut(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 90 s at one request a second: skipped under -short")
	}
	cfg := fastConfig()
	cfg.Concurrency = 64
	cfg.MaxAckPending = 1024
	h := newHarness(t, cfg, seamtest.WithAutoCreate())
	const n = 90
	ids := h.checkIns(n, "")
	start := time.Now()
	h.start(1, consumer.WithSeamRateLimit(1))
	h.waitDrained(130 * time.Second)
	took := time.Since(start)
	h.assertAllAssignedOnce(ids)
	calls, delivered := h.seam.Calls(""), h.deliveries()
	t.Logf("%d check-ins at KEYWORKER_SEAM_RPS=1, concurrency 64: %s, %d Seam calls, %d deliveries", n, took.Round(time.Millisecond), calls, delivered)
	if calls > 99 {
		t.Errorf("%d Seam calls for %d check-ins, want at most 99", calls, n)
	}
	if delivered != n {
		t.Errorf("%d deliveries for %d events: waiting for the limiter let the ack wait run out", delivered, n)
	}
}
