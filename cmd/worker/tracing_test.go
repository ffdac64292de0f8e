package main

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it decodes each
// ExportTraceServiceRequest and keeps its spans.
type otlpReceiver struct {
	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
		http.Error(w, "want protobuf on /v1/traces", http.StatusBadRequest)
		return
	}
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				o.services = append(o.services, kv.Value.GetStringValue())
			}
		}
		for _, ss := range rs.ScopeSpans {
			o.spans = append(o.spans, ss.Spans...)
		}
	}
	o.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (o *otlpReceiver) snapshot() ([]*tracepb.Span, []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*tracepb.Span(nil), o.spans...), append([]string(nil), o.services...)
}

// TestTracing_BuiltWorkerExportsTheProducersTraceOverOTLPHTTP runs the
// built worker with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP
// receiver: the process, Seam (worker and HTTP client) and send spans of an
// event arrive in the producer's trace, and the outcome carries it.
func TestTracing_BuiltWorkerExportsTheProducersTraceOverOTLPHTTP(t *testing.T) {
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		spanID  = "00f067aa0ba902b7"
		apiKey  = "seam_test_tracing_key"
	)
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)
	seam := procNewSeam(t, seamtest.WithAPIKey(apiKey), seamtest.WithAutoCreate())
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+apiKey,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+collector.URL, "OTEL_SERVICE_NAME=keyworker-test", "OTEL_BSP_SCHEDULE_DELAY=100")
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)

	cred, user := newUUID(), newUUID()
	doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://tracing-test", "in-otlp-1", time.Now().Add(-time.Minute),
		schemas.GuestData{ACSCredentialID: cred, ACSUserID: user})
	msg := &nats.Msg{Subject: schemas.SubjectCheckedIn, Data: doc, Header: nats.Header{}}
	msg.Header.Set("traceparent", "00-"+traceID+"-"+spanID+"-01")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	want := []string{"process guest.checked_in", "seam assign", "POST /acs/credentials/assign", "send credential.assigned", "idempotency claim"}
	var spans []*tracepb.Span
	natstest.WaitFor(t, 20*time.Second, func() error {
		spans, _ = recv.snapshot()
		names := map[string]bool{}
		for _, s := range spans {
			if hex.EncodeToString(s.TraceId) == traceID {
				names[s.Name] = true
			}
		}
		for _, n := range want {
			if !names[n] {
				return &missingSpanError{name: n}
			}
		}
		return nil
	})
	for _, s := range spans {
		if s.Name == "process guest.checked_in" && hex.EncodeToString(s.ParentSpanId) != spanID {
			t.Errorf("process span's parent %x, want the producer's %s", s.ParentSpanId, spanID)
		}
		if s.Name == "process guest.checked_in" && s.Kind != tracepb.Span_SPAN_KIND_CONSUMER {
			t.Errorf("process span kind %v, want consumer", s.Kind)
		}
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.String(), apiKey) {
				t.Errorf("span %s attribute %s carries the API key", s.Name, kv.Key)
			}
		}
	}
	if _, services := recv.snapshot(); len(services) == 0 || services[0] != "keyworker-test" {
		t.Errorf("service.name %v, want keyworker-test (OTEL_SERVICE_NAME)", services)
	}
	outs := client.outcomes()
	if len(outs) != 1 || outs[0].Subject != schemas.SubjectAssigned {
		t.Fatalf("outcomes %+v, want one credential.assigned", outs)
	}
	if !seam.IsAssigned(cred, user) {
		t.Fatal("credential not assigned in the fake")
	}
	// The event's log line carries the trace id.
	found := false
	for _, l := range worker.logLines() {
		if strings.Contains(l, `"event handled"`) && strings.Contains(l, `"trace_id":"`+traceID+`"`) && strings.Contains(l, `"span_id":"`) {
			found = true
		}
	}
	if !found {
		t.Errorf("no \"event handled\" log line with trace_id %s and a span_id", traceID)
	}
	if code, _ := worker.terminate(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

type missingSpanError struct{ name string }

func (e *missingSpanError) Error() string { return "span " + e.name + " not received yet" }
