package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/seamclient"
)

// Pipelines the bench compares.
const (
	pipelineFloor     = "floor"
	pipelineKeyworker = "keyworker"
)

// apiKey is the bearer token the bench's clients send to its Seam fake.
const apiKey = "bench-key"

// runningPipeline is a started pipeline: in this process or a child.
type runningPipeline struct {
	stop func() error
	// pid of the child process; 0 when in process.
	pid int
	// seamErrors counts failed Seam calls of the floor, which acks anyway.
	seamErrors func() int64
}

// execute runs one pipeline on a fresh environment and measures it.
func execute(ctx context.Context, o options, s scenario, pipeline string, child bool, prof *profiler) *runResult {
	res := &runResult{Pipeline: pipeline, Concurrency: s.Concurrency, Published: s.Events}
	fail := func(err error) *runResult {
		res.Error = err.Error()
		return res
	}
	parent := ctx
	// The hard limit covers setup and teardown as well as the run.
	ctx, cancel := context.WithTimeout(ctx, s.Timeout+60*time.Second)
	defer cancel()

	ev, err := newEventSet(s.Events)
	if err != nil {
		return fail(err)
	}
	env, err := startEnvironment(ctx, s, ev)
	if err != nil {
		return fail(err)
	}
	defer env.close()
	if s.OfferedRate == 0 {
		if err := env.preload(ctx, ev); err != nil {
			return fail(err)
		}
	}
	var stopObserving func()
	switch {
	case pipeline == pipelineKeyworker:
		stopObserving, err = env.observeOutcomes(ev)
	case child:
		stopObserving, err = env.observeChildAcks(ev)
	default:
		stopObserving = func() {}
	}
	if err != nil {
		return fail(err)
	}
	defer stopObserving()

	// Memory: start from a clean heap and reset the peak, so the peak is
	// this run's (the kernel keeps one high-water mark per process).
	freeMemory()
	res.RSSScope = "bench process"
	res.BaselineRSS = procStatus("self", "VmRSS")
	res.LoadAvg = loadAvg()
	res.PeakReset = resetPeakRSS()

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var p *runningPipeline
	if pipeline == pipelineKeyworker && !child {
		if err := prof.startCPU(s.ID); err != nil {
			return fail(err)
		}
		defer prof.finishCPU()
	}
	var outage *outageClock
	if s.Outage > 0 {
		// The fake has been down since it started; the outage counts from
		// here, so that every call of the pipeline falls inside it.
		outage = env.endOutage(time.Now(), s.Outage)
		defer outage.stop()
	}
	switch {
	case child:
		p, err = startChild(runCtx, o.exe, env, s, pipeline)
		res.RSSScope = "worker process"
	case pipeline == pipelineKeyworker:
		p, err = startKeyworker(runCtx, env)
	default:
		p, err = startFloor(runCtx, env, ev)
	}
	if err != nil {
		return fail(err)
	}
	procID := "self"
	if p.pid != 0 {
		procID = strconv.Itoa(p.pid)
	}
	cpuBefore := cpuTime(procID)
	waitBefore, waitKnown := cpuPressure()
	start := time.Now()
	offered := make(chan error, 1)
	if s.OfferedRate > 0 {
		go func() { offered <- env.offer(runCtx, ev, s.OfferedRate) }()
	} else {
		offered <- nil
	}

	timer := time.NewTimer(s.Timeout)
	defer timer.Stop()
	select {
	case <-ev.done:
	case <-timer.C:
		res.TimedOut = true
	case <-ctx.Done():
		if parent.Err() != nil {
			res.Error = "interrupted"
		} else {
			res.TimedOut = true
		}
	}
	if s.OfferedRate > 0 && ev.publishedAt[0].Load() > 0 {
		start = time.Unix(0, ev.publishedAt[0].Load())
	}
	end := time.Unix(0, ev.lastSeen.Load())

	// Measure before stopping: the pipeline is at its fullest now.
	cpu := cpuTime(procID) - cpuBefore
	if waitAfter, ok := cpuPressure(); ok && waitKnown {
		res.CPUWait = float64(waitAfter-waitBefore) / float64(time.Since(start))
	}
	res.PeakRSS = procStatus(procID, "VmHWM")
	if p.pid != 0 {
		res.BaselineRSS = 0
	}
	if pipeline == pipelineKeyworker && !child {
		prof.finishCPU()
		if err := prof.writeHeap(s.ID); err != nil {
			res.Error = err.Error()
		}
	}
	// Done: the publisher has published everything, but its last
	// acknowledgements may still be on the way. After a timeout it ends
	// with runCtx.
	if !res.TimedOut && res.Error == "" {
		select {
		case err := <-offered:
			offered <- err
		case <-time.After(10 * time.Second):
			res.Error = "publishing did not finish within 10 s of the last outcome"
		}
	}
	stopRun()
	if err := p.stop(); err != nil && res.Error == "" {
		res.Error = err.Error()
	}
	if err := <-offered; err != nil && res.Error == "" && !res.TimedOut && parent.Err() == nil {
		res.Error = err.Error()
	}
	if p.seamErrors != nil {
		res.SeamErrors = p.seamErrors()
	}
	res.measure(ev, env, start, end)
	if outage != nil {
		res.Outage = outage.result(end)
	}
	if res.Events > 0 {
		res.CPUPerEventUs = float64(cpu) / float64(time.Microsecond) / float64(res.Events)
	}
	return res
}

// measure fills in the figures from what was observed.
func (r *runResult) measure(ev *eventSet, env *environment, start, end time.Time) {
	r.Events = int(ev.observed.Load())
	r.DeadLetters = int(ev.deadLetters.Load())
	r.Skipped = int(ev.skipped.Load())
	r.UnmatchedOutcomes = int(ev.unknown.Load())
	r.SeamEffects = env.fake.TotalEffects()
	r.SeamCalls = env.fake.Calls("")
	r.SeamRateLimited = env.fake.RateLimited()
	if r.Events > 0 {
		r.SeamCallsPerEvent = float64(r.SeamCalls) / float64(r.Events)
	}
	if secs := end.Sub(start).Seconds(); r.Events > 0 && secs > 0 {
		r.Seconds = secs
		r.EventsPerSec = float64(r.Events) / secs
	}
	var e2e, added []time.Duration
	var seenAt []int64
	for i := range ev.docs {
		seen, pub := ev.observedAt[i].Load(), ev.publishedAt[i].Load()
		if seen != 0 {
			seenAt = append(seenAt, seen)
		}
		if seen == 0 || pub == 0 {
			continue
		}
		d := time.Duration(seen - pub)
		e2e = append(e2e, d)
		added = append(added, max(0, d-time.Duration(ev.insideSeam[i].Load())))
	}
	r.SteadyEventsPerSec = steadyRate(seenAt)
	r.E2E = latencies(e2e)
	r.Added = latencies(added)
}

// startKeyworker runs keyworker's pipeline in this process as
// `worker run` wires it: its own connection, a seamclient.Client, a
// logger at info level (into io.Discard) and Prometheus metrics.
func startKeyworker(ctx context.Context, env *environment) (*runningPipeline, error) {
	nc, err := nats.Connect(env.url, nats.Name("keyworker"))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	client, err := seamclient.New(env.seamURL, apiKey, seamclient.WithTimeout(env.cfg.SeamTimeout))
	if err != nil {
		nc.Close()
		return nil, err
	}
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	metrics := consumer.NewMetrics(prometheus.NewRegistry(), nil)
	w, err := consumer.New(ctx, js, client, env.cfg, consumer.WithLogger(log), consumer.WithMetrics(metrics))
	if err != nil {
		nc.Close()
		return nil, err
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	return &runningPipeline{stop: func() error {
		defer nc.Close()
		select {
		case err := <-ran:
			return err
		case <-time.After(env.cfg.ShutdownGrace + 10*time.Second):
			return errors.New("keyworker did not stop")
		}
	}}, nil
}

// startFloor runs the floor in this process; an event counts as done
// when its ack is sent.
func startFloor(ctx context.Context, env *environment, ev *eventSet) (*runningPipeline, error) {
	nc, err := nats.Connect(env.url, nats.Name("keyworker-bench-floor"))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	client, err := seamclient.New(env.seamURL, apiKey, seamclient.WithTimeout(env.cfg.SeamTimeout))
	if err != nil {
		nc.Close()
		return nil, err
	}
	var seamErrs atomic.Int64
	ran := make(chan error, 1)
	go func() {
		ran <- floorLoop(ctx, js, client, env.cfg, &seamErrs, func(cred string) {
			if i, ok := ev.byCred[cred]; ok {
				ev.observe(i, time.Now().UnixNano())
			}
		})
	}()
	return &runningPipeline{
		stop: func() error {
			defer nc.Close()
			select {
			case err := <-ran:
				return err
			case <-time.After(15 * time.Second):
				return errors.New("floor did not stop")
			}
		},
		seamErrors: seamErrs.Load,
	}, nil
}

// floorLoop is the floor: the least a worker must do per event. It
// pulls from the same durable consumer as keyworker with the same bounded
// concurrency, decodes the event, makes one Seam call and acks, whatever
// the call's result. No validation, idempotency, ordering, retries or
// outcome events. acked is called after each ack. It returns when ctx ends
// and the handlers in flight are done.
func floorLoop(ctx context.Context, js jetstream.JetStream, seam *seamclient.Client, cfg consumer.Config, seamErrs *atomic.Int64, acked func(cred string)) error {
	cons, err := js.Consumer(ctx, cfg.InputStream, cfg.Durable)
	if err != nil {
		return err
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(cfg.Concurrency))
	if err != nil {
		return err
	}
	stopped := context.AfterFunc(ctx, iter.Stop)
	defer stopped()
	hctx := context.WithoutCancel(ctx)
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			break
		}
		if err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var ev struct {
				Data struct {
					Cred string `json:"acs_credential_id"`
					User string `json:"acs_user_id"`
				} `json:"data"`
			}
			if err := json.Unmarshal(msg.Data(), &ev); err != nil {
				_ = msg.Term()
				return
			}
			if _, err := seam.Assign(hctx, seamclient.Request{ACSCredentialID: ev.Data.Cred, ACSUserID: ev.Data.User}); err != nil {
				seamErrs.Add(1)
			}
			if msg.Ack() == nil {
				acked(ev.Data.Cred)
			}
		}()
	}
	wg.Wait()
	return nil
}

// childFloorArg makes `worker bench` run the floor loop as a child
// process, for P5: `worker bench <arg> --nats-url U --seam-endpoint U
// --concurrency N`. It is not in the usage text.
const childFloorArg = "--internal-floor-child"

// runFloorChild runs the floor until ctx ends (SIGTERM), reporting
// each ack on ackedSubject. It prints "ready" once consuming and
// "seam_errors=N" at the end.
func runFloorChild(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench floor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	url := fs.String("nats-url", "", "")
	seamURL := fs.String("seam-endpoint", "", "")
	concurrency := fs.Int("concurrency", 32, "")
	if err := fs.Parse(args); err != nil {
		return &cli.UsageError{Msg: "bench: " + err.Error()}
	}
	nc, err := nats.Connect(*url, nats.Name("keyworker-bench-floor"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	client, err := seamclient.New(*seamURL, apiKey)
	if err != nil {
		return err
	}
	cfg := consumerConfig(*concurrency)
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "ready")
	var seamErrs atomic.Int64
	err = floorLoop(ctx, js, client, cfg, &seamErrs, func(cred string) {
		_ = nc.Publish(ackedSubject, []byte(cred))
	})
	_ = nc.Flush()
	fmt.Fprintf(stdout, "seam_errors=%d\n", seamErrs.Load())
	return err
}

// startChild runs a pipeline in a child process, so that its peak
// RSS is its own: keyworker as `worker run` against the bench's NATS
// server and Seam fake, the floor as runFloorChild. The clock starts
// once the child says it is consuming.
func startChild(ctx context.Context, exe string, env *environment, s scenario, pipeline string) (*runningPipeline, error) {
	conc := strconv.Itoa(s.Concurrency)
	var args []string
	out := newChildOutput("ready")
	errOut := newChildOutput("keyworker ready")
	ready := out
	if pipeline == pipelineKeyworker {
		args = []string{"run", "--nats-url", env.url, "--seam-endpoint", env.seamURL, "--seam-api-key", apiKey,
			"--http-addr=", "--concurrency", conc, "--log-level", "info", "--log-format", "json",
			"--shutdown-grace", env.cfg.ShutdownGrace.String()}
		ready = errOut
	} else {
		args = []string{"bench", childFloorArg, "--nats-url", env.url, "--seam-endpoint", env.seamURL, "--concurrency", conc}
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start child: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("bench: %s child: %w: %s", pipeline, err, errOut.tail())
			}
			return nil
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("bench: %s child did not stop on SIGTERM", pipeline)
		}
	}
	select {
	case <-ready.seen:
	case err := <-exited:
		return nil, fmt.Errorf("bench: %s child exited before consuming: %v: %s", pipeline, err, errOut.tail())
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("bench: %s child not ready within 20 s: %s", pipeline, errOut.tail())
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		return nil, ctx.Err()
	}
	p := &runningPipeline{stop: stop, pid: cmd.Process.Pid}
	if pipeline == pipelineFloor {
		p.seamErrors = func() int64 {
			_, after, _ := strings.Cut(out.tail(), "seam_errors=")
			n, _ := strconv.ParseInt(strings.TrimSpace(after), 10, 64)
			return n
		}
	}
	return p, nil
}

// childEnv is this process's environment without the worker's own
// variables: the child's configuration comes from its flags only.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "NATS_") || strings.HasPrefix(name, "SEAM_") ||
			strings.HasPrefix(name, "KEYWORKER_") || name == "LOG_LEVEL" || name == "LOG_FORMAT" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// childOutput is a child's output: it keeps the last few KiB and closes
// seen when marker first appears.
type childOutput struct {
	marker []byte
	seen   chan struct{}
	mu     sync.Mutex
	buf    []byte
	found  bool
}

func newChildOutput(marker string) *childOutput {
	return &childOutput{marker: []byte(marker), seen: make(chan struct{})}
}

func (m *childOutput) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.buf = append(m.buf, p...)
	if !m.found && bytes.Contains(m.buf, m.marker) {
		m.found = true
		close(m.seen)
	}
	if len(m.buf) > 8<<10 {
		m.buf = append(m.buf[:0], m.buf[len(m.buf)-4<<10:]...)
	}
	return len(p), nil
}

func (m *childOutput) tail() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := string(m.buf)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}
