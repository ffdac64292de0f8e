package main

import (
	"context"
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

// TestOutage_SeamDownThenRefusingTheKeyEndsWithEveryKeyAssignedAndNoDeadLetter
// runs the built worker (KEYWORKER_MAX_DELIVER=3) against a Seam that is
// down for 75 s (alternating reset connections and 503 gateway pages) with
// 200 check-ins waiting, then refuses the API key for 30 s while 50 more
// arrive, then is healthy: every check-in ends assigned, once, with no
// dead letter and no operator; the worker sends Seam a handful of requests
// a second at most while it is down, and catches up soon after.
func TestOutage_SeamDownThenRefusingTheKeyEndsWithEveryKeyAssignedAndNoDeadLetter(t *testing.T) {
	if testing.Short() {
		t.Skip("rides out a 105 s Seam outage: skipped under -short")
	}
	const apiKey = "seam_test_outage_key"
	seam := procNewSeam(t, seamtest.WithAPIKey(apiKey), seamtest.WithAutoCreate(), seamtest.WithDown(seamtest.DownMixed))
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+apiKey,
		"KEYWORKER_MAX_DELIVER=3", "LOG_LEVEL=info")
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type guest struct{ id, cred, user string }
	var guests []guest
	publish := func(n int) {
		t.Helper()
		for range n {
			g := guest{newUUID(), newUUID(), newUUID()}
			guests = append(guests, g)
			doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://outage-test", g.id, time.Now().Add(-time.Minute),
				schemas.GuestData{ACSCredentialID: g.cred, ACSUserID: g.user})
			if _, err := client.publish(ctx, schemas.SubjectCheckedIn, doc, g.id); err != nil {
				t.Fatal(err)
			}
		}
	}
	requestsBetween := func(from, to time.Time) int {
		n := 0
		for _, r := range seam.Requests() {
			if !r.At.Before(from) && r.At.Before(to) {
				n++
			}
		}
		return n
	}
	readyzSays := func(reason string) {
		t.Helper()
		natstest.WaitFor(t, 20*time.Second, func() error {
			code, body, err := worker.readyz()
			if err == nil && (code != http.StatusServiceUnavailable || !strings.Contains(body, reason)) {
				err = fmt.Errorf("readyz %d %s, want 503 naming %s", code, body, reason)
			}
			return err
		})
	}

	downAt := time.Now()
	publish(200)
	readyzSays("seam_unavailable")
	time.Sleep(time.Until(downAt.Add(75 * time.Second))) // the outage is the scenario
	downFor := time.Since(downAt)
	downRequests := requestsBetween(downAt, time.Now())

	keyAt := time.Now()
	seam.SetDown(seamtest.DownOff)
	seam.SetRefuseKey(true)
	publish(50)
	readyzSays("seam_unauthorized")
	time.Sleep(time.Until(keyAt.Add(30 * time.Second)))
	keyRequests := requestsBetween(keyAt, time.Now())

	healthyAt := time.Now()
	seam.SetRefuseKey(false)
	natstest.WaitFor(t, 90*time.Second, client.drained)
	recovered := time.Since(healthyAt)

	perID := map[string]int{}
	for _, o := range client.outcomes() {
		if o.Subject != schemas.SubjectAssigned {
			t.Errorf("%s: %s (%s)", o.SourceID(), o.Subject, o.DL.Error.Message)
		}
		perID[o.SourceID()]++
	}
	for _, g := range guests {
		if perID[g.id] != 1 {
			t.Errorf("check-in %s: %d outcomes, want 1", g.id, perID[g.id])
		}
		if !seam.IsAssigned(g.cred, g.user) {
			t.Errorf("check-in %s: key not assigned", g.id)
		}
	}
	downRate := float64(downRequests) / downFor.Seconds()
	keyRate := float64(keyRequests) / 30
	t.Logf("Seam down %s: %d requests (%.2f/s); key refused 30 s: %d requests (%.2f/s); all %d outcomes %s after Seam was healthy",
		downFor.Round(time.Second), downRequests, downRate, keyRequests, keyRate, len(guests), recovered.Round(time.Millisecond))
	if downRate > 10 || keyRate > 10 {
		t.Errorf("requests while Seam failed: %.2f/s down, %.2f/s refusing the key; want at most 10/s averaged", downRate, keyRate)
	}
	code, body, err := worker.readyz()
	if err != nil || code != http.StatusOK {
		t.Errorf("readyz after recovery: %d %s %v", code, body, err)
	}
}
