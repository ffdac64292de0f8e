package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/seamclient"
)

// TracingUsage is the --help section on tracing: the OpenTelemetry
// variables the worker reads (the SDK and the exporter read them).
const TracingUsage = `
Tracing (OpenTelemetry; off unless an OTLP endpoint is set):
  OTLP collector URL, e.g. http://otel-collector:4318 ($OTEL_EXPORTER_OTLP_ENDPOINT)
  traces-only URL, used as is, e.g. http://jaeger:4318/v1/traces ($OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
  http/protobuf (default) or grpc ($OTEL_EXPORTER_OTLP_PROTOCOL) ($OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
  headers sent to the collector, key=value,... (never logged) ($OTEL_EXPORTER_OTLP_HEADERS)
  service name, default keyworker ($OTEL_SERVICE_NAME); more resource attributes ($OTEL_RESOURCE_ATTRIBUTES)
  sampler, default parentbased_always_on ($OTEL_TRACES_SAMPLER) ($OTEL_TRACES_SAMPLER_ARG)
  true turns tracing off whatever else is set ($OTEL_SDK_DISABLED)

`

// tracingShutdownTimeout bounds the flush of the spans still buffered at exit.
const tracingShutdownTimeout = 5 * time.Second

// Tracing is the worker's OpenTelemetry set-up. Its zero value (tracing
// off) gives no options: the worker then traces nothing, at no cost.
type Tracing struct {
	provider *sdktrace.TracerProvider
}

// Enabled reports whether spans are exported.
func (t *Tracing) Enabled() bool { return t != nil && t.provider != nil }

// WorkerOptions are the consumer options that trace each delivery.
func (t *Tracing) WorkerOptions() []consumer.Option {
	if !t.Enabled() {
		return nil
	}
	return []consumer.Option{consumer.WithTracerProvider(t.provider)}
}

// SeamOptions instrument the Seam client's HTTP transport: one client span
// per request, below the worker's "seam <endpoint>" span.
func (t *Tracing) SeamOptions() []seamclient.Option {
	if !t.Enabled() {
		return nil
	}
	tp := t.provider
	return []seamclient.Option{seamclient.WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper {
		return otelhttp.NewTransport(rt,
			otelhttp.WithTracerProvider(tp),
			// Seam reads no trace context: none is sent to a third party.
			otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
		)
	})}
}

// Shutdown flushes the spans still buffered and stops the exporter.
func (t *Tracing) Shutdown(log zerolog.Logger) {
	if !t.Enabled() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), tracingShutdownTimeout)
	defer cancel()
	if err := t.provider.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("flushing traces")
	}
}

// ErrTracingConfig is wrapped by every error SetupTracing returns.
var ErrTracingConfig = errors.New("tracing")

// SetupTracing builds the tracer provider the OTEL_ variables ask for
// (OTLP over HTTP/protobuf, or gRPC):
// none unless OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT is set, or
// when OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER is none. A bad
// value is refused with one line naming the variable.
func SetupTracing(ctx context.Context, getenv func(string) string, log zerolog.Logger) (*Tracing, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") ||
		strings.EqualFold(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")), "none") {
		return &Tracing{}, nil
	}
	name, endpoint := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" {
		name, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if endpoint == "" {
		return &Tracing{}, nil
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not quoted: it may carry credentials.
		return nil, fmt.Errorf("%w: %s must be an http or https URL", ErrTracingConfig, name)
	}
	pname, proto := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		pname, proto = "OTEL_EXPORTER_OTLP_PROTOCOL", getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	// The exporter reads the endpoint, headers, timeout and TLS variables itself.
	var (
		exp *otlptrace.Exporter
		err error
	)
	switch proto {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("%w: %s %q is not supported: use http/protobuf (port 4318 of a collector) or grpc (4317)", ErrTracingConfig, pname, proto)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: OTLP exporter: %w", ErrTracingConfig, err)
	}
	// keyworker names the service unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES do: the later detector wins.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", "keyworker")),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: OTEL_RESOURCE_ATTRIBUTES: %w", ErrTracingConfig, err)
	}
	// The sampler comes from OTEL_TRACES_SAMPLER (default parentbased_always_on),
	// the batching from OTEL_BSP_*.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	if proto == "" {
		proto = "http/protobuf"
	}
	log.Info().Str("otlp_endpoint_variable", name).Str("otlp_protocol", proto).Msg("tracing on: exporting spans over OTLP")
	return &Tracing{provider: tp}, nil
}
