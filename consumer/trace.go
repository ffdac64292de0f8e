package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/keyworker/keyworker/seamclient"
)

// Tracing follows the OpenTelemetry messaging conventions: a CONSUMER span
// "process <subject>" per delivery, the child of the producer's context
// (and linked to it), with INTERNAL spans for the idempotency claim, the
// credential lease and commit, and each Seam request, and a PRODUCER span
// "send <subject>" per outcome published, whose context travels in the
// outcome's traceparent header. Off (the default), none of it runs.

// TracerName is the instrumentation scope of the worker's spans.
const TracerName = "github.com/keyworker/keyworker/consumer"

// Headers of the trace context: W3C Trace Context on the NATS message, or
// the CloudEvents distributed-tracing extension in binary mode.
const (
	HeaderTraceparent   = "traceparent"
	HeaderTracestate    = "tracestate"
	HeaderCETraceparent = "ce-traceparent"
	HeaderCETracestate  = "ce-tracestate"
)

// WithTracerProvider traces each delivery with tp (default: none, at no
// cost). The trace context is read from and written to messages as W3C
// Trace Context: the headers producerContext reads are that format's.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(w *Worker) error {
		if tp == nil {
			return errors.New("consumer: tracer provider is nil")
		}
		w.tracer = tp.Tracer(TracerName)
		return nil
	}
}

// natsCarrier adapts NATS headers to the propagator. NATS header names are
// case-sensitive: the W3C names are written in lower case, and read in any.
type natsCarrier nats.Header

func (c natsCarrier) Get(k string) string {
	if v := c[k]; len(v) > 0 {
		return v[0]
	}
	for name, v := range c {
		if len(v) > 0 && strings.EqualFold(name, k) {
			return v[0]
		}
	}
	return ""
}
func (c natsCarrier) Set(k, v string) { c[k] = []string{v} }
func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// mapCarrier carries a trace context read from elsewhere than the headers.
type mapCarrier map[string]string

func (c mapCarrier) Get(k string) string { return c[k] }
func (c mapCarrier) Set(k, v string)     { c[k] = v }
func (c mapCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// producerContext is the trace context the producer sent with msg: a
// traceparent header, else the CloudEvents extension as a ce-traceparent
// header (binary mode), else the traceparent attribute of the structured
// document. Invalid or absent, ctx comes back as it was.
func (w *Worker) producerContext(ctx context.Context, msg jetstream.Msg) context.Context {
	h := msg.Headers()
	if tp := natsCarrier(h).Get(HeaderTraceparent); tp != "" {
		return propagation.TraceContext{}.Extract(ctx, natsCarrier(h))
	}
	if tp := natsCarrier(h).Get(HeaderCETraceparent); tp != "" {
		return propagation.TraceContext{}.Extract(ctx, mapCarrier{HeaderTraceparent: tp, HeaderTracestate: natsCarrier(h).Get(HeaderCETracestate)})
	}
	raw := msg.Data()
	if !bytes.Contains(raw, []byte(`"traceparent"`)) {
		return ctx // most documents: not worth decoding twice
	}
	var ext struct {
		Traceparent string `json:"traceparent"`
		Tracestate  string `json:"tracestate"`
	}
	if json.Unmarshal(raw, &ext) != nil || ext.Traceparent == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, mapCarrier{HeaderTraceparent: ext.Traceparent, HeaderTracestate: ext.Tracestate})
}

// startProcess starts the delivery's process span, the child of the
// producer's context. Off, it returns ctx and nil.
func (w *Worker) startProcess(ctx context.Context, msg jetstream.Msg) (context.Context, trace.Span) {
	if w.tracer == nil {
		return ctx, nil
	}
	ctx = w.producerContext(ctx, msg)
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "process"),
		attribute.String("messaging.operation.name", "process"),
		attribute.String("messaging.destination.name", msg.Subject()),
		attribute.String("messaging.consumer.group.name", w.cfg.Durable),
	}
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" {
		attrs = append(attrs, attribute.String("messaging.message.id", id))
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
	if pc := trace.SpanContextFromContext(ctx); pc.IsValid() {
		// The conventions link the creation context even when it is the parent.
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: pc}))
	}
	return w.tracer.Start(ctx, "process "+msg.Subject(), opts...)
}

// endProcess records what the delivery was and how it ended, and ends its span.
func endProcess(span trace.Span, j *job, out Outcome) {
	if span == nil {
		return
	}
	if j.meta != nil {
		span.SetAttributes(
			attribute.Int64("messaging.nats.stream_sequence", int64(j.meta.Sequence.Stream)),
			attribute.Int64("messaging.nats.num_delivered", int64(j.meta.NumDelivered)),
		)
	}
	if ev := j.event; ev != nil {
		span.SetAttributes(
			attribute.String("cloudevents.event_id", ev.ID),
			attribute.String("cloudevents.event_source", ev.Source),
			attribute.String("cloudevents.event_type", ev.Type),
			attribute.String("keyworker.acs_credential_id", ev.Data.ACSCredentialID),
		)
		if ev.Subject != "" {
			span.SetAttributes(attribute.String("cloudevents.event_subject", ev.Subject))
		}
	}
	outcome := out.Subject
	if outcome == "" {
		outcome = out.Kind.String()
	}
	span.SetAttributes(attribute.String("keyworker.outcome", outcome), attribute.Int("keyworker.attempts", j.attempts))
	if j.replayOf != 0 {
		span.SetAttributes(attribute.Int64("keyworker.replay_of", int64(j.replayOf)))
	}
	if out.Err != nil {
		span.SetAttributes(attribute.String("error.type", errorType(out.Err)))
	}
	if out.Kind == DeadLettered {
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
}

// startStep starts an INTERNAL span for one step of the pipeline; the
// function it returns ends it with the step's error. Off, it costs nothing.
func (w *Worker) startStep(ctx context.Context, name string) (context.Context, func(error)) {
	if w.tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, func(error) {}
	}
	ctx, span := w.tracer.Start(ctx, name)
	return ctx, func(err error) {
		if err != nil {
			span.SetAttributes(attribute.String("error.type", errorType(err)))
			span.SetStatus(codes.Error, "")
		}
		span.End()
	}
}

// startSeam starts the span of one Seam request; the HTTP client span of
// the transport, when instrumented, is its child.
func (w *Worker) startSeam(ctx context.Context, j *job, endpoint string) (context.Context, func(*seamclient.Response, error)) {
	if w.tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, func(*seamclient.Response, error) {}
	}
	ctx, span := w.tracer.Start(ctx, "seam "+endpoint, trace.WithAttributes(
		attribute.String("keyworker.seam.endpoint", endpoint),
		attribute.Int("keyworker.attempt", j.attempts),
		attribute.String("keyworker.acs_credential_id", j.req.ACSCredentialID),
	))
	return ctx, func(resp *seamclient.Response, err error) {
		status, reqID := 0, ""
		var (
			api     *seamclient.APIError
			respErr *seamclient.ResponseError
		)
		switch {
		case resp != nil:
			status, reqID = resp.StatusCode, resp.RequestID
		case errors.As(err, &api):
			status, reqID = api.StatusCode, api.RequestID
			span.SetAttributes(attribute.String("keyworker.seam.error_type", api.Type))
		case errors.As(err, &respErr):
			status, reqID = respErr.StatusCode, respErr.RequestID
		}
		if status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", status))
		}
		if reqID != "" {
			span.SetAttributes(attribute.String("seam.request_id", reqID))
		}
		if err != nil {
			// The class, never the message: it may quote a response body.
			span.SetAttributes(attribute.String("error.type", seamclient.Classify(err).String()))
			span.SetStatus(codes.Error, "")
		}
		span.End()
	}
}

// startPublish starts the PRODUCER span of an outcome publish and writes
// its context into the message's headers, so the PMS side can follow its
// event to its result.
func (w *Worker) startPublish(ctx context.Context, msg *nats.Msg, msgID string) func(uint64, error) {
	if w.tracer == nil || !trace.SpanFromContext(ctx).SpanContext().IsValid() {
		return func(uint64, error) {}
	}
	ctx, span := w.tracer.Start(ctx, "send "+msg.Subject, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.operation.name", "publish"),
		attribute.String("messaging.destination.name", msg.Subject),
		attribute.String("messaging.message.id", msgID),
	))
	propagation.TraceContext{}.Inject(ctx, natsCarrier(msg.Header))
	return func(seq uint64, err error) {
		if err != nil {
			span.SetAttributes(attribute.String("error.type", errorType(err)))
			span.SetStatus(codes.Error, "")
		} else {
			span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(seq)))
		}
		span.End()
	}
}

// logFor is the worker's logger, with the delivery's trace and span ids
// when it is traced.
func (w *Worker) logFor(j *job) *zerolog.Logger {
	if j == nil || j.span == nil {
		return &w.log
	}
	sc := j.span.SpanContext()
	if !sc.IsValid() {
		return &w.log
	}
	l := w.log.With().Str("trace_id", sc.TraceID().String()).Str("span_id", sc.SpanID().String()).Logger()
	return &l
}

// errorType names err by its Go type, never its message: messages may
// quote what a server answered.
func errorType(err error) string { return fmt.Sprintf("%T", err) }

func ackSeq(ack *jetstream.PubAck) uint64 {
	if ack == nil {
		return 0
	}
	return ack.Sequence
}
