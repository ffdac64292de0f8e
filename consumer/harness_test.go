package consumer_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// harness is a real embedded JetStream server with the keyworker layout,
// a Seam fake, and helpers to publish events and read outcomes.
type harness struct {
	t    *testing.T
	url  string
	nc   *nats.Conn
	js   jetstream.JetStream
	seam *seamtest.Server
	cfg  consumer.Config
}

// fastConfig keeps retries short so tests finish in seconds.
func fastConfig() consumer.Config { return consumertest.Config() }

func newHarness(t *testing.T, cfg consumer.Config, opts ...seamtest.Option) *harness {
	t.Helper()
	_, url := natstest.StartTest(t)
	nc, js := natstest.ConnectTest(t, url)
	cfg = consumertest.Provision(t, js, cfg)
	seam := seamtest.NewServer(opts...)
	t.Cleanup(seam.Close)
	return &harness{t: t, url: url, nc: nc, js: js, seam: seam, cfg: cfg}
}

// newWorker builds a worker with its own NATS connection, like a replica.
func (h *harness) newWorker(opts ...consumer.Option) *consumer.Worker {
	h.t.Helper()
	return consumertest.NewWorker(h.t, h.url, h.seamClient(), h.cfg, opts...)
}

// newWorkerWith builds a worker with its own connection and the given
// Seam caller. A non-empty owner names it in claims and leases; the
// harness's workers otherwise share h.cfg.Owner, so they cannot see each
// other's claims as foreign.
func (h *harness) newWorkerWith(seam consumer.SeamCaller, owner string) *consumer.Worker {
	h.t.Helper()
	cfg := h.cfg
	if owner != "" {
		cfg.Owner = owner
	}
	return consumertest.NewWorker(h.t, h.url, seam, cfg)
}

// runWorkerWith runs one worker with the given Seam caller until the test ends.
func (h *harness) runWorkerWith(seam consumer.SeamCaller) {
	h.t.Helper()
	consumertest.Run(h.t, h.newWorkerWith(seam, ""))
}

// seamClient is a real client of the harness's Seam fake.
func (h *harness) seamClient() *seamclient.Client {
	h.t.Helper()
	c, err := seamclient.New(h.seam.URL, "test-key", seamclient.WithTimeout(h.cfg.SeamTimeout))
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// start runs n worker replicas until the test ends.
func (h *harness) start(n int, opts ...consumer.Option) {
	h.t.Helper()
	for range n {
		consumertest.Run(h.t, h.newWorker(opts...))
	}
}

// event builds a valid guest event document.
func event(subject, id string, at time.Time, d schemas.GuestData) []byte {
	return consumertest.Event(subject, "pms://test", id, at, d)
}

// publish publishes raw bytes to an input subject; msgID may be empty.
func (h *harness) publish(subject string, doc []byte, msgID string) uint64 {
	h.t.Helper()
	msg := &nats.Msg{Subject: subject, Data: doc, Header: nats.Header{}}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := h.js.PublishMsg(context.Background(), msg, opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence
}

// outcome is one event read back from the results or dead-letter stream.
type outcome = consumertest.Outcome

// waitOutcomes polls both outcome streams until they hold at least n
// events, then returns all of them.
func (h *harness) waitOutcomes(n int, within time.Duration) []outcome {
	h.t.Helper()
	return consumertest.WaitOutcomes(h.t, h.js, h.cfg, n, within)
}

// outcomes reads every event of the results and dead-letter streams.
func (h *harness) outcomes() []outcome {
	h.t.Helper()
	out, err := consumertest.Outcomes(context.Background(), h.js, h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// waitDrained waits until every published event has been settled for good.
func (h *harness) waitDrained(within time.Duration) {
	h.t.Helper()
	consumertest.WaitDrained(h.t, h.js, h.cfg, within)
}

func mustJSONEqual(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got invalid JSON: %v", err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("want invalid JSON: %v", err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Fatalf("JSON differs:\n got %s\nwant %s", gb, wb)
	}
}
