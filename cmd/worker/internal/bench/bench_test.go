package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
)

// TestBench_TinyRunReportsEveryScenarioWithFigures runs the scenarios
// that compare with the floor at 50 events each, in process, and checks the
// report's shape and that every figure was measured. It asserts nothing
// about speed. P6 and P7 (keyworker alone) have a test of their own.
func TestBench_TinyRunReportsEveryScenarioWithFigures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := runScenarios(ctx, options{quick: true, events: 50, scenarios: []string{"P1", "P2", "P3", "P4", "P5"}})
	if broken := rep.broken(); len(broken) > 0 {
		t.Fatalf("runs broke: %v", broken)
	}
	var ids []string
	for _, s := range rep.Scenarios {
		ids = append(ids, s.ID)
		if s.Target.Missing != "" {
			t.Errorf("%s: no target figure: %s", s.ID, s.Target.Missing)
		}
		if s.ID != "P5" && s.Target.Value <= 0 {
			t.Errorf("%s: target figure %v, want > 0", s.ID, s.Target.Value)
		}
		for _, r := range []*runResult{s.Floor, s.Keyworker} {
			if r == nil {
				t.Fatalf("%s: a pipeline did not run", s.ID)
			}
			if r.Events != 50 {
				t.Errorf("%s %s: %d events observed, want 50", s.ID, r.Pipeline, r.Events)
			}
			if r.Seconds <= 0 || r.EventsPerSec <= 0 || r.E2E.P50Ms <= 0 || r.E2E.P99Ms <= 0 || r.Added.P99Ms <= 0 || r.SeamCallsPerEvent < 1 {
				t.Errorf("%s %s: a figure is zero: %+v", s.ID, r.Pipeline, *r)
			}
			if runtime.GOOS == "linux" && r.PeakRSS <= 0 {
				t.Errorf("%s %s: no peak RSS", s.ID, r.Pipeline)
			}
		}
		if s.Keyworker.SeamEffects != 50 {
			t.Errorf("%s keyworker: %d assignments in the fake, want 50", s.ID, s.Keyworker.SeamEffects)
		}
	}
	if got := strings.Join(ids, ","); got != "P1,P2,P3,P4,P5" {
		t.Fatalf("scenarios %s, want P1,P2,P3,P4,P5", got)
	}
	if p3 := rep.Scenarios[2].Keyworker; p3.SeamCallsPerEvent <= 1 {
		t.Errorf("P3: %.2f Seam calls per event: the faults were not injected", p3.SeamCallsPerEvent)
	}

	var table bytes.Buffer
	rep.writeTable(&table)
	for _, want := range []string{"P1", "P5", "keyworker", "floor", "targets", ">= 0.5", "<= 64 MiB"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Scenarios []struct {
			ID        string `json:"id"`
			Keyworker struct {
				EventsPerSec float64 `json:"events_per_sec"`
			} `json:"keyworker"`
		} `json:"scenarios"`
	}
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Scenarios) != 5 || back.Scenarios[0].Keyworker.EventsPerSec <= 0 {
		t.Fatalf("JSON report does not carry the scenarios: %v %s", err, raw)
	}
}

// TestBench_BadDaysReportRecoveryAndRateLimitFigures runs P6 (a quick
// 10 s outage) and P7 (an enforced 10 calls/s) at 60 events each: keyworker
// alone, every event assigned once, no dead letter, and each figure filled
// in. It asserts nothing about the goals, which are the bench's to report.
func TestBench_BadDaysReportRecoveryAndRateLimitFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: P6 waits out a 10 s Seam outage")
	}
	const n = 60
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	started := time.Now()
	rep := runScenarios(ctx, options{quick: true, events: n, scenarios: []string{"P6", "P7"}})
	t.Logf("P6 and P7 took %s", time.Since(started).Round(time.Millisecond))
	if broken := rep.broken(); len(broken) > 0 {
		t.Fatalf("runs broke: %v", broken)
	}
	if len(rep.Scenarios) != 2 || rep.Scenarios[0].ID != "P6" || rep.Scenarios[1].ID != "P7" {
		t.Fatalf("scenarios %+v, want P6 and P7", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		if s.Floor != nil {
			t.Errorf("%s: the floor ran in a keyworker-only scenario", s.ID)
		}
		kw := s.Keyworker
		if kw == nil {
			t.Fatalf("%s: keyworker did not run", s.ID)
		}
		if kw.Events != n || kw.SeamEffects != n || kw.DeadLetters != 0 {
			t.Errorf("%s: %d outcomes, %d assignments, %d dead letters; want %d, %d, 0", s.ID, kw.Events, kw.SeamEffects, kw.DeadLetters, n, n)
		}
		if kw.EventsPerSec <= 0 || kw.SeamCalls < n {
			t.Errorf("%s: a figure is zero: %+v", s.ID, *kw)
		}
		for _, tg := range []*target{&s.Target, s.SecondTarget} {
			if tg == nil {
				t.Fatalf("%s: no second target", s.ID)
			}
			if tg.Missing != "" || tg.Metric == "" || tg.Goal <= 0 {
				t.Errorf("%s: target not filled in: %+v", s.ID, *tg)
			}
		}
	}

	p6 := rep.Scenarios[0]
	switch o := p6.Keyworker.Outage; {
	case o == nil:
		t.Fatal("P6: no outage figures")
	case o.Seconds < 9.5 || o.SeamCalls == 0 || o.SeamCallsPerSec <= 0 || o.RecoverySeconds <= 0:
		t.Errorf("P6: outage figures %+v: want a 10 s outage, calls while down, a recovery time", *o)
	case p6.Target.Value != o.RecoverySeconds || p6.SecondTarget.Value != o.SeamCallsPerSec:
		t.Errorf("P6: targets %v and %v do not carry the outage figures %+v", p6.Target.Value, p6.SecondTarget.Value, *o)
	}
	p7 := rep.Scenarios[1]
	if p7.Keyworker.Outage != nil {
		t.Errorf("P7: outage figures without an outage")
	}
	if share := float64(p7.Keyworker.SeamRateLimited) / float64(p7.Keyworker.SeamCalls); p7.Target.Value != share || p7.SecondTarget.Value != p7.Keyworker.EventsPerSec {
		t.Errorf("P7: targets %v and %v, want the 429 share %v and events/s %v", p7.Target.Value, p7.SecondTarget.Value, share, p7.Keyworker.EventsPerSec)
	}

	var table bytes.Buffer
	rep.writeTable(&table)
	for _, want := range []string{"P6", "P7", "keyworker", "<= 90 s", "<= 5/s", "<= 0.25", "429"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if regexp.MustCompile(`(?m)^P[67] +floor `).MatchString(table.String()) {
		t.Errorf("table has a floor row:\n%s", table.String())
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Scenarios []struct {
			Floor     *struct{} `json:"floor"`
			Keyworker struct {
				Outage *struct {
					RecoverySeconds float64 `json:"recovery_seconds"`
				} `json:"outage"`
				SeamRateLimited *int `json:"seam_rate_limited"`
			} `json:"keyworker"`
			SecondTarget *struct {
				Value float64 `json:"value"`
			} `json:"second_target"`
		} `json:"scenarios"`
	}
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Scenarios) != 2 || back.Scenarios[0].Floor != nil ||
		back.Scenarios[0].Keyworker.Outage == nil || back.Scenarios[0].Keyworker.Outage.RecoverySeconds <= 0 ||
		back.Scenarios[1].Keyworker.SeamRateLimited == nil || back.Scenarios[1].SecondTarget == nil {
		t.Fatalf("JSON report does not carry P6 and P7: %v %s", err, raw)
	}
}

// TestBench_DefaultRunsEveryScenario: `worker bench` without --scenario
// runs P1 to P7, and --quick keeps P6 and P7 short.
func TestBench_DefaultRunsEveryScenario(t *testing.T) {
	var ids []string
	for _, s := range allScenarios(true) {
		ids = append(ids, s.ID)
		switch s.ID {
		case "P6":
			if !s.KeyworkerOnly || s.Outage != 10*time.Second || s.Events != 500 {
				t.Errorf("quick P6: %+v", s)
			}
		case "P7":
			if !s.KeyworkerOnly || s.RateLimit != 10 || s.Events != 150 {
				t.Errorf("quick P7: %+v", s)
			}
		}
	}
	if got := strings.Join(ids, ","); got != "P1,P2,P3,P4,P5,P6,P7" {
		t.Fatalf("scenarios %s, want P1 to P7", got)
	}
	full := allScenarios(false)
	if p6 := full[5]; p6.Outage != 30*time.Second || p6.Events != 2000 {
		t.Errorf("full P6: %+v", p6)
	}
	if p7 := full[6]; p7.Events != 400 {
		t.Errorf("full P7: %+v", p7)
	}
}

func TestBench_UnknownScenarioIsAUsageError(t *testing.T) {
	var out, errOut bytes.Buffer
	err := Run(context.Background(), []string{"--scenario", "P1,P9"}, &out, &errOut)
	var u *cli.UsageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "P9") {
		t.Fatalf("got %v, want a usage error naming P9", err)
	}
}
