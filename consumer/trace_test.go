package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

// The producer's span, as a PMS would send it.
const (
	producerTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpanID  = "00f067aa0ba902b7"
	producerParent  = "00-" + producerTraceID + "-" + producerSpanID + "-01"
	// pinCode is the code of the PIN credential: it must appear in no span.
	pinCode = "918273"
)

// tracedHarness runs one worker tracing into a span recorder.
func tracedHarness(t *testing.T) (*harness, *tracetest.SpanRecorder) {
	t.Helper()
	h := newHarness(t, fastConfig())
	cred := `{"acs_credential_id":"` + credA + `","access_method":"code","code":"` + pinCode + `","display_name":"Room 204 PIN"}`
	if err := h.seam.AddCredential(json.RawMessage(cred)); err != nil {
		t.Fatal(err)
	}
	h.seam.AddUser(userA)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h.start(1, consumer.WithTracerProvider(tp))
	return h, rec
}

// waitSpan polls the recorder until an ended span named name is in trace,
// and returns every ended span of that trace.
func waitSpan(t *testing.T, rec *tracetest.SpanRecorder, traceID, name string) []sdktrace.ReadOnlySpan {
	t.Helper()
	var in []sdktrace.ReadOnlySpan
	natstest.WaitFor(t, 10*time.Second, func() error {
		var err error
		in, err = endedIn(rec, traceID, name)
		return err
	})
	return in
}

// endedIn returns every ended span of trace once one named name is among
// them, or says it is not.
func endedIn(rec *tracetest.SpanRecorder, traceID, name string) ([]sdktrace.ReadOnlySpan, error) {
	var in []sdktrace.ReadOnlySpan
	found := false
	ended := rec.Ended()
	for _, s := range ended {
		if s.SpanContext().TraceID().String() == traceID {
			in = append(in, s)
			found = found || s.Name() == name
		}
	}
	if !found {
		return nil, fmt.Errorf("no ended span %q in trace %s; recorded: %v", name, traceID, spanNames(ended))
	}
	return in, nil
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	var n []string
	for _, s := range spans {
		n = append(n, s.Name()+"@"+s.SpanContext().TraceID().String())
	}
	return n
}

func byName(spans []sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// descends reports whether s is below ancestor in spans.
func descends(spans []sdktrace.ReadOnlySpan, s, ancestor sdktrace.ReadOnlySpan) bool {
	parent := map[trace.SpanID]trace.SpanID{}
	for _, x := range spans {
		parent[x.SpanContext().SpanID()] = x.Parent().SpanID()
	}
	for id := s.Parent().SpanID(); id.IsValid(); id = parent[id] {
		if id == ancestor.SpanContext().SpanID() {
			return true
		}
	}
	return false
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

// noSecrets fails if any attribute of any span, event or link carries the
// PIN or the API key.
func noSecrets(t *testing.T, spans []sdktrace.ReadOnlySpan) {
	t.Helper()
	check := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			if v := kv.Value.String(); strings.Contains(v, pinCode) || strings.Contains(v, "test-key") {
				t.Errorf("%s: attribute %s carries a secret: %q", where, kv.Key, v)
			}
		}
	}
	for _, s := range spans {
		check(s.Name(), s.Attributes())
		check(s.Name()+" resource", s.Resource().Attributes())
		for _, e := range s.Events() {
			check(s.Name()+" event "+e.Name, e.Attributes)
		}
		for _, l := range s.Links() {
			check(s.Name()+" link", l.Attributes)
		}
	}
}

// outcomeHeader is header k of the outcome event at seq in stream.
func (h *harness) outcomeHeader(stream string, seq uint64, k string) string {
	h.t.Helper()
	s, err := h.js.Stream(context.Background(), stream)
	if err != nil {
		h.t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), seq)
	if err != nil {
		h.t.Fatal(err)
	}
	return m.Header.Get(k)
}

func TestTrace_ProcessSpanContinuesTheProducersTraceToTheOutcome(t *testing.T) {
	data := schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, ReservationID: "R-7"}
	for _, mode := range []struct {
		name    string
		doc     func([]byte) []byte
		headers nats.Header
	}{
		{name: "traceparent header", headers: nats.Header{"traceparent": {producerParent}, "tracestate": {"pms=1"}}},
		{name: "ce-traceparent header", headers: nats.Header{"ce-traceparent": {producerParent}}},
		{name: "structured-mode traceparent attribute", doc: func(doc []byte) []byte {
			var m map[string]any
			if err := json.Unmarshal(doc, &m); err != nil {
				t.Fatal(err)
			}
			m["traceparent"] = producerParent
			out, _ := json.Marshal(m)
			return out
		}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			h, rec := tracedHarness(t)
			doc := event(schemas.SubjectCheckedIn, "in-trace-1", time.Now().Add(-time.Minute), data)
			if mode.doc != nil {
				doc = mode.doc(doc)
			}
			msg := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: doc, Header: mode.headers}
			if msg.Header == nil {
				msg.Header = nats.Header{}
			}
			msg.Header.Set("Nats-Msg-Id", "pms-msg-1")
			if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
			out := h.waitOutcomes(1, 10*time.Second)[0]
			if out.Subject != schemas.SubjectAssigned || !h.seam.IsAssigned(credA, userA) {
				t.Fatalf("outcome %s, assigned %v: want credential.assigned and the fake assigned", out.Subject, h.seam.IsAssigned(credA, userA))
			}
			spans := waitSpan(t, rec, producerTraceID, "process guest.checked_in")

			procs := byName(spans, "process guest.checked_in")
			if len(procs) != 1 {
				t.Fatalf("%d process spans in the trace, want 1: %v", len(procs), spanNames(spans))
			}
			proc := procs[0]
			if proc.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("process span kind %v, want consumer", proc.SpanKind())
			}
			if got := proc.Parent().SpanID().String(); got != producerSpanID || !proc.Parent().IsRemote() {
				t.Errorf("process span's parent %s (remote %v), want the producer's span %s", got, proc.Parent().IsRemote(), producerSpanID)
			}
			if l := proc.Links(); len(l) != 1 || l[0].SpanContext.SpanID().String() != producerSpanID {
				t.Errorf("process span links %v, want one to the producer's span", l)
			}
			a := attrs(proc)
			for k, want := range map[attribute.Key]string{
				"messaging.system":              "nats",
				"messaging.operation.type":      "process",
				"messaging.destination.name":    schemas.SubjectCheckedIn,
				"messaging.consumer.group.name": h.cfg.Durable,
				"messaging.message.id":          "pms-msg-1",
				"cloudevents.event_id":          "in-trace-1",
				"cloudevents.event_source":      "pms://test",
				"cloudevents.event_type":        schemas.SubjectCheckedIn,
				"keyworker.outcome":             schemas.SubjectAssigned,
				"keyworker.acs_credential_id":   credA,
			} {
				if a[k] != want {
					t.Errorf("process span %s = %q, want %q", k, a[k], want)
				}
			}

			seams := byName(spans, "seam assign")
			if len(seams) != 1 {
				t.Fatalf("%d seam assign spans, want 1: %v", len(seams), spanNames(spans))
			}
			sa := attrs(seams[0])
			if !descends(spans, seams[0], proc) || sa["http.response.status_code"] != "200" || sa["seam.request_id"] == "" || sa["keyworker.attempt"] != "1" {
				t.Errorf("seam assign span: under process %v, attributes %v; want status 200, a seam.request_id, attempt 1", descends(spans, seams[0], proc), sa)
			}
			for _, step := range []string{"idempotency claim", "credential lease", "credential commit"} {
				if s := byName(spans, step); len(s) != 1 || !descends(spans, s[0], proc) {
					t.Errorf("step span %q: %d, want one under the process span", step, len(s))
				}
			}
			sends := byName(spans, "send "+schemas.SubjectAssigned)
			if len(sends) != 1 || !descends(spans, sends[0], proc) || sends[0].SpanKind() != trace.SpanKindProducer {
				t.Fatalf("send spans %v, want one PRODUCER span under the process span", spanNames(sends))
			}
			if a := attrs(sends[0]); a["messaging.operation.type"] != "send" || a["messaging.destination.name"] != schemas.SubjectAssigned {
				t.Errorf("send span attributes %v", a)
			}

			tp := h.outcomeHeader(h.cfg.ResultsStream, out.Seq, consumer.HeaderTraceparent)
			want := "00-" + producerTraceID + "-" + sends[0].SpanContext().SpanID().String() + "-01"
			if tp != want {
				t.Errorf("outcome traceparent %q, want %q (the producer's trace, the send span)", tp, want)
			}
			noSecrets(t, rec.Ended())
		})
	}
}

func TestTrace_DeadLetterCarriesTheTraceAndReplayContinuesIt(t *testing.T) {
	h, rec := tracedHarness(t)
	// Both user ids: invalid, dead-lettered at once.
	bad := event(schemas.SubjectCheckedIn, "in-bad-1", time.Now().Add(-time.Minute),
		schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA, UserIdentityID: identityA})
	msg := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: bad, Header: nats.Header{"traceparent": {producerParent}}}
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	dl := h.waitOutcomes(1, 10*time.Second)[0]
	if dl.DL.OriginalSubject == "" {
		t.Fatalf("outcome %s, want a dead letter", dl.Subject)
	}
	spans := waitSpan(t, rec, producerTraceID, "process guest.checked_in")
	sends := byName(spans, "send "+dl.Subject)
	if len(sends) != 1 {
		t.Fatalf("send spans %v, want one for %s", spanNames(spans), dl.Subject)
	}
	tp := h.outcomeHeader(h.cfg.DeadLetterStream, dl.Seq, consumer.HeaderTraceparent)
	if want := "00-" + producerTraceID + "-" + sends[0].SpanContext().SpanID().String() + "-01"; tp != want {
		t.Fatalf("dead letter traceparent %q, want %q", tp, want)
	}
	if a := attrs(byName(spans, "process guest.checked_in")[0]); a["keyworker.outcome"] != dl.Subject {
		t.Errorf("process span outcome %q, want %q", a["keyworker.outcome"], dl.Subject)
	}

	// Replayed (it is dead-lettered again: still invalid), the event stays in its trace.
	q, err := dlq.New(h.js, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, err := q.Get(context.Background(), dl.Seq)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := q.Replay(context.Background(), []dlq.Entry{e}, dlq.ReplayOptions{})
	res := rep.Results
	if err != nil || len(res) != 1 || res[0].Action != dlq.ActionReplayed {
		t.Fatalf("replay: %v %+v", err, res)
	}
	if got := h.outcomeHeader(h.cfg.InputStream, res[0].InputSequence, consumer.HeaderTraceparent); got != tp {
		t.Errorf("replayed event traceparent %q, want the dead letter's %q", got, tp)
	}
	h.waitOutcomes(2, 10*time.Second)
	natstest.WaitFor(t, 10*time.Second, func() error {
		in, err := endedIn(rec, producerTraceID, "process guest.checked_in")
		if err != nil {
			return err
		}
		if n := len(byName(in, "process guest.checked_in")); n < 2 {
			return fmt.Errorf("the replay's process span is not in the producer's trace: %d process spans", n)
		}
		return nil
	})
	for _, p := range byName(rec.Ended(), "process guest.checked_in") {
		if attrs(p)["keyworker.replay_of"] == "" {
			continue
		}
		if p.SpanContext().TraceID().String() != producerTraceID || p.Parent().SpanID() != sends[0].SpanContext().SpanID() {
			t.Errorf("replay's process span in trace %s under %s, want trace %s under the dead letter's send span", p.SpanContext().TraceID(), p.Parent().SpanID(), producerTraceID)
		}
		return
	}
	t.Error("no process span with keyworker.replay_of")
}

func TestTrace_OffByDefaultWritesNoTraceparent(t *testing.T) {
	h := newHarness(t, fastConfig())
	if err := h.seam.AddCredential(json.RawMessage(`{"acs_credential_id":"` + credA + `"}`)); err != nil {
		t.Fatal(err)
	}
	h.seam.AddUser(userA)
	h.start(1)
	doc := event(schemas.SubjectCheckedIn, "in-off-1", time.Now().Add(-time.Minute), schemas.GuestData{ACSCredentialID: credA, ACSUserID: userA})
	msg := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: doc, Header: nats.Header{"traceparent": {producerParent}}}
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	out := h.waitOutcomes(1, 10*time.Second)[0]
	if got := h.outcomeHeader(h.cfg.ResultsStream, out.Seq, consumer.HeaderTraceparent); got != "" {
		t.Errorf("tracing off: outcome traceparent %q, want none", got)
	}
}
