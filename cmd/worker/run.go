package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const runUsage = `Usage: worker run [flags]

Consumes guest.checked_in and guest.checked_out from JetStream and assigns or
unassigns the credential in Seam. With no NATS_URL it starts an embedded
JetStream server; with no SEAM_API_KEY it uses the built-in Seam simulator.

Example:
  NATS_URL=nats://127.0.0.1:4222 SEAM_API_KEY=seam_... worker run --concurrency 64
`

func runWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cf := cli.RegisterConfig(fs, true)
	if err := cli.ParseFlags(fs, cf, args, os.Getenv); err != nil {
		return cli.HelpOr(err, fs, runUsage+cli.TracingUsage+"Flags:\n", stdout)
	}
	cfg := cf.Config()
	log := cli.NewLogger(cfg, stderr)
	return serve(ctx, cfg, log, serveHooks{})
}

// serveHooks let the demo watch and steer a worker.
type serveHooks struct {
	// started, when set, is called once the worker consumes.
	started func(*cli.Conn)
}

// serve runs the worker until ctx ends.
func serve(ctx context.Context, cfg *cli.Config, log zerolog.Logger, hooks serveHooks) error {
	// NATS first: a data directory another worker holds is refused before
	// anything else starts or logs, in one line.
	conn, err := cli.Connect(ctx, cfg, log, "keyworker", true)
	if err != nil {
		return err
	}
	defer conn.Close()

	tracing, err := cli.SetupTracing(ctx, os.Getenv, log) // off unless OTEL_EXPORTER_OTLP_*ENDPOINT
	if err != nil {
		return err
	}
	defer tracing.Shutdown(log) // flushes: after the worker stopped

	seam, stopSim, err := newSeam(ctx, cfg, log, tracing.SeamOptions()...)
	if err != nil {
		return err
	}
	defer stopSim()

	ccfg := cfg.ConsumerConfig()
	if err := ccfg.Validate(); err != nil {
		return err
	}
	if err := provision(ctx, conn.JS(), ccfg, cfg.UpdateStreams, log); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var w *consumer.Worker
	metrics := consumer.NewMetrics(reg, func() float64 {
		if w == nil {
			return 0
		}
		return float64(w.InFlight())
	})
	opts := append([]consumer.Option{consumer.WithLogger(log), consumer.WithMetrics(metrics), consumer.WithSeamRateLimit(cfg.SeamRPS)},
		tracing.WorkerOptions()...)
	if cfg.Routing != nil {
		ws, err := workspaces(cfg, cfg.Routing, tracing.SeamOptions()...)
		if err != nil {
			return err
		}
		opts = append(opts, consumer.WithWorkspaces(ws))
	}
	w, err = consumer.New(ctx, conn.JS(), seam, ccfg, opts...)
	if err != nil {
		return err
	}
	stopReload := reloadOnHangUp(ctx, cfg, w, log, tracing.SeamOptions())
	defer stopReload()

	probe := &readiness{conn: conn, worker: w, stream: ccfg.InputStream}
	var wg sync.WaitGroup
	if cfg.HTTPAddr != "" {
		srv, err := startHTTP(cfg.HTTPAddr, reg, probe, log)
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	wg.Add(1)
	go func() {
		defer wg.Done()
		metrics.SampleConsumer(sampleCtx, conn.JS(), ccfg.InputStream, ccfg.Durable, 5*time.Second)
	}()

	log.Info().Int("concurrency", ccfg.Concurrency).Str("stream", ccfg.InputStream).Str("durable", ccfg.Durable).
		Str("http_addr", cfg.HTTPAddr).Msg("keyworker ready")
	if hooks.started != nil {
		hooks.started(conn)
	}
	// Readiness turns false first on shutdown, so no new traffic is routed here.
	context.AfterFunc(ctx, func() { probe.stopping.Store(true) })
	err = w.Run(ctx)
	stopSampling()
	wg.Wait()
	log.Info().Msg("keyworker stopped")
	return err
}

// newSeam builds the Seam client; with no API key (and no routing file) it
// starts the simulator and says so loudly.
func newSeam(ctx context.Context, cfg *cli.Config, log zerolog.Logger, extra ...seamclient.Option) (*seamclient.Client, func(), error) {
	endpoint, key, stop := cfg.SeamEndpoint, cfg.SeamAPIKey, func() {}
	if cfg.Routing != nil {
		return nil, stop, nil // each workspace has its own client
	}
	if key == "" {
		sim := seamtest.New(seamtest.WithAutoCreate(), seamtest.WithRequestLog(1000))
		url, shutdown, err := sim.Serve(ctx, "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("seam simulator: %w", err)
		}
		endpoint, key = url, "simulator"
		stop = func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = shutdown(sctx)
		}
		log.Warn().Str("seam_endpoint", url).Msg("SEAM_API_KEY is not set: using the built-in Seam SIMULATOR. No real credential is assigned or unassigned. Set SEAM_API_KEY for production.")
	}
	opts := append([]seamclient.Option{seamclient.WithTimeout(cfg.SeamTimeout)}, extra...)
	if cfg.SeamWorkspaceID != "" {
		opts = append(opts, seamclient.WithWorkspaceID(cfg.SeamWorkspaceID))
	}
	c, err := seamclient.New(endpoint, key, opts...)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("SEAM_ENDPOINT: %w", err)
	}
	return c, stop, nil
}

// workspaces builds each routed workspace's Seam client: its own key,
// endpoint (SEAM_ENDPOINT when it names none), seam-workspace header and
// rate ceiling (KEYWORKER_SEAM_RPS when it names none).
func workspaces(cfg *cli.Config, specs []cli.WorkspaceSpec, extra ...seamclient.Option) ([]consumer.Workspace, error) {
	out := make([]consumer.Workspace, 0, len(specs))
	for _, s := range specs {
		endpoint := cmp.Or(s.Endpoint, cfg.SeamEndpoint)
		opts := append([]seamclient.Option{seamclient.WithTimeout(cfg.SeamTimeout), seamclient.WithWorkspaceID(s.ID)}, extra...)
		c, err := seamclient.New(endpoint, s.APIKey, opts...)
		if err != nil {
			return nil, fmt.Errorf("KEYWORKER_WORKSPACES: workspace %s: %w", s.ID, err)
		}
		out = append(out, consumer.Workspace{ID: s.ID, Seam: c, RateLimit: cmp.Or(s.SeamRPS, cfg.SeamRPS), Properties: s.Properties, Default: s.Default})
	}
	return out, nil
}

// reloadOnHangUp reads the routing file again on every SIGHUP. A file that
// cannot be used keeps the routing in force and says why; events in flight
// finish with the workspace they were routed to.
func reloadOnHangUp(ctx context.Context, cfg *cli.Config, w *consumer.Worker, log zerolog.Logger, seamOpts []seamclient.Option) func() {
	ctx, cancel := context.WithCancel(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if cfg.Workspaces == "" {
				log.Warn().Msg("SIGHUP: no KEYWORKER_WORKSPACES routing file to reload")
				continue
			}
			err := func() error {
				specs, err := cfg.LoadRouting(os.Getenv)
				if err != nil {
					return err
				}
				ws, err := workspaces(cfg, specs, seamOpts...)
				if err != nil {
					return err
				}
				return w.SetWorkspaces(ws)
			}()
			if err != nil {
				log.Error().Err(err).Msg("SIGHUP: routing file refused: the routing in force stays")
			}
		}
	}()
	return func() { signal.Stop(hup); cancel(); <-done }
}

// startHTTP serves /metrics, /healthz and /readyz.
func startHTTP(addr string, reg *prometheus.Registry, probe *readiness, log zerolog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("KEYWORKER_HTTP_ADDR: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		cli.WriteJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		reasons, unhealthy := probe.check(r.Context())
		if len(reasons) > 0 {
			cli.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reasons": reasons})
			return
		}
		body := map[string]any{"ready": true}
		if len(unhealthy) > 0 {
			body["unhealthy_workspaces"] = unhealthy
		}
		cli.WriteJSON(w, http.StatusOK, body)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("http server")
		}
	}()
	return srv, nil
}

// readiness answers /readyz: NATS connected, the input stream reachable,
// the Seam health gate of at least one workspace closed (Seam answering and
// taking the key), and not shutting down.
type readiness struct {
	conn     *cli.Conn
	worker   *consumer.Worker
	stream   string
	stopping atomic.Bool
}

func (p *readiness) check(ctx context.Context) (reasons, unhealthy []string) {
	if p.stopping.Load() {
		reasons = append(reasons, "shutting down")
	}
	if !p.conn.NC().IsConnected() {
		reasons = append(reasons, "nats: "+p.conn.NC().Status().String())
	} else {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := p.conn.JS().Stream(sctx, p.stream)
		cancel()
		switch {
		case err != nil && !p.conn.NC().IsConnected():
			// The connection went while asking: that is the reason.
			reasons = append(reasons, "nats: "+p.conn.NC().Status().String())
		case err != nil:
			reasons = append(reasons, "stream "+p.stream+": "+err.Error())
		}
	}
	all := p.worker.Workspaces()
	healthy := false
	for _, x := range all {
		var state, what string
		switch x.Health {
		case consumer.SeamHealthy:
			healthy = true
			continue
		case consumer.SeamUnauthorized:
			state, what = "seam_unauthorized", "Seam refuses the API key (401/403) since %s; events wait, nothing is dead-lettered"
		case consumer.SeamUnavailable:
			state, what = "seam_unavailable", "Seam keeps failing since %s; events wait and are handled when it is back"
		}
		if x.ID != "" {
			state += ": workspace " + x.ID
		}
		unhealthy = append(unhealthy, state+": "+fmt.Sprintf(what, x.Since.UTC().Format(time.RFC3339)))
	}
	if !healthy {
		// No workspace takes events: not ready, every one says why.
		reasons = append(reasons, unhealthy...)
		unhealthy = nil
	}
	return reasons, unhealthy
}

// provision runs consumer.Provision until it succeeds, for up to a minute:
// on a cluster that is still forming, or with another replica creating the
// same streams at the same moment, the first attempts can fail. A conflict
// or a bad configuration is final at once.
func provision(ctx context.Context, js jetstream.JetStream, c consumer.Config, update bool, log zerolog.Logger) error {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(250*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(time.Minute),
	)
	op := func() error {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := consumer.Provision(actx, js, c, update)
		if errors.Is(err, consumer.ErrConflict) || errors.Is(err, consumer.ErrInvalidConfig) {
			return backoff.Permanent(err)
		}
		return err
	}
	notify := func(err error, d time.Duration) {
		log.Warn().Err(err).Dur("retry_in", d).Msg("creating streams, consumer and buckets: retrying")
	}
	return backoff.RetryNotify(op, backoff.WithContext(b, ctx), notify)
}
