package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
)

// TestLeastPrivilege_WorkerRunsOnItsOwnUserAndIsRefusedEverythingElse runs
// NATS from deploy/nats/nats-server.conf. The worker, as user keyworker,
// provisions its streams, consumer and buckets and processes events; with a
// wrong password it exits non-zero with one clear line; and the server
// refuses the worker and PMS users anything outside their permissions.
// Then the worker's /metrics counts equal the events it processed, and
// /readyz says 503 with a reason while every NATS node is down, and 200
// again once they are back.
func TestLeastPrivilege_WorkerRunsOnItsOwnUserAndIsRefusedEverythingElse(t *testing.T) {
	workerImage, natsImage := requireDocker(t)
	nw := newNetwork(t)
	cluster := startCluster(t, natsImage, nw)
	sim := startSimulator(t, workerImage, nw)
	worker := startWorker(t, workerImage, "worker", nw, workerEnv(cluster, nil))
	metricsBase := "http://" + endpoint(t, worker, "9090/tcp")

	t.Run("wrong password exits non-zero with one clear line", func(t *testing.T) {
		const wrong = "not-the-password-42"
		c := startContainer(t, workerImage, "worker-bad-password", nw,
			testcontainers.WithEnv(workerEnv(cluster, map[string]string{"NATS_PASSWORD": wrong})),
			loopbackPorts("9090/tcp"),
			testcontainers.WithWaitStrategy(wait.ForExit().WithExitTimeout(60*time.Second)),
		)
		state, err := c.State(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if state.ExitCode != 1 {
			t.Errorf("exit code %d, want 1", state.ExitCode)
		}
		lines := logLines(c)
		if len(lines) == 0 {
			t.Fatal("no output")
		}
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "worker: NATS refused the credentials") || !strings.Contains(last, "NATS_USER/NATS_PASSWORD") {
			t.Errorf("last line %q, want one line saying NATS refused the credentials and naming NATS_USER/NATS_PASSWORD", last)
		}
		if log := strings.Join(lines, "\n"); strings.Contains(log, wrong) {
			t.Errorf("the password appears in the output:\n%s", log)
		}
	})

	admin := cluster.connect(t, "admin")
	pms := cluster.connect(t, "pms")
	guests, events := guestEvents(t, 60, 40, 11)
	var checkins, checkouts []event
	for _, ev := range events {
		if ev.subject == schemas.SubjectCheckedIn {
			checkins = append(checkins, ev)
		} else {
			checkouts = append(checkouts, ev)
		}
	}
	// Check-ins first, then check-outs: every event is applied, none is
	// stale, so the metrics are exact.
	for _, batch := range [][]event{checkins, checkouts} {
		for _, ev := range batch {
			if err := publish(t.Context(), pms.js, ev, ev.id, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		waitSettled(t, admin.js, 0, 60*time.Second)
	}
	// Five check-ins sent again by a PMS that lost its acknowledgements:
	// another Nats-Msg-Id, so JetStream keeps them and the worker must see
	// they are duplicates.
	for _, ev := range checkins[:5] {
		if err := publish(t.Context(), pms.js, ev, ev.id+"-resent", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	outs := waitSettled(t, admin.js, len(events), 60*time.Second)
	checkOneOutcomeEach(t, events, outs)
	checkSeamState(t, sim, guests)

	t.Run("metrics count every event processed", func(t *testing.T) {
		st := sim.stats(t)
		families := scrape(t, metricsBase)
		for _, tc := range []struct {
			metric string
			labels map[string]string
			want   float64
		}{
			{"keyworker_events_total", map[string]string{"type": schemas.SubjectCheckedIn, "outcome": "assigned"}, float64(len(checkins))},
			{"keyworker_events_total", map[string]string{"type": schemas.SubjectCheckedOut, "outcome": "unassigned"}, float64(len(checkouts))},
			{"keyworker_events_total", map[string]string{"type": schemas.SubjectCheckedIn, "outcome": "duplicate"}, 5},
			{"keyworker_events_total", map[string]string{"outcome": "skipped"}, 0},
			{"keyworker_events_total", map[string]string{"outcome": "dead_letter"}, 0},
			{"keyworker_events_total", map[string]string{"outcome": "retry"}, 0},
			{"keyworker_events_total", nil, float64(len(events) + 5)},
			{"keyworker_dead_letters_total", nil, 0},
			{"keyworker_seam_requests_total", map[string]string{"endpoint": "assign", "status_class": "2xx"}, float64(st.Calls["assign"])},
			{"keyworker_seam_requests_total", map[string]string{"endpoint": "unassign", "status_class": "2xx"}, float64(st.Calls["unassign"])},
			{"keyworker_seam_requests_total", nil, float64(st.Calls["total"])},
			{"keyworker_in_flight", nil, 0},
		} {
			if got := sum(families, tc.metric, tc.labels); got != tc.want {
				t.Errorf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		}
		if st.Calls["assign"] != len(checkins) || st.Calls["unassign"] != len(checkouts) {
			t.Errorf("Seam saw %d assign and %d unassign calls, want %d and %d", st.Calls["assign"], st.Calls["unassign"], len(checkins), len(checkouts))
		}
	})

	t.Run("the server refuses what the users may not do", func(t *testing.T) {
		w := cluster.connect(t, "keyworker")
		expectViolation(t, w, func() error { return w.nc.Publish(schemas.SubjectCheckedIn, []byte("{}")) }, "publish", schemas.SubjectCheckedIn)
		expectViolation(t, w, func() error { return w.nc.Publish("credential.revoked", []byte("{}")) }, "publish", "credential.revoked")
		expectViolation(t, w, func() error {
			_, err := w.nc.Subscribe("guest.>", func(*nats.Msg) {})
			return err
		}, "subscription", "guest.>")
		expectViolation(t, w, func() error {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			_ = w.js.DeleteStream(ctx, consumer.DefaultInputStream) // refused: no reply comes
			return nil
		}, "publish", "$JS.API.STREAM.DELETE."+consumer.DefaultInputStream)

		p := cluster.connect(t, "pms")
		expectViolation(t, p, func() error { return p.nc.Publish(schemas.SubjectAssigned, []byte("{}")) }, "publish", schemas.SubjectAssigned)
		expectViolation(t, p, func() error {
			_, err := p.nc.Subscribe("credential.>", func(*nats.Msg) {})
			return err
		}, "subscription", "credential.>")

		if _, err := streamInfo(t.Context(), admin.js, consumer.DefaultInputStream); err != nil {
			t.Fatalf("input stream after refused delete: %v", err)
		}
	})

	t.Run("the worker itself was never refused anything", func(t *testing.T) {
		var n int
		for _, name := range cluster.names {
			for _, line := range logLines(cluster.nodes[name]) {
				if !strings.Contains(line, "Violation") {
					continue
				}
				n++
				if !strings.Contains(line, "deploy-test-") {
					t.Errorf("%s refused a client other than the test's: %s", name, line)
				}
			}
		}
		if n == 0 {
			t.Error("no permissions violation in the server logs, not even the test's own")
		}
	})

	t.Run("readyz is 503 while NATS is down and 200 once it is back", func(t *testing.T) {
		readyz(t, metricsBase, 200, 10*time.Second)
		eachNode(t, cluster, func(c *testcontainers.DockerContainer) error {
			stop := 10 * time.Second
			return c.Stop(t.Context(), &stop)
		})
		body := readyz(t, metricsBase, 503, 30*time.Second)
		if !strings.Contains(string(body), `"nats: `) {
			t.Errorf("/readyz body %s does not give NATS as the reason", body)
		}
		if code, _, err := httpGet(t.Context(), metricsBase+"/healthz"); err != nil || code != 200 {
			t.Errorf("/healthz = %d, %v while NATS is down, want 200: the process is alive", code, err)
		}

		eachNode(t, cluster, func(c *testcontainers.DockerContainer) error { return c.Start(t.Context()) })
		readyz(t, metricsBase, 200, 90*time.Second)
		// And it consumes again: one more check-out for a guest still in.
		_, more := guestEvents(t, 1, 1, 3)
		pms := cluster.connect(t, "pms")
		for _, ev := range more {
			if err := publish(t.Context(), pms.js, ev, ev.id, 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		admin := cluster.connect(t, "admin")
		outs := waitSettled(t, admin.js, len(events)+len(more), 90*time.Second)
		checkOneOutcomeEach(t, append(append([]event{}, events...), more...), outs)
	})
}

// eachNode runs fn on every node at once.
func eachNode(t *testing.T, c *natsCluster, fn func(*testcontainers.DockerContainer) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(c.names))
	for i, n := range c.names {
		wg.Go(func() { errs[i] = fn(c.nodes[n]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// expectViolation runs do and waits for the server's permissions violation
// for kind ("publish" or "subscription") on subject.
func expectViolation(t *testing.T, c *natsClient, do func() error, kind, subject string) {
	t.Helper()
	if err := do(); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("%s %s: %v", kind, subject, err)
	}
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("permissions violation for %s to %q", kind, subject)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-c.errors:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
				return
			}
		case <-deadline:
			t.Errorf("%s to %s by %s: no permissions violation from the server", kind, subject, c.nc.Opts.User)
			return
		}
	}
}

// scrape fetches and parses a worker's /metrics.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := httpGet(t.Context(), base+"/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// sum adds the values of metric's series whose labels include labels.
func sum(families map[string]*dto.MetricFamily, metric string, labels map[string]string) float64 {
	f, ok := families[metric]
	if !ok {
		return 0
	}
	var total float64
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Untyped != nil:
			total += m.GetUntyped().GetValue()
		}
	}
	return total
}
