package main

// Helpers for the fault-tolerance tests (faults_*_test.go): they build the
// worker and nats-server binaries once per test run, run them as separate
// processes on loopback ports, and read the outcome streams back.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// procBin is a binary built for this test run: lazily, once, so tests
// that run no process do not pay for it, into a directory TestMain
// removes.
type procBin struct {
	name, pkg string
	once      sync.Once
	dir, path string
	err       error
}

var (
	procWorkerBin = &procBin{name: "worker", pkg: "."}
	procNATSBin   = &procBin{name: "nats-server", pkg: "github.com/nats-io/nats-server/v2"}
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, b := range []*procBin{procWorkerBin, procNATSBin} {
		if b.dir != "" {
			_ = os.RemoveAll(b.dir)
		}
	}
	os.Exit(code)
}

// build returns the path of b, building it on first use. Every test that
// runs a built binary comes through here, so under -short it is skipped,
// saying so.
func (b *procBin) build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the " + b.name + " binary: skipped under -short")
	}
	b.once.Do(func() {
		start := time.Now()
		b.dir, b.err = os.MkdirTemp("", "keyworker-bin-"+b.name+"-*")
		if b.err != nil {
			return
		}
		// go test puts its own GOROOT/bin first on the PATH of tests.
		goBin, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("building %s needs the go command: %w", b.name, err)
			return
		}
		b.path = filepath.Join(b.dir, b.name)
		out, err := exec.Command(goBin, "build", "-o", b.path, b.pkg).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", b.name, err, out)
			return
		}
		t.Logf("built %s in %s", b.name, time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// procFreePort returns a loopback port nobody listens on right now.
func procFreePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(consumertest.FreeAddr(t))
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// newUUID returns a random event, credential or user id.
var newUUID = cli.NewUUID

// procNATS is a nats-server process with JetStream, restartable on the
// same port and store.
type procNATS struct {
	t          *testing.T
	bin        string
	port       int
	dir        string
	user, pass string
	runs       int
	cmd        *exec.Cmd
	exited     chan struct{}
}

// procStartNATS starts nats-server with JetStream on a free loopback port; with
// user set it requires that user and password.
func procStartNATS(t *testing.T, user, pass string) *procNATS {
	t.Helper()
	bin := procNATSBin.build(t)
	n := &procNATS{t: t, bin: bin, port: procFreePort(t), dir: t.TempDir(), user: user, pass: pass}
	n.start()
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			var logs []string
			for i := 1; i <= n.runs; i++ {
				logs = append(logs, filepath.Join(n.dir, fmt.Sprintf("nats-server-%d.log", i)))
			}
			procKeepLogs(t, logs)
		}
	})
	return n
}

// URL is the client URL, without credentials.
func (n *procNATS) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

func (n *procNATS) start() {
	n.t.Helper()
	n.runs++
	logPath := filepath.Join(n.dir, fmt.Sprintf("nats-server-%d.log", n.runs))
	args := []string{
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-n", "keyworker-faults",
		"-js", "-sd", filepath.Join(n.dir, "store"),
		"-l", logPath,
	}
	if n.user != "" {
		args = append(args, "--user", n.user, "--pass", n.pass)
	}
	cmd := exec.Command(n.bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	n.cmd, n.exited = cmd, exited
	natstest.WaitFor(n.t, 20*time.Second, func() error {
		select {
		case <-exited:
			n.t.Fatalf("nats-server run %d exited: %v\n%s", n.runs, cmd.ProcessState, procTail(logPath, 20))
		default:
		}
		if err := n.ping(); err != nil {
			return fmt.Errorf("nats-server run %d not ready: %w\n%s", n.runs, err, procTail(logPath, 20))
		}
		return nil
	})
}

// ping says whether JetStream answers on the server.
func (n *procNATS) ping() error {
	nc, err := nats.Connect(n.URL(), n.authOpts()...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

func (n *procNATS) authOpts() []nats.Option {
	if n.user == "" {
		return nil
	}
	return []nats.Option{nats.UserInfo(n.user, n.pass)}
}

// kill sends SIGKILL and waits for the process to go.
func (n *procNATS) kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

// procWorker runs the worker binary; each start is a new run with its own
// log file (stdout and stderr).
type procWorker struct {
	t        *testing.T
	bin      string
	env      []string
	httpAddr string
	dir      string
	logs     []string
	cmd      *exec.Cmd
	exited   chan struct{}
	logFile  *os.File
}

// procNewWorker prepares a worker with the base environment plus env
// (KEY=value). It does not start it.
func procNewWorker(t *testing.T, env ...string) *procWorker {
	t.Helper()
	bin := procWorkerBin.build(t)
	w := &procWorker{t: t, bin: bin, dir: t.TempDir()}
	w.httpAddr = consumertest.FreeAddr(t)
	w.env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + w.dir,
		"KEYWORKER_HTTP_ADDR=" + w.httpAddr,
		"KEYWORKER_DATA_DIR=" + filepath.Join(w.dir, "data"),
		"LOG_FORMAT=json",
	}, env...)
	t.Cleanup(func() {
		w.kill()
		if t.Failed() {
			for _, p := range w.logs {
				t.Logf("last warnings and errors of %s:\n%s", filepath.Base(p), procTailLevel(p, 10))
			}
			procKeepLogs(t, w.logs)
		}
	})
	return w
}

// start starts a new run of the worker.
func (w *procWorker) start() {
	w.t.Helper()
	if w.cmd != nil {
		w.t.Fatal("worker already running")
	}
	path := filepath.Join(w.dir, fmt.Sprintf("worker-%d.log", len(w.logs)+1))
	f, err := os.Create(path)
	if err != nil {
		w.t.Fatal(err)
	}
	w.logs = append(w.logs, path)
	cmd := exec.Command(w.bin, "run")
	cmd.Env = w.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		w.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	w.cmd, w.exited, w.logFile = cmd, exited, f
}

// running reports whether the current run has not exited.
func (w *procWorker) running() bool {
	if w.cmd == nil {
		return false
	}
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// waitReady waits until /readyz answers 200.
func (w *procWorker) waitReady(within time.Duration) {
	w.t.Helper()
	natstest.WaitFor(w.t, within, func() error {
		if !w.running() {
			w.t.Fatalf("worker exited before it was ready: %v\n%s", w.cmd.ProcessState, procTail(w.logs[len(w.logs)-1], 20))
		}
		code, body, err := w.readyz()
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d %s", code, body)
		}
		return nil
	})
}

// readyz returns the status and body of GET /readyz.
func (w *procWorker) readyz() (int, string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + w.httpAddr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// kill sends SIGKILL to the current run, if any, and waits for it.
func (w *procWorker) kill() {
	if w.cmd == nil {
		return
	}
	_ = w.cmd.Process.Kill()
	<-w.exited
	w.finish()
}

func (w *procWorker) finish() {
	w.cmd = nil
	if w.logFile != nil {
		w.logFile.Close()
		w.logFile = nil
	}
}

// terminate sends SIGTERM and waits up to within for the run to exit. It
// returns the exit code and the time from the signal to the exit.
func (w *procWorker) terminate(within time.Duration) (int, time.Duration) {
	w.t.Helper()
	start := time.Now()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(within):
		w.t.Fatalf("worker still running %s after SIGTERM", within)
	}
	elapsed := time.Since(start)
	code := w.cmd.ProcessState.ExitCode()
	w.finish()
	return code, elapsed
}

// logLines returns every line every run of the worker wrote.
func (w *procWorker) logLines() []string {
	w.t.Helper()
	var lines []string
	for _, p := range w.logs {
		b, err := os.ReadFile(p)
		if err != nil {
			w.t.Fatal(err)
		}
		for l := range strings.SplitSeq(string(b), "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// procKeepLogs copies the logs of a failed test out of its temporary
// directory, which the test is about to remove, and says where they are.
func procKeepLogs(t *testing.T, paths []string) {
	dir, err := os.MkdirTemp("", "keyworker-faults-logs-*")
	if err != nil {
		t.Logf("keeping logs: %v", err)
		return
	}
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d-%s", i+1, filepath.Base(p))), b, 0o644)
		}
		if err != nil {
			t.Logf("keeping %s: %v", p, err)
		}
	}
	t.Logf("logs kept in %s", dir)
}

// procTailLevel returns the last n lines of a worker log that are not at
// info or debug level.
func procTailLevel(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.Contains(l, `"level":"info"`) && !strings.Contains(l, `"level":"debug"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func procTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// procSeam is a Seam fake on a loopback port that also records the status
// of every answer, so a test knows which call got which fault; intercept,
// when set, may answer a call instead of the fake.
type procSeam struct {
	*seamtest.Fake
	URL string

	mu        sync.Mutex
	answers   []procAnswer
	intercept func(w http.ResponseWriter, r *http.Request, body []byte) bool
}

// procAnswer is how the server answered one call. Dropped is a connection
// closed without an answer (a reset, or applied-then-dropped).
type procAnswer struct {
	Path    string
	Body    []byte
	Status  int
	Dropped bool
	At      time.Time
}

func procNewSeam(t *testing.T, opts ...seamtest.Option) *procSeam {
	t.Helper()
	s := &procSeam{Fake: seamtest.New(opts...)}
	base, cancel := context.WithCancel(context.Background())
	ts := httptest.NewUnstartedServer(s)
	ts.Config.BaseContext = func(net.Listener) context.Context { return base }
	ts.Start()
	s.URL = ts.URL
	t.Cleanup(func() { cancel(); ts.Close() })
	return s
}

func (s *procSeam) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &procRecorder{ResponseWriter: w}
	defer func() {
		s.mu.Lock()
		s.answers = append(s.answers, procAnswer{Path: r.URL.Path, Body: body, Status: rec.status, Dropped: rec.hijacked, At: time.Now()})
		s.mu.Unlock()
	}()
	s.mu.Lock()
	intercept := s.intercept
	s.mu.Unlock()
	if intercept != nil && intercept(rec, r, body) {
		return
	}
	s.Fake.ServeHTTP(rec, r)
}

// setIntercept makes f answer the calls it returns true for.
func (s *procSeam) setIntercept(f func(w http.ResponseWriter, r *http.Request, body []byte) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.intercept = f
}

// Answers returns a copy of the recorded answers.
func (s *procSeam) Answers() []procAnswer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]procAnswer(nil), s.answers...)
}

type procRecorder struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (a *procRecorder) WriteHeader(code int) {
	if a.status == 0 {
		a.status = code
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *procRecorder) Write(b []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return a.ResponseWriter.Write(b)
}

func (a *procRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	a.hijacked = true
	return a.ResponseWriter.(http.Hijacker).Hijack()
}

// procRequestCredential is the acs_credential_id of a recorded request body.
func procRequestCredential(body []byte) string {
	var v struct {
		ID string `json:"acs_credential_id"`
	}
	_ = json.Unmarshal(body, &v)
	return strings.ToLower(v.ID)
}

// procClient is the test's own NATS connection: it publishes input events
// and reads the outcome streams, reconnecting as long as it takes.
type procClient struct {
	t   *testing.T
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg consumer.Config

	mu      sync.Mutex
	retried map[string]int // publishes tried again, by Nats-Msg-Id
}

func procConnect(t *testing.T, n *procNATS) *procClient {
	t.Helper()
	opts := append(n.authOpts(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectBufSize(-1)) // fail fast while disconnected; publish retries
	nc, err := nats.Connect(n.URL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := consumer.Config{}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &procClient{t: t, nc: nc, js: js, cfg: cfg, retried: map[string]int{}}
}

// publish publishes doc with the given Nats-Msg-Id, retrying until it is
// stored or ctx ends; retries are deduplicated by the stream, so the
// sequence returned is that of the one stored copy.
func (c *procClient) publish(ctx context.Context, subject string, doc []byte, msgID string) (uint64, error) {
	for {
		// Listening before the publish, a reconnect between a failure and
		// the wait below is not missed.
		connected := c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
		msg := &nats.Msg{Subject: subject, Data: doc, Header: nats.Header{}}
		msg.Header.Set("Content-Type", schemas.ContentType)
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := c.js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID))
		cancel()
		if err == nil {
			c.nc.RemoveStatusListener(connected)
			return ack.Sequence, nil
		}
		if ctx.Err() != nil || c.nc.IsClosed() {
			c.nc.RemoveStatusListener(connected)
			return 0, fmt.Errorf("publish %s: %w", msgID, err)
		}
		c.awaitServer(ctx, connected)
		// The failed try may have been stored, its ack lost: past the
		// duplicate window, this one is a second message.
		c.mu.Lock()
		c.retried[msgID]++
		c.mu.Unlock()
	}
}

// retries is how many times the publish of msgID was tried again.
func (c *procClient) retries(msgID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retried[msgID]
}

// awaitServer waits after a failed publish: while the connection is down,
// until it is back or closed (connected reports either); while it is up, JetStream on a
// restarted server is not answering yet, and only a short pause before the
// next try will do.
func (c *procClient) awaitServer(ctx context.Context, connected chan nats.Status) {
	defer c.nc.RemoveStatusListener(connected)
	if c.nc.IsConnected() {
		time.Sleep(50 * time.Millisecond)
		return
	}
	select {
	case <-connected:
	case <-ctx.Done():
	}
}

// streamMsgs is the number of messages in a stream.
func (c *procClient) streamMsgs(name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// outcomeCount is the number of results plus dead letters.
func (c *procClient) outcomeCount() (int, error) {
	r, err := c.streamMsgs(c.cfg.ResultsStream)
	if err != nil {
		return 0, err
	}
	d, err := c.streamMsgs(c.cfg.DeadLetterStream)
	if err != nil {
		return 0, err
	}
	return int(r + d), nil
}

// drained says why the durable consumer is not drained yet, or nil.
func (c *procClient) drained() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return consumertest.Drained(ctx, c.js, c.cfg)
}

// outcomes reads every event of the results and dead-letter streams.
func (c *procClient) outcomes() []consumertest.Outcome {
	c.t.Helper()
	out, err := consumertest.Outcomes(context.Background(), c.js, c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}
