// Package simulator is `worker seam-simulator`: the Seam fake
// (seamclient/seamtest) served over HTTP, for demos, container tests and
// rehearsing Seam's bad days against a worker.
package simulator

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const simulatorUsage = `Usage: worker seam-simulator [flags]

Serves a fake of the Seam endpoints keyworker calls (/acs/credentials/assign,
/unassign and /get) until interrupted, for compose files, demos and tests.
Every well-formed credential and user id exists. No real door is touched.

With --inspect it also answers, under the same API key:
  GET /_fake/credentials/{id}                   the credential as /get returns it
  GET /_fake/assigned?credential=ID&user=ID     {"assigned": bool, "effects": n}
  GET /_fake/stats                              call and effect counts

With --workspace ID=KEY (repeatable) it serves several workspaces, each with
its own key and state, as a hotel group's; --pat TOKEN also accepts a
personal access token that names the workspace in the seam-workspace header.

Example:
  worker seam-simulator --addr 127.0.0.1:8080 --api-key sim-key --latency 20ms
  worker seam-simulator --workspace ws_grand=sim-grand --workspace ws_harbour=sim-harbour
  worker seam-simulator --down mixed          # rehearse an outage
  worker seam-simulator --rate-limit 10       # an unannounced rate limit
  worker seam-simulator --sync-delay 2s       # the lock system takes 2 s to have each change
  worker seam-simulator --sync-fail provider_rejected   # every change fails at the provider
  SEAM_ENDPOINT=http://127.0.0.1:8080 SEAM_API_KEY=sim-key worker run

Flags:
`

var downModes = map[string]seamtest.DownMode{
	"off": seamtest.DownOff, "reset": seamtest.DownReset, "503": seamtest.Down503, "mixed": seamtest.DownMixed,
}

// simulatorFlags is the seam-simulator command line.
type simulatorFlags struct {
	addr    string
	apiKey  string
	latency time.Duration
	faults  seamtest.RandomFaults
	inspect bool
	// Seam's bad days, to rehearse them against a worker.
	down      string
	refuseKey bool
	rateLimit float64
	// Provider sync: how Seam's lock or card system lags behind it.
	syncDelay    time.Duration
	syncFail     string
	emptySuccess bool
	// workspaces, when any, are served each with its own key and state.
	workspaces [][2]string // id, key
	pat        string
}

// Run runs the seam-simulator command until ctx ends.
func Run(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("seam-simulator", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var sf simulatorFlags
	fs.StringVar(&sf.addr, "addr", "127.0.0.1:8080", "listen address (0.0.0.0:8080 in a container)")
	fs.StringVar(&sf.apiKey, "api-key", "", "the only bearer token accepted; empty accepts any ($SEAM_API_KEY)")
	fs.DurationVar(&sf.latency, "latency", 0, "wait before handling each call")
	fs.Float64Var(&sf.faults.Transient, "transient-rate", 0, "share of calls failing transiently (503 or 502 page, 500, reset)")
	fs.Float64Var(&sf.faults.Permanent, "permanent-rate", 0, "share of calls refused with 400 invalid_input")
	fs.Float64Var(&sf.faults.AppliedThenDrop, "applied-then-drop-rate", 0, "share of calls applied and then left unanswered")
	fs.Int64Var(&sf.faults.Seed, "seed", 1, "seed of the random faults; the same seed gives the same sequence")
	fs.BoolVar(&sf.inspect, "inspect", false, "serve the /_fake/ inspection endpoints")
	fs.StringVar(&sf.down, "down", "off", "start down: off, reset (connections dropped unanswered), 503 (gateway pages) or mixed")
	fs.BoolVar(&sf.refuseKey, "refuse-key", false, "answer every call 401, whatever the key")
	fs.Float64Var(&sf.rateLimit, "rate-limit", 0, "enforce this many calls per second, answering 429 with Retry-After over it; 0 for none")
	fs.DurationVar(&sf.syncDelay, "sync-delay", 0, "time after an assign or unassign until the provider has it (is_latest_desired_state_synced_with_provider); 0 syncs at once")
	fs.StringVar(&sf.syncFail, "sync-fail", "", "make every sync fail with this error_code on the credential")
	fs.BoolVar(&sf.emptySuccess, "empty-success", false, "answer assign and unassign with {} instead of the credential")
	fs.Func("workspace", "serve workspace ID with its own key and state: ID=KEY (repeatable)", func(v string) error {
		id, key, ok := strings.Cut(v, "=")
		if !ok || id == "" || key == "" {
			return errors.New("want ID=KEY")
		}
		sf.workspaces = append(sf.workspaces, [2]string{id, key})
		return nil
	})
	fs.StringVar(&sf.pat, "pat", "", "with --workspace: also accept this personal access token, the seam-workspace header naming the workspace")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cli.HelpOr(err, fs, simulatorUsage, stdout)
		}
		return &cli.UsageError{Msg: "seam-simulator: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: unexpected argument %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["api-key"] && len(sf.workspaces) == 0 {
		sf.apiKey = os.Getenv("SEAM_API_KEY")
	}
	if err := sf.validate(); err != nil {
		return err
	}
	return serveSimulator(ctx, sf, stdout)
}

func (sf *simulatorFlags) validate() error {
	if _, _, err := net.SplitHostPort(sf.addr); err != nil {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: --addr %q is not host:port", sf.addr)}
	}
	if sf.latency < 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: --latency %s must not be negative", sf.latency)}
	}
	for name, p := range map[string]float64{
		"--transient-rate": sf.faults.Transient, "--permanent-rate": sf.faults.Permanent,
		"--applied-then-drop-rate": sf.faults.AppliedThenDrop,
	} {
		if p < 0 || p > 1 {
			return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: %s %v is not between 0 and 1", name, p)}
		}
	}
	if _, ok := downModes[sf.down]; !ok {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: --down %q is not off, reset, 503 or mixed", sf.down)}
	}
	if sf.syncDelay < 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: --sync-delay %s must not be negative", sf.syncDelay)}
	}
	if sf.rateLimit < 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: --rate-limit %v must not be negative", sf.rateLimit)}
	}
	if len(sf.workspaces) > 0 && (sf.inspect || sf.apiKey != "") {
		return &cli.UsageError{Msg: "seam-simulator: --workspace gives each workspace its key: not with --api-key or --inspect"}
	}
	if sf.pat != "" && len(sf.workspaces) == 0 {
		return &cli.UsageError{Msg: "seam-simulator: --pat goes with --workspace"}
	}
	if sum := sf.faults.Transient + sf.faults.Permanent + sf.faults.AppliedThenDrop; sum > 1 {
		return &cli.UsageError{Msg: fmt.Sprintf("seam-simulator: the fault rates add up to %v, more than 1", sum)}
	}
	return nil
}

// serveSimulator serves the fake, and with --inspect its inspection
// endpoints, until ctx ends. It announces the URL on stdout once listening.
func serveSimulator(ctx context.Context, sf simulatorFlags, stdout io.Writer) error {
	// A long-running simulator keeps only its recent requests: memory stays flat.
	opts := []seamtest.Option{seamtest.WithAutoCreate(), seamtest.WithLatency(sf.latency), seamtest.WithRandomFaults(sf.faults), seamtest.WithRequestLog(1000)}
	if sf.apiKey != "" {
		opts = append(opts, seamtest.WithAPIKey(sf.apiKey))
	}
	opts = append(opts, seamtest.WithSyncDelay(sf.syncDelay))
	if sf.emptySuccess {
		opts = append(opts, seamtest.WithEmptySuccess())
	}
	if sf.syncFail != "" {
		opts = append(opts, seamtest.WithSyncFailure(sf.syncFail, "The provider refused the change (simulated)."))
	}
	newFake := func(opts ...seamtest.Option) *seamtest.Fake {
		fake := seamtest.New(opts...)
		fake.SetDown(downModes[sf.down])
		fake.SetRefuseKey(sf.refuseKey)
		fake.SetRateLimit(sf.rateLimit, max(1, int(sf.rateLimit)))
		return fake
	}
	mux := http.NewServeMux()
	if len(sf.workspaces) > 0 {
		multi := seamtest.NewWorkspaces()
		for _, w := range sf.workspaces {
			multi.Add(w[0], w[1], newFake(opts...)) // the bad-day settings hold for each
		}
		if sf.pat != "" {
			multi.AddPersonalAccessToken(sf.pat)
		}
		mux.Handle("/", multi)
	} else {
		fake := newFake(opts...)
		mux.Handle("/", fake)
		if sf.inspect { // refused with --workspace
			mux.Handle("/_fake/", requireKey(sf.apiKey, inspectHandler(fake)))
		}
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", sf.addr)
	if err != nil {
		return fmt.Errorf("seam-simulator: --addr: %w", err)
	}
	// Calls held by latency or a fault end when the simulator stops,
	// instead of holding the shutdown for as long as the client waits.
	base, cancelCalls := context.WithCancel(context.Background())
	defer cancelCalls()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "seam-simulator: serving a Seam SIMULATOR on http://%s (no real credential is touched)\n", ln.Addr())

	select {
	case err := <-served:
		return fmt.Errorf("seam-simulator: %w", err)
	case <-ctx.Done():
	}
	cancelCalls()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-served
	fmt.Fprintln(stdout, "seam-simulator: stopped")
	return nil
}

// requireKey refuses requests whose bearer token is not key, when key is set.
func requireKey(key string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if key != "" && subtle.ConstantTimeCompare([]byte(token), []byte(key)) != 1 {
			cli.WriteJSON(w, http.StatusUnauthorized, map[string]any{"error": "unauthorized"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// inspectHandler reports the fake's state, so a test outside the
// simulator's process (another container) can check the final state.
func inspectHandler(f *seamtest.Fake) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_fake/credentials/{id}", func(w http.ResponseWriter, r *http.Request) {
		obj, ok := f.Credential(r.PathValue("id"))
		if !ok {
			cli.WriteJSON(w, http.StatusNotFound, map[string]any{"error": "no such credential"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(obj)
	})
	mux.HandleFunc("GET /_fake/assigned", func(w http.ResponseWriter, r *http.Request) {
		cred, user := r.URL.Query().Get("credential"), r.URL.Query().Get("user")
		if cred == "" || user == "" {
			cli.WriteJSON(w, http.StatusBadRequest, map[string]any{"error": "credential and user are required"})
			return
		}
		cli.WriteJSON(w, http.StatusOK, map[string]any{"assigned": f.IsAssigned(cred, user), "effects": f.Effects(cred, user)})
	})
	mux.HandleFunc("GET /_fake/stats", func(w http.ResponseWriter, _ *http.Request) {
		cli.WriteJSON(w, http.StatusOK, Stats{
			Calls: map[string]int{
				"total":    f.Calls(""),
				"assign":   f.Calls(seamtest.PathAssign),
				"unassign": f.Calls(seamtest.PathUnassign),
				"get":      f.Calls(seamtest.PathGet),
			},
			Effects:                    f.TotalEffects(),
			MaxConcurrentPerCredential: f.MaxConcurrentPerCredential(),
		})
	})
	return mux
}

// Stats is the body of GET /_fake/stats.
type Stats struct {
	Calls                      map[string]int `json:"calls"`
	Effects                    int            `json:"effects"`
	MaxConcurrentPerCredential int            `json:"max_concurrent_per_credential"`
}
