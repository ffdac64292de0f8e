package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// runResult is what one pipeline did on one scenario.
type runResult struct {
	Pipeline    string `json:"pipeline"`
	Concurrency int    `json:"concurrency"`
	Published   int    `json:"published"`
	// Events is the number of events whose outcome (keyworker) or ack
	// (floor) was observed.
	Events       int     `json:"events"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	// SteadyEventsPerSec is the rate between the 5th and the 95th
	// percentile of completion times: without the ramp-up and the tail of
	// events still waiting out a retry, which depend on the run's length.
	SteadyEventsPerSec float64 `json:"steady_events_per_sec"`
	// RunsEventsPerSec lists events/s of every run when the scenario
	// repeats; the figures above are the best run's.
	RunsEventsPerSec []float64 `json:"runs_events_per_sec,omitempty"`
	// E2E is from publish to the observed outcome; Added is E2E less the
	// time the event's Seam calls spent inside the fake.
	E2E   latency `json:"e2e"`
	Added latency `json:"worker_added"`
	// PeakRSS is the process's VmHWM in bytes while the run went on.
	PeakRSS int64 `json:"peak_rss_bytes"`
	// BaselineRSS is the bench process's VmRSS just before the run (0 for
	// a child process, which starts from nothing).
	BaselineRSS int64 `json:"baseline_rss_bytes"`
	// RSSScope says whose memory PeakRSS is: "bench process" or "worker process".
	RSSScope string `json:"rss_scope"`
	// PeakReset tells whether the kernel's high-water mark could be reset
	// before the run; if not, PeakRSS may come from an earlier run.
	PeakReset bool `json:"peak_reset"`
	// CPUPerEventUs is the CPU time (user and system) the process of
	// RSSScope used during the run, per event, in microseconds.
	CPUPerEventUs     float64 `json:"cpu_per_event_us"`
	SeamCallsPerEvent float64 `json:"seam_calls_per_event"`
	// SeamCalls counts every call the fake received, refused ones included;
	// SeamRateLimited those its enforced rate limit answered 429 (P7).
	SeamCalls       int   `json:"seam_calls"`
	SeamRateLimited int   `json:"seam_rate_limited"`
	SeamEffects     int   `json:"seam_effects"`
	SeamErrors      int64 `json:"seam_errors,omitempty"`
	DeadLetters     int   `json:"dead_letters"`
	Skipped         int   `json:"skipped"`
	// UnmatchedOutcomes counts outcome events that named no bench event:
	// the worker's outcome ids no longer follow the form the bench expects.
	UnmatchedOutcomes int `json:"unmatched_outcomes,omitempty"`
	// LoadAvg is the machine's 1-minute load average as the run started:
	// other processes' load shows in the figures.
	LoadAvg float64 `json:"load_avg_1m"`
	// CPUWait is the share of the run's wall time in which some runnable
	// task on the machine waited for a CPU (Linux PSI, /proc/pressure/cpu):
	// near 0 means the figures are not distorted by CPU contention.
	CPUWait float64 `json:"cpu_wait_share"`
	// Outage is what happened around Seam's outage (P6); nil without one,
	// or when the run ended before Seam was back.
	Outage   *outageResult `json:"outage,omitempty"`
	TimedOut bool          `json:"timed_out"`
	Error    string        `json:"error,omitempty"`
}

// outageResult is a run through a Seam outage.
type outageResult struct {
	// Seconds Seam was down, from the pipeline's start.
	Seconds float64 `json:"seconds"`
	// SeamCalls the fake received while down, and per second of the outage.
	SeamCalls       int     `json:"seam_calls"`
	SeamCallsPerSec float64 `json:"seam_calls_per_sec"`
	// RecoverySeconds is from Seam healthy again to the last outcome.
	RecoverySeconds float64 `json:"recovery_seconds"`
}

// latency is a latency distribution in milliseconds.
type latency struct {
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// steadyRate is the completion rate between the 5th and the 95th
// percentile of the completion times (Unix ns); 0 with too few events.
func steadyRate(at []int64) float64 {
	if len(at) < 20 {
		return 0
	}
	slices.Sort(at)
	lo, hi := len(at)*5/100, len(at)*95/100
	secs := float64(at[hi]-at[lo]) / float64(time.Second)
	if secs <= 0 {
		return 0
	}
	return float64(hi-lo) / secs
}

func latencies(d []time.Duration) latency {
	if len(d) == 0 {
		return latency{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(d)))) - 1
		return float64(d[max(i, 0)]) / float64(time.Millisecond)
	}
	return latency{P50Ms: at(0.50), P99Ms: at(0.99), MaxMs: at(1)}
}

// scenarioReport is one scenario: both pipelines and the target.
type scenarioReport struct {
	Scenario    scenario `json:"-"`
	ID          string   `json:"id"`
	Title       string   `json:"title"`
	Events      int      `json:"events"`
	Concurrency int      `json:"concurrency"`
	LatencyMs   float64  `json:"seam_latency_ms"`
	FaultRate   float64  `json:"fault_rate,omitempty"`
	OfferedRate float64  `json:"offered_events_per_sec,omitempty"`
	OutageSecs  float64  `json:"seam_outage_seconds,omitempty"`
	RateLimit   float64  `json:"seam_rate_limit_per_sec,omitempty"`
	// Floor is null in the scenarios that run keyworker alone (P6, P7).
	Floor     *runResult `json:"floor"`
	Keyworker *runResult `json:"keyworker"`
	// Baseline is fault-free keyworker at P3's scale, when P1 was not run.
	Baseline *runResult `json:"baseline,omitempty"`
	Target   target     `json:"target"`
	// SecondTarget is a scenario's second figure with a goal of its own
	// (P6: Seam requests while down; P7: throughput).
	SecondTarget *target `json:"second_target,omitempty"`
}

// target is a scenario's figure against its goal.
type target struct {
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit,omitempty"`
	Op     string  `json:"op"`
	Goal   float64 `json:"goal"`
	Met    bool    `json:"met"`
	// Missing says why there is no figure (a run broke).
	Missing string `json:"missing,omitempty"`
	// Also is a steadier companion figure, for reading the main one.
	Also string `json:"also,omitempty"`
}

// judge computes the scenario's figure; p1 is P1's keyworker run, if any.
func (r *scenarioReport) judge(p1 *runResult) {
	s := r.Scenario
	r.ID, r.Title, r.Events, r.Concurrency = s.ID, s.Title, s.Events, s.Concurrency
	r.LatencyMs, r.FaultRate, r.OfferedRate = float64(s.Latency)/float64(time.Millisecond), s.FaultRate, s.OfferedRate
	r.OutageSecs, r.RateLimit = s.Outage.Seconds(), s.RateLimit
	kw := r.Keyworker
	t := &r.Target
	usable := func(x *runResult) bool { return x != nil && x.Error == "" && !x.TimedOut && x.Events > 0 }
	switch s.ID {
	case "P1":
		t.Metric, t.Op, t.Goal = "keyworker events/s / floor events/s", ">=", 0.5
		if usable(kw) && usable(r.Floor) {
			t.Value = kw.EventsPerSec / r.Floor.EventsPerSec
			if kw.CPUPerEventUs > 0 {
				t.Also = fmt.Sprintf("floor CPU/event / keyworker CPU/event = %.2f", r.Floor.CPUPerEventUs/kw.CPUPerEventUs)
			}
		} else {
			t.Missing = "a run broke"
		}
	case "P2":
		ideal := float64(s.Concurrency) / s.Latency.Seconds()
		t.Metric, t.Op, t.Goal = fmt.Sprintf("keyworker events/s / (%d / %s)", s.Concurrency, s.Latency), ">=", 0.9
		if usable(kw) {
			t.Value = kw.EventsPerSec / ideal
		} else {
			t.Missing = "the keyworker run broke"
		}
	case "P3":
		base, name := p1, "P1"
		if r.Baseline != nil {
			base, name = r.Baseline, "fault-free"
		}
		// Steady rates: an event that meets a fault finishes after
		// the rest, whatever the throughput, and that tail would dominate.
		t.Metric, t.Op, t.Goal = "keyworker steady events/s with faults / "+name+" keyworker steady events/s", ">=", 0.8
		if usable(kw) && usable(base) && base.SteadyEventsPerSec > 0 {
			t.Value = kw.SteadyEventsPerSec / base.SteadyEventsPerSec
			t.Also = fmt.Sprintf("events/s ratio, retry tail included: %.2f", kw.EventsPerSec/base.EventsPerSec)
		} else {
			t.Missing = "a run broke"
		}
	case "P4":
		t.Metric, t.Unit, t.Op, t.Goal = fmt.Sprintf("keyworker worker-added p99 at %.0f events/s", s.OfferedRate), "ms", "<=", 5
		if usable(kw) {
			t.Value = kw.Added.P99Ms
		} else {
			t.Missing = "the keyworker run broke"
		}
	case "P5":
		t.Metric, t.Unit, t.Op, t.Goal = fmt.Sprintf("keyworker peak RSS at concurrency %d", s.Concurrency), "MiB", "<=", 64
		switch {
		case kw == nil || kw.PeakRSS == 0:
			t.Missing = "no RSS figure"
		case kw.RSSScope == "worker process":
			t.Value = mib(kw.PeakRSS)
		default:
			// In process the peak includes the NATS server and the fake:
			// count only what the run added.
			t.Metric += " (growth of the bench process)"
			t.Value = mib(kw.PeakRSS - kw.BaselineRSS)
		}
	case "P6":
		t.Metric, t.Unit, t.Op, t.Goal = fmt.Sprintf("keyworker seconds from Seam healthy to the last outcome, after %s down", seconds(s.Outage)), "s", "<=", 90
		t2 := &target{Metric: "keyworker Seam requests/s while Seam was down", Unit: "/s", Op: "<=", Goal: 5}
		r.SecondTarget = t2
		switch {
		case !usable(kw):
			t.Missing, t2.Missing = "the keyworker run broke", "the keyworker run broke"
		case kw.Outage == nil:
			t.Missing, t2.Missing = "Seam was never back up", "Seam was never back up"
		default:
			o := kw.Outage
			t.Value = o.RecoverySeconds
			if o.RecoverySeconds > 0 {
				t.Also = fmt.Sprintf("%.0f events/s after recovery", float64(kw.Events)/o.RecoverySeconds)
			}
			t2.Value = o.SeamCallsPerSec
			t2.Also = fmt.Sprintf("%d calls in %.1f s", o.SeamCalls, o.Seconds)
		}
	case "P7":
		t.Metric, t.Op, t.Goal = fmt.Sprintf("share of Seam answers that were 429 under an unannounced %g calls/s", s.RateLimit), "<=", 0.25
		t2 := &target{Metric: "keyworker events/s under that limit (issue 10: 400 in 80 s)", Unit: "events/s", Op: ">=", Goal: 5}
		r.SecondTarget = t2
		if usable(kw) && kw.SeamCalls > 0 {
			t.Value = float64(kw.SeamRateLimited) / float64(kw.SeamCalls)
			t.Also = fmt.Sprintf("%d of %d calls for %d events", kw.SeamRateLimited, kw.SeamCalls, kw.Events)
			t2.Value = kw.EventsPerSec
			t2.Also = fmt.Sprintf("%.0f%% of the limit", 100*kw.EventsPerSec/s.RateLimit)
		} else {
			t.Missing, t2.Missing = "the keyworker run broke", "the keyworker run broke"
		}
	}
	t.judge()
	if r.SecondTarget != nil {
		r.SecondTarget.judge()
	}
}

// judge sets Met from the value and the goal, when there is a value.
func (t *target) judge() {
	if t.Missing != "" {
		return
	}
	if t.Op == ">=" {
		t.Met = t.Value >= t.Goal
	} else {
		t.Met = t.Value <= t.Goal
	}
}

// report is the whole bench.
type report struct {
	Quick           bool             `json:"quick"`
	Interrupted     bool             `json:"interrupted,omitempty"`
	Machine         machine          `json:"machine"`
	Scenarios       []scenarioReport `json:"scenarios"`
	Notes           []string         `json:"notes"`
	ProfilesWritten []string         `json:"profiles_written,omitempty"`
}

// machine describes where the figures come from.
type machine struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model"`
	MemTotal   string `json:"mem_total"`
	OS         string `json:"os"`
	Go         string `json:"go"`
}

func newReport(quick bool, scenarios []scenario) *report {
	r := &report{Quick: quick, Machine: machineInfo()}
	if quick {
		var scaled []string
		for _, s := range scenarios {
			scaled = append(scaled, fmt.Sprintf("%s %d instead of %d", s.ID, s.Events, s.FullEvents))
		}
		msg := "--quick: event counts scaled down (" + strings.Join(scaled, ", ") + ")"
		for _, s := range scenarios {
			if s.Outage == 0 {
				continue
			}
			for _, f := range allScenarios(false) {
				if f.ID == s.ID && f.Outage != s.Outage {
					msg += fmt.Sprintf(", %s's Seam outage too (%s instead of %s)", s.ID, seconds(s.Outage), seconds(f.Outage))
				}
			}
		}
		r.Notes = append(r.Notes, msg+"; ratios are noisier than in a full run.")
	}
	r.Notes = append(r.Notes,
		"Each run has a fresh embedded JetStream server (file store in a temp dir) and Seam fake in this process; all traffic is loopback. Every event has its own credential and user, so ordering leases never serialise events.",
		"Floor: pull from the same durable consumer, decode, one POST /acs/credentials/assign, ack; no validation, idempotency, ordering, retries or outcome events. Its latency ends at the ack; keyworker's at the outcome event, seen by a core NATS subscription.",
		"P1 runs each pipeline 3 times, alternating, and reports each one's fastest run (all runs' events/s are in the JSON): interference from other processes only slows a run.",
		"events/s is all events over the run's time (from the pipeline's start, or the first publish in P4, to the last outcome); steady ev/s is the rate between the 5th and 95th percentile of completion times, leaving out the ramp-up and the tail. P3's target uses steady rates: an event that meets a fault ends after its retry delays whatever the throughput, so its tail would otherwise measure the run's length (P3 is large for the same reason).",
		"Latency is from publish. P1, P2, P3 and P5 pre-load the stream, so their end-to-end figures include the wait in the backlog; P4 publishes at a fixed rate during the run and is the latency scenario. Worker-added = end-to-end minus the time the event's calls spent inside the Seam fake (latency, handling, injected faults).",
		"cpu wait: the share of the run's time in which some task on the machine waited for a CPU (Linux pressure stall information). The bench's own threads count too, so saturated runs (P1, P3, P5) show some; in P4, which uses a fraction of the CPUs, a high figure means other processes competed and the latency tail shows it.",
		"CPU/ev: user and system CPU time of the process per event during the run; for in-process runs that includes the NATS server, the Seam fake and the bench's publisher and observer, which both pipelines share. It is steadier than events/s on a shared machine. (own) marks a child process measured alone.",
		"Peak RSS: the kernel's high-water mark (VmHWM), reset before each run by writing 5 to /proc/self/clear_refs. For in-process runs it is the whole bench process: embedded NATS server, Seam fake, publisher and pipeline.",
	)
	var alone []string
	for _, s := range scenarios {
		if s.KeyworkerOnly {
			alone = append(alone, s.ID)
		}
	}
	switch len(alone) {
	case 0:
	case 1:
		r.Notes = append(r.Notes, alone[0]+" runs keyworker alone"+aloneNote)
	default:
		r.Notes = append(r.Notes, strings.Join(alone[:len(alone)-1], ", ")+" and "+alone[len(alone)-1]+" run keyworker alone"+aloneNote)
	}
	for _, s := range scenarios {
		if s.Child {
			r.Notes = append(r.Notes, s.ID+" runs each pipeline in a child process (keyworker as `worker run`, logging at info level to a pipe), against the same NATS server and fake; its peak RSS and CPU/ev are that process alone, and the floor reports each ack on a core NATS subject, where its latency ends. Without an executable to re-run (tests), it runs in process and the target counts the growth of the bench process over its RSS before the run.")
		}
		if s.FaultRate > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%s injects faults in %.0f%% of all Seam calls (half 503, half 502 HTML gateway pages; 429s are P7's, sent as Seam sends them, to a client over its rate) with the fake's FailNext; keyworker retries them, the floor acks regardless.", s.ID, 100*s.FaultRate))
		}
		if s.Outage > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%s pre-loads the stream; the Seam fake is down from the pipeline's start for %s (SetDown(DownMixed): every call alternately gets a TCP reset or an HTML 503 page, nothing applied), then healthy. Requests/s while down = calls the fake received during the outage / its length; recovery = Seam healthy to the last outcome (it includes the health gate's next probe, at most 5 s away, and draining the backlog). events/s and latencies of its row include the outage.", s.ID, seconds(s.Outage)))
		}
		if s.RateLimit > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%s pre-loads the stream; the Seam fake enforces %g calls/s (a token bucket of %d, across endpoints) that the worker is not told about, answering each call over it 429 with a Retry-After. The 429 share is the fake's rate-limited answers over every call it received; a refused call takes no token, so events/s, over the whole run, can approach the limit divided by the calls an event needs once admitted (one assign for these check-ins).", s.ID, s.RateLimit, max(1, int(math.Ceil(s.RateLimit)))))
		}
	}
	return r
}

// aloneNote ends the note on the scenarios that run keyworker alone.
const aloneNote = ", with its defaults (KEYWORKER_RETRY_FOR 24 h, KEYWORKER_MAX_DELIVER 10, no KEYWORKER_SEAM_RPS): the floor acks whatever Seam answers, so it has nothing to show on a bad day and no row. Every event still has its own credential, so only Seam holds events back, never an ordering lease; the run breaks unless every event ends with one credential.assigned and no dead letter."

// broken lists the runs that broke: the bench's exit status reflects them.
func (r *report) broken() []string {
	var out []string
	check := func(id string, x *runResult) {
		if x == nil {
			return
		}
		name := id + " " + x.Pipeline
		switch {
		case x.Error != "":
			out = append(out, name+": "+x.Error)
		case x.UnmatchedOutcomes > 0:
			out = append(out, fmt.Sprintf("%s: %d outcome events matched no published event", name, x.UnmatchedOutcomes))
		case x.TimedOut:
			out = append(out, fmt.Sprintf("%s: timed out with %d of %d events done", name, x.Events, x.Published))
		case x.Pipeline == pipelineKeyworker && x.SeamEffects != x.Published:
			out = append(out, fmt.Sprintf("%s: %d credential assignments in Seam for %d events", name, x.SeamEffects, x.Published))
		case x.Pipeline == pipelineKeyworker && (x.DeadLetters > 0 || x.Skipped > 0):
			out = append(out, fmt.Sprintf("%s: %d dead letters and %d skipped where none were expected", name, x.DeadLetters, x.Skipped))
		}
	}
	if r.Interrupted {
		out = append(out, "interrupted")
	}
	for _, s := range r.Scenarios {
		check(s.ID, s.Floor)
		check(s.ID, s.Keyworker)
		check(s.ID, s.Baseline)
	}
	return out
}

// writeTable prints the report for people.
func (r *report) writeTable(w io.Writer) {
	m := r.Machine
	mode := "full run"
	if r.Quick {
		mode = "quick run (--quick: event counts scaled down)"
	}
	fmt.Fprintf(w, "keyworker bench, %s\nmachine: %d CPUs (GOMAXPROCS %d), %s, %s RAM, %s, %s\n\n",
		mode, m.CPUs, m.GOMAXPROCS, m.CPUModel, m.MemTotal, m.OS, m.Go)
	rows := [][]string{{"scenario", "pipeline", "conc", "events", "seconds", "events/s", "steady ev/s", "e2e p50", "e2e p99", "added p50", "added p99", "seam calls/ev", "CPU/ev", "peak RSS", "cpu wait", ""}}
	row := func(id string, x *runResult) {
		if x == nil {
			return
		}
		rss := formatMiB(x.PeakRSS)
		cpu := strconv.FormatFloat(x.CPUPerEventUs, 'f', 0, 64) + " µs"
		if x.RSSScope == "worker process" {
			rss += " (own)"
			cpu += " (own)"
		}
		status := ""
		switch {
		case x.Error != "":
			status = "ERROR"
		case x.TimedOut:
			status = "TIMEOUT"
		}
		rows = append(rows, []string{id, x.Pipeline, strconv.Itoa(x.Concurrency), strconv.Itoa(x.Events),
			strconv.FormatFloat(x.Seconds, 'f', 2, 64), strconv.FormatFloat(x.EventsPerSec, 'f', 0, 64), strconv.FormatFloat(x.SteadyEventsPerSec, 'f', 0, 64),
			formatMs(x.E2E.P50Ms), formatMs(x.E2E.P99Ms), formatMs(x.Added.P50Ms), formatMs(x.Added.P99Ms),
			strconv.FormatFloat(x.SeamCallsPerEvent, 'f', 2, 64), cpu, rss, strconv.FormatFloat(100*x.CPUWait, 'f', 0, 64) + "%", status})
	}
	for _, s := range r.Scenarios {
		row(s.ID, s.Floor)
		row(s.ID, s.Keyworker)
		if s.Baseline != nil {
			b := *s.Baseline
			b.Pipeline = "keyworker, no faults"
			row(s.ID, &b)
		}
	}
	writeColumns(w, rows, "ll")

	fmt.Fprintln(w, "\ntargets")
	rows = nil
	targetRow := func(id string, t target) {
		value, verdict := "n/a", "n/a: "+t.Missing
		if t.Missing == "" {
			prec := 3 // a ratio: enough digits that a miss never rounds to the goal
			if t.Unit != "" {
				prec = 2
			}
			value = strconv.FormatFloat(t.Value, 'f', prec, 64)
			verdict = "missed"
			if t.Met {
				verdict = "met"
			}
		}
		unit := ""
		if t.Unit != "" {
			unit = " " + t.Unit
			if strings.HasPrefix(t.Unit, "/") {
				unit = t.Unit // 3.2/s
			}
		}
		if t.Also != "" {
			verdict += " (" + t.Also + ")"
		}
		rows = append(rows, []string{id, t.Metric, value + unit, fmt.Sprintf("%s %g%s", t.Op, t.Goal, unit), verdict})
	}
	for _, s := range r.Scenarios {
		targetRow(s.ID, s.Target)
		if s.SecondTarget != nil {
			targetRow(s.ID, *s.SecondTarget)
		}
	}
	writeColumns(w, rows, "llrrl")
	fmt.Fprintln(w, "\nnotes")
	for _, n := range r.Notes {
		fmt.Fprintln(w, "- "+n)
	}
	for _, s := range r.Scenarios {
		for _, x := range []*runResult{s.Floor, s.Keyworker, s.Baseline} {
			if x != nil && x.Error != "" {
				fmt.Fprintf(w, "- %s %s error: %s\n", s.ID, x.Pipeline, x.Error)
			}
		}
	}
	for _, p := range r.ProfilesWritten {
		fmt.Fprintln(w, "- profile written: "+p)
	}
}

// writeColumns prints rows as aligned columns; align has one letter
// per column, l or r, and columns past its end align right.
func writeColumns(w io.Writer, rows [][]string, align string) {
	var width []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i < len(align) && align[i] == 'l' {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func formatMs(ms float64) string {
	switch {
	case ms >= 10000:
		return strconv.FormatFloat(ms/1000, 'f', 1, 64) + " s"
	case ms >= 100:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(ms, 'f', 2, 64) + " ms"
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func formatMiB(b int64) string {
	if b <= 0 {
		return "n/a"
	}
	return strconv.FormatFloat(mib(b), 'f', 1, 64) + " MiB"
}

// procStatus reads a size field such as VmHWM or VmRSS, in bytes,
// from /proc/<pid>/status; 0 when unavailable (not Linux).
func procStatus(pid, field string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		kb, _ := strconv.ParseInt(f[0], 10, 64)
		return kb << 10
	}
	return 0
}

// cpuTime is the user and system CPU time a process has used so far,
// from /proc/<pid>/stat (pid "self" for this one); 0 when unavailable.
func cpuTime(pid string) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields are counted after its ")".
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ, 100 on every Linux architecture Go supports
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// cpuPressure is the machine's total CPU "some" stall time from
// /proc/pressure/cpu; ok is false where PSI is unavailable.
func cpuPressure() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	_, total, ok := strings.Cut(line, "total=")
	if !strings.HasPrefix(line, "some") || !ok {
		return 0, false
	}
	us, err := strconv.ParseInt(strings.TrimSpace(total), 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(us) * time.Microsecond, true
}

// loadAvg is the 1-minute load average; 0 when unavailable.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// resetPeakRSS resets this process's VmHWM to its current RSS
// (Linux 4.0 and later) and reports whether it could.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// freeMemory returns the garbage of earlier runs to the OS, so that
// the next run's peak is its own.
func freeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

func machineInfo() machine {
	m := machine{
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(), CPUModel: "unknown", MemTotal: "unknown",
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						m.MemTotal = strconv.FormatFloat(float64(kb)/(1<<20), 'f', 1, 64) + " GiB"
					}
				}
			}
		}
	}
	return m
}
