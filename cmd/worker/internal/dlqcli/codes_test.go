package dlqcli

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// Seam 400 messages that quote the code they refuse, one per check-in.
var quotingMessages = []struct{ message, code string }{
	{"The code '482913' is already in use", "482913"},
	{"access code is 123456, which is already set on this device", "123456"},
	{"passcode 907152 is not allowed", "907152"},
	{"pin_code: 4455 is too short", "4455"},
	{"card_number 88776655 is not programmable", "88776655"},
}

func TestDLQ_SeamMessageQuotingACodeReachesNoLogNorOutput(t *testing.T) {
	e := newTestEnv(t)
	logs := &consumertest.LockedBuffer{}
	e.startWorker(consumer.WithLogger(zerolog.New(logs).Level(zerolog.TraceLevel)))
	for _, m := range quotingMessages {
		e.fake.FailNext(1, "assign", seamtest.Fault{Kind: seamtest.FaultStatus, Status: http.StatusBadRequest, ErrorType: "invalid_input", Message: m.message})
	}
	e.publishCheckIns(len(quotingMessages), "pin")
	dls := e.waitStream(e.cfg.DeadLetterStream, len(quotingMessages), 15*time.Second)

	outputs := map[string]string{"worker log": logs.String()}
	for _, args := range [][]string{{"dlq", "list"}, {"dlq", "list", "--json"}} {
		r := e.mustCLI(args...)
		outputs[strings.Join(args, " ")] = r.stdout + r.stderr
	}
	for _, m := range dls {
		seq := strconv.FormatUint(m.Sequence, 10)
		for _, args := range [][]string{{"dlq", "show", seq}, {"dlq", "show", "--json", seq}} {
			r := e.mustCLI(args...)
			outputs[strings.Join(args, " ")] = r.stdout + r.stderr
			if !strings.Contains(r.stdout, seamclient.Redacted) || !strings.Contains(r.stdout, "invalid_input") {
				t.Errorf("worker %s: not Seam's refusal with its code redacted:\n%s", strings.Join(args, " "), r.stdout)
			}
		}
		outputs["dead letter "+seq] = string(m.Data)
	}
	for name, out := range outputs {
		for _, m := range quotingMessages {
			// As a token of its own: ids and hashes are hex, and may hold
			// the same digits by chance.
			if regexp.MustCompile(`(^|[^0-9A-Za-z])` + m.code + `([^0-9A-Za-z]|$)`).MatchString(out) {
				t.Errorf("%s shows the code %s:\n%s", name, m.code, out)
			}
		}
	}
	// What the operator needs stays: Seam's words, type and request id.
	shown := e.mustCLI("dlq", "show", strconv.FormatUint(dls[0].Sequence, 10)).stdout
	for _, want := range []string{"permanent: seamclient: 400 invalid_input: ", seamclient.Redacted, "request id "} {
		if !strings.Contains(shown, want) {
			t.Errorf("dlq show lacks %q:\n%s", want, shown)
		}
	}
	if !strings.Contains(logs.String(), "event dead-lettered") {
		t.Fatalf("no dead letter logged:\n%s", logs.String())
	}
}

// A dead letter whose message quotes a code (written by an older worker, or
// by a client that redacts nothing) is masked by show unless --reveal.
func TestDLQShow_MasksCodesInTheErrorMessageUnlessRevealed(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	orig := []byte(`{"specversion":"1.0","id":"evt-msg","source":"pms://test","type":"guest.checked_in","time":"2026-01-01T10:00:00Z",` +
		`"data":{"acs_credential_id":"66666666-6666-4666-8666-666666666602","acs_user_id":"33333333-3333-4333-8333-333333333302"}}`)
	in, err := cli.PublishEvent(ctx, e.js, schemas.SubjectCheckedIn, orig, "")
	if err != nil {
		t.Fatal(err)
	}
	const requestID = "3f2a1b4c-9d8e-4f70-a1b2-c3d4e5f60718"
	dl := schemas.DeadLetter{
		OriginalSubject:        schemas.SubjectCheckedIn,
		OriginalStreamSequence: in.Sequence,
		SourceEventID:          "evt-msg",
		SourceEventSource:      "pms://test",
		Error: schemas.DeadLetterError{Kind: schemas.ErrorKindPermanent, HTTPStatus: 400, SeamErrorType: "invalid_input", SeamRequestID: requestID,
			Message: "seamclient: 400 invalid_input: The code '482913' is already in use (seam-request-id " + requestID + ")"},
		Request:    json.RawMessage(`{"acs_credential_id":"66666666-6666-4666-8666-666666666602","acs_user_id":"33333333-3333-4333-8333-333333333302"}`),
		Attempts:   1,
		Deliveries: 1,
	}
	seq := strconv.FormatUint(e.publishDeadLetter("keyworker-test-msg", dl, orig), 10)
	for _, args := range [][]string{{"dlq", "show", seq}, {"dlq", "show", "--json", seq}, {"dlq", "list"}, {"dlq", "list", "--json"}} {
		r := e.mustCLI(args...)
		if strings.Contains(r.stdout+r.stderr, "482913") {
			t.Errorf("worker %s shows the code:\n%s", strings.Join(args, " "), r.stdout)
		}
		if args[1] == "show" && (!strings.Contains(r.stdout, "already in use") || !strings.Contains(r.stdout, requestID)) {
			t.Errorf("worker %s hides more than the code:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
	for _, args := range [][]string{{"dlq", "show", seq, "--reveal"}, {"dlq", "show", "--json", "--reveal", seq}} {
		if r := e.mustCLI(args...); !strings.Contains(r.stdout, "The code '482913' is already in use") {
			t.Errorf("worker %s does not show the message verbatim:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
}
