package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

// TestCluster_EveryEventHasOneOutcomeWhenTheStreamLeaderStopsAndAWorkerIsKilled
// runs the production shape: three NATS nodes with R3 streams, two worker
// containers and the Seam simulator in a container, all on one Docker
// network. While 1,000 events flow, the input stream's leader is stopped
// and later started again, and one worker is killed with SIGKILL.
func TestCluster_EveryEventHasOneOutcomeWhenTheStreamLeaderStopsAndAWorkerIsKilled(t *testing.T) {
	workerImage, natsImage := requireDocker(t)
	start := time.Now()
	nw := newNetwork(t)
	cluster := startCluster(t, natsImage, nw)
	sim := startSimulator(t, workerImage, nw, "--latency", "5ms")

	// One after the other: two replicas starting at the same moment on a
	// fresh cluster is TestCluster_TwoWorkersStartingTogetherBothBecomeReady.
	var workers [2]*testcontainers.DockerContainer
	for i := range workers {
		workers[i] = startWorker(t, workerImage, fmt.Sprintf("worker-%d", i+1), nw, workerEnv(cluster, nil))
	}
	t.Logf("cluster, simulator and 2 workers ready after %s", time.Since(start).Round(time.Millisecond))

	admin := cluster.connect(t, "admin")
	pms := cluster.connect(t, "pms")
	info, err := streamInfo(t.Context(), admin.js, consumer.DefaultInputStream)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 {
		t.Fatalf("%s has %d replicas, want 3 (KEYWORKER_REPLICAS=3)", consumer.DefaultInputStream, info.Config.Replicas)
	}

	guests, events := guestEvents(t, 600, 400, 7)
	var stopped string
	for i, ev := range events {
		switch i {
		case 250:
			info, err := streamInfo(t.Context(), admin.js, consumer.DefaultInputStream)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
				t.Fatalf("no leader for %s: %v", consumer.DefaultInputStream, err)
			}
			stopped = info.Cluster.Leader
			stop := 10 * time.Second
			if err := cluster.nodes[stopped].Stop(t.Context(), &stop); err != nil {
				t.Fatalf("stop %s: %v", stopped, err)
			}
			t.Logf("stopped the %s leader %s after %d events", consumer.DefaultInputStream, stopped, i)
		case 500:
			m := scrape(t, "http://"+endpoint(t, workers[0], "9090/tcp"))
			handled, inFlight := sum(m, "keyworker_events_total", nil), sum(m, "keyworker_in_flight", nil)
			if handled == 0 {
				t.Fatal("worker-1 handled no event before it was to be killed: the kill would prove nothing")
			}
			kill(t, workers[0])
			t.Logf("killed worker-1 after %d events published, %v handled by it, %v in flight", i, handled, inFlight)
		case 750:
			if err := cluster.nodes[stopped].Start(t.Context()); err != nil {
				t.Fatalf("start %s again: %v", stopped, err)
			}
			t.Logf("started %s again after %d events", stopped, i)
		}
		if err := publish(t.Context(), pms.js, ev, ev.id, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("published %d events after %s", len(events), time.Since(start).Round(time.Millisecond))

	// Events worker-1 held when killed come back after the ack wait and
	// wait out their claim's lease (30 s) before worker-2 takes them.
	outs := waitSettled(t, admin.js, len(events), 4*time.Minute)
	t.Logf("all events settled after %s", time.Since(start).Round(time.Millisecond))

	subjects := checkOneOutcomeEach(t, events, outs)
	// A check-in is skipped only when its guest checked out since; a
	// check-out only when it came before the check-in (not_holder), which
	// then is skipped too.
	checkIn := map[int]string{}
	for _, ev := range events {
		if ev.subject == schemas.SubjectCheckedIn {
			checkIn[ev.guest] = ev.id
		}
	}
	for _, ev := range events {
		if subjects[ev.id] != schemas.SubjectSkipped {
			continue
		}
		switch {
		case ev.subject == schemas.SubjectCheckedIn && !guests[ev.guest].checkout:
			t.Errorf("check-in %s skipped, but its guest never checked out", ev.id)
		case ev.subject == schemas.SubjectCheckedOut && subjects[checkIn[ev.guest]] != schemas.SubjectSkipped:
			t.Errorf("check-out %s skipped, but its check-in was applied", ev.id)
		}
	}
	checkSeamState(t, sim, guests)
	if st := sim.stats(t); st.MaxConcurrentPerCredential > 1 {
		t.Errorf("Seam saw %d calls at once for one credential, want at most 1", st.MaxConcurrentPerCredential)
	}

	// The restarted node caught up and is a current replica again.
	natstest.WaitFor(t, 60*time.Second, func() error {
		info, err := streamInfo(t.Context(), admin.js, consumer.DefaultInputStream)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("no leader")
		}
		peers := map[string]bool{info.Cluster.Leader: true}
		for _, r := range info.Cluster.Replicas {
			if r.Current && !r.Offline {
				peers[r.Name] = true
			}
		}
		if !peers[stopped] || len(peers) != 3 {
			return fmt.Errorf("current peers %v, want all three including %s", peers, stopped)
		}
		return nil
	})
}

// streamInfo asks for fresh stream information.
func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.CachedInfo(), nil
}

// TestCluster_TwoWorkersStartingTogetherBothBecomeReady starts two replicas
// at the same moment on a fresh cluster, as a Kubernetes Deployment does on
// its first rollout: both race to create the R3 streams, consumer and
// buckets, and both must become ready. Like the compose file and
// Kubernetes, Docker restarts a worker that exits; restarts are logged.
func TestCluster_TwoWorkersStartingTogetherBothBecomeReady(t *testing.T) {
	workerImage, natsImage := requireDocker(t)
	nw := newNetwork(t)
	cluster := startCluster(t, natsImage, nw)
	startSimulator(t, workerImage, nw)
	start := time.Now()
	restart := testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}
	})
	var workers [2]*testcontainers.DockerContainer
	var errs [2]error
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			workers[i], errs[i] = runContainer(t, workerImage, fmt.Sprintf("worker-%d", i+1), nw,
				restart, testcontainers.WithEnv(workerEnv(cluster, nil)), loopbackPorts("9090/tcp"))
		})
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	for i, w := range workers {
		restarts := waitReadyAcrossRestarts(t, w, 90*time.Second)
		if restarts > 0 {
			// Provisioning retries while the cluster forms or the other
			// replica creates the same streams: it must not exit.
			t.Errorf("worker-%d restarted %d times before it was ready; its first exit:\n%s", i+1, restarts, firstExit(w))
		}
	}
	t.Logf("both ready %s after starting", time.Since(start).Round(time.Millisecond))
}

// waitReadyAcrossRestarts polls a worker's /readyz, finding its published
// port again after each restart, and returns how often it restarted.
func waitReadyAcrossRestarts(t *testing.T, c *testcontainers.DockerContainer, within time.Duration) int {
	t.Helper()
	var restarts int
	natstest.WaitFor(t, within, func() error {
		info, err := c.Inspect(t.Context())
		if err != nil {
			return err
		}
		restarts = info.RestartCount
		if info.State == nil || !info.State.Running {
			return fmt.Errorf("not running (restarted %d times)", restarts)
		}
		bindings := info.NetworkSettings.Ports[mobynet.MustParsePort("9090/tcp")]
		if len(bindings) == 0 {
			return errors.New("port 9090 not published yet")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		code, body, err := httpGet(ctx, "http://127.0.0.1:"+bindings[0].HostPort+"/readyz")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	return restarts
}

// firstExit is the first line the worker printed that starts "worker: ".
func firstExit(c *testcontainers.DockerContainer) string {
	for _, l := range logLines(c) {
		if strings.HasPrefix(l, "worker: ") {
			return l
		}
	}
	return "(no exit line)"
}
