package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
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
func fastConfig() consumer.Config {
	return consumer.Config{
		Concurrency:  16,
		MaxDeliver:   4,
		RetryBudget:  3 * time.Second,
		RetryInitial: 10 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
		NakDelay:     50 * time.Millisecond,
		NakDelayMax:  200 * time.Millisecond,
		BusyDelay:    20 * time.Millisecond,
		SeamTimeout:  2 * time.Second,
		Lease:        10 * time.Second,
		AckWait:      5 * time.Second,
	}
}

func newHarness(t *testing.T, cfg consumer.Config, opts ...seamtest.Option) *harness {
	t.Helper()
	_, url := natstest.StartTest(t)
	nc, js := natstest.ConnectTest(t, url)
	if err := consumer.Provision(context.Background(), js, cfg, false); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	seam := seamtest.NewServer(opts...)
	t.Cleanup(seam.Close)
	return &harness{t: t, url: url, nc: nc, js: js, seam: seam, cfg: cfg}
}

// newWorker builds a worker with its own NATS connection, like a replica.
func (h *harness) newWorker(opts ...consumer.Option) *consumer.Worker {
	h.t.Helper()
	_, js := natstest.ConnectTest(h.t, h.url)
	client, err := seamclient.New(h.seam.URL, "test-key", seamclient.WithTimeout(h.cfg.SeamTimeout))
	if err != nil {
		h.t.Fatal(err)
	}
	w, err := consumer.New(context.Background(), js, client, h.cfg, opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// start runs n worker replicas until the test ends.
func (h *harness) start(n int, opts ...consumer.Option) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		w := h.newWorker(opts...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(ctx); err != nil {
				h.t.Errorf("worker: %v", err)
			}
		}()
	}
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

// event builds a valid guest event document.
func event(subject, id string, at time.Time, d schemas.GuestData) []byte {
	doc, err := schemas.NewEnvelope(subject, "pms://test", id, d.ReservationID, at, d)
	if err != nil {
		panic(err)
	}
	return doc
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
type outcome struct {
	Subject string
	Seq     uint64
	Raw     []byte
	Env     schemas.Envelope
	Result  schemas.CredentialResult
	Skip    schemas.Skipped
	DL      schemas.DeadLetter
}

// sourceID is the id of the input event the outcome is about.
func (o outcome) sourceID() string {
	switch {
	case o.DL.OriginalSubject != "":
		return o.DL.SourceEventID
	case o.Subject == schemas.SubjectSkipped:
		return o.Skip.SourceEventID
	}
	return o.Result.SourceEventID
}

// waitOutcomes polls both outcome streams until they hold at least n
// events, then returns all of them.
func (h *harness) waitOutcomes(n int, within time.Duration) []outcome {
	h.t.Helper()
	var got []outcome
	natstest.WaitFor(h.t, within, func() error {
		got = h.outcomes()
		if len(got) < n {
			return fmt.Errorf("%d outcome events, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// outcomes reads every event of the results and dead-letter streams.
func (h *harness) outcomes() []outcome {
	h.t.Helper()
	ctx := context.Background()
	var out []outcome
	for _, stream := range []string{h.cfg.ResultsStream, h.cfg.DeadLetterStream} {
		s, err := h.js.Stream(ctx, stream)
		if err != nil {
			h.t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			o := outcome{Subject: m.Subject, Seq: seq, Raw: m.Data}
			if stream == h.cfg.DeadLetterStream {
				env, dl, err := schemas.DecodeDeadLetterEvent(m.Data)
				if err != nil {
					h.t.Fatalf("dead letter %d does not decode: %v", seq, err)
				}
				o.Env, o.DL = env, dl
			} else {
				if err := json.Unmarshal(m.Data, &o.Env); err != nil {
					h.t.Fatal(err)
				}
				if m.Subject == schemas.SubjectSkipped {
					_ = json.Unmarshal(o.Env.Data, &o.Skip)
				} else {
					_ = json.Unmarshal(o.Env.Data, &o.Result)
				}
			}
			out = append(out, o)
		}
	}
	return out
}

// waitDrained waits until the durable consumer has nothing pending or
// unacknowledged: every published event has been settled for good.
func (h *harness) waitDrained(within time.Duration) {
	h.t.Helper()
	natstest.WaitFor(h.t, within, func() error {
		c, err := h.js.Consumer(context.Background(), h.cfg.InputStream, h.cfg.Durable)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return fmt.Errorf("consumer: %d pending, %d awaiting ack", info.NumPending, info.NumAckPending)
		}
		return nil
	})
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
