package dlqcli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/schemas"
)

// An unset shell variable in a filter (--id "$ID") must not widen the
// selection to every dead letter: purge would delete them all.
func TestDLQ_EmptyFilterValueIsRefusedAndNothingIsDeleted(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	for range 3 {
		if _, err := cli.PublishEvent(context.Background(), e.js, schemas.SubjectCheckedIn, []byte(`not json`), ""); err != nil {
			t.Fatal(err)
		}
	}
	e.waitStream(e.cfg.DeadLetterStream, 3, 10*time.Second)

	filters := []string{"--id", "--subject", "--since", "--until", "--error-kind", "--seam-error-type", "--property"}
	for _, cmd := range [][]string{{"dlq", "purge", "--yes"}, {"dlq", "replay", "--yes"}, {"dlq", "list"}} {
		for _, flag := range filters {
			for _, value := range []string{"", "  "} {
				for _, args := range [][]string{
					append(append([]string{}, cmd...), flag, value),
					append(append([]string{}, cmd...), flag+"="+value),
				} {
					r := e.cli(args...)
					if r.err == nil || cli.ExitCode(r.err) != 2 {
						t.Errorf("worker %q: err %v, want a usage error (exit code 2)\n%s", args, r.err, r.stdout)
						continue
					}
					if msg := r.err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, flag) || !strings.Contains(msg, "empty") {
						t.Errorf("worker %q: %q, want one line saying %s is empty", args, msg, flag)
					}
				}
			}
		}
	}
	// A subject that names nothing once its prefix is dropped is refused too.
	if r := e.cli("dlq", "purge", "--subject", "deadletter.", "--yes"); r.err == nil || cli.ExitCode(r.err) != 2 {
		t.Errorf("purge --subject deadletter.: err %v, want a usage error", r.err)
	}
	if n := len(e.streamMsgs(e.cfg.DeadLetterStream)); n != 3 {
		t.Fatalf("%d dead letters left after refused commands, want all 3", n)
	}
	if rows := e.listJSON(); len(rows) != 3 {
		t.Fatalf("dlq list: %d rows, want 3", len(rows))
	}
	// Left out, the flag selects without it, as before.
	if r := e.mustCLI("dlq", "purge", "--yes"); !strings.Contains(r.stdout, "deleted 3 dead letters") {
		t.Fatalf("purge without filters: %s", r.stdout)
	}
}
