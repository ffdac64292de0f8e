package consumer

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
)

// Metrics are the worker's Prometheus collectors. A nil *Metrics records
// nothing, so the pipeline never checks.
type Metrics struct {
	events       *prometheus.CounterVec
	eventSeconds *prometheus.HistogramVec
	seamRequests *prometheus.CounterVec
	seamSeconds  *prometheus.HistogramVec
	retries      *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	pending      prometheus.Gauge
	ackPending   prometheus.Gauge
	redelivered  prometheus.Gauge
	gate         *prometheus.GaugeVec
	seamRate     *prometheus.GaugeVec
	// wsEvents counts outcomes per Seam workspace; the label takes only
	// the configured workspaces, and "none" for events never routed.
	wsEvents *prometheus.CounterVec
}

// NewMetrics registers the collectors with reg. inFlight, when not nil,
// is sampled at each scrape.
func NewMetrics(reg prometheus.Registerer, inFlight func() float64) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyworker_events_total", Help: "Deliveries handled, by event type and outcome (assigned, unassigned, skipped, duplicate, retry, dead_letter).",
		}, []string{"type", "outcome"}),
		eventSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyworker_event_duration_seconds", Help: "Time to handle one delivery, by event type.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"type"}),
		seamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyworker_seam_requests_total", Help: "Seam requests, by workspace, endpoint and status class (2xx, 4xx, 5xx, error).",
		}, []string{"workspace", "endpoint", "status_class"}),
		seamSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyworker_seam_request_duration_seconds", Help: "Seam request latency, by workspace and endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"workspace", "endpoint"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyworker_retries_total", Help: "In-process retries of Seam calls, by endpoint.",
		}, []string{"endpoint"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyworker_dead_letters_total", Help: "Dead letters published, by error kind.",
		}, []string{"kind"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyworker_consumer_pending", Help: "Messages not yet delivered to the durable consumer (sampled).",
		}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyworker_consumer_ack_pending", Help: "Messages delivered and not yet acknowledged (sampled).",
		}),
		redelivered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyworker_consumer_redelivered", Help: "Messages redelivered and not yet acknowledged (sampled).",
		}),
		gate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyworker_seam_gate", Help: "Seam health gate per workspace: 1 for the current state (healthy, seam_unavailable, seam_unauthorized), 0 for the others.",
		}, []string{"workspace", "state"}),
		seamRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyworker_seam_adaptive_rate", Help: "Requests per second the process allows itself towards a workspace after Seam answered 429 (0: no slowdown in force).",
		}, []string{"workspace"}),
		wsEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyworker_workspace_events_total", Help: "Deliveries handled, by Seam workspace (none: not routed) and outcome (assigned, unassigned, skipped, duplicate, retry, dead_letter).",
		}, []string{"workspace", "outcome"}),
	}
	reg.MustRegister(m.events, m.eventSeconds, m.seamRequests, m.seamSeconds, m.retries, m.deadLetters,
		m.pending, m.ackPending, m.redelivered, m.gate, m.seamRate, m.wsEvents)
	m.zero()
	if inFlight != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "keyworker_in_flight", Help: "Events being handled now.",
		}, inFlight))
	}
	return m
}

// outcomeLabels are the outcomes an event of the input subject can have.
func outcomeLabels(subject string) []string {
	if subject == schemas.SubjectCheckedOut {
		return []string{"unassigned", "skipped", "duplicate", "retry", "dead_letter"}
	}
	return []string{"assigned", "skipped", "duplicate", "retry", "dead_letter"}
}

// zero creates every series of the bounded label sets at 0: a counter
// that first appears at 1 has no increase to rate(), so an alert on the
// first dead letter after a restart would never fire.
func (m *Metrics) zero() {
	for _, subject := range schemas.InputSubjects() {
		for _, o := range outcomeLabels(subject) {
			m.events.WithLabelValues(subject, o)
		}
	}
	for _, kind := range []string{schemas.ErrorKindInvalidEvent, schemas.ErrorKindPermanent, schemas.ErrorKindRetriesExhausted} {
		m.deadLetters.WithLabelValues(kind)
	}
}

func (m *Metrics) observeOutcome(subject, workspace string, out Outcome, d time.Duration) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(subject, outcomeLabel(out)).Inc()
	m.wsEvents.WithLabelValues(workspace, outcomeLabel(out)).Inc()
	m.eventSeconds.WithLabelValues(subject).Observe(d.Seconds())
}

func outcomeLabel(out Outcome) string {
	switch out.Kind {
	case Done:
		switch out.Subject {
		case "credential.assigned":
			return "assigned"
		case "credential.unassigned":
			return "unassigned"
		case "credential.skipped":
			return "skipped"
		}
		return "done"
	case Duplicate:
		return "duplicate"
	case DeadLettered:
		return "dead_letter"
	}
	return "retry"
}

func (m *Metrics) observeSeam(workspace, endpoint string, resp *seamclient.Response, err error, d time.Duration) {
	if m == nil {
		return
	}
	class := "error"
	var api *seamclient.APIError
	switch {
	case err == nil && resp != nil:
		class = strconv.Itoa(resp.StatusCode/100) + "xx"
	case errors.As(err, &api):
		class = strconv.Itoa(api.StatusCode/100) + "xx"
	}
	m.seamRequests.WithLabelValues(workspace, endpoint, class).Inc()
	m.seamSeconds.WithLabelValues(workspace, endpoint).Observe(d.Seconds())
}

func (m *Metrics) observeRetry(endpoint string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(endpoint).Inc()
}

func (m *Metrics) observeDeadLetter(kind string) {
	if m == nil {
		return
	}
	m.deadLetters.WithLabelValues(kind).Inc()
}

// SampleConsumer copies the durable consumer's pending and redelivered
// counts into the gauges every interval until ctx ends.
func (m *Metrics) SampleConsumer(ctx context.Context, js jetstream.JetStream, stream, durable string, every time.Duration) {
	if m == nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if cons, err := js.Consumer(ctx, stream, durable); err == nil {
			if info, err := cons.Info(ctx); err == nil {
				m.pending.Set(float64(info.NumPending))
				m.ackPending.Set(float64(info.NumAckPending))
				m.redelivered.Set(float64(info.NumRedelivered))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Metrics) observeGate(workspace string, s SeamHealth) {
	if m == nil {
		return
	}
	for _, st := range []SeamHealth{SeamHealthy, SeamUnavailable, SeamUnauthorized} {
		v := 0.0
		if st == s {
			v = 1
		}
		m.gate.WithLabelValues(workspace, st.String()).Set(v)
	}
}

// forgetWorkspace removes the gauges of a workspace no longer routed to;
// its counters stay, as history.
func (m *Metrics) forgetWorkspace(workspace string) {
	if m == nil {
		return
	}
	m.gate.DeletePartialMatch(prometheus.Labels{"workspace": workspace})
	m.seamRate.DeletePartialMatch(prometheus.Labels{"workspace": workspace})
}

func (m *Metrics) observeSlowdown(workspace string, limit float64) {
	if m == nil {
		return
	}
	m.seamRate.WithLabelValues(workspace).Set(limit)
}
