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

// TestSIGTERM_UnderLoadExitsZeroWithinGraceAndRestartFinishesEveryEventOnce
// stops the worker with SIGTERM while hundreds of events are in flight,
// three of them in Seam calls that hang past the grace period, then
// restarts it to finish: every event ends with exactly one outcome and
// every credential was changed exactly once.
func TestSIGTERM_UnderLoadExitsZeroWithinGraceAndRestartFinishesEveryEventOnce(t *testing.T) {
	const (
		events = 400
		grace  = 2 * time.Second
		apiKey = "seam_test_sigterm_key"
	)
	seam := procNewSeam(t, seamtest.WithAPIKey(apiKey), seamtest.WithAutoCreate(), seamtest.WithLatency(100*time.Millisecond))
	seam.FailNext(3, seamtest.PathAssign, seamtest.Timeout(0)) // hang until the worker gives up on them
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t,
		"NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+apiKey,
		"KEYWORKER_CONCURRENCY=32", "KEYWORKER_SHUTDOWN_GRACE="+grace.String(), "KEYWORKER_SEAM_TIMEOUT=30s")
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)

	type pair struct{ cred, user, id string }
	pairs := make([]pair, events)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	at := time.Now().Add(-time.Hour)
	for i := range pairs {
		p := pair{cred: newUUID(), user: newUUID(), id: newUUID()}
		pairs[i] = p
		doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://sigterm-test", p.id, at, schemas.GuestData{ACSCredentialID: p.cred, ACSUserID: p.user})
		if _, err := client.publish(ctx, schemas.SubjectCheckedIn, doc, p.id); err != nil {
			t.Fatal(err)
		}
	}

	natstest.WaitFor(t, 30*time.Second, func() error {
		c, err := client.outcomeCount()
		if err == nil && c < events/4 {
			err = fmt.Errorf("%d outcomes, waiting for %d", c, events/4)
		}
		return err
	})
	code, took := worker.terminate(grace + 10*time.Second)
	atStop, err := client.outcomeCount()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGTERM with %d of %d events done: exit %d after %s (grace %s)", atStop, events, code, took.Round(time.Millisecond), grace)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	// The grace period plus closing the NATS connection and the HTTP server.
	if took > grace+time.Second {
		t.Errorf("exit took %s, want within the grace period %s (+1 s to close connections)", took.Round(time.Millisecond), grace)
	}
	if atStop >= events {
		t.Fatalf("all %d events were done before SIGTERM took effect: not a test of shutdown under load", events)
	}
	logs := strings.Join(worker.logLines(), "\n")
	if !strings.Contains(logs, "shutdown grace period over") {
		t.Errorf("the hanging Seam calls did not outlast the grace period: no \"shutdown grace period over\" in the log")
	}

	worker.start()
	natstest.WaitFor(t, 60*time.Second, client.drained)
	if code, _ := worker.terminate(grace + 10*time.Second); code != 0 {
		t.Errorf("second run: exit code %d after SIGTERM, want 0", code)
	}

	byID := map[string][]consumertest.Outcome{}
	for _, o := range client.outcomes() {
		byID[o.SourceID()] = append(byID[o.SourceID()], o)
	}
	for _, p := range pairs {
		outs := byID[p.id]
		if len(outs) != 1 || outs[0].Subject != schemas.SubjectAssigned {
			var got []string
			for _, o := range outs {
				got = append(got, o.Subject)
			}
			t.Errorf("event %s: outcomes %v, want exactly one credential.assigned", p.id, got)
		}
		if n := seam.Effects(p.cred, p.user); n != 1 {
			t.Errorf("credential %s: %d effects, want 1", p.cred, n)
		}
	}
	t.Logf("seam: %d assign calls for %d events, %d effects", seam.Calls("assign"), events, seam.TotalEffects())
}

// TestSIGTERM_WhileNATSIsDownExitsZeroWithinGrace stops the worker while
// nats-server is away: shutting down must not wait for a connection that
// is not coming back.
func TestSIGTERM_WhileNATSIsDownExitsZeroWithinGrace(t *testing.T) {
	const grace = 2 * time.Second
	seam := procNewSeam(t, seamtest.WithAutoCreate())
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY=seam_test_key",
		"KEYWORKER_SHUTDOWN_GRACE="+grace.String())
	worker.start()
	worker.waitReady(30 * time.Second)
	natsSrv.kill()
	natstest.WaitFor(t, 15*time.Second, func() error {
		code, body, err := worker.readyz()
		if err == nil && code == http.StatusOK {
			err = fmt.Errorf("readyz 200 with nats-server down: %s", body)
		}
		return err
	})
	code, took := worker.terminate(grace + 40*time.Second)
	t.Logf("SIGTERM with NATS down: exit %d after %s (grace %s)", code, took.Round(time.Millisecond), grace)
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if took > grace+time.Second {
		t.Errorf("exit took %s, want within the grace period %s (+1 s)", took.Round(time.Millisecond), grace)
	}
}

// TestSIGTERM_WithEventsInFlightWhileNATSIsDownExitsZeroWithinGrace stops the
// worker while events are in Seam calls and nats-server has just gone: the
// handlers can neither record, publish nor hand anything back, and the
// process must still exit in time. (Finishing those events after a restart
// waits out their 30 s leases, so it is left to the crash test.)
func TestSIGTERM_WithEventsInFlightWhileNATSIsDownExitsZeroWithinGrace(t *testing.T) {
	const (
		grace  = 2 * time.Second
		events = 20
	)
	seam := procNewSeam(t, seamtest.WithAutoCreate(), seamtest.WithLatency(500*time.Millisecond))
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY=seam_test_key",
		"KEYWORKER_SHUTDOWN_GRACE="+grace.String())
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range events {
		id := newUUID()
		doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://sigterm-test", id, time.Now().Add(-time.Minute),
			schemas.GuestData{ACSCredentialID: newUUID(), ACSUserID: newUUID()})
		if _, err := client.publish(ctx, schemas.SubjectCheckedIn, doc, id); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		if n := seam.Calls(""); n < events {
			return fmt.Errorf("%d seam calls, waiting for %d in flight", n, events)
		}
		return nil
	})
	natsSrv.kill()
	code, took := worker.terminate(grace + 60*time.Second)
	t.Logf("SIGTERM with %d events in flight and NATS down: exit %d after %s (grace %s)", events, code, took.Round(time.Millisecond), grace)
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	// The grace period, then at most a second for handing events back.
	if took > grace+1500*time.Millisecond {
		t.Errorf("exit took %s, want the grace period %s plus at most 1.5 s", took.Round(time.Millisecond), grace)
	}
}
