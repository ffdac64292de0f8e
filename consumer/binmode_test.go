package consumer_test

import (
	"io"

	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	ceformat "github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// Events are made by the CloudEvents Go SDK (github.com/cloudevents/sdk-go/v2)
// and encoded by its binding package, the way its NATS JetStream sender
// (protocol/nats_jetstream, a module the proxy here does not serve) puts
// them on a message:
//
//   - binary mode, its default: binding.Write hands each attribute to the
//     sender's writer, which sets the header "ce-"+name to the SDK's
//     canonical string (types.Format); the body is the data as encoded;
//   - structured mode: the body is the SDK's JSON format (format.JSON) and
//     the message has no headers.

// sdkEvent is what a producer hands the SDK.
type sdkEvent struct {
	typ, id, source, subject string
	time                     time.Time
	data                     any
}

func (ev sdkEvent) event(t *testing.T) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(ev.id)
	e.SetSource(ev.source)
	e.SetType(ev.typ)
	if ev.subject != "" {
		e.SetSubject(ev.subject)
	}
	if !ev.time.IsZero() {
		e.SetTime(ev.time)
	}
	if err := e.SetData(cloudevents.ApplicationJSON, ev.data); err != nil {
		t.Fatal(err)
	}
	return e
}

// natsBinaryWriter is the NATS JetStream sender's binary-mode writer.
type natsBinaryWriter struct{ msg *nats.Msg }

func (w *natsBinaryWriter) Start(context.Context) error { return nil }
func (w *natsBinaryWriter) End(context.Context) error   { return nil }

func (w *natsBinaryWriter) SetData(r io.Reader) error {
	b, err := io.ReadAll(r)
	w.msg.Data = b
	return err
}

func (w *natsBinaryWriter) SetAttribute(a spec.Attribute, v any) error {
	return w.SetExtension(a.Name(), v)
}

func (w *natsBinaryWriter) SetExtension(name string, v any) error {
	if v == nil {
		w.msg.Header.Del("ce-" + name)
		return nil
	}
	s, err := types.Format(v)
	if err != nil {
		return err
	}
	w.msg.Header.Set("ce-"+name, s)
	return nil
}

// sdkBinary is the message the SDK's sender publishes in binary mode.
func sdkBinary(t *testing.T, ev sdkEvent) *nats.Msg {
	t.Helper()
	e := ev.event(t)
	msg := &nats.Msg{Subject: ev.typ, Header: nats.Header{}}
	enc, err := binding.Write(context.Background(), binding.ToMessage(&e), nil, &natsBinaryWriter{msg: msg})
	if err != nil || enc != binding.EncodingBinary {
		t.Fatalf("sdk binary write: %v, %v", enc, err)
	}
	return msg
}

// sdkStructured is the message the SDK's sender publishes in structured mode.
func sdkStructured(t *testing.T, ev sdkEvent) *nats.Msg {
	t.Helper()
	e := ev.event(t)
	body, err := ceformat.JSON.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: ev.typ, Data: body}
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
