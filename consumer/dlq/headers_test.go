package dlq_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
)

// writeDeadLetterWithHeaders is writeDeadLetter for a dead letter carrying
// original_headers (nil: one written before headers were kept).
func (e *env) writeDeadLetterWithHeaders(id string, original []byte, hdr map[string][]string) uint64 {
	e.t.Helper()
	ctx := context.Background()
	in, err := e.js.Publish(ctx, schemas.SubjectCheckedIn, original)
	if err != nil {
		e.t.Fatal(err)
	}
	dl := schemas.DeadLetter{
		OriginalHeaders:        hdr,
		OriginalSubject:        schemas.SubjectCheckedIn,
		OriginalStreamSequence: in.Sequence,
		SourceEventID:          id,
		SourceEventSource:      "pms://test",
		Error:                  schemas.DeadLetterError{Kind: schemas.ErrorKindPermanent, Message: "test: gave up"},
	}
	doc, err := schemas.MarshalDeadLetterEvent("keyworker", "dl-"+id, "", time.Now().UTC(), dl, original)
	if err != nil {
		e.t.Fatal(err)
	}
	ack, err := e.js.Publish(ctx, schemas.DeadLetterSubject(schemas.SubjectCheckedIn), doc)
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

func TestReplay_RepublishesTheOriginalHeadersLessTheServersOwn(t *testing.T) {
	e := newEnv(t)
	body := []byte(`{"acs_credential_id":"` + testCred + `","acs_user_id":"` + testUser + `"}`)
	binary := map[string][]string{
		"ce-specversion": {"1.0"}, "ce-id": {"bin"}, "ce-source": {"pms://test"},
		"ce-type": {schemas.SubjectCheckedIn}, "ce-time": {"2026-11-30T10:00:00Z"},
		"ce-datacontenttype": {"application/json"}, "X-Multi": {"one", "two"},
		// Acted on by the server: passed on, they would make the replay a
		// duplicate or have it refused.
		"Nats-Msg-Id": {"pms-1"}, "Nats-Expected-Stream": {"ELSEWHERE"}, "Nats-Expected-Last-Sequence": {"1"},
		schemas.HeaderReplayOf: {"99"}, // from an earlier replay
	}
	sBin := e.writeDeadLetterWithHeaders("bin", body, binary)
	sNone := e.writeDeadLetterWithHeaders("none", guestEvent(schemas.SubjectCheckedIn, "none"), map[string][]string{})
	sOld := e.writeDeadLetterWithHeaders("old", guestEvent(schemas.SubjectCheckedIn, "old"), nil)

	ctx := context.Background()
	entries, err := e.q.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	before := e.inputLastSeq()
	rep, err := e.q.Replay(ctx, entries, dlq.ReplayOptions{})
	if err != nil || rep.Replayed != 3 {
		t.Fatalf("replay %+v, %v", rep, err)
	}
	msgs := e.inputMessages(before)
	if len(msgs) != 3 {
		t.Fatalf("%d replays published, want 3", len(msgs))
	}
	want := []map[string][]string{
		{
			"ce-specversion": {"1.0"}, "ce-id": {"bin"}, "ce-source": {"pms://test"},
			"ce-type": {schemas.SubjectCheckedIn}, "ce-time": {"2026-11-30T10:00:00Z"},
			"ce-datacontenttype": {"application/json"}, "X-Multi": {"one", "two"},
		},
		{},
		{schemas.HeaderContentType: {schemas.ContentType}}, // as before headers were kept
	}
	for i, dlSeq := range []uint64{sBin, sNone, sOld} {
		got := map[string][]string(msgs[i].Header)
		if got[schemas.HeaderReplayOf][0] != strconv.FormatUint(dlSeq, 10) || got["Nats-Msg-Id"][0] != rep.Results[i].MsgID {
			t.Errorf("replay %d: replay headers %v", i, got)
		}
		if got["Nats-Expected-Stream"][0] != e.cfg.InputStream {
			t.Errorf("replay %d: Nats-Expected-Stream %v, want replay's own %s", i, got["Nats-Expected-Stream"], e.cfg.InputStream)
		}
		// Replay's own headers checked, the rest must be the original's.
		delete(got, schemas.HeaderReplayOf)
		delete(got, "Nats-Msg-Id")
		delete(got, "Nats-Expected-Stream")
		if len(got) != len(want[i]) {
			t.Errorf("replay %d: headers %v, want %v", i, got, want[i])
		}
		for k, v := range want[i] {
			if len(got[k]) != len(v) || (len(v) > 0 && (got[k][0] != v[0] || got[k][len(v)-1] != v[len(v)-1])) {
				t.Errorf("replay %d: header %s is %v, want %v", i, k, got[k], v)
			}
		}
	}
}
