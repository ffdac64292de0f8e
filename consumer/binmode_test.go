package consumer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// The CloudEvents Go SDK (github.com/cloudevents/sdk-go) is not served by
// the module proxy this project builds with, so its NATS JetStream sender
// (protocol/nats_jetstream/v3) is reproduced here exactly as it writes a
// message:
//
//   - binary mode, its default: WriteMsg's binary writer starts from an
//     empty nats.Header and, for every attribute the event has, calls
//     header.Set("ce-"+name, fmt.Sprint(value)), a time formatted with
//     time.RFC3339Nano in the zone it was set in; datacontenttype goes in
//     ce-datacontenttype (no Content-Type header); the body is the data as
//     encoded (encoding/json for application/json);
//   - structured mode (binding.WithForceStructured): the body is
//     format.JSON's document (specversion, id, source, type, subject,
//     datacontenttype, time in UTC RFC 3339 with nanoseconds, data written
//     raw) and the message has no headers at all.

// sdkEvent is what a producer hands the SDK.
type sdkEvent struct {
	typ, id, source, subject string
	time                     time.Time
	data                     any
}

// sdkBinary is the message the SDK's sender publishes in binary mode.
func sdkBinary(t *testing.T, ev sdkEvent) *nats.Msg {
	t.Helper()
	body, err := json.Marshal(ev.data)
	if err != nil {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set("ce-specversion", "1.0")
	h.Set("ce-id", ev.id)
	h.Set("ce-source", ev.source)
	h.Set("ce-type", ev.typ)
	h.Set("ce-datacontenttype", "application/json")
	if ev.subject != "" {
		h.Set("ce-subject", ev.subject)
	}
	if !ev.time.IsZero() {
		h.Set("ce-time", ev.time.Format(time.RFC3339Nano))
	}
	return &nats.Msg{Subject: ev.typ, Header: h, Data: body}
}

// sdkStructured is the message the SDK's sender publishes in structured mode.
func sdkStructured(t *testing.T, ev sdkEvent) *nats.Msg {
	t.Helper()
	data, err := json.Marshal(ev.data)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	str := func(s string) string { q, _ := json.Marshal(s); return string(q) }
	fmt.Fprintf(&b, `{"specversion":"1.0","id":%s,"source":%s,"type":%s`, str(ev.id), str(ev.source), str(ev.typ))
	if ev.subject != "" {
		fmt.Fprintf(&b, `,"subject":%s`, str(ev.subject))
	}
	b.WriteString(`,"datacontenttype":"application/json"`)
	if !ev.time.IsZero() {
		fmt.Fprintf(&b, `,"time":%s`, str(ev.time.UTC().Format(time.RFC3339Nano)))
	}
	fmt.Fprintf(&b, `,"data":%s}`, data)
	return &nats.Msg{Subject: ev.typ, Data: b.Bytes()}
}

func (h *harness) publishMsg(m *nats.Msg) uint64 {
	h.t.Helper()
	ack, err := h.js.PublishMsg(context.Background(), m)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence
}

// inputMsg reads the input stream's message at seq.
func (h *harness) inputMsg(seq uint64) *jetstream.RawStreamMsg {
	h.t.Helper()
	s, err := h.js.Stream(context.Background(), h.cfg.InputStream)
	if err != nil {
		h.t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), seq)
	if err != nil {
		h.t.Fatal(err)
	}
	return m
}

// ceHeaders is the part of h replay must give back as it came in: the
// CloudEvents attributes and the content type.
func ceHeaders(h nats.Header) map[string][]string {
	out := map[string][]string{}
	for k, v := range h {
		if len(k) > 3 && k[:3] == "ce-" || k == "Content-Type" || k == "content-type" {
			out[k] = v
		}
	}
	return out
}

func TestHandle_SDKEventsInBinaryAndStructuredModeBothReachSeam(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	h.start(1)
	const credB, userB = "66666666-6666-4666-8666-666666666602", "33333333-3333-4333-8333-333333333302"
	at := time.Now().Add(-time.Hour).In(time.FixedZone("CEST", 2*3600)).Round(time.Millisecond)
	binIn := sdkEvent{typ: schemas.SubjectCheckedIn, id: "sdk-bin-1", source: "pms://sdk", subject: "R-1", time: at,
		data: schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-1"}}
	strIn := sdkEvent{typ: schemas.SubjectCheckedIn, id: "sdk-str-1", source: "pms://sdk", subject: "R-2", time: at,
		data: schemas.GuestData{ACSCredentialID: credB, ACSUserID: userB, ReservationID: "R-2"}}
	h.publishMsg(sdkBinary(t, binIn))
	h.publishMsg(sdkStructured(t, strIn))

	got := h.waitOutcomes(2, 10*time.Second)
	byID := map[string]outcome{}
	for _, o := range got {
		byID[o.SourceID()] = o
	}
	for id, cred := range map[string]string{"sdk-bin-1": credA, "sdk-str-1": credB} {
		o := byID[id]
		if o.Subject != schemas.SubjectAssigned || o.Result.SourceEventSource != "pms://sdk" || o.Result.ACSCredentialID != cred {
			t.Fatalf("%s: want credential.assigned from pms://sdk for %s, got %s %+v", id, cred, o.Subject, o.Result)
		}
	}
	if !h.seam.IsAssigned(credA, userA) || !h.seam.IsAssigned(credB, userB) {
		t.Fatal("not both assigned in the fake")
	}

	// Identity is (source, id) in either mode: the binary check-in sent
	// again in structured mode is a duplicate, with no second effect.
	h.publishMsg(sdkStructured(t, binIn))
	// A binary-mode check-out then meets the ordering rule like any event.
	h.publishMsg(sdkBinary(t, sdkEvent{typ: schemas.SubjectCheckedOut, id: "sdk-bin-2", source: "pms://sdk", subject: "R-1",
		time: at.Add(time.Minute), data: schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-1"}}))
	h.waitOutcomes(3, 10*time.Second)
	h.waitDrained(5 * time.Second)
	if got = h.outcomes(); len(got) != 3 {
		t.Fatalf("%d outcomes, want 3 (the structured copy of a binary event is a duplicate)", len(got))
	}
	if last := got[2]; last.Subject != schemas.SubjectUnassigned || last.SourceID() != "sdk-bin-2" {
		t.Fatalf("want the binary check-out unassigned, got %s for %s", last.Subject, last.SourceID())
	}
	if h.seam.IsAssigned(credA, userA) || h.seam.Effects(credA, userA) != 2 {
		t.Fatalf("fake: assigned %v, effects %d; want unassigned after one assign and one unassign",
			h.seam.IsAssigned(credA, userA), h.seam.Effects(credA, userA))
	}
}

func TestHandle_BrokenBinaryEventDeadLettersWithItsHeadersAndReplaysThemExactly(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	// Seam refuses the first assign for good; the cause is then gone.
	h.seam.FailNext(1, assignPath, seamtest.SeamError(404, "acs_credential_not_found"))
	h.start(1)
	msg := sdkBinary(t, sdkEvent{typ: schemas.SubjectCheckedIn, id: "sdk-bin-404", source: "pms://sdk", subject: "R-9",
		time: time.Now().Add(-time.Minute), data: schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-9"}})
	// An extension attribute, and the producer's own dedup id.
	msg.Header.Set("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	msg.Header.Set(jetstream.MsgIDHeader, "pms-msg-404")
	seq := h.publishMsg(msg)

	got := h.waitOutcomes(1, 10*time.Second)
	h.waitDrained(5 * time.Second)
	dl := got[0].DL
	if got[0].Subject != "deadletter.guest.checked_in" || dl.Error.Kind != schemas.ErrorKindPermanent || dl.SourceEventID != "sdk-bin-404" {
		t.Fatalf("want a permanent dead letter of sdk-bin-404, got %s %+v", got[0].Subject, dl)
	}
	if orig, err := dl.Original(); err != nil || !bytes.Equal(orig, msg.Data) {
		t.Fatalf("dead letter original is not the body: %q (%v)", orig, err)
	}
	if want := map[string][]string(msg.Header); !maps.EqualFunc(dl.OriginalHeaders, want, slices.Equal) {
		t.Fatalf("dead letter headers %v, want %v", dl.OriginalHeaders, want)
	}
	if err := mustValidator(t).Validate(got[0].Subject, got[0].Raw); err != nil {
		t.Fatalf("dead letter with headers fails its schema: %v", err)
	}

	q, err := dlq.New(h.js, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := q.List(context.Background(), dlq.Filter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("scan: %d entries, %v", len(entries), err)
	}
	rep, err := q.Replay(context.Background(), entries, dlq.ReplayOptions{})
	if err != nil || rep.Replayed != 1 {
		t.Fatalf("replay: %+v, %v", rep, err)
	}
	replayed := h.inputMsg(rep.Results[0].InputSequence)
	if !bytes.Equal(replayed.Data, h.inputMsg(seq).Data) {
		t.Fatalf("replayed body %q, want %q", replayed.Data, msg.Data)
	}
	if got, want := ceHeaders(replayed.Header), ceHeaders(msg.Header); !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("replayed headers %v, want %v", got, want)
	}
	if id := replayed.Header.Get(jetstream.MsgIDHeader); id != rep.Results[0].MsgID {
		t.Fatalf("replay published with Nats-Msg-Id %q, want its own %q (the original's would be a duplicate)", id, rep.Results[0].MsgID)
	}
	if replayed.Header.Get(schemas.HeaderReplayOf) != fmt.Sprint(entries[0].Sequence) {
		t.Fatalf("replay lacks %s: %v", schemas.HeaderReplayOf, replayed.Header)
	}

	got = h.waitOutcomes(2, 10*time.Second)
	h.waitDrained(5 * time.Second)
	var res *outcome
	for i := range got {
		if got[i].Subject == schemas.SubjectAssigned {
			res = &got[i]
		}
	}
	if res == nil || res.Result.SourceEventID != "sdk-bin-404" || res.Result.ReplayOf != entries[0].Sequence {
		t.Fatalf("want the replay assigned with replay_of %d, got %+v", entries[0].Sequence, got)
	}
	if !h.seam.IsAssigned(credA, userA) {
		t.Fatal("replay did not assign in the fake")
	}
}

func TestHandle_InvalidBinaryEventsWithOneBodyAreSeparateDeadLettersWithTheirHeaders(t *testing.T) {
	h := newHarness(t, fastConfig(), seamtest.WithAutoCreate())
	body := []byte(`{"acs_credential_id":"` + credA + `","acs_user_id":"` + userA + `"}`)
	msgs := map[uint64]*nats.Msg{}
	for i := range 3 {
		m := &nats.Msg{Subject: schemas.SubjectCheckedIn, Header: nats.Header{}, Data: body}
		m.Header.Set("ce-specversion", "1.0")
		m.Header.Set("ce-id", fmt.Sprintf("no-time-%d", i))
		m.Header.Set("ce-source", "pms://sdk")
		m.Header.Set("ce-type", schemas.SubjectCheckedIn) // no ce-time: invalid
		msgs[h.publishMsg(m)] = m
	}
	h.start(1)
	h.waitOutcomes(3, 10*time.Second)
	h.waitDrained(5 * time.Second)
	got := h.outcomes()
	if len(got) != 3 {
		t.Fatalf("%d dead letters, want 3", len(got))
	}
	for _, o := range got {
		m := msgs[o.DL.OriginalStreamSequence]
		if m == nil || o.DL.Error.Kind != schemas.ErrorKindInvalidEvent {
			t.Fatalf("dead letter %d: %+v", o.Seq, o.DL)
		}
		if !maps.EqualFunc(o.DL.OriginalHeaders, map[string][]string(m.Header), slices.Equal) {
			t.Fatalf("dead letter %d headers %v, want %v", o.Seq, o.DL.OriginalHeaders, m.Header)
		}
		if want := "binary mode: "; len(o.DL.Error.Message) == 0 || !bytes.Contains([]byte(o.DL.Error.Message), []byte(want+`event: missing required "time"`)) {
			t.Fatalf("dead letter %d message %q, want it to say the binary-mode event lacks time", o.Seq, o.DL.Error.Message)
		}
	}
	if n := h.seam.Calls(""); n != 0 {
		t.Fatalf("invalid events reached Seam %d times", n)
	}
}
