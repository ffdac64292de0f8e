package dlqcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

func TestDLQReplay_ReplaysExactlyTheRetriesExhaustedDeadLettersOnceSeamRecovers(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	events, dls := e.deadLetter(10, "evt")
	// An invalid event dead-letters too, with another kind: it must not be replayed.
	if _, err := cli.PublishEvent(context.Background(), e.js, schemas.SubjectCheckedIn, []byte(`{"not":"an event"}`), ""); err != nil {
		t.Fatal(err)
	}
	e.waitStream(e.cfg.DeadLetterStream, 11, 10*time.Second)

	rows := e.listJSON("--error-kind", "retries_exhausted")
	if len(rows) != 10 {
		t.Fatalf("dlq list --error-kind retries_exhausted: %d rows, want 10", len(rows))
	}
	for _, r := range rows {
		if r["error_kind"] != "retries_exhausted" || r["seam_error_type"] != "service_unavailable" || r["original_subject"] != schemas.SubjectCheckedIn {
			t.Fatalf("row %v", r)
		}
	}
	table := e.mustCLI("dlq", "list").stdout
	for _, want := range []string{"SEQ", "ERROR KIND", "SEAM ERROR", "RESERVATION", "ATTEMPTS", "invalid_event", "service_unavailable", "R-evt-3"} {
		if !strings.Contains(table, want) {
			t.Errorf("dlq list table lacks %q:\n%s", want, table)
		}
	}

	e.failing.Store(false)
	r := e.mustCLI("dlq", "replay", "--error-kind", "retries_exhausted", "--yes")
	if !strings.Contains(r.stdout, "replayed 10, skipped 0, failed 0") {
		t.Fatalf("replay summary:\n%s", r.stdout)
	}

	dlSeqs := make([]uint64, 0, len(dls))
	for _, m := range dls {
		dlSeqs = append(dlSeqs, m.Sequence)
	}
	var assigned []string
	natstest.WaitFor(t, 15*time.Second, func() error {
		assigned = assigned[:0]
		for _, res := range e.results(schemas.SubjectAssigned) {
			if !slices.Contains(dlSeqs, res.ReplayOf) {
				return fmt.Errorf("result of %s replays dead letter %d, not one of %v", res.SourceEventID, res.ReplayOf, dlSeqs)
			}
			assigned = append(assigned, res.SourceEventID)
		}
		if len(assigned) < 10 {
			return fmt.Errorf("%d credential.assigned results, want 10", len(assigned))
		}
		return nil
	})
	slices.Sort(assigned)
	if len(assigned) != 10 || len(slices.Compact(slices.Clone(assigned))) != 10 {
		t.Fatalf("assigned %v, want each of the ten once", assigned)
	}
	for _, ev := range events {
		if !slices.Contains(assigned, ev.id) || !e.fake.IsAssigned(ev.cred, ev.user) {
			t.Errorf("event %s: not assigned after replay", ev.id)
		}
	}
	// Replay deletes nothing.
	if rows := e.listJSON(); len(rows) != 11 {
		t.Fatalf("dlq list after replay: %d dead letters, want all 11", len(rows))
	}
}

func TestDLQReplay_DryRunPublishesNothingAndRateSpacesPublishes(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	const n = 6
	_, dls := e.deadLetter(n, "evt")
	e.stop() // the replays stay in the input stream: only publishing is measured

	before := e.lastSeq(e.cfg.InputStream)
	r := e.mustCLI("dlq", "replay", "--error-kind", "retries_exhausted", "--dry-run")
	if e.lastSeq(e.cfg.InputStream) != before {
		t.Fatal("--dry-run published")
	}
	if !strings.Contains(r.stdout, fmt.Sprintf("dry run: would replay %d, skip 0, fail 0; nothing was published", n)) {
		t.Fatalf("dry-run summary:\n%s", r.stdout)
	}
	for _, m := range dls {
		if !strings.Contains(r.stdout, fmt.Sprintf("would replay %6d", m.Sequence)) {
			t.Errorf("dry run does not name dead letter %d:\n%s", m.Sequence, r.stdout)
		}
	}

	// Without --yes and with no terminal to ask on, replay refuses.
	r = e.cli("dlq", "replay", "--error-kind", "retries_exhausted")
	if r.err == nil || cli.ExitCode(r.err) != 2 || !strings.Contains(r.err.Error(), "--yes") {
		t.Fatalf("replay without --yes: %v", r.err)
	}
	if e.lastSeq(e.cfg.InputStream) != before {
		t.Fatal("replay without --yes published")
	}

	start := time.Now()
	r = e.mustCLI("dlq", "replay", "--error-kind", "retries_exhausted", "--rate", "5", "--yes")
	elapsed := time.Since(start)
	if !strings.Contains(r.stdout, fmt.Sprintf("replayed %d, skipped 0, failed 0", n)) {
		t.Fatalf("replay summary:\n%s", r.stdout)
	}
	if least := time.Duration(n-1) * time.Second / 5; elapsed < least {
		t.Fatalf("--rate 5 replayed %d events in %s, want at least %s", n, elapsed, least)
	}
	if got := e.lastSeq(e.cfg.InputStream) - before; got != n {
		t.Fatalf("%d events published, want %d", got, n)
	}
}

func TestDLQReplay_SkipsAnEventThatCompletedAndRefusesAFourthReplay(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	e.deadLetter(2, "evt")
	e.failing.Store(false)
	rows := e.listJSON("--id", "evt-1")
	if len(rows) != 1 {
		t.Fatalf("dead letters of evt-1: %v", rows)
	}
	dlSeq := fmt.Sprint(rows[0]["sequence"])

	// evt-0: the first replay completes it; the next is skipped by idempotency.
	e.mustCLI("dlq", "replay", "--id", "evt-0", "--yes")
	natstest.WaitFor(t, 10*time.Second, func() error {
		if len(e.results(schemas.SubjectAssigned)) != 1 {
			return errors.New("no credential.assigned for the replay yet")
		}
		return nil
	})
	before := e.lastSeq(e.cfg.InputStream)
	r := e.mustCLI("dlq", "replay", "--id", "evt-0", "--yes")
	if !strings.Contains(r.stdout, "replayed 0, skipped 1, failed 0") || !strings.Contains(r.stdout, "already completed") {
		t.Fatalf("replay of a completed event:\n%s", r.stdout)
	}
	if e.lastSeq(e.cfg.InputStream) != before {
		t.Fatal("a completed event was replayed")
	}

	// evt-1: with no worker to settle them, three replays are allowed, the fourth refused.
	e.stop()
	for i := 1; i <= 3; i++ {
		r := e.mustCLI("dlq", "replay", "--id", "evt-1", "--yes")
		if !strings.Contains(r.stdout, "replayed 1, skipped 0, failed 0") {
			t.Fatalf("replay %d:\n%s", i, r.stdout)
		}
	}
	before = e.lastSeq(e.cfg.InputStream)
	r = e.mustCLI("dlq", "replay", "--id", "evt-1", "--yes")
	if !strings.Contains(r.stdout, "replayed 0, skipped 1, failed 0") || !strings.Contains(r.stdout, "replay limit") ||
		!strings.Contains(r.stdout, "--force") || !strings.Contains(r.stdout, " "+dlSeq+"  guest.checked_in  evt-1") {
		t.Fatalf("fourth replay:\n%s", r.stdout)
	}
	if e.lastSeq(e.cfg.InputStream) != before {
		t.Fatal("the loop guard let a fourth replay through")
	}
	r = e.mustCLI("dlq", "replay", "--id", "evt-1", "--yes", "--force")
	if !strings.Contains(r.stdout, "replayed 1, skipped 0, failed 0") {
		t.Fatalf("forced replay:\n%s", r.stdout)
	}
}

// pinCredential is a Seam PIN credential with a code, as a dead letter may
// carry it as the last known credential.
const pinCredential = `{"acs_credential_id":"66666666-6666-4666-8666-666666666601","display_name":"Guest PIN",` +
	`"code":"482913","access_method":"code","card_number":"99887766","is_managed":true}`

func TestDLQShow_MasksCredentialCodesUnlessRevealed(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	orig := []byte(`{"specversion":"1.0","id":"evt-pin","source":"pms://test","type":"guest.checked_in","time":"2026-01-01T10:00:00Z",` +
		`"data":{"acs_credential_id":"66666666-6666-4666-8666-666666666601","acs_user_id":"33333333-3333-4333-8333-333333333301"}}`)
	in, err := cli.PublishEvent(ctx, e.js, schemas.SubjectCheckedIn, orig, "")
	if err != nil {
		t.Fatal(err)
	}
	dl := schemas.DeadLetter{
		OriginalSubject:        schemas.SubjectCheckedIn,
		OriginalStreamSequence: in.Sequence,
		SourceEventID:          "evt-pin",
		SourceEventSource:      "pms://test",
		Error:                  schemas.DeadLetterError{Kind: schemas.ErrorKindPermanent, Message: "consumer: handler panicked: test"},
		Request:                json.RawMessage(`{"acs_credential_id":"66666666-6666-4666-8666-666666666601","acs_user_id":"33333333-3333-4333-8333-333333333301"}`),
		ACSCredential:          json.RawMessage(pinCredential),
		Attempts:               1,
		Deliveries:             1,
	}
	n := e.publishDeadLetter("keyworker-test", dl, orig)
	seq := strconv.FormatUint(n, 10)

	for _, args := range [][]string{{"dlq", "show", seq}, {"dlq", "show", "--json", seq}, {"dlq", "list", "--json"}, {"dlq", "list"}} {
		r := e.mustCLI(args...)
		for _, secret := range []string{"482913", "99887766"} {
			if strings.Contains(r.stdout, secret) || strings.Contains(r.stderr, secret) {
				t.Errorf("worker %s prints the secret %s:\n%s%s", strings.Join(args, " "), secret, r.stdout, r.stderr)
			}
		}
	}
	shown := e.mustCLI("dlq", "show", seq).stdout
	for _, want := range []string{`"code": "****"`, `"card_number": "****"`, `"id": "evt-pin"`, "Seam request:", `"acs_user_id": "33333333-3333-4333-8333-333333333301"`, "handler panicked", "--reveal"} {
		if !strings.Contains(shown, want) {
			t.Errorf("dlq show lacks %s:\n%s", want, shown)
		}
	}
	revealed := e.mustCLI("dlq", "show", seq, "--reveal").stdout
	if !strings.Contains(revealed, `"code": "482913"`) || !strings.Contains(revealed, `"card_number": "99887766"`) {
		t.Errorf("dlq show --reveal does not show the code:\n%s", revealed)
	}

	r := e.cli("dlq", "show", strconv.FormatUint(n+100, 10))
	if r.err == nil || !strings.Contains(r.err.Error(), "no dead letter at sequence") {
		t.Fatalf("show of a missing sequence: %v", r.err)
	}
}

func TestDLQPurge_DeletesMatchingDeadLettersOnlyWithYes(t *testing.T) {
	e := newTestEnv(t)
	e.startWorker()
	e.deadLetter(3, "evt")
	if _, err := cli.PublishEvent(context.Background(), e.js, schemas.SubjectCheckedOut, []byte(`not json`), ""); err != nil {
		t.Fatal(err)
	}
	e.waitStream(e.cfg.DeadLetterStream, 4, 10*time.Second)

	r := e.cli("dlq", "purge", "--error-kind", "retries_exhausted")
	if r.err == nil || cli.ExitCode(r.err) != 2 || !strings.Contains(r.err.Error(), "3 dead letters match; pass --yes") {
		t.Fatalf("purge without --yes: %v", r.err)
	}
	if rows := e.listJSON(); len(rows) != 4 {
		t.Fatalf("purge without --yes deleted: %d left", len(rows))
	}
	r = e.mustCLI("dlq", "purge", "--error-kind", "retries_exhausted", "--yes")
	if !strings.Contains(r.stdout, "deleted 3 dead letters") {
		t.Fatalf("purge: %s", r.stdout)
	}
	rows := e.listJSON()
	if len(rows) != 1 || rows[0]["error_kind"] != "invalid_event" || rows[0]["original_subject"] != schemas.SubjectCheckedOut {
		t.Fatalf("left after purge: %v", rows)
	}
}

func TestDLQ_EveryCommandHasHelpWithAnExample(t *testing.T) {
	e := newTestEnv(t)
	for _, args := range [][]string{
		{"dlq", "--help"}, {"dlq", "list", "--help"}, {"dlq", "show", "--help"},
		{"dlq", "replay", "--help"}, {"dlq", "purge", "--help"}, {"status", "--help"},
	} {
		r := e.cli(args...)
		if r.err != nil || !strings.Contains(r.stdout, "Example:") || !strings.Contains(r.stdout, "Usage: worker") {
			t.Errorf("worker %s: %v\n%s", strings.Join(args, " "), r.err, r.stdout)
		}
	}
}

func TestDLQ_BadFlagsExitTwoWithOneLine(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq"}, "say list, show, replay or purge"},
		{[]string{"dlq", "frob"}, `unknown subcommand "frob"`},
		{[]string{"dlq", "list", "--since", "yesterday"}, "--since"},
		{[]string{"dlq", "list", "--until", "-2h"}, "--until"},
		{[]string{"dlq", "list", "--error-kind", "flaky"}, "error kind"},
		{[]string{"dlq", "list", "--subject", "guest.left"}, "subject"},
		{[]string{"dlq", "list", "--limit", "-1"}, "limit"},
		{[]string{"dlq", "list", "--since", "1h", "--until", "2h"}, "before since"},
		{[]string{"dlq", "list", "--bogus"}, "bogus"},
		{[]string{"dlq", "list", "stray"}, "unexpected argument"},
		{[]string{"dlq", "show"}, "exactly one"},
		{[]string{"dlq", "show", "abc"}, "not a dead-letter sequence"},
		{[]string{"dlq", "replay", "--rate", "-1"}, "--rate"},
		{[]string{"status", "--bogus"}, "bogus"},
	} {
		r := e.cli(tc.args...)
		if r.err == nil || cli.ExitCode(r.err) != 2 {
			t.Errorf("worker %s: err %v, want a usage error", strings.Join(tc.args, " "), r.err)
			continue
		}
		if msg := r.err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
			t.Errorf("worker %s: %q, want one line mentioning %q", strings.Join(tc.args, " "), msg, tc.want)
		}
	}
}

func TestDLQ_UnreachableNATSFailsWithOneLine(t *testing.T) {
	t.Setenv("NATS_URL", "nats://"+consumertest.FreeAddr(t))
	t.Setenv("KEYWORKER_DATA_DIR", t.TempDir())
	for _, args := range [][]string{{"dlq", "list"}, {"dlq", "replay", "--yes"}, {"status"}} {
		var out, errb strings.Builder
		err := runCLI(context.Background(), args, strings.NewReader(""), &out, &errb)
		if err == nil || cli.ExitCode(err) != 1 || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "NATS_URL") {
			t.Errorf("worker %s: %v, want one line naming NATS_URL", strings.Join(args, " "), err)
		}
	}
}

func TestDLQParseWhen_AcceptsRFC3339AndDurationsAgo(t *testing.T) {
	now := time.Date(2026, 11, 5, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                          {},
		"2026-11-01T08:30:00Z":      time.Date(2026, 11, 1, 8, 30, 0, 0, time.UTC),
		"2026-11-01T08:30:00+01:00": time.Date(2026, 11, 1, 7, 30, 0, 0, time.UTC),
		"2h":                        now.Add(-2 * time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
		"7d":                        now.Add(-7 * 24 * time.Hour),
	} {
		got, err := parseWhen(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-1h", "2026-11-01", "xd"} {
		if _, err := parseWhen(in, now); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestDLQProgress_OffATerminalPrintsEveryDeadLetterAndLogsProgress(t *testing.T) {
	var out, errb, logs strings.Builder
	p := newProgress(&out, &errb, zerolog.New(&logs), 3, false)
	p.every = 0 // log at every step instead of every few seconds
	p.result(dlq.Result{Sequence: 7, OriginalSubject: schemas.SubjectCheckedIn, SourceEventID: "a", Action: dlq.ActionReplayed, InputSequence: 40})
	p.result(dlq.Result{Sequence: 8, OriginalSubject: schemas.SubjectCheckedIn, SourceEventID: "b", Action: dlq.ActionSkipped, Err: fmt.Errorf("%w: outcome credential.assigned", dlq.ErrCompleted)})
	p.result(dlq.Result{Sequence: 9, OriginalSubject: schemas.SubjectCheckedOut, Action: dlq.ActionFailed, Err: dlq.ErrOriginalUnavailable})
	p.finish()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "-> input sequence 40") || !strings.Contains(lines[1], "already completed") ||
		!strings.Contains(lines[2], "(no event id)") || !strings.Contains(lines[2], "original event unavailable") {
		t.Fatalf("result lines:\n%s", out.String())
	}
	if n := strings.Count(logs.String(), `"message":"replay progress"`); n != 3 || !strings.Contains(logs.String(), `"done":3,"total":3,"replayed":1,"skipped":1,"failed":1`) {
		t.Fatalf("progress logs:\n%s", logs.String())
	}
	if errb.Len() != 0 {
		t.Fatalf("terminal progress line written off a terminal: %q", errb.String())
	}
}
