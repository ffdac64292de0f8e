package cli

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

func TestSetupTracing_OffUnlessAnEndpointAndRefusesBadValuesNamingTheVariable(t *testing.T) {
	for _, c := range []struct {
		name    string
		env     map[string]string
		on      bool
		refuses string // the variable the error names
	}{
		{name: "nothing set", env: nil},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, on: true},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, on: true},
		{name: "sdk disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}},
		{name: "not a url", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, refuses: "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, on: true},
		{name: "http/json", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, refuses: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, on: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v) // the exporter reads the process environment itself
			}
			tr, err := SetupTracing(context.Background(), func(k string) string { return c.env[k] }, zerolog.Nop())
			if c.refuses != "" {
				if !errors.Is(err, ErrTracingConfig) || !strings.Contains(err.Error(), c.refuses) || ExitCode(err) != 2 {
					t.Fatalf("error %v (exit %d), want one wrapping ErrTracingConfig naming %s, exit 2", err, ExitCode(err), c.refuses)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Shutdown(zerolog.Nop())
			if tr.Enabled() != c.on || (len(tr.WorkerOptions()) > 0) != c.on || (len(tr.SeamOptions()) > 0) != c.on {
				t.Fatalf("enabled %v, %d worker and %d seam options; want on=%v", tr.Enabled(), len(tr.WorkerOptions()), len(tr.SeamOptions()), c.on)
			}
		})
	}
}

// grpcCollector is an OTLP/gRPC trace receiver keeping the span names.
type grpcCollector struct {
	coltrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names []string
}

func (c *grpcCollector) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.names = append(c.names, s.Name)
			}
		}
	}
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func TestSetupTracing_GRPCExportsToTheCollectorAndShutdownFlushes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &grpcCollector{}
	srv := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(srv, col)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + ln.Addr().String(), "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
	for k, v := range env {
		t.Setenv(k, v)
	}
	tr, err := SetupTracing(context.Background(), func(k string) string { return env[k] }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	_, span := tr.provider.Tracer("test").Start(context.Background(), "process guest.checked_in")
	span.End()
	tr.Shutdown(zerolog.Nop()) // flushes the batch
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.names) != 1 || col.names[0] != "process guest.checked_in" {
		t.Fatalf("collector received %v, want the one span", col.names)
	}
}
