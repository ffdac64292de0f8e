package dlqcli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// testEnv is an embedded JetStream server with the keyworker layout, a
// Seam fake that can be switched to answer 503, and a real worker running
// in process. The CLI is driven through runCLI with NATS_URL pointing at
// the server.
type testEnv struct {
	t       *testing.T
	url     string
	js      jetstream.JetStream
	cfg     consumer.Config
	fake    *seamtest.Fake
	seamURL string
	failing atomic.Bool // the fake answers 503 service_unavailable while set
	stop    func()      // stops the worker, if one runs
}

// testConfig dead-letters an event still failing after a short RetryFor:
// retries_exhausted in about a second.
func testConfig() consumer.Config {
	cfg := consumertest.Config()
	cfg.MaxDeliver = 2
	cfg.RetryFor = 300 * time.Millisecond
	// Seam failing opens the health gate: probe often, so that every
	// event makes its attempts and runs out of RetryFor quickly.
	cfg.GateProbeFirst = 20 * time.Millisecond
	cfg.GateProbeMax = 50 * time.Millisecond
	cfg.RetryBudget = 100 * time.Millisecond
	cfg.RetryMax = 40 * time.Millisecond
	cfg.NakDelay = 20 * time.Millisecond
	cfg.NakDelayMax = 50 * time.Millisecond
	return cfg
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	_, url := natstest.StartTest(t)
	t.Setenv("NATS_URL", url)
	t.Setenv("KEYWORKER_DATA_DIR", t.TempDir())
	t.Setenv("LOG_LEVEL", "warn")
	_, js := natstest.ConnectTest(t, url)
	cfg := testConfig()
	cfg = consumertest.Provision(t, js, cfg)
	e := &testEnv{t: t, url: url, js: js, cfg: cfg, fake: seamtest.New(seamtest.WithAutoCreate()), stop: func() {}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.failing.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"type":"service_unavailable","message":"Down for the test."},"ok":false}`))
			return
		}
		e.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.seamURL = srv.URL
	return e
}

// startWorker runs a real consumer.Worker on its own connection until
// e.stop is called or the test ends.
func (e *testEnv) startWorker(opts ...consumer.Option) {
	e.t.Helper()
	client, err := seamclient.New(e.seamURL, "test-key", seamclient.WithTimeout(e.cfg.SeamTimeout))
	if err != nil {
		e.t.Fatal(err)
	}
	e.stop = consumertest.Run(e.t, consumertest.NewWorker(e.t, e.url, client, e.cfg, opts...))
}

// publishDeadLetter publishes dl, a dead letter of a check-in with
// original orig and outcome id id, as the worker would; it returns its
// sequence in the dead-letter stream.
func (e *testEnv) publishDeadLetter(id string, dl schemas.DeadLetter, orig []byte) uint64 {
	e.t.Helper()
	doc, err := schemas.MarshalDeadLetterEvent("keyworker", id, "R-9", time.Now().UTC(), dl, orig)
	if err != nil {
		e.t.Fatal(err)
	}
	ack, err := cli.PublishEvent(context.Background(), e.js, schemas.DeadLetterSubject(schemas.SubjectCheckedIn), doc, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

// checkIn is one published guest.checked_in event.
type checkIn struct {
	id, cred, user string
}

// publishCheckIns publishes n valid check-ins, each for its own credential.
func (e *testEnv) publishCheckIns(n int, prefix string) []checkIn {
	e.t.Helper()
	out := make([]checkIn, 0, n)
	for i := range n {
		c := checkIn{id: fmt.Sprintf("%s-%d", prefix, i), cred: cli.NewUUID(), user: cli.NewUUID()}
		g := cli.Guest{Credential: c.cred, User: c.user, Reservation: "R-" + c.id, ID: c.id, Source: "pms://test"}
		doc, err := g.Event(schemas.SubjectCheckedIn, time.Now().UTC().Add(-time.Minute))
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := cli.PublishEvent(context.Background(), e.js, schemas.SubjectCheckedIn, doc, ""); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// streamMsgs reads every message of a stream.
func (e *testEnv) streamMsgs(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	st := s.CachedInfo().State
	var out []*jetstream.RawStreamMsg
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

// waitStream waits until stream holds at least n messages and returns them.
func (e *testEnv) waitStream(stream string, n int, within time.Duration) []*jetstream.RawStreamMsg {
	e.t.Helper()
	var msgs []*jetstream.RawStreamMsg
	natstest.WaitFor(e.t, within, func() error {
		msgs = e.streamMsgs(stream)
		if len(msgs) < n {
			return fmt.Errorf("%s holds %d messages, want %d", stream, len(msgs), n)
		}
		return nil
	})
	return msgs
}

// lastSeq is the last sequence of a stream.
func (e *testEnv) lastSeq(stream string) uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), stream)
	if err != nil {
		e.t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// runCLI runs `worker dlq ...` or `worker status ...` in process, as the
// worker's command dispatch does; args start with the command name.
func runCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	switch args[0] {
	case "dlq":
		return Run(ctx, args[1:], stdin, stdout, stderr)
	case "status":
		return RunStatus(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("runCLI: %q is not a command of this package", args[0])
}

// cliResult is what one CLI run printed and returned.
type cliResult struct {
	stdout, stderr string
	err            error
}

// cli runs the worker command in process, with an empty, non-terminal stdin.
func (e *testEnv) cli(args ...string) cliResult {
	e.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := runCLI(ctx, args, strings.NewReader(""), &out, &errb)
	return cliResult{stdout: out.String(), stderr: errb.String(), err: err}
}

// mustCLI runs the command and fails the test if it returns an error.
func (e *testEnv) mustCLI(args ...string) cliResult {
	e.t.Helper()
	r := e.cli(args...)
	if r.err != nil {
		e.t.Fatalf("worker %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r
}

// listJSON runs `dlq list --json` with extra flags and decodes the rows.
func (e *testEnv) listJSON(flags ...string) []map[string]any {
	e.t.Helper()
	r := e.mustCLI(append([]string{"dlq", "list", "--json"}, flags...)...)
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		e.t.Fatalf("dlq list --json is not one JSON array: %v\n%s", err, r.stdout)
	}
	return rows
}

// deadLetter publishes n check-ins while the fake answers 503, and waits
// until each has its retries_exhausted dead letter. It returns the events
// and the dead-letter messages.
func (e *testEnv) deadLetter(n int, prefix string) ([]checkIn, []*jetstream.RawStreamMsg) {
	e.t.Helper()
	e.failing.Store(true)
	before := len(e.streamMsgs(e.cfg.DeadLetterStream))
	events := e.publishCheckIns(n, prefix)
	msgs := e.waitStream(e.cfg.DeadLetterStream, before+n, 15*time.Second)
	return events, msgs[before:]
}

// results decodes the credential results of the given subject.
func (e *testEnv) results(subject string) []schemas.CredentialResult {
	e.t.Helper()
	outs, err := consumertest.Outcomes(context.Background(), e.js, e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []schemas.CredentialResult
	for _, o := range outs {
		if o.Subject == subject {
			out = append(out, o.Result)
		}
	}
	return out
}
