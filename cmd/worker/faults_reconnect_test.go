package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// TestReconnect_NATSRestartTurnsReadyzRedThenGreenAndLaterEventsAreProcessed
// kills nats-server under a running worker and starts it again on the same
// port and store: /readyz says why it is not ready while NATS is away, is
// ready again after, and events published after the restart are handled
// by the same worker process.
func TestReconnect_NATSRestartTurnsReadyzRedThenGreenAndLaterEventsAreProcessed(t *testing.T) {
	const apiKey = "seam_test_reconnect_key"
	seam := procNewSeam(t, seamtest.WithAPIKey(apiKey), seamtest.WithAutoCreate())
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+apiKey)
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var creds []string
	publish := func(n int) {
		t.Helper()
		for range n {
			id, cred, user := newUUID(), newUUID(), newUUID()
			creds = append(creds, cred+"/"+user)
			doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://reconnect-test", id, time.Now().Add(-time.Minute),
				schemas.GuestData{ACSCredentialID: cred, ACSUserID: user})
			if _, err := client.publish(ctx, schemas.SubjectCheckedIn, doc, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitOutcomes := func(n int, within time.Duration) {
		t.Helper()
		natstest.WaitFor(t, within, func() error {
			c, err := client.outcomeCount()
			if err == nil && c < n {
				err = fmt.Errorf("%d outcomes, want %d", c, n)
			}
			return err
		})
	}
	publish(10)
	waitOutcomes(10, 20*time.Second)

	natsSrv.kill()
	down := time.Now()
	var reasons []string
	natstest.WaitFor(t, 15*time.Second, func() error {
		code, body, err := worker.readyz()
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d %s with nats-server down, want 503", code, body)
		}
		var v struct {
			Ready   bool     `json:"ready"`
			Reasons []string `json:"reasons"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			return fmt.Errorf("readyz body %q: %v", body, err)
		}
		reasons = v.Reasons
		return nil
	})
	noticed := time.Since(down)
	if !strings.Contains(strings.Join(reasons, "; "), "nats") {
		t.Fatalf("readyz reasons %q do not name NATS", reasons)
	}

	natsSrv.start()
	up := time.Now()
	worker.waitReady(30 * time.Second)
	ready := time.Since(up)
	publish(10)
	waitOutcomes(20, 45*time.Second)
	processed := time.Since(up)
	if !worker.running() || len(worker.logs) != 1 {
		t.Fatalf("the worker was restarted or exited: runs %d, running %v", len(worker.logs), worker.running())
	}
	for _, pair := range creds {
		cred, user, _ := strings.Cut(pair, "/")
		if !seam.IsAssigned(cred, user) {
			t.Errorf("credential %s not assigned", cred)
		}
	}
	// Reconnecting is quiet: a few lines, not one per failed fetch.
	if lines := len(worker.logLines()); lines > 50 {
		t.Errorf("%d log lines for one NATS restart", lines)
	}
	t.Logf("readyz 503 %s after the kill (reasons %q); 200 again %s after the restart; events published after it handled within %s; %d log lines",
		noticed.Round(time.Millisecond), reasons, ready.Round(time.Millisecond), processed.Round(time.Millisecond), len(worker.logLines()))
}
