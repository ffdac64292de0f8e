package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
)

// A fresh worker exports every dead-letter kind and every outcome at 0, so
// rate() sees the first increment after a restart.
func TestMetrics_FreshWorkerExportsEveryKindAndOutcomeAtZero(t *testing.T) {
	_, url := natstest.StartTest(t)
	addr := consumertest.FreeAddr(t)
	t.Setenv("NATS_URL", url)
	t.Setenv("SEAM_API_KEY", "")
	t.Setenv("KEYWORKER_HTTP_ADDR", addr)
	t.Setenv("KEYWORKER_DATA_DIR", t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run"}, nil, io.Discard, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})

	var body string
	natstest.WaitFor(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /metrics: %d %v", resp.StatusCode, err)
		}
		return nil
	})
	want := []string{
		`keyworker_dead_letters_total{kind="invalid_event"} 0`,
		`keyworker_dead_letters_total{kind="permanent"} 0`,
		`keyworker_dead_letters_total{kind="retries_exhausted"} 0`,
	}
	for _, o := range []string{"assigned", "skipped", "duplicate", "retry", "dead_letter"} {
		want = append(want, fmt.Sprintf(`keyworker_events_total{outcome=%q,type="guest.checked_in"} 0`, o))
	}
	for _, o := range []string{"unassigned", "skipped", "duplicate", "retry", "dead_letter"} {
		want = append(want, fmt.Sprintf(`keyworker_events_total{outcome=%q,type="guest.checked_out"} 0`, o))
	}
	lines := strings.Split(body, "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || l == w
		}
		if !found {
			t.Errorf("/metrics of a fresh worker lacks %s", w)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
