package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
)

func TestScan_FiltersBySubjectKindSeamTypeEventIDAndTime(t *testing.T) {
	e := newEnv(t)
	in, out := schemas.SubjectCheckedIn, schemas.SubjectCheckedOut
	s1 := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "a"), id: "a", kind: schemas.ErrorKindRetriesExhausted})
	s2 := e.writeDeadLetter(deadLetter{subject: out, original: guestEvent(out, "b"), id: "b", kind: schemas.ErrorKindPermanent, seamType: "acs_credential_not_found"})
	s3 := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "c"), id: "c", kind: schemas.ErrorKindPermanent, seamType: "acs_user_not_found"})
	s4 := e.writeDeadLetter(deadLetter{subject: in, original: []byte("not json"), kind: schemas.ErrorKindInvalidEvent})
	ctx := context.Background()

	all, err := e.q.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sequences(all), []uint64{s1, s2, s3, s4}; !slices.Equal(got, want) {
		t.Fatalf("all: %v, want %v", got, want)
	}
	for _, tc := range []struct {
		name string
		f    dlq.Filter
		want []uint64
	}{
		{"subject", dlq.Filter{Subject: out}, []uint64{s2}},
		{"error kind", dlq.Filter{ErrorKind: schemas.ErrorKindPermanent}, []uint64{s2, s3}},
		{"seam error type", dlq.Filter{SeamErrorType: "acs_user_not_found"}, []uint64{s3}},
		{"event id", dlq.Filter{SourceEventID: "a"}, []uint64{s1}},
		{"subject and kind", dlq.Filter{Subject: in, ErrorKind: schemas.ErrorKindPermanent}, []uint64{s3}},
		{"since, inclusive", dlq.Filter{Since: all[2].Time}, []uint64{s3, s4}},
		{"until, inclusive", dlq.Filter{Until: all[1].Time}, []uint64{s1, s2}},
		{"since and until", dlq.Filter{Since: all[1].Time, Until: all[2].Time}, []uint64{s2, s3}},
		{"limit", dlq.Filter{Limit: 2}, []uint64{s1, s2}},
		{"limit after filter", dlq.Filter{Subject: in, Limit: 2}, []uint64{s1, s3}},
		{"nothing", dlq.Filter{SourceEventID: "zzz"}, []uint64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.q.List(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sequences(got), tc.want) {
				t.Fatalf("got %v, want %v", sequences(got), tc.want)
			}
		})
	}
}

func TestScan_ListsAnUndecodableDeadLetterWithItsError(t *testing.T) {
	e := newEnv(t)
	ack, err := e.js.Publish(context.Background(), schemas.DeadLetterSubject(schemas.SubjectCheckedIn), []byte(`{"garbage":true}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.q.List(context.Background(), dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Sequence != ack.Sequence || !errors.Is(got[0].Err, dlq.ErrUndecodable) {
		t.Fatalf("got %+v, want the undecodable dead letter %d", got, ack.Sequence)
	}
	if s := got[0].Summary(); s.OriginalSubject != schemas.SubjectCheckedIn || s.DecodeError == "" {
		t.Fatalf("summary %+v", s)
	}
	// A condition on the content cannot match it.
	kinds, err := e.q.List(context.Background(), dlq.Filter{ErrorKind: schemas.ErrorKindInvalidEvent})
	if err != nil || len(kinds) != 0 {
		t.Fatalf("by kind: %v, %v", kinds, err)
	}
}

func TestScan_MissingStreamIsErrStreamNotFound(t *testing.T) {
	e := newEnv(t)
	if err := e.js.DeleteStream(context.Background(), e.cfg.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	_, err := e.q.List(context.Background(), dlq.Filter{})
	if !errors.Is(err, dlq.ErrStreamNotFound) {
		t.Fatalf("err %v, want ErrStreamNotFound", err)
	}
}

func TestFilter_ValidateRefusesUnknownSubjectKindAndEmptyRange(t *testing.T) {
	now := time.Now()
	for _, f := range []dlq.Filter{
		{Subject: "guest.checked_sideways"},
		{ErrorKind: "flaky"},
		{Limit: -1},
		{Since: now, Until: now.Add(-time.Second)},
	} {
		if err := f.Validate(); !errors.Is(err, dlq.ErrInvalidFilter) {
			t.Errorf("%+v: err %v, want ErrInvalidFilter", f, err)
		}
	}
}

func TestGet_ReturnsTheDeadLetterOrErrNotFound(t *testing.T) {
	e := newEnv(t)
	seq := e.writeDeadLetter(deadLetter{subject: schemas.SubjectCheckedIn, original: guestEvent(schemas.SubjectCheckedIn, "a"), id: "a", kind: schemas.ErrorKindPermanent})
	got, err := e.q.Get(context.Background(), seq)
	if err != nil || got.DeadLetter.SourceEventID != "a" || got.Reservation() != "R-a" {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := e.q.Get(context.Background(), seq+10); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("err %v, want ErrNotFound", err)
	}
}

func TestOriginal_OmittedOriginalIsReadFromTheInputStreamAndChecked(t *testing.T) {
	e := newEnv(t)
	in := schemas.SubjectCheckedIn
	orig := guestEvent(in, "big")
	seq := e.writeDeadLetter(deadLetter{subject: in, original: orig, id: "big", kind: schemas.ErrorKindPermanent, omit: true})
	ctx := context.Background()
	entry, err := e.q.Get(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	if entry.DeadLetter.OriginalEventEncoding != schemas.EncodingOmitted {
		t.Fatalf("encoding %q", entry.DeadLetter.OriginalEventEncoding)
	}
	got, err := e.q.Original(ctx, entry)
	if err != nil || !bytes.Equal(got, orig) {
		t.Fatalf("original %q, %v", got, err)
	}

	// Another message at that sequence (the original aged out and the
	// sequence was reused in a rebuilt stream, say) is refused.
	entry.DeadLetter.OriginalSHA256 = strings.Repeat("0", 64)
	if _, err := e.q.Original(ctx, entry); !errors.Is(err, dlq.ErrOriginalUnavailable) {
		t.Fatalf("mismatch: err %v, want ErrOriginalUnavailable", err)
	}
	// An original the input stream no longer holds is unavailable.
	s, _ := e.js.Stream(ctx, e.cfg.InputStream)
	if err := s.DeleteMsg(ctx, entry.DeadLetter.OriginalStreamSequence); err != nil {
		t.Fatal(err)
	}
	entry, _ = e.q.Get(ctx, seq)
	if _, err := e.q.Original(ctx, entry); !errors.Is(err, dlq.ErrOriginalUnavailable) {
		t.Fatalf("gone: err %v, want ErrOriginalUnavailable", err)
	}
}

func TestReplay_PublishesExactOriginalBytesWithReplayHeaderAndKeepsTheDeadLetter(t *testing.T) {
	e := newEnv(t)
	in, out := schemas.SubjectCheckedIn, schemas.SubjectCheckedOut
	origA := guestEvent(in, "a")
	origB := []byte("{\"specversion\": \"1.0\",  \"odd\" : \"spacing\"}\n") // not embeddable as JSON: base64
	origC := guestEvent(out, "c")
	sA := e.writeDeadLetter(deadLetter{subject: in, original: origA, id: "a", kind: schemas.ErrorKindRetriesExhausted})
	sB := e.writeDeadLetter(deadLetter{subject: in, original: origB, kind: schemas.ErrorKindInvalidEvent})
	sC := e.writeDeadLetter(deadLetter{subject: out, original: origC, id: "c", kind: schemas.ErrorKindPermanent, omit: true})
	ctx := context.Background()
	entries, err := e.q.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	before := e.inputLastSeq()
	var seen []uint64
	rep, err := e.q.Replay(ctx, entries, dlq.ReplayOptions{OnResult: func(r dlq.Result) { seen = append(seen, r.Sequence) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replayed != 3 || rep.Skipped != 0 || rep.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
	if !slices.Equal(seen, []uint64{sA, sB, sC}) {
		t.Fatalf("progress saw %v", seen)
	}
	msgs := e.inputMessages(before)
	if len(msgs) != 3 {
		t.Fatalf("%d messages published, want 3", len(msgs))
	}
	ids := map[string]bool{}
	for i, want := range []struct {
		subject string
		data    []byte
		dlSeq   uint64
	}{{in, origA, sA}, {in, origB, sB}, {out, origC, sC}} {
		m := msgs[i]
		if m.Subject != want.subject || !bytes.Equal(m.Data, want.data) {
			t.Errorf("replay %d: %s %q, want %s %q", i, m.Subject, m.Data, want.subject, want.data)
		}
		if got := m.Header.Get(schemas.HeaderReplayOf); got != strconv.FormatUint(want.dlSeq, 10) {
			t.Errorf("replay %d: %s %q, want %d", i, schemas.HeaderReplayOf, got, want.dlSeq)
		}
		id := m.Header.Get("Nats-Msg-Id")
		if id == "" || ids[id] || id != rep.Results[i].MsgID || rep.Results[i].InputSequence != m.Sequence {
			t.Errorf("replay %d: Nats-Msg-Id %q (result %+v)", i, id, rep.Results[i])
		}
		ids[id] = true
	}
	// The replays were counted; the undecodable one has no record.
	for _, id := range []string{"a", "c"} {
		rec, _, err := e.store.Get(ctx, idempotency.Key("pms://test", id))
		if err != nil || rec.Replays != 1 {
			t.Errorf("record of %s: %+v, %v", id, rec, err)
		}
	}
	after, err := e.q.List(ctx, dlq.Filter{})
	if err != nil || len(after) != 3 {
		t.Fatalf("dead letters after replay: %d, %v", len(after), err)
	}

	// A second replay gets a fresh Nats-Msg-Id, so the duplicate window does not swallow it.
	rep, err = e.q.Replay(ctx, entries[:1], dlq.ReplayOptions{})
	if err != nil || rep.Replayed != 1 || ids[rep.Results[0].MsgID] {
		t.Fatalf("second replay %+v, %v", rep, err)
	}
}

func TestReplay_SkipsCompletedEventsAndGuardsAgainstLoops(t *testing.T) {
	e := newEnv(t)
	in := schemas.SubjectCheckedIn
	ctx := context.Background()
	sDone := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "done"), id: "done", kind: schemas.ErrorKindRetriesExhausted})
	sLoop := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "loop"), id: "loop", kind: schemas.ErrorKindRetriesExhausted})
	c, err := e.store.Claim(ctx, idempotency.Key("pms://test", "done"), "w", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Complete(ctx, c, idempotency.StatusCompleted, schemas.SubjectAssigned, 1, 1); err != nil {
		t.Fatal(err)
	}
	done, _ := e.q.Get(ctx, sDone)
	loop, _ := e.q.Get(ctx, sLoop)

	rep, err := e.q.Replay(ctx, []dlq.Entry{done}, dlq.ReplayOptions{})
	if err != nil || rep.Skipped != 1 || !errors.Is(rep.Results[0].Err, dlq.ErrCompleted) {
		t.Fatalf("completed: %+v, %v", rep, err)
	}
	for i := 1; i <= dlq.DefaultMaxReplays; i++ {
		rep, err := e.q.Replay(ctx, []dlq.Entry{loop}, dlq.ReplayOptions{})
		if err != nil || rep.Replayed != 1 || rep.Results[0].Replays != i {
			t.Fatalf("replay %d: %+v, %v", i, rep, err)
		}
	}
	before := e.inputLastSeq()
	rep, err = e.q.Replay(ctx, []dlq.Entry{loop}, dlq.ReplayOptions{})
	if err != nil || rep.Skipped != 1 || !errors.Is(rep.Results[0].Err, dlq.ErrReplayLimit) {
		t.Fatalf("4th replay: %+v, %v", rep, err)
	}
	if e.inputLastSeq() != before {
		t.Fatal("the loop guard published anyway")
	}
	rep, err = e.q.Replay(ctx, []dlq.Entry{loop}, dlq.ReplayOptions{Force: true})
	if err != nil || rep.Replayed != 1 || rep.Results[0].Replays != dlq.DefaultMaxReplays+1 {
		t.Fatalf("forced: %+v, %v", rep, err)
	}
}

func TestReplay_DryRunDecidesButPublishesAndRecordsNothing(t *testing.T) {
	e := newEnv(t)
	in := schemas.SubjectCheckedIn
	ctx := context.Background()
	e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "a"), id: "a", kind: schemas.ErrorKindPermanent})
	e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "a"), id: "a", kind: schemas.ErrorKindPermanent})
	entries, err := e.q.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	before := e.inputLastSeq()
	rep, err := e.q.Replay(ctx, entries, dlq.ReplayOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.WouldReplay != 1 || rep.Skipped != 1 || !errors.Is(rep.Results[1].Err, dlq.ErrDuplicateInRun) {
		t.Fatalf("report %+v", rep)
	}
	if e.inputLastSeq() != before {
		t.Fatal("dry run published")
	}
	if _, _, err := e.store.Get(ctx, idempotency.Key("pms://test", "a")); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("dry run wrote a record: %v", err)
	}
}

func TestPurge_DeletesExactlyTheListedDeadLetters(t *testing.T) {
	e := newEnv(t)
	in := schemas.SubjectCheckedIn
	ctx := context.Background()
	s1 := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "a"), id: "a", kind: schemas.ErrorKindPermanent})
	e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "b"), id: "b", kind: schemas.ErrorKindRetriesExhausted})
	s3 := e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "c"), id: "c", kind: schemas.ErrorKindPermanent})
	perm, err := e.q.List(ctx, dlq.Filter{ErrorKind: schemas.ErrorKindPermanent})
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.q.Purge(ctx, perm)
	if err != nil || n != 2 {
		t.Fatalf("purged %d, %v", n, err)
	}
	left, err := e.q.List(ctx, dlq.Filter{})
	if err != nil || len(left) != 1 || left[0].DeadLetter.SourceEventID != "b" {
		t.Fatalf("left %v, %v", sequences(left), err)
	}
	// Purging again finds them gone: not an error, nothing deleted.
	n, err = e.q.Purge(ctx, perm)
	if err != nil || n != 0 {
		t.Fatalf("second purge %d, %v (of %d, %d)", n, err, s1, s3)
	}
}

func TestStatus_ReportsStreamsConsumerDeadLettersByKindAndRecords(t *testing.T) {
	e := newEnv(t)
	in := schemas.SubjectCheckedIn
	ctx := context.Background()
	e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "a"), id: "a", kind: schemas.ErrorKindPermanent})
	e.writeDeadLetter(deadLetter{subject: in, original: guestEvent(in, "b"), id: "b", kind: schemas.ErrorKindPermanent})
	e.writeDeadLetter(deadLetter{subject: in, original: []byte("x"), kind: schemas.ErrorKindInvalidEvent})
	if _, err := e.store.AddReplay(ctx, idempotency.Key("pms://test", "a")); err != nil {
		t.Fatal(err)
	}
	st, err := e.q.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Streams) != 3 || st.Streams[0].Name != e.cfg.InputStream || st.Streams[0].Messages != 3 || st.Streams[0].Bytes == 0 {
		t.Fatalf("streams %+v", st.Streams)
	}
	if st.Streams[2].Messages != 3 || st.Streams[1].Messages != 0 || !st.Streams[1].Found {
		t.Fatalf("streams %+v", st.Streams)
	}
	// The writes above went to the input stream with no worker: all pending.
	if !st.Consumer.Found || st.Consumer.Pending != 3 || st.Consumer.AckPending != 0 {
		t.Fatalf("consumer %+v", st.Consumer)
	}
	if st.DeadLetters.Total != 3 || st.DeadLetters.ByErrorKind[schemas.ErrorKindPermanent] != 2 || st.DeadLetters.ByErrorKind[schemas.ErrorKindInvalidEvent] != 1 {
		t.Fatalf("dead letters %+v", st.DeadLetters)
	}
	if !st.Idempotency.Found || st.Idempotency.Records != 1 {
		t.Fatalf("idempotency %+v", st.Idempotency)
	}
}

func TestStatus_ReportsMissingResourcesAsNotFound(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, s := range []string{e.cfg.InputStream, e.cfg.DeadLetterStream} {
		if err := e.js.DeleteStream(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.js.DeleteKeyValue(ctx, e.cfg.IdempotencyBucket); err != nil {
		t.Fatal(err)
	}
	st, err := e.q.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Streams[0].Found || !st.Streams[1].Found || st.Streams[2].Found || st.Consumer.Found || st.Idempotency.Found {
		t.Fatalf("status %+v", st)
	}
}
