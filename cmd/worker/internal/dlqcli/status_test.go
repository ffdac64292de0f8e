package dlqcli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
)

func TestStatus_JSONReportsThePendingEventsOfAStoppedWorker(t *testing.T) {
	e := newTestEnv(t)
	const n = 7
	e.publishCheckIns(n, "pending") // no worker runs: all pending
	// The consumer's pending count follows the stream a moment later.
	natstest.WaitFor(t, 5*time.Second, func() error {
		c, err := e.js.Consumer(context.Background(), e.cfg.InputStream, e.cfg.Durable)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending != n {
			return fmt.Errorf("%d pending, want %d", info.NumPending, n)
		}
		return nil
	})

	r := e.mustCLI("status", "--json")
	var st dlq.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if !st.Consumer.Found || st.Consumer.Pending != n || st.Consumer.AckPending != 0 || st.Consumer.Redelivered != 0 {
		t.Fatalf("consumer %+v, want %d pending", st.Consumer, n)
	}
	if len(st.Streams) != 3 || st.Streams[0].Name != e.cfg.InputStream || st.Streams[0].Messages != n || st.Streams[0].Bytes == 0 {
		t.Fatalf("streams %+v", st.Streams)
	}
	if st.DeadLetters.Total != 0 || !st.Idempotency.Found || st.Idempotency.Records != 0 {
		t.Fatalf("status %+v", st)
	}

	text := e.mustCLI("status").stdout
	for _, want := range []string{"GUEST_EVENTS", "CREDENTIAL_RESULTS", "DEAD_LETTERS", "7 pending", "Idempotency records: 0"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
}

func TestStatus_CountsDeadLettersByKindAndIdempotencyRecords(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	e.deadLetter(3, "evt")
	e.stop()
	var st dlq.Status
	if err := json.Unmarshal([]byte(e.mustCLI("status", "--json").stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.DeadLetters.Total != 3 || st.DeadLetters.ByErrorKind["retries_exhausted"] != 3 || st.Idempotency.Records != 3 {
		t.Fatalf("status %+v", st)
	}
	if st.Consumer.Pending != 0 || st.Consumer.AckPending != 0 {
		t.Fatalf("consumer %+v, want drained", st.Consumer)
	}
	if text := e.mustCLI("status").stdout; !strings.Contains(text, "Dead letters: 3 (retries_exhausted 3)") {
		t.Errorf("status:\n%s", text)
	}
}
